"""Run plays on hosts with Ansible's semantics: variable precedence, loops, blocks with rescue/always, includes,
roles, handlers, register/when/changed_when/failed_when/until, ignore_errors, check/diff, per-host isolation.

One SSH connection per host (each in its own worker thread). Before the first task, the state every task of
the play needs is gathered in ONE remote exec (``remote/gather.py``); a no-op run therefore costs one round trip
per host. A task whose arguments render differently when its turn comes (a ``set_fact`` or a registered result
changed them), or any task after something changed, reads its own state again right before deciding.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import remote, settings
from .errors import ConnectError, GpuprovError, RemoteError, UsageError
from .fleet import for_each_host
from .inventory import Host
from .ops import Change, NoOp, Op, OpContext
from .ops.files import Copy, Template
from .playbook import Play, Role, Task
from .recap import HostRecap, TaskResult
from .secrets import Secret, redact
from .templating import LAZY, Templar

__all__ = ["HostRecap", "HostRun", "RunOptions", "TaskResult", "apply_one", "gather", "run_play", "service_op",
           "template_dirs"]

#: vars gpuprov sets on the command line: above everything, as Ansible's extra vars are
CLI_SOURCE = "command line"


@dataclass
class RunOptions:
    check: bool = False
    diff: bool = False
    tags: tuple[str, ...] = ()
    skip_tags: tuple[str, ...] = ()
    on_event: Callable[[str, str, TaskResult], None] | None = None
    on_progress: Callable[[str, str], None] | None = None


def under_work_lock(argv: Sequence[str], work_lock: str | None) -> tuple[str, ...]:
    """An applied command, holding the shared work lock when there is one (see gpuprov.hostlock)."""
    return ("flock", "-s", "-o", work_lock, *argv) if work_lock else tuple(argv)


def gather(runner: Any, queries: list[dict]) -> list[dict]:
    if not queries:
        return []
    # the same query from several operations (a folder's parents, a venv's packages) is asked once
    keys = [repr(q) for q in queries]
    by_key = dict(zip(keys, queries, strict=True))
    unique = list(by_key.values())
    argv, stdin = remote.gather_command(unique)
    res = runner.run(argv, stdin=stdin, timeout=120)
    if res.exit_status != 0:
        raise RemoteError(f"{runner.host.name}: state gathering failed: {res.stderr.strip()[-300:]}")
    try:
        answers = json.loads(res.stdout)
    except ValueError:
        raise RemoteError(f"{runner.host.name}: unreadable state: {res.stdout[:200]!r}") from None
    if not isinstance(answers, list) or len(answers) != len(unique):
        raise RemoteError(f"{runner.host.name}: unreadable state: {len(unique)} queries, answers {res.stdout[:200]!r}")
    answer_of = dict(zip(by_key, answers, strict=True))
    out, given = [], set()
    for k in keys:  # a repeated query gets its own copy of the answer (an operation may change what it got)
        out.append(copy.deepcopy(answer_of[k]) if k in given else answer_of[k])
        given.add(k)
    return out


@dataclass(frozen=True)
class Scope:
    """What a task inherits from the blocks, roles and includes around it."""

    when: tuple[str, ...] = ()
    tags: frozenset[str] = frozenset()
    become: bool | None = None
    #: block vars (outer first), then the include's or role's params (Ansible ranks params above set_fact)
    vars: tuple[Mapping[str, Any], ...] = ()
    params: tuple[Mapping[str, Any], ...] = ()
    role: str | None = None
    ignore_errors: Any = False
    #: the blocks and includes around the task (a role's task runs once per role entry: one key each)
    path: tuple[int, ...] = ()

    def child(self, t: Task, params: Mapping[str, Any] | None = None) -> Scope:
        return Scope(self.when + t.when, self.tags | set(t.tags), t.become if t.become is not None else self.become,
                     self.vars + ((t.vars,) if t.vars and not params else ()),
                     self.params + ((params,) if params else ()), t.role or self.role,
                     t.ignore_errors or self.ignore_errors, self.path + (id(t),))


@dataclass
class _Prepared:
    args: Any
    data: bytes | None
    op: Op
    queries: list[dict]
    state: list[dict] = field(default_factory=list)


class HostRun:
    """One play on one host."""

    def __init__(self, play: Play, host: Host, runner: Any, facts: Any, extra_ctx: Mapping[str, Any],
                 templar: Templar, opts: RunOptions, work_lock: str | None = None, gather_runner: Any = None,
                 host_vars: dict[str, Any] | None = None):
        self.play, self.host, self.runner, self.facts = play, host, runner, facts
        #: where state gathering runs: the run's session (hostlock.HostSession), sparing an exec, or the runner
        self.gather_runner = gather_runner or runner
        #: a file every applied command holds a shared flock on (see gpuprov.hostlock)
        self.work_lock = work_lock
        self.templar, self.opts = templar, opts
        self.recap = HostRecap(host.name)
        # the variable layers, lowest first (Ansible's precedence for the levels gpuprov has; README's table)
        self.inv_vars = {k: v.value for k, v in host.vars.items() if v.source != CLI_SOURCE}
        self.cli_vars = {k: v.value for k, v in host.vars.items() if v.source == CLI_SOURCE}
        self.extra_ctx = dict(extra_ctx)  # gpuprov's own (plan, facts, gp): never templated again
        self.role_defaults: dict[str, Any] = {}
        self.role_vars: dict[str, dict[str, Any]] = {}
        for r in play.roles:
            self.role_defaults.update(r.defaults)
            self.role_vars[r.name] = dict(r.vars)
        self.roles: dict[str, Role] = {r.name: r for r in play.roles}
        #: set_fact results and registered vars: they outlive the play (Ansible keeps them per host)
        self.host_vars = host_vars if host_vars is not None else {}
        self.ansible_facts: dict[str, Any] = {}
        self.magic = {"inventory_hostname": host.name, "inventory_hostname_short": host.name.split(".")[0],
                      "group_names": [g for g in host.groups if g != "all"], "check_mode": opts.check,
                      "ansible_check_mode": opts.check, "playbook_dir": play.base, "ansible_play_name": play.name}
        self.secrets = [v.value for v in host.vars.values() if isinstance(v.value, Secret)]
        self.secrets += [v for v in extra_ctx.values() if isinstance(v, Secret)]
        self.notified: list[str] = []
        self.dirty = False  # something changed on the host since the state was gathered
        self.prepared: dict[tuple[tuple[int, ...], int, int | None], _Prepared] = {}
        self.last_failure: tuple[str, dict[str, Any]] | None = None
        #: whether the host's vars changed after prepare (facts, set_fact, register): a prepared template's
        #: text is rendered again at its turn only if they did
        self.vars_changed = False

    # ----------------------------------------------------------- vars
    def ctx(self, scope: Scope, t: Task | None = None, item: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The vars a task sees, merged in Ansible's order; which of them may hold templates is noted under LAZY."""
        ctx: dict[str, Any] = {}
        lazy: set[str] = set()

        def layer(d: Mapping[str, Any], templated: bool) -> None:
            ctx.update(d)
            if templated:
                lazy.update(d)
            else:
                lazy.difference_update(d)

        layer(self.role_defaults, True)
        layer(self.inv_vars, True)
        layer(self.ansible_facts, False)
        layer(self.play.vars, True)
        for name, rv in self.role_vars.items():
            if name != scope.role:
                layer(rv, True)
        if scope.role in self.role_vars:
            layer(self.role_vars[scope.role], True)
            ctx["role_path"] = self.roles[scope.role].path
            ctx["role_name"] = scope.role
        for v in scope.vars:
            layer(v, True)
        if t is not None and t.vars:
            layer(t.vars, True)
        layer(self.host_vars, False)
        for p in scope.params:
            layer(p, True)
        layer(self.cli_vars, True)
        layer(self.extra_ctx, False)
        layer(self.magic, False)
        if item:
            layer(item, False)
        ctx[LAZY] = frozenset(lazy)
        return ctx

    # ----------------------------------------------------------- helpers
    def _selected(self, t: Task, scope: Scope) -> bool:
        tags = set(t.tags) | scope.tags | set(self.play.tags)
        if self.opts.skip_tags and tags & set(self.opts.skip_tags):
            return False
        if "always" in tags:
            return True
        if not self.opts.tags:
            return "never" not in tags
        wanted = set(self.opts.tags)
        if "all" in wanted and "never" not in tags:
            return True
        return bool(tags & wanted)

    def _become(self, t: Task, scope: Scope) -> bool:
        for v in (t.become, scope.become, self.play.become):
            if v is not None:
                return v
        return False

    def _search(self, t: Task, sub: str) -> list[Path]:
        """Where a task's relative ``src`` is looked for: its role's (or playbook's) ``sub``/ folder and itself."""
        dirs = []
        for base in dict.fromkeys([t.base, self.play.base]):
            if base:
                dirs += [Path(base) / sub, Path(base)]
        return dirs

    def _build(self, t: Task, args: Any, ctx: Mapping[str, Any]) -> tuple[Op, bytes | None]:
        title = self._title(t, ctx)
        if not t.secret:
            self._no_secret_in(args, t)
        op = Op.registry[str(t.op)](args, title)
        data = None
        if isinstance(op, Template):
            text = self.templar.render_file(str(op.a["src"]), {**ctx, **(op.a.get("vars") or {})}, title,
                                            self._search(t, "templates"))
            if not t.secret:
                self._no_secret_in(text, t)
            data = op.rendered = text.encode()
        elif isinstance(op, Copy) and "src" in op.a and not op.a.get("remote_src"):
            src = Path(str(op.a["src"]))
            if not src.is_absolute():
                found = next((d / src for d in self._search(t, "files") if (d / src).is_file()), None)
                if found is None:
                    raise UsageError(f"task {title!r}: copy src {str(src)!r} not found (looked in "
                                     f"{', '.join(str(d) for d in self._search(t, 'files'))})")
                op.a["src"] = str(found)
        return op, data

    def _no_secret_in(self, value: Any, t: Task) -> None:
        blob = json.dumps(value, default=str)
        for s in self.secrets:
            if s and s.reveal() and s.reveal() in blob:
                raise UsageError(f"task {t.name!r} reveals a secret but is not marked secret: true")

    def _redact(self, text: str) -> str:
        return redact(text, *self.secrets)

    def _title(self, t: Task, ctx: Mapping[str, Any] | None = None) -> str:
        if "{{" not in t.name or ctx is None:
            return t.name
        try:
            return str(self.templar.render(t.name, ctx, t.name))
        except UsageError:
            return t.name

    def _octx(self, t: Task, scope: Scope) -> OpContext:
        octx = OpContext(self.runner, self.facts, self.opts.check, self._become(t, scope),
                         diff=self.opts.diff or self.opts.check)
        report_progress = self.opts.on_progress
        if report_progress:
            octx.on_progress = lambda text: report_progress(self.host.name, text)
        return octx

    # ----------------------------------------------------------- prepare: one gather for the whole play
    def _leaves(self, tasks: tuple[Task, ...], scope: Scope):  # noqa: ANN202
        for t in tasks:
            if t.kind == "block":
                s = scope.child(t)
                yield from self._leaves(t.block + t.rescue + t.always, s)
            elif t.kind == "include" and t.included is not None and t.loop is None:
                yield from self._leaves(t.included, scope.child(t, t.vars))
            elif t.kind == "task" and self._selected(t, scope) and not Op.registry[str(t.op)].local:
                yield t, scope

    def prepare(self) -> list[dict]:
        """Build every op whose args can be rendered now, and collect their state queries."""
        leaves = list(self._leaves(self.play.tasks, Scope()))
        leaves += list(self._leaves(self.play.handlers, Scope()))
        for t, scope in leaves:
            try:
                ctx = self.ctx(scope, t)
                items: list[Any] = [None]
                if t.loop is not None:
                    items = self._items(t, ctx)
                for idx, item in enumerate(items):
                    ictx = ctx if t.loop is None else self.ctx(scope, t, self._item_vars(t, item, idx))
                    if scope.when + t.when and not self.templar.test_all(scope.when + t.when, ictx, t.name):
                        continue
                    args = self.templar.render(t.args, ictx, t.name)
                    op, data = self._build(t, args, ictx)
                    qs = op.queries(self._octx(t, scope))
                    self.prepared[(scope.path, id(t), None if t.loop is None else idx)] = _Prepared(args, data, op, qs)
            except GpuprovError:
                continue  # depends on something only its turn knows (a registered result): built then
        return [q for p in self.prepared.values() for q in p.queries]

    def _op_state(self, t: Task, key: tuple[tuple[int, ...], int, int | None], args: Any, ctx: Mapping[str, Any],
                  octx: OpContext, fresh: bool) -> tuple[Op, list[dict]]:
        p = self.prepared.get(key)
        if p is not None and p.args == args:
            op = p.op
            if isinstance(op, Template) and self.vars_changed:  # its text may depend on vars set since
                op2, data = self._build(t, args, ctx)
                if data != p.data:
                    op = op2
            if op is p.op and not self.dirty and not fresh:
                return op, p.state
        else:
            op, _ = self._build(t, args, ctx)
        return op, gather(self.gather_runner, op.queries(octx))

    # ----------------------------------------------------------- run
    def run(self) -> HostRecap:
        start = time.monotonic()
        self.recap.started = start
        try:
            queries = self.prepare()
            facts_q = [{"kind": "facts"}] if self.play.gather_facts else []
            answers = gather(self.gather_runner, facts_q + queries)
            if facts_q:
                self._set_facts(answers[0])
                answers = answers[1:]
            k = 0
            for p in self.prepared.values():
                p.state = answers[k:k + len(p.queries)]
                k += len(p.queries)
            if self._run_list(self.play.tasks, Scope()):
                self._flush()
            elif self.play.force_handlers and not self.recap.unreachable:
                self._flush()
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

    def _set_facts(self, answer: dict) -> None:
        if "error" in answer:
            raise RemoteError(f"{self.host.name}: gathering facts failed: {answer['error']}")
        self.ansible_facts = {"ansible_facts": answer, **{f"ansible_{k}": v for k, v in answer.items()}}
        self.vars_changed = True
        self.recap.count(TaskResult("Gathering Facts", "ok", "facts gathered"))

    def _run_list(self, tasks: tuple[Task, ...], scope: Scope) -> bool:
        return all(self._run_node(t, scope) for t in tasks)

    def _run_node(self, t: Task, scope: Scope) -> bool:
        if t.kind == "block":
            s = scope.child(t)
            ok = self._run_list(t.block, s)
            if not ok and t.rescue and not self.recap.unreachable:
                self.recap.rescue()
                if self.last_failure:  # what Ansible gives a rescue section to read
                    self._set_vars({"ansible_failed_task": {"name": self.last_failure[0]},
                                    "ansible_failed_result": self.last_failure[1]})
                ok = self._run_list(t.rescue, s)
            if t.always and not self.recap.unreachable:
                ok = self._run_list(t.always, s) and ok
            return ok
        if not self._selected(t, scope):
            return True
        if t.kind == "meta":
            if t.meta == "flush_handlers":
                return self._flush()
            return True
        if t.kind == "include":
            return self._include(t, scope)
        return self._leaf(t, scope)

    def _flush(self) -> bool:
        while self.notified:
            pending, self.notified = self.notified, []
            for h in self.play.handlers:
                if h.name in pending or set(h.listen) & set(pending):
                    if not self._leaf(h, Scope()):
                        return False
        return True

    def _items(self, t: Task, ctx: Mapping[str, Any]) -> list[Any]:
        items = self.templar.render(t.loop, ctx, t.name)
        if isinstance(items, str) and t.flatten:
            items = [items]
        if not isinstance(items, list):
            raise UsageError(f"task {t.name!r}: loop must be a list, got {type(items).__name__}")
        if t.flatten:
            items = [y for x in items for y in (x if isinstance(x, list) else [x])]
        return items

    def _item_vars(self, t: Task, item: Any, idx: int) -> dict[str, Any]:
        out = {t.loop_var: item, "ansible_loop_var": t.loop_var, "ansible_loop": {"index": idx + 1, "index0": idx}}
        if t.loop_index:
            out[t.loop_index] = idx
            out["ansible_index_var"] = t.loop_index
        return out

    def _include(self, t: Task, scope: Scope) -> bool:
        from .playbook import load_include

        ctx = self.ctx(scope, t)
        items: list[Any] = [None] if t.loop is None else self._items(t, ctx)
        for idx, item in enumerate(items):
            iv = None if t.loop is None else self._item_vars(t, item, idx)
            ictx = self.ctx(scope, t, iv) if iv else ctx
            if scope.when + t.when and not self.templar.test_all(scope.when + t.when, ictx, t.name):
                self.recap.count(TaskResult(self._title(t, ictx), "skipped", "condition false"))
                continue
            children = t.included
            if children is None:
                name = str(self.templar.render(t.include, ictx, t.name))
                children = load_include(name, t, self.play)
            params = {**self.templar.render(dict(t.vars), ictx, t.name), **(iv or {})}
            r = TaskResult(self._title(t, ictx), "ok", f"included: {t.include}")
            self._finish(t, r, None, ictx)
            if not self._run_list(children, scope.child(t, params)):
                return False
        return True

    def _leaf(self, t: Task, scope: Scope) -> bool:
        t0 = time.monotonic()
        ctx = self.ctx(scope, t)
        conds = scope.when + t.when
        try:
            if t.loop is None:
                if conds and not self.templar.test_all(conds, ctx, t.name):
                    r, result = TaskResult(self._title(t, ctx), "skipped", "condition false"), _skipped()
                else:
                    r, result = self._once(t, scope, ctx, (scope.path, id(t), None))
            else:
                r, result = self._loop(t, scope, ctx, conds)
        except UsageError as e:
            if not self.opts.check or not ("undefined" in str(e) or "has no attribute" in str(e)):
                r, result = TaskResult(self._title(t, ctx), "failed", str(e)), {"failed": True, "msg": str(e)}
            else:  # in check mode, results registered by skipped commands are unknown: skip what depends on them
                r = TaskResult(self._title(t, ctx), "skipped", f"depends on a result unknown in check mode ({e})")
                result = _skipped()
        r.duration_s = time.monotonic() - t0
        if r.status == "failed" and self._ignored(t, scope, ctx):
            r.ignored = True
        self._finish(t, r, result, ctx)
        if r.status == "changed":
            for n in t.notify:
                n = str(self.templar.render(n, ctx, t.name))
                if n not in self.notified:
                    self.notified.append(n)
        return r.status != "failed" or r.ignored

    def _ignored(self, t: Task, scope: Scope, ctx: Mapping[str, Any]) -> bool:
        v = t.ignore_errors or scope.ignore_errors
        if isinstance(v, str):
            return self.templar.test(v.strip().removeprefix("{{").removesuffix("}}"), ctx, t.name)
        return bool(v)

    def _loop(self, t: Task, scope: Scope, ctx: Mapping[str, Any], conds: tuple[str, ...]
              ) -> tuple[TaskResult, dict[str, Any]]:
        results, msgs, diffs = [], [], []
        for idx, item in enumerate(self._items(t, ctx)):
            iv = self._item_vars(t, item, idx)
            ictx = self.ctx(scope, t, iv)
            label = item if t.loop_label is None else self.templar.render(t.loop_label, ictx, t.name)
            if conds and not self.templar.test_all(conds, ictx, t.name):
                r, res = TaskResult("", "skipped", "condition false"), _skipped()
            else:
                r, res = self._once(t, scope, ictx, (scope.path, id(t), idx))
            res.update({"item": item, t.loop_var: item, "ansible_loop_var": t.loop_var})
            results.append(res)
            msgs.append(f"({label}) {r.status}: {r.msg}" if r.msg else f"({label}) {r.status}")
            diffs += r.diffs
        failed = any(x.get("failed") for x in results)
        changed = any(x.get("changed") for x in results)
        skipped = bool(results) and all(x.get("skipped") for x in results) or not results
        status = "failed" if failed else "changed" if changed else "skipped" if skipped else "ok"
        result = {"results": results, "changed": changed, "failed": failed, "skipped": skipped,
                  "msg": "One or more items failed" if failed else "All items completed"}
        r = TaskResult(self._title(t, ctx), status, "; ".join(msgs)[:2000], diffs, changed=changed)
        return r, result

    def _once(self, t: Task, scope: Scope, ctx: dict[str, Any], key: tuple[tuple[int, ...], int, int | None]
              ) -> tuple[TaskResult, dict[str, Any]]:
        """One run of a module task (one loop item): decide, apply, retry ``until``; the result Ansible registers."""
        title = self._title(t, ctx)
        octx = self._octx(t, scope)
        args = self.templar.render(t.args, ctx, t.name)
        cls = Op.registry[str(t.op)]
        if cls.local:
            return self._local(t, title, args, ctx)
        attempts = max(1, t.retries + 1) if t.until else 1
        r = TaskResult(title, "ok")
        result: dict[str, Any] = {}
        for attempt in range(attempts):
            op, state = self._op_state(t, key, args, ctx, octx, fresh=attempt > 0)
            decision = op.check(octx, state)
            result = {"changed": False, "failed": False}
            if isinstance(decision, NoOp):
                r = TaskResult(title, "ok", decision.reason)
                result.update(op.noop_result(state))
                if result.get("failed"):
                    r = TaskResult(title, "failed", self._redact(str(result.get("msg") or "failed")))
            elif self.opts.check and t.op in ("command", "shell"):
                r = TaskResult(title, "skipped", f"skipped in check mode (would {decision.summary})")
                result["skipped"] = True
            elif self.opts.check:
                r = TaskResult(title, "changed" if decision.changes else "skipped",
                               f"would {decision.summary}" if decision.changes else "skipped in check mode")
                result["changed"] = decision.changes
            else:
                r = self._apply(t, title, op, octx, decision, result, ctx)
            if isinstance(decision, Change) and (self.opts.diff or self.opts.check):
                r.diffs = [d.unified() if not t.secret else replace(d, secret=True).unified() for d in decision.diffs]
            if r.status != "skipped":
                r = self._judge(t, r, result, ctx)
            if t.until and r.status != "skipped" and not self.opts.check:
                if not self.templar.test_all(t.until, self._with_result(t, result, ctx), t.name):
                    if attempt + 1 < attempts:
                        time.sleep(t.delay)
                        continue
                    r = TaskResult(title, "failed", f"until: {' and '.join(t.until)} not true after {attempts} "
                                                    f"attempts")
                    result["failed"] = True
                result["attempts"] = attempt + 1
            break
        if t.secret:  # the registered result keeps its values (as Ansible's no_log); only what is shown is cut
            r.msg = r.msg.split(":")[0] if r.status == "failed" else r.msg
        return r, result

    def _judge(self, t: Task, r: TaskResult, result: dict[str, Any], ctx: Mapping[str, Any]) -> TaskResult:
        """changed_when, then failed_when, over the task's result (both evaluated, as Ansible does)."""
        if t.changed_when is not None:
            result["changed"] = self.templar.test_all(t.changed_when, self._with_result(t, result, ctx), t.name)
        if t.failed_when is not None:
            result["failed"] = self.templar.test_all(t.failed_when, self._with_result(t, result, ctx), t.name)
            if result["failed"]:
                result["failed_when_result"] = True
                r.msg = f"failed_when: {' and '.join(t.failed_when)}"
            elif r.status == "failed":
                r.msg = ""
        if t.changed_when is not None or t.failed_when is not None:
            r.status = "failed" if result.get("failed") else "changed" if result.get("changed") else "ok"
        r.changed = bool(result.get("changed"))
        return r

    def _local(self, t: Task, title: str, args: Any, ctx: dict[str, Any]) -> tuple[TaskResult, dict[str, Any]]:
        op = Op.registry[str(t.op)](args, title)
        result = {"changed": False, "failed": False, **op.run_local(lambda e: self.templar.evaluate(e, ctx, title))}
        if "ansible_facts" in result and not result.get("failed"):
            self._set_vars(result["ansible_facts"])
        status = "failed" if result.get("failed") else "ok"
        msg = str(result.get("msg", ""))
        r = TaskResult(title, status, self._redact(msg), show=t.op == "debug")
        r = self._judge(t, r, result, ctx)
        return r, result

    def _apply(self, t: Task, title: str, op: Op, octx: OpContext, decision: Change, result: dict[str, Any],
               ctx: Mapping[str, Any]) -> TaskResult:
        """Run exactly the change's commands (under the shared work lock), then poll; fill ``result``."""
        outputs = []
        failed_msg = None
        for cmd in decision.commands:
            res = self.runner.run(under_work_lock(cmd.argv, self.work_lock), stdin=cmd.stdin, timeout=cmd.timeout)
            outputs.append(res)
            if res.exit_status != 0:
                tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-6:])
                failed_msg = f"{cmd.label or cmd.argv[0]} exited {res.exit_status}: {tail}"
                break
        if failed_msg is None and decision.poll is not None:
            try:
                decision.poll(self.runner, octx)
            except RemoteError as e:
                failed_msg = str(e)
        out = op.result(octx, outputs)
        result.update(out)
        result["changed"] = bool(out.get("changed", decision.changes)) and decision.changes
        if decision.changes:
            self.dirty = True
        if out.get("failed") and not failed_msg:
            failed_msg = str(out.get("msg") or "failed")
        if failed_msg:
            result["failed"] = True
            result.setdefault("msg", "non-zero return code" if t.op in ("command", "shell") else failed_msg)
            return TaskResult(title, "failed", self._redact(failed_msg), changed=decision.changes)
        return TaskResult(title, "changed" if result["changed"] else "ok", decision.summary)

    def _set_vars(self, new: Mapping[str, Any]) -> None:
        """set_fact, register and the rescue vars: the host's vars changed since the play's gather."""
        self.host_vars.update(new)
        self.vars_changed = True

    def _with_result(self, t: Task, result: dict, ctx: Mapping[str, Any]) -> dict:
        """Context for changed_when / failed_when / until: the result by its register name (and as ``result``)."""
        out = {**ctx, "result": result}
        if t.register:
            out[t.register] = result
        return out

    def _finish(self, t: Task, r: TaskResult, result: dict | None, ctx: Mapping[str, Any]) -> None:
        r.msg = self._redact(r.msg)
        self.recap.count(r)
        if r.status == "failed" and not r.ignored:
            self.last_failure = ("" if t.anonymous else r.task, result or {"failed": True, "msg": r.msg})
            if not self.recap.error:
                self.recap.error = f"task {r.task!r} failed: {r.msg}"
        if t.register and result is not None:
            self._set_vars({t.register: result})
        if self.opts.on_event:
            self.opts.on_event(self.host.name, r.task, r)


def _skipped() -> dict[str, Any]:
    return {"skipped": True, "changed": False, "skip_reason": "Conditional result was False"}


def run_play(play: Play, hosts: Sequence[Host], connect: Callable[[Host], Any],
             facts_for: Callable[[Host, Any], Any], extra_for: Callable[[Host, Any, Any], Mapping[str, Any]],
             templar: Templar, opts: RunOptions, max_workers: int | None = None,
             host_vars: dict[str, dict[str, Any]] | None = None) -> list[HostRecap]:
    """Run one play on many hosts in parallel (``GPUPROV_PARALLEL`` at once unless ``max_workers`` says);
    a failing or unreachable host never stops the others. ``host_vars`` keeps each host's set_fact and
    registered vars from one play to the next."""
    if not hosts:
        return []  # the play's pattern matched no host (Ansible: "skipping: no hosts matched")
    store = host_vars if host_vars is not None else {}
    for h in hosts:
        store.setdefault(h.name, {})

    def one(h: Host) -> HostRecap:
        t0 = time.monotonic()
        try:
            runner = connect(h)
        except Exception as e:  # noqa: BLE001 - recorded in the host's recap
            return HostRecap.of_error(h.name, e, time.monotonic() - t0)
        try:
            facts = facts_for(h, runner)
            extra = extra_for(h, runner, facts)
            return HostRun(play, h, runner, facts, extra, templar, opts, host_vars=store[h.name]).run()
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


def service_op(layout: Any, manager: str, state: str, title: str, restart: str = "on-failure") -> Op:
    """The ``service`` operation for gpuprov's own engine service at ``layout`` (a ``HostLayout``); ``restart``
    no for a node of a multinode engine (its deployment restarts as a whole)."""
    from .ops.service import Service

    args: dict[str, Any] = {"name": layout.service, "manager": manager, "state": state}
    if manager == "supervisor":
        args.update(command=[layout.launcher], env_file=layout.env_file, log=layout.log, pidfile=layout.pidfile,
                    supervisor=layout.supervisor, workdir=layout.root, restart=restart)
    return Service(args, title)
