"""Secrets travel as ``Secret``: str(), repr() and f-strings print ``***``; only ``reveal()`` gives the value.

Secrets reach a host only inside 0600 files (EnvironmentFile / env file), never in argv, logs or recaps.
"""

from __future__ import annotations

import os
import secrets as _stdlib_secrets
from pathlib import Path


class Secret:
    __slots__ = ("_value", "name")

    def __init__(self, value: str, name: str = "secret"):
        if not isinstance(value, str):
            raise TypeError("a Secret holds a str")
        self._value = value
        self.name = name

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return f"Secret({self.name}=***)"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


def redact(text: str, *values: Secret | str | None) -> str:
    """Replace every occurrence of each secret value in ``text`` with ``***``."""
    for v in values:
        raw = v.reveal() if isinstance(v, Secret) else v
        if raw and len(raw) >= 4:
            text = text.replace(raw, "***")
    return text


def new_api_key() -> Secret:
    return Secret("gp-" + _stdlib_secrets.token_urlsafe(32), "api_key")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
