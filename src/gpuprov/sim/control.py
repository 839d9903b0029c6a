"""The lab's verbs for ``tasks.py``, the tests and the bench: the lab of this project, sim-up, sim-down.

A simulated host's key is made by the lab, so it is pinned here (never trusted on first use), and the host is
written to ``inventory/sim.yml`` so every task can name it.
"""

from __future__ import annotations

import base64
import os

import paramiko

from .. import settings
from ..connection import known_hosts
from .lab import Lab, SimHost


def sim_lab() -> Lab:
    return Lab(
        settings.home() / "sim",
        prefix=os.environ.get("GPUPROV_SIM_PREFIX", "gps"),
        subnet=os.environ.get("GPUPROV_SIM_SUBNET", "10.231.0.0/24"),
    )


def sim_up(name: str, gpu: str = "none", systemd: bool = False, gpu_mode: str = "", workspace: bool = False,
           engine: str = "standin") -> SimHost:
    """Start a simulated host, pin its (lab-made) host key, and add it to ``inventory/sim.yml``."""
    lab = sim_lab()
    h = lab.up(name, gpu=gpu, systemd=systemd, gpu_mode=gpu_mode, workspace=workspace, engine=engine)
    kh = known_hosts()
    kh.forget(h.address, 22)
    kh.pin(h.address, paramiko.Ed25519Key(data=base64.b64decode(lab.host_public_key(name))))
    lab.write_inventory(settings.sim_inventory_file())
    return h


def sim_down(name: str | None = None) -> list[str]:
    lab = sim_lab()
    hosts = lab.hosts()
    names = lab.down(name)
    kh = known_hosts()
    for n in names:
        kh.forget(hosts[n].address, 22)
    lab.write_inventory(settings.sim_inventory_file())
    return names
