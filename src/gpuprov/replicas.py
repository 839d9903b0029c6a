"""A replicas deployment from the controller: one tunnel per replica and the vLLM project's router in front
(``invoke tunnel --host GROUP``), and each replica's state and load (``invoke status --host GROUP``).

Each replica is provisioned as a single host; nothing here changes a host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import router
from .connection import known_hosts, open_runner
from .deployment import Deployment, DeploymentStatus, NodeStatus, deployment_state
from .errors import UsageError
from .fleet import for_each_host
from .inventory import Host
from .status import read_status

WORKER_PORT_BASE = 18100


@dataclass
class GroupTunnel:
    """The router on ``port`` and the replicas' tunnels it sends to; ``skipped``: replicas not ready at start
    (still in the router's list: they join the rotation once they answer)."""
    dep: Deployment
    router: router.Router
    tunnels: list[Any] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.router.base_url

    @property
    def router_version(self) -> str:
        return router.VERSION

    def stop(self) -> None:
        self.router.stop()
        for t in self.tunnels:
            t.stop()


def _shared_key(dep: Deployment) -> None:
    """The router forwards the client's Authorization header to every replica: they need one key."""
    from . import settings

    keys: dict[str, str | None] = {}
    for h in dep.hosts:
        given = h.var("api_key")
        if given:
            keys[h.name] = str(given.reveal() if hasattr(given, "reveal") else given)
        elif settings.api_key_file(h.name).is_file():
            keys[h.name] = settings.api_key_file(h.name).read_text().strip()
        else:
            keys[h.name] = None
    if len(set(keys.values())) > 1:
        raise UsageError(f"the replicas of {dep.name} have different API keys (or some none): the router forwards "
                         "the client's key to every replica, so set one api_key in the group's vars and provision "
                         "again")


def open_group_tunnel(dep: Deployment, open_tunnel: Any, engine_ready: Any, port: int | None = None,
                      next_free: bool = False, transport: str = "auto", inventory: str | Path | None = None,
                      note: Any = None) -> GroupTunnel:
    """``open_tunnel`` and ``engine_ready``: the facade's (api.py), which know the inventory."""
    from .tunnel import pick_port

    _shared_key(dep)
    exe = router.ensure(note)  # before any tunnel: a machine that cannot run the router fails here
    assert exe
    tunnels, workers, skipped = [], {}, {}
    try:
        for i, h in enumerate(dep.hosts):
            why = engine_ready(h, int(h.var("engine_port", 8000)))
            if why:
                skipped[h.name] = why
            t = open_tunnel(h, pick_port(WORKER_PORT_BASE + i, True), next_free=True, transport=transport,
                            check_ready=False, inventory=inventory)
            tunnels.append(t)
            workers[f"http://127.0.0.1:{t.local_port}"] = h.name
        if len(skipped) == len(dep.hosts):
            raise UsageError(f"no replica of {dep.name} is ready ({'; '.join(f'{n}: {w}' for n, w in skipped.items())})"
                             f"; run `invoke provision --host {dep.name}`")
        r = router.Router.start(dep.name, pick_port(int(port or 8000), next_free), workers)
    except BaseException:
        for t in tunnels:
            t.stop()
        raise
    return GroupTunnel(dep, r, tunnels, skipped)


def status(dep: Deployment) -> DeploymentStatus:
    def one(h: Host) -> NodeStatus:
        r = open_runner(h, known_hosts())
        try:
            return NodeStatus(h.name, "replica", None, None, None, read_status(r)[0])
        finally:
            r.close()

    rotation = router.rotation(dep.name)
    rows = []
    for o in for_each_host(dep.hosts, one):
        row = o.value if o.value is not None else NodeStatus(o.host.name, "replica", None, None, None, None,
                                                             error=str(o.error))
        if rotation is not None:
            row.in_rotation = rotation.get(row.host, False)
        rows.append(row)
    return DeploymentStatus(dep.name, dep.kind, deployment_state(dep.kind, rows), rows)
