"""One gpuprov run per host at a time: an exclusive lock held on the host for the length of a run.

The lock is ``flock`` on a file next to the install root, taken by a small process that holds it until its
stdin closes — that is, until our SSH channel closes. A run that dies (Ctrl-C, lost connection) therefore
releases the lock by itself; there is no stale lock file to clean up.
"""

from __future__ import annotations

import shlex
import socket
import time
from typing import Any

from .errors import ConnectError, GpuprovError

LOCK_SCRIPT = (
    "import fcntl, os, sys, time\n"
    "f = open(sys.argv[1], 'a+')\n"
    "try:\n"
    "    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "except OSError:\n"
    "    f.seek(0); print('BUSY ' + (f.read().strip() or '?'), flush=True); sys.exit(0)\n"
    "f.truncate(0); f.write('%s since %s\\n' % (sys.argv[2], time.strftime('%H:%M:%S'))); f.flush()\n"
    "print('LOCKED', flush=True)\n"
    "sys.stdin.read()\n"
)


class HostBusy(GpuprovError):
    exit_code = 4


class HostLock:
    def __init__(self, runner: Any, path: str, owner: str, wait: float = 0.0):
        self.runner, self.path, self.owner, self.wait = runner, path, owner, wait
        self.chan = None

    def __enter__(self) -> "HostLock":
        deadline = time.monotonic() + self.wait
        while True:
            chan = self.runner.transport.open_session(timeout=10)
            chan.settimeout(30)
            chan.exec_command(shlex.join(["python3", "-c", LOCK_SCRIPT, self.path, self.owner]))
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
