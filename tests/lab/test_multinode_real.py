"""The REAL vLLM CPU build across two sim hosts: one engine, pipeline parallel 2 (vLLM's native multi-node
runtime: --nnodes 2, --headless on the follower, the rendezvous on the head's address on the lab bridge). Compile
mode, not --enforce-eager: vLLM 0.32's CPU backend answers 500 on the first request with pipeline parallel +
eager + an explicit KV cache size. Each node's worker is bound to its own core (VLLM_CPU_OMP_THREADS_BIND).

One engine set at a time on this machine: the single-host real-engine hosts go down first."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from gpuprov.sim import control as lab

from .test_multinode_lab import child_pid, log_of, state, status
from .test_provision_lab import remote
from .test_real_engine import MODEL, PERSONA, WHY, chat_through_tunnel

pytestmark = [pytest.mark.lab, pytest.mark.real, pytest.mark.multinode]
if WHY:
    pytestmark.append(pytest.mark.skip(reason=f"real-engine tier skipped: {WHY}"))

METRICS = Path(__file__).parents[1] / "data" / "real-engine-cpu-metrics.txt"


def metric_names(text: str) -> set[tuple[str, str]]:
    """(name, sorted label names) of every sample in a Prometheus text exposition."""
    out = set()
    for line in text.splitlines():
        if line.startswith("vllm:"):
            name, _, rest = line.partition("{")
            labels = sorted(kv.split("=")[0] for kv in rest.rpartition("}")[0].split(",") if kv)
            out.add((name, ",".join(labels)))
    return out


@pytest.fixture(scope="module")
def pair(sim):
    for n in ("rv1", "rvs"):
        if n in sim.names:
            sim.down(n)
    inv = Path(os.environ["GPUPROV_INVENTORY"])
    inv.mkdir(parents=True, exist_ok=True)
    group = inv / "bigr.yml"
    group.write_text(json.dumps({"all": {"children": {"bigr": {
        "vars": {"deployment": "multinode", "model": MODEL}, "hosts": {"rn0": {}, "rn1": {}}}}}}) + "\n")
    (inv / "host_vars").mkdir(exist_ok=True)
    for i, n in enumerate(("rn0", "rn1")):  # host_vars: above the lab's per-host real-engine vars
        (inv / "host_vars" / f"{n}.yml").write_text(json.dumps(
            {"enforce_eager": False, "engine_env": {"VLLM_CPU_OMP_THREADS_BIND": str(i)}}) + "\n")
    try:
        sim.up("rn0", gpu=PERSONA, engine="real")
        sim.up("rn1", gpu=PERSONA, engine="real")
        p = sim.cli("provision", "--host", "bigr", timeout=1500)
        yield sim, p
    finally:
        group.unlink()
        for n in ("rn0", "rn1"):
            (inv / "host_vars" / f"{n}.yml").unlink(missing_ok=True)
            if n in sim.names:
                sim.down(n)


def test_real_engine_across_two_hosts(pair):
    sim, p = pair
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    addr0 = lab.sim_lab().hosts()["rn0"].address
    assert state("rn1")["master_addr"] == addr0
    flog, hlog = log_of("rn1"), log_of("rn0")
    assert f"headless multiproc executor, with head node address {addr0}:29501" in flog
    assert f"mq_connect_ip={addr0} (local), world_size=2, local_world_size=1" in hlog
    # each node logs only its own ranks: rank 0 (PP rank 0) on the head, rank 1 (PP rank 1) on the follower
    assert "rank 0 in world size 2 is assigned as DP rank 0, PP rank 0" in hlog
    assert "rank 1 in world size 2 is assigned as DP rank 0, PP rank 1" in flog
    assert "STAND-IN" not in hlog + flog
    argv = remote("rn1", "cat", "/opt/gpuprov/bin/vllm-serve")
    assert "--pipeline-parallel-size 2" in argv and "--headless" in argv and "--enforce-eager" not in argv
    text, streamed = chat_through_tunnel("rn0", 18700)
    assert text and text == streamed


def test_the_real_metrics_names_are_the_ones_the_standin_serves(pair, lab_env):
    live = remote("rn0", "python3", "-c", "import urllib.request as u; print(u.urlopen("
                  "'http://127.0.0.1:8000/metrics', timeout=10).read().decode())")
    (Path(lab_env["GPUPROV_HOME"]) / "real-engine-cpu-metrics.txt").write_text(live)  # to re-record it from
    real = metric_names(live)
    assert real == metric_names(METRICS.read_text()), "the real engine's /metrics changed: re-record " + str(METRICS)
    for needed in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:request_success_total"):
        assert any(n == needed for n, _ in real)
    st = status(pair[0], "bigr")
    assert st["state"] == "ready", st
    assert st["nodes"][0]["engine"]["load"]["served"] >= 3  # the verify and the two chats


def test_a_dead_follower_is_restored_with_the_whole_deployment(pair):
    sim, _ = pair
    head, follower = child_pid("rn0"), child_pid("rn1")
    remote("rn1", "kill", "-9", str(follower))
    deadline = time.monotonic() + 30
    while child_pid("rn1") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status(sim, "bigr")["state"] in ("degraded", "down")
    p = sim.cli("provision", "--host", "bigr", timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert child_pid("rn0") not in (None, head) and child_pid("rn1") not in (None, follower)
    assert status(sim, "bigr")["state"] == "ready"
    text, streamed = chat_through_tunnel("rn0", 18710)
    assert text and text == streamed
