"""apt, venv, pip: decided from what is installed (the dpkg database, the venv's dist-info), with Ansible's
arguments (``name``, ``state``, ``update_cache``, ``virtualenv``, ``requirements``, ``extra_args``...) and
gpuprov's own beside them (``uv``, ``index_url``, ``torch_backend``, ``env``)."""

from __future__ import annotations

import re
import shlex
from typing import Any

from ..errors import UsageError
from .base import Change, Command, NoOp, Op, OpContext, State

#: ``name==1.2.3``: the pins gpuprov's own playbook uses, read without packaging
PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\d+(?:\.\d+)*)$")
DEB_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(?:=[A-Za-z0-9.+:~-]+)?$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _list(v: Any, what: str, task: str) -> list[str]:
    if isinstance(v, str):
        v = [x.strip() for x in v.split(",")] if "," in v else [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise UsageError(f"task {task!r}: {what} must be a list of strings")
    return v


class Apt(Op):
    name = "apt"
    args = {"name": False, "state": False, "update_cache": False, "cache_valid_time": False,
            "install_recommends": False, "purge": False}
    aliases = {"packages": "name", "pkg": "name", "package": "name", "update-cache": "update_cache"}

    def validate(self) -> None:
        self.pkgs = _list(self.a["name"], "name", self.task) if self.a.get("name") is not None else []
        if not self.pkgs and not (self.a.get("update_cache") or self.a.get("cache_valid_time")):
            raise UsageError(f"task {self.task!r}: apt needs name or update_cache")
        for p in self.pkgs:
            if not DEB_RE.match(p):
                raise UsageError(f"task {self.task!r}: {p!r} is not a Debian package name (name or name=version)")
        if self.a.get("state", "present") not in ("present", "absent", "latest"):
            raise UsageError(f"task {self.task!r}: apt state must be present, absent or latest")

    def _names(self) -> list[str]:
        return [p.split("=")[0] for p in self.pkgs]

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "dpkg", "packages": self._names(), "candidates": self.a.get("state") == "latest"}]

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        st = state[0]
        have, versions = set(st.get("installed", [])), st.get("versions", {})
        want = self.a.get("state", "present")
        env = ["env", "DEBIAN_FRONTEND=noninteractive"]
        update = bool(self.a.get("update_cache"))
        if self.a.get("cache_valid_time") and st.get("cache_mtime") is not None:
            update = st["cache_mtime"] + float(self.a["cache_valid_time"]) < st.get("now", 0)
        elif self.a.get("cache_valid_time"):
            update = True
        if want == "absent":
            todo = [p for p in self._names() if p in have]
            verb = ["apt-get", "purge" if self.a.get("purge") else "remove", "-y", "-qq"]
        elif want == "latest":
            cand = st.get("candidates", {})
            todo = [p for p in self.pkgs if p not in have or (cand.get(p) and cand[p] != versions.get(p))]
            verb = ["apt-get", "install", "-y", "-qq"]
        else:
            todo = [p for p in self.pkgs if p.split("=")[0] not in have or ("=" in p and
                                                                           versions.get(p.split("=")[0]) !=
                                                                           p.split("=", 1)[1])]
            verb = ["apt-get", "install", "-y", "-qq"]
        if want != "absent" and self.a.get("install_recommends") is not None:
            verb.append("--install-recommends" if self.a["install_recommends"] else "--no-install-recommends")
        cmds = []
        if update:
            cmds.append(Command(ctx.argv(env + ["apt-get", "update", "-qq"]), timeout=600, label="apt-get update"))
        if todo:
            cmds.append(Command(ctx.argv(env + verb + todo), timeout=1200, label=f"apt-get {verb[1]}"))
        if not cmds:
            return NoOp("installed" if want != "absent" else "not installed")
        if not todo:
            return Change("update the apt cache", tuple(cmds), changes=not self.pkgs)
        return Change(f"{'remove' if want == 'absent' else 'install'} {', '.join(todo)}", tuple(cmds))


class Venv(Op):
    """A virtual environment at ``path``, made with ``uv venv`` when ``uv`` is given, else ``python -m venv``.

    ``pip: false`` makes it without pip (``--without-pip``): ensurepip's install of pip and setuptools, bytecode
    compiled, is most of the time ``python -m venv`` takes (6 of 6.1 s on a 2-core VM); the pip op then runs pip
    from its wheel. ``pip: true`` with ``uv`` seeds pip (``--seed``); uv's own default is no pip.

    A marker file is written last: a venv whose creation was interrupted (Ctrl-C, lost connection) has no
    marker and is made again from scratch instead of being trusted half-built.
    """

    name = "venv"
    args = {"path": True, "python": False, "uv": False, "env": False, "pip": False}
    MARKER = ".gpuprov-complete"

    def validate(self) -> None:
        if self.a.get("pip") is not None and not isinstance(self.a["pip"], bool):
            raise UsageError(f"task {self.task!r}: venv pip must be true or false, not {self.a['pip']!r}")

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "stat", "path": f"{self.a['path']}/{self.MARKER}"}]

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        path = str(self.a["path"])
        if state[0].get("exists"):
            return NoOp(f"venv {path} exists")
        if self.a.get("uv"):
            env = ["env", *[f"{k}={v}" for k, v in (self.a.get("env") or {}).items()]]
            argv = env + [str(self.a["uv"]), "venv", "--quiet", *(["--seed"] if self.a.get("pip") else []),
                          "--python", str(self.a.get("python") or "3"), path]
        else:
            argv = [str(self.a.get("python") or "python3"), "-m", "venv",
                    *(["--without-pip"] if self.a.get("pip") is False else []), path]
        return Change(f"create venv {path}", (
            Command(ctx.argv(["rm", "-rf", "--", path]), label="remove a half-made venv"),
            Command(ctx.argv(["mkdir", "-p", "--", path.rsplit("/", 1)[0] or "/"])),
            Command(ctx.argv(argv), timeout=600, label="venv"),
            Command(ctx.argv(["touch", "--", f"{path}/{self.MARKER}"]), label="mark complete"),
        ))


class _Pin:
    """The specifier of ``name==1.2.3``. A release equal to the pin's, with or without a local label (0.32.0+cpu
    for 0.32.0), is judged here; anything else by packaging. Importing packaging takes 0.1-0.15 s on a small VM,
    and every host's thread of a run waited for it on the import lock: a re-provision, where every pin is
    satisfied, no longer imports it."""

    def __init__(self, version: str):
        self.version = version

    def contains(self, have: str, prereleases: bool = True) -> bool:
        if have.split("+", 1)[0] == self.version:
            return True
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(f"=={self.version}").contains(have, prereleases=prereleases)


def _req(line: str) -> tuple[str, Any] | None:
    """``name[extras] specifier`` → (normalised name, specifier with ``contains``); None for anything pip alone
    can judge (options, URLs, paths, markers)."""
    line = line.split(" #")[0].strip()
    pin = PIN_RE.match(line)
    if pin:
        return norm(pin.group(1)), _Pin(pin.group(2))
    from packaging.requirements import InvalidRequirement, Requirement

    if not line or line.startswith(("-", ".", "/")) or "://" in line or "@" in line:
        return None
    try:
        r = Requirement(line)
    except InvalidRequirement:
        return None
    if r.marker is not None:
        return None
    return norm(r.name), r.specifier


#: runs pip between two freezes and says whether anything changed (Ansible's pip judges changed this way); the
#: freeze is the venv's own distributions as importlib.metadata lists them, so a venv without pip has one too
FREEZE = "import importlib.metadata as m; print(sorted((d.metadata['Name'], d.version) for d in m.distributions()))"
FREEZE_WRAP = (f'py="$1"; shift; b=$("$py" -c "{FREEZE}" 2>/dev/null); "$@"; rc=$?; '
               f'a=$("$py" -c "{FREEZE}" 2>/dev/null); [ "$a" = "$b" ] || echo GPUPROV-PIP-CHANGED; exit $rc')
#: pip for a venv that has none (``venv: {pip: false}``): run from the wheel ensurepip would install, found the way
#: ensurepip finds it (the distribution's WHEEL_PKG_DIR, such as Debian's /usr/share/python-wheels, else
#: ensurepip's own _bundled folder), with the wheel on the path as ensurepip itself runs it; with no wheel on the
#: host, ensurepip puts pip into the venv first
PIP_WHEEL = ('import ensurepip, glob, os, sysconfig\n'
             'dirs = [sysconfig.get_config_var("WHEEL_PKG_DIR"), os.path.join(os.path.dirname(ensurepip.__file__), '
             '"_bundled")]\n'
             'print(next(w[-1] for w in (sorted(glob.glob(os.path.join(d, "pip-*.whl"))) for d in dirs if d) if w))\n')
PIP_FROM_WHEEL = ('py="$1"; find="$2"; shift 2; if w=$("$py" -c "$find" 2>/dev/null); then exec "$py" "$w/pip" "$@"; '
                  'fi; "$py" -m ensurepip --default-pip > /dev/null && exec "$py" -m pip "$@"')


class Pip(Op):
    """Packages into a virtualenv (made first when missing, as Ansible's pip does), decided from its dist-info;
    what only pip can judge (``state: latest``, requirement lines with options or URLs) runs pip between two
    freezes and is changed when they differ."""

    name = "pip"
    args = {"virtualenv": True, "name": False, "version": False, "state": False, "requirements": False,
            "virtualenv_command": False, "virtualenv_python": False, "extra_args": False, "chdir": False,
            "uv": False, "index_url": False, "extra_index_urls": False, "torch_backend": False, "env": False}
    aliases = {"venv": "virtualenv", "packages": "name"}

    def validate(self) -> None:
        if (self.a.get("name") is None) == (self.a.get("requirements") is None):
            raise UsageError(f"task {self.task!r}: pip needs one of name and requirements")
        self.state = self.a.get("state", "present")
        if self.state not in ("present", "absent", "latest", "forcereinstall"):
            raise UsageError(f"task {self.task!r}: pip state must be present, absent, latest or forcereinstall")
        self.names = _list(self.a["name"], "name", self.task) if self.a.get("name") is not None else []
        if self.a.get("version") is not None:
            if len(self.names) != 1:
                raise UsageError(f"task {self.task!r}: version goes with exactly one name")
            self.names = [f"{self.names[0]}=={self.a['version']}"]
        self.reqs = []
        for r in self.names:
            parsed = _req(r)
            if parsed is None:
                raise UsageError(f"task {self.task!r}: {r!r} is not a requirement gpuprov can read (name, "
                                 f"name==1.2, name>=1)")
            self.reqs.append((parsed[0], parsed[1], r))
        if not str(self.a["virtualenv"]).startswith("/"):
            raise UsageError(f"task {self.task!r}: virtualenv must be an absolute path")

    def _reqfile(self) -> str:
        p = str(self.a["requirements"])
        if not p.startswith("/") and self.a.get("chdir"):
            p = f"{str(self.a['chdir']).rstrip('/')}/{p}"
        return p

    def queries(self, ctx: OpContext) -> list[State]:
        venv = str(self.a["virtualenv"])
        q: list[State] = [{"kind": "pip", "venv": venv}, {"kind": "stat", "path": f"{venv}/bin/activate"}]
        if self.a.get("requirements"):
            q.append({"kind": "stat", "path": self._reqfile(), "content": True, "hash": True})
        return q

    @staticmethod
    def _missing(have: dict[str, str], reqs: list[tuple[str, Any, str]]) -> list[str]:
        """The requirements the venv does not satisfy (a local label such as +cu128 satisfies a plain ==)."""
        return [text for name, spec, text in reqs
                if have.get(name) is None or not spec.contains(have[name], prereleases=True)]

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        venv = str(self.a["virtualenv"])
        have = state[0].get("packages", {}) if state[1].get("exists") else {}
        cmds = []
        if not state[1].get("exists"):
            cmds.append(self._make_venv(ctx, venv))
        has_pip = bool(cmds) or "pip" in have  # a venv this task makes has pip (virtualenv and venv seed it)
        judge_by_freeze = self.state in ("latest", "forcereinstall")
        reqs = list(self.reqs)
        if self.a.get("requirements"):
            rs = state[2]
            if not rs.get("exists"):
                raise UsageError(f"task {self.task!r}: requirements file {self._reqfile()} does not exist on the host")
            for line in rs.get("content", "").splitlines():
                if not line.split("#")[0].strip():
                    continue
                parsed = _req(line)
                if parsed is None:
                    judge_by_freeze = True
                else:
                    reqs.append((parsed[0], parsed[1], line.strip()))
        if self.state == "absent":
            gone = [name for name, _, _ in reqs if name in have]
            if not gone:
                return NoOp("not installed")
            argv = [*self._pip(venv, has_pip), "uninstall", "-y", *gone]
            return Change(f"uninstall {', '.join(gone)}", (*cmds, Command(ctx.argv(argv), timeout=600,
                                                                          label="pip uninstall")))
        missing = self._missing(have, reqs)
        self.by_freeze, self.made_venv = judge_by_freeze, bool(cmds)
        if not judge_by_freeze and not missing and not cmds:
            return NoOp("installed")
        install = self._install_argv(venv, has_pip)
        if self.a.get("requirements"):
            install += ["-r", self._reqfile()]
        else:
            install += [r for _, _, r in self.reqs]
        env = ["env", *[f"{k}={v}" for k, v in (self.a.get("env") or {}).items()]]
        argv = env + install
        if judge_by_freeze:
            argv = ["sh", "-c", FREEZE_WRAP, "gpuprov-pip", f"{venv}/bin/python3", *argv]
        what = ", ".join(f"{r} (have {have.get(n, 'none')})" for n, _, r in reqs if r in missing) or \
            f"pip {self.state}"
        return Change(f"install {what}", (*cmds, Command(ctx.argv(argv), timeout=3600, label="pip install")))

    def _make_venv(self, ctx: OpContext, venv: str) -> Command:
        tool = self.a.get("virtualenv_command") or "virtualenv"
        argv = shlex.split(str(tool))
        if self.a.get("virtualenv_python") and not (len(argv) >= 3 and argv[1:3] == ["-m", "venv"]):
            argv += ["-p", str(self.a["virtualenv_python"])]
        return Command(ctx.argv([*argv, venv]), timeout=600, label="create the virtualenv")

    @staticmethod
    def _pip(venv: str, has_pip: bool) -> list[str]:
        """The venv's pip, or pip from its wheel for a venv made without it."""
        if has_pip:
            return [f"{venv}/bin/python3", "-m", "pip"]
        return ["sh", "-c", PIP_FROM_WHEEL, "gpuprov-pip", f"{venv}/bin/python3", PIP_WHEEL]

    def _install_argv(self, venv: str, has_pip: bool) -> list[str]:
        if self.a.get("uv"):
            argv = [str(self.a["uv"]), "pip", "install", "--quiet", "--python", f"{venv}/bin/python"]
        else:
            argv = [*self._pip(venv, has_pip), "install", "--quiet", "--disable-pip-version-check"]
        if self.state == "latest":
            argv.append("-U")
        elif self.state == "forcereinstall":
            argv += ["--force-reinstall"]
        if self.a.get("index_url"):
            url = str(self.a["index_url"])
            argv += ["--index-url", url]
            if url.startswith("http://") and not self.a.get("uv"):
                from urllib.parse import urlparse

                argv += ["--trusted-host", urlparse(url).hostname or ""]
        for u in self.a.get("extra_index_urls") or []:
            argv += ["--extra-index-url", str(u)]
        if self.a.get("torch_backend") and self.a.get("uv"):
            argv += ["--torch-backend", str(self.a["torch_backend"])]
        if self.a.get("extra_args"):
            argv += shlex.split(str(self.a["extra_args"]))
        return argv

    def result(self, ctx: OpContext, outputs: list[Any]) -> State:
        out = super().result(ctx, outputs)
        if getattr(self, "by_freeze", False):
            out["changed"] = self.made_venv or any("GPUPROV-PIP-CHANGED" in (o.stdout or "") for o in outputs)
        out["stdout"] = out.get("stdout", "").replace("GPUPROV-PIP-CHANGED", "").strip()
        return out
