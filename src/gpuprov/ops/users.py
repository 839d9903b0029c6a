"""user and group: decided from the host's account database (read in the play's one gather), changed with the
shadow tools (useradd/usermod/userdel, groupadd/groupmod/groupdel) and only where an asked attribute differs."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from .base import Change, Command, NoOp, Op, OpContext, State


def _names(v: Any, task: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    if isinstance(v, list):
        return [str(x) for x in v]
    raise UsageError(f"task {task!r}: groups must be a list or a comma-separated text")


class _Account(Op):
    """user and group alike: ``state`` present or absent, decided from the host's account of that name."""

    def validate(self) -> None:
        if self.a.get("state", "present") not in ("present", "absent"):
            raise UsageError(f"task {self.task!r}: {self.name} state must be present or absent")

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": self.name, "name": str(self.a["name"])}]


class User(_Account):
    name = "user"
    args = {"name": True, "state": False, "uid": False, "group": False, "groups": False, "append": False,
            "shell": False, "home": False, "create_home": False, "system": False, "comment": False,
            "password": False, "remove": False}
    aliases = {"createhome": "create_home", "user": "name"}

    def validate(self) -> None:
        super().validate()
        self.groups = _names(self.a.get("groups"), self.task)

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        st, name = state[0], str(self.a["name"])
        if self.a.get("state") == "absent":
            if not st.get("exists"):
                return NoOp(f"user {name} does not exist")
            argv = ["userdel", *(["-r"] if self.a.get("remove") else []), name]
            return Change(f"remove user {name}", (Command(ctx.argv(argv), label="userdel"),))
        if not st.get("exists"):
            argv = ["useradd"]
            for flag, key in (("-u", "uid"), ("-g", "group"), ("-s", "shell"), ("-d", "home"), ("-c", "comment"),
                              ("-p", "password")):
                if self.a.get(key) is not None:
                    argv += [flag, str(self.a[key])]
            if self.groups:
                argv += ["-G", ",".join(self.groups)]
            if self.a.get("system"):
                argv.append("-r")
            argv.append("-m" if self.a.get("create_home", True) else "-M")
            argv.append(name)
            return Change(f"create user {name}", (Command(ctx.argv(argv), label="useradd"),))
        argv = ["usermod"]
        what = []
        if self.a.get("uid") is not None and int(self.a["uid"]) != st.get("uid"):
            argv += ["-u", str(self.a["uid"])]
            what.append("uid")
        if self.a.get("group") is not None and str(self.a["group"]) not in (st.get("group"), str(st.get("gid"))):
            argv += ["-g", str(self.a["group"])]
            what.append("group")
        for flag, key in (("-s", "shell"), ("-d", "home"), ("-c", "comment")):
            if self.a.get(key) is not None and str(self.a[key]) != st.get(key):
                argv += [flag, str(self.a[key])]
                what.append(key)
        if self.a.get("groups") is not None:
            have = set(st.get("groups", []))
            want = set(self.groups)
            if self.a.get("append") and not want <= have:
                argv += ["-a", "-G", ",".join(sorted(want - have))]
                what.append("groups")
            elif not self.a.get("append") and want != have:
                argv += ["-G", ",".join(self.groups)]
                what.append("groups")
        if not what:
            return NoOp(f"user {name} is as asked")
        return Change(f"user {name}: {', '.join(what)}", (Command(ctx.argv([*argv, name]), label="usermod"),))

    def noop_result(self, state: list[State]) -> State:
        st = state[0]
        return {"name": self.a["name"], "state": "present" if st.get("exists") else "absent",
                **{k: st[k] for k in ("uid", "group", "home", "shell", "comment") if k in st}}


class Group(_Account):
    name = "group"
    args = {"name": True, "state": False, "gid": False, "system": False}

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        st, name = state[0], str(self.a["name"])
        if self.a.get("state") == "absent":
            if not st.get("exists"):
                return NoOp(f"group {name} does not exist")
            return Change(f"remove group {name}", (Command(ctx.argv(["groupdel", name]), label="groupdel"),))
        if not st.get("exists"):
            argv = ["groupadd", *(["-g", str(self.a["gid"])] if self.a.get("gid") is not None else []),
                    *(["-r"] if self.a.get("system") else []), name]
            return Change(f"create group {name}", (Command(ctx.argv(argv), label="groupadd"),))
        if self.a.get("gid") is not None and int(self.a["gid"]) != st.get("gid"):
            return Change(f"group {name}: gid {st.get('gid')} → {self.a['gid']}",
                          (Command(ctx.argv(["groupmod", "-g", str(self.a["gid"]), name]), label="groupmod"),))
        return NoOp(f"group {name} is as asked")

    def noop_result(self, state: list[State]) -> State:
        return {"name": self.a["name"], "state": "present" if state[0].get("exists") else "absent",
                **({"gid": state[0]["gid"]} if "gid" in state[0] else {})}
