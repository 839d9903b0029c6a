"""Beyond one host: which hosts serve together, and the plan of a multinode engine. Pure: no connection here.

An inventory group whose own vars set ``deployment`` makes its hosts one deployment:

- ``multinode``: one vLLM engine across the hosts (vLLM's own multi-node runtime: ``--nnodes N --node-rank i
  --master-addr HEAD --master-port P``, ``--headless`` on every node but the head). The head is the group's
  ``head`` var, else its first host. Tensor parallel over each node's GPUs, pipeline parallel across the nodes.
- ``replicas``: one engine per host (each provisioned as a single host), one endpoint in front (vllm-router).

``single`` (the default) is one engine per host with nothing in front, as before.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import UsageError
from .facts import GPU, Facts
from .fleet import EXIT_FAILED, EXIT_OK
from .inventory import Host, Inventory
from .models import ModelSpec
from .plan import Plan, _devices, engine_vars, make_plan, with_pod_env
from .status import EngineStatus

KINDS = ("single", "multinode", "replicas")
DEFAULT_MASTER_PORT = 29501  # vLLM's own default
#: flags the multinode plan owns on every node (extra_serve_args may not set them)
MULTINODE_FLAGS = ("--distributed-executor-backend", "--nnodes", "--node-rank", "--master-addr", "--master-port",
                   "--headless", "--data-parallel-size")


@dataclass(frozen=True)
class Deployment:
    """Hosts that serve together: ``hosts`` in the group's declaration order, ``head`` one of them (multinode)."""
    name: str
    kind: str
    hosts: tuple[Host, ...]
    head: str

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    @property
    def followers(self) -> list[Host]:
        return [h for h in self.hosts if h.name != self.head]

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def rank(self, name: str) -> int:
        """The node rank: 0 for the head, then the others in declaration order."""
        order = [self.head] + [h.name for h in self.followers]
        return order.index(name)


def kind_of(host: Host) -> str:
    v = host.vars.get("deployment")
    kind = v.value if v is not None and v.value not in (None, "") else "single"
    if kind not in KINDS:
        raise UsageError(f"deployment{f' (from {v.source})' if v else ''}: expected one of {', '.join(KINDS)}, "
                         f"got {kind!r}")
    return kind


def split(inv: Inventory, hosts: Sequence[Host], whole: bool = True,
          playbook_dir: Path | None = None) -> tuple[list[Host], list[Deployment]]:
    """The selected hosts as single hosts and deployments. A deployment is the group that sets ``deployment``
    itself; with ``whole``, a multinode deployment must be selected as a whole (a node cannot be provisioned,
    started or stopped alone), and its members get the same command-line vars as the selection."""
    singles: list[Host] = []
    found: dict[str, Deployment] = {}
    by_name = {h.name: h for h in hosts}
    for h in hosts:
        kind = kind_of(h)
        if kind == "single":
            singles.append(h)
            continue
        var = h.vars["deployment"]
        declared = {g: v for g in h.groups if g != "all"
                    and (v := inv.group_var(g, "deployment", playbook_dir)) is not None
                    and v.value in ("multinode", "replicas")}
        groups = list(declared)
        if not groups or var.source == "command line" or not any(var.source == v.source for v in declared.values()):
            raise UsageError(f"{h.name}: deployment {kind} (from {var.source}) is a group var: put the hosts that "
                             "serve together in a group and set deployment in that group's vars")
        if len(groups) > 1:
            kinds = ", ".join(f"{g} ({v.value})" for g, v in declared.items())
            raise UsageError(f"{h.name} is in more than one deployment: {kinds}; a host serves in one")
        group = groups[0]
        if group in found:
            continue
        members = inv.members(group)
        missing = [m for m in members if m not in by_name]
        if kind == "replicas" and missing:  # some replicas named: each is a single host (no router in front)
            singles.append(h)
            continue
        if kind == "multinode" and missing and whole:
            raise UsageError(f"{', '.join(missing)} belong{'s' * (len(missing) == 1)} to multinode deployment "
                             f"{group} too: act on the whole with --host {group}")
        extra = {k: v.value for k, v in h.vars.items() if v.source == "command line"}
        nodes = tuple(by_name[m] if m in by_name else inv.host(m, playbook_dir).with_vars(extra, "command line")
                      for m in members if m in by_name or kind == "multinode")
        head_var = inv.group_var(group, "head", playbook_dir)
        head = str(head_var.value) if head_var is not None and head_var.value else members[0]
        if head not in members:
            raise UsageError(f"head (from {head_var.source if head_var else '?'}): {head!r} is not a host of "
                             f"group {group} ({', '.join(members)})")
        if kind == "multinode" and len(members) < 2:
            raise UsageError(f"multinode deployment {group} has one host ({members[0]}): a single host needs no "
                             "deployment: multinode")
        if kind == "multinode":
            master_port(next(n for n in nodes if n.name == head))  # a bad port: refused before connecting
        found[group] = Deployment(group, kind, nodes, head)
    return singles, list(found.values())


def check_replicas(dep: Deployment) -> None:
    """Replicas behind one router serve one model under one name (the router forwards ``model`` unchanged)."""
    served = {}
    for h in dep.hosts:
        ev = engine_vars(h)
        served[h.name] = (ev.model, ev.served_model_name or ev.model)
    if len(set(served.values())) > 1:
        shown = ", ".join(f"{n} serves {m[1]}" for n, m in served.items())
        raise UsageError(f"the replicas of {dep.name} must serve one model under one name ({shown}): set model "
                         "(and served_model_name) in the group's vars")


# --------------------------------------------------------------------------- status of a deployment


@dataclass
class NodeStatus:
    host: str
    role: str | None
    rank: int | None
    address: str | None
    interface: str | None
    engine: EngineStatus | None
    error: str | None = None
    #: a replica: in the router's rotation (None without a running router)
    in_rotation: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "role": self.role, "rank": self.rank, "address": self.address,
                "interface": self.interface, "error": self.error, "in_rotation": self.in_rotation,
                **({"engine": self.engine.to_json()} if self.engine else {})}


@dataclass
class DeploymentStatus:
    name: str
    kind: str
    state: str  # ready | degraded | down
    nodes: list[NodeStatus]

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.state == "ready" else EXIT_FAILED

    def to_json(self) -> dict[str, Any]:
        return {"deployment": self.name, "kind": self.kind, "state": self.state,
                "nodes": [n.to_json() for n in self.nodes]}


def deployment_state(kind: str, rows: Sequence[NodeStatus]) -> str:
    """Multinode: ready when every node's engine is active and the head answers; down when the head's engine is
    not running (nothing serves); degraded in between (a follower gone: the head cannot serve for long).
    Replicas: ready when every replica answers (and is in the router's rotation), down when none does."""
    if kind == "replicas":
        up = [r for r in rows if r.engine is not None and r.engine.ready and r.in_rotation is not False]
        return "ready" if len(up) == len(rows) and rows else "down" if not up else "degraded"
    head = next((r for r in rows if r.role == "head"), rows[0] if rows else None)
    if head is None or head.engine is None or head.engine.service != "active":
        return "down"
    if head.engine.ready and all(r.engine is not None and r.engine.service == "active" for r in rows):
        return "ready"
    return "degraded"


# --------------------------------------------------------------------------- the multinode plan


@dataclass(frozen=True)
class GroupPlan:
    """The plan of a multinode deployment: one Plan per node (the same build and serve flags on every node,
    plus each node's rank), or a refusal with the reason and what would work."""
    ok: bool
    group: str
    model: str
    nodes: Mapping[str, Plan] = field(default_factory=dict)
    reason: str | None = None
    ways_out: tuple[str, ...] = ()
    why: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    head: str = ""
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 2

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "group": self.group, "deployment": "multinode", "model": self.model,
                "head": self.head, "reason": self.reason, "ways_out": list(self.ways_out), "why": list(self.why),
                "warnings": list(self.warnings), "tensor_parallel_size": self.tensor_parallel_size,
                "pipeline_parallel_size": self.pipeline_parallel_size, "master_port": self.master_port,
                "nodes": {n: p.to_json() for n, p in self.nodes.items()}}


def _gpu_kind(gpus: Iterable[GPU]) -> str:
    gpus = list(gpus)
    return f"{len(gpus)} × {gpus[0].name} ({gpus[0].memory_total_mib} MiB)" if gpus else "no GPU"


def _build_of(p: Plan) -> tuple:
    return (p.vllm_version, p.cuda_variant, p.torch_version, p.python)


def _build_text(p: Plan) -> str:
    return f"vLLM {p.vllm_version} ({p.cuda_variant}, torch {p.torch_version}, Python {p.python})"


def master_port(host: Host) -> int:
    v = host.vars.get("master_port")
    if v is None or v.value in (None, ""):
        return DEFAULT_MASTER_PORT
    if isinstance(v.value, bool) or not str(v.value).isdigit() or not 1024 <= int(v.value) <= 65535:
        raise UsageError(f"master_port (from {v.source}): expected a port between 1024 and 65535, got {v.value!r}")
    return int(v.value)


class _Refused(Exception):
    def __init__(self, reason: str, ways: Sequence[str] = (), why: Sequence[str] = ()):
        super().__init__(reason)
        self.reason, self.ways, self.why = reason, tuple(ways), tuple(why)


#: the vars that must be the same on every node of one engine
SAME_ON_EVERY_NODE = ("model", "max_model_len", "tensor_parallel_size", "pipeline_parallel_size", "kv_cache_dtype",
                      "served_model_name", "enforce_eager", "vllm_version", "gpu_memory_utilization", "max_num_seqs",
                      "max_num_batched_tokens", "extra_serve_args")


def plan_multinode(dep: Deployment, facts: Mapping[str, Facts], spec: ModelSpec | None,
                   model_error: str | None = None, hf_token: bool | None = None) -> GroupPlan:
    """One engine across the deployment's nodes: the same vLLM build must fit every node, the same GPUs on each,
    tensor parallel = GPUs per node and pipeline parallel = nodes unless the vars say otherwise, and the model
    checked against the nodes' memory together. Each node's plan has the multinode flags; the rendezvous address
    and the interfaces come later, from the preflight (``bind_network``)."""
    hosts = [with_pod_env(h, facts[h.name]) for h in dep.hosts]
    evs = {h.name: engine_vars(h) for h in hosts}
    base: dict[str, Any] = {"group": dep.name, "model": evs[dep.head].model, "head": dep.head}
    try:
        _check_vars(dep, evs)
        gpus, tp, pp, why, warnings = _topology(dep, facts, evs, spec)
        plans = _node_plans(dep, hosts, facts, gpus, tp, pp, spec, model_error, hf_token, why)
    except _Refused as r:
        return GroupPlan(False, reason=r.reason, ways_out=r.ways, why=r.why, **base)
    port = master_port(next(h for h in hosts if h.name == dep.head))
    n_nodes, per_node = len(hosts), tp * pp // len(hosts)
    out: dict[str, Plan] = {}
    for h in hosts:
        p, rank = plans[h.name], dep.rank(h.name)
        extra = ["--distributed-executor-backend", "mp", "--nnodes", str(n_nodes), "--node-rank", str(rank),
                 "--master-port", str(port)] + (["--headless"] if rank else [])
        env = dict(p.env)
        if evs[h.name].gpu_indices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g.index) for g in gpus[h.name][:per_node])
        out[h.name] = replace(p, serve_args=tuple(p.serve_args) + tuple(extra), env=env, deployment="multinode",
                              group=dep.name, role="head" if rank == 0 else "follower", node_rank=rank,
                              nnodes=n_nodes, master_port=port,
                              why=tuple(why) + tuple(p.why), warnings=tuple(warnings) + tuple(p.warnings))
    hp = out[dep.head]
    return GroupPlan(True, nodes=out, why=hp.why, warnings=hp.warnings, tensor_parallel_size=tp,
                     pipeline_parallel_size=pp, master_port=port, **base)


def _check_vars(dep: Deployment, evs: Mapping[str, Any]) -> None:
    dcs = {h.name: h.var("runpod_datacenter") for h in dep.hosts}
    if all(dcs.values()) and len(set(dcs.values())) > 1:
        shown = ", ".join(f"{n} in {dc}" for n, dc in dcs.items())
        raise _Refused(f"RunPod pods in different data centres cannot reach each other over a private network "
                       f"({shown}): a multinode engine needs its nodes in one", (
                           "deployment: replicas (each pod serves on its own, vllm-router in front)",
                           "pods in one data centre (name_filter or group_by: [datacenter] in the runpod source)"))
    hev = evs[dep.head]
    for name, ev in evs.items():
        for var in SAME_ON_EVERY_NODE:
            mine, theirs = getattr(ev, var), getattr(hev, var)
            if mine != theirs:
                raise _Refused(f"{var} is {mine!r} on {name} but {theirs!r} on the head {dep.head}: one engine "
                               "across hosts has one value; set it in the group's vars")
    if hev.data_parallel_size and hev.data_parallel_size > 1:
        raise _Refused("data_parallel_size > 1 in a multinode deployment: vLLM's multi-node data parallel is for "
                       "mixture-of-experts models; for more throughput, serve replicas instead",
                       ("deployment: replicas (one engine per host, vllm-router in front)",))
    owned = [a for a in hev.extra_serve_args if a.split("=")[0] in MULTINODE_FLAGS]
    if owned:
        raise _Refused(f"extra_serve_args sets {', '.join(owned)}: gpuprov sets it for every node of a multinode "
                       "deployment")


def _topology(dep: Deployment, facts: Mapping[str, Facts], evs: Mapping[str, Any], spec: ModelSpec | None
              ) -> tuple[dict[str, list[GPU]], int, int, list[str], list[str]]:
    """Each node's GPUs (the same on all), tensor parallel and pipeline parallel, with the why and warnings."""
    hev = evs[dep.head]
    gpus = {h.name: _devices(facts[h.name], evs[h.name])[0] for h in dep.hosts}
    sigs = {n: tuple((g.name, g.memory_total_mib) for g in gs) for n, gs in gpus.items()}
    if len(set(sigs.values())) > 1:
        shown = ", ".join(f"{n} has {_gpu_kind(gs)}" for n, gs in gpus.items())
        raise _Refused(f"{shown}: multinode needs the same GPU model and count on every node",
                       ("group hosts with the same GPUs", "gpu_indices on the larger hosts to use as many GPUs",
                        "deployment: replicas, where each host serves on its own"))
    if any(g.mig_mode == "Enabled" for gs in gpus.values() for g in gs):
        raise _Refused("MIG is enabled: a MIG slice cannot take part in a multinode engine",
                       ("disable MIG (nvidia-smi -mig 0) on the nodes",))
    n_nodes, per = len(dep.hosts), len(gpus[dep.head])
    if not per:
        raise _Refused(f"{dep.head} has no GPU selected", ("check gpu_indices",))
    tp = hev.tensor_parallel_size or per
    pp = hev.pipeline_parallel_size or max(1, n_nodes * per // tp)
    world = tp * pp
    if world % n_nodes:
        raise _Refused(f"tensor parallel {tp} × pipeline parallel {pp} = world size {world} is not divisible by "
                       f"the {n_nodes} nodes (vLLM requires each node to run the same number of ranks)",
                       (f"pipeline_parallel_size={n_nodes} with tensor_parallel_size={per}",))
    if world // n_nodes > per:
        raise _Refused(f"world size {world} over {n_nodes} nodes is {world // n_nodes} ranks per node, but each "
                       f"node has {per} GPU(s)", (f"tensor_parallel_size={per} pipeline_parallel_size={n_nodes}",))
    if spec is not None and spec.layers_full + spec.layers_sliding < pp:
        raise _Refused(f"pipeline parallel {pp} needs at least {pp} layers; {spec.name} has "
                       f"{spec.layers_full + spec.layers_sliding}")
    why = [f"multinode {dep.name}: {n_nodes} nodes × {_gpu_kind(gpus[dep.head])}: tensor parallel {tp}"
           + (" (as set)" if hev.tensor_parallel_size else " (the GPUs of one node)")
           + f" × pipeline parallel {pp}" + (" (as set)" if hev.pipeline_parallel_size else " (one stage per node)")
           + f"; head {dep.head} (rank 0)"]
    warnings = [f"each node runs {world // n_nodes} of its {per} GPUs; the others stay idle"] \
        if world // n_nodes < per else []
    return gpus, tp, pp, why, warnings


def _node_plans(dep: Deployment, hosts: list[Host], facts: Mapping[str, Facts], gpus: Mapping[str, list[GPU]],
                tp: int, pp: int, spec: ModelSpec | None, model_error: str | None, hf_token: bool | None,
                why: list[str]) -> dict[str, Plan]:
    """Each node planned with the group's parallelism, over its GPUs as many times as there are nodes (the
    planner's arithmetic then sizes one GPU's share of the whole engine: the weights and the KV cache split over
    tensor parallel × pipeline parallel); with drivers of different branches, all as the oldest one."""
    n_nodes, world = len(hosts), tp * pp
    pinned = {"tensor_parallel_size": tp, "pipeline_parallel_size": pp, "data_parallel_size": 1, "gpu_indices": None}

    def plan_all(driver_of: Facts | None = None) -> dict[str, Plan]:
        out = {}
        for h in hosts:
            f = replace(facts[h.name], gpus=_merged(gpus[h.name], n_nodes, world))
            if driver_of is not None:
                f = replace(f, driver_version=driver_of.driver_version,
                            cuda_driver_version=driver_of.cuda_driver_version)
            out[h.name] = make_plan(f, h.with_vars(pinned, f"deployment {dep.name}"), spec, model_error, hf_token)
        return out

    plans = plan_all()
    hp = plans[dep.head]
    if not hp.ok:
        reason = hp.reason or "refused"
        if " does not fit" in reason:
            reason = f"across the {n_nodes} nodes of {dep.name}: {reason}"
        ways = [w for w in hp.ways_out if not w.startswith("fits across") and "GPUs like these" not in w]
        more = _more_nodes(dep, hosts, facts, gpus, spec, model_error, hf_token, pinned, tp)
        raise _Refused(reason, ([more] if more else []) + ways, hp.why)
    if len({_build_of(p) for p in plans.values() if p.ok}) > 1:
        # a newer driver runs what an older one runs: plan every node as if it had the group's oldest driver
        oldest = min(hosts, key=lambda h: _vkey(facts[h.name].driver_version or "0"))
        plans = plan_all(facts[oldest.name])
        if not all(p.ok for p in plans.values()) or len({_build_of(p) for p in plans.values()}) > 1:
            shown = "; ".join(f"{n} gets {_build_text(p) if p.ok else p.reason}" for n, p in plans.items())
            raise _Refused(f"the same vLLM build must fit every node: {shown}",
                           ("upgrade the older drivers to the same branch as the others",
                            "pin vllm_version (and python) to one every node can run"))
        why.append(f"{_build_text(plans[dep.head])} on every node: the newest build all of the nodes' drivers run "
                   f"(the oldest is {oldest.name}'s {facts[oldest.name].driver_version})")
    for h in hosts:
        if not plans[h.name].ok:
            raise _Refused(f"{h.name}: {plans[h.name].reason}", plans[h.name].ways_out)
    return plans


def _vkey(v: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def _merged(own: Sequence[GPU], n_nodes: int, world: int) -> tuple[GPU, ...]:
    own = list(own)[: world // n_nodes]
    return tuple(replace(g, index=i * len(own) + j) for i in range(n_nodes) for j, g in enumerate(own))


def _more_nodes(dep: Deployment, hosts: list[Host], facts: Mapping[str, Facts], gpus: Mapping[str, list[GPU]],
                spec: ModelSpec | None, model_error: str | None, hf_token: bool | None, pinned: dict,
                tp: int) -> str | None:
    """How many nodes like these the model would need (pipeline parallel across them), if 16 or fewer do."""
    head = next(h for h in hosts if h.name == dep.head)
    asked = head.vars.get("pipeline_parallel_size")
    if spec is None or (asked is not None and asked.value not in (None, "")):
        return None
    for n in range(len(hosts) + 1, 17):
        p = make_plan(replace(facts[dep.head], gpus=_merged(gpus[dep.head], n, tp * n)),
                      head.with_vars({**pinned, "pipeline_parallel_size": n}, f"deployment {dep.name}"), spec,
                      model_error, hf_token)
        if p.ok:
            return f"{n} such nodes (pipeline parallel {n}, up to {p.max_model_len} tokens)"
    return None


# --------------------------------------------------------------------------- the network, after the preflight


def is_private(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return ip.is_private or ip in ipaddress.ip_network("100.64.0.0/10")


def bind_network(gplan: GroupPlan, head_addr: str, nodes: Mapping[str, tuple[str, str]]) -> GroupPlan:
    """Each node's plan with the rendezvous address (the head's private address) and its own address and
    interface toward the others in its env: vLLM, gloo and NCCL then use that network and no other."""
    out = {}
    for name, p in gplan.nodes.items():
        addr, iface = nodes[name]
        env = {**p.env, "VLLM_HOST_IP": addr, "GLOO_SOCKET_IFNAME": iface, "NCCL_SOCKET_IFNAME": iface,
               # each node's own IPC sockets and temp files, swept at start (vllm-serve.sh)
               "TMPDIR": f"{p.install_root}/tmp", "VLLM_RPC_BASE_PATH": f"{p.install_root}/tmp"}
        out[name] = replace(p, serve_args=tuple(p.serve_args) + ("--master-addr", head_addr), env=env,
                            master_addr=head_addr, private_address=addr, interface=iface)
    return replace(gplan, nodes=out)


# --------------------------------------------------------------------------- what each node's log shows when up


def markers(p: Plan) -> list[tuple[str, re.Pattern]]:
    """The log lines that prove a node joined: the follower's headless executor with the head's address, and the
    line of each rank the node runs ("rank r in world size W is assigned as ..."); vLLM 0.32/0.33 wording."""
    world = (p.tensor_parallel_size or 1) * (p.pipeline_parallel_size or 1)
    per = world // (p.nnodes or 1)
    out = []
    if p.role == "follower":
        out.append(("headless executor", re.compile(
            rf"headless multiproc executor, with head node address {re.escape(str(p.master_addr))}:{p.master_port}")))
    for r in range((p.node_rank or 0) * per, (p.node_rank or 0) * per + per):
        out.append((f"rank {r}", re.compile(rf"\brank {r} in world size {world} is assigned as")))
    return out
