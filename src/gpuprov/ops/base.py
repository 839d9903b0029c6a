"""The operation contract (Ansible's, pyinfra's shape).

An operation declares its arguments, names the host state it needs as a *query* (answered for all tasks of a
play in one round trip by ``gather.py``), and from that state decides: ``NoOp(reason)`` or
``Change(diff, commands)``. Applying runs exactly the change's commands. Commands are argv lists (joined once
with ``shlex.join`` by the runner); data that must not appear in argv (file content, secrets) goes on stdin.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import UsageError

#: a var name (set_fact, register, loop_var)
VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: one query's answer from the host (``gather.py``), or what ``register`` stores
State = dict[str, Any]


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    stdin: bytes | None = None
    timeout: float = 600.0
    #: a short label for logs (never the stdin)
    label: str = ""


@dataclass(frozen=True)
class Diff:
    path: str
    before: str | None
    after: str | None
    secret: bool = False

    def unified(self) -> str:
        if self.secret:
            return f"--- {self.path}\n+++ {self.path}\n(content hidden: this file holds secrets)\n"
        before = (self.before or "").splitlines(keepends=True)
        after = (self.after or "").splitlines(keepends=True)
        return "".join(difflib.unified_diff(before, after, f"{self.path} (before)" if self.before is not None
                                            else "/dev/null", f"{self.path} (after)" if self.after is not None
                                            else "/dev/null"))


@dataclass(frozen=True)
class NoOp:
    reason: str


@dataclass(frozen=True)
class Change:
    summary: str
    commands: tuple[Command, ...] = ()
    diffs: tuple[Diff, ...] = ()
    #: False for operations that only wait or read (wait_for): they report ok, not changed
    changes: bool = True
    #: after the commands: a Python function (runner, ctx) that polls the host and reports progress
    poll: Callable[[Any, OpContext], None] | None = None


@dataclass
class OpContext:
    """What an operation may read: the host's facts and plan (read-only) and its runner (for apply)."""

    runner: Any
    facts: Any
    check_mode: bool = False
    become: bool = False
    #: diffs are shown (--diff or --check): a changed file's old text is worth fetching
    diff: bool = False
    notes: list[str] = field(default_factory=list)
    #: progress lines for long waits (the weights download), shown to the user as they come
    on_progress: Callable[[str], None] | None = None

    def argv(self, argv: Sequence[str]) -> tuple[str, ...]:
        argv = tuple(str(a) for a in argv)
        if self.become and not getattr(self.facts, "is_root", True):
            return ("sudo", "-n", "--") + argv
        return argv


class Op:
    """Base class: subclasses set ``name``, ``args`` (allowed: required flag) and implement query/check."""

    name: ClassVar[str] = ""
    #: more names the module answers to (``service`` is also ``systemd``)
    also: ClassVar[tuple[str, ...]] = ()
    args: ClassVar[Mapping[str, bool]] = {}
    #: Ansible's other names for arguments (``dest`` for ``path``), and gpuprov's older ones
    aliases: ClassVar[Mapping[str, str]] = {}
    #: the ``k=v`` words a free-form module takes out of its text (``creates=``)
    raw_params: ClassVar[tuple[str, ...]] = ()
    #: decided and done on the controller (set_fact, debug, assert, fail): no host state, no command
    local: ClassVar[bool] = False
    registry: ClassVar[dict[str, type[Op]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.name:
            for n in (cls.name, *cls.also):
                Op.registry[n] = cls

    def __init__(self, args: Mapping[str, Any], task: str):
        if isinstance(args, (str, list)) and self.free_form():
            args = {self.free_form(): args}
        if not isinstance(args, Mapping):
            raise UsageError(f"task {task!r}: {self.name} takes a mapping of arguments")
        if self.aliases:
            args = dict(args)
            for alias, canon in self.aliases.items():
                if alias in args:
                    if canon in args and alias != canon:
                        raise UsageError(f"task {task!r}: {self.name}: give one of {canon} and {alias}")
                    args[canon] = args.pop(alias)
        unknown = set(args) - set(self.args)
        if unknown:
            raise UsageError(f"task {task!r}: {self.name} has no argument(s) {', '.join(sorted(unknown))} "
                             f"(allowed: {', '.join(sorted(set(self.args) | set(self.aliases)))})")
        missing = [a for a, req in self.args.items() if req and a not in args]
        if missing:
            raise UsageError(f"task {task!r}: {self.name} needs {', '.join(missing)}")
        self.a = dict(args)
        self.task = task
        self.validate()

    @classmethod
    def free_form(cls) -> str | None:
        return None

    def validate(self) -> None:
        pass

    def queries(self, ctx: OpContext) -> list[State]:
        return []

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        raise NotImplementedError

    def noop_result(self, state: list[State]) -> State:
        """What ``register`` stores when the task had nothing to do (``read`` returns its output here)."""
        return {}

    def result(self, ctx: OpContext, outputs: list[Any]) -> State:
        """What ``register`` stores after apply (commands' outputs)."""
        if outputs:
            last = outputs[-1]
            return output_result(last.exit_status, last.stdout, last.stderr)
        return {}

    def run_local(self, evaluate: Callable[[str], Any]) -> State:
        """A controller-side module's result (``local`` modules only); ``evaluate`` reads a Jinja expression."""
        raise NotImplementedError


def output_result(rc: int | None, stdout: str, stderr: str) -> State:
    """A command's result in Ansible's shape (trailing newlines stripped, as Ansible's strip_empty_ends does)."""
    out, err = (stdout or "").rstrip("\r\n"), (stderr or "").rstrip("\r\n")
    return {"rc": rc, "stdout": out, "stderr": err, "stdout_lines": out.splitlines(),
            "stderr_lines": err.splitlines()}


def mode_str(mode: Any, task: str) -> str | None:
    if mode is None:
        return None
    if isinstance(mode, int) and not isinstance(mode, bool):
        mode = format(mode, "o")  # YAML reads 0644 as the octal number it is
    mode = str(mode)
    assert isinstance(mode, str)
    if not mode.isdigit() or len(mode) > 4 or any(c in "89" for c in mode):
        raise UsageError(f"task {task!r}: mode must be octal like '0644', got {mode!r}")
    return mode.rjust(4, "0")
