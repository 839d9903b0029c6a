"""command (an argv, no shell), shell (through sh, explicit), wait_for (TCP or HTTP, with a timeout)."""

from __future__ import annotations

import shlex
from typing import Any

from .. import remote
from ..errors import UsageError
from .base import Change, Command, NoOp, Op, OpContext, State


def argv_arg(argv: Any, task: str) -> list[str]:
    """An ``argv`` argument: a list, or a string split the way a shell would (no shell runs it)."""
    if isinstance(argv, str):
        argv = shlex.split(argv)
    if not isinstance(argv, list) or not argv:
        raise UsageError(f"task {task!r}: argv must be a non-empty list")
    return [str(x) for x in argv]


class CommandOp(Op):
    name = "command"
    args = {"argv": True, "creates": False, "removes": False, "timeout": False, "env": False, "chdir": False}

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

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "stat", "path": str(self.a[k])} for k in ("creates", "removes") if self.a.get(k)]

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        i = 0
        if self.a.get("creates"):
            if state[i].get("exists"):
                return NoOp(f"{self.a['creates']} exists")
            i += 1
        if self.a.get("removes") and not state[i].get("exists"):
            return NoOp(f"{self.a['removes']} does not exist")
        argv = ctx.argv(self.full_argv())
        return Change(f"run {shlex.join(self.argv)[:80]}", (Command(argv, timeout=float(self.a.get("timeout", 600))),))


class Shell(CommandOp):
    name = "shell"
    args = {"cmd": True, "creates": False, "removes": False, "timeout": False, "env": False, "chdir": False}

    @classmethod
    def free_form(cls) -> str | None:
        return "cmd"

    def validate(self) -> None:
        if not isinstance(self.a["cmd"], str):
            raise UsageError(f"task {self.task!r}: shell cmd must be a string")
        self.argv = ["sh", "-c", self.a["cmd"]]


class Read(Op):
    """A read-only command (a fact): it runs during the play's one state-gathering exec and never changes
    anything, so it reports ok and costs no round trip of its own. Register it to use its output."""

    name = "read"
    args = {"argv": True, "timeout": False}

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
        return {"rc": state[0].get("rc"), "stdout": state[0].get("stdout", ""), "stderr": state[0].get("stderr", "")}




class WaitFor(Op):
    name = "wait_for"
    args = {"host": False, "port": False, "url": False, "timeout": False, "status": False}

    def validate(self) -> None:
        if not (self.a.get("url") or self.a.get("port")):
            raise UsageError(f"task {self.task!r}: wait_for needs url or port")

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        timeout = float(self.a.get("timeout", 60))
        if self.a.get("url"):
            args = ["http", str(self.a["url"]), "0"]
        else:
            args = ["tcp", str(self.a.get("host", "127.0.0.1")), str(int(self.a["port"]))]
        argv, program = remote.command("wait_for", *args, timeout, int(self.a.get("status", 200)))
        return Change(f"wait for {self.a.get('url') or self.a.get('port')}",
                      (Command(tuple(argv), stdin=program, timeout=timeout + 15),), changes=False)
