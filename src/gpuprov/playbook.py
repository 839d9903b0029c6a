"""Playbooks in Ansible's dialect: YAML → frozen Play/Task trees (templating is ``templating.py``, running is
``executor.py``).

A playbook is a list of plays (``hosts``, ``vars``, ``vars_files``, ``roles``, ``pre_tasks``, ``tasks``,
``post_tasks``, ``handlers``, ``gather_facts``, ``become``, ``tags``, ``force_handlers``). A task is one
module (``copy:``, ``ansible.builtin.copy:``; arguments as a mapping, as ``k=v`` text, or free form for
``command``/``shell``; ``args:`` merges in) with Ansible's task keywords, or a ``block`` with ``rescue`` and
``always``, or ``import_tasks``/``include_tasks``/``import_role``/``include_role``, or ``meta: flush_handlers``.
Roles are ``roles/<name>/{tasks,handlers,defaults,vars}/main.yml`` beside the playbook (templates and files in
their own folders). What Ansible has and gpuprov does not is refused with the list of what is known, never
ignored; README's "Ansible compatibility" table is the list.

gpuprov's own keywords beside Ansible's: ``secret: true`` (the task's arguments and diffs are never shown; only
such a task may use the ``reveal`` filter).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GpuprovError, UsageError
from .inventory import load_yaml
from .ops import Op

#: keywords a task may carry beside its module (Ansible's names; ``secret`` is gpuprov's)
TASK_KEYS = {"name", "when", "notify", "register", "changed_when", "failed_when", "retries", "until", "delay",
             "become", "tags", "secret", "loop", "with_items", "with_list", "loop_control", "ignore_errors",
             "vars", "args", "listen", "check_mode", "no_log"}
BLOCK_KEYS = {"name", "block", "rescue", "always", "when", "become", "tags", "vars", "ignore_errors"}
PLAY_KEYS = {"name", "hosts", "vars", "vars_files", "tasks", "pre_tasks", "post_tasks", "handlers", "roles",
             "gather_facts", "become", "tags", "force_handlers"}
INCLUDES = {"include_tasks", "import_tasks", "include_role", "import_role"}
#: Ansible keywords we know and do not do: named in the error instead of "unknown operation"
NOT_SUPPORTED = {"delegate_to", "run_once", "local_action", "action", "async", "poll", "become_user",
                 "become_method", "serial", "strategy", "any_errors_fatal", "max_fail_percentage", "throttle",
                 "with_dict", "with_fileglob", "with_together", "with_nested", "with_sequence", "with_subelements",
                 "include_vars", "include", "import_playbook", "connection", "debugger", "diff", "remote_user",
                 "environment", "notify_when"}
_FQCN = re.compile(r"^ansible\.(?:builtin|legacy|posix)\.")


@dataclass(frozen=True)
class Task:
    """One node of a play's task tree: a module task, a ``block``, an include, or ``meta``."""

    name: str
    op: str | None
    args: Any
    source: str
    when: tuple[str, ...] = ()
    notify: tuple[str, ...] = ()
    register: str | None = None
    changed_when: tuple[str, ...] | None = None
    failed_when: tuple[str, ...] | None = None
    retries: int = 0
    until: tuple[str, ...] | None = None
    delay: float = 1.0
    become: bool | None = None
    tags: tuple[str, ...] = ()
    secret: bool = False
    meta: str | None = None
    #: ``loop`` / ``with_items`` (flattened one level, as Ansible does), a list or a template string
    loop: Any = None
    loop_var: str = "item"
    loop_label: str | None = None
    loop_index: str | None = None
    ignore_errors: Any = False
    vars: Mapping[str, Any] = field(default_factory=dict)
    listen: tuple[str, ...] = ()
    #: the folder a relative ``src`` is found from (the role's, else the playbook's)
    base: str = ""
    role: str | None = None
    #: block / rescue / always children (``op`` is None and ``kind`` is "block")
    block: tuple[Task, ...] = ()
    rescue: tuple[Task, ...] = ()
    always: tuple[Task, ...] = ()
    kind: str = "task"  # task | block | include | meta
    #: include_tasks / include_role: the file (maybe templated) and, when it was static, its parsed tasks
    include: str | None = None
    included: tuple[Task, ...] | None = None
    flatten: bool = False
    #: the task has no name of its own (Ansible's task.name is then empty)
    anonymous: bool = False


@dataclass(eq=False)
class Role:
    name: str
    path: str
    defaults: Mapping[str, Any]
    vars: Mapping[str, Any]
    tasks: tuple[Task, ...] = ()


@dataclass(frozen=True)
class Play:
    name: str
    hosts: str
    vars: Mapping[str, Any] = field(default_factory=dict)
    tasks: tuple[Task, ...] = ()
    handlers: tuple[Task, ...] = ()
    source: str = ""
    gather_facts: bool = True
    roles: tuple[Role, ...] = ()
    become: bool | None = None
    tags: tuple[str, ...] = ()
    force_handlers: bool = False
    #: the playbook's folder (``playbook_dir``; group_vars/host_vars beside it)
    base: str = ""


def _as_tuple(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return tuple(x.strip() for x in v.split(",")) if "," in v else (v,)
    return tuple(str(x) for x in v)


def _cond(v: Any) -> tuple[str, ...] | None:
    """``when``-style conditions as a tuple of Jinja expressions (a list means all of them)."""
    if v is None:
        return None
    items = v if isinstance(v, list) else [v]
    out = []
    for x in items:
        if isinstance(x, bool):
            out.append("true" if x else "false")
        else:
            s = str(x).strip()
            m = re.fullmatch(r"\{\{(.*)\}\}", s, re.S)  # Ansible warns about braces in conditions but takes them
            out.append(m.group(1).strip() if m and "{{" not in m.group(1) else s)
    return tuple(out)


def module_name(key: str) -> str:
    return _FQCN.sub("", key)


def _spans(text: str) -> list[tuple[int, int]]:
    """Where the words of ``text`` start and end: split on blanks, but not inside quotes or ``{{ }}``/``{% %}``."""
    out, i, n = [], 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        start, depth, quote = i, 0, ""
        while i < n and (depth or quote or not text[i].isspace()):
            two = text[i:i + 2]
            if not quote and two in ("{{", "{%"):
                depth, i = depth + 1, i + 2
                continue
            if not quote and depth and two in ("}}", "%}"):
                depth, i = depth - 1, i + 2
                continue
            if text[i] in "'\"" and not depth:
                quote = "" if quote == text[i] else (quote or text[i])
            i += 1
        out.append((start, i))
    return out


def parse_kv(text: str, free_form: str | None, raw_params: tuple[str, ...] = ()) -> dict[str, Any]:
    """Ansible's ``k=v`` argument text (quotes and ``{{ }}`` keep a value whole). For a free-form module, the
    ``raw_params`` (``creates=``, ``chdir=``...) are taken out wherever they stand and the rest, spacing and
    newlines untouched, is the free-form text."""
    out: dict[str, Any] = {}
    cut: list[tuple[int, int]] = []
    for a, b in _spans(text):
        k, eq, v = text[a:b].partition("=")
        if eq and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) and (free_form is None or k in raw_params):
            out[k] = _unquote(v)
            cut.append((a, b))
        elif free_form is None:
            raise UsageError(f"cannot read arguments {text!r}: expected key=value pairs, got {text[a:b]!r}")
    if free_form is not None:
        rest = text
        for a, b in reversed(cut):
            rest = rest[:a] + rest[b:]
        out[free_form] = rest.strip()
    return out


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    return v


class _Loader:
    """Parses one playbook, with its roles and imported task files (each file read once)."""

    def __init__(self, playbook: Path):
        self.playbook = playbook
        self.base = playbook.parent
        self.roles: dict[str, Role] = {}
        self.role_handlers: list[Task] = []

    # ----------------------------------------------------------- files
    def _task_file(self, path: Path, role: Role | None) -> tuple[Task, ...]:
        if not path.is_file():
            raise UsageError(f"no such task file: {path}")
        data = load_yaml(path)
        if data is None:
            return ()
        if not isinstance(data, list):
            raise UsageError(f"{path}: a task file is a list of tasks")
        return tuple(self.task(t, str(path), role) for t in data)

    def _find(self, name: str, where: str, role: Role | None) -> Path:
        """A task file named by include/import: relative to the including file, the role's tasks/, the playbook."""
        cands = [Path(where).parent / name]
        if role:
            cands.append(Path(role.path) / "tasks" / name)
        cands.append(self.base / name)
        for c in cands:
            if c.is_file():
                return c
        raise UsageError(f"{where}: no such task file {name!r} (looked in {', '.join(str(c.parent) for c in cands)})")

    def role(self, spec: Any, where: str) -> tuple[Role, dict[str, Any], tuple[str, ...], tuple[str, ...]]:
        """A ``roles:`` entry → (role, its params as vars, its when, its tags)."""
        params: dict[str, Any] = {}
        when: tuple[str, ...] = ()
        tags: tuple[str, ...] = ()
        if isinstance(spec, dict):
            spec = dict(spec)
            name = spec.pop("role", None) or spec.pop("name", None)
            when = _cond(spec.pop("when", None)) or ()
            tags = _as_tuple(spec.pop("tags", None))
            params = dict(spec.pop("vars", None) or {})
            params.update(spec)  # Ansible's role params: any other key
        else:
            name = spec
        if not isinstance(name, str) or not name:
            raise UsageError(f"{where}: a role entry needs a name")
        if name in self.roles:
            return self.roles[name], params, when, tags
        for d in (self.base / "roles" / name, self.base / name):
            if d.is_dir():
                break
        else:
            raise UsageError(f"{where}: role {name!r} not found (looked in {self.base / 'roles'})")

        def main(sub: str) -> Path | None:
            for fn in ("main.yml", "main.yaml", "main"):
                if (d / sub / fn).is_file():
                    return d / sub / fn
            return None

        def varfile(sub: str) -> dict[str, Any]:
            p = main(sub)
            data = load_yaml(p) if p else None
            if data is not None and not isinstance(data, dict):
                raise UsageError(f"{p}: must be a mapping of vars")
            return dict(data or {})

        r = Role(name, str(d), varfile("defaults"), varfile("vars"))
        self.roles[name] = r
        hp = main("handlers")
        if hp:
            self.role_handlers.extend(self._task_file(hp, r))
        tp = main("tasks")
        r.tasks = self._task_file(tp, r) if tp else ()
        return r, params, when, tags

    # ----------------------------------------------------------- tasks
    def task(self, d: Any, where: str, role: Role | None) -> Task:
        if not isinstance(d, dict):
            raise UsageError(f"{where}: a task must be a mapping, got {type(d).__name__}")
        line = getattr(d, "line", None)
        src = f"{where}:{line}" if line else where
        base = role.path if role else str(self.base)
        rname = role.name if role else None
        if "block" in d:
            unknown = set(d) - BLOCK_KEYS
            if unknown:
                raise UsageError(f"{src}: block has unknown key(s) {', '.join(sorted(unknown))} "
                                 f"(known: {', '.join(sorted(BLOCK_KEYS))})")
            kids = [tuple(self.task(t, where, role) for t in (d.get(k) or [])) for k in ("block", "rescue", "always")]
            return Task(str(d.get("name") or "block"), None, None, src, when=_cond(d.get("when")) or (),
                        become=_bool_or_none(d.get("become")), tags=_as_tuple(d.get("tags")),
                        vars=dict(d.get("vars") or {}), ignore_errors=d.get("ignore_errors", False), base=base,
                        role=rname, kind="block", block=kids[0], rescue=kids[1], always=kids[2])
        keys = [k for k in d if k not in TASK_KEYS]
        bad = [k for k in keys if k in NOT_SUPPORTED]
        if bad:
            raise UsageError(f"{src}: {', '.join(bad)} is Ansible's and gpuprov does not support it (see README, "
                             f"\"Ansible compatibility\")")
        mods = [k for k in keys if k != "meta"]
        name = str(d.get("name") or (module_name(mods[0]) if mods else d.get("meta", "task")))
        if "meta" in d:
            if d["meta"] not in ("flush_handlers", "noop"):
                raise UsageError(f"{src}: task {name!r}: the meta actions are flush_handlers and noop")
            return Task(name, None, None, src, meta=str(d["meta"]), tags=_as_tuple(d.get("tags")), kind="meta",
                        when=_cond(d.get("when")) or ())
        if len(mods) != 1:
            raise UsageError(f"{src}: task {name!r} must have exactly one module, found "
                             f"{', '.join(mods) or 'none'} (known: {', '.join(known_modules())})")
        key = mods[0]
        op = module_name(key)
        common = self._keywords(d, src, name)
        if op in INCLUDES:
            return self._include(op, d[key], d, src, name, where, role, common)
        if op not in Op.registry:
            raise UsageError(f"{src}: task {name!r}: unknown module {key!r} (known: {', '.join(known_modules())})")
        args = self._args(op, d[key], d.get("args"), src, name)
        return Task(name, op, args, src, base=base, role=rname, anonymous=not d.get("name"), **common)

    def _keywords(self, d: dict[str, Any], src: str, name: str) -> dict[str, Any]:
        try:
            retries = int(d.get("retries", 3 if "until" in d else 0))
            delay = float(d.get("delay", 5 if "until" in d else 1.0))
        except (TypeError, ValueError):
            raise UsageError(f"{src}: task {name!r}: retries and delay must be numbers") from None
        loop, flatten = d.get("loop"), False
        for k in ("with_items", "with_list"):
            if k in d:
                if loop is not None:
                    raise UsageError(f"{src}: task {name!r}: give one of loop, with_items, with_list")
                loop, flatten = d[k], k == "with_items"
        lc = d.get("loop_control") or {}
        if not isinstance(lc, dict) or set(lc) - {"loop_var", "label", "index_var", "pause", "extended"}:
            raise UsageError(f"{src}: task {name!r}: loop_control takes loop_var, label, index_var, pause, extended")
        if d.get("vars") is not None and not isinstance(d["vars"], dict):
            raise UsageError(f"{src}: task {name!r}: vars must be a mapping")
        if d.get("check_mode") not in (None, False):
            raise UsageError(f"{src}: task {name!r}: check_mode: true on a task is not supported")
        return dict(when=_cond(d.get("when")) or (), notify=_as_tuple(d.get("notify")), register=d.get("register"),
                    changed_when=_cond(d.get("changed_when")), failed_when=_cond(d.get("failed_when")),
                    retries=retries, until=_cond(d.get("until")), delay=delay, become=_bool_or_none(d.get("become")),
                    tags=_as_tuple(d.get("tags")), secret=bool(d.get("secret", False) or d.get("no_log", False)),
                    loop=loop, flatten=flatten, loop_var=str(lc.get("loop_var", "item")),
                    loop_label=lc.get("label"), loop_index=lc.get("index_var"),
                    ignore_errors=d.get("ignore_errors", False),
                    vars=dict(d.get("vars") or {}),
                    listen=_as_tuple(d.get("listen")))

    def _args(self, op: str, value: Any, extra: Any, src: str, name: str) -> Any:
        """Module arguments as Ansible takes them: a mapping, ``k=v`` text, free-form text (with its inline
        ``creates=``-style params) for command/shell, and ``args:`` merged on top."""
        cls = Op.registry[op]
        ff = cls.free_form()
        if value is None:
            value = {}
        if isinstance(value, str):
            whole_template = re.fullmatch(r"\s*\{\{.*\}\}\s*", value, re.S) is not None
            if ff:
                value = parse_kv(value, ff, tuple(cls.raw_params))
            elif not whole_template:
                value = parse_kv(value, None)
        elif isinstance(value, list) and ff:
            value = {ff: value}
        if extra is not None:
            if not isinstance(extra, dict):
                raise UsageError(f"{src}: task {name!r}: args must be a mapping")
            if not isinstance(value, dict):
                raise UsageError(f"{src}: task {name!r}: args cannot be merged into {type(value).__name__} arguments")
            value = {**value, **extra}
        return value

    def _include(self, op: str, value: Any, d: dict[str, Any], src: str, name: str, where: str, role: Role | None,
                 common: dict[str, Any]) -> Task:
        params: dict[str, Any] = {}
        if isinstance(value, dict):
            value = dict(value)
            target = value.pop("file", None) or value.pop("name", None)
            params = value
        else:
            target = value
        if not isinstance(target, str) or not target:
            raise UsageError(f"{src}: task {name!r}: {op} needs a file or role name")
        base = role.path if role else str(self.base)
        is_role = op.endswith("_role")
        if op.startswith("import_") and "{{" in target:
            raise UsageError(f"{src}: task {name!r}: {op} is static; its name cannot be templated (use include_*)")
        if op.startswith("import_") and common["loop"] is not None:
            raise UsageError(f"{src}: task {name!r}: {op} cannot loop (use include_*)")
        children: tuple[Task, ...] | None = None
        rname = role.name if role else None
        if "{{" not in target:
            if is_role:
                r, rparams, _, _ = self.role(target, src)
                children = (_role_block(r, rparams, src),)
            else:
                children = self._task_file(self._find(target, where, role), role)
        common = {**common, "vars": {**common["vars"], **params}}
        if op.startswith("import_"):
            assert children is not None
            return Task(name, None, None, src, kind="block", block=children, base=base, role=rname,
                        **{k: common[k] for k in ("when", "tags", "become", "vars")})
        return Task(name, op, None, src, kind="include", include=target, included=children, base=base, role=rname,
                    **common)

    # ----------------------------------------------------------- plays
    def play(self, d: Any, i: int) -> Play:
        p = self.playbook
        if not isinstance(d, dict):
            raise UsageError(f"{p}: play {i + 1} must be a mapping")
        if "import_playbook" in d:
            raise UsageError(f"{p}: play {i + 1}: import_playbook is not supported; run the playbooks one by one")
        unknown = set(d) - PLAY_KEYS
        if unknown:
            bad = sorted(unknown & NOT_SUPPORTED)
            raise UsageError(f"{p}: play {i + 1}: " + (
                f"{', '.join(bad)} is Ansible's and gpuprov does not support it" if bad else
                f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(PLAY_KEYS))})"))
        if not any(d.get(k) for k in ("tasks", "roles", "pre_tasks", "post_tasks")) and "tasks" not in d:
            raise UsageError(f"{p}: play {i + 1} has no tasks or roles")
        where = str(p)
        self.role_handlers = []
        pvars: dict[str, Any] = dict(d.get("vars") or {})
        for vf in _as_list(d.get("vars_files")):
            f = (self.base / str(vf)) if not str(vf).startswith("/") else Path(str(vf))
            data = load_yaml(f) if f.is_file() else None
            if not f.is_file():
                raise UsageError(f"{p}: play {i + 1}: no such vars file {vf}")
            if not isinstance(data, dict):
                raise UsageError(f"{f}: a vars file must be a mapping")
            pvars.update(data)
        roles: list[Role] = []
        role_blocks: list[Task] = []
        seen: list[tuple[str, str]] = []
        for spec in _as_list(d.get("roles")):
            r, params, when, tags = self.role(spec, where)
            if r not in roles:
                roles.append(r)
            key = (r.name, repr(sorted(params.items())))
            if key in seen:
                continue  # Ansible runs a role once unless its params differ
            seen.append(key)
            role_blocks.append(_role_block(r, params, where, when, tags))
        tasks = tuple(self.task(t, where, None) for t in (d.get("pre_tasks") or []))
        pre_flush = (_flush(where),) if tasks else ()
        tasks = tasks + pre_flush + tuple(role_blocks) + tuple(self.task(t, where, None) for t in
                                                               (d.get("tasks") or []))
        post = tuple(self.task(t, where, None) for t in (d.get("post_tasks") or []))
        if post:
            tasks += (_flush(where),) + post
        handlers = tuple(self.task(t, where, None) for t in (d.get("handlers") or [])) + tuple(self.role_handlers)
        for r in self.roles.values():  # roles pulled in by import_role/include_role bring their vars too
            if r not in roles:
                roles.append(r)
        names = {h.name for h in handlers} | {x for h in handlers for x in h.listen}
        for t in _walk(tasks + handlers):
            for n in t.notify:
                if n not in names and "{{" not in n:
                    raise UsageError(f"{t.source}: task {t.name!r} notifies {n!r}, which is not a handler of this "
                                     f"play (nor a listen topic)")
        gf = d.get("gather_facts", True)
        return Play(str(d.get("name") or d.get("hosts") or f"play {i + 1}"), _hosts(d.get("hosts")), pvars, tasks,
                    handlers, where, gather_facts=bool(gf), roles=tuple(roles), become=_bool_or_none(d.get("become")),
                    tags=_as_tuple(d.get("tags")), force_handlers=bool(d.get("force_handlers", False)),
                    base=str(self.base))


def _role_block(r: Role, params: Mapping[str, Any], src: str, when: tuple[str, ...] = (),
                tags: tuple[str, ...] = ()) -> Task:
    """A role's tasks as one block: its folder for ``src`` lookups, its name for its vars, its params as vars."""
    return Task(f"role {r.name}", None, None, src, kind="block", base=r.path, role=r.name, when=when, tags=tags,
                vars=dict(params), block=r.tasks)


def _flush(src: str) -> Task:
    """The handler flush Ansible puts between a play's sections (pre_tasks | roles + tasks | post_tasks)."""
    return Task("flush", None, None, src, meta="flush_handlers", kind="meta")


def _hosts(v: Any) -> str:
    if v is None:
        return "all"
    if isinstance(v, list):
        return ":".join(str(x) for x in v)
    return str(v)


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _bool_or_none(v: Any) -> bool | None:
    return None if v is None else bool(v)


def _walk(tasks: tuple[Task, ...]):  # noqa: ANN202
    for t in tasks:
        yield t
        yield from _walk(t.block + t.rescue + t.always + (t.included or ()))


def load_include(name: str, t: Task, play: Play) -> tuple[Task, ...]:
    """The tasks of an ``include_tasks`` whose file name was templated, read when its turn comes."""
    loader = _Loader(Path(play.source).resolve())
    where = t.source.rsplit(":", 1)[0]
    role = None
    if t.role:
        role = loader.role(t.role, where)[0]
    return loader._task_file(loader._find(name, where, role), role)


def known_modules() -> list[str]:
    return sorted(set(Op.registry) | INCLUDES | {"meta", "block"})


def load_playbook(path: str | Path) -> list[Play]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no such playbook: {p}")
    data = load_yaml(p)
    if not isinstance(data, list) or not data:
        raise UsageError(f"{p}: a playbook is a non-empty list of plays")
    loader = _Loader(p.resolve())
    try:
        return [loader.play(d, i) for i, d in enumerate(data)]
    except GpuprovError:
        raise
    except RecursionError:
        raise UsageError(f"{p}: task files include each other in a circle") from None
