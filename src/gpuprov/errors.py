"""One exception tree for everything gpuprov raises on purpose.

::

    GpuprovError                      base; str() is a one-line, user-facing reason
    ├── UsageError                    bad flags, vars or files, caught before connecting (exit 2)
    │   └── ModelUnavailable          the model's config cannot be read (not in the catalog, hub, or folder)
    ├── InventoryError                malformed inventory: names the file and line
    ├── ConnectError                  the host could not be reached or logged into (exit 3)
    │   ├── AuthError                 the server refused our key
    │   ├── ProxyOnly                 a PTY-only proxy (RunPod's ssh.runpod.io), not an SSH server that runs commands
    │   └── HostKeyError              host key policy refused the server
    │       ├── HostKeyMismatch       the key changed since it was pinned
    │       └── HostKeyUnknown        strict mode and the key is not pinned
    ├── RemoteError                   a remote command failed (exit status, stderr tail)
    │   └── RemoteTimeout             a remote command ran past its timeout
    ├── HostBusy                      another gpuprov run holds the host's lock (exit 4)
    ├── ProbeError                    the probe ran but its output was unusable
    └── LabError                      the simulated lab could not be built or torn down

Messages never contain secrets: values that are secret travel as ``Secret`` and print as ``***``.
"""

from __future__ import annotations


class GpuprovError(Exception):
    """Base of every error gpuprov raises on purpose."""

    #: process exit status the CLI uses for this error
    exit_code = 1


class UsageError(GpuprovError):
    exit_code = 2


class ModelUnavailable(UsageError):
    pass


class InventoryError(GpuprovError):
    exit_code = 2

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path, self.line = path, line
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")


class ConnectError(GpuprovError):
    exit_code = 3


class AuthError(ConnectError):
    pass


class ProxyOnly(ConnectError):
    pass


class HostKeyError(ConnectError):
    pass


class HostKeyMismatch(HostKeyError):
    pass


class HostKeyUnknown(HostKeyError):
    pass


class RemoteError(GpuprovError):
    def __init__(self, message: str, exit_status: int | None = None, stderr: str = ""):
        self.exit_status, self.stderr = exit_status, stderr
        super().__init__(message)


class RemoteTimeout(RemoteError):
    pass


class HostBusy(GpuprovError):
    exit_code = 4


class ProbeError(GpuprovError):
    pass


class LabError(GpuprovError):
    pass
