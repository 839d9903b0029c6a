"""file, copy, template, stat: decided from one stat per path (hash, mode, owner), diffed as before/after text,
written atomically; Ansible's arguments, defaults and results (an existing file keeps its mode unless ``mode``
says, a new one gets the umask's 0644, ``copy`` refuses a destination folder that does not exist)."""

from __future__ import annotations

import hashlib
import posixpath
import re
import time
from typing import Any

from ..errors import UsageError
from .base import Change, Command, Diff, NoOp, Op, OpContext, State, mode_str

#: a new file's mode when ``mode`` is not given (0666 under the usual 022 umask, as Ansible's atomic_move leaves it)
NEW_FILE_MODE = "0644"
_SYMBOLIC = re.compile(r"^[ugoa]*[-+=][rwxXst]*$")


def resolve_mode(mode: Any, current: str | None, is_dir: bool, task: str) -> str | None:
    """``mode`` as four octal digits: octal as given, or symbolic (``u=rw,g=r,o=r``, ``u+x``) applied to
    ``current`` (the path's mode now, None when it does not exist yet)."""
    if mode is None:
        return None
    if isinstance(mode, str) and mode and not mode.isdigit():
        if not all(_SYMBOLIC.match(p) for p in mode.split(",")):
            raise UsageError(f"task {task!r}: mode must be octal like '0644' or symbolic like 'u=rw,g=r', "
                             f"got {mode!r}")
        return _apply_symbolic(mode, int(current or ("0755" if is_dir else NEW_FILE_MODE), 8), is_dir)
    return mode_str(mode, task)


def _apply_symbolic(mode: str, cur: int, is_dir: bool) -> str:
    for part in mode.split(","):
        m = re.match(r"^([ugoa]*)([-+=])([rwxXst]*)$", part)
        assert m
        who, op, perms = m.group(1) or "a", m.group(2), m.group(3)
        bits = 0
        for w in ("u", "g", "o"):
            if w not in who and "a" not in who:
                continue
            shift = {"u": 6, "g": 3, "o": 0}[w]
            for p in perms:
                if p == "r":
                    bits |= 4 << shift
                elif p == "w":
                    bits |= 2 << shift
                elif p == "x" or (p == "X" and (is_dir or cur & 0o111)):
                    bits |= 1 << shift
                elif p == "s" and w in "ug":
                    bits |= 0o4000 if w == "u" else 0o2000
                elif p == "t" and w == "o":
                    bits |= 0o1000
            mask = (7 << shift) | ({"u": 0o4000, "g": 0o2000, "o": 0o1000}[w])
            if op == "=":
                cur &= ~mask
        if op == "-":
            cur &= ~bits
        else:
            cur |= bits
    return format(cur, "04o")


def attr_cmds(ctx: OpContext, path: str, mode: str | None, owner: Any, group: Any, st: State) -> list[Command]:
    """chmod / chown / chgrp where the path's mode, owner or group differ from what is asked."""
    cmds = []
    if owner is not None and str(owner) not in (st.get("owner"), str(st.get("uid"))):
        who = f"{owner}:{group}" if group is not None else str(owner)
        cmds.append(Command(ctx.argv(["chown", "-h", who, "--", path]), label=f"chown {who}"))
    elif group is not None and str(group) not in (st.get("group"), str(st.get("gid"))):
        cmds.append(Command(ctx.argv(["chgrp", "-h", str(group), "--", path]), label=f"chgrp {group}"))
    if mode and st.get("mode") != mode and st.get("type") != "link":
        cmds.append(Command(ctx.argv(["chmod", mode, "--", path]), label=f"chmod {mode}"))
    return cmds


def write_cmds(ctx: OpContext, path: str, data: bytes, mode: str | None, owner: Any, group: Any, st: State,
               backup: bool = False) -> tuple[list[Command], str | None]:
    """The commands that replace ``path`` with ``data`` atomically (copy, template, lineinfile, blockinfile): a
    backup copy first when asked and the file exists, the mode asked (else the old file's, else 0644), then owner
    and group; and the backup's name (Ansible's ``path.NNNNN.YYYY-MM-DD@HH:MM:SS~``)."""
    from ..connection import put_argv

    cmds, backup_file = [], None
    if backup and st.get("exists"):
        backup_file = f"{path}.{int(time.time() * 1000) % 100000}.{time.strftime('%Y-%m-%d@%H:%M:%S~')}"
        cmds.append(Command(ctx.argv(["cp", "-p", "--", path, backup_file]), label="backup"))
    final = mode or (st.get("mode") if st.get("exists") else NEW_FILE_MODE)
    cmds.append(Command(ctx.argv(put_argv(path, int(str(final), 8))), stdin=data, label=f"write {path}"))
    cmds += attr_cmds(ctx, path, None, owner, group, st if st.get("exists") else {})
    return cmds, backup_file


def _attr_diff(path: str, st: State, mode: str | None, owner: Any, group: Any) -> Diff:
    before = f"mode {st.get('mode')}, owner {st.get('owner')}, group {st.get('group')}\n"
    after = f"mode {mode or st.get('mode')}, owner {owner or st.get('owner')}, group {group or st.get('group')}\n"
    return Diff(path, before, after)


def file_result(path: str, st: State | None) -> State:
    """What Ansible's file-like modules register (path/dest, mode, owner, group, state, size)."""
    if not st or not st.get("exists"):
        return {"path": path, "state": "absent"}
    return {"path": path, "mode": st.get("mode"), "owner": st.get("owner"), "group": st.get("group"),
            "uid": st.get("uid"), "gid": st.get("gid"), "size": st.get("size"),
            "state": {"directory": "directory", "link": "link"}.get(st.get("type", ""), "file")}


class File(Op):
    """Ansible's file: state directory | file | touch | link | hard | absent, mode, owner, group, recurse."""

    name = "file"
    args = {"path": True, "state": False, "mode": False, "owner": False, "group": False, "src": False,
            "recurse": False, "force": False, "follow": False, "modification_time": False, "access_time": False}
    aliases = {"dest": "path", "name": "path"}
    STATES = ("directory", "file", "touch", "link", "hard", "absent")

    def validate(self) -> None:
        state = self.a.get("state")
        if state is not None and state not in self.STATES:
            raise UsageError(f"task {self.task!r}: file state must be one of {', '.join(self.STATES)}")
        if not str(self.a["path"]).startswith("/"):
            raise UsageError(f"task {self.task!r}: file path must be absolute, got {self.a['path']!r}")
        if state in ("link", "hard") and not self.a.get("src"):
            raise UsageError(f"task {self.task!r}: state {state} needs src")
        if self.a.get("recurse") and state != "directory":
            raise UsageError(f"task {self.task!r}: recurse needs state: directory")
        for k in ("modification_time", "access_time"):
            if self.a.get(k) not in (None, "now", "preserve"):
                raise UsageError(f"task {self.task!r}: {k} must be now or preserve (gpuprov sets no given time)")
        resolve_mode(self.a.get("mode"), None, state == "directory", self.task)  # refuse a bad mode early
        self.path = str(self.a["path"]).rstrip("/") or "/"

    def queries(self, ctx: OpContext) -> list[State]:
        q: list[State] = [{"kind": "stat", "path": self.path, "tree": bool(self.a.get("recurse"))}]
        if self.a.get("state") == "hard":
            q.append({"kind": "stat", "path": str(self.a["src"])})
        if self.a.get("state") == "directory":
            parts = self.path.strip("/").split("/")
            q += [{"kind": "stat", "path": "/" + "/".join(parts[:i])} for i in range(1, len(parts))]
        return q

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        st, path = state[0], self.path
        kind = st.get("type") if st.get("exists") else None
        want = self.a.get("state") or ({"directory": "directory", "link": "link"}.get(kind or "", "file"))
        owner, group = self.a.get("owner"), self.a.get("group")
        if want == "absent":
            if not kind:
                return NoOp(f"{path} is absent")
            return Change(f"remove {path}", (Command(ctx.argv(["rm", "-rf", "--", path])),),
                          (Diff(path, f"({kind})\n", None),))
        if want in ("link", "hard"):
            return self._link(ctx, state, want, kind)
        if want == "file":
            if not kind:
                raise UsageError(f"task {self.task!r}: file ({path}) is absent, cannot continue")
            if kind == "directory":
                raise UsageError(f"task {self.task!r}: file ({path}) is directory, cannot continue")
            return self._attrs(ctx, st, kind)
        if want == "touch":
            mode = resolve_mode(self.a.get("mode"), st.get("mode"), kind == "directory", self.task)
            keep = self.a.get("modification_time") == "preserve" and self.a.get("access_time") == "preserve"
            if kind and keep:
                return self._attrs(ctx, st, kind)
            cmds = [Command(ctx.argv(["touch", "--", path]))]
            cmds += attr_cmds(ctx, path, mode, owner, group, st if kind else {"mode": NEW_FILE_MODE})
            return Change(f"touch {path}", tuple(cmds), (Diff(path, None if not kind else f"({kind})\n",
                                                               f"({kind or 'file'}, touched)\n"),))
        # directory
        if kind and kind != "directory":
            if kind == "link" and st.get("target_type") == "directory" and self.a.get("follow", True):
                return self._attrs(ctx, st, "directory")
            raise UsageError(f"task {self.task!r}: {path} already exists as a {kind}")
        if kind:
            return self._attrs(ctx, st, "directory")
        return self._mkdirs(ctx, state)

    def _mkdirs(self, ctx: OpContext, state: list[State]) -> Change:
        """Every missing folder down to ``path``, each with the mode/owner/group asked (as Ansible's file does)."""
        parents = list(zip((q["path"] for q in self.queries(ctx)[1:]), state[1:], strict=True))
        for p, st in parents:
            if st.get("exists") and st.get("type") != "directory" and st.get("target_type") != "directory":
                raise UsageError(f"task {self.task!r}: {p} exists and is not a directory")
        missing = [p for p, st in parents if not st.get("exists")]
        missing.append(self.path)
        mode = resolve_mode(self.a.get("mode"), None, True, self.task)
        cmds = []
        for p in missing:
            cmds.append(Command(ctx.argv(["mkdir", "--", p])))
            cmds += attr_cmds(ctx, p, mode, self.a.get("owner"), self.a.get("group"),
                              {"mode": "0755", "owner": None, "group": None})
        return Change(f"create directory {self.path}", tuple(cmds),
                      (Diff(self.path, None, f"(directory, mode {mode or 'default'})\n"),))

    def _attrs(self, ctx: OpContext, st: State, kind: str) -> NoOp | Change:
        path, owner, group = self.path, self.a.get("owner"), self.a.get("group")
        is_dir = kind == "directory"
        mode = resolve_mode(self.a.get("mode"), st.get("mode"), is_dir, self.task)
        cmds = attr_cmds(ctx, path, mode, owner, group, st)
        if self.a.get("recurse"):
            for e in st.get("tree", []):
                em = resolve_mode(self.a.get("mode"), e.get("mode"), e.get("type") == "directory", self.task)
                cmds += attr_cmds(ctx, e["path"], em, owner, group, e)
        if not cmds:
            return NoOp(f"{kind} {path} is as asked" + (f" (mode {mode})" if mode else ""))
        return Change(f"set {', '.join(c.label.split()[0] for c in cmds[:3])} on {path}", tuple(cmds),
                      (_attr_diff(path, st, mode, owner, group),))

    def _link(self, ctx: OpContext, state: list[State], want: str, kind: str | None) -> NoOp | Change:
        st, path, src = state[0], self.path, str(self.a["src"])
        force = bool(self.a.get("force", False))
        if want == "link":
            if kind == "link" and st.get("target") == src:
                return self._link_attrs(ctx, st)
            if kind in ("file", "other") and not force:
                raise UsageError(f"task {self.task!r}: refusing to convert from {kind} to symlink for {path}")
            if kind == "directory":
                raise UsageError(f"task {self.task!r}: {path} is a directory; refusing to replace it with a link")
            return Change(f"link {path} → {src}", (Command(ctx.argv(["ln", "-sfn", "--", src, path])),),
                          (Diff(path, f"(link to {st.get('target')})\n" if kind == "link" else None,
                                f"(link to {src})\n"),))
        srcst = state[1]
        if not srcst.get("exists"):
            raise UsageError(f"task {self.task!r}: src file does not exist, use \"force=yes\" if you really want to "
                             f"create the link: {src}")
        if kind and st.get("ino") == srcst.get("ino") and st.get("dev") == srcst.get("dev"):
            return self._attrs(ctx, st, "file")
        if kind and kind != "file" and not force:
            raise UsageError(f"task {self.task!r}: refusing to convert from {kind} to hard link for {path}")
        return Change(f"hard link {path} → {src}", (Command(ctx.argv(["ln", "-f", "--", src, path])),),
                      (Diff(path, None, f"(hard link to {src})\n"),))

    def _link_attrs(self, ctx: OpContext, st: State) -> NoOp | Change:
        cmds = attr_cmds(ctx, self.path, None, self.a.get("owner"), self.a.get("group"), st)
        if not cmds:
            return NoOp(f"links to {st.get('target')}")
        return Change(f"owner of link {self.path}", tuple(cmds))

    def noop_result(self, state: list[State]) -> State:
        return file_result(self.path, state[0])

    def result(self, ctx: OpContext, outputs: list[Any]) -> State:
        return {"path": self.path, "state": self.a.get("state") or "file"}


class Copy(Op):
    """Ensure a file holds exactly ``content`` (or the local file ``src``); secret: true hides it in diffs."""

    name = "copy"
    args = {"dest": True, "content": False, "src": False, "mode": False, "owner": False, "group": False,
            "force": False, "backup": False, "remote_src": False, "secret": False}
    aliases = {"path": "dest"}

    def validate(self) -> None:
        if ("content" in self.a) == ("src" in self.a):
            raise UsageError(f"task {self.task!r}: give exactly one of content or src")
        if "content" in self.a and not isinstance(self.a["content"], (str, bytes)):
            if isinstance(self.a["content"], (dict, list)):  # Ansible writes structured content as JSON
                import json

                self.a["content"] = json.dumps(self.a["content"])
            else:
                self.a["content"] = str(self.a["content"])
        if not str(self.a["dest"]).startswith("/"):
            raise UsageError(f"task {self.task!r}: dest must be an absolute path")
        resolve_mode(self.a.get("mode"), None, False, self.task)
        self.rendered: bytes | None = None

    @property
    def dest(self) -> str:
        d = str(self.a["dest"])
        if d.endswith("/") and "src" in self.a:
            return d + posixpath.basename(str(self.a["src"]).rstrip("/"))
        return d

    def data(self) -> bytes:
        if "content" in self.a:
            c = self.a["content"]
            return c.encode() if isinstance(c, str) else bytes(c)
        try:
            with open(self.a["src"], "rb") as f:
                return f.read()
        except IsADirectoryError:
            raise UsageError(f"task {self.task!r}: copying a folder (src {self.a['src']}) is not supported; "
                             f"copy its files one by one (loop)") from None
        except OSError as e:
            raise UsageError(f"task {self.task!r}: cannot read src: {e}") from None

    def queries(self, ctx: OpContext) -> list[State]:
        # the old text only for a diff that is shown (a no-op run of a big template fetches its hash alone)
        q: list[State] = [{"kind": "stat", "path": self.dest, "hash": True,
                           "content": ctx.diff and not self.a.get("secret"), "parent": True, "follow": True}]
        if self.a.get("remote_src"):
            q.append({"kind": "stat", "path": str(self.a["src"]), "hash": True, "content": True, "follow": True,
                      "max": 16 << 20})
        return q

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        st, dest = state[0], self.dest
        if st.get("exists") and st.get("type") == "directory" and self.name == "copy" and "src" in self.a:
            raise UsageError(f"task {self.task!r}: dest {dest} is a folder; end it with / to copy into it")
        if st.get("exists") and st.get("type") not in ("file",):
            raise UsageError(f"task {self.task!r}: {dest} exists and is a {st['type']}")
        if not st.get("exists") and not st.get("parent_exists", True) and not ctx.check_mode:
            # (in check mode the folder is usually what an earlier task would have made: say what would change)
            raise UsageError(f"task {self.task!r}: Destination directory {posixpath.dirname(dest)} does not exist")
        if st.get("exists") and self.a.get("force") is False:
            return NoOp(f"{dest} exists (force: no)")
        if self.a.get("remote_src"):
            if not state[1].get("exists") or "content" not in state[1]:
                raise UsageError(f"task {self.task!r}: Source {self.a['src']} not found on the host")
            data = state[1]["content"].encode("utf-8", "surrogateescape")
        else:
            data = self.data()
        digest = hashlib.sha256(data).hexdigest()
        owner, group = self.a.get("owner"), self.a.get("group")
        mode = resolve_mode(self.a.get("mode"), st.get("mode"), False, self.task)
        secret = bool(self.a.get("secret"))
        if st.get("sha256") == digest:
            cmds = attr_cmds(ctx, dest, mode, owner, group, st)
            if not cmds:
                return NoOp(f"{dest} is up to date")
            return Change(f"attributes of {dest}", tuple(cmds), (_attr_diff(dest, st, mode, owner, group),))
        cmds, self.backup_file = write_cmds(ctx, dest, data, mode, owner, group, st, bool(self.a.get("backup")))
        before = st.get("content") if st.get("exists") else None
        if st.get("exists") and before is None and not secret:
            before = f"(sha256 {st.get('sha256')})\n"
        return Change(f"{'update' if st.get('exists') else 'create'} {dest}", tuple(cmds),
                      (Diff(dest, before, None if secret else data.decode("utf-8", "replace"), secret),))

    def _result(self, st: State | None) -> State:
        out = file_result(self.dest, st)
        out["dest"] = self.dest
        if getattr(self, "backup_file", None):
            out["backup_file"] = self.backup_file
        return out

    def noop_result(self, state: list[State]) -> State:
        return self._result(state[0])

    def result(self, ctx: OpContext, outputs: list[Any]) -> State:
        out = self._result(None) | {"state": "file"}
        if not self.a.get("remote_src"):
            out["checksum"] = hashlib.sha1(self.data()).hexdigest()
        return out


class Template(Copy):
    """Render a Jinja2 template on the controller (StrictUndefined, Ansible's trim_blocks) and ensure the file
    holds the result; ``src`` is looked for in the role's or the playbook's templates/."""

    name = "template"
    args = {"dest": True, "src": True, "mode": False, "owner": False, "group": False, "force": False,
            "backup": False, "secret": False, "vars": False}

    def validate(self) -> None:
        if not str(self.a["dest"]).startswith("/"):
            raise UsageError(f"task {self.task!r}: dest must be an absolute path")
        resolve_mode(self.a.get("mode"), None, False, self.task)
        self.rendered = None

    @property
    def dest(self) -> str:
        d = str(self.a["dest"])
        if d.endswith("/"):
            base = posixpath.basename(str(self.a["src"]))
            return d + (base[:-3] if base.endswith(".j2") else base)
        return d

    def data(self) -> bytes:
        if self.rendered is None:
            raise UsageError(f"task {self.task!r}: template not rendered")
        return self.rendered


class Stat(Op):
    """Ansible's stat: registers ``stat`` (exists, mode as "0644", isdir, isreg, islnk, checksum (sha1), ...).
    Read in the play's one gather; never changes anything."""

    name = "stat"
    args = {"path": True, "follow": False, "get_checksum": False, "checksum_algorithm": False, "get_mime": False,
            "get_attributes": False}
    aliases = {"dest": "path", "name": "path"}

    def validate(self) -> None:
        algo = self.a.get("checksum_algorithm", "sha1")
        if algo not in ("md5", "sha1", "sha224", "sha256", "sha384", "sha512"):
            raise UsageError(f"task {self.task!r}: checksum_algorithm must be md5, sha1, sha224, sha256, sha384 "
                             f"or sha512")
        self.algo = algo

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "stat", "path": str(self.a["path"]), "follow": bool(self.a.get("follow", False)),
                 "hash": self.algo if self.a.get("get_checksum", True) else False}]

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        return NoOp(f"{self.a['path']} {'exists' if state[0].get('exists') else 'does not exist'}")

    def noop_result(self, state: list[State]) -> State:
        st = state[0]
        if not st.get("exists"):
            return {"stat": {"exists": False}}
        mode = int(st["mode"], 8)
        out = {"exists": True, "path": str(self.a["path"]), "mode": st["mode"], "isdir": st["type"] == "directory",
               "isreg": st["type"] == "file", "islnk": st["type"] == "link", "uid": st["uid"], "gid": st["gid"],
               "pw_name": st.get("owner"), "gr_name": st.get("group"), "size": st["size"], "mtime": st["mtime"],
               "atime": st.get("atime"), "inode": st.get("ino"), "dev": st.get("dev"), "nlink": st.get("nlink"),
               "xusr": bool(mode & 0o100), "rusr": bool(mode & 0o400), "wusr": bool(mode & 0o200),
               "xgrp": bool(mode & 0o010), "rgrp": bool(mode & 0o040), "wgrp": bool(mode & 0o020),
               "xoth": bool(mode & 0o001), "roth": bool(mode & 0o004), "woth": bool(mode & 0o002),
               "executable": bool(mode & 0o111)}
        if st["type"] == "link":
            out["lnk_target"] = st.get("target")
            out["lnk_source"] = posixpath.normpath(posixpath.join(posixpath.dirname(str(self.a["path"])),
                                                                  st.get("target", "")))
        if self.algo in st:
            out["checksum"] = st[self.algo]
        return {"stat": out}
