"""A STAND-IN of RunPod's v2 REST API, for the lab: ``GET /v2/pods`` lists the lab's ``--runpod`` hosts.

It answers in the documented shape (``ListPodsResponse``: ``{"pods": [Pod, ...]}`` with ``status``, ``gpu``,
``cudaVersion``, ``ssh.direct``/``ssh.proxy``, ``env`` in plain text as the real API returns it, ``runtime.ports``,
``startedAt``) and only to ``Authorization: Bearer <the lab's key>`` (401 otherwise). It is not RunPod: no other
route, no pagination, no rate limits. The lab writes the pods (``write_pods``) whenever a host starts, resets or
goes; the lab's services process (services.py) serves the file.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ..facts import parse_smi_xml


def key_file(root: Path) -> Path:
    return root / "runpod" / "api-key"


def pods_file(root: Path) -> Path:
    return root / "runpod" / "pods.json"


def ensure_key(root: Path) -> str:
    """The lab's API key (0600 from the first byte), made once."""
    f = key_file(root)
    if not f.is_file():
        f.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("rpa_SIMLAB" + secrets.token_hex(20).upper() + "\n")
    return f.read_text().strip()


def pod(h: Any) -> dict[str, Any]:
    """One lab host as the v2 API describes a running pod."""
    gpus = parse_smi_xml(Path(h.gpu).read_text(errors="replace")) if h.gpu != "none" else None
    direct = None if h.proxy_only else {"host": h.address, "port": h.port, "username": "root",
                                        "command": f"ssh root@{h.address} -p {h.port}"}
    proxy_user = f"{h.pod_id}-{h.pod_id[:8].encode().hex()[:8]}"
    return {
        "id": h.pod_id, "name": h.name, "status": "RUNNING", "actions": ["stop", "restart", "terminate"],
        "image": "gpuprov-sim/pod:stand-in", "args": "", "disk": 20,
        "ports": [] if h.proxy_only else ["22/tcp"],
        "env": dict(h.pod_env), "registry": None,
        "mounts": {"persistent": {"size": 50, "path": "/workspace"}},
        **({"gpu": {"id": gpus.gpus[0].name, "count": len(gpus.gpus)}} if gpus and gpus.gpus else {}),
        "cloud": "SECURE", "dataCenterId": "SIM-LAB-1",
        "cudaVersion": gpus.cuda_driver_version if gpus else None,
        "ssh": {"proxy": {"host": "ssh.runpod.io", "port": 22, "username": proxy_user,
                          "command": f"ssh {proxy_user}@ssh.runpod.io"}, "direct": direct},
        "template": None, "cost": 0.0, "locked": False, "globalNetworking": {"enabled": False},
        "runtime": {"uptime": 0, "ports": [] if h.proxy_only else
                    [{"private": 22, "public": h.port, "type": "tcp", "ip": h.address}]},
        "createdAt": h.started_at, "startedAt": h.started_at,
    }


def write_pods(root: Path, hosts: list[Any]) -> None:
    ensure_key(root)
    f = pods_file(root)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pods": [pod(h) for h in hosts]}, indent=1))
    os.replace(tmp, f)


def answer(handler: Any, root: Path) -> None:
    """Serve ``GET /v2/pods`` on ``handler`` (a BaseHTTPRequestHandler with ``send``)."""
    given = handler.headers.get("Authorization", "")
    want = "Bearer " + key_file(root).read_text().strip() if key_file(root).is_file() else None
    if not want or not hmac.compare_digest(given.encode(), want.encode()):
        body = json.dumps({"error": "unauthorized", "status": 401}).encode()
        return handler.send(401, body, "application/json", {"WWW-Authenticate": "Bearer"})
    try:
        doc = json.loads(pods_file(root).read_text())
    except (OSError, ValueError):
        doc = {"pods": []}
    now = time.time()
    for p in doc["pods"]:
        started = datetime.fromisoformat(p["startedAt"].replace("Z", "+00:00")).timestamp()
        p["runtime"]["uptime"] = int(now - started)
    return handler.send(200, json.dumps(doc).encode(), "application/json")
