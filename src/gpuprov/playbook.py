"""Ansible-style playbooks: YAML → frozen Play/Task values, and the Jinja2 templating of their arguments.

A playbook is a list of plays ``{name, hosts, vars, tasks, handlers}``. A task is ``name`` + exactly one
operation (``file:``, ``copy:``, ``template:``, ``apt:``, ``venv:``, ``pip:``, ``service:``, ``command:``,
``shell:``, ``read:``, ``wait_for:``, ``weights:``) or ``meta: flush_handlers``, plus optional ``when``, ``notify``,
``register``, ``changed_when``, ``failed_when``, ``retries``/``until``/``delay``, ``become``, ``tags``, ``secret``.

Templating uses StrictUndefined: a missing variable is an error naming the task and the variable. Secrets
(``Secret``) render as ``***`` unless passed through the ``reveal`` filter, which only a task marked
``secret: true`` may use; such a task's arguments and diffs are never shown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from .errors import UsageError
from .inventory import load_yaml
from .ops import Op
from .secrets import Secret

TASK_KEYS = {"name", "when", "notify", "register", "changed_when", "failed_when", "retries", "until", "delay",
             "become", "tags", "secret", "meta"}


@dataclass(frozen=True)
class Task:
    name: str
    op: str | None
    args: Any
    source: str
    when: str | None = None
    notify: tuple[str, ...] = ()
    register: str | None = None
    changed_when: str | None = None
    failed_when: str | None = None
    retries: int = 0
    until: str | None = None
    delay: float = 1.0
    become: bool = False
    tags: tuple[str, ...] = ()
    secret: bool = False
    meta: str | None = None


@dataclass(frozen=True)
class Play:
    name: str
    hosts: str
    vars: Mapping[str, Any] = field(default_factory=dict)
    tasks: tuple[Task, ...] = ()
    handlers: tuple[Task, ...] = ()
    source: str = ""


def _as_tuple(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    return tuple(str(x) for x in v)


def _task(d: Any, where: str) -> Task:
    if not isinstance(d, dict):
        raise UsageError(f"{where}: a task must be a mapping")
    line = getattr(d, "line", None)
    src = f"{where}:{line}" if line else where
    ops = [k for k in d if k not in TASK_KEYS]
    name = str(d.get("name") or (ops[0] if ops else d.get("meta", "task")))
    if "meta" in d:
        if d["meta"] != "flush_handlers":
            raise UsageError(f"{src}: task {name!r}: the only meta action is flush_handlers")
        return Task(name, None, None, src, meta="flush_handlers", tags=_as_tuple(d.get("tags")))
    if len(ops) != 1:
        raise UsageError(f"{src}: task {name!r} must have exactly one operation, found "
                         f"{', '.join(ops) or 'none'} (known: {', '.join(sorted(Op.registry))})")
    op = ops[0]
    if op not in Op.registry:
        raise UsageError(f"{src}: task {name!r}: unknown operation {op!r} (known: {', '.join(sorted(Op.registry))})")
    try:
        retries = int(d.get("retries", 0))
        delay = float(d.get("delay", 1.0))
    except (TypeError, ValueError):
        raise UsageError(f"{src}: task {name!r}: retries and delay must be numbers") from None
    return Task(name, op, d[op], src, when=_cond(d.get("when")), notify=_as_tuple(d.get("notify")),
                register=d.get("register"), changed_when=_cond(d.get("changed_when")),
                failed_when=_cond(d.get("failed_when")), retries=retries, until=_cond(d.get("until")), delay=delay,
                become=bool(d.get("become", False)), tags=_as_tuple(d.get("tags")), secret=bool(d.get("secret", False)))


def _cond(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return " and ".join(f"({x})" for x in v)
    return str(v)


def load_playbook(path: str | Path) -> list[Play]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no such playbook: {p}")
    data = load_yaml(p)
    if not isinstance(data, list) or not data:
        raise UsageError(f"{p}: a playbook is a non-empty list of plays")
    plays = []
    for i, d in enumerate(data):
        where = f"{p}"
        if not isinstance(d, dict) or "tasks" not in d:
            raise UsageError(f"{p}: play {i + 1} must be a mapping with tasks")
        unknown = set(d) - {"name", "hosts", "vars", "tasks", "handlers"}
        if unknown:
            raise UsageError(f"{p}: play {i + 1}: unknown key(s) {', '.join(sorted(unknown))}")
        tasks = tuple(_task(t, where) for t in d.get("tasks") or [])
        handlers = tuple(_task(t, where) for t in d.get("handlers") or [])
        names = [h.name for h in handlers]
        for t in tasks + handlers:
            for n in t.notify:
                if n not in names:
                    raise UsageError(f"{t.source}: task {t.name!r} notifies {n!r}, which is not a handler of this play")
        plays.append(Play(str(d.get("name") or f"play {i + 1}"), str(d.get("hosts") or "all"),
                          dict(d.get("vars") or {}), tasks, handlers, where))
    return plays


# --------------------------------------------------------------------------- templating


class Templar:
    """Jinja2 with StrictUndefined; ``{{ expr }}`` alone keeps its native type (a list stays a list)."""

    def __init__(self, template_dirs: list[Path]):
        self.env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                      loader=jinja2.FileSystemLoader([str(d) for d in template_dirs]),
                                      autoescape=False)
        self.env.filters["reveal"] = lambda v: v.reveal() if isinstance(v, Secret) else v
        self.env.filters["shquote"] = lambda v: __import__("shlex").quote(str(v))
        self.env.filters["to_json"] = lambda v: __import__("json").dumps(v)
        # compiled once, rendered per host (a 50-host run would otherwise compile each string 50 times)
        self._templates: dict[str, jinja2.Template] = {}
        self._exprs: dict[str, Any] = {}

    def _expr(self, source: str):  # noqa: ANN202
        f = self._exprs.get(source)
        if f is None:
            f = self._exprs[source] = self.env.compile_expression(source, undefined_to_none=False)
        return f

    def _template(self, source: str) -> jinja2.Template:
        t = self._templates.get(source)
        if t is None:
            t = self._templates[source] = self.env.from_string(source)
        return t

    def _err(self, e: Exception, task: str) -> UsageError:
        msg = str(e)
        m = re.search(r"'([^']+)' is undefined", msg)
        if m:
            return UsageError(f"task {task!r}: undefined variable {m.group(1)!r}")
        return UsageError(f"task {task!r}: template error: {msg}")

    def render(self, value: Any, ctx: Mapping[str, Any], task: str) -> Any:
        if isinstance(value, str):
            if "{{" not in value and "{%" not in value:
                return value
            try:
                m = re.fullmatch(r"\s*\{\{(.*?)\}\}\s*", value, re.S)
                if m and "{{" not in m.group(1):
                    out = self._expr(m.group(1))(**ctx)
                    if isinstance(out, jinja2.Undefined):
                        str(out)  # raises UndefinedError naming the variable
                    return out
                return self._template(value).render(**ctx)
            except (jinja2.TemplateError, TypeError, ValueError) as e:
                raise self._err(e, task) from None
        if isinstance(value, dict):
            return {k: self.render(v, ctx, task) for k, v in value.items()}
        if isinstance(value, list):
            return [self.render(v, ctx, task) for v in value]
        return value

    def test(self, expr: str, ctx: Mapping[str, Any], task: str) -> bool:
        try:
            out = self._expr(expr)(**ctx)
            if isinstance(out, jinja2.Undefined):
                str(out)
            return bool(out)
        except (jinja2.TemplateError, TypeError, ValueError) as e:
            raise self._err(e, task) from None

    def render_file(self, src: str, ctx: Mapping[str, Any], task: str) -> str:
        try:
            return self.env.get_template(src).render(**ctx)
        except jinja2.TemplateNotFound:
            raise UsageError(f"task {task!r}: template {src!r} not found") from None
        except jinja2.TemplateError as e:
            raise self._err(e, task) from None
