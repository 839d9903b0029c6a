"""`invoke bench --first-provision`: a bare host to a verified endpoint, gpuprov against an expert typing the steps.

Two fresh, identical `--engine real` sim hosts (the real vLLM CPU build from the lab's package index, the lab's
tiny model from its hub). On the first, the steps an expert would type, one after another over one SSH connection:
a tools venv with uv and huggingface_hub from the same index gpuprov's bootstrap uses, `uv venv`, `uv pip install
vllm==<pin>`, `hf download` of the model, `vllm serve` with the flags gpuprov plans for that host under `nohup`,
wait for /health, one chat completion. On the second, `invoke provision`. Both are timed the same way (wall clock
around the whole thing, connection included), after the lab's wheel files were read once so neither run pays for a
cold page cache the other does not. The gpuprov host is a RunPod-like pod: afterwards it is reset as RunPod resets a
pod (processes gone, all but /workspace wiped, new key, new port) and provisioned again until verified ("back after
a reset"), against the engine's own start time in that run.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HAND = "/root/by-hand"

WAIT_AND_COMPLETE = r"""
import json, sys, time, urllib.request
port, model = int(sys.argv[1]), sys.argv[2]
deadline = time.monotonic() + 900
while time.monotonic() < deadline:
    try:
        if urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=2).status == 200:
            break
    except Exception:
        time.sleep(0.5)
else:
    sys.exit("not ready")
body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1}).encode()
req = urllib.request.Request("http://127.0.0.1:%d/v1/chat/completions" % port, data=body,
                             headers={"Content-Type": "application/json"})
print(json.loads(urllib.request.urlopen(req, timeout=120).read())["choices"][0]["message"])
"""


def log(msg: str) -> None:
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


def by_hand_steps(services: str, index: str, plan: dict, pins: list[str]) -> list[tuple[str, str]]:
    """(phase, shell command) in the order an expert types them."""
    env = {k: v for k, v in plan["env"].items() if not k.startswith(("HF_", "VLLM_CACHE_ROOT"))}
    env.update(HF_HOME=f"{HAND}/hf", HF_HUB_OFFLINE="1")
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    serve = shlex.join(plan["serve_args"])
    return [
        ("bootstrap", f"python3 -m venv {HAND}/tools && {HAND}/tools/bin/pip install -q --index-url {index} "
                      f"--trusted-host {urllib.parse.urlsplit(index).hostname} {shlex.join(pins)}"),
        ("engine install", f"{HAND}/tools/bin/uv venv -q --python python{plan['python']} {HAND}/venv && "
                           f"{HAND}/tools/bin/uv pip install -q --python {HAND}/venv/bin/python --index-url {index} "
                           f"vllm=={plan['vllm_version']}"),
        ("weights", f"HF_ENDPOINT={services} HF_HOME={HAND}/hf {HAND}/tools/bin/hf download -q {plan['model']}"),
        ("engine start", f"nohup env {exports} {HAND}/venv/bin/vllm serve {serve} > {HAND}/vllm.log 2>&1 "
                         f"< /dev/null & python3 -c {shlex.quote(WAIT_AND_COMPLETE)} {plan['engine_port']} "
                         f"{shlex.quote(plan['model'])}"),
    ]


def run_by_hand(host_name: str, services: str, plan: dict, pins: list[str]) -> dict:
    from gpuprov import api

    h = api.select_hosts(host_name)[0]
    index = str(h.var("package_index"))  # the lab's real-engine index, as gpuprov uses it
    t0 = time.perf_counter()
    r = api.open_runner(h, api.known_hosts())
    phases = {"connect": round(time.perf_counter() - t0, 3)}
    try:
        for phase, cmd in by_hand_steps(services, index, plan, pins):
            t = time.perf_counter()
            r.run(["bash", "-c", cmd], timeout=1800).check()
            phases[phase] = round(phases.get(phase, 0) + time.perf_counter() - t, 3)
    finally:
        r.close()
    return {"total_s": round(time.perf_counter() - t0, 3), "phases": phases}


def run_gpuprov(host_name: str) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([str(Path(sys.executable).parent / "invoke"), "provision", "--host", host_name, "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=1800)
    total = time.perf_counter() - t0
    recap = json.loads(p.stdout.strip().splitlines()[-1])["hosts"][host_name]
    if p.returncode != 0 or not recap.get("ready"):
        raise RuntimeError(f"gpuprov's first provision failed: {p.stdout[-2000:]}{p.stderr[-2000:]}")
    return {"total_s": round(total, 3), "phases": recap.get("phases", {}), "execs": recap.get("execs")}


def run_back_after_reset(host_name: str) -> dict:
    """The gpuprov host is a RunPod-like pod: reset it as RunPod does, then provision until verified again. Compared
    with the engine's own start (the "engine start" phase of that same run: start command to ready)."""
    from gpuprov.sim import control as lab_control

    lab_control.sim_reset(host_name)
    back = run_gpuprov(host_name)
    engine = back["phases"].get("engine start") or 0.0
    return {"what": "back after a reset", "engine": "real", "gpuprov_s": back["total_s"],
            "engine_start_s": round(engine, 3), "overhead_s": round(back["total_s"] - engine, 3),
            "ratio": round(back["total_s"] / engine, 3) if engine else None, "phases": back["phases"],
            "execs": back["execs"]}


def warm_page_cache() -> None:
    from gpuprov.sim import real_engine

    for f in real_engine.wheelhouse(log=log).glob("*.whl"):
        with open(f, "rb") as fh:
            while fh.read(1 << 22):
                pass


def bench_first_provision() -> list[dict]:
    from gpuprov import api
    from gpuprov.provision import BOOTSTRAP_PINS
    from gpuprov.sim import control as lab_control
    from gpuprov.sim import real_engine

    why = real_engine.unavailable()
    if why:
        return [{"what": "first provision", "engine": "real", "skipped": why}]
    names = ("fph", "fpg")  # by hand, gpuprov (a RunPod-like pod, so that it can be reset afterwards)
    for n in names:
        if n in lab_control.sim_lab().hosts():
            lab_control.sim_down(n)  # a host left by an interrupted run
        lab_control.sim_up(n, gpu=real_engine.PERSONA, engine="real", runpod=n == "fpg")
    try:
        services = lab_control.sim_lab().services_url
        warm_page_cache()
        plan = api.plan(api.select_hosts(names[0]))[0].value
        if plan is None or not plan.ok:
            raise RuntimeError(f"no plan for the by-hand host: {plan}")
        log("first provision by hand (one SSH connection, the steps one after another)")
        hand = run_by_hand(names[0], services, plan.to_json(), BOOTSTRAP_PINS)
        log(json.dumps(hand))
        log("first provision with gpuprov")
        gp = run_gpuprov(names[1])
        log(json.dumps(gp))
        log("back after a RunPod reset: sim-reset, then provision until verified")
        back = run_back_after_reset(names[1])
        log(json.dumps(back))
    finally:
        for n in names:
            lab_control.sim_down(n)  # stops that host's processes only (its own namespace)
    return [{"what": "first provision", "engine": "real", "gpuprov_s": gp["total_s"], "by_hand_s": hand["total_s"],
             "ratio": round(gp["total_s"] / hand["total_s"], 3), "phases": gp["phases"],
             "by_hand_phases": hand["phases"], "gpuprov_execs": gp["execs"], "vllm": plan.vllm_version,
             "model": plan.model}, back]
