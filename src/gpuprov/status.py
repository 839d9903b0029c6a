"""What runs on a provisioned host, read in one round trip: service state, readiness, model, vLLM version,
uptime, restarts, GPU memory and utilisation, endpoint. Also the control verbs (start/stop/restart), logs
and teardown, all driven by the ``state.json`` that provisioning left on the host."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .layout import search_roots

# Shared by the remote status script and the readiness poll (health.py): how gpuprov's supervisor and the
# engine's HTTP endpoints look from the host itself.
REMOTE_HELPERS = r"""
import json, os, urllib.request, urllib.error


def supervisor_state(pidfile):
    # (alive, state) of gpuprov's supervisor: its pid file names a live process; pid.state is its JSON
    st = {}
    try:
        with open(pidfile + ".state") as f:
            st = json.load(f)
    except (OSError, ValueError):
        pass
    alive = False
    try:
        with open(pidfile) as f:
            os.kill(int(f.read().strip()), 0)
            alive = True
    except (OSError, ValueError):
        pass
    return alive, st


def http_status(port, path="/health"):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None
"""

STATUS_SCRIPT = REMOTE_HELPERS + r"""
import subprocess, time
out = {"installed": False}
import sys
for root in sys.argv[1:]:  # where to look: the host's install_root var first, then the defaults (gpuprov.layout)
    try:
        with open(root + "/state.json") as f:
            st = json.load(f)
        out.update(installed=True, root=root, state=st)
        break
    except (OSError, ValueError):
        pass
def run(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=15).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return ""
if out["installed"]:
    st = out["state"]
    if st["service_manager"] == "systemd":
        shown = run(["systemctl", "show", st["service"], "-p", "ActiveState,SubState,NRestarts,"
                     "ActiveEnterTimestampMonotonic,ExecMainStatus,MainPID,LoadState"])
        props = dict(l.split("=", 1) for l in shown.splitlines() if "=" in l)
        active = props.get("ActiveState", "unknown")
        if active == "activating" and props.get("SubState") == "auto-restart":
            active = "failed"
        up = None
        mono = int(props.get("ActiveEnterTimestampMonotonic") or 0)
        if active == "active" and mono:
            up = time.clock_gettime(time.CLOCK_MONOTONIC) - mono / 1e6
        out["service"] = {"state": active, "restarts": int(props.get("NRestarts") or 0), "uptime_s": up,
                          "pid": int(props.get("MainPID") or 0) or None, "loaded": props.get("LoadState")}
    else:
        alive, s = supervisor_state(st["pidfile"])
        if alive and s.get("child"):
            state = "active"
        elif alive:
            state = "failed" if s.get("last_exit") not in (None, 0) else "activating"
        else:
            state = "failed" if s.get("last_exit") not in (None, 0) and not s.get("stopped") else "inactive"
        up = time.time() - s["child_started_at"] if state == "active" and s.get("child_started_at") else None
        out["service"] = {"state": state, "restarts": s.get("restarts", 0), "uptime_s": up, "pid": s.get("child"),
                          "last_exit": s.get("last_exit")}
    port = st.get("engine_port", 8000)
    out["health"] = http_status(port)
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/version" % port, timeout=3) as r:
            out["version"] = json.loads(r.read()).get("version")
    except (OSError, ValueError):
        out["version"] = None
q = run(["nvidia-smi", "--query-gpu=index,memory.used,memory.total,utilization.gpu", "--format=csv,noheader,nounits"])
gpus = []
for line in q.splitlines():
    p = [x.strip() for x in line.split(",")]
    if len(p) == 4 and p[0].isdigit():
        gpus.append({"index": int(p[0]), "memory_used_mib": int(p[1]) if p[1].isdigit() else None,
                     "memory_total_mib": int(p[2]) if p[2].isdigit() else None,
                     "utilization_pct": int(p[3]) if p[3].isdigit() else None})
out["gpus"] = gpus
print(json.dumps(out))
"""


@dataclass
class EngineStatus:
    host: str
    service: str  # active | inactive | failed | activating | not-installed
    ready: bool
    model: str | None = None
    vllm_version: str | None = None
    endpoint: str | None = None
    uptime_s: float | None = None
    restarts: int = 0
    pid: int | None = None
    manager: str | None = None
    gpus: list[dict] = field(default_factory=list)
    root: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_status(runner: Any) -> tuple[EngineStatus, dict]:
    """The engine's state on ``runner``'s host (its ``install_root`` var is searched first)."""
    from .errors import RemoteError

    roots = search_roots(runner.host.var("install_root") if hasattr(runner.host, "var") else None)
    res = runner.run(["python3", "-c", STATUS_SCRIPT, *roots], timeout=60)
    try:
        raw = json.loads(res.stdout)
    except ValueError:
        raise RemoteError(f"{runner.host.name}: the status script failed (exit {res.exit_status}): "
                          f"{(res.stderr or res.stdout).strip()[-300:] or 'no output'}") from None
    name = runner.host.name
    if not raw.get("installed"):
        return EngineStatus(name, "not-installed", False, gpus=raw.get("gpus", [])), raw
    st, svc = raw["state"], raw.get("service", {})
    host = st.get("engine_host", "127.0.0.1")
    return EngineStatus(
        name, svc.get("state", "unknown"), raw.get("health") == 200, st.get("model"),
        raw.get("version") or st.get("vllm_version"), f"http://{host}:{st.get('engine_port', 8000)}/v1 (on the host)",
        svc.get("uptime_s"), int(svc.get("restarts") or 0), svc.get("pid"), st.get("service_manager"),
        raw.get("gpus", []), raw.get("root"),
    ), raw
