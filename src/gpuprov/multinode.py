"""A multinode deployment as a whole: provision (probe every node → one plan → network preflight → install on
every node → same versions everywhere → start together → readiness), status, start/stop/restart.

The nodes run vLLM's own multi-node runtime (``deployment.plan_multinode`` writes the flags). A node cannot rejoin a
running engine alone (the rendezvous is over once the engine is up), so each node's service never restarts by
itself (``restart: no``) and gpuprov stops and starts the nodes together: all-or-nothing.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import health, remote
from .connection import known_hosts, open_runner
from .deployment import (
    Deployment,
    DeploymentStatus,
    GroupPlan,
    NodeStatus,
    bind_network,
    deployment_state,
    is_private,
    markers,
    plan_multinode,
)
from .errors import RemoteError, UsageError
from .executor import HostRecap, apply_one, service_op
from .facts import Facts
from .fleet import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, for_each_host
from .hostlock import HostSession
from .inventory import Host
from .layout import HostLayout
from .plan import Plan, with_pod_env
from .probe import run_probe
from .provision import (
    ProvisionResult,
    _run_locked,
    disk_refusal,
    gated_refusal,
    gp_vars,
    hf_token_for,
    resolve_spec,
)
from .status import read_status

CONNECT_TIMEOUT_S = 3
LISTEN_S = 60
MARKER_WAIT_S = 120


class Refused(Exception):
    """A deployment that cannot start as asked: the reason, before anything is installed."""


@dataclass
class GroupResult:
    """``invoke provision`` of a multinode deployment: one result per node, and the deployment's own refusal."""
    deployment: Deployment
    nodes: list[ProvisionResult] = field(default_factory=list)
    plan: GroupPlan | None = None
    refused: str | None = None
    error: str | None = None

    @property
    def exit_code(self) -> int:
        if self.refused:
            return EXIT_REFUSED
        if self.error:
            return EXIT_FAILED
        return max((r.exit_code for r in self.nodes), default=EXIT_FAILED)


# --------------------------------------------------------------------------- the preflight


def _netcheck(runner: Any, *actions: list) -> list[dict]:
    res = remote.run(runner, "netcheck", json.dumps(list(actions)), timeout=30 + CONNECT_TIMEOUT_S * len(actions))
    try:
        return json.loads(res.stdout)
    except ValueError:
        raise RemoteError(f"{runner.host.name}: the network check failed (exit {res.exit_status}): "
                          f"{(res.stderr or res.stdout).strip()[-300:] or 'no output'}") from None


def _is_ipv4(addr: str) -> bool:
    try:
        socket.inet_aton(addr)
        return addr.count(".") == 3
    except OSError:
        return False


def _parallel(hosts: Sequence[Host], fn: Callable[[Host], Any]) -> dict[str, Any]:
    out = {}
    for o in for_each_host(hosts, fn):
        if o.error is not None:
            raise o.error
        out[o.host.name] = o.value
    return out


def preflight(dep: Deployment, runners: Mapping[str, Any], gplan: GroupPlan, facts: Mapping[str, Facts]
              ) -> tuple[str, dict[str, tuple[str, str]]]:
    """The head's private address and each node's (address, interface) toward the others, after proving TCP both
    ways: every follower reaches the head's master port, and the head reaches a port on every follower (vLLM's
    gloo/NCCL and message queues use random ports in both directions). Raises Refused with the reason."""
    port, token = gplan.master_port, secrets.token_hex(8)
    first = _parallel(dep.hosts, lambda h: _netcheck(
        runners[h.name], ["addrs"], ["listen", port if h.name == dep.head else 0, LISTEN_S, token,
                                     len(dep.followers) if h.name == dep.head else 1]))
    try:
        return _preflight(dep, runners, gplan, facts, first, port, token)
    finally:  # the listeners end by themselves; end them now, so the engine finds the master port free
        for h in dep.hosts:
            pid = first[h.name][1].get("pid")
            if pid:
                _netcheck(runners[h.name], ["stop", pid])


def _preflight(dep: Deployment, runners: Mapping[str, Any], gplan: GroupPlan, facts: Mapping[str, Facts],
               first: dict, port: int, token: str) -> tuple[str, dict[str, tuple[str, str]]]:
    head = dep.host(dep.head)
    head_addrs = [a for a in first[dep.head][0] if not a["addr"].startswith("127.")]
    listened = first[dep.head][1]
    head_token = token
    if listened.get("error") == "in use":
        own = (facts[dep.head].installed.get(gplan.nodes[dep.head].install_root) or {})
        if own.get("group") != dep.name:
            raise Refused(f"{dep.head}: the master port {port} is in use by another program; free it or set "
                          "master_port to a free port")
        head_token = ""  # this deployment's own engine holds it: being accepted is the proof
    elif listened.get("error"):
        raise Refused(f"{dep.head}: cannot listen on the master port {port}: {listened['error']}")
    candidates = _head_candidates(head, head_addrs)
    shown = ", ".join(f"{a['addr']} ({a['iface']})" for a in head_addrs)

    seen = _parallel(dep.followers, lambda h: _reach(runners[h.name], candidates, port, head_token))
    nodes: dict[str, tuple[str, str]] = {}
    head_addr = None
    for h in dep.followers:
        got = seen[h.name]
        if isinstance(got, str):
            raise Refused(f"{h.name} cannot reach the head {dep.head} on its master port ({got}): the nodes of a "
                          "multinode engine need all TCP open between them on a private network (a firewall, a "
                          "security group, or pods in different data centres stop it); serve replicas instead "
                          "(deployment: replicas) or open the network between them")
        if head_addr not in (None, got[0]):
            raise Refused(f"the nodes reach the head {dep.head} at different addresses ({head_addr}, {got[0]}); "
                          "set private_address on the head")
        head_addr = got[0]
        nodes[h.name] = (got[1], got[2])
    assert head_addr is not None
    if not is_private(head_addr) and head.var("allow_public_interconnect") is not True:
        raise Refused(f"the nodes reach the head {dep.head} only over the public address {head_addr} (its "
                      f"addresses: {shown}); the traffic between the nodes is unencrypted and runs code it receives: "
                      "use a private network (set private_address), or allow_public_interconnect: true")
    iface = next((a["iface"] for a in head_addrs if a["addr"] == head_addr), None)
    if iface is None:  # an address the head does not hold (a NAT in between): vLLM cannot bind it
        raise Refused(f"{dep.head} does not hold {head_addr} itself (its addresses: {shown}); set private_address "
                      "to an address of the head that the others reach")
    nodes[dep.head] = (head_addr, iface)
    # and back: the head reaches every follower (the data plane's ports run both ways)
    back = _netcheck(runners[dep.head], *[["connect", nodes[h.name][0], first[h.name][1].get("port"), token,
                                           CONNECT_TIMEOUT_S] for h in dep.followers])
    for h, ans in zip(dep.followers, back, strict=True):
        if not ans.get("ok"):
            raise Refused(f"the head {dep.head} cannot reach {h.name} at {nodes[h.name][0]} ({ans.get('error')}): "
                          "the nodes of a multinode engine need all TCP open between them, both ways; open the "
                          "network between them or serve replicas instead (deployment: replicas)")
    return head_addr, nodes


def _reach(runner: Any, candidates: list[str], port: int, token: str) -> tuple[str, str, str] | str:
    """From one follower: (the head's address that answered, own address, own interface), or why none did."""
    answers = _netcheck(runner, *[x for c in candidates for x in
                                  (["route", c], ["connect", c, port, token, CONNECT_TIMEOUT_S])])
    why = []
    for i, c in enumerate(candidates):
        route, conn = answers[2 * i], answers[2 * i + 1]
        if route.get("error"):
            why.append(f"{c}: no route ({route['error']})")
        elif conn.get("ok"):
            return c, route["addr"], route["iface"]
        else:
            why.append(f"{c}:{port} from {route.get('addr')} ({route.get('iface')}): {conn['error']}")
    return "; ".join(why)


def _head_candidates(head: Host, head_addrs: list[dict]) -> list[str]:
    """Where the followers may find the head: its private_address var, else its inventory address when the head
    holds it, else its private addresses, then the rest."""
    asked = head.var("private_address")
    if asked:
        if not _is_ipv4(str(asked)):
            raise UsageError(f"private_address (from {head.vars['private_address'].source}): expected an IPv4 "
                             f"address, got {asked!r}")
        return [str(asked)]
    out = [a["addr"] for a in head_addrs if a["addr"] == head.address]
    out += [a["addr"] for a in head_addrs if is_private(a["addr"]) and a["addr"] not in out]
    out += [a["addr"] for a in head_addrs if a["addr"] not in out]
    if not out:
        raise Refused(f"{head.name} has no IPv4 address but loopback; the other nodes cannot reach it")
    return out


# --------------------------------------------------------------------------- provision


VERSIONS = ("import importlib.metadata as m, json, platform\n"
            "def v(n):\n"
            "    try:\n        return m.version(n)\n    except m.PackageNotFoundError:\n        return None\n"
            "print(json.dumps({'vllm': v('vllm'), 'torch': v('torch'), 'python': platform.python_version()}))\n")


def _versions(runner: Any, venv: str) -> dict:
    res = runner.run([f"{venv}/bin/python", "-c", VERSIONS], timeout=60)
    try:
        return json.loads(res.stdout)
    except ValueError:
        raise RemoteError(f"{runner.host.name}: cannot read the engine venv's versions: "
                          f"{(res.stderr or res.stdout).strip()[-200:]}") from None


def provision_deployment(dep: Deployment, *, check: bool = False, diff: bool = False, verify: bool = True,
                         on_event: Callable | None = None, on_progress: Callable[[str, str], None] | None = None,
                         ready_timeout: float | None = None) -> GroupResult:
    out = GroupResult(dep)
    runners: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        try:
            opened = _parallel(dep.hosts, lambda h: open_runner(h, known_hosts()))
        except Exception as e:  # noqa: BLE001 - one node unreachable: the deployment cannot start
            out.error = str(e)
            out.nodes = [ProvisionResult(h.name, recap=HostRecap.of_error(h.name, e)) for h in dep.hosts]
            return out
        for name, r in opened.items():
            stack.callback(r.close)
            runners[name] = r
        sessions = {n: stack.enter_context(HostSession(r)) for n, r in runners.items()}
        facts = _parallel(dep.hosts, lambda h: run_probe(sessions[h.name], check_sftp=False, quick=True))
        head = with_pod_env(dep.host(dep.head), facts[dep.head])
        spec, err = resolve_spec(head)
        gplan = plan_multinode(dep, facts, spec, err, hf_token=hf_token_for(facts[dep.head]) is not None)
        out.plan = gplan
        if not gplan.ok:
            out.refused = gplan.reason
            return out
        for h in dep.hosts:
            refusal = gated_refusal(h, gplan.nodes[h.name]) or disk_refusal(facts[h.name], gplan.nodes[h.name])
            if refusal:
                out.refused = f"{h.name}: {refusal}"
                return out
        try:
            head_addr, net = preflight(dep, runners, gplan, facts)
        except Refused as e:
            out.refused = str(e)
            return out
        gplan = bind_network(gplan, head_addr, net)
        out.plan = gplan
        owner = f"provision by {getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"
        gps, locks = {}, {}
        for h in sorted(dep.hosts, key=lambda h: h.name):  # one order for every run: no two runs deadlock
            p = gplan.nodes[h.name]
            gps[h.name] = gp_vars(h, facts[h.name], p)
            lay = HostLayout(p.install_root)
            locks[h.name] = lay.work_lock if facts[h.name].tools.get("flock") else None
            sessions[h.name].lock(lay.lock, owner, wait=float(h.var("lock_wait", 0) or 0), work_lock=locks[h.name])

        def install(h: Host) -> ProvisionResult:
            return _run_locked(h, runners[h.name], facts[h.name], gplan.nodes[h.name], gps[h.name], check, diff,
                               False, on_event, on_progress, 0, locks[h.name], sessions[h.name])

        done = for_each_host(dep.hosts, install)
        out.nodes = [o.value if o.value is not None else
                     ProvisionResult(o.host.name, gplan.nodes[o.host.name],
                                     recap=HostRecap.of_error(o.host.name, o.error or RuntimeError("no result")))
                     for o in done]
        if check or any(r.recap is None or r.recap.exit_code != EXIT_OK for r in out.nodes):
            return out
        versions = _parallel(dep.hosts, lambda h: _versions(runners[h.name], gplan.nodes[h.name].venv or ""))
        if len({json.dumps(v, sort_keys=True) for v in versions.values()}) > 1:
            shown = "; ".join(f"{n}: vllm {v['vllm']}, torch {v['torch']}, Python {v['python']}"
                              for n, v in versions.items())
            out.error = f"the nodes' engine versions differ ({shown}): one engine needs the same on every node"
            return out
        if not verify:
            return out
        changed = any(r.recap.changed for r in out.nodes if r.recap)
        timeout = ready_timeout or float(head.var("multinode_start_timeout", 1800) or 1800)
        nodes = [Node(h, runners[h.name], sessions[h.name], gplan.nodes[h.name], gps[h.name]) for h in dep.hosts]
        ready = None if changed else _already_ready(nodes)
        if ready is None:
            ready = start_together(nodes, timeout, on_progress, restart=True)
        for r in out.nodes:
            r.readiness = ready.get(r.host)
    return out


@dataclass
class Node:
    host: Host
    runner: Any
    session: Any
    plan: Plan
    gp: dict

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def layout(self) -> HostLayout:
        return HostLayout(self.gp["root"], self.gp["service"])


def _poll(node: Node, since: float, pos: Any = None) -> dict:
    args = {"manager": node.plan.service_manager, "unit": node.gp["service"], "log": node.gp["log"],
            "pidfile": node.gp["pidfile"], "port": node.plan.engine_port if node.plan.role == "head" else 0,
            "pos": pos, "since": since, "wait": 0}
    res = remote.run(node.session or node.runner, "poll", json.dumps(args), timeout=60)
    try:
        return json.loads(res.stdout)
    except ValueError:
        raise RemoteError(f"{node.name}: the readiness poll failed: {res.stderr.strip()[-200:]}") from None


def _already_ready(nodes: list[Node]) -> dict[str, health.Readiness] | None:
    """A re-provision with nothing changed: every node's engine active and the head answering a completion, else
    None (start them together)."""
    head = next(n for n in nodes if n.plan.role == "head")
    for n in nodes:
        if n is not head and (_poll(n, time.time()).get("service") or {}).get("active") != "active":
            return None
    r = _wait_head(head, 30, None, None)
    if not r.ready:
        return None
    return {n.name: (r if n is head else health.Readiness(True, 0.0)) for n in nodes}


def _wait_head(head: Node, timeout: float, on_progress: Callable | None, abort: Callable[[], str | None] | None
               ) -> health.Readiness:
    return health.wait_ready(head.session or head.runner, manager=head.plan.service_manager, unit=head.gp["service"],
                             log=head.gp["log"], pidfile=head.gp["pidfile"], port=head.plan.engine_port,
                             env_file=head.gp["env_file"], model=head.plan.model, timeout=timeout,
                             on_progress=(lambda t: on_progress(head.name, t)) if on_progress else None,
                             abort=abort)


def _service(node: Node, state: str) -> None:
    apply_one(node.runner, service_op(node.layout, node.plan.service_manager, state,
                                                      f"engine {state} (multinode)", restart="no"))


def start_together(nodes: list[Node], timeout: float, on_progress: Callable | None = None,
                   restart: bool = True) -> dict[str, health.Readiness]:
    """Stop every node (``restart``), start them all at once, and wait: the head until it answers a completion,
    each follower until its log shows it joined (its rank, and the headless executor with the head's address).
    Any node that stops meanwhile, or the timeout, stops them all."""
    head = next(n for n in nodes if n.plan.role == "head")
    followers = [n for n in nodes if n is not head]
    if restart:
        _parallel([n.host for n in nodes], lambda h: _service(_by(nodes, h.name), "stopped"))
    since = time.time() - 1
    _parallel([n.host for n in nodes], lambda h: _service(_by(nodes, h.name), "started"))
    seen: dict[str, dict[str, bool]] = {n.name: {m: False for m, _ in markers(n.plan)} for n in nodes}
    pos: dict[str, Any] = {}
    lines: dict[str, list[str]] = {n.name: [] for n in nodes}
    last_check = [0.0]
    failed: list[str] = []  # the follower whose engine stopped first

    def watch(n: Node) -> str | None:
        d = _poll(n, since, pos.get(n.name))
        pos[n.name] = d["pos"]
        lines[n.name] = (lines[n.name] + d["lines"])[-40:]
        for line in d["lines"]:
            for m, rx in markers(n.plan):
                if rx.search(line):
                    seen[n.name][m] = True
        if (d.get("service") or {}).get("active") != "active":
            failed.append(n.name)
            return f"{n.name}'s engine stopped during start-up"
        return None

    def abort() -> str | None:
        if time.monotonic() - last_check[0] < 5:
            return None
        last_check[0] = time.monotonic()
        return next((why for n in followers if (why := watch(n))), None)

    r = _wait_head(head, timeout, on_progress, abort)
    out: dict[str, health.Readiness] = {}
    if r.ready:
        deadline = time.monotonic() + MARKER_WAIT_S
        for n in nodes:
            while True:
                why = watch(n)
                missing = [m for m, ok in seen[n.name].items() if not ok]
                if why or not missing or time.monotonic() > deadline:
                    break
                time.sleep(1)
            ok = not why and not missing
            out[n.name] = r if n is head and ok else health.Readiness(
                ok, r.seconds, error=why or (f"{n.name}'s log does not show {', '.join(missing)}" if missing else None),
                last_lines=lines[n.name][-20:])
        if all(x.ready for x in out.values()):
            return out
    if not failed:  # the head failed: a follower that stopped first is why (the head cannot serve without it)
        for n in followers:
            watch(n)
    # all or nothing: stop every node, and tell which one failed and why
    _parallel([n.host for n in nodes], lambda h: _service(_by(nodes, h.name), "stopped"))
    culprit = failed[0] if failed else head.name
    for n in nodes:
        if n.name in out and not out[n.name].ready:
            continue  # its own reason (a marker missing, stopped after the head was ready)
        if n.name == culprit:
            out[n.name] = r if n is head else health.Readiness(
                False, r.seconds, error="the engine stopped during start-up", last_lines=lines[n.name][-20:],
                diagnosis=health.diagnose(lines[n.name]))
        else:
            out[n.name] = health.Readiness(False, r.seconds, error=f"stopped with the deployment: "
                                           f"{r.error if n is head else culprit + ' failed'}")
    return out


def _by(nodes: list[Node], name: str) -> Node:
    return next(n for n in nodes if n.name == name)


# --------------------------------------------------------------------------- status and control


def status(dep: Deployment) -> DeploymentStatus:
    def one(h: Host) -> NodeStatus:
        r = open_runner(h, known_hosts())
        try:
            st, raw = read_status(r)
            s = raw.get("state") or {}
            return NodeStatus(h.name, s.get("role"), s.get("node_rank"), s.get("private_address"),
                              s.get("interface"), st)
        finally:
            r.close()

    rows = []
    for o in for_each_host(dep.hosts, one):
        rows.append(o.value if o.value is not None else
                    NodeStatus(o.host.name, "head" if o.host.name == dep.head else "follower", dep.rank(o.host.name),
                               None, None, None, error=str(o.error)))
    rows.sort(key=lambda r: dep.rank(r.host))
    return DeploymentStatus(dep.name, dep.kind, deployment_state(dep.kind, rows), rows)


def control(dep: Deployment, action: str, timeout: float = 1800) -> Mapping[str, health.Readiness | None]:
    """stop: every node; start and restart: the whole deployment, stopped first, started together, waited for."""
    with contextlib.ExitStack() as stack:
        runners = {}
        for h in dep.hosts:
            runners[h.name] = open_runner(h, known_hosts())
            stack.callback(runners[h.name].close)
        nodes = []
        for h in dep.hosts:
            st, raw = read_status(runners[h.name])
            s = raw.get("state") or {}
            if st.service == "not-installed" or s.get("group") != dep.name:
                raise UsageError(f"{h.name}: deployment {dep.name} is not provisioned there; run `invoke provision "
                                 f"--host {dep.name}` first")
            nodes.append(_node_from_state(h, runners[h.name], s, raw["root"]))
        if action == "stop":
            _parallel(dep.hosts, lambda h: _service(_by(nodes, h.name), "stopped"))
            return {h.name: None for h in dep.hosts}
        if action == "start":  # already serving: nothing to start
            ready = _already_ready(nodes)
            if ready is not None:
                return ready
        return start_together(nodes, timeout, restart=True)


def _node_from_state(h: Host, runner: Any, s: dict, root: str) -> Node:
    lay = HostLayout.from_state(s, root)
    plan = Plan(True, host=h.name, model=s["model"], engine_port=int(s.get("engine_port", 8000)),
                service_manager=s["service_manager"], install_root=root, deployment="multinode", group=s.get("group"),
                role=s.get("role"), node_rank=s.get("node_rank"), nnodes=s.get("nnodes"),
                master_addr=s.get("master_addr"), master_port=s.get("master_port"),
                tensor_parallel_size=s.get("tensor_parallel_size"),
                pipeline_parallel_size=s.get("pipeline_parallel_size"))
    gp = {"root": lay.root, "service": lay.service, "log": lay.log, "pidfile": lay.pidfile,
          "env_file": lay.env_file}
    return Node(h, runner, None, plan, gp)


def run(dep: Deployment, **kw: Any) -> GroupResult:
    """``provision_deployment`` with every error kept in the result (as for single hosts)."""
    try:
        return provision_deployment(dep, **kw)
    except RemoteError as e:  # bad input (UsageError) still ends the run with its own line and exit code
        return GroupResult(dep, error=str(e))
