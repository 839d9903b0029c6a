"""The functions ``tasks.py`` calls. No printing here (that is ``report``); errors are ``GpuprovError``s.

Every multi-host function runs hosts in parallel, one SSH connection per worker thread, and isolates
failures: one host's error is recorded in its ``HostOutcome`` and never stops the others.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from . import settings
from .connection import KnownHosts, open_runner, ssh_config_aliases
from .errors import GpuprovError
from .facts import Facts
from .inventory import Host, Inventory, parse_extra_vars
from .probe import run_probe

T = TypeVar("T")
MAX_PARALLEL = 64


@dataclass(frozen=True)
class HostOutcome:
    host: Host
    value: Any = None
    error: GpuprovError | None = None
    duration_s: float = 0.0
    #: time.monotonic() when this host's work began and ended (shows that hosts overlapped)
    started: float = 0.0
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


# --------------------------------------------------------------------------- inventory


def load_inventory(path: str | Path | None = None) -> Inventory:
    p = Path(path) if path else settings.inventory_path()
    if path is None and not p.exists():
        return Inventory([], settings.defaults())
    return Inventory.from_path(p, settings.defaults())


def select_hosts(pattern: str, inventory: str | Path | None = None, extra_vars: Sequence[str] = ()) -> list[Host]:
    """``--host`` + ``-e key=value`` → hosts with the command-line vars on top."""
    extra = parse_extra_vars(extra_vars)
    hosts = load_inventory(inventory).select(pattern, ssh_config_aliases())
    return [h.with_vars(extra, "command line") if extra else h for h in hosts]


def known_hosts(strict: bool = False) -> KnownHosts:
    return KnownHosts(settings.known_hosts_file(), strict=strict)


def for_each_host(hosts: Iterable[Host], fn: Callable[[Host], T], max_workers: int = MAX_PARALLEL) -> list[HostOutcome]:
    """Run ``fn(host)`` for every host in parallel; outcomes in the hosts' order."""
    hosts = list(hosts)

    def one(h: Host) -> HostOutcome:
        start = time.monotonic()
        try:
            value, error = fn(h), None
        except GpuprovError as e:
            value, error = None, e
        end = time.monotonic()
        return HostOutcome(h, value, error, end - start, start, end)

    if len(hosts) == 1:
        return [one(hosts[0])]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(hosts))) as pool:
        return list(pool.map(one, hosts))


# --------------------------------------------------------------------------- probe


def probe_host(host: Host, strict: bool = False) -> Facts:
    runner = open_runner(host, known_hosts(strict))
    try:
        return run_probe(runner)
    finally:
        runner.close()


def probe(hosts: Iterable[Host], strict: bool = False) -> list[HostOutcome]:
    return for_each_host(hosts, lambda h: probe_host(h, strict))


def forget_host(host: Host) -> bool:
    return known_hosts().forget(host.address, host.port or 22)


# --------------------------------------------------------------------------- simulated lab


def sim_lab():  # noqa: ANN201
    import os

    from .sim.lab import Lab

    return Lab(
        settings.home() / "sim",
        prefix=os.environ.get("GPUPROV_SIM_PREFIX", "gps"),
        subnet=os.environ.get("GPUPROV_SIM_SUBNET", "10.231.0.0/24"),
    )


def sim_up(name: str, gpu: str = "none", systemd: bool = False, gpu_mode: str = "", workspace: bool = False):  # noqa: ANN201
    """Start a simulated host, pin its (lab-made) host key, and add it to ``inventory/sim.yml``."""
    import paramiko

    lab = sim_lab()
    h = lab.up(name, gpu=gpu, systemd=systemd, gpu_mode=gpu_mode, workspace=workspace)
    kh = known_hosts()
    kh.forget(h.address, 22)
    kh.pin(h.address, paramiko.Ed25519Key(data=_b64(lab.host_public_key(name))))
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


def _b64(s: str) -> bytes:
    import base64

    return base64.b64decode(s)
