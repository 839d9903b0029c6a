"""A runner for tests that answers from a function instead of a host (as httpx's MockTransport does for HTTP).

``FakeRunner(handler)`` records every command (argv and stdin) and asks ``handler(call)`` for the answer:
a ``Result``, an ``(exit_status, stdout, stderr)`` tuple, a string (stdout, exit 0) or None (exit 0, no output).
The play's state-gathering exec is recognised (``call.queries`` holds its queries), so a handler can answer
gathered state as data. Streams (``logs -f``) answer from ``handler`` too: the stdout of the answer is what the
stream yields, then it ends. The session (gpuprov.hostlock) is played by ``FakeSession``: each program it runs is
a call of its own (not an exec), and its lock request is the call ``session-lock PATH OWNER`` (stream=True) whose
first line is the answer (LOCKED, BUSY <who>, ORPHANS).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import remote
from .connection import DEFAULT_TIMEOUT, Result, Runner
from .inventory import Host


@dataclass
class Call:
    argv: tuple[str, ...]
    stdin: bytes | None = None
    stream: bool = False

    @property
    def program(self) -> str | None:
        """The name of the gpuprov.remote program this call runs (its source arrives on stdin), else None."""
        if remote.LOADER not in self.argv or not self.stdin:
            return None
        for name in remote.PROGRAMS:
            if self.stdin.startswith(remote.source(name).encode()):
                return name
        return None

    @property
    def args(self) -> tuple[str, ...]:
        """A remote program's own arguments (after the loader and its lengths and key)."""
        i = self.argv.index(remote.LOADER) if remote.LOADER in self.argv else -4
        return self.argv[i + 4:]

    @property
    def queries(self) -> list[dict] | None:
        """The queries of a state-gathering exec (the gatherer, its ``main([...])`` appended), else None."""
        if self.program != "gather" or self.stdin is None:
            return None
        last = self.stdin.decode().rstrip().rsplit("\n", 1)[-1]
        return ast.literal_eval(last[len("main("):-1])

    @property
    def line(self) -> str:
        """The command as one short line, for assertions: a remote program shows as ``<NAME> ARGS``."""
        if self.program:
            return " ".join((f"<{self.program}>", *self.args))
        return " ".join(a if "\n" not in a else "<script>" for a in self.argv)


Answer = Result | tuple | str | None


class FakeStream:
    def __init__(self, data: bytes):
        self.data, self.closed = data, False
        self.sent = b""

    def recv(self, n: int, timeout: float) -> bytes | None:
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk

    def send(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True


class FakeSession(FakeStream):
    """The host's session program, played against the runner's handler."""

    def __init__(self, runner: FakeRunner):
        super().__init__(b"")
        self.runner = runner

    def send(self, data: bytes) -> None:
        self.sent += data
        while b"\n" in self.sent:
            line, rest = self.sent.split(b"\n", 1)
            req = json.loads(line)
            n = int(req.get("code") or 0) + int(req.get("tail") or 0) if req["op"] == "py" else \
                int(req.get("stdin") or 0)
            if len(rest) < n:
                return
            payload, self.sent = rest[:n], rest[n:]
            if req["op"] == "lock":
                res = self.runner._answer(Call(("session-lock", req["path"], req["owner"]), b"", stream=True),
                                          count=False)
                text = (res.stdout.splitlines() or [""])[0].strip()
                self.data += (json.dumps({"lock": text}) + "\n").encode()
            else:
                argv = tuple(req["argv"])
                if req["op"] == "py":  # one of gpuprov's programs: the call as the exec it stands in for
                    code = int(req["code"])
                    argv = tuple(remote.Program(payload[:code], payload[code:], req["key"], list(argv)).argv())
                res = self.runner._answer(Call(argv, payload or None), count=False)
                out, err = res.stdout.encode(), res.stderr.encode()
                self.data += (json.dumps({"rc": res.exit_status, "out": len(out), "err": len(err)}) + "\n").encode()
                self.data += out + err


@dataclass
class FakeRunner(Runner):
    handler: Callable[[Call], Answer] = lambda call: None
    host: Host = field(default_factory=lambda: Host(name="fake", address="fake"))
    calls: list[Call] = field(default_factory=list)
    exec_count: int = 0
    streams: list[FakeStream] = field(default_factory=list)

    def _answer(self, call: Call, count: bool = True) -> Result:
        self.calls.append(call)
        self.exec_count += int(count)
        a = self.handler(call)
        if isinstance(a, Result):
            return a
        if a is None:
            a = (0, "", "")
        elif isinstance(a, str):
            a = (0, a, "")
        rc, out, err = (tuple(a) + ("", ""))[:3]
        return Result(call.argv, int(rc), str(out), str(err), 0.0)

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = DEFAULT_TIMEOUT) -> Result:
        return self._answer(Call(tuple(str(a) for a in argv), stdin))

    def open_stream(self, argv: Sequence[str], *, stdin: bytes = b"", timeout: float = 10.0) -> FakeStream:
        if stdin.startswith(remote.source("session").encode()):
            self.exec_count += 1
            session = FakeSession(self)
            self.streams.append(session)
            return session
        res = self._answer(Call(tuple(str(a) for a in argv), stdin, stream=True))
        s = FakeStream((res.stdout + res.stderr).encode())
        self.streams.append(s)
        return s

    def sftp_works(self, timeout: float = 5.0) -> bool:
        return False

    def commands(self) -> list[str]:
        """Every command except state gathering, as short lines."""
        return [c.line for c in self.calls if c.queries is None]


def gathered(answers: Callable[[dict], dict]) -> Callable[[Call], Answer]:
    """A handler that answers each gathered query with ``answers(query)`` and every other command with exit 0."""

    def handler(call: Call) -> Answer:
        qs = call.queries
        return json.dumps([answers(q) for q in qs]) if qs is not None else None

    return handler


__all__ = ["Call", "FakeRunner", "FakeSession", "FakeStream", "gathered"]
