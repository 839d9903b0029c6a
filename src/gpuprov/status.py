"""What runs on a provisioned host, read in one round trip: service state, readiness, model, vLLM version,
uptime, restarts, GPU memory and utilisation, endpoint. Also the control verbs (start/stop/restart), logs
and teardown, all driven by the ``state.json`` that provisioning left on the host."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from . import remote
from .errors import RemoteError
from .layout import search_roots

# Shared by the remote status script and the readiness poll (health.py): how gpuprov's supervisor and the
# engine's HTTP endpoints look from the host itself.



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
    #: where the GPU memory and utilisation came from: nvml (pynvml on the host or in the engine venv) or nvidia-smi
    gpu_source: str | None = None
    #: requests running / waiting now and served so far, from the engine's /metrics (None without one)
    load: dict | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_status(runner: Any) -> tuple[EngineStatus, dict]:
    """The engine's state on ``runner``'s host (its ``install_root`` var is searched first)."""
    roots = search_roots(runner.host.var("install_root"))
    res = remote.run(runner, "status", *roots, timeout=60)
    try:
        raw = json.loads(res.stdout)
    except ValueError:
        raise RemoteError(f"{runner.host.name}: the status script failed (exit {res.exit_status}): "
                          f"{(res.stderr or res.stdout).strip()[-300:] or 'no output'}") from None
    name = runner.host.name
    if not raw.get("installed"):
        return EngineStatus(name, "not-installed", False, gpus=raw.get("gpus", []),
                            gpu_source=raw.get("gpu_source")), raw
    st, svc = raw["state"], raw.get("service", {})
    host = st.get("engine_host", "127.0.0.1")
    return EngineStatus(
        name, svc.get("state", "unknown"), raw.get("health") == 200, st.get("model"),
        raw.get("version") or st.get("vllm_version"), f"http://{host}:{st.get('engine_port', 8000)}/v1 (on the host)",
        svc.get("uptime_s"), int(svc.get("restarts") or 0), svc.get("pid"), st.get("service_manager"),
        raw.get("gpus", []), raw.get("root"), raw.get("gpu_source"), raw.get("load"),
    ), raw
