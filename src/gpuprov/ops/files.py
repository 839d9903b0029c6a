"""file, copy, template: compared by hash, diffed as before/after text, written atomically with their mode."""

from __future__ import annotations

import hashlib
import posixpath

from ..errors import UsageError
from .base import Change, Command, Diff, NoOp, Op, OpContext, State, mode_str


def _mode_cmds(ctx: OpContext, path: str, mode: str | None, owner: str | None, st: State) -> list[Command]:
    cmds = []
    if mode and st.get("mode") != mode:
        cmds.append(Command(ctx.argv(["chmod", mode, path]), label=f"chmod {mode}"))
    if owner:
        cmds.append(Command(ctx.argv(["chown", owner, path]), label=f"chown {owner}"))
    return cmds


class File(Op):
    """state: directory | file (touch) | absent | link (src →)."""

    name = "file"
    args = {"path": True, "state": False, "mode": False, "owner": False, "src": False}

    def validate(self) -> None:
        if self.a.get("state", "file") not in ("directory", "file", "absent", "link"):
            raise UsageError(f"task {self.task!r}: file state must be directory, file, absent or link")
        if not str(self.a["path"]).startswith("/"):
            raise UsageError(f"task {self.task!r}: file path must be absolute, got {self.a['path']!r}")
        self.mode = mode_str(self.a.get("mode"), self.task)

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "stat", "path": str(self.a["path"])}]

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        st, path, want = state[0], str(self.a["path"]), self.a.get("state", "file")
        if want == "absent":
            if not st.get("exists"):
                return NoOp("absent")
            return Change(f"remove {path}", (Command(ctx.argv(["rm", "-rf", "--", path])),),
                          (Diff(path, f"({st['type']})", None),))
        if want == "link":
            src = str(self.a.get("src") or "")
            if st.get("type") == "link" and st.get("target") == src:
                return NoOp(f"links to {src}")
            return Change(f"link {path} → {src}", (Command(ctx.argv(["ln", "-sfn", "--", src, path])),))
        if st.get("exists") and st["type"] != want:
            raise UsageError(f"task {self.task!r}: {path} is a {st['type']}, not a {want}")
        if not st.get("exists"):
            make = ["mkdir", "-p", "--", path] if want == "directory" else ["touch", "--", path]
            cmds = [Command(ctx.argv(make))] + _mode_cmds(ctx, path, self.mode, self.a.get("owner"), {})
            diff = Diff(path, None, f"({want}, mode {self.mode or 'default'})")
            return Change(f"create {want} {path}", tuple(cmds), (diff,))
        cmds = _mode_cmds(ctx, path, self.mode, None, st)
        if cmds:
            return Change(f"mode {st['mode']} → {self.mode}", tuple(cmds),
                          (Diff(path, f"mode {st['mode']}\n", f"mode {self.mode}\n"),))
        return NoOp(f"{want} exists" + (f" with mode {self.mode}" if self.mode else ""))


class Copy(Op):
    """Ensure a file holds exactly ``content`` (or the local file ``src``); secret: true hides it in diffs."""

    name = "copy"
    args = {"dest": True, "content": False, "src": False, "mode": False, "owner": False, "secret": False}

    def validate(self) -> None:
        if ("content" in self.a) == ("src" in self.a):
            raise UsageError(f"task {self.task!r}: give exactly one of content or src")
        if "content" in self.a and not isinstance(self.a["content"], (str, bytes)):
            raise UsageError(f"task {self.task!r}: content must be text, got {type(self.a['content']).__name__}")
        if not str(self.a["dest"]).startswith("/"):
            raise UsageError(f"task {self.task!r}: dest must be an absolute path")
        self.mode = mode_str(self.a.get("mode"), self.task) or "0644"

    def data(self) -> bytes:
        if "content" in self.a:
            c = self.a["content"]
            return c.encode() if isinstance(c, str) else bytes(c)
        with open(self.a["src"], "rb") as f:
            return f.read()

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "stat", "path": str(self.a["dest"]), "hash": True, "content": not self.a.get("secret")}]

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        st, dest, data = state[0], str(self.a["dest"]), self.data()
        digest = hashlib.sha256(data).hexdigest()
        if st.get("exists") and st.get("type") != "file":
            raise UsageError(f"task {self.task!r}: {dest} exists and is a {st['type']}")
        secret = bool(self.a.get("secret"))
        if st.get("sha256") == digest:
            cmds = _mode_cmds(ctx, dest, self.mode, None, st)
            if not cmds:
                return NoOp(f"{dest} is up to date")
            return Change(f"mode {st['mode']} → {self.mode}", tuple(cmds),
                          (Diff(dest, f"mode {st['mode']}\n", f"mode {self.mode}\n"),))
        from ..connection import put_argv

        parent = posixpath.dirname(dest)
        cmds = [Command(ctx.argv(["mkdir", "-p", "--", parent]), label="mkdir"),
                Command(ctx.argv(put_argv(dest, int(self.mode, 8))), stdin=data, label=f"write {dest}")]
        if self.a.get("owner"):
            cmds.append(Command(ctx.argv(["chown", self.a["owner"], dest])))
        before = st.get("content") if st.get("exists") else None
        if st.get("exists") and before is None and not secret:
            before = f"(sha256 {st.get('sha256')})\n"
        return Change(f"{'update' if st.get('exists') else 'create'} {dest}", tuple(cmds),
                      (Diff(dest, before, None if secret else data.decode("utf-8", "replace"), secret),))


class Template(Copy):
    """Render a Jinja2 template locally (StrictUndefined) and ensure the file holds the result."""

    name = "template"
    args = {"dest": True, "src": True, "mode": False, "owner": False, "secret": False, "vars": False}

    def validate(self) -> None:
        if not str(self.a["dest"]).startswith("/"):
            raise UsageError(f"task {self.task!r}: dest must be an absolute path")
        self.mode = mode_str(self.a.get("mode"), self.task) or "0644"
        self.rendered: bytes | None = None

    def data(self) -> bytes:
        if self.rendered is None:
            raise UsageError(f"task {self.task!r}: template not rendered")
        return self.rendered
