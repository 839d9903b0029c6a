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

import shlex
import socket
import time
from typing import Any

from .errors import ConnectError, GpuprovError, HostBusy

LOCK_SCRIPT = (
    "import fcntl, os, signal, sys, time\n"
    "f = open(sys.argv[1], 'a+')\n"
    "try:\n"
    "    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "except OSError:\n"
    "    f.seek(0); print('BUSY ' + (f.read().strip() or '?'), flush=True); sys.exit(0)\n"
    "f.truncate(0); f.write('%s since %s\\n' % (sys.argv[2], time.strftime('%H:%M:%S'))); f.flush()\n"
    "if len(sys.argv) > 3:\n"  # wait for an earlier run's orphaned commands (they hold the work lock shared)
    "    w = open(sys.argv[3], 'a+')\n"
    "    signal.alarm(int(sys.argv[4]))\n"
    "    try:\n"
    "        fcntl.flock(w, fcntl.LOCK_EX)\n"
    "    except OSError:\n"
    "        print('ORPHANS', flush=True); sys.exit(0)\n"
    "    signal.alarm(0); fcntl.flock(w, fcntl.LOCK_UN); w.close()\n"
    "print('LOCKED', flush=True)\n"
    "sys.stdin.read()\n"
)


class HostLock:
    def __init__(self, runner: Any, path: str, owner: str, wait: float = 0.0, work_lock: str | None = None,
                 orphan_timeout: float = 900):
        self.runner, self.path, self.owner, self.wait = runner, path, owner, wait
        self.work_lock, self.orphan_timeout = work_lock, orphan_timeout
        self.chan = None

    def __enter__(self) -> "HostLock":
        deadline = time.monotonic() + self.wait
        while True:
            chan = self.runner.transport.open_session(timeout=10)
            chan.settimeout(30)
            argv = ["python3", "-c", LOCK_SCRIPT, self.path, self.owner]
            if self.work_lock:
                argv += [self.work_lock, str(int(self.orphan_timeout))]
            chan.exec_command(shlex.join(argv))
            chan.settimeout(self.orphan_timeout + 30)
            line = b""
            try:
                while not line.endswith(b"\n"):
                    data = chan.recv(1)
                    if not data:
                        break
                    line += data
            except socket.timeout:
                chan.close()
                raise ConnectError(f"{self.runner.host.name}: no answer while taking the host lock") from None
            text = line.decode(errors="replace").strip()
            if text == "LOCKED":
                self.chan = chan
                return self
            chan.close()
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
        if self.chan is not None:
            try:
                self.chan.shutdown_write()
                self.chan.close()
            except Exception:  # noqa: BLE001 - the connection may already be gone: the lock is released then too
                pass
            self.chan = None
