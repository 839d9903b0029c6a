"""The lab's verbs for ``tasks.py``, the tests and the bench: the lab of this project, sim-up, sim-down.

A simulated host's key is made by the lab, so it is pinned here (never trusted on first use), and the host is
written to ``inventory/sim.yml`` so every task can name it.
"""

from __future__ import annotations

import base64
import os

import paramiko

from .. import settings
from ..connection import KnownHosts, known_hosts
from .lab import Lab, SimHost


def sim_lab() -> Lab:
    return Lab(
        settings.home() / "sim",
        prefix=os.environ.get("GPUPROV_SIM_PREFIX", "gps"),
        subnet=os.environ.get("GPUPROV_SIM_SUBNET", "10.231.0.0/24"),
    )


def _pin(lab: Lab, h: SimHost) -> None:
    """Pin the lab-made key: a pod's under its pod ID (as the runpod source names it), others' per address."""
    kh = known_hosts()
    key = paramiko.Ed25519Key(data=base64.b64decode(lab.host_public_key(h.name)))
    if h.runpod and not h.proxy_only:
        kh.forget(f"runpod-{h.pod_id}", None)
        kh.pin(f"runpod-{h.pod_id}", key, h.started_at)
    else:
        kh.forget(h.address, h.port)
        kh.pin(KnownHosts.key_name(h.address, h.port), key)


def sim_up(name: str, gpu: str = "none", systemd: bool = False, gpu_mode: str = "", workspace: bool = False,
           engine: str = "standin", runpod: bool = False, pod_env: dict | None = None,
           proxy_only: bool = False) -> SimHost:
    """Start a simulated host, pin its (lab-made) host key, and add it to ``inventory/sim.yml`` (a pod: to
    ``inventory/sim-runpod.yml``, through the stand-in RunPod API)."""
    lab = sim_lab()
    h = lab.up(name, gpu=gpu, systemd=systemd, gpu_mode=gpu_mode, workspace=workspace, engine=engine,
               runpod=runpod, pod_env=pod_env, proxy_only=proxy_only)
    _pin(lab, h)
    lab.write_inventory(settings.sim_inventory_file())
    return h


def sim_reset(name: str) -> SimHost:
    """Reset a pod as RunPod does (new key, new port, only /workspace kept). Its pin is left alone: finding the
    new key and re-pinning it because the pod restarted is gpuprov's job, and what this is for."""
    lab = sim_lab()
    h = lab.reset(name)
    lab.write_inventory(settings.sim_inventory_file())
    return h


def sim_down(name: str | None = None) -> list[str]:
    lab = sim_lab()
    hosts = lab.hosts()
    names = lab.down(name)
    kh = known_hosts()
    for n in names:  # every key the host had, so the next host at its address starts clean
        kh.forget(hosts[n].address, None)
        if hosts[n].pod_id:
            kh.forget(f"runpod-{hosts[n].pod_id}", None)
    lab.write_inventory(settings.sim_inventory_file())
    return names
