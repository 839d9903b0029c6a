"""Beyond one host, without a host: which hosts form a deployment (the inventory), and the multinode planner
(cases as data in tests/fixtures/deployments/multinode.yml; nodes' GPUs from recorded nvidia-smi output)."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest
import yaml

from gpuprov import settings
from gpuprov.deployment import Deployment, bind_network, markers, plan_multinode, split
from gpuprov.errors import UsageError
from gpuprov.inventory import Host, Inventory, Var
from gpuprov.models import lookup
from gpuprov.plan import make_plan

from ..conftest import FIXTURES
from .test_plan_cases import case_facts

CASES = yaml.safe_load((FIXTURES / "deployments" / "multinode.yml").read_text())


def _node(name: str, group_vars: dict, own: dict) -> Host:
    d = settings.defaults({})
    for k, v in {**group_vars, **own}.items():
        d[k] = Var(v, "case")
    return Host(name=name, address=name, vars=MappingProxyType(d), groups=("all", "g"))


def _case(case: dict):
    nodes = case["nodes"]
    hosts = tuple(_node(n, case["vars"], spec.get("vars") or {}) for n, spec in nodes.items())
    facts = {}
    for n, spec in nodes.items():
        built = {"facts": {"gpus": dict(spec["gpus"])}} if "gpus" in spec else spec
        f = case_facts(built)
        if spec.get("driver"):
            f = replace(f, driver_version=spec["driver"])
        facts[n] = f
    dep = Deployment("g", "multinode", hosts, case.get("head") or hosts[0].name)
    return dep, facts


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_multinode_case(case):
    dep, facts = _case(case)
    exp = dict(case["expect"])
    spec = lookup(case["vars"]["model"])
    if "raises" in exp:
        with pytest.raises(UsageError) as ei:
            plan_multinode(dep, facts, spec, hf_token=case.get("hf_token"))
        assert exp["raises"] in str(ei.value)
        return
    gp = plan_multinode(dep, facts, spec, hf_token=case.get("hf_token"))
    assert gp.ok is exp["ok"], (gp.reason, gp.why)
    for text in exp.get("reason", []):
        assert text in (gp.reason or ""), gp.reason
    for text in exp.get("ways_out", []):
        assert any(text in w for w in gp.ways_out), gp.ways_out
    for text in exp.get("why", []):
        assert any(text in w for w in gp.why), gp.why
    if not gp.ok:
        assert not gp.nodes
        return
    assert set(gp.nodes) == set(case["nodes"])
    for key in ("tensor_parallel_size", "pipeline_parallel_size", "head"):
        if key in exp:
            assert getattr(gp, key) == exp[key]
    for node, wanted in (exp.get("args") or {}).items():
        argv = " ".join(gp.nodes[node].serve_args)
        for a in wanted:
            assert a in argv, (node, argv)
    for node, unwanted in (exp.get("not_args") or {}).items():
        argv = " ".join(gp.nodes[node].serve_args)
        for a in unwanted:
            assert a not in argv, (node, argv)
    if exp.get("same_build"):
        assert len({(p.vllm_version, p.cuda_variant, p.torch_version) for p in gp.nodes.values()}) == 1
    # every node: the same engine flags apart from its rank and role
    strip = {"--node-rank", "--headless"}
    shapes = set()
    for p in gp.nodes.values():
        args, skip = [], False
        for a in p.serve_args:
            if skip:
                skip = False
                continue
            if a in strip:
                skip = a == "--node-rank"
                continue
            args.append(a)
        shapes.add(tuple(args))
    assert len(shapes) == 1, shapes


def test_network_binding_and_markers():
    dep, facts = _case(CASES[0])
    gp = plan_multinode(dep, facts, lookup("Qwen/Qwen2.5-7B-Instruct"))
    bound = bind_network(gp, "10.0.0.1", {"n0": ("10.0.0.1", "eth0"), "n1": ("10.0.0.2", "ens5")})
    n1 = bound.nodes["n1"]
    assert n1.env["VLLM_HOST_IP"] == "10.0.0.2" and n1.env["GLOO_SOCKET_IFNAME"] == "ens5"
    assert n1.env["NCCL_SOCKET_IFNAME"] == "ens5" and n1.env["TMPDIR"].endswith("/tmp")
    assert " --master-addr 10.0.0.1" in " ".join(n1.serve_args)
    names = [n for n, _ in markers(n1)]
    assert names == ["headless executor", "rank 1"]
    line = ("(APIServer pid=1) INFO Launching vLLM (v0.32.0) headless multiproc executor, with head node address "
            "10.0.0.1:29501 for torch.distributed process group.")
    assert markers(n1)[0][1].search(line)
    assert [n for n, _ in markers(bound.nodes["n0"])] == ["rank 0"]
    assert markers(bound.nodes["n0"])[0][1].search(
        "rank 0 in world size 2 is assigned as DP rank 0, PP rank 0, PCP rank 0, TP rank 0, EP rank N/A")


def test_single_plan_names_multinode_when_the_model_fits_across_hosts():
    case = {"smi": "table/rtx-3090_driver-535.161.07.txt"}
    host = _node("h", {"model": "meta-llama/Llama-3.3-70B-Instruct"}, {})
    p = make_plan(case_facts(case), host, lookup("meta-llama/Llama-3.3-70B-Instruct"), hf_token=True)
    assert not p.ok
    assert p.ways_out[0].startswith("fits across ") and "deployment: multinode" in p.ways_out[0], p.ways_out
    n = int(p.ways_out[0].split()[2])
    # and that many nodes really do fit (the same arithmetic, through the multinode planner)
    hosts = tuple(_node(f"n{i}", {"model": "meta-llama/Llama-3.3-70B-Instruct"}, {}) for i in range(n))
    dep = Deployment("g", "multinode", hosts, "n0")
    gp = plan_multinode(dep, {h.name: case_facts(case) for h in hosts}, lookup("meta-llama/Llama-3.3-70B-Instruct"),
                        hf_token=True)
    assert gp.ok, gp.reason
    fewer = Deployment("g", "multinode", hosts[:-1], "n0")
    assert not plan_multinode(fewer, {h.name: case_facts(case) for h in hosts[:-1]},
                              lookup("meta-llama/Llama-3.3-70B-Instruct"), hf_token=True).ok


INV = """
all:
  children:
    big:
      vars: {deployment: multinode, model: m/a}
      hosts: {node1: {address: 10.0.0.2}, node0: {address: 10.0.0.1}}
    chat:
      vars: {deployment: replicas}
      hosts: {pod1: {}, pod2: {}, pod3: {}}
    lone:
      hosts: {solo: {}}
"""


def _inv(tmp_path, text=INV):
    p = tmp_path / "hosts.yml"
    p.write_text(text)
    return Inventory.from_path(p, settings.defaults({}))


def test_split_finds_the_deployments_in_declaration_order(tmp_path):
    inv = _inv(tmp_path)
    singles, deps = split(inv, inv.select("all"))
    assert [h.name for h in singles] == ["solo"]
    big = next(d for d in deps if d.name == "big")
    assert big.kind == "multinode" and big.names == ["node1", "node0"] and big.head == "node1"
    chat = next(d for d in deps if d.name == "chat")
    assert chat.kind == "replicas" and chat.names == ["pod1", "pod2", "pod3"]
    # replicas can be acted on one by one (as single hosts); a multinode node cannot
    singles, deps = split(inv, inv.select("pod2"))
    assert [h.name for h in singles] == ["pod2"] and not deps
    with pytest.raises(UsageError, match="node0 belongs to multinode deployment big too: act on the whole with "
                                         "--host big"):
        split(inv, inv.select("node1"))
    _, deps = split(inv, inv.select("node1"), whole=False)
    assert deps[0].names == ["node1", "node0"]


@pytest.mark.parametrize("text, error", [
    ("all:\n  hosts: {a: {deployment: multinode}}\n", "a: deployment multinode (from "),
    ("all:\n  children:\n    g: {vars: {deployment: fleet}, hosts: {a: {}, b: {}}}\n",
     "deployment (from "),
    ("all:\n  children:\n    g: {vars: {deployment: multinode}, hosts: {a: {}}}\n",
     "multinode deployment g has one host (a)"),
    ("all:\n  children:\n    g: {vars: {deployment: multinode, head: c}, hosts: {a: {}, b: {}}}\n",
     "'c' is not a host of group g (a, b)"),
    ("all:\n  children:\n    g: {vars: {deployment: multinode}, hosts: {a: {}, b: {}}}\n"
     "    h: {vars: {deployment: replicas}, hosts: {a: {}, c: {}}}\n", "a is in more than one deployment"),
])
def test_split_refuses_shapes_that_cannot_serve(tmp_path, text, error):
    inv = _inv(tmp_path, text)
    with pytest.raises(UsageError) as ei:
        split(inv, inv.select("all"))
    assert error in str(ei.value)
    assert "\n" not in str(ei.value)


def test_deployment_from_the_command_line_is_refused(tmp_path):
    inv = _inv(tmp_path)
    hosts = [h.with_vars({"deployment": "multinode"}, "command line") for h in inv.select("solo")]
    with pytest.raises(UsageError, match="is a group var"):
        split(inv, hosts)
