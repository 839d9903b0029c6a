"""Every program gpuprov runs on a host, and the one way it sends them.

Each ``NAME.py`` here is a stdlib-only program for the host's own ``python3`` (3.8+). ``source(NAME)`` is the
program as the host gets it: ``_common.py`` (the shared pid, env-file and HTTP helpers) followed by ``NAME.py``.
``command(NAME, *args)`` runs it by sending that source on stdin behind a short loader (``_loader.py``) that reads
exactly the program's bytes, so a program may go on reading stdin after it (the session takes requests there, and
holds the run lock until stdin closes); the loader keeps each program's compiled code on the host, by its source's
hash, so a host compiles a version of a program once.
The supervisor and the weights fetcher are installed as files with the same ``source``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
#: ``python3 -c LOADER N T KEY ARGS...``: runs the N bytes of program on stdin (compiled once per host, see
#: ``_loader.py``; KEY names that code), then the T bytes after them, with ARGS as sys.argv[1:]
LOADER = "\n".join(line for line in (HERE / "_loader.py").read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith("#"))
PROGRAMS = ("probe", "gather", "supervise", "fetch_weights", "status", "poll", "session", "wait_for", "netcheck",
            "engine_health")


@cache
def source(name: str) -> str:
    """The program ``name`` as the host runs it: the shared helpers, then its own code."""
    if name not in PROGRAMS:
        raise KeyError(f"no host-side program {name!r}")
    common = (HERE / "_common.py").read_text()
    own = (HERE / f"{name}.py").read_text()
    return "#!/usr/bin/env python3\n" + common + "\n\n" + own


def _key(name: str, text: bytes) -> str:
    return f"{name}-{hashlib.sha256(text).hexdigest()[:24]}"


@cache
def _compiled_as(name: str) -> tuple[bytes, str]:
    """Program ``name``'s bytes and the key its code is kept under on a host (hashed once per run, not per host)."""
    text = source(name).encode()
    return text, _key(name, text)


@dataclass(frozen=True)
class Program:
    """One of these programs as ``command`` sends it: its code (``key`` names it compiled), the appended lines and
    its arguments."""
    code: bytes
    tail: bytes
    key: str
    args: list[str]

    def argv(self, python: str = "python3", flags: Sequence[str] = ()) -> list[str]:
        """``python3 -c LOADER N T KEY ARGS...``; its stdin starts with ``code`` then ``tail``."""
        return [python, *flags, "-c", LOADER, str(len(self.code)), str(len(self.tail)), self.key, *self.args]


def loader_argv(name: str, program: bytes, tail: bytes = b"", args: Sequence[object] = (), python: str = "python3",
                flags: Sequence[str] = ()) -> list[str]:
    """The argv that runs ``program`` (then ``tail``, lines appended to it) sent first on stdin; ``name`` and the
    program's hash name its compiled code on the host."""
    return Program(program, tail, _key(name, program), [str(a) for a in args]).argv(python, flags)


def command(name: str, *args: object, code: str = "", stdin: bytes = b"", python: str = "python3",
            flags: tuple[str, ...] = ()) -> tuple[list[str], bytes]:
    """``(argv, stdin)`` that run program ``name`` with ``args``: its source goes on stdin first, then ``code``
    (appended lines such as the gatherer's ``main(queries)``), then ``stdin``, which the program may read."""
    text, key = _compiled_as(name)
    tail = code.encode()
    return Program(text, tail, key, [str(a) for a in args]).argv(python, flags), text + tail + stdin


def gather_command(queries: list[dict]) -> tuple[list[str], bytes]:
    """``(argv, stdin)`` of the state gatherer answering ``queries`` (``python3 -S``: no site imports)."""
    return command("gather", code=f"\nmain({queries!r})\n", flags=("-S",))


def in_process(argv: Sequence[str], stdin: bytes | None) -> Program | None:
    """The program ``argv`` runs when it runs one of these the way ``command`` (or the probe's ``sh`` wrapper around
    it) builds it, with nothing on stdin after the program: a session (``session.py``) then runs it inside its own
    Python instead of starting another."""
    argv = list(argv)
    if argv[:2] == ["sh", "-c"] and argv[3:4] == ["gpuprov-probe"]:
        argv = argv[4:]
    rest = argv[1:]
    while rest and rest[0] == "-S":
        rest = rest[1:]
    if not argv or not argv[0].startswith("python3") or rest[:2] != ["-c", LOADER] or len(rest) < 5:
        return None
    n, t = int(rest[2]), int(rest[3])
    data = stdin or b""
    if len(data) != n + t:
        return None
    return Program(data[:n], data[n:], rest[4], [str(a) for a in rest[5:]])


def run(runner: Any, name: str, *args: object, timeout: float, **kw: Any) -> Any:
    """Run program ``name`` on ``runner``'s host and return the runner's ``Result``."""
    argv, stdin = command(name, *args, **kw)
    return runner.run(argv, stdin=stdin, timeout=timeout)
