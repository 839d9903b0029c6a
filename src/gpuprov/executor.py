"""Run plays on hosts with Ansible semantics: check/diff, handlers, register/when, per-host isolation, recap.

One SSH connection per host (each in its own worker thread). Before the first task, the state every task of
the play needs is gathered in ONE remote exec (``remote/gather.py``); a no-op run therefore costs one round trip
per host. Once a task has changed something, later tasks re-read their own state right before deciding.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import remote, settings
from .errors import ConnectError, GpuprovError, RemoteError, UsageError
from .fleet import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, for_each_host, one_line
from .inventory import Host
from .ops import Change, NoOp, Op, OpContext
from .ops.files import Template
from .playbook import Play, Task, Templar
from .secrets import Secret, redact


@dataclass
class TaskResult:
    task: str
    status: str  # ok | changed | failed | skipped
    msg: str = ""
    diffs: list[str] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass
class HostRecap:
    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: bool = False
    error: str | None = None
    time_s: float = 0.0
    execs: int = 0
    results: list[TaskResult] = field(default_factory=list)
    #: time.monotonic() at start and end (lets tests see that hosts overlapped)
    started: float = 0.0
    ended: float = 0.0
    #: the exit code of the error that ended the run, when it has its own (a busy host: 4)
    code: int | None = None

    @property
    def exit_code(self) -> int:
        if self.code is not None:
            return self.code
        if self.unreachable:
            return EXIT_UNREACHABLE
        return EXIT_FAILED if self.failed or self.error else EXIT_OK

    def merge(self, other: HostRecap) -> None:
        """Add a later play's recap for the same host."""
        for k in ("ok", "changed", "failed", "skipped", "time_s", "execs"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.unreachable |= other.unreachable
        self.error = self.error or other.error
        self.code = self.code if self.code is not None else other.code
        self.results += other.results

    @classmethod
    def of_error(cls, host: str, e: BaseException, time_s: float = 0.0, execs: int = 0) -> HostRecap:
        """The recap of a run that an error ended before or between tasks."""
        if isinstance(e, ConnectError):
            return cls(host, unreachable=True, error=one_line(e), time_s=time_s, execs=execs)
        code = e.exit_code if isinstance(e, GpuprovError) and e.exit_code not in (EXIT_OK, EXIT_FAILED) else None
        return cls(host, failed=1, error=one_line(e), time_s=time_s, execs=execs, code=code)

    def count(self, r: TaskResult) -> None:
        self.results.append(r)
        setattr(self, r.status, getattr(self, r.status) + 1)

    def to_json(self) -> dict:
        return {"ok": self.ok, "changed": self.changed, "failed": self.failed, "skipped": self.skipped,
                "unreachable": self.unreachable, "time_s": round(self.time_s, 3), "execs": self.execs,
                **({"error": self.error} if self.error else {})}


@dataclass
class RunOptions:
    check: bool = False
    diff: bool = False
    tags: tuple[str, ...] = ()
    on_event: Callable[[str, str, TaskResult], None] | None = None
    on_progress: Callable[[str, str], None] | None = None


def under_work_lock(argv: Sequence[str], work_lock: str | None) -> tuple[str, ...]:
    """An applied command, holding the shared work lock when there is one (see gpuprov.hostlock)."""
    return ("flock", "-s", "-o", work_lock, *argv) if work_lock else tuple(argv)


def gather(runner: Any, queries: list[dict]) -> list[dict]:
    if not queries:
        return []
    import ast

    res = remote.run(runner, "gather", code=f"\nmain({queries!r})\n", flags=("-S",), timeout=120)
    if res.exit_status != 0:
        raise RemoteError(f"{runner.host.name}: state gathering failed: {res.stderr.strip()[-300:]}")
    try:
        return ast.literal_eval(res.stdout)
    except (ValueError, SyntaxError):
        raise RemoteError(f"{runner.host.name}: unreadable state: {res.stdout[:200]!r}") from None


class HostRun:
    """One play on one host."""

    def __init__(self, play: Play, host: Host, runner: Any, facts: Any, extra_ctx: Mapping[str, Any],
                 templar: Templar, opts: RunOptions, work_lock: str | None = None, gather_runner: Any = None):
        self.play, self.host, self.runner, self.facts = play, host, runner, facts
        #: where state gathering runs: the run's session (hostlock.HostSession), sparing an exec, or the runner
        self.gather_runner = gather_runner or runner
        #: a file every applied command holds a shared flock on (see gpuprov.hostlock)
        self.work_lock = work_lock
        self.templar, self.opts = templar, opts
        self.recap = HostRecap(host.name)
        self.ctx: dict[str, Any] = {**{k: v for k, v in play.vars.items()}}
        self.ctx.update({k: v.value for k, v in host.vars.items()})  # a Secret stays a Secret (renders ***)
        self.ctx.update(extra_ctx)
        self.ctx["inventory_hostname"] = host.name
        self.ctx["check_mode"] = opts.check
        self.secrets = [v.value for v in host.vars.values() if isinstance(v.value, Secret)]
        self.secrets += [v for v in extra_ctx.values() if isinstance(v, Secret)]
        self.notified: list[str] = []
        self.dirty = False  # something changed on the host since the state was gathered

    # ----------------------------------------------------------- helpers
    def _selected(self, t: Task) -> bool:
        if not self.opts.tags:
            return True
        return bool(set(t.tags) & (set(self.opts.tags) | {"always"}))

    def _build_op(self, t: Task) -> Op:
        args = self.templar.render(t.args, self.ctx, t.name)
        if not t.secret:
            self._no_secret_in(args, t)
        op = Op.registry[str(t.op)](args, t.name)
        if isinstance(op, Template):
            text = self.templar.render_file(str(op.a["src"]), {**self.ctx, **(op.a.get("vars") or {})}, t.name)
            if not t.secret:
                self._no_secret_in(text, t)
            op.rendered = text.encode()
        return op

    def _no_secret_in(self, value: Any, t: Task) -> None:
        blob = json.dumps(value, default=str)
        for s in self.secrets:
            if s and s.reveal() and s.reveal() in blob:
                raise UsageError(f"task {t.name!r} reveals a secret but is not marked secret: true")

    def _redact(self, text: str) -> str:
        return redact(text, *self.secrets)

    def _event(self, t: Task, r: TaskResult) -> None:
        if self.opts.on_event:
            self.opts.on_event(self.host.name, self._title(t), r)

    def _title(self, t: Task) -> str:
        if "{{" not in t.name:
            return t.name
        try:
            return str(self.templar.render(t.name, self.ctx, t.name))
        except UsageError:
            return t.name

    # ----------------------------------------------------------- run
    def prepare(self) -> dict[int, tuple[Op, list[dict]]]:
        """Build every op whose args can be rendered now, and their state queries."""
        prepared: dict[int, tuple[Op, list[dict]]] = {}
        for i, t in enumerate(self.play.tasks + self.play.handlers):
            if t.meta or not self._selected(t):
                continue
            try:
                op = self._build_op(t)
            except UsageError as e:
                if "undefined variable" in str(e) and t.register is None and any(
                        r.register for r in self.play.tasks):
                    continue  # may depend on a registered result: built when its turn comes
                raise
            prepared[i] = (op, op.queries(OpContext(self.runner, self.facts, self.opts.check, t.become)))
        return prepared

    def run(self) -> HostRecap:
        start = time.monotonic()
        self.recap.started = start
        try:
            prepared = self.prepare()
            queries = [q for _, qs in prepared.values() for q in qs]
            answers = gather(self.gather_runner, queries)
            states: dict[int, list[dict]] = {}
            k = 0
            for i, (_, qs) in prepared.items():
                states[i] = answers[k:k + len(qs)]
                k += len(qs)
            for i, t in enumerate(self.play.tasks):
                if not self._selected(t):
                    continue
                if t.meta == "flush_handlers":
                    if not self._flush(prepared, states):
                        break
                    continue
                if not self._run_task(t, prepared.get(i), states.get(i)):
                    break
            else:
                self._flush(prepared, states)
        except ConnectError as e:
            self.recap.unreachable = True
            self.recap.error = self._redact(str(e))
        except GpuprovError as e:
            self.recap.failed += 1
            self.recap.error = self._redact(str(e))
        self.recap.ended = time.monotonic()
        self.recap.time_s = self.recap.ended - start
        self.recap.execs = getattr(self.runner, "exec_count", 0)
        return self.recap

    def _flush(self, prepared, states) -> bool:
        n_tasks = len(self.play.tasks)
        for j, h in enumerate(self.play.handlers):
            if h.name in self.notified:
                self.notified.remove(h.name)
                if not self._run_task(h, prepared.get(n_tasks + j), states.get(n_tasks + j)):
                    return False
        return True

    def _unknown_in_check_mode(self, t: Task, e: UsageError) -> bool:
        """In check mode, results registered by skipped commands are unknown: skip what depends on them."""
        if not self.opts.check:
            raise e
        self._finish(t, TaskResult(t.name, "skipped", f"depends on a result unknown in check mode ({e})"),
                     {"skipped": True, "changed": False})
        return True

    def _run_task(self, t: Task, prepared: tuple[Op, list[dict]] | None, state: list[dict] | None) -> bool:
        t0 = time.monotonic()
        try:
            run_it = t.when is None or self.templar.test(t.when, self.ctx, t.name)
        except UsageError as e:
            return self._unknown_in_check_mode(t, e)
        if not run_it:
            r = TaskResult(t.name, "skipped", "condition false")
            self._finish(t, r, {"skipped": True, "changed": False})
            return True
        octx = OpContext(self.runner, self.facts, self.opts.check, t.become)
        report_progress = self.opts.on_progress
        if report_progress:
            octx.on_progress = lambda text: report_progress(self.host.name, text)
        try:
            op = prepared[0] if prepared else self._build_op(t)
        except UsageError as e:
            return self._unknown_in_check_mode(t, e)
        attempts = max(1, t.retries + 1) if t.until else 1
        for attempt in range(attempts):
            if state is None or self.dirty or attempt:
                state = gather(self.gather_runner, op.queries(octx))
            decision = op.check(octx, state)
            result: dict[str, Any] = {"changed": False, "failed": False, "skipped": False}
            if isinstance(decision, NoOp):
                r = TaskResult(t.name, "ok", decision.reason)
                result.update(op.noop_result(state))
                if t.failed_when is not None and self.templar.test(t.failed_when, self._with_result(t, result), t.name):
                    r = TaskResult(t.name, "failed", f"failed_when: {t.failed_when}")
                    result["failed"] = True
            elif self.opts.check and t.op in ("command", "shell"):
                r = TaskResult(t.name, "skipped", f"skipped in check mode (would {decision.summary})")
                result["skipped"] = True
            elif self.opts.check:
                status = "changed" if decision.changes else "ok"
                r = TaskResult(t.name, "skipped" if not decision.changes else status,
                               f"would {decision.summary}" if decision.changes else "skipped in check mode")
                result["changed"] = decision.changes
            else:
                r = self._apply(t, op, octx, decision, result)
            if isinstance(decision, Change) and (self.opts.diff or self.opts.check):
                r.diffs = [d.unified() if not t.secret else d.__class__(d.path, None, None, True).unified()
                           for d in decision.diffs]
            if t.until and r.status != "failed" and not isinstance(decision, NoOp) and not self.opts.check:
                if not self.templar.test(t.until, self._with_result(t, result), t.name):
                    if attempt + 1 < attempts:
                        time.sleep(t.delay)
                        continue
                    r = TaskResult(t.name, "failed", f"until: {t.until} not true after {attempts} attempts")
            break
        r.duration_s = time.monotonic() - t0
        if t.secret:
            r.msg = r.msg.split(":")[0] if r.status == "failed" else r.msg
        self._finish(t, r, result)
        if r.status == "changed":
            for n in t.notify:
                if n not in self.notified:
                    self.notified.append(n)
        return r.status != "failed"

    def _apply(self, t: Task, op: Op, octx: OpContext, decision: Change, result: dict[str, Any]) -> TaskResult:
        """Run exactly the change's commands (under the shared work lock), then poll; fill ``result``."""
        outputs = []
        failed_msg = None
        for cmd in decision.commands:
            res = self.runner.run(under_work_lock(cmd.argv, self.work_lock), stdin=cmd.stdin, timeout=cmd.timeout)
            outputs.append(res)
            if res.exit_status != 0 and t.failed_when is None:
                tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-6:])
                failed_msg = f"{cmd.label or cmd.argv[0]} exited {res.exit_status}: {tail}"
                break
        if failed_msg is None and decision.poll is not None:
            try:
                decision.poll(self.runner, octx)
            except RemoteError as e:
                failed_msg = str(e)
        result.update(op.result(octx, outputs))
        result["changed"] = decision.changes
        if decision.changes:
            self.dirty = True
        if t.changed_when is not None:
            result["changed"] = self.templar.test(t.changed_when, self._with_result(t, result), t.name)
        if t.failed_when is not None:
            failed = self.templar.test(t.failed_when, self._with_result(t, result), t.name)
            failed_msg = f"failed_when: {t.failed_when}" if failed else None
        if failed_msg:
            result["failed"] = True
            return TaskResult(t.name, "failed", self._redact(failed_msg))
        return TaskResult(t.name, "changed" if result["changed"] else "ok", decision.summary)

    def _with_result(self, t: Task, result: dict) -> dict:
        """Context for changed_when / failed_when / until: the result as ``result`` and by its register name."""
        ctx = {**self.ctx, "result": result}
        if t.register:
            ctx[t.register] = result
        return ctx

    def _finish(self, t: Task, r: TaskResult, result: dict) -> None:
        r.msg = self._redact(r.msg)
        r.task = self._title(t)
        self.recap.count(r)
        if r.status == "failed" and not self.recap.error:
            self.recap.error = f"task {r.task!r} failed: {r.msg}"
        if t.register:
            self.ctx[t.register] = result
        self._event(t, r)


def run_play(play: Play, hosts: Sequence[Host], connect: Callable[[Host], Any],
             facts_for: Callable[[Host, Any], Any], extra_for: Callable[[Host, Any, Any], Mapping[str, Any]],
             templar: Templar, opts: RunOptions, max_workers: int | None = None) -> list[HostRecap]:
    """Run one play on many hosts in parallel (``GPUPROV_PARALLEL`` at once unless ``max_workers`` says);
    a failing or unreachable host never stops the others."""

    def one(h: Host) -> HostRecap:
        t0 = time.monotonic()
        try:
            runner = connect(h)
        except Exception as e:  # noqa: BLE001 - recorded in the host's recap
            return HostRecap.of_error(h.name, e, time.monotonic() - t0)
        try:
            facts = facts_for(h, runner)
            extra = extra_for(h, runner, facts)
            return HostRun(play, h, runner, facts, extra, templar, opts).run()
        except Exception as e:  # noqa: BLE001 - recorded in the host's recap (with -v, the traceback in the log)
            if not isinstance(e, GpuprovError):
                import logging

                logging.getLogger("gpuprov").debug("%s: unexpected error", h.name, exc_info=True)
            return HostRecap.of_error(h.name, e, time.monotonic() - t0, getattr(runner, "exec_count", 0))
        finally:
            runner.close()

    outcomes = for_each_host(hosts, one, max_workers)
    return [o.value if o.value is not None else HostRecap.of_error(o.host.name, o.error or RuntimeError("no result"))
            for o in outcomes]


def template_dirs(playbook: Path) -> list[Path]:
    """Where ``template: src:`` is looked up: templates/ beside or above the playbook, ./templates, and the
    playbook's folder and its parent (so ``src: job/unit.j2`` works from a project folder)."""
    dirs = [playbook.parent / "templates", playbook.parent.parent / "templates", settings.project_root() / "templates",
            playbook.parent, playbook.parent.parent]
    return [d for d in dirs if d.is_dir()]


def apply_one(runner: Any, op: Op, work_lock: str | None = None) -> bool:
    """Decide and apply one operation outside a play (control verbs, roll-back): gather its state, check, run
    exactly the change's commands (under the shared work lock when there is one). True when something changed;
    a command that fails raises ``RemoteError``."""
    ctx = OpContext(runner, None)
    decision = op.check(ctx, gather(runner, op.queries(ctx)))
    if isinstance(decision, NoOp):
        return False
    for cmd in decision.commands:
        runner.run(under_work_lock(cmd.argv, work_lock), stdin=cmd.stdin, timeout=cmd.timeout).check()
    return True


def service_op(layout: Any, manager: str, state: str, title: str) -> Op:
    """The ``service`` operation for gpuprov's own engine service at ``layout`` (a ``HostLayout``)."""
    from .ops.service import Service

    args: dict[str, Any] = {"name": layout.service, "manager": manager, "state": state}
    if manager == "supervisor":
        args.update(command=[layout.launcher], env_file=layout.env_file, log=layout.log, pidfile=layout.pidfile,
                    supervisor=layout.supervisor, workdir=layout.root)
    return Service(args, title)
