"""Inventory: YAML files → frozen ``Host`` objects whose vars remember where each value came from.

File format (Ansible's YAML inventory shape; every file under the inventory folder is read, sorted)::

    all:
      vars: {model: openai/gpt-oss-20b}
      children:
        runpod:
          vars: {gpu_memory_utilization: 0.92}
          hosts:
            pod1: {address: 203.0.113.7, port: 22022, user: root}
        lab:
          children:
            a100s: {hosts: {a1: {address: 10.0.0.5}}}

Top-level keys other than ``all`` are groups too (children of ``all``). A host's own mapping holds its
connection keys (``address``, ``port``, ``user``, ``identity_file``, ``proxy_jump``, or Ansible's
``ansible_host``, ``ansible_port``, ``ansible_user``, ``ansible_ssh_private_key_file``,
``ansible_ssh_common_args`` with a ProxyJump) and any vars. Ansible's INI format is read too, and
``group_vars/`` and ``host_vars/`` (files or folders of YAML) beside the inventory and beside the playbook.

Precedence, lowest first, as Ansible orders the levels gpuprov has: built-in defaults < ``all`` in the inventory
< ``group_vars/all`` beside the inventory < beside the playbook < other groups in the inventory (parents before
children, then by name) < their ``group_vars/`` beside the inventory < beside the playbook < the host in the
inventory < ``host_vars/`` beside the inventory < beside the playbook; then (``executor.py``) play vars, role and
block and task vars, set_fact/register, and the command line (``-e``) above all.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .errors import InventoryError, UsageError

CONNECTION_KEYS: dict[str, type] = {
    "address": str,
    "port": int,
    "user": str,
    "identity_file": str,
    "proxy_jump": str,
}
#: Ansible's connection vars, read as gpuprov's (``ansible_ssh_common_args`` gives a ProxyJump)
ANSIBLE_CONNECTION = {"ansible_host": "address", "ansible_ssh_host": "address", "ansible_port": "port",
                      "ansible_ssh_port": "port", "ansible_user": "user", "ansible_ssh_user": "user",
                      "ansible_ssh_private_key_file": "identity_file", "ansible_private_key_file": "identity_file"}
GROUP_KEYS = {"hosts", "vars", "children"}
#: files in an inventory folder that are not inventory (Ansible's INVENTORY_IGNORE_EXTS)
IGNORED = (".orig", ".ini~", "~", ".bak", ".pyc", ".retry", ".cfg", ".md", ".txt", ".rst", ".j2")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Var:
    """A var's value and where it came from, e.g. ``inventory/hosts.yml:7 (group runpod)``."""

    value: Any
    source: str


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int | None = None  # None: ~/.ssh/config's Port, else 22
    user: str | None = None
    identity_file: str | None = None
    proxy_jump: str | None = None
    groups: tuple[str, ...] = ()
    vars: Mapping[str, Var] = field(default_factory=lambda: MappingProxyType({}))
    #: where the host was declared ("ad-hoc" for --host user@addr:port)
    source: str = "ad-hoc"

    def var(self, name: str, default: Any = None) -> Any:
        v = self.vars.get(name)
        return default if v is None else v.value

    @property
    def is_local(self) -> bool:
        return self.address in ("local", "localhost-direct")

    def with_vars(self, extra: Mapping[str, Any], source: str) -> Host:
        """A copy with ``extra`` layered on top (used for command-line vars)."""
        merged = dict(self.vars)
        for k, v in extra.items():
            merged[k] = Var(v, source)
        return Host(**{**self.__dict__, "vars": MappingProxyType(merged)})


# --------------------------------------------------------------------------- YAML with line numbers


class _LineDict(dict):
    """A dict that remembers the line of each key (1-based) and of itself."""

    line: int = 0
    key_lines: dict


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]  # libyaml parses, 5-10x faster
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    d = _LineDict()
    d.line = node.start_mark.line + 1
    d.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise InventoryError(f"a mapping key must be a name, got {key!r}", None, key_node.start_mark.line + 1)
        key = str(key)
        if key in d:
            raise InventoryError(f"duplicate key {key!r}", None, key_node.start_mark.line + 1)
        d[key] = loader.construct_object(value_node, deep=True)
        d.key_lines[key] = key_node.start_mark.line + 1
    return d


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path) -> Any:
    """Parse one YAML file; any problem becomes an InventoryError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InventoryError(f"cannot read: {e}", str(path)) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except InventoryError as e:
        raise InventoryError(str(e).split(": ", 1)[-1], str(path), e.line) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise InventoryError(f"malformed YAML: {e.problem or e.context}", str(path), line) from None
    except yaml.YAMLError as e:
        raise InventoryError(f"malformed YAML: {e}", str(path)) from None


def _line(d: Any, key: str | None = None) -> int | None:
    if isinstance(d, _LineDict):
        return d.key_lines.get(key, d.line) if key else d.line
    return None


# --------------------------------------------------------------------------- the inventory


@dataclass
class _Group:
    name: str
    parents: set[str] = field(default_factory=set)
    vars: dict[str, Var] = field(default_factory=dict)
    #: the group's own hosts in declaration order (a multinode deployment's head is its first host)
    hosts: dict[str, None] = field(default_factory=dict)


@dataclass
class _HostDecl:
    name: str
    data: dict[str, Var]
    source: str
    #: the pod's own knobs (a ``plugin: runpod`` source): above the defaults, below everything in the inventory
    pod_env: dict[str, Var] = field(default_factory=dict)


class Inventory:
    """All groups and hosts found in one inventory file or folder."""

    def __init__(self, files: Iterable[Path] = (), defaults: Mapping[str, Var] | None = None):
        self.files = [Path(p) for p in files]
        self.defaults: dict[str, Var] = dict(defaults or {})
        self.groups: dict[str, _Group] = {"all": _Group("all")}
        self.hosts: dict[str, _HostDecl] = {}
        #: folders whose group_vars/ and host_vars/ belong to the inventory (set by from_path)
        self.var_dirs: list[Path] = []
        self._dir_cache: dict[Path, tuple[dict[str, dict[str, Var]], dict[str, dict[str, Var]]]] = {}
        #: what each dynamic source (``plugin: runpod``) found: its pods that are not hosts, and its error
        self.sources: list[Any] = []
        for f in self.files:
            self._load_file(f)

    # ----------------------------------------------------------- loading
    @classmethod
    def from_path(cls, path: str | Path, defaults: Mapping[str, Var] | None = None) -> Inventory:
        p = Path(path)
        if p.is_dir():
            files = sorted(x for x in p.iterdir() if x.is_file() and not x.name.startswith(".")
                           and not x.name.endswith(IGNORED))
            var_dirs = [p]
        elif p.is_file():
            files, var_dirs = [p], [p.parent]
        else:
            raise InventoryError("no such inventory file or folder", str(p))
        inv = cls(files, defaults)
        inv.var_dirs = var_dirs
        return inv

    def _load_file(self, path: Path) -> None:
        if path.suffix not in (".yml", ".yaml", ".json") and _looks_ini(path):
            self._load_ini(path)
            return
        data = load_yaml(path)
        if data is None:
            return
        if not isinstance(data, dict):
            raise InventoryError("the top level must be a mapping of group names", str(path), 1)
        if "plugin" in data:
            self._load_plugin(path, data)
            return
        for gname, gdata in data.items():
            self._load_group(path, gname, gdata, parent=None if gname == "all" else "all", line=_line(data, gname))

    def _load_plugin(self, path: Path, data: dict) -> None:
        """A dynamic inventory source (Ansible's convention: a YAML file naming its ``plugin``), read at every run.
        A source whose API fails contributes no hosts and says why (``sources``); the rest of the inventory works."""
        if data.get("plugin") != "runpod":
            raise InventoryError(f"unknown inventory plugin {data.get('plugin')!r} (gpuprov has: runpod)", str(path),
                                 _line(data, "plugin"))
        from .runpod import PodSource

        res = PodSource.from_options(path, data).load()
        self.sources.append(res)
        for gname, gdata in res.groups.items():
            self._load_group(path, gname, gdata, parent="all", line=None)
        for name, knobs in res.pod_env.items():
            self.hosts[name].pod_env = {k: Var(v, "pod env (RunPod API)") for k, v in knobs.items()}

    def unavailable(self, name: str) -> str | None:
        """Why a dynamic source's pod named ``name`` is not a host (stopped, no direct SSH), else None."""
        return next((s.unavailable[name] for s in self.sources if name in s.unavailable), None)

    def _load_group(self, path: Path, name: str, data: Any, parent: str | None, line: int | None) -> None:
        if not NAME_RE.match(name):
            raise InventoryError(f"invalid group name {name!r}", str(path), line)
        if name in self.hosts:
            raise InventoryError(f"{name!r} is already a host; a group cannot share its name", str(path), line)
        group = self.groups.setdefault(name, _Group(name))
        if parent:
            if parent == name or name in self._ancestors(parent):
                raise InventoryError(f"group {name!r} would be its own ancestor", str(path), line)
            group.parents.add(parent)
        if data is None:
            return
        if not isinstance(data, dict):
            raise InventoryError(f"group {name!r} must be a mapping with hosts/vars/children", str(path), line)
        for key in data:
            if key not in GROUP_KEYS:
                raise InventoryError(
                    f"unknown key {key!r} in group {name!r} (expected one of: hosts, vars, children)",
                    str(path),
                    _line(data, key),
                )
        group.vars.update(self._vars(path, data.get("vars"), f"group {name}", _line(data, "vars")))
        hosts = data.get("hosts")
        if hosts is not None:
            if not isinstance(hosts, dict):
                raise InventoryError(f"'hosts' of group {name!r} must be a mapping", str(path), _line(data, "hosts"))
            for hname, hdata in hosts.items():
                self._load_host(path, hname, hdata, _line(hosts, hname))
                group.hosts[hname] = None
        children = data.get("children")
        if children is not None:
            if not isinstance(children, dict):
                raise InventoryError(
                    f"'children' of group {name!r} must be a mapping", str(path), _line(data, "children")
                )
            for cname, cdata in children.items():
                self._load_group(path, cname, cdata, parent=name, line=_line(children, cname))

    def _vars(self, path: Path, data: Any, what: str, line: int | None) -> dict[str, Var]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise InventoryError(f"vars of {what} must be a mapping", str(path), line)
        out = {}
        for k, v in data.items():
            if not VAR_RE.match(k):
                raise InventoryError(f"invalid var name {k!r} in {what}", str(path), _line(data, k))
            n = _line(data, k)
            out[k] = Var(_plain(v), f"{path}:{n} ({what})" if n else f"{path} ({what})")
        return out

    def _load_host(self, path: Path, name: str, data: Any, line: int | None) -> None:
        if not NAME_RE.match(name):
            raise InventoryError(f"invalid host name {name!r}", str(path), line)
        if name in self.groups:
            raise InventoryError(f"{name!r} is already a group; a host cannot share its name", str(path), line)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InventoryError(f"host {name!r} must be a mapping of connection keys and vars", str(path), line)
        for key, typ in CONNECTION_KEYS.items():
            if key in data and not _is_type(data[key], typ):
                raise InventoryError(
                    f"host {name!r}: {key} must be {typ.__name__}, got {type(data[key]).__name__} {data[key]!r}",
                    str(path),
                    _line(data, key),
                )
        if "port" in data and not 0 < data["port"] < 65536:
            raise InventoryError(f"host {name!r}: port {data['port']} is out of range", str(path), _line(data, "port"))
        decl = self.hosts.get(name)
        new = self._vars(path, data, f"host {name}", line)
        if decl is None:
            self.hosts[name] = _HostDecl(name, new, f"{path}:{line}" if line else str(path))
        else:  # declared in two groups: merge, later files win
            decl.data.update(new)

    def _load_ini(self, path: Path) -> None:
        """Ansible's INI inventory: ``[group]`` lines of ``host k=v``, ``[group:vars]``, ``[group:children]``,
        host ranges ``web[01:03]``. Values are read as Python literals where they are one (``8080`` is a number),
        as ansible-core 2.19 reads them."""
        section, kind = "ungrouped", "hosts"
        for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            m = re.fullmatch(r"\[([^\]:]+)(?::(vars|children))?\]", line)
            if m:
                section, kind = m.group(1), m.group(2) or "hosts"
                if not NAME_RE.match(section):
                    raise InventoryError(f"invalid group name {section!r}", str(path), n)
                self.groups.setdefault(section, _Group(section))
                if section != "all":
                    self.groups[section].parents.add("all")
                continue
            if kind == "vars":
                k, eq, v = line.partition("=")
                if not eq or not VAR_RE.match(k.strip()):
                    raise InventoryError(f"expected key=value in [{section}:vars], got {line!r}", str(path), n)
                self.groups[section].vars[k.strip()] = Var(_ini_value(v.strip()), f"{path}:{n} (group {section})")
                continue
            if kind == "children":
                self._load_group(path, line, None, parent=section, line=n)
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError as e:
                raise InventoryError(f"cannot read {line!r}: {e}", str(path), n) from None
            data: dict[str, Any] = {}
            for w in words[1:]:
                k, eq, v = w.partition("=")
                if not eq:
                    raise InventoryError(f"expected key=value after the host name, got {w!r}", str(path), n)
                data[k] = _ini_value(v)
            for hname in _expand_range(words[0], str(path), n):
                self._load_host(path, hname, dict(data), n)
                if section != "ungrouped":
                    self.groups[section].hosts[hname] = None
                else:
                    self.groups.setdefault("ungrouped", _Group("ungrouped", {"all"})).hosts[hname] = None

    def _dir_vars(self, d: Path) -> tuple[dict[str, dict[str, Var]], dict[str, dict[str, Var]]]:
        """group_vars/ and host_vars/ under ``d``: {name: vars} for groups and for hosts (read once per folder,
        not once per host)."""
        if d not in self._dir_cache:
            self._dir_cache[d] = self._read_dir_vars(d)
        return self._dir_cache[d]

    def _read_dir_vars(self, d: Path) -> tuple[dict[str, dict[str, Var]], dict[str, dict[str, Var]]]:
        out: list[dict[str, dict[str, Var]]] = [{}, {}]
        for i, sub in enumerate(("group_vars", "host_vars")):
            base = d / sub
            if not base.is_dir():
                continue
            for entry in sorted(base.iterdir()):
                name = entry.stem if entry.suffix in (".yml", ".yaml", ".json") else entry.name
                files = sorted(f for f in entry.rglob("*") if f.is_file()) if entry.is_dir() else [entry]
                for f in files:
                    if f.name.startswith(".") or f.name.endswith(IGNORED):
                        continue
                    data = load_yaml(f)
                    if data is None:
                        continue
                    out[i].setdefault(name, {}).update(self._vars(f, data, f"{sub}/{name}", None))
        return out[0], out[1]

    def _ancestors(self, group: str) -> list[str]:
        """Ancestors of ``group`` nearest last, deduplicated, ``all`` first."""
        seen: list[str] = []

        def walk(g: str) -> None:
            for p in sorted(self.groups.get(g, _Group(g)).parents):
                if p not in seen:
                    walk(p)
                    if p not in seen:
                        seen.append(p)

        walk(group)
        return seen

    # ----------------------------------------------------------- queries
    def groups_of(self, host: str) -> list[str]:
        direct = [g.name for g in self.groups.values() if host in g.hosts]
        out: list[str] = []
        for g in sorted(direct):
            for a in self._ancestors(g) + [g]:
                if a not in out:
                    out.append(a)
        if "all" not in out:
            out.insert(0, "all")
        depth = {g: len(self._ancestors(g)) for g in out}
        return sorted(out, key=lambda g: (depth[g], g != "all", g))

    def members(self, group: str) -> list[str]:
        """The hosts of ``group`` and of its children, in declaration order (its own hosts first)."""
        out: dict[str, None] = dict.fromkeys(self.groups[group].hosts) if group in self.groups else {}
        for child in (g for g in self.groups.values() if group in g.parents):
            out.update(dict.fromkeys(self.members(child.name)))
        return list(out)

    def group_var(self, group: str, name: str, playbook_dir: Path | None = None) -> Var | None:
        """The var ``name`` as ``group`` itself sets it (inline or in a group_vars/ folder), else None."""
        found = self.groups[group].vars.get(name) if group in self.groups else None
        dirs = [*self.var_dirs] + ([playbook_dir] if playbook_dir and playbook_dir not in self.var_dirs else [])
        for d in dirs:
            found = self._dir_vars(d)[0].get(group, {}).get(name, found)
        return found

    def host(self, name: str, playbook_dir: Path | None = None) -> Host:
        decl = self.hosts[name]
        merged: dict[str, Var] = {**self.defaults, **decl.pod_env}
        groups = self.groups_of(name)
        inv_dirs = [self._dir_vars(d) for d in self.var_dirs]
        play_dirs = [self._dir_vars(playbook_dir)] if playbook_dir and playbook_dir not in self.var_dirs else []
        others = [g for g in groups if g != "all"]
        # Ansible's order: all (inline, beside the inventory, beside the playbook), then the other groups the same
        # way, then the host the same way
        for gs in (["all"], others):
            for g in gs:
                merged.update(self.groups[g].vars)
            for dirs in (inv_dirs, play_dirs):
                for gv, _ in dirs:
                    for g in gs:
                        merged.update(gv.get(g, {}))
        merged.update(decl.data)
        for dirs in (inv_dirs, play_dirs):
            for _, hv in dirs:
                merged.update(hv.get(name, {}))
        for ans, ours in ANSIBLE_CONNECTION.items():
            if ans in merged:
                merged[ours] = merged.pop(ans)
        if "ansible_ssh_common_args" in merged:
            jump = _proxy_jump(str(merged["ansible_ssh_common_args"].value))
            if jump:
                merged["proxy_jump"] = Var(jump, merged["ansible_ssh_common_args"].source)
        if merged.get("ansible_connection") and merged["ansible_connection"].value == "local":
            merged["address"] = Var("local", merged["ansible_connection"].source)
        conn = {k: merged.pop(k).value for k in list(CONNECTION_KEYS) if k in merged}
        if isinstance(conn.get("port"), str) and conn["port"].isdigit():
            conn["port"] = int(conn["port"])
        for key, typ in CONNECTION_KEYS.items():  # group vars may also carry connection keys
            if key in conn and not _is_type(conn[key], typ):
                raise InventoryError(f"host {name!r}: {key} must be {typ.__name__}, got {conn[key]!r}", decl.source)
        return Host(
            name=name,
            address=conn.get("address", name),
            port=conn.get("port"),
            user=conn.get("user"),
            identity_file=_expand(conn.get("identity_file")),
            proxy_jump=conn.get("proxy_jump"),
            groups=tuple(groups),
            vars=MappingProxyType(merged),
            source=decl.source,
        )

    def select(self, pattern: str, ssh_config_hosts: Iterable[str] = (), playbook_dir: Path | None = None
               ) -> list[Host]:
        """Resolve ``--host``: Ansible's host patterns over inventory hosts and groups (``a,b``, ``a:b``,
        ``a:&b``, ``a:!b``, globs ``web*``, ``~regex``, ``all``), plus ``user@address:port``, ssh aliases, and
        ``local`` (this machine, without SSH) unless the inventory names a host ``local`` itself."""
        if not pattern or not pattern.strip():
            raise UsageError("--host is empty")
        aliases = set(ssh_config_hosts)
        union: dict[str, Host] = {}
        narrow: list[tuple[str, set[str]]] = []
        for term in _terms(pattern):
            op, name = (term[0], term[1:]) if term[0] in "&!" else ("", term)
            names = self._resolve(name)
            if names is None:
                if op:
                    raise UsageError(f"unknown host or group {name!r} in {term!r}")
                if name == "local":  # the machine gpuprov runs on (inside a pod's terminal, say): no SSH
                    union[name] = Host(name="local", address="local", groups=("all",),
                                       vars=MappingProxyType(dict(self.defaults)), source="built-in")
                elif self.unavailable(name):
                    raise UsageError(f"{name}: {self.unavailable(name)}")
                elif name in aliases or _looks_adhoc(name):
                    adhoc = parse_adhoc(name, self.defaults)
                    union[adhoc.name] = adhoc
                else:
                    known = sorted(self.hosts) + sorted(g for g in self.groups if g != "all")
                    hint = f" (known: {', '.join(known[:20])})" if known else " (the inventory is empty)"
                    hint += "".join(f"; {s.path} found no pods: {s.error}" for s in self.sources if s.error)
                    raise UsageError(f"unknown host or group {name!r}{hint}")
                continue
            if not names and name in ("all", "*") and not self.hosts:
                raise UsageError("the inventory has no hosts (give --host, or --inventory FILE|DIR)")
            if not names and not any(c in name for c in "*?[~") and name in self.groups:
                raise UsageError(f"group {name!r} has no hosts")
            if op:
                narrow.append((op, names))
            else:
                for h in sorted(names):
                    union.setdefault(h, self.host(h, playbook_dir))
        for op, names in narrow:
            union = {k: v for k, v in union.items() if (k in names) == (op == "&")}
        if not union:
            raise UsageError(f"--host {pattern!r} selects no host")
        return list(union.values())

    def _resolve(self, name: str) -> set[str] | None:
        """The inventory hosts one pattern term names; None when it names nothing in the inventory."""
        if name in self.hosts:
            return {name}
        if name in ("all", "*"):
            return set(self.hosts)
        if name in self.groups:
            return {h for h in self.hosts if name in self.groups_of(h)}
        if name.startswith("~"):
            try:
                rx = re.compile(name[1:])
            except re.error as e:
                raise UsageError(f"bad host pattern {name!r}: {e}") from None
            hit = {h for h in self.hosts if rx.search(h)}
            hit |= {h for g in self.groups if rx.search(g) for h in self.hosts if g in self.groups_of(h)}
            return hit
        if any(c in name for c in "*?["):
            hit = {h for h in self.hosts if fnmatch.fnmatchcase(h, name)}
            hit |= {h for g in self.groups if fnmatch.fnmatchcase(g, name) for h in self.hosts
                    if g in self.groups_of(h)}
            return hit
        return None


def filter_hosts(pattern: str, hosts: Iterable[Host]) -> list[Host]:
    """The hosts among ``hosts`` that a play's ``hosts:`` pattern names (by host name or group, globs, ``~regex``,
    ``a:&b``, ``a:!b``), in their given order."""
    hosts = list(hosts)

    def names(term: str) -> set[str]:
        if term in ("all", "*"):
            return {h.name for h in hosts}
        if term.startswith("~"):
            rx = re.compile(term[1:])
            return {h.name for h in hosts if rx.search(h.name) or any(rx.search(g) for g in h.groups)}
        return {h.name for h in hosts if fnmatch.fnmatchcase(h.name, term) or
                any(fnmatch.fnmatchcase(g, term) for g in h.groups)}

    chosen: set[str] = set()
    narrow = []
    for term in _terms(pattern):
        if term[0] in "&!":
            narrow.append((term[0], names(term[1:])))
        else:
            chosen |= names(term)
    for op, ns in narrow:
        chosen = {n for n in chosen if (n in ns) == (op == "&")}
    return [h for h in hosts if h.name in chosen]


def _terms(pattern: str) -> list[str]:
    """A pattern's terms: split on commas, and on colons except inside ``user@address:port`` and ``[v6]``."""
    out = []
    for part in (p.strip() for p in pattern.split(",")):
        if not part:
            continue
        if re.fullmatch(r"[^:]*:\d+", part) or part.startswith("[") or "@" in part:
            out.append(part)
            continue
        out += [t for t in part.split(":") if t]
    return out


def _looks_ini(path: Path) -> bool:
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False
    first = next((ln.strip() for ln in head.splitlines() if ln.strip() and ln.strip()[0] not in "#;"), "")
    return first.startswith("[") and first.endswith("]") or (path.suffix == ".ini")


def _ini_value(v: str) -> Any:
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v


def _expand_range(name: str, path: str, line: int) -> list[str]:
    """``web[01:03]`` → web01, web02, web03 (Ansible's host ranges, numeric or a single letter)."""
    m = re.search(r"\[([0-9a-z]+):([0-9a-z]+)(?::(\d+))?\]", name)
    if not m:
        return [name]
    a, b, step = m.group(1), m.group(2), int(m.group(3) or 1)
    if a.isdigit() and b.isdigit():
        width = len(a) if a.startswith("0") else 0
        vals = [str(i).zfill(width) for i in range(int(a), int(b) + 1, step)]
    elif len(a) == len(b) == 1:
        vals = [chr(c) for c in range(ord(a), ord(b) + 1, step)]
    else:
        raise InventoryError(f"cannot read the host range in {name!r}", path, line)
    return [n for v in vals for n in _expand_range(name[:m.start()] + v + name[m.end():], path, line)]


def _proxy_jump(args: str) -> str | None:
    """The jump host in ``ansible_ssh_common_args`` (``-J host`` or ``-o ProxyJump=host`` or the
    ``ProxyCommand="ssh -W %h:%p host"`` form); other options are for OpenSSH, which gpuprov does not run."""
    try:
        words = shlex.split(args)
    except ValueError:
        return None
    for i, w in enumerate(words):
        if w == "-J" and i + 1 < len(words):
            return words[i + 1]
        opt = w[2:] if w.startswith("-o") and len(w) > 2 else words[i + 1] if w == "-o" and i + 1 < len(words) \
            else None
        if opt:
            k, _, v = opt.partition("=")
            if k.strip().lower() == "proxyjump":
                return v.strip()
            if k.strip().lower() == "proxycommand":
                m = re.search(r"-W\s+\S+\s+(?:-q\s+)?(\S+)", v)
                if m:
                    return m.group(1)
    return None


ADHOC_RE = re.compile(r"^(?:(?P<user>[A-Za-z0-9_.-]+)@)?(?P<addr>\[[0-9A-Fa-f:]+\]|[A-Za-z0-9_.-]+)"
                      r"(?::(?P<port>\d+))?$")


def _looks_adhoc(s: str) -> bool:
    return "@" in s or ":" in s or s == "localhost" or bool(re.match(r"^[\d.]+$", s)) or "." in s


def parse_adhoc(spec: str, defaults: Mapping[str, Var] | None = None) -> Host:
    m = ADHOC_RE.match(spec)
    if not m:
        raise UsageError(f"cannot read host {spec!r}: expected NAME, GROUP or user@address:port")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"host {spec!r}: port {port} is out of range")
    return Host(
        name=spec,
        address=m["addr"].strip("[]"),
        port=port,
        user=m["user"],
        groups=("all",),
        vars=MappingProxyType(dict(defaults or {})),
        source="ad-hoc",
    )


def _is_type(v: Any, typ: type) -> bool:
    return isinstance(v, typ) and not (typ is int and isinstance(v, bool))


def _expand(p: str | None) -> str | None:
    return os.path.expanduser(p) if p else p


def _plain(v: Any) -> Any:
    """Strip the line-tracking dict subclass so values are ordinary data."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def parse_extra_vars(items: Iterable[str]) -> dict[str, Any]:
    """``-e`` values as Ansible takes them: ``key=value`` (values read as YAML: ``4096`` → int, ``{A: 1}`` → a
    mapping), ``@vars.yml`` (a YAML or JSON file), or a JSON/YAML mapping ``{"key": 1}``."""
    out: dict[str, Any] = {}
    for item in items:
        s = item.strip()
        if s.startswith("@"):
            f = Path(os.path.expanduser(s[1:]))
            if not f.is_file():
                raise UsageError(f"-e {item!r}: no such vars file {f}")
            data = load_yaml(f)
            if data is None:
                continue
            if not isinstance(data, dict):
                raise UsageError(f"-e {item!r}: {f} must hold a mapping of vars")
            out.update(_check_names(_plain(data), item))
            continue
        if s.startswith("{"):
            try:
                data = json.loads(s)
            except ValueError:
                try:
                    data = yaml.safe_load(s)
                except yaml.YAMLError as e:
                    raise UsageError(f"-e {item!r}: cannot read it as JSON or YAML: {e}") from None
            if not isinstance(data, dict):
                raise UsageError(f"-e {item!r}: expected a mapping")
            out.update(_check_names(data, item))
            continue
        if "=" not in item:
            raise UsageError(f"-e {item!r}: expected key=value, @file.yml or a JSON mapping")
        for word in shlex.split(item) if " " in item and "=" in item.split(" ", 1)[-1] else [item]:
            k, _, v = word.partition("=")
            k = k.strip()
            if not VAR_RE.match(k):
                raise UsageError(f"-e {item!r}: {k!r} is not a valid var name")
            out[k] = _cli_value(v)
    return out


def _cli_value(v: str) -> Any:
    """A ``-e key=value`` value. Ansible takes them all as text; gpuprov types those that read back exactly as
    YAML (``4096``, ``true``, ``[a, b]``, ``{a: 1}``) since its planner's vars are numbers, and keeps the rest
    as written (``3.20`` stays the text 3.20, not the number 3.2; ``0755`` stays text)."""
    if not v.strip():
        return ""
    try:
        val = yaml.safe_load(v)
    except yaml.YAMLError:
        return v
    if isinstance(val, bool):
        return val if v.strip().lower() in ("true", "false") else v
    if isinstance(val, (int, float)):
        return val if str(val) == v.strip() else v
    if isinstance(val, (list, dict, str)) or val is None and v.strip() in ("null", "~"):
        return val  # a quoted text loses its quotes, as YAML reads it
    return v


def _check_names(data: dict[str, Any], item: str) -> dict[str, Any]:
    for k in data:
        if not isinstance(k, str) or not VAR_RE.match(k):
            raise UsageError(f"-e {item!r}: {k!r} is not a valid var name")
    return data
