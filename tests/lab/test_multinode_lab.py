"""Beyond one host in the lab, with the stand-in engine: a multinode deployment (two sim hosts, vLLM's native
multi-node flags, the stand-in's followers joining the head's master port over the lab bridge), its preflight
refusals (a firewall rule inside a sim host, different GPUs, a model too big across the nodes), and replicas behind
the real vllm-router (installed from the package registry into gpuprov's router venv) with the real OpenAI client.
The real engine across two hosts is in tests/lab/test_real_engine.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from gpuprov.sim import control as lab

from .test_provision_lab import remote

pytestmark = pytest.mark.lab
A5000 = "2x-rtx-a5000_driver-590.44.01"
MODEL = "openai/gpt-oss-20b"


def write_group(name: str, kind: str, hosts: list[str], **group_vars) -> Path:
    inv = Path(os.environ["GPUPROV_INVENTORY"])
    f = inv / f"{name}.yml"
    gv = {"deployment": kind, "model": MODEL, **group_vars}
    f.write_text(json.dumps({"all": {"children": {name: {"vars": gv, "hosts": {h: {} for h in hosts}}}}}) + "\n")
    return f


def state(name: str) -> dict:
    return json.loads(remote(name, "cat", "/opt/gpuprov/state.json"))


def child_pid(name: str) -> int | None:
    try:
        return json.loads(remote(name, "cat", "/opt/gpuprov/run/vllm.pid.state")).get("child")
    except ValueError:
        return None


def log_of(name: str) -> str:
    return remote(name, "cat", "/opt/gpuprov/logs/vllm.log")


def kill_engine(name: str, wait: float) -> int:
    """kill -9 the host's engine process (the supervisor's child) and wait until the supervisor saw it go; its pid."""
    pid = child_pid(name)
    remote(name, "kill", "-9", str(pid))
    deadline = time.monotonic() + wait
    while child_pid(name) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    return pid


def status(sim, group: str) -> dict:
    p = sim.cli("status", "--host", group, "--json")
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    assert lines, p.stdout + p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def big(sim):
    sim.up("mn0", gpu=A5000)
    sim.up("mn1", gpu=A5000)
    f = write_group("big", "multinode", ["mn0", "mn1"])
    try:
        p = sim.cli("provision", "--host", "big", timeout=400)
        yield sim, p
    finally:
        f.unlink()


def test_multinode_provisions_one_engine_across_two_hosts(big):
    sim, p = big
    assert p.returncode == 0, p.stdout + p.stderr
    head, follower = state("mn0"), state("mn1")
    addr0, addr1 = (lab.sim_lab().hosts()[n].address for n in ("mn0", "mn1"))
    assert (head["role"], head["node_rank"], follower["role"], follower["node_rank"]) == ("head", 0, "follower", 1)
    assert head["master_addr"] == follower["master_addr"] == addr0
    assert follower["private_address"] == addr1 and head["private_address"] == addr0
    assert head["tensor_parallel_size"] == 2 and head["pipeline_parallel_size"] == 2
    # the same flags on both, apart from the rank and --headless
    assert "--headless" in follower["serve_args"] and "--headless" not in head["serve_args"]
    strip = lambda a: [x for i, x in enumerate(a) if x != "--headless" and a[i - 1] != "--node-rank"]  # noqa: E731
    assert strip(head["serve_args"]) == strip(follower["serve_args"])
    for name, mine in (("mn0", addr0), ("mn1", addr1)):
        env = remote(name, "cat", "/opt/gpuprov/vllm.env")
        assert f"VLLM_HOST_IP={mine}" in env and "GLOO_SOCKET_IFNAME=" in env and "NCCL_SOCKET_IFNAME=" in env
        assert oct(int(remote(name, "stat", "-c", "%a", "/opt/gpuprov/vllm.env").strip(), 8)) == "0o600"
    flog, hlog = log_of("mn1"), log_of("mn0")
    assert f"headless multiproc executor, with head node address {addr0}:29501" in flog
    assert f"DP group leader: node_rank=0, node_rank_within_dp=0, master_addr={addr0}, mq_connect_ip={addr0}" in hlog
    assert "world_size=4, local_world_size=2" in hlog
    ranks = {r for log in (hlog, flog) for r in range(4) if f"rank {r} in world size 4 is assigned as" in log}
    assert ranks == {0, 1, 2, 3}
    assert "rank 2 in world size 4" in flog and "rank 2 in world size 4" not in hlog
    assert "verified" in p.stdout


def test_multinode_status_rerun_and_tunnel(big):
    sim, _ = big
    st = status(sim, "big")
    assert st["state"] == "ready" and [n["host"] for n in st["nodes"]] == ["mn0", "mn1"]
    assert [n["role"] for n in st["nodes"]] == ["head", "follower"]
    pids = child_pid("mn0"), child_pid("mn1")
    again = sim.cli("provision", "--host", "big", "--json", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    hosts = json.loads(again.stdout.splitlines()[-1])["hosts"]
    assert all(h["changed"] == 0 and h.get("ready") for h in hosts.values()), hosts
    assert (child_pid("mn0"), child_pid("mn1")) == pids  # nothing restarted
    # one node alone is not a deployment: refused before connecting
    one = sim.cli("provision", "--host", "mn1")
    assert one.returncode == 2 and one.stderr.strip().splitlines() == [
        "error: mn0 belongs to multinode deployment big too: act on the whole with --host big"], one.stderr
    bg = sim.cli("tunnel", "--host", "big", "--background", "--local-port", "18500", "--next-free")
    assert bg.returncode == 0, bg.stdout + bg.stderr
    url = bg.stdout.split("OPENAI_BASE_URL=")[1].split()[0]
    try:
        from openai import OpenAI

        client = OpenAI(base_url=url, api_key="unused", timeout=30, max_retries=0)
        reply = client.chat.completions.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        chunks = client.chat.completions.create(model=MODEL, max_tokens=8, stream=True,
                                                messages=[{"role": "user", "content": "hi"}])
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed.strip() == reply.choices[0].message.content.strip()
    finally:
        assert sim.cli("tunnel", "--host", "big", "--stop").returncode == 0


def test_a_dead_follower_degrades_the_deployment_and_provision_restarts_it_whole(big):
    sim, _ = big
    head_pid, follower_pid = child_pid("mn0"), kill_engine("mn1", 20)
    st = status(sim, "big")
    assert st["state"] == "degraded", st
    assert st["nodes"][1]["engine"]["service"] in ("inactive", "failed")
    assert child_pid("mn1") is None  # restart: no: a follower never comes back alone
    p = sim.cli("provision", "--host", "big", timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    new = child_pid("mn0"), child_pid("mn1")
    assert None not in new and new[0] != head_pid and new[1] != follower_pid  # both restarted, together
    assert status(sim, "big")["state"] == "ready"
    stop = sim.cli("stop", "--host", "big")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert status(sim, "big")["state"] == "down"
    start = sim.cli("start", "--host", "big", timeout=300)
    assert start.returncode == 0, start.stdout + start.stderr
    assert status(sim, "big")["state"] == "ready"


def test_a_node_that_dies_during_the_start_stops_the_whole_deployment(big):
    sim, _ = big
    hv = Path(os.environ["GPUPROV_INVENTORY"]) / "host_vars"
    hv.mkdir(exist_ok=True)
    (hv / "mn1.yml").write_text(json.dumps({"engine_env": {"GPUPROV_STANDIN_DELAY": "2",
                                                           "GPUPROV_STANDIN_FAIL": "oom"}}) + "\n")
    try:
        p = sim.cli("provision", "--host", "big", timeout=300)
        assert p.returncode == 1, p.stdout + p.stderr
        # the follower is named as the one that failed, with its diagnosis; the head went down with it
        assert "error: mn1: the engine stopped during start-up" in p.stderr, p.stderr
        assert "error: mn0: stopped with the deployment" in p.stderr, p.stderr
        assert "out of GPU memory" in p.stdout
        st = status(sim, "big")
        assert st["state"] == "down" and all(n["engine"]["service"] != "active" for n in st["nodes"]), st
    finally:
        (hv / "mn1.yml").unlink()
    p = sim.cli("provision", "--host", "big", timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert status(sim, "big")["state"] == "ready"


def test_multinode_refusals_before_anything_is_installed(big):
    sim, _ = big
    sim.up("mn2", gpu=A5000)
    sim.up("mn3", gpu=A5000)
    sim.up("mn4", gpu="rtx-3060_driver-570.124.04")
    inv = Path(os.environ["GPUPROV_INVENTORY"])
    try:
        write_group("odd", "multinode", ["mn2", "mn4"])
        p = sim.cli("provision", "--host", "odd")
        assert p.returncode == 2, p.stdout + p.stderr
        assert "multinode needs the same GPU model and count on every node" in p.stdout
        assert "mn2 has 2 × NVIDIA RTX A5000" in p.stdout and "mn4 has 1 × NVIDIA GeForce RTX 3060" in p.stdout
        (inv / "odd.yml").unlink()
        write_group("odd", "multinode", ["mn2", "mn3"], model="meta-llama/Llama-3.3-70B-Instruct")
        p = sim.cli("provision", "--host", "odd", "-e", "max_model_len=131072")
        assert p.returncode == 2, p.stdout + p.stderr
        assert "across the 2 nodes of odd" in p.stdout and "does not fit" in p.stdout
        # the master port dropped by a firewall rule inside the follower
        write_group("odd", "multinode", ["mn2", "mn3"])
        lab.sim_lab().drop("mn3", lab.sim_lab().hosts()["mn2"].address, 29501)
        p = sim.cli("provision", "--host", "odd")
        assert p.returncode == 2, p.stdout + p.stderr
        assert "mn3 cannot reach the head mn2 on its master port" in p.stdout and "timed out after 3 s" in p.stdout
        assert "deployment: replicas" in p.stdout
        for n in ("mn2", "mn3", "mn4"):  # nothing was installed
            assert remote(n, "sh", "-c", "ls /opt/gpuprov 2>/dev/null | wc -l").strip() == "0"
    finally:
        (inv / "odd.yml").unlink(missing_ok=True)
        for n in ("mn2", "mn3", "mn4"):
            if n in sim.names:
                sim.down(n)


def test_replicas_behind_the_router(big):
    sim, _ = big
    names = ["rp1", "rp2", "rp3"]
    for n in names:
        sim.up(n, gpu=A5000)
    f = write_group("chat", "replicas", names)
    try:
        p = sim.cli("provision", "--host", "chat", timeout=400)
        assert p.returncode == 0, p.stdout + p.stderr
        assert state("rp2")["deployment"] == "replicas" and state("rp2")["group"] == "chat"
        bg = sim.cli("tunnel", "--host", "chat", "--background", "--local-port", "18600", "--next-free",
                     timeout=400)
        assert bg.returncode == 0, bg.stdout + bg.stderr
        url = bg.stdout.split("OPENAI_BASE_URL=")[1].split()[0]
        from openai import OpenAI

        client = OpenAI(base_url=url, api_key="unused", timeout=30, max_retries=0)

        def ask(n: int) -> None:
            for _ in range(n):
                r = client.chat.completions.create(model=MODEL, max_tokens=4,
                                                   messages=[{"role": "user", "content": "hi"}])
                assert r.choices[0].message.content

        ask(30)
        st = status(sim, "chat")
        assert st["state"] == "ready", st
        served = {n["host"]: n["engine"]["load"]["served"] for n in st["nodes"]}
        assert all(v >= 1 for v in served.values()) and sum(served.values()) >= 30, served  # +1 verify each
        assert all(n["in_rotation"] is True for n in st["nodes"])
        assert sim.cli("stop", "--host", "rp2").returncode == 0
        ask(10)  # every one answered: the router retries on another replica, then leaves rp2 out
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = status(sim, "chat")
            if next(n for n in st["nodes"] if n["host"] == "rp2")["in_rotation"] is False:
                break
            time.sleep(1)
        assert st["state"] == "degraded", st
        assert next(n for n in st["nodes"] if n["host"] == "rp2")["in_rotation"] is False
        assert sim.cli("start", "--host", "rp2", timeout=200).returncode == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and status(sim, "chat")["state"] != "ready":
            time.sleep(1)
        assert status(sim, "chat")["state"] == "ready"
    finally:
        sim.cli("tunnel", "--host", "chat", "--stop")
        f.unlink()
        for n in names:
            sim.down(n)
