"""The functions ``tasks.py`` calls: a facade. No printing here (that is ``report``).

Every multi-host function runs hosts in parallel (``fleet.for_each_host``) and isolates failures: one host's
error is kept, as the exception itself, in its ``HostOutcome`` and never stops the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import remote, settings
from .connection import known_hosts, open_runner, ssh_config_aliases
from .errors import UsageError
from .executor import HostRun, RunOptions, apply_one, run_play, service_op, template_dirs
from .fleet import EXIT_FAILED, EXIT_OK, HostOutcome, for_each_host
from .inventory import Host, Inventory, filter_hosts, parse_extra_vars
from .layout import HostLayout
from .playbook import load_playbook
from .templating import Templar

if TYPE_CHECKING:
    from .facts import Facts
    from .plan import Plan

# The planner, the probe, readiness, status and the tunnel are imported by the functions that use them: `invoke
# play` (and `inventory`, `forget-host`) start without them, ~50 ms sooner on a small VM.

__all__ = ["HostOutcome", "api_key_path", "control", "forget_host", "known_hosts", "load_inventory", "open_tunnel",
           "provision",
           "models_fit", "plan", "plan_offline", "play", "probe", "select_hosts", "status", "stream_logs", "teardown"]


# --------------------------------------------------------------------------- inventory


def load_inventory(path: str | Path | None = None) -> Inventory:
    p = Path(path) if path else settings.inventory_path()
    if path is None and not p.exists():
        return Inventory([], settings.defaults())
    return Inventory.from_path(p, settings.defaults())


def select_hosts(pattern: str, inventory: str | Path | Inventory | None = None, extra_vars: Sequence[str] = (),
                 playbook: str | Path | None = None) -> list[Host]:
    """``--host`` + ``-e`` → hosts with the command-line vars on top (and, for a playbook, the group_vars/ and
    host_vars/ beside it)."""
    extra = parse_extra_vars(extra_vars)
    pdir = Path(playbook).resolve().parent if playbook else None
    inv = inventory if isinstance(inventory, Inventory) else load_inventory(inventory)
    hosts = inv.select(pattern, ssh_config_aliases(), pdir)
    return [h.with_vars(extra, "command line") if extra else h for h in hosts]


def select_targets(pattern: str, inventory: str | Path | Inventory | None = None, extra_vars: Sequence[str] = (),
                   whole: bool = True) -> tuple[list[Host], list[Any]]:
    """``--host`` as single hosts and deployments (groups whose vars set ``deployment``: multinode or replicas);
    with ``whole``, a node of a multinode deployment may only be named with the rest of it."""
    from .deployment import split

    inv = inventory if isinstance(inventory, Inventory) else load_inventory(inventory)
    if any(v.startswith("deployment=") for v in extra_vars):
        raise UsageError("deployment is a group var: put the hosts that serve together in a group and set "
                         "deployment in that group's vars (not with -e)")
    return split(inv, select_hosts(pattern, inv, extra_vars), whole=whole)


# --------------------------------------------------------------------------- probe and plan


def probe_host(host: Host, strict: bool = False) -> Facts:
    from .probe import run_probe

    runner = open_runner(host, known_hosts(strict))
    try:
        return run_probe(runner)
    finally:
        runner.close()


def probe(hosts: Iterable[Host], strict: bool = False) -> list[HostOutcome[Facts]]:
    return for_each_host(hosts, lambda h: probe_host(h, strict))


def plan(hosts: Iterable[Host], strict: bool = False) -> list[HostOutcome[Plan]]:
    """Probe and plan each host."""
    from .plan import engine_vars
    from .provision import plan_for

    hosts = list(hosts)
    for h in hosts:
        engine_vars(h)  # absurd values: a clear error before connecting anywhere
    return for_each_host(hosts, lambda h: plan_for(h, probe_host(h, strict)))


def plan_deployments(deployments: Sequence[Any], strict: bool = False) -> list[Any]:
    """Probe every node of each multinode deployment and plan it as one engine (no change on any host)."""
    from .deployment import plan_multinode
    from .plan import with_pod_env
    from .provision import hf_token_for, resolve_spec

    out = []
    for d in deployments:
        facts: dict[str, Facts] = {}
        for o in probe(d.hosts, strict):
            if o.value is None:
                raise o.error or UsageError(f"{o.host.name}: the probe gave nothing")
            facts[o.host.name] = o.value
        spec, err = resolve_spec(with_pod_env(d.host(d.head), facts[d.head]))
        out.append(plan_multinode(d, facts, spec, err, hf_token=hf_token_for(facts[d.head]) is not None))
    return out


def _offline_hosts(facts_file: str, pattern: str | None, inventory: str | Path | None,
                   extra_vars: Sequence[str]) -> tuple[list[Host], dict[str, Facts]]:
    """The hosts ``--facts FILE`` stands for: every host in the file (with default vars), or, with ``--host``, the
    selected inventory hosts, each with its own facts from the file (a host the file does not describe is an
    error)."""
    from .plan import engine_vars
    from .probe import read_facts_file

    facts = read_facts_file(facts_file)
    by_name = {f.host: f for f in facts}
    if pattern:
        hosts = select_hosts(pattern, inventory, extra_vars)
        missing = [h.name for h in hosts if h.name not in by_name]
        if missing:
            raise UsageError(f"--facts {facts_file} has no facts for {', '.join(missing)} (it describes "
                             f"{', '.join(by_name)}); probe them with `invoke probe --host H --json >> {facts_file}`")
    else:
        extra = parse_extra_vars(extra_vars)
        base = [Host(name=f.host, address="offline", groups=("all",), vars=settings.frozen(settings.defaults()))
                for f in facts]
        hosts = [h.with_vars(extra, "command line") if extra else h for h in base]
    for h in hosts:
        engine_vars(h)
    return hosts, by_name


def plan_offline(facts_file: str, pattern: str | None = None, inventory: str | Path | None = None,
                 extra_vars: Sequence[str] = ()) -> list[HostOutcome[Plan]]:
    """``invoke plan --facts FILE``: plan from recorded facts, without connecting anywhere."""
    from .provision import plan_for

    hosts, by_name = _offline_hosts(facts_file, pattern, inventory, extra_vars)
    return for_each_host(hosts, lambda h: plan_for(h, by_name[h.name]))


@dataclass(frozen=True)
class CatalogFit:
    """``invoke models --fit``: what each catalog model would get on one host (exit 0 even when none fits)."""

    facts: Facts
    plans: list[Plan]


def models_fit(pattern: str | None, inventory: str | Path | None = None, extra_vars: Sequence[str] = (),
               facts_file: str | None = None) -> list[HostOutcome[CatalogFit]]:
    """Probe each host (or read its facts from ``facts_file``) and plan every catalog model for it."""
    from .plan import fit_catalog

    token = bool(os.environ.get("HF_TOKEN"))
    if facts_file:
        hosts, by_name = _offline_hosts(facts_file, pattern, inventory, extra_vars)
        return for_each_host(hosts, lambda h: CatalogFit(by_name[h.name], fit_catalog(by_name[h.name], h, token)))
    hosts = select_hosts(pattern or "", inventory, extra_vars)

    def one(h: Host) -> CatalogFit:
        facts = probe_host(h)
        return CatalogFit(facts, fit_catalog(facts, h, token))

    return for_each_host(hosts, one)


def provision_targets(singles: Sequence[Host], deployments: Sequence[Any], **kw: Any) -> list:
    """Single hosts and replicas as before (in parallel); each multinode deployment as a whole. Returns one
    ProvisionResult per host (a deployment's refusal: one, named after the group)."""
    from . import multinode
    from .deployment import check_replicas
    from .provision import ProvisionResult

    hosts = list(singles)
    for d in deployments:
        if d.kind == "replicas":
            check_replicas(d)
            hosts += [h.with_vars({"deployment_group": d.name}, f"deployment {d.name}") for h in d.hosts]
    from .plan import engine_vars
    from .provision import local_model_refusal

    for h in (h for d in deployments if d.kind == "multinode" for h in d.hosts):
        refusal = local_model_refusal(engine_vars(h).model)  # absurd values fail before any connection
        if refusal:
            raise UsageError(f"{h.name}: {refusal}")
    out = provision(hosts, **kw) if hosts else []
    for d in (d for d in deployments if d.kind == "multinode"):
        g = multinode.run(d, **kw)
        if g.refused or (g.error and not g.nodes):
            out.append(ProvisionResult(d.name, refused=g.refused, recap=None if g.refused else
                                       _error_recap(d.name, g.error)))
            continue
        out += g.nodes
        if g.error:
            out.append(ProvisionResult(d.name, recap=_error_recap(d.name, g.error)))
    return out


def _error_recap(name: str, error: str | None) -> Any:
    from .errors import RemoteError
    from .executor import HostRecap

    return HostRecap.of_error(name, RemoteError(error or "failed"))


def provision(hosts: Sequence[Host], **kw: Any) -> list:
    """``invoke provision`` (``provision.provision``): probe, plan, play, readiness, roll-back, per host."""
    from .provision import provision as run

    return run(hosts, **kw)


def forget_host(host: Host) -> bool:
    """Forget a host's pinned key: the one pinned for its alias (a RunPod pod's ID), else for its address."""
    alias = host.var("host_key_alias")
    if alias:
        return known_hosts().forget(str(alias), None)
    return known_hosts().forget(host.address, host.port or 22)


# --------------------------------------------------------------------------- playbooks


def play(playbook: str | Path, hosts: Sequence[Host], check: bool = False, diff: bool = False,
         tags: Sequence[str] = (), on_event=None, strict: bool = False, skip_tags: Sequence[str] = (),
         forks: int | None = None):  # noqa: ANN001, ANN201
    """Run a playbook's plays, each on those of ``hosts`` its ``hosts:`` pattern names (``hosts`` is the
    ``--host``/``--limit`` selection); set_fact and registered vars carry from one play to the next."""
    path = Path(playbook)
    plays = load_playbook(path)
    templar = Templar(template_dirs(path))
    opts = RunOptions(check=check, diff=diff, tags=tuple(tags), skip_tags=tuple(skip_tags), on_event=on_event)
    recaps: dict[str, Any] = {}
    store: dict[str, dict[str, Any]] = {}
    for p in plays:
        targets = filter_hosts(p.hosts, hosts)
        rs = run_play(p, targets, lambda h: open_runner(h, known_hosts(strict)), lambda h, r: None,
                      lambda h, r, f: {}, templar, opts, max_workers=forks, host_vars=store)
        for r in rs:
            if r.host in recaps:
                recaps[r.host].merge(r)
            else:
                recaps[r.host] = r
    return list(recaps.values())


# --------------------------------------------------------------------------- tunnel


def engine_ready(host: Host, port: int) -> str | None:
    """None when the engine on ``host`` answers /health; else the reason."""
    runner = open_runner(host, known_hosts())
    try:
        out = remote.run(runner, "engine_health", port, timeout=20).stdout.strip()
        return None if out == "ok" else out or "no answer"
    finally:
        runner.close()


def open_tunnel(host: Host, local_port: int | None = None, remote_port: int | None = None, next_free: bool = False,
                transport: str = "auto", check_ready: bool = True,
                inventory: str | Path | None = None):  # noqa: ANN201
    from .tunnel import Tunnel, pick_port

    engine_port = int(remote_port or host.var("engine_port", 8000))
    if check_ready:
        why = engine_ready(host, engine_port)
        if why:
            raise UsageError(f"{host.name}: the engine on port {engine_port} is not ready ({why}); "
                             f"run `invoke provision --host {host.name}` or `invoke status --host {host.name}`")
    port = pick_port(int(local_port or engine_port), next_free)
    # a RunPod pod's endpoint moves at a reset: each reconnect asks the inventory (the API) where it is now
    resolve = (lambda: load_inventory(inventory).host(host.name)) if host.var("runpod_pod_id") else None
    return Tunnel(host, port, engine_port, settings.known_hosts_file(), transport, resolve=resolve).start()


def open_replicas(dep: Any, local_port: int | None = None, next_free: bool = False, transport: str = "auto",
                  inventory: str | Path | None = None, note: Any = None):  # noqa: ANN201
    """A replicas deployment behind one local endpoint: a tunnel per replica, vllm-router in front."""
    from .replicas import open_group_tunnel

    return open_group_tunnel(dep, open_tunnel, engine_ready, local_port, next_free, transport, inventory, note)


def api_key_path(host: Host) -> Path | None:
    p = settings.api_key_file(host.name)
    return p if p.is_file() else None


# --------------------------------------------------------------------------- status, control, logs, teardown


def status(hosts: Sequence[Host]) -> list[HostOutcome]:
    from .status import read_status

    def one(h: Host):  # noqa: ANN202
        r = open_runner(h, known_hosts())
        try:
            return read_status(r)[0]
        finally:
            r.close()

    return for_each_host(hosts, one)


def deployment_status(deployments: Sequence[Any]) -> list[Any]:
    """Each deployment's status: one row per node (multinode) or replica, and its state."""
    from . import multinode, replicas

    return [(multinode.status if d.kind == "multinode" else replicas.status)(d) for d in deployments]


def control_deployments(deployments: Sequence[Any], action: str, timeout: float = 1800) -> list[Any]:
    """start | stop | restart each multinode deployment as a whole (stop every node; start them together)."""
    from . import multinode

    return [GroupControl(d.name, action, dict(multinode.control(d, action, timeout))) for d in deployments]


@dataclass(frozen=True)
class GroupControl:
    group: str
    action: str
    nodes: dict

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if any(r is not None and not r.ready for r in self.nodes.values()) else EXIT_OK


@dataclass(frozen=True)
class ControlResult:
    changed: bool
    #: the readiness check's result (start/restart), None for stop
    ready: Any = None

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.ready is not None and not self.ready.ready else EXIT_OK


def control(hosts: Sequence[Host], action: str, wait: bool = True, timeout: float = 900) -> list[HostOutcome]:
    """start | stop | restart the engine; start/restart wait for readiness (a real completion)."""
    from .health import wait_ready
    from .status import read_status


    if action not in ("start", "stop", "restart"):
        raise UsageError(f"unknown action {action!r}")

    def one(h: Host) -> ControlResult:
        r = open_runner(h, known_hosts())
        try:
            st, raw = read_status(r)
            if st.service == "not-installed":
                raise UsageError(f"{h.name}: nothing provisioned here (no state.json); run `invoke provision` first")
            s = raw["state"]
            lay = HostLayout.from_state(s, raw["root"])
            state = {"start": "started", "stop": "stopped", "restart": "restarted"}[action]
            changed = apply_one(r, service_op(lay, s["service_manager"], state, action))
            ready = None
            if wait and action != "stop":
                ready = wait_ready(r, manager=s["service_manager"], unit=lay.service, log=lay.log,
                                   pidfile=lay.pidfile, port=s["engine_port"], env_file=lay.env_file,
                                   model=s["model"], timeout=timeout)
            return ControlResult(changed, ready)
        finally:
            r.close()

    return for_each_host(hosts, one)


def logs_argv(state: dict, lines: int, follow: bool) -> list[str]:
    if state["service_manager"] == "systemd":
        return ["journalctl", "-u", state["service"], "--no-pager", "-o", "cat", "-n", str(lines)] + (["-f"] * follow)
    return ["tail", "-n", str(lines)] + (["-F"] if follow else []) + [state["log"]]


def stream_logs(host: Host, lines: int, follow: bool, write) -> None:  # noqa: ANN001
    """Print the engine's log (journal or supervisor log); with follow, until interrupted."""
    r = open_runner(host, known_hosts())
    try:
        from .status import read_status

        st, raw = read_status(r)
        if st.service == "not-installed":
            raise UsageError(f"{host.name}: nothing provisioned here")
        argv = logs_argv(raw["state"], lines, follow)
        if not follow:
            write(r.run(argv, timeout=60).stdout)
            return
        stream = r.open_stream(argv)
        try:
            while True:
                data = stream.recv(65536, 1.0)
                if data == b"":
                    break
                if data:
                    write(data.decode("utf-8", "replace"))
        finally:
            stream.close()
    finally:
        r.close()


def teardown(hosts: Sequence[Host], purge: bool = False, on_event=None) -> list[HostOutcome]:  # noqa: ANN001
    path = settings.project_file("playbooks/teardown.yml")
    play_ = load_playbook(path)[0]

    def one(h: Host):  # noqa: ANN202
        r = open_runner(h, known_hosts())
        try:
            from .status import read_status

            st, raw = read_status(r)
            if st.service == "not-installed":
                return None
            s = raw["state"]
            lay = HostLayout.from_state(s, raw["root"])
            unit_exists = s["service_manager"] == "systemd" and st.service != "unknown"
            extra = {"st": s, "root": lay.root, "lay": lay, "purge": purge, "unit_exists": unit_exists}
            recap = HostRun(play_, h, r, None, extra, Templar(template_dirs(path)), RunOptions(on_event=on_event)).run()
            if not recap.failed:
                kf = settings.api_key_file(h.name)
                if kf.exists():
                    kf.unlink()
            return recap
        finally:
            r.close()

    return for_each_host(hosts, one)
