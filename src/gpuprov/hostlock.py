"""One gpuprov run per host at a time, and one SSH channel for the run's host-side programs.

``HostSession`` opens one channel to ``remote/session.py`` on the host. Over it, the probe, the state gathering
and the readiness check run as requests (``session.run`` is a ``Runner.run``: ``remote.run(session, ...)`` works
unchanged; gpuprov's own programs run inside the session's Python, so none starts an interpreter of its own), and
``session.lock`` takes the run lock: an exclusive ``flock`` on a file next to the install root, held by the
session process until its stdin closes — that is, until our SSH channel closes. A run that dies (Ctrl-C, lost
connection) therefore releases the lock by itself; there is no stale lock file to clean up. A re-provision costs
one exec in all: this channel.

A dead run's *commands* may still be running on the host (closing an SSH session without a terminal does
not stop them: an interrupted ``python3 -m venv`` goes on writing). So every applied command holds a shared
flock on a second file (``flock -s -o WORK cmd``), and a new run, once it holds the run lock, waits for an
exclusive flock on that file: for the orphans to finish, before it looks at or changes anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from . import remote
from .connection import DEFAULT_TIMEOUT, Result
from .errors import ConnectError, HostBusy, ProxyOnly
from .runpod import proxy_refusal

__all__ = ["HostBusy", "HostSession"]


class HostSession:
    """A runner-like channel to the host's session program (see the module docstring)."""

    def __init__(self, runner: Any):
        self.runner, self.host = runner, runner.host
        self.stream: Any = None
        self.buf = b""

    # ----------------------------------------------------------- the channel
    def open(self) -> HostSession:
        argv, program = remote.command("session")
        self.stream = self.runner.open_stream(argv, stdin=program, timeout=10)
        return self

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()  # stdin closes: the session ends and lets go of the lock
            self.stream = None

    def __enter__(self) -> HostSession:
        return self.open() if self.stream is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def exec_count(self) -> int:
        return int(getattr(self.runner, "exec_count", 0))

    def sftp_works(self, timeout: float = 5.0) -> bool:
        return bool(self.runner.sftp_works(timeout))

    def _read(self, n: int | None, until: float) -> bytes:
        """``n`` bytes, or (``n`` None) one line, from the session's output."""
        while (len(self.buf) < n) if n is not None else (b"\n" not in self.buf):
            data = self.stream.recv(1 << 16, max(0.1, until - time.monotonic()))
            if not data or time.monotonic() > until:  # None: no answer in time; b"": the session ended
                self.close()
                refused = proxy_refusal(self.host.name, self.buf.decode(errors="replace"))
                if refused:
                    raise ProxyOnly(refused)
                raise ConnectError(f"{self.host.name}: the gpuprov session " +
                                   ("ended" if data == b"" else "stopped answering") +
                                   # the start of what came, never its end (a probe's answer ends with the
                                   # pod's environment)
                                   (f" (it said: {self.buf.decode(errors='replace').strip()[:160]})"
                                    if self.buf.strip() else ""))
            self.buf += data
        if n is None:
            n = self.buf.index(b"\n") + 1
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _request(self, req: dict, data: bytes, timeout: float) -> dict:
        if self.stream is None:
            raise ConnectError(f"{self.host.name}: the gpuprov session is closed")
        self.stream.send((json.dumps(req) + "\n").encode() + data)
        line = self._read(None, time.monotonic() + timeout)
        try:
            head: dict = json.loads(line)
        except ValueError:
            self.close()
            refused = proxy_refusal(self.host.name, line.decode(errors="replace"))
            if refused:
                raise ProxyOnly(refused) from None
            raise ConnectError(f"{self.host.name}: the gpuprov session answered {line[:200]!r}") from None
        return head

    # ----------------------------------------------------------- what it does
    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Run ``argv`` on the host inside the session (no new exec); one of gpuprov's own programs (the probe,
        the gatherer, the readiness check) runs inside the session's Python, without starting another."""
        start = time.monotonic()
        data = stdin or b""
        prog = remote.in_process(argv, stdin)
        if prog is not None:
            req = {"op": "py", "code": len(prog.code), "tail": len(prog.tail), "key": prog.key, "argv": prog.args,
                   "timeout": timeout}
            head = self._request(req, prog.code + prog.tail, timeout + 15)
        else:
            head = self._request({"op": "run", "argv": [str(a) for a in argv], "stdin": len(data),
                                  "timeout": timeout}, data, timeout + 15)
        until = time.monotonic() + 30
        out, err = self._read(int(head["out"]), until), self._read(int(head["err"]), until)
        return Result(tuple(str(a) for a in argv), int(head["rc"]), out.decode("utf-8", "replace"),
                      err.decode("utf-8", "replace"), time.monotonic() - start)

    def lock(self, path: str, owner: str, *, wait: float = 0.0, work_lock: str | None = None,
             orphan_timeout: float = 900) -> None:
        """Take the run lock (held until the session closes); HostBusy when another run holds it."""
        deadline = time.monotonic() + wait
        while True:
            head = self._request({"op": "lock", "path": path, "owner": owner, "work_lock": work_lock,
                                  "wait": int(orphan_timeout)}, b"", orphan_timeout + 30)
            text = str(head.get("lock") or head.get("error") or "")
            if text == "LOCKED":
                return
            if text == "ORPHANS":
                raise HostBusy(f"{self.host.name}: a command of an earlier, interrupted gpuprov run is still "
                               f"running after {orphan_timeout:g} s (it holds {work_lock}); wait for it "
                               "or stop it, then run again")
            if not text.startswith("BUSY"):
                raise ConnectError(f"{self.host.name}: could not take the host lock: {text or 'no answer'}")
            if time.monotonic() >= deadline:
                raise HostBusy(f"{self.host.name}: another gpuprov run holds the host lock ({text[5:]}); "
                               "wait for it to finish (it is released when that run ends, even if it dies)")
            time.sleep(1.0)
