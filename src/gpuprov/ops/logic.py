"""set_fact, debug, assert, fail: done on the controller, with Ansible's arguments and results; no host state,
no command, so they cost nothing on a no-op run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UsageError
from .base import VAR_NAME, NoOp, Op, OpContext, State


class _Local(Op):
    local = True

    def check(self, ctx: OpContext, state: list[State]) -> NoOp:
        return NoOp("done on the controller")


class SetFact(_Local):
    """Vars for this host from here on (above play and inventory vars, below -e), kept for later plays."""

    name = "set_fact"

    def __init__(self, args: Any, task: str):
        if not isinstance(args, dict) or not args:
            raise UsageError(f"task {task!r}: set_fact takes a mapping of vars")
        bad = [k for k in args if not VAR_NAME.match(str(k))]
        if bad:
            raise UsageError(f"task {task!r}: set_fact: {bad[0]!r} is not a valid var name")
        self.a = {k: v for k, v in args.items() if k != "cacheable"}
        self.task = task

    def run_local(self, evaluate: Callable[[str], Any]) -> State:
        return {"ansible_facts": dict(self.a)}


class Debug(_Local):
    name = "debug"
    args = {"msg": False, "var": False, "verbosity": False}

    def validate(self) -> None:
        if "msg" in self.a and "var" in self.a:
            raise UsageError(f"task {self.task!r}: debug takes one of msg and var")

    def run_local(self, evaluate: Callable[[str], Any]) -> State:
        if "var" in self.a:
            name = str(self.a["var"])
            try:
                value = evaluate(name)
            except UsageError:
                value = "VARIABLE IS NOT DEFINED!"
            return {name: value, "msg": f"{name}: {value!r}"}
        msg = self.a.get("msg", "Hello world!")
        return {"msg": msg if isinstance(msg, str) else repr(msg)}


class Assert(_Local):
    name = "assert"
    args = {"that": True, "fail_msg": False, "msg": False, "success_msg": False, "quiet": False}

    def validate(self) -> None:
        that = self.a["that"]
        self.that = [that] if isinstance(that, (str, bool)) else list(that or [])
        if not self.that:
            raise UsageError(f"task {self.task!r}: assert needs at least one condition in that")

    def run_local(self, evaluate: Callable[[str], Any]) -> State:
        for cond in self.that:
            expr = str(cond).strip() if not isinstance(cond, bool) else ("true" if cond else "false")
            if expr.startswith("{{") and expr.endswith("}}"):
                expr = expr[2:-2]
            if not evaluate(expr):
                msg = self.a.get("fail_msg") or self.a.get("msg") or "Assertion failed"
                return {"failed": True, "assertion": str(cond), "evaluated_to": False, "msg": str(msg)}
        return {"msg": str(self.a.get("success_msg") or "All assertions passed")}


class Fail(_Local):
    name = "fail"
    args = {"msg": False}

    def run_local(self, evaluate: Callable[[str], Any]) -> State:
        return {"failed": True, "msg": str(self.a.get("msg", "Failed as requested from task"))}
