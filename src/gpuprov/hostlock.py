"""One gpuprov run per host at a time: an exclusive lock held on the host for the length of a run.

The lock is ``flock`` on a file next to the install root, taken by a small process that holds it until its
stdin closes — that is, until our SSH channel closes. A run that dies (Ctrl-C, lost connection) therefore
releases the lock by itself; there is no stale lock file to clean up.

A dead run's *commands* may still be running on the host (closing an SSH session without a terminal does
not stop them: an interrupted ``python3 -m venv`` goes on writing). So every applied command holds a shared
flock on a second file (``flock -s -o WORK cmd``), and a new run, once it holds the run lock, waits for an
exclusive flock on that file: for the orphans to finish, before it looks at or changes anything.
"""

from __future__ import annotations

import time
from typing import Any

from . import remote
from .errors import ConnectError, HostBusy

__all__ = ["HostBusy", "HostLock"]



class HostLock:
    def __init__(self, runner: Any, path: str, owner: str, wait: float = 0.0, work_lock: str | None = None,
                 orphan_timeout: float = 900):
        self.runner, self.path, self.owner, self.wait = runner, path, owner, wait
        self.work_lock, self.orphan_timeout = work_lock, orphan_timeout
        self.stream: Any = None

    def __enter__(self) -> HostLock:
        deadline = time.monotonic() + self.wait
        while True:
            args = [self.path, self.owner] + ([self.work_lock, str(int(self.orphan_timeout))] if self.work_lock else [])
            argv, program = remote.command("lock", *args)
            stream = self.runner.open_stream(argv, stdin=program, timeout=10)
            line = b""
            until = time.monotonic() + self.orphan_timeout + 30
            while not line.endswith(b"\n"):
                data = stream.recv(1, max(0.1, until - time.monotonic()))
                if data is None:
                    stream.close()
                    raise ConnectError(f"{self.runner.host.name}: no answer while taking the host lock")
                if not data:
                    break
                line += data
            text = line.decode(errors="replace").strip()
            if text == "LOCKED":
                self.stream = stream
                return self
            stream.close()
            if text == "ORPHANS":
                raise HostBusy(f"{self.runner.host.name}: a command of an earlier, interrupted gpuprov run is still "
                               f"running after {self.orphan_timeout:g} s (it holds {self.work_lock}); wait for it "
                               "or stop it, then run again")
            if not text.startswith("BUSY"):
                raise ConnectError(f"{self.runner.host.name}: could not take the host lock: {text or 'no answer'}")
            if time.monotonic() >= deadline:
                raise HostBusy(f"{self.runner.host.name}: another gpuprov run holds the host lock ({text[5:]}); "
                               "wait for it to finish (it is released when that run ends, even if it dies)")
            time.sleep(1.0)

    def __exit__(self, *exc: object) -> None:
        if self.stream is not None:
            self.stream.close()  # stdin closes: the holder lets go (and it goes with the connection anyway)
            self.stream = None
