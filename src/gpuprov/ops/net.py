"""uri and get_url, from the host (as Ansible runs them). A ``uri`` GET or HEAD is a read: it is answered in the
play's one gather. Other methods, and get_url's download, run at the task's turn through the same host program
(``remote/gather.py``); get_url with a matching ``checksum`` (or an existing ``dest`` and ``force: no``)
downloads nothing."""

from __future__ import annotations

import base64
import json
import posixpath
from typing import Any
from urllib.parse import urlencode, urlparse

from .. import remote
from ..errors import UsageError
from .base import Change, Command, NoOp, Op, OpContext, State
from .files import attr_cmds, resolve_mode

ALGOS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")


def host_call(query: State, timeout: float, label: str) -> Command:
    """A Command that answers one gather query on the host when its turn comes (its stdout: a list of one answer)."""
    argv, program = remote.gather_command([query])
    return Command(tuple(argv), stdin=program, timeout=timeout, label=label)


def host_answer(outputs: list[Any]) -> State:
    if not outputs:
        return {}
    try:
        answer: State = dict(json.loads(outputs[-1].stdout)[0])
    except (ValueError, IndexError, TypeError, KeyError):
        return {"failed": True, "msg": f"unreadable answer from the host: {outputs[-1].stdout[:200]!r}"}
    if "error" in answer and "status" not in answer and "msg" not in answer:
        return {"failed": True, "msg": answer["error"]}
    return answer


def _auth(a: dict[str, Any]) -> dict[str, str]:
    user, pw = a.get("url_username"), a.get("url_password")
    if user is None:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw or ''}".encode()).decode()}


def _url(a: dict[str, Any], task: str) -> str:
    url = str(a["url"])
    if urlparse(url).scheme not in ("http", "https"):
        raise UsageError(f"task {task!r}: url must be http:// or https://, got {url!r}")
    return url


class Uri(Op):
    name = "uri"
    args = {"url": True, "method": False, "body": False, "body_format": False, "headers": False,
            "status_code": False, "return_content": False, "timeout": False, "validate_certs": False,
            "url_username": False, "url_password": False, "force_basic_auth": False, "follow_redirects": False}
    aliases = {"user": "url_username", "password": "url_password"}

    def validate(self) -> None:
        _url(self.a, self.task)
        self.method = str(self.a.get("method", "GET")).upper()
        codes = self.a.get("status_code", [200])
        self.codes = [int(c) for c in (codes if isinstance(codes, list) else [codes])]
        if self.a.get("body_format", "raw") not in ("raw", "json", "form-urlencoded"):
            raise UsageError(f"task {self.task!r}: body_format must be raw, json or form-urlencoded")

    def query(self) -> State:
        headers = {**{str(k): str(v) for k, v in (self.a.get("headers") or {}).items()}, **_auth(self.a)}
        body = self.a.get("body")
        fmt = self.a.get("body_format", "raw")
        if body is not None and fmt == "json":
            body = body if isinstance(body, str) else json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        elif body is not None and fmt == "form-urlencoded":
            body = body if isinstance(body, str) else urlencode(body)
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return {"kind": "http", "url": str(self.a["url"]), "method": self.method, "headers": headers,
                "body": None if body is None else str(body), "timeout": float(self.a.get("timeout", 30)),
                "validate_certs": bool(self.a.get("validate_certs", True))}

    @property
    def reads(self) -> bool:
        return self.method in ("GET", "HEAD") and self.a.get("body") is None

    def queries(self, ctx: OpContext) -> list[State]:
        return [self.query()] if self.reads else []

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        if self.reads:
            return NoOp(f"{self.method} {self.a['url']} → {state[0].get('status')}")
        return Change(f"{self.method} {self.a['url']}",
                      (host_call(self.query(), float(self.a.get("timeout", 30)) + 15, f"uri {self.method}"),),
                      changes=False)

    def _shape(self, answer: State) -> State:
        status = answer.get("status", -1)
        out: State = {"status": status, "url": answer.get("url", str(self.a["url"])), "redirected":
                      answer.get("url", self.a["url"]) != self.a["url"]}
        headers = answer.get("headers") or {}
        for k, v in headers.items():
            out[k.replace("-", "_")] = v
        content = answer.get("content", "")
        if "json" in headers.get("content-type", ""):
            try:
                out["json"] = json.loads(content)
            except ValueError:
                pass
        if self.a.get("return_content"):
            out["content"] = content
        if status not in self.codes:
            why = answer.get("error") or content[:200]
            out.update(failed=True, msg=f"Status code was {status} and not {self.codes}: {why}")
        else:
            out["msg"] = f"OK ({len(content.encode())} bytes)"
        return out

    def noop_result(self, state: list[State]) -> State:
        return self._shape(state[0])

    def result(self, ctx: OpContext, outputs: list[Any]) -> State:
        return self._shape(host_answer(outputs))


class GetUrl(Op):
    name = "get_url"
    args = {"url": True, "dest": True, "checksum": False, "mode": False, "owner": False, "group": False,
            "force": False, "timeout": False, "validate_certs": False, "headers": False, "url_username": False,
            "url_password": False, "force_basic_auth": False}
    aliases = {"username": "url_username", "password": "url_password"}

    def validate(self) -> None:
        _url(self.a, self.task)
        if not str(self.a["dest"]).startswith("/"):
            raise UsageError(f"task {self.task!r}: dest must be an absolute path")
        self.algo, self.digest = "sha1", ""
        if self.a.get("checksum"):
            algo, _, digest = str(self.a["checksum"]).partition(":")
            if algo not in ALGOS or not digest or "/" in digest:
                raise UsageError(f"task {self.task!r}: checksum must be ALGORITHM:HEX with ALGORITHM one of "
                                 f"{', '.join(ALGOS)} (a checksum URL is not supported)")
            self.algo, self.digest = algo, digest.lower()
        resolve_mode(self.a.get("mode"), None, False, self.task)

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "stat", "path": str(self.a["dest"]), "hash": self.algo, "follow": True, "parent": True}]

    def target(self, st: State) -> str:
        dest = str(self.a["dest"])
        if st.get("type") == "directory" or dest.endswith("/"):
            name = posixpath.basename(urlparse(str(self.a["url"])).path) or "index.html"
            return posixpath.join(dest, name)
        return dest

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        st = state[0]
        if st.get("type") == "directory":
            raise UsageError(f"task {self.task!r}: dest {self.a['dest']} is a folder: give the file's path "
                             f"(Ansible's download-into-a-folder needs a request to learn the name)")
        if not st.get("exists") and not st.get("parent_exists", True):
            raise UsageError(f"task {self.task!r}: Destination {posixpath.dirname(self.target(st))} does not exist")
        dest = self.target(st)
        mode = resolve_mode(self.a.get("mode"), st.get("mode"), False, self.task)
        owner, group = self.a.get("owner"), self.a.get("group")
        have = st.get(self.algo)
        if st.get("exists") and ((self.digest and have == self.digest) or (not self.digest and
                                                                           not self.a.get("force"))):
            cmds = attr_cmds(ctx, dest, mode, owner, group, st)
            if not cmds:
                return NoOp(f"{dest} is there" + (" with the checksum asked" if self.digest else ""))
            return Change(f"attributes of {dest}", tuple(cmds))
        headers = {**{str(k): str(v) for k, v in (self.a.get("headers") or {}).items()}, **_auth(self.a)}
        q = {"kind": "download", "url": str(self.a["url"]), "dest": dest, "algo": self.algo,
             "checksum": self.digest, "mode": mode, "timeout": float(self.a.get("timeout", 10)),
             "headers": headers, "validate_certs": bool(self.a.get("validate_certs", True))}
        cmds = [host_call(q, float(self.a.get("timeout", 10)) + 600, f"download {self.a['url']}")]
        cmds += attr_cmds(ctx, dest, None, owner, group, st if st.get("exists") else {})
        self.dest_path = dest
        return Change(f"download {self.a['url']} → {dest}", tuple(cmds))

    def noop_result(self, state: list[State]) -> State:
        return {"dest": self.target(state[0]), "url": str(self.a["url"]), "msg": "file already exists",
                "checksum_dest": state[0].get(self.algo) if self.algo == "sha1" else None}

    def result(self, ctx: OpContext, outputs: list[Any]) -> State:
        answer = host_answer(outputs[:1])
        return {"dest": getattr(self, "dest_path", str(self.a["dest"])), "url": str(self.a["url"]), **answer}
