"""service: systemd units (daemon-reload when the unit changed, enable, start/restart/stop), or — on hosts
without systemd — gpuprov's supervisor with the same meaning: restart on failure, a log file, a pid file,
and it survives SSH logout (see ``gpuprov/remote/supervise.py``)."""

from __future__ import annotations

from ..errors import UsageError
from .base import Change, Command, NoOp, Op, OpContext, State


class Service(Op):
    """Ansible's service / systemd (``name``, ``state``, ``enabled``, ``daemon_reload``); ``manager`` is systemd
    when the host runs it, and gpuprov's supervisor (with its ``command``, ``log``, ``pidfile``) otherwise."""

    name = "service"
    also = ("systemd", "systemd_service")
    args = {"name": False, "state": False, "enabled": False, "manager": False, "daemon_reload": False,
            "command": False, "env_file": False, "log": False, "pidfile": False, "supervisor": False, "python": False,
            "workdir": False, "restart": False}
    aliases = {"daemon-reload": "daemon_reload", "unit": "name", "service": "name"}

    def validate(self) -> None:
        if not self.a.get("name") and not self.a.get("daemon_reload"):
            raise UsageError(f"task {self.task!r}: service needs name (or daemon_reload alone)")
        if self.a.get("state") is not None and self.a["state"] not in ("started", "stopped", "restarted",
                                                                        "reloaded"):
            raise UsageError(f"task {self.task!r}: state must be started, stopped, restarted or reloaded")
        self.a.setdefault("manager", "auto")
        if self.a["manager"] not in ("systemd", "supervisor", "auto"):
            raise UsageError(f"task {self.task!r}: manager must be systemd or supervisor")
        if self.a.get("restart") not in (None, "on-failure", "no"):
            raise UsageError(f"task {self.task!r}: restart must be on-failure or no (systemd's Restart=)")
        if self.a["manager"] == "supervisor":
            for k in ("command", "log", "pidfile", "supervisor"):
                if not self.a.get(k):
                    raise UsageError(f"task {self.task!r}: the supervisor needs {k}")

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "service", "manager": self.a["manager"], "name": self.a.get("name") or "-",
                 "pidfile": self.a.get("pidfile")}]

    # ----------------------------------------------------------- systemd
    def _systemd(self, ctx: OpContext, st: State) -> NoOp | Change:
        props = st.get("props", {})
        name, want = self.a.get("name"), self.a.get("state")
        cmds, what = [], []

        def sc(*a: str) -> Command:
            return Command(ctx.argv(["systemctl", *a]), timeout=120)

        # a reload changes nothing Ansible counts; done only when some unit file changed since the last one
        if props.get("NeedDaemonReload") == "yes" or (self.a.get("daemon_reload") and not name):
            cmds.append(sc("daemon-reload"))
            what.append("daemon-reload")
        if not name:
            return Change("daemon-reload", tuple(cmds), changes=False)
        if props.get("LoadState") == "not-found" and want != "stopped":
            raise UsageError(f"task {self.task!r}: Could not find the requested service {name}: host")
        enabled = props.get("UnitFileState") in ("enabled", "enabled-runtime", "static", "alias", "indirect")
        if self.a.get("enabled") and not enabled:
            cmds.append(sc("enable", name))
            what.append("enable")
        elif self.a.get("enabled") is False and enabled and props.get("UnitFileState") != "static":
            cmds.append(sc("disable", name))
            what.append("disable")
        active = props.get("ActiveState") in ("active", "activating", "reloading")
        if want == "started" and not active:
            cmds.append(sc("start", name))
            what.append("start")
        elif want == "restarted":
            cmds.append(sc("restart", name))
            what.append("restart")
        elif want == "reloaded":
            cmds.append(sc("reload-or-restart" if active else "start", name))
            what.append("reload" if active else "start")
        elif want == "stopped" and active:
            cmds.append(sc("stop", name))
            what.append("stop")
        if what == ["daemon-reload"]:
            return Change(f"{name}: daemon-reload", tuple(cmds), changes=False)
        if not cmds:
            return NoOp(f"{name} {props.get('ActiveState', '?')}")
        return Change(f"{name}: {', '.join(what)}", tuple(cmds))

    # ----------------------------------------------------------- supervisor
    def _supervisor(self, ctx: OpContext, st: State) -> NoOp | Change:
        want, name = self.a.get("state") or "started", self.a["name"]
        py = str(self.a.get("python") or "python3")
        sup = str(self.a["supervisor"])
        env_file = ["--env-file", str(self.a["env_file"])] if self.a.get("env_file") else []
        start = ctx.argv(["setsid", "-f", py, sup, "start", "--name", name, "--pidfile", str(self.a["pidfile"]),
                          "--log", str(self.a["log"]), *env_file,
                          *(["--workdir", str(self.a["workdir"])] if self.a.get("workdir") else []),
                          *(["--restart", "no"] if self.a.get("restart") == "no" else []),
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
        if st.get("manager") == "none":
            raise UsageError(f"task {self.task!r}: this host does not run systemd; gpuprov's supervisor serves "
                             f"such hosts (manager: supervisor, with command, log, pidfile, supervisor)")
        if st.get("manager") == "systemd" or self.a["manager"] == "systemd":
            return self._systemd(ctx, st)
        return self._supervisor(ctx, st)
