"""command (an argv, no shell), shell (through /bin/sh, explicit), read (a fact, answered in the gather), wait_for.

Arguments as Ansible names them: free form with ``creates=``/``removes=``/``chdir=`` inline, ``cmd``, ``argv``,
``creates``, ``removes``, ``chdir``, ``stdin``; gpuprov's ``env`` and ``timeout`` beside them.
"""

from __future__ import annotations

import shlex
from typing import Any, ClassVar

from .. import remote
from ..errors import UsageError
from .base import Change, Command, NoOp, Op, OpContext, State, output_result


def argv_arg(argv: Any, task: str) -> list[str]:
    """An ``argv`` argument: a list, or a string split the way a shell would (no shell runs it)."""
    if isinstance(argv, str):
        try:
            argv = shlex.split(argv)
        except ValueError as e:
            raise UsageError(f"task {task!r}: cannot split the command line: {e}") from None
    if not isinstance(argv, list) or not argv:
        raise UsageError(f"task {task!r}: the command is empty")
    return [str(x) for x in argv]


class CommandOp(Op):
    name = "command"
    args = {"argv": True, "creates": False, "removes": False, "timeout": False, "env": False, "chdir": False,
            "stdin": False, "stdin_add_newline": False, "strip_empty_ends": False}
    aliases = {"cmd": "argv", "_raw_params": "argv"}
    raw_params: ClassVar[tuple[str, ...]] = ("creates", "removes", "chdir", "stdin")

    @classmethod
    def free_form(cls) -> str | None:
        return "argv"

    def validate(self) -> None:
        self.argv = argv_arg(self.a["argv"], self.task)

    def full_argv(self) -> list[str]:
        argv = list(self.argv)
        if self.a.get("env"):
            argv = ["env", *[f"{k}={v}" for k, v in self.a["env"].items()], *argv]
        if self.a.get("chdir"):
            argv = ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", str(self.a["chdir"]), *argv]
        return argv

    def _stdin(self) -> bytes | None:
        if self.a.get("stdin") is None:
            return None
        text = str(self.a["stdin"])
        if self.a.get("stdin_add_newline", True):
            text += "\n"
        return text.encode()

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "stat", "path": self._path(k)} for k in ("creates", "removes") if self.a.get(k)]

    def _path(self, k: str) -> str:
        p = str(self.a[k])
        if not p.startswith("/") and self.a.get("chdir"):  # Ansible reads a relative creates= from chdir
            p = f"{str(self.a['chdir']).rstrip('/')}/{p}"
        return p

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        i = 0
        if self.a.get("creates"):
            if state[i].get("exists"):
                return NoOp(f"{self.a['creates']} exists")
            i += 1
        if self.a.get("removes") and not state[i].get("exists"):
            return NoOp(f"{self.a['removes']} does not exist")
        argv = ctx.argv(self.full_argv())
        return Change(f"run {shlex.join(self.argv)[:80]}",
                      (Command(argv, stdin=self._stdin(), timeout=float(self.a.get("timeout", 600))),))

    def noop_result(self, state: list[State]) -> State:
        why = (f"skipped, since {self.a['creates']} exists" if self.a.get("creates") and state[0].get("exists")
               else f"skipped, since {self.a.get('removes')} does not exist")
        return {"cmd": self.shown(), "rc": 0, "stdout": why, "stdout_lines": [why], "stderr": "", "stderr_lines": []}

    def shown(self) -> Any:
        return list(self.argv)

    def result(self, ctx: OpContext, outputs: list[Any]) -> State:
        out = super().result(ctx, outputs)
        out["cmd"] = self.shown()
        return out


class Shell(CommandOp):
    name = "shell"
    args = {"cmd": True, "creates": False, "removes": False, "timeout": False, "env": False, "chdir": False,
            "executable": False, "stdin": False, "stdin_add_newline": False, "strip_empty_ends": False}
    aliases = {"_raw_params": "cmd"}
    raw_params = ("creates", "removes", "chdir", "executable", "stdin")

    @classmethod
    def free_form(cls) -> str | None:
        return "cmd"

    def validate(self) -> None:
        if not isinstance(self.a["cmd"], str) or not self.a["cmd"].strip():
            raise UsageError(f"task {self.task!r}: shell needs the command as text")
        self.argv = [str(self.a.get("executable") or "/bin/sh"), "-c", self.a["cmd"]]

    def shown(self) -> Any:
        return self.a["cmd"]


class Read(Op):
    """A read-only command (a fact): it runs during the play's one state-gathering exec and never changes
    anything, so it reports ok and costs no round trip of its own. Register it to use its output."""

    name = "read"
    args = {"argv": True, "timeout": False}
    aliases = {"cmd": "argv"}

    @classmethod
    def free_form(cls) -> str | None:
        return "argv"

    def validate(self) -> None:
        self.argv = argv_arg(self.a["argv"], self.task)

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "cmd", "argv": list(ctx.argv(self.argv)), "timeout": float(self.a.get("timeout", 60))}]

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        return NoOp(f"read {shlex.join(self.argv)[:60]} (exit {state[0].get('rc')})")

    def noop_result(self, state: list[State]) -> State:
        return output_result(state[0].get("rc"), state[0].get("stdout", ""), state[0].get("stderr", ""))


class WaitFor(Op):
    """Ansible's wait_for: a TCP port ``started``/``stopped``, a file ``present``/``absent`` (optionally holding
    ``search_regex``), after ``delay``, within ``timeout``; gpuprov's ``url`` + ``status`` beside them."""

    name = "wait_for"
    args = {"host": False, "port": False, "path": False, "state": False, "timeout": False, "delay": False,
            "search_regex": False, "sleep": False, "connect_timeout": False, "msg": False, "url": False,
            "status": False}

    def validate(self) -> None:
        if sum(bool(self.a.get(k)) for k in ("url", "port", "path")) > 1:
            raise UsageError(f"task {self.task!r}: wait_for takes one of port, path, url")
        state = self.a.get("state", "started")
        ok = {"port": ("started", "stopped", "drained"), "path": ("present", "started", "absent"),
              "url": ("started",)}
        kind = "url" if self.a.get("url") else "port" if self.a.get("port") else "path" if self.a.get("path") else ""
        if kind and state not in ok[kind]:
            raise UsageError(f"task {self.task!r}: wait_for {kind} takes state {', '.join(ok[kind])}")
        if not kind and not self.a.get("timeout"):
            raise UsageError(f"task {self.task!r}: wait_for needs port, path, url or timeout")
        self.kind = kind

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        timeout = float(self.a.get("timeout", 300))
        if self.kind == "url":
            args = ["http", str(self.a["url"]), "0", "started"]
        elif self.kind == "port":
            args = ["tcp", str(self.a.get("host", "127.0.0.1")), str(int(self.a["port"])),
                    "stopped" if self.a.get("state") in ("stopped", "drained") else "started"]
        elif self.kind == "path":
            args = ["path", str(self.a["path"]), "0", "absent" if self.a.get("state") == "absent" else "present"]
        else:
            args = ["sleep", "", "0", "started"]
        argv, program = remote.command("wait_for", *args, timeout, int(self.a.get("status", 200)),
                                       float(self.a.get("delay", 0)), str(self.a.get("search_regex") or ""),
                                       float(self.a.get("sleep", 1)))
        return Change(f"wait for {self.a.get('url') or self.a.get('port') or self.a.get('path') or f'{timeout}s'}",
                      (Command(tuple(argv), stdin=program, timeout=timeout + float(self.a.get("delay", 0)) + 15,
                               label="wait_for"),), changes=False)

    def result(self, ctx: OpContext, outputs: list[Any]) -> State:
        out = super().result(ctx, outputs)
        if out.get("rc"):
            out["msg"] = str(self.a.get("msg") or out.get("stderr") or "Timeout when waiting")
        return {k: out[k] for k in ("msg",) if k in out}
