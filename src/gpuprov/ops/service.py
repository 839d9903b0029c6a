"""service: systemd units (daemon-reload when the unit changed, enable, start/restart/stop), or — on hosts
without systemd — gpuprov's supervisor with the same meaning: restart on failure, a log file, a pid file,
and it survives SSH logout (see ``gpuprov/remote/supervise.py``)."""

from __future__ import annotations

from ..errors import UsageError
from .base import Change, Command, NoOp, Op, OpContext, State


class Service(Op):
    name = "service"
    args = {"name": True, "state": False, "enabled": False, "manager": True, "command": False, "env_file": False,
            "log": False, "pidfile": False, "supervisor": False, "python": False, "workdir": False}

    def validate(self) -> None:
        if self.a.get("state", "started") not in ("started", "stopped", "restarted"):
            raise UsageError(f"task {self.task!r}: state must be started, stopped or restarted")
        if self.a["manager"] not in ("systemd", "supervisor"):
            raise UsageError(f"task {self.task!r}: manager must be systemd or supervisor")
        if self.a["manager"] == "supervisor":
            for k in ("command", "log", "pidfile", "supervisor"):
                if not self.a.get(k):
                    raise UsageError(f"task {self.task!r}: the supervisor needs {k}")

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "service", "manager": self.a["manager"], "name": self.a["name"],
                 "pidfile": self.a.get("pidfile")}]

    # ----------------------------------------------------------- systemd
    def _systemd(self, ctx: OpContext, st: State) -> NoOp | Change:
        props = st.get("props", {})
        name, want = self.a["name"], self.a.get("state", "started")
        if props.get("LoadState") == "not-found" and want != "stopped":
            raise UsageError(f"task {self.task!r}: unit {name} does not exist on the host")
        cmds, what = [], []
        def sc(*a: str) -> Command:
            return Command(ctx.argv(["systemctl", *a]), timeout=120)

        if props.get("NeedDaemonReload") == "yes":
            cmds.append(sc("daemon-reload"))
            what.append("daemon-reload")
        if self.a.get("enabled") and props.get("UnitFileState") not in ("enabled", "enabled-runtime", "static"):
            cmds.append(sc("enable", name))
            what.append("enable")
        active = props.get("ActiveState") in ("active", "activating", "reloading")
        if want == "started" and not active:
            cmds.append(sc("start", name))
            what.append("start")
        elif want == "restarted":
            cmds.append(sc("restart", name))
            what.append("restart")
        elif want == "stopped" and active:
            cmds.append(sc("stop", name))
            what.append("stop")
        if not cmds:
            return NoOp(f"{name} {props.get('ActiveState', '?')}")
        return Change(f"{name}: {', '.join(what)}", tuple(cmds))

    # ----------------------------------------------------------- supervisor
    def _supervisor(self, ctx: OpContext, st: State) -> NoOp | Change:
        want, name = self.a.get("state", "started"), self.a["name"]
        py = str(self.a.get("python") or "python3")
        sup = str(self.a["supervisor"])
        env_file = ["--env-file", str(self.a["env_file"])] if self.a.get("env_file") else []
        start = ctx.argv(["setsid", "-f", py, sup, "start", "--name", name, "--pidfile", str(self.a["pidfile"]),
                          "--log", str(self.a["log"]), *env_file,
                          *(["--workdir", str(self.a["workdir"])] if self.a.get("workdir") else []),
                          "--", *[str(x) for x in self.a["command"]]])
        stop = ctx.argv([py, sup, "stop", "--pidfile", str(self.a["pidfile"])])
        wait = ctx.argv([py, sup, "wait-started", "--pidfile", str(self.a["pidfile"])])
        running = st.get("running")
        if want == "started":
            if running:
                return NoOp(f"{name} running (pid {st.get('pid')})")
            return Change(f"{name}: start", (Command(start, timeout=30), Command(wait, timeout=30)))
        if want == "restarted":
            return Change(f"{name}: restart", (Command(stop, timeout=60), Command(start, timeout=30),
                                               Command(wait, timeout=30)))
        if running:
            return Change(f"{name}: stop", (Command(stop, timeout=60),))
        return NoOp(f"{name} stopped")

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        st = state[0]
        return self._systemd(ctx, st) if self.a["manager"] == "systemd" else self._supervisor(ctx, st)
