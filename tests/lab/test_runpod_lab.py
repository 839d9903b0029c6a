"""RunPod as it behaves, in the lab: a ``--runpod`` sim host (private /workspace, the pod's env in PID 1 and
/etc/rp_environment, sshd on a random port) found through the ``plugin: runpod`` source that the lab's STAND-IN of
RunPod's v2 API answers; provisioned, reset like a pod (processes gone, all but /workspace wiped, new host key, new
port) and provisioned again; a key change without a reset; a host that behaves like RunPod's PTY-only SSH proxy."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from gpuprov import api
from gpuprov.connection import SSHRunner

pytestmark = pytest.mark.lab
A5000 = "2x-rtx-a5000_driver-590.44.01"
POD_KEY = "sk-podApiKeyDoNotLeak4242"
POD_TOKEN = "hf_PodTokenDoNotLeak0123456789"
POD_ENV = {"MODEL": "Qwen/Qwen3-8B", "MAX_NUM_SEQS": "32", "API_KEY": POD_KEY, "HF_TOKEN": POD_TOKEN}
VENV = "/workspace/gpuprov/venvs/vllm-0.33.0-cu130-py3.11"
WEIGHTS_MARKER = "/workspace/.cache/huggingface/.gpuprov/Qwen--Qwen3-8B.done"
REPIN = "so its new host key was pinned for runpod-"


def on_host(name: str, *argv: str) -> str:
    r = SSHRunner(api.select_hosts(name)[0], api.known_hosts()).connect()
    try:
        return r.run(list(argv), timeout=30).stdout
    finally:
        r.close()


def cli(sim, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return sim.cli(*args, timeout=timeout)
    finally:
        os.environ.clear()
        os.environ.update(old)


def recap(p: subprocess.CompletedProcess, host: str) -> dict:
    return json.loads(p.stdout.splitlines()[-1])["hosts"][host]


def marks(name: str) -> str:
    """Inode and mtime of what a reset must not touch: the venv's completion marker and the weights' marker."""
    return on_host(name, "stat", "-c", "%i %Y %n", f"{VENV}/.gpuprov-complete", WEIGHTS_MARKER)


@pytest.fixture(scope="module")
def pod(sim):
    h = sim.up("rpa", gpu=A5000, runpod=True, pod_env=POD_ENV)
    return sim, h


def test_the_pods_model_is_planned_and_the_controllers_model_is_not(pod):
    sim, h = pod
    inv = json.loads(cli(sim, "inventory", "--host", "rpa", "--json").stdout.splitlines()[0])
    assert inv["address"] == h.address and inv["port"] == h.port  # from the API's ssh.direct
    assert inv["vars"]["model"] == {"value": "Qwen/Qwen3-8B", "source": "pod env (RunPod API)"}
    assert inv["vars"]["host_key_alias"]["value"] == f"runpod-{h.pod_id}"
    # MODEL in the controller's own shell belongs to other programs: the pod's MODEL is the planned one
    p = cli(sim, "plan", "--host", "rpa", "--json", env={"MODEL": "meta-llama/Llama-3.2-3B-Instruct"})
    plan = json.loads(p.stdout.splitlines()[0])
    assert p.returncode == 0 and plan["model"] == "Qwen/Qwen3-8B" and plan["max_num_seqs"] == 32, p.stdout
    assert plan["install_root"] == "/workspace/gpuprov" and plan["hf_home"] == "/workspace/.cache/huggingface"


def test_provision_keeps_everything_under_workspace(pod):
    sim, _ = pod
    p = cli(sim, "provision", "--host", "rpa", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert recap(p, "rpa")["ready"] is True
    assert "model-00003-of-00003.safetensors" in on_host("rpa", "find", "/workspace/.cache/huggingface/hub")
    # the venv's interpreter is the image's (survives a reset), never one under a wiped folder
    real = on_host("rpa", "readlink", "-f", f"{VENV}/bin/python").strip()
    assert real.startswith("/usr/bin/python3"), real
    assert on_host("rpa", "sh", "-c", "ls -A /root /opt /tmp | grep -v '^/' | grep -v ':$' || true").split() == []
    # gpuprov's compiled programs are kept under /workspace too (a reset does not make the pod compile them again)
    assert "probe-" in on_host("rpa", "ls", "/workspace/.cache/gpuprov/py")


def test_after_a_reset_provision_repins_once_and_reinstalls_nothing(pod):
    sim, h = pod
    before = marks("rpa")
    from gpuprov.sim import control

    after = control.sim_reset("rpa")
    assert after.port != h.port and after.started_at != h.started_at
    p = cli(sim, "provision", "--host", "rpa")
    assert p.returncode == 0, p.stdout + p.stderr
    notices = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(notices) == 1 and REPIN in notices[0] and after.started_at in notices[0], p.stderr
    changed = [line.split("|", 1)[1].strip() for line in p.stdout.splitlines() if line.startswith("changed ")]
    # the engine started again; nothing was installed or downloaded
    assert changed == ["engine running (supervisor): gpuprov-vllm: start"], p.stdout
    assert "rpa: verified — a 1-token chat completion answered" in p.stdout
    assert marks("rpa") == before
    assert on_host("rpa", "cat", "/proc/1/comm").strip() == "start.sh"  # PID 1 is still the pod's own
    assert cli(sim, "provision", "--host", "rpa", "--json").stderr.count(REPIN) == 0  # pinned now


def test_a_background_tunnel_finds_the_pod_again_after_a_reset(pod):
    from openai import OpenAI

    from gpuprov.sim import control

    sim, _ = pod
    p = cli(sim, "tunnel", "--host", "rpa", "--background", "--next-free", "--local-port", "18600")
    assert p.returncode == 0, p.stdout + p.stderr
    url = p.stdout.split("OPENAI_BASE_URL=", 1)[1].split()[0]
    try:
        control.sim_reset("rpa")  # the tunnel's ssh dies with the old port; it asks the API where the pod went
        assert cli(sim, "provision", "--host", "rpa").returncode == 0
        client = OpenAI(base_url=url, api_key=POD_KEY, timeout=5, max_retries=0)
        deadline, last = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                r = client.chat.completions.create(model="Qwen/Qwen3-8B", max_tokens=4,
                                                   messages=[{"role": "user", "content": "hi"}])
                break
            except Exception as e:  # noqa: BLE001 - the tunnel is reconnecting
                last = e
                time.sleep(1)
        else:
            raise AssertionError(f"the tunnel did not come back within 60 s: {last}")
        assert r.choices[0].message.content
    finally:
        cli(sim, "tunnel", "--host", "rpa", "--stop")


def test_a_key_change_without_a_restart_is_refused(pod):
    sim, _ = pod
    sim_lab = __import__("gpuprov.sim.control", fromlist=["sim_lab"]).sim_lab()
    sim_lab.rekey("rpa")
    p = cli(sim, "status", "--host", "rpa")
    assert p.returncode == 3 and "has CHANGED since it was pinned" in p.stderr and REPIN not in p.stderr, p.stderr
    assert "invoke forget-host --host rpa" in p.stderr


def test_the_api_key_and_pod_secrets_never_show(pod):
    sim, _ = pod
    key = Path(sim.env["GPUPROV_HOME"], "sim", "services", "runpod", "api-key").read_text().strip()
    secrets = [key, POD_KEY, POD_TOKEN, "rpa_pod_scoped_"]
    seen: list[str] = []
    done = threading.Event()

    def watch_ps() -> None:  # every process on this machine, while gpuprov runs
        while not done.is_set():
            for c in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    seen.append(c.read_bytes().decode(errors="replace"))
                except OSError:
                    pass
            done.wait(0.05)

    t = threading.Thread(target=watch_ps, daemon=True)
    t.start()
    try:
        cli(sim, "forget-host", "--host", "rpa")
        outs = [cli(sim, *args) for args in (("inventory", "--host", "rpa", "--json"), ("inventory", "--host", "rpa"),
                                             ("probe", "--host", "rpa", "--json", "-v"),
                                             ("provision", "--host", "rpa", "--json", "-v"),
                                             ("status", "--host", "rpa", "--json"),
                                             ("tunnel", "--host", "rpa", "--background", "--next-free"))]
        cli(sim, "tunnel", "--host", "rpa", "--stop")
    finally:
        done.set()
        t.join(5)
    assert outs[3].returncode == 0, outs[3].stdout + outs[3].stderr
    logs = [f.read_text(errors="replace") for f in Path(sim.env["GPUPROV_HOME"]).rglob("*.log")]
    for s in secrets:
        for o in outs:
            assert s not in o.stdout + o.stderr
        assert not any(s in text for text in logs)
        assert not any(s in cmd for cmd in seen)
    assert len(seen) > 100  # the watcher did look


@pytest.fixture(scope="module")
def proxy(sim):
    return sim.up("rpx", gpu=A5000, proxy_only=True)


@pytest.mark.parametrize("args", [("probe",), ("plan",), ("provision",), ("status",), ("logs",), ("stop",),
                                  ("start",), ("restart",), ("teardown",), ("tunnel",), ("models", "--fit")],
                         ids=lambda a: a[0])
def test_every_task_on_the_proxy_ends_in_one_line(sim, proxy, args):
    flag = "--fit" if args[-1] == "--fit" else "--host"
    p = cli(sim, *args[:1], flag, "rpx", timeout=60)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 3, p.stdout + p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: rpx: this is RunPod's SSH proxy"), p.stderr
    assert "SSH over exposed TCP" in lines[0] and "Traceback" not in p.stdout


def test_a_play_on_the_proxy_is_unreachable_with_the_reason(sim, proxy, tmp_path):
    book = tmp_path / "p.yml"
    book.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n    - command: 'true'\n")
    p = cli(sim, "play", str(book), "--host", "rpx", timeout=60)
    assert p.returncode == 3 and p.stderr.count("this is RunPod's SSH proxy") == 1, p.stdout + p.stderr


def test_the_proxy_refuses_sftp_and_forwarding_but_gives_a_pty(proxy):
    r = SSHRunner(api.select_hosts("rpx")[0], api.known_hosts()).connect()
    try:
        assert r.sftp_works() is False
        with pytest.raises(paramiko.ChannelException):
            r.transport.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 0), timeout=5)
        chan = r.transport.open_session(timeout=5)
        chan.get_pty()
        chan.invoke_shell()
        chan.settimeout(5)
        chan.sendall(b"echo pty-$((6*7))\nexit\n")
        out = b""
        while b"pty-42" not in out:
            data = chan.recv(4096)
            if not data:
                break
            out += data
        assert b"pty-42" in out  # an interactive terminal is all it offers
    finally:
        r.close()
