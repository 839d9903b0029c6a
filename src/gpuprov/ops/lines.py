"""lineinfile and blockinfile: the file's text comes with the play's one gather, the new text is computed here (pure
functions, Ansible's placement rules: where a line or block goes, what counts as already there), and only a file
that must change is written, atomically, keeping its mode unless ``mode`` says."""

from __future__ import annotations

import re
from typing import Any

from ..errors import UsageError
from .base import Change, Command, Diff, NoOp, Op, OpContext, State
from .files import attr_cmds, file_result, resolve_mode, write_cmds

NL = b"\n"


def _ends(b: bytes) -> bool:
    return b[-1:] in (b"\n", b"\r")


def lineinfile_present(lines: list[bytes], line: str, regexp: str | None = None, search_string: str | None = None,
                       insertafter: str | None = None, insertbefore: str | None = None, backrefs: bool = False,
                       firstmatch: bool = False) -> tuple[list[bytes], str]:
    """``lines`` (with their endings) after ensuring ``line``; and what was done ("" for nothing)."""
    want = line.encode("utf-8", "surrogateescape")
    lines = list(lines)
    anchor_src = insertafter if insertafter not in (None, "BOF", "EOF") else (
        insertbefore if insertbefore not in (None, "BOF") else None)
    anchor = re.compile(anchor_src.encode()) if anchor_src else None
    found, anchor_at, match, exact = -1, -1, None, False
    if regexp is not None or search_string is not None:
        pat = re.compile(regexp.encode()) if regexp is not None else None
        needle = search_string.encode() if search_string is not None else b""
        for i, cur in enumerate(lines):
            m = pat.search(cur) if pat is not None else (needle in cur or None)
            if m:
                found, match = i, m
                if firstmatch:
                    break
    if not match:
        for i, cur in enumerate(lines):
            if cur.rstrip(b"\r\n") == want:
                found, exact = i, True
            elif anchor is not None and anchor.search(cur):
                anchor_at = i + 1 if insertafter else i
                if firstmatch:
                    break

    def insert_at(i: int) -> str:
        lines.insert(i, want + NL)
        return "line added"

    if found != -1:
        new = match.expand(want) if backrefs and isinstance(match, re.Match) else want
        if not new.endswith(NL):
            new += NL
        if regexp is None and search_string is None and not exact:
            return lines, ""  # not reachable: found without a pattern is an exact match
        if lines[found] != new:
            lines[found] = new
            return lines, "line replaced"
        return lines, ""
    if backrefs:
        return lines, ""  # the pattern did not match: nothing safe to write
    if "BOF" in (insertbefore, insertafter):
        return lines, insert_at(0)
    if insertafter == "EOF" or anchor_at == -1:
        if lines and not _ends(lines[-1]):
            lines.append(NL)
        lines.append(want + NL)
        return lines, "line added"
    if insertafter:
        if anchor_at == len(lines):
            if lines[anchor_at - 1].rstrip(b"\r\n") != want:
                lines.append(want + NL)
                return lines, "line added"
            return lines, ""
        if lines[anchor_at].rstrip(b"\r\n") != want:
            return lines, insert_at(anchor_at)
        return lines, ""
    return lines, insert_at(anchor_at)


def lineinfile_absent(lines: list[bytes], line: str | None = None, regexp: str | None = None,
                      search_string: str | None = None) -> tuple[list[bytes], int]:
    """``lines`` without those matching; and how many went."""
    pat = re.compile(regexp.encode()) if regexp is not None else None
    keep = []
    for cur in lines:
        if pat is not None:
            hit = bool(pat.search(cur))
        elif search_string is not None:
            hit = search_string.encode() in cur
        else:
            hit = cur.rstrip(b"\r\n") == (line or "").encode("utf-8", "surrogateescape")
        if not hit:
            keep.append(cur)
    return keep, len(lines) - len(keep)


def blockinfile(original: bytes | None, block: str, marker: str = "# {mark} ANSIBLE MANAGED BLOCK",
                marker_begin: str = "BEGIN", marker_end: str = "END", present: bool = True,
                insertafter: str | None = None, insertbefore: str | None = None, prepend_newline: bool = False,
                append_newline: bool = False) -> bytes:
    """The file's text after placing (or removing) the marked block."""
    lines = (original or b"").splitlines(True)
    if insertbefore is None and insertafter is None:
        insertafter = "EOF"
    anchor_src = insertafter if insertafter not in (None, "EOF") else (
        insertbefore if insertbefore not in (None, "BOF") else None)
    anchor = re.compile(anchor_src.encode()) if anchor_src else None
    m0 = marker.replace("{mark}", marker_begin).encode() + NL
    m1 = marker.replace("{mark}", marker_end).encode() + NL
    body = block.encode("utf-8", "surrogateescape")
    if present and body:
        if not body.endswith(NL):
            body += NL
        blocklines = [m0, *body.splitlines(True), m1]
    else:
        blocklines = []
    n0 = n1 = None
    for i, cur in enumerate(lines):
        if cur == m0:
            n0 = i
        if cur == m1:
            n1 = i
    if n0 is None or n1 is None:
        n0 = None
        if anchor is not None:
            if anchor.flags & re.MULTILINE and original is not None:
                hit = anchor.search(original)
                if hit:
                    n0 = original.count(NL, 0, hit.end() if insertafter else hit.start())
            else:
                for i, cur in enumerate(lines):
                    if anchor.search(cur):
                        n0 = i  # the last line that matches
            if n0 is None:
                n0 = len(lines)
            elif insertafter is not None:
                n0 += 1
        else:
            n0 = 0 if insertbefore is not None else len(lines)
    elif n0 < n1:
        del lines[n0:n1 + 1]
    else:
        del lines[n1:n0 + 1]
        n0 = n1
    if n0 > 0 and not lines[n0 - 1].endswith(NL):
        lines[n0 - 1] += NL
    if prepend_newline and present and n0 != 0 and lines[n0 - 1] != NL:
        lines.insert(n0, NL)
        n0 += 1
    lines[n0:n0] = blocklines
    after = n0 + len(blocklines)
    if append_newline and present and after < len(lines) and lines[after] != NL:
        lines.insert(after, NL)
    return b"".join(lines)


class _TextFile(Op):
    """The shared part: read the file in the gather, write it whole when its text must change."""

    aliases = {"dest": "path", "destfile": "path", "name": "path"}

    def validate(self) -> None:
        if not str(self.a["path"]).startswith("/"):
            raise UsageError(f"task {self.task!r}: path must be absolute, got {self.a['path']!r}")
        if self.a.get("state", "present") not in ("present", "absent"):
            raise UsageError(f"task {self.task!r}: state must be present or absent")
        resolve_mode(self.a.get("mode"), None, False, self.task)
        self.path = str(self.a["path"])

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "stat", "path": self.path, "hash": True, "content": True, "max": 64 << 20, "follow": True,
                 "parent": True}]

    def new_text(self, st: State) -> tuple[bytes, str]:
        raise NotImplementedError

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        st = state[0]
        if st.get("exists") and st.get("type") != "file":
            raise UsageError(f"task {self.task!r}: {self.path} is a {st.get('type')}, not a file")
        if st.get("exists") and "content" not in st:
            raise UsageError(f"task {self.task!r}: cannot read {self.path}: {st.get('error', 'too large')}")
        if not st.get("exists"):
            if self.a.get("state", "present") == "absent":
                return NoOp(f"{self.path} does not exist")
            if not self.a.get("create"):
                raise UsageError(f"task {self.task!r}: Destination {self.path} does not exist !")
        before = st["content"].encode("utf-8", "surrogateescape") if st.get("exists") else None
        after, what = self.new_text(st)
        owner, group = self.a.get("owner"), self.a.get("group")
        mode = resolve_mode(self.a.get("mode"), st.get("mode"), False, self.task)
        if before is not None and after == before or before is None and not what:
            cmds = attr_cmds(ctx, self.path, mode, owner, group, st) if st.get("exists") else []
            if not cmds:
                return NoOp(f"{self.path}: nothing to change")
            return Change(f"attributes of {self.path}", tuple(cmds))
        cmds = []
        if not st.get("exists") and not st.get("parent_exists", True):
            cmds.append(Command(ctx.argv(["mkdir", "-p", "--", self.path.rsplit("/", 1)[0] or "/"])))
        writes, _ = write_cmds(ctx, self.path, after, mode, owner, group, st, bool(self.a.get("backup")))
        cmds += writes
        self.msg = what
        return Change(f"{what or 'file created'}: {self.path}", tuple(cmds),
                      (Diff(self.path, before.decode("utf-8", "replace") if before is not None else None,
                            after.decode("utf-8", "replace")),))

    def noop_result(self, state: list[State]) -> State:
        return {**file_result(self.path, state[0]), "msg": ""}

    def result(self, ctx: OpContext, outputs: list[Any]) -> State:
        return {"path": self.path, "msg": getattr(self, "msg", "")}


class LineInFile(_TextFile):
    name = "lineinfile"
    args = {"path": True, "line": False, "regexp": False, "search_string": False, "state": False,
            "insertafter": False, "insertbefore": False, "create": False, "backrefs": False, "firstmatch": False,
            "backup": False, "mode": False, "owner": False, "group": False}
    aliases = {**_TextFile.aliases, "regex": "regexp", "value": "line"}

    def validate(self) -> None:
        super().validate()
        if self.a.get("insertafter") is not None and self.a.get("insertbefore") is not None:
            raise UsageError(f"task {self.task!r}: give one of insertafter and insertbefore")
        if self.a.get("regexp") is not None and self.a.get("search_string") is not None:
            raise UsageError(f"task {self.task!r}: give one of regexp and search_string")
        present = self.a.get("state", "present") == "present"
        if present and self.a.get("line") is None:
            raise UsageError(f"task {self.task!r}: state present needs line")
        if not present and all(self.a.get(k) is None for k in ("line", "regexp", "search_string")):
            raise UsageError(f"task {self.task!r}: state absent needs line, regexp or search_string")
        if self.a.get("backrefs") and self.a.get("regexp") is None:
            raise UsageError(f"task {self.task!r}: backrefs needs regexp")
        for k in ("regexp", "insertafter", "insertbefore"):
            v = self.a.get(k)
            if v is not None and v not in ("BOF", "EOF"):
                try:
                    re.compile(str(v))
                except re.error as e:
                    raise UsageError(f"task {self.task!r}: {k} is not a valid regular expression: {e}") from None

    def new_text(self, st: State) -> tuple[bytes, str]:
        lines = st["content"].encode("utf-8", "surrogateescape").splitlines(True) if st.get("exists") else []
        opt = {k: (str(self.a[k]) if self.a.get(k) is not None else None)
               for k in ("regexp", "search_string", "insertafter", "insertbefore")}
        if self.a.get("state", "present") == "absent":
            out, n = lineinfile_absent(lines, None if self.a.get("line") is None else str(self.a["line"]),
                                       opt["regexp"], opt["search_string"])
            return b"".join(out), f"{n} line(s) removed" if n else ""
        out, what = lineinfile_present(lines, str(self.a["line"]), backrefs=bool(self.a.get("backrefs")),
                                       firstmatch=bool(self.a.get("firstmatch")), **opt)
        return b"".join(out), what


class BlockInFile(_TextFile):
    name = "blockinfile"
    args = {"path": True, "block": False, "marker": False, "marker_begin": False, "marker_end": False,
            "state": False, "insertafter": False, "insertbefore": False, "create": False, "backup": False,
            "prepend_newline": False, "append_newline": False, "mode": False, "owner": False, "group": False}
    aliases = {**_TextFile.aliases, "content": "block"}

    def validate(self) -> None:
        super().validate()
        if self.a.get("insertafter") is not None and self.a.get("insertbefore") is not None:
            raise UsageError(f"task {self.task!r}: give one of insertafter and insertbefore")
        if "{mark}" not in str(self.a.get("marker", "{mark}")):
            raise UsageError(f"task {self.task!r}: marker must contain {{mark}}")

    def new_text(self, st: State) -> tuple[bytes, str]:
        original = st["content"].encode("utf-8", "surrogateescape") if st.get("exists") else None
        out = blockinfile(original, str(self.a.get("block") or ""), str(self.a.get("marker",
                                                                                    "# {mark} ANSIBLE MANAGED BLOCK")),
                          str(self.a.get("marker_begin", "BEGIN")), str(self.a.get("marker_end", "END")),
                          self.a.get("state", "present") == "present",
                          None if self.a.get("insertafter") is None else str(self.a["insertafter"]),
                          None if self.a.get("insertbefore") is None else str(self.a["insertbefore"]),
                          bool(self.a.get("prepend_newline")), bool(self.a.get("append_newline")))
        if original == out:
            return out, ""
        return out, "File created" if original is None else "Block inserted" if self.a.get("block") and \
            self.a.get("state", "present") == "present" else "Block removed"
