"""Jinja2 as Ansible uses it: StrictUndefined, ``{{ expr }}`` alone keeps its native type (a list stays a list),
vars that hold templates are rendered when they are used (``a: "{{ b }}"``), and Ansible's filters and tests.

Secrets (``Secret``) render as ``***`` unless passed through the ``reveal`` filter, which only a task marked
``secret: true`` may use. Template files render with Ansible's ``trim_blocks``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import re
import shlex
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.runtime
import yaml

from .errors import UsageError
from .secrets import Secret

#: the key in a render context that lists which vars may hold templates (user vars; never results or gpuprov's own)
LAZY = "__gpuprov_lazy__"
_depth = threading.local()


class _LazyContext(jinja2.runtime.Context):
    """Renders a user var's templates when an expression reads it, as Ansible does (with a depth guard)."""

    def resolve_or_missing(self, key: str) -> Any:
        value = super().resolve_or_missing(key)
        lazy = self.parent.get(LAZY) or ()
        if key in lazy and _has_template(value):
            depth = getattr(_depth, "n", 0)
            if depth > 30:
                raise jinja2.TemplateError(f"recursive loop detected in template for var {key!r}")
            _depth.n = depth + 1
            try:
                return self.environment.gpuprov_templar.render(value, self.parent, f"var {key}")  # type: ignore
            finally:
                _depth.n = depth
        return value


def _has_template(v: Any) -> bool:
    if isinstance(v, str):
        return "{{" in v or "{%" in v
    if isinstance(v, dict):
        return any(_has_template(x) for x in v.values())
    if isinstance(v, list):
        return any(_has_template(x) for x in v)
    return False


# --------------------------------------------------------------------------- Ansible's filters and tests


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        return v.strip().lower() in ("yes", "on", "1", "true", "y", "t")
    return bool(v)


def _combine(*dicts: Any, recursive: bool = False, list_merge: str = "replace") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in (d or {}).items():
            if recursive and isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = _combine(out[k], v, recursive=True)
            elif list_merge == "append" and isinstance(v, list) and isinstance(out.get(k), list):
                out[k] = out[k] + v
            else:
                out[k] = v
    return out


def _flatten(v: Any, levels: int | None = None) -> list[Any]:
    out: list[Any] = []
    for x in v:
        if isinstance(x, list) and (levels is None or levels > 0):
            out.extend(_flatten(x, None if levels is None else levels - 1))
        else:
            out.append(x)
    return out


def _mandatory(v: Any, msg: str | None = None) -> Any:
    if isinstance(v, jinja2.Undefined):
        raise jinja2.UndefinedError(msg or "Mandatory variable not defined.")
    return v


def _regex_search(v: str, pattern: str, *groups: str, ignorecase: bool = False, multiline: bool = False) -> Any:
    flags = (re.I if ignorecase else 0) | (re.M if multiline else 0)
    m = re.search(pattern, str(v), flags)
    if not m:
        return None
    if not groups:
        return m.group(0)
    return [m.group(int(g[1:]) if g.startswith("\\") else g) for g in groups]


def _hash(v: Any, algo: str = "sha1") -> str:
    return hashlib.new(algo, str(v).encode()).hexdigest()


def _version(a: Any, b: Any, op: str = "eq", strict: bool = False) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        va, vb = Version(str(a)), Version(str(b))
    except InvalidVersion:
        raise jinja2.TemplateError(f"version comparison: cannot read {a!r} or {b!r} as versions") from None
    ops = {"eq": va == vb, "==": va == vb, "ne": va != vb, "!=": va != vb, "<>": va != vb, "lt": va < vb,
           "<": va < vb, "le": va <= vb, "<=": va <= vb, "gt": va > vb, ">": va > vb, "ge": va >= vb, ">=": va >= vb}
    if op not in ops:
        raise jinja2.TemplateError(f"version comparison: unknown operator {op!r}")
    return ops[op]


def _result_is(key: str, default: bool = False):  # noqa: ANN202
    def test(v: Any) -> bool:
        if not isinstance(v, Mapping):
            raise jinja2.TemplateError(f"the '{key}' test expects a task result (a registered var), got "
                                       f"{type(v).__name__}")
        if key == "succeeded":
            return not v.get("failed", False)
        if key == "changed" and "results" in v and "changed" not in v:
            return any(r.get("changed") for r in v["results"])
        return bool(v.get(key, default))

    return test


FILTERS: dict[str, Any] = {
    "bool": _bool,
    "to_json": lambda v, **kw: json.dumps(v, default=str, **kw),
    "to_nice_json": lambda v, indent=4, **kw: json.dumps(v, indent=indent, sort_keys=True, default=str, **kw),
    "from_json": json.loads,
    "to_yaml": lambda v, **kw: yaml.safe_dump(v, allow_unicode=True, default_flow_style=None, **kw),
    "to_nice_yaml": lambda v, indent=4, **kw: yaml.safe_dump(v, indent=indent, allow_unicode=True,
                                                             default_flow_style=False, **kw),
    "from_yaml": yaml.safe_load,
    "regex_replace": lambda v, pattern, repl="", ignorecase=False, multiline=False, count=0: re.sub(
        pattern, repl, str(v), count=count, flags=(re.I if ignorecase else 0) | (re.M if multiline else 0)),
    "regex_search": _regex_search,
    "regex_findall": lambda v, pattern, ignorecase=False, multiline=False: re.findall(
        pattern, str(v), (re.I if ignorecase else 0) | (re.M if multiline else 0)),
    "regex_escape": lambda v: re.escape(str(v)),
    "basename": lambda v: posixpath.basename(str(v)),
    "dirname": lambda v: posixpath.dirname(str(v)),
    "splitext": lambda v: list(posixpath.splitext(str(v))),
    "expanduser": lambda v: os.path.expanduser(str(v)),
    "realpath": lambda v: os.path.realpath(str(v)),
    "b64encode": lambda v, encoding="utf-8": base64.b64encode(str(v).encode(encoding)).decode(),
    "b64decode": lambda v, encoding="utf-8": base64.b64decode(str(v)).decode(encoding),
    "quote": lambda v: shlex.quote(str(v)),
    "shquote": lambda v: shlex.quote(str(v)),
    "mandatory": _mandatory,
    "ternary": lambda v, a, b, none=None: (none if v is None and none is not None else a if v else b),
    "combine": _combine,
    "dict2items": lambda d, key_name="key", value_name="value": [{key_name: k, value_name: v} for k, v in d.items()],
    "items2dict": lambda items, key_name="key", value_name="value": {i[key_name]: i[value_name] for i in items},
    "hash": _hash,
    "checksum": lambda v: _hash(v, "sha1"),
    "flatten": _flatten,
    "union": lambda a, b: list(dict.fromkeys(list(a) + list(b))),
    "intersect": lambda a, b: [x for x in dict.fromkeys(a) if x in b],
    "difference": lambda a, b: [x for x in dict.fromkeys(a) if x not in b],
    "symmetric_difference": lambda a, b: [x for x in dict.fromkeys(list(a) + list(b)) if (x in a) != (x in b)],
    "type_debug": lambda v: type(v).__name__,
    "zip": lambda a, *rest: [list(t) for t in zip(a, *rest, strict=False)],
    "reveal": lambda v: v.reveal() if isinstance(v, Secret) else v,
}

TESTS: dict[str, Any] = {
    "success": _result_is("succeeded"), "succeeded": _result_is("succeeded"),
    "failed": _result_is("failed"), "failure": _result_is("failed"),
    "changed": _result_is("changed"), "change": _result_is("changed"),
    "skipped": _result_is("skipped"), "skip": _result_is("skipped"),
    "match": lambda v, p, ignorecase=False, multiline=False: re.match(
        p, str(v), (re.I if ignorecase else 0) | (re.M if multiline else 0)) is not None,
    "search": lambda v, p, ignorecase=False, multiline=False: re.search(
        p, str(v), (re.I if ignorecase else 0) | (re.M if multiline else 0)) is not None,
    "regex": lambda v, p, ignorecase=False, multiline=False, match_type="search": getattr(re, match_type)(
        p, str(v), (re.I if ignorecase else 0) | (re.M if multiline else 0)) is not None,
    "version": _version, "version_compare": _version,
    "subset": lambda a, b: set(a) <= set(b), "superset": lambda a, b: set(a) >= set(b),
    "contains": lambda seq, v: v in seq,
    "truthy": lambda v: bool(v), "falsy": lambda v: not v,
    # Ansible's path tests look at the controller's files
    "exists": lambda p: os.path.exists(os.path.expanduser(str(p))),
    "file": lambda p: os.path.isfile(str(p)), "directory": lambda p: os.path.isdir(str(p)),
    "link": lambda p: os.path.islink(str(p)), "abs": lambda p: os.path.isabs(str(p)),
}


def _env(template_dirs: list[Path], trim_blocks: bool) -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=trim_blocks,
                             loader=jinja2.FileSystemLoader([str(d) for d in template_dirs]), autoescape=False)
    env.context_class = _LazyContext
    env.filters.update(FILTERS)
    env.filters["d"] = env.filters["default"]
    env.tests.update(TESTS)
    return env


class Templar:
    """Renders task arguments, conditions and template files for a playbook run."""

    def __init__(self, template_dirs: list[Path]):
        self.env = _env(template_dirs, trim_blocks=False)
        self.env.gpuprov_templar = self  # type: ignore[attr-defined]
        self.files_env = _env(template_dirs, trim_blocks=True)  # template: files, as Ansible renders them
        self.files_env.gpuprov_templar = self  # type: ignore[attr-defined]
        # compiled once, rendered per host (a 50-host run would otherwise compile each string 50 times)
        self._templates: dict[str, jinja2.Template] = {}
        self._exprs: dict[str, Any] = {}
        self._files: dict[str, jinja2.Template] = {}

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
                # an expression alone (trailing blanks aside) is its value with its type, as in Ansible 2.19:
                # "{{ n }}\n" is the number n, while a text value keeps its trailing blanks
                m = re.fullmatch(r"\{\{(.*?)\}\}(\s*)", value, re.S)
                if m and "{{" not in m.group(1):
                    out = self._expr(m.group(1))(ctx)
                    if isinstance(out, jinja2.Undefined):
                        str(out)  # raises UndefinedError naming the variable
                    if m.group(2) and isinstance(out, (str, Secret)):
                        return f"{out}{m.group(2)}"
                    return out
                return self._template(value).render(ctx)
            except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
                raise self._err(e, task) from None
        if isinstance(value, dict):
            return {k: self.render(v, ctx, task) for k, v in value.items()}
        if isinstance(value, list):
            return [self.render(v, ctx, task) for v in value]
        return value

    def evaluate(self, expr: str, ctx: Mapping[str, Any], task: str) -> Any:
        """A bare Jinja expression's value (``debug: var:``, ``assert: that:``)."""
        try:
            out = self._expr(expr)(ctx)
            if isinstance(out, jinja2.Undefined):
                str(out)
            return out
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise self._err(e, task) from None

    def test(self, expr: str, ctx: Mapping[str, Any], task: str) -> bool:
        out = self.evaluate(expr, ctx, task)
        if isinstance(out, str):  # a var holding "false" / "yes", as Ansible reads it
            return _bool(out)
        return bool(out)

    def test_all(self, exprs: tuple[str, ...], ctx: Mapping[str, Any], task: str) -> bool:
        return all(self.test(e, ctx, task) for e in exprs)

    def render_file(self, src: str, ctx: Mapping[str, Any], task: str, search: list[Path] | None = None) -> str:
        """A template file: ``src`` absolute, or found in ``search`` (the task's role/playbook folders) and then
        the playbook's template folders."""
        try:
            path = Path(src)
            if not path.is_absolute():
                for d in search or []:
                    if (d / src).is_file():
                        path = d / src
                        break
            if path.is_absolute() or path.is_file():
                if not path.is_file():
                    raise jinja2.TemplateNotFound(src)
                key = str(path.resolve())
                t = self._files.get(key)
                if t is None:  # compiled once per run, rendered per host
                    t = self._files[key] = self.files_env.from_string(path.read_text(encoding="utf-8"))
                return t.render(ctx)
            return self.files_env.get_template(src).render(ctx)
        except jinja2.TemplateNotFound:
            raise UsageError(f"task {task!r}: template {src!r} not found") from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise self._err(e, task) from None
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"task {task!r}: cannot read template {src!r}: {e}") from None
