"""apt, venv, pip: decide from what is installed (dpkg database, the venv's dist-info), install exact pins."""

from __future__ import annotations

import re
from typing import Any

from ..errors import UsageError
from .base import Change, Command, NoOp, Op, OpContext, State

REQ_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([A-Za-z0-9.+!_-]+)$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _list(v: Any, what: str, task: str) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise UsageError(f"task {task!r}: {what} must be a list of strings")
    return v


class Apt(Op):
    name = "apt"
    args = {"packages": True, "update_cache": False}

    def validate(self) -> None:
        self.pkgs = _list(self.a["packages"], "packages", self.task)
        for p in self.pkgs:
            if not re.match(r"^[a-z0-9][a-z0-9+.-]+$", p):
                raise UsageError(f"task {self.task!r}: {p!r} is not a Debian package name")

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "dpkg", "packages": self.pkgs}]

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        missing = [p for p in self.pkgs if p not in state[0].get("installed", [])]
        if not missing:
            return NoOp("installed")
        env = ["env", "DEBIAN_FRONTEND=noninteractive"]
        cmds = []
        if self.a.get("update_cache", True):
            cmds.append(Command(ctx.argv(env + ["apt-get", "update", "-qq"]), timeout=600, label="apt-get update"))
        cmds.append(Command(ctx.argv(env + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]),
                            timeout=1200, label="apt-get install"))
        return Change(f"install {', '.join(missing)}", tuple(cmds))


class Venv(Op):
    """A virtual environment at ``path``, made with ``uv venv`` when ``uv`` is given, else ``python -m venv``.

    A marker file is written last: a venv whose creation was interrupted (Ctrl-C, lost connection) has no
    marker and is made again from scratch instead of being trusted half-built.
    """

    name = "venv"
    args = {"path": True, "python": False, "uv": False, "env": False}
    MARKER = ".gpuprov-complete"

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "stat", "path": f"{self.a['path']}/{self.MARKER}"}]

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        path = str(self.a["path"])
        if state[0].get("exists"):
            return NoOp(f"venv {path} exists")
        if self.a.get("uv"):
            env = ["env", *[f"{k}={v}" for k, v in (self.a.get("env") or {}).items()]]
            argv = env + [str(self.a["uv"]), "venv", "--quiet", "--python", str(self.a.get("python") or "3"), path]
        else:
            argv = [str(self.a.get("python") or "python3"), "-m", "venv", path]
        return Change(f"create venv {path}", (
            Command(ctx.argv(["rm", "-rf", "--", path]), label="remove a half-made venv"),
            Command(ctx.argv(["mkdir", "-p", "--", path.rsplit("/", 1)[0] or "/"])),
            Command(ctx.argv(argv), timeout=600, label="venv"),
            Command(ctx.argv(["touch", "--", f"{path}/{self.MARKER}"]), label="mark complete"),
        ))


class Pip(Op):
    """Exact pins (``name==version``) into a venv, through uv when given; decides from the venv's dist-info."""

    name = "pip"
    args = {"venv": True, "packages": True, "uv": False, "index_url": False, "extra_index_urls": False,
            "torch_backend": False, "env": False}

    def validate(self) -> None:
        self.reqs = []
        for r in _list(self.a["packages"], "packages", self.task):
            m = REQ_RE.match(r)
            if not m:
                raise UsageError(f"task {self.task!r}: {r!r} is not an exact pin (name==version)")
            self.reqs.append((norm(m.group(1)), m.group(2), r))

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "pip", "venv": str(self.a["venv"])}]

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        have = state[0].get("packages", {})
        missing = [r for n, v, r in self.reqs if have.get(n) != v and have.get(n, "").split("+")[0] != v]
        if not missing:
            return NoOp("pinned versions installed")
        venv = str(self.a["venv"])
        env = ["env", *[f"{k}={v}" for k, v in (self.a.get("env") or {}).items()]]
        if self.a.get("uv"):
            argv = env + [str(self.a["uv"]), "pip", "install", "--quiet", "--python", f"{venv}/bin/python"]
        else:
            argv = env + [f"{venv}/bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if self.a.get("index_url"):
            argv += ["--index-url", str(self.a["index_url"])]
            url = str(self.a["index_url"])
            if url.startswith("http://") and not self.a.get("uv"):
                from urllib.parse import urlparse

                argv += ["--trusted-host", urlparse(url).hostname or ""]
        for u in self.a.get("extra_index_urls") or []:
            argv += ["--extra-index-url", str(u)]
        if self.a.get("torch_backend") and self.a.get("uv"):
            argv += ["--torch-backend", str(self.a["torch_backend"])]
        argv += [r for _, _, r in self.reqs]
        summary = ", ".join(f"{r} (have {have.get(norm(r.split('==')[0]), 'none')})" for r in missing)
        return Change(f"install {summary}", (Command(ctx.argv(argv), timeout=3600, label="pip install"),))
