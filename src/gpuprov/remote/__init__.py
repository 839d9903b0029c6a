"""Every program gpuprov runs on a host, and the one way it sends them.

Each ``NAME.py`` here is a stdlib-only program for the host's own ``python3`` (3.8+). ``source(NAME)`` is the
program as the host gets it: ``_common.py`` (the shared pid, env-file and HTTP helpers) followed by ``NAME.py``.
``argv(NAME, *args)`` runs it by sending that source on stdin behind a one-line loader that reads exactly the
program's bytes, so a program may go on reading stdin after it (the session takes requests there, and holds the
run lock until stdin closes).
The supervisor and the weights fetcher are installed as files with the same ``source``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

#: reads exactly N bytes of program from stdin, then runs it with the remaining arguments as sys.argv[1:]
LOADER = "import sys;exec(compile(sys.stdin.buffer.read(int(sys.argv.pop(1))),'gpuprov-remote','exec'))"
PROGRAMS = ("probe", "gather", "supervise", "fetch_weights", "status", "poll", "session", "wait_for", "netcheck",
            "engine_health")


@cache
def source(name: str) -> str:
    """The program ``name`` as the host runs it: the shared helpers, then its own code."""
    if name not in PROGRAMS:
        raise KeyError(f"no host-side program {name!r}")
    pkg = resources.files(__package__)
    common = pkg.joinpath("_common.py").read_text()
    own = pkg.joinpath(f"{name}.py").read_text()
    return "#!/usr/bin/env python3\n" + common + "\n\n" + own


def command(name: str, *args: object, code: str = "", stdin: bytes = b"", python: str = "python3",
            flags: tuple[str, ...] = ()) -> tuple[list[str], bytes]:
    """``(argv, stdin)`` that run program ``name`` with ``args``: its source (plus ``code``, appended lines such as
    the gatherer's ``main(queries)``) goes on stdin first, then ``stdin``, which the program may read."""
    text = (source(name) + code).encode()
    return [python, *flags, "-c", LOADER, str(len(text)), *[str(a) for a in args]], text + stdin


def gather_command(queries: list[dict]) -> tuple[list[str], bytes]:
    """``(argv, stdin)`` of the state gatherer answering ``queries`` (``python3 -S``: no site imports)."""
    return command("gather", code=f"\nmain({queries!r})\n", flags=("-S",))


def in_process(argv: Sequence[str], stdin: bytes | None) -> tuple[bytes, list[str]] | None:
    """``(program, args)`` when ``argv`` runs one of these programs the way ``command`` (or the probe's ``sh``
    wrapper around it) builds it, with nothing on stdin after the program: a session (``session.py``) then runs
    it inside its own Python instead of starting another."""
    argv = list(argv)
    if argv[:2] == ["sh", "-c"] and argv[3:4] == ["gpuprov-probe"]:
        argv = argv[4:]
    rest = argv[1:]
    while rest and rest[0] == "-S":
        rest = rest[1:]
    if not argv or not argv[0].startswith("python3") or rest[:2] != ["-c", LOADER] or len(rest) < 3:
        return None
    n = int(rest[2])
    data = stdin or b""
    if len(data) != n:
        return None
    return data, [str(a) for a in rest[3:]]


def run(runner: Any, name: str, *args: object, timeout: float, **kw: Any) -> Any:
    """Run program ``name`` on ``runner``'s host and return the runner's ``Result``."""
    argv, stdin = command(name, *args, **kw)
    return runner.run(argv, stdin=stdin, timeout=timeout)
