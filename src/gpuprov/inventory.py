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
connection keys (``address``, ``port``, ``user``, ``identity_file``, ``proxy_jump``) and any vars.

Precedence, lowest first: built-in defaults < seed environment (the RunPod image's MODEL, ...) < ``all``
< groups (parents before children, then by name) < host < command line (``-e``/flags).
"""

from __future__ import annotations

import os
import re
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
GROUP_KEYS = {"hosts", "vars", "children"}
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


class _Loader(yaml.SafeLoader):
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
    hosts: set[str] = field(default_factory=set)


@dataclass
class _HostDecl:
    name: str
    data: dict[str, Var]
    source: str


class Inventory:
    """All groups and hosts found in one inventory file or folder."""

    def __init__(self, files: Iterable[Path] = (), defaults: Mapping[str, Var] | None = None):
        self.files = [Path(p) for p in files]
        self.defaults: dict[str, Var] = dict(defaults or {})
        self.groups: dict[str, _Group] = {"all": _Group("all")}
        self.hosts: dict[str, _HostDecl] = {}
        for f in self.files:
            self._load_file(f)

    # ----------------------------------------------------------- loading
    @classmethod
    def from_path(cls, path: str | Path, defaults: Mapping[str, Var] | None = None) -> Inventory:
        p = Path(path)
        if p.is_dir():
            files = sorted(x for x in p.iterdir() if x.suffix in (".yml", ".yaml") and x.is_file())
        elif p.is_file():
            files = [p]
        else:
            raise InventoryError("no such inventory file or folder", str(p))
        return cls(files, defaults)

    def _load_file(self, path: Path) -> None:
        data = load_yaml(path)
        if data is None:
            return
        if not isinstance(data, dict):
            raise InventoryError("the top level must be a mapping of group names", str(path), 1)
        for gname, gdata in data.items():
            self._load_group(path, gname, gdata, parent=None if gname == "all" else "all", line=_line(data, gname))

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
                group.hosts.add(hname)
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
            out[k] = Var(_plain(v), f"{path}:{_line(data, k)} ({what})")
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
            self.hosts[name] = _HostDecl(name, new, f"{path}:{line}")
        else:  # declared in two groups: merge, later files win
            decl.data.update(new)

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

    def host(self, name: str) -> Host:
        decl = self.hosts[name]
        merged: dict[str, Var] = dict(self.defaults)
        groups = self.groups_of(name)
        for g in groups:
            merged.update(self.groups[g].vars)
        merged.update(decl.data)
        conn = {k: merged.pop(k).value for k in list(CONNECTION_KEYS) if k in merged}
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

    def select(self, pattern: str, ssh_config_hosts: Iterable[str] = ()) -> list[Host]:
        """Resolve ``--host``: inventory hosts, groups, comma lists, ``user@address:port``, ssh aliases, and
        ``local`` (this machine, without SSH) unless the inventory names a host ``local`` itself."""
        if not pattern or not pattern.strip():
            raise UsageError("--host is empty")
        out: dict[str, Host] = {}
        aliases = set(ssh_config_hosts)
        for part in (p.strip() for p in pattern.split(",")):
            if not part:
                continue
            if part in self.hosts:
                out[part] = self.host(part)
            elif part in self.groups:
                members = sorted(h for h in self.hosts if part in self.groups_of(h))
                if not members:
                    raise UsageError(f"group {part!r} has no hosts")
                for h in members:
                    out[h] = self.host(h)
            elif part == "local":  # the machine gpuprov runs on (inside a pod's terminal, say): no SSH
                out[part] = Host(name="local", address="local", groups=("all",),
                                 vars=MappingProxyType(dict(self.defaults)), source="built-in")
            elif part in aliases or _looks_adhoc(part):
                adhoc = parse_adhoc(part, self.defaults)
                out[adhoc.name] = adhoc
            else:
                known = sorted(self.hosts) + sorted(g for g in self.groups if g != "all")
                hint = f" (known: {', '.join(known[:20])})" if known else " (the inventory is empty)"
                raise UsageError(f"unknown host or group {part!r}{hint}")
        if not out:
            raise UsageError(f"--host {pattern!r} selects no host")
        return list(out.values())


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
    """``-e key=value`` → {key: value}; values are read as YAML (``4096`` → int, ``true`` → bool, ``{A: 1}`` → dict)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"-e {item!r}: expected key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        if not VAR_RE.match(k):
            raise UsageError(f"-e {item!r}: {k!r} is not a valid var name")
        try:
            val = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            val = v
        out[k] = val  # YAML scalars, and JSON/YAML flow mappings and lists ({a: 1}, [x, y]) as structures
    return out
