"""`invoke provision` end to end over real SSH on sim hosts (stand-in GPU and stand-in vllm package; the real
uv, venv, supervisor/systemd, huggingface_hub download and OpenAI client), plus the tunnel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gpuprov import api
from gpuprov.connection import SSHRunner

from ..conftest import REPO

pytestmark = pytest.mark.lab
A5000 = "2x-rtx-a5000_driver-590.44.01"
HF_TOKEN = "hf_TESTTOKENdoNotLeak0123456789"


def remote(name: str, *argv: str, stdin: bytes | None = None) -> str:
    r = SSHRunner(api.select_hosts(name)[0], api.known_hosts()).connect()
    try:
        return r.run(list(argv), stdin=stdin).stdout
    finally:
        r.close()


def provision(sim, name, *extra, env=None, timeout=300):
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        p = sim.cli("provision", "--host", name, *extra, timeout=timeout)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return p


def engine_pid(name: str, systemd: bool) -> str:
    if systemd:
        return remote(name, "systemctl", "show", "gpuprov-vllm", "-p", "MainPID", "--value").strip()
    return remote(name, "python3", "-c",
                  "import json;print(json.load(open('/opt/gpuprov/run/vllm.pid.state'))['child'])").strip()


@pytest.fixture(scope="module")
def plain(sim):
    sim.up("pv1", gpu=A5000)
    p = provision(sim, "pv1", "--json", env={"HF_TOKEN": HF_TOKEN})
    return sim, p


def test_provision_from_nothing_to_a_verified_completion(plain):
    sim, p = plain
    assert p.returncode == 0, p.stdout + p.stderr
    recap = json.loads(p.stdout.splitlines()[-1])["hosts"]["pv1"]
    assert recap["ready"] is True and recap["failed"] == 0 and recap["changed"] > 5
    state = json.loads(remote("pv1", "cat", "/opt/gpuprov/state.json"))
    assert state["vllm_version"] == "0.33.0" and state["service_manager"] == "supervisor"
    assert remote("pv1", "/opt/gpuprov/venvs/vllm-0.33.0-cu130-py3.11/bin/vllm", "--version").strip() == "0.33.0"
    # the weights came from the (stand-in) hub through huggingface_hub into HF_HOME
    assert "model-00003-of-00003.safetensors" in remote("pv1", "find", "/opt/gpuprov/hf/hub", "-name", "*.safetensors")


def test_second_run_changes_nothing_and_keeps_the_engine(plain):
    sim, _ = plain
    pid = engine_pid("pv1", False)
    p = provision(sim, "pv1", "--json", env={"HF_TOKEN": HF_TOKEN})
    recap = json.loads(p.stdout.splitlines()[-1])["hosts"]["pv1"]
    assert (recap["changed"], recap["failed"], recap["ready"]) == (0, 0, True), p.stdout
    # one exec in all: the session runs the probe, holds the run lock, gathers the state and makes the readiness
    # check with its completion, each inside its own Python
    assert recap["execs"] == 1
    assert engine_pid("pv1", False) == pid


def test_one_var_changes_only_the_args_and_restarts_once(plain):
    sim, _ = plain
    pid = engine_pid("pv1", False)
    p = provision(sim, "pv1", "-e", "max_num_seqs=8", env={"HF_TOKEN": HF_TOKEN})
    assert p.returncode == 0, p.stdout + p.stderr
    changed = [line.split("| ", 1)[1].split(":")[0] for line in p.stdout.splitlines() if line.startswith("changed")]
    assert changed == ["engine launcher (the exact vllm serve command)", "restart vllm", "record what is installed"]
    assert "--max-num-seqs 8" in remote("pv1", "cat", "/opt/gpuprov/bin/vllm-serve")
    assert engine_pid("pv1", False) != pid
    state = json.loads(remote("pv1", "cat", "/opt/gpuprov/run/vllm.pid.state"))
    assert state["restarts"] == 0  # a clean restart by the handler, not a crash loop


def test_secrets_stay_out_of_argv_logs_recaps_and_diffs(plain):
    sim, _ = plain
    p = provision(sim, "pv1", "--diff", "-e", "max_num_seqs=8", "-e", "api_key=sk-ALSOsecret42",
                  env={"HF_TOKEN": HF_TOKEN})
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout + p.stderr
    assert HF_TOKEN not in out and "sk-ALSOsecret42" not in out
    assert "content hidden" in out  # the env file's diff is hidden
    ps = remote("pv1", "ps", "-eo", "args")
    logs = remote("pv1", "sh", "-c", "cat /opt/gpuprov/logs/* /opt/gpuprov/hf/.gpuprov/*.log 2>/dev/null")
    for text in (ps, logs):
        assert HF_TOKEN not in text and "sk-ALSOsecret42" not in text
    assert remote("pv1", "stat", "-c", "%a", "/opt/gpuprov/vllm.env").strip() == "600"
    env = remote("pv1", "cat", "/opt/gpuprov/vllm.env")
    assert f"HF_TOKEN={HF_TOKEN}" in env and "VLLM_API_KEY=sk-ALSOsecret42" in env
    # the engine now requires the key
    code = remote("pv1", "python3", "-c",
                  "import urllib.request,urllib.error\n"
                  "try: urllib.request.urlopen('http://127.0.0.1:8000/v1/models')\n"
                  "except urllib.error.HTTPError as e: print(e.code)").strip()
    assert code == "401"
    provision(sim, "pv1", "-e", "max_num_seqs=8", env={"HF_TOKEN": HF_TOKEN})  # back to no key


def test_openai_streaming_and_tools_through_the_tunnel(plain):
    from openai import OpenAI

    t = api.open_tunnel(api.select_hosts("pv1")[0], 18000, next_free=True)
    try:
        client = OpenAI(base_url=t.base_url, api_key="unused", timeout=20, max_retries=0)
        chunks = list(client.chat.completions.create(model="openai/gpt-oss-20b", stream=True, max_tokens=16,
                                                     messages=[{"role": "user", "content": "stream please"}]))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "stream please" in text and chunks[-1].choices[0].finish_reason in ("stop", "length")
        tools = [{"type": "function",
                  "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
        r = client.chat.completions.create(model="openai/gpt-oss-20b", messages=[{"role": "user", "content": "time?"}],
                                           tools=tools)
        assert r.choices[0].message.tool_calls[0].function.name == "get_time"
    finally:
        t.stop()


def _kill_host_side_of(t, name: str) -> None:
    """Kill, on the host, the sshd process serving the tunnel's TCP connection (found by its 4-tuple)."""

    if t.kind == "openssh":
        out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, timeout=10).stdout
        line = next(x for x in out.splitlines() if f"pid={t._proc.pid}," in x and x.split()[4].endswith(":22"))
        local = line.split()[3]
    else:
        addr, port = t._runner.transport.sock.getsockname()[:2]
        local = f"{addr}:{port}"
    sport = local.rsplit(":", 1)[1]
    script = (f"ss -tnpH state established '( sport = :22 and dport = :{sport} )' | grep -o 'pid=[0-9]*' | head -1 "
              "| cut -d= -f2 | xargs -r kill -9")
    remote(name, "sh", "-c", script)


@pytest.mark.parametrize("transport", ["openssh", "paramiko"])
def test_tunnel_reconnects_after_the_ssh_connection_is_killed_on_the_host(plain, transport):
    from openai import OpenAI

    t = api.open_tunnel(api.select_hosts("pv1")[0], 18100, next_free=True, transport=transport)
    try:
        client = OpenAI(base_url=t.base_url, api_key="unused", timeout=10, max_retries=0)
        assert client.models.list().data[0].id == "openai/gpt-oss-20b"
        _kill_host_side_of(t, "pv1")
        deadline = time.monotonic() + 40
        answered = False
        while time.monotonic() < deadline:
            try:
                answered = client.models.list().data[0].id == "openai/gpt-oss-20b"
                if answered and t.reconnects >= 1:
                    break
            except Exception:  # noqa: BLE001 - refused while reconnecting
                pass
            time.sleep(0.5)
        assert answered and t.reconnects >= 1, (answered, t.reconnects)
    finally:
        t.stop()


def test_busy_local_port_is_a_clear_error(plain):
    import socket

    from gpuprov.errors import UsageError

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        with pytest.raises(UsageError, match="already in use"):
            api.open_tunnel(api.select_hosts("pv1")[0], port)
    finally:
        s.close()


def test_impossible_plan_is_refused_before_anything_is_installed(sim):
    sim.up("pv2", gpu="tesla-t4_driver-515.105.01")
    p = provision(sim, "pv2", "--json")
    assert p.returncode == 2
    recap = json.loads(p.stdout.splitlines()[-1])["hosts"]["pv2"]
    assert "driver 515.105.01" in recap["refused"] or "compute capability" in recap["refused"]
    assert remote("pv2", "sh", "-c", "test -e /opt/gpuprov && echo yes || echo no").strip() == "no"


def test_engine_failure_is_diagnosed(sim):
    sim.up("pv3", gpu=A5000)
    p = provision(sim, "pv3", "-e", "engine_env={GPUPROV_STANDIN_KV_TOKENS: '4096', GPUPROV_STANDIN_DELAY: '0.5'}")
    assert p.returncode == 1
    assert "estimated maximum model length is 4096" in p.stdout
    assert "max_model_len=4096" in p.stdout  # the diagnosis names the length that fits


@pytest.mark.systemd
def test_systemd_host_provision_and_noop(sim):
    sim.up("pvs", gpu=A5000, systemd=True)
    p = provision(sim, "pvs", "--json", timeout=400)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["hosts"]["pvs"]["ready"] is True
    assert remote("pvs", "systemctl", "is-active", "gpuprov-vllm").strip() == "active"
    assert remote("pvs", "systemctl", "is-enabled", "gpuprov-vllm").strip() == "enabled"
    pid = engine_pid("pvs", True)
    p = provision(sim, "pvs", "--json")
    recap = json.loads(p.stdout.splitlines()[-1])["hosts"]["pvs"]
    assert (recap["changed"], recap["ready"]) == (0, True)
    assert engine_pid("pvs", True) == pid
    # Restart=on-failure: a killed engine comes back
    remote("pvs", "systemctl", "kill", "-s", "KILL", "gpuprov-vllm")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and engine_pid("pvs", True) in ("0", pid):
        time.sleep(0.5)
    assert engine_pid("pvs", True) not in ("0", pid)
    assert "gpuprov-vllm" in remote("pvs", "journalctl", "-u", "gpuprov-vllm", "--no-pager", "-n", "50")


@pytest.mark.gpu
def test_real_gpu_host():
    """Point the suite at a real GPU box: GPUPROV_GPU_HOST=user@address[:port] (with its key in your agent)."""
    target = os.environ.get("GPUPROV_GPU_HOST")
    if not target:
        pytest.skip("GPUPROV_GPU_HOST is not set")
    p = subprocess.run(["invoke", "provision", "--host", target, "--json"],
                       capture_output=True, text=True, timeout=7200)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["hosts"][target]["ready"] is True


def test_a_failing_new_configuration_is_rolled_back(plain):
    """The new engine dies at start-up (out of memory): the diagnosis is shown and the last verified
    configuration is put back, so the endpoint keeps serving."""
    sim, _ = plain
    assert provision(sim, "pv1", env={"HF_TOKEN": HF_TOKEN}).returncode == 0  # the verified configuration
    p = provision(sim, "pv1", "--json", "-e", "engine_env={GPUPROV_STANDIN_FAIL: oom}", env={"HF_TOKEN": HF_TOKEN})
    assert p.returncode == 1
    recap = json.loads(p.stdout.splitlines()[-1])["hosts"]["pv1"]
    assert recap["ready"] is False and recap["rolled_back"] is True and "out of GPU memory" in recap["diagnosis"]
    assert "GPUPROV_STANDIN_FAIL" not in remote("pv1", "cat", "/opt/gpuprov/vllm.env")
    s = status_of(sim, "pv1")
    assert (s["service"], s["ready"]) == ("active", True)
    # and the next plain run finds everything as it should be
    recap = json.loads(provision(sim, "pv1", "--json",
                                 env={"HF_TOKEN": HF_TOKEN}).stdout.splitlines()[-1])["hosts"]["pv1"]
    assert (recap["changed"], recap["ready"]) == (0, True)


def test_port_taken_is_diagnosed(sim):
    sim.up("pv6", gpu=A5000)
    remote("pv6", "sh", "-c", "setsid -f python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 </dev/null")
    p = provision(sim, "pv6", "-e", "engine_env={GPUPROV_STANDIN_DELAY: '0.2'}")
    assert p.returncode == 1
    assert "port is taken" in p.stdout


@pytest.mark.parametrize("sig,after", [(signal.SIGINT, 1.0), (signal.SIGKILL, 2.0)])
def test_interrupted_provision_converges_on_rerun(sim, sig, after):
    """Ctrl-C (SIGINT) or a killed client (connection gone) in the middle of installing: the host lock is
    released with the connection and the next run converges to a verified endpoint."""
    name = f"pvi{int(sig)}"
    sim.up(name, gpu=A5000)
    env = {**os.environ, **sim.env}
    p = subprocess.Popen([sys.executable, "-m", "invoke", "provision", "--host", name], cwd=str(REPO), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(after)
    p.send_signal(sig)
    try:
        p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
    q = provision(sim, name, "--json")
    assert q.returncode == 0, q.stdout + q.stderr
    assert json.loads(q.stdout.splitlines()[-1])["hosts"][name]["ready"] is True
    assert json.loads(provision(sim, name, "--json").stdout.splitlines()[-1])["hosts"][name]["changed"] == 0


def test_disk_full_during_the_download_fails_cleanly_and_converges_later(sim):
    """HF_HOME on a 4 MiB filesystem (the pre-download free-space check turned off with a var, so the disk
    really fills mid-download): the run fails with the fetcher's reason, the engine is not started on
    half-downloaded weights, and once there is room the next run converges."""
    sim.up("pv7", gpu=A5000)
    remote("pv7", "sh", "-c", "mkdir -p /opt/gpuprov/hf && mount -t tmpfs -o size=4m tmpfs /opt/gpuprov/hf")
    p = provision(sim, "pv7", "--json", "-e", "weights_min_free_gib=0")
    assert p.returncode == 1
    recap = json.loads(p.stdout.splitlines()[-1])["hosts"]["pv7"]
    assert "weights download failed" in recap["error"] and "No space left on device" in recap["error"]
    assert remote("pv7", "sh", "-c", "ls /opt/gpuprov/bin/vllm-serve 2>/dev/null || echo none").strip() == "none"
    remote("pv7", "umount", "/opt/gpuprov/hf")
    p = provision(sim, "pv7", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["hosts"]["pv7"]["ready"] is True


def status_of(sim, name):
    p = sim.cli("status", "--host", name, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_status_running_stopped_and_logs(plain):
    sim, _ = plain
    s = status_of(sim, "pv1")
    assert (s["service"], s["ready"], s["model"], s["vllm_version"]) == ("active", True, "openai/gpt-oss-20b", "0.33.0")
    assert s["endpoint"].startswith("http://127.0.0.1:8000/v1") and s["gpus"][0]["memory_total_mib"] == 24564
    assert s["gpu_source"] == "nvml"  # the real pynvml on the host, in front of the lab's stand-in library
    assert sim.cli("stop", "--host", "pv1").returncode == 0
    s = status_of(sim, "pv1")
    assert (s["service"], s["ready"]) == ("inactive", False)
    p = sim.cli("start", "--host", "pv1")
    assert p.returncode == 0 and "ready" in p.stdout
    assert status_of(sim, "pv1")["service"] == "active"
    logs = sim.cli("logs", "--host", "pv1", "-n", "400").stdout
    assert "Application startup complete." in logs


def test_status_of_a_crashed_engine(sim):
    # pv3 was provisioned with a KV cache too small for its max_model_len: the engine keeps failing
    s = status_of(sim, "pv3")
    assert s["service"] == "failed" and s["ready"] is False


def test_background_tunnel_and_stop(plain):
    from openai import OpenAI

    sim, _ = plain
    pidf = os.path.join(sim.env["GPUPROV_HOME"], "tunnels", "pv1.pid")
    p = sim.cli("tunnel", "--host", "pv1", "--background", "--local-port", "18300", "--next-free")
    try:  # whatever fails below, the background tunnel this test started is stopped
        assert p.returncode == 0 and "background" in p.stdout, p.stdout + p.stderr
        url = p.stdout.split("OPENAI_BASE_URL=", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:18") and url.endswith("/v1")
        pid = int(open(pidf).read())
        # the command returned only once the tunnel answered: the very first request goes through
        client = OpenAI(base_url=url, api_key="x", timeout=10, max_retries=0)
        assert client.models.list().data[0].id == "openai/gpt-oss-20b"
    finally:
        assert sim.cli("tunnel", "--host", "pv1", "--stop").returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_teardown_leaves_nothing_but_the_weights(plain):
    sim, _ = plain
    p = sim.cli("teardown", "--host", "pv1")
    assert p.returncode == 0, p.stdout + p.stderr
    left = remote("pv1", "sh", "-c", "ls -A /opt/gpuprov; ps -eo args | grep -c '[v]llm serve' || true")
    assert left.split() == ["hf", "0"]
    assert status_of(sim, "pv1")["service"] == "not-installed"
    assert sim.cli("teardown", "--host", "pv1").returncode == 0  # again: nothing to do
    # provisioning again reuses the kept weights, then --purge removes everything
    assert provision(sim, "pv1").returncode == 0
    assert sim.cli("teardown", "--host", "pv1", "--purge").returncode == 0
    assert remote("pv1", "sh", "-c", "test -e /opt/gpuprov && echo yes || echo no").strip() == "no"


@pytest.mark.systemd
def test_systemd_teardown(sim):
    p = sim.cli("teardown", "--host", "pvs")
    assert p.returncode == 0, p.stdout + p.stderr
    out = remote("pvs", "sh", "-c", "systemctl cat gpuprov-vllm >/dev/null 2>&1 && echo unit || echo nounit; "
                                    "ls -A /opt/gpuprov; systemctl is-active gpuprov-vllm || true")
    assert out.split() == ["nounit", "hf", "inactive"]


def test_two_runs_on_one_host_the_second_is_refused(sim):
    """A run holds an exclusive lock on the host; a second run is refused with who holds it; a dead run's
    lock is released with its connection."""
    from gpuprov.connection import SSHRunner
    from gpuprov.hostlock import HostBusy, HostSession

    sim.up("pv4", gpu=A5000)
    holder = SSHRunner(api.select_hosts("pv4")[0], api.known_hosts()).connect()
    try:
        with HostSession(holder) as held:
            held.lock("/opt/.gpuprov.lock", "a test holding the lock")
            p = provision(sim, "pv4", "--json")
            assert p.returncode == 4  # busy
            recap = json.loads(p.stdout.splitlines()[-1])["hosts"]["pv4"]
            assert "another gpuprov run holds the host lock (a test holding the lock" in recap["error"]
            assert remote("pv4", "sh", "-c", "test -e /opt/gpuprov && echo yes || echo no").strip() == "no"
            other = SSHRunner(api.select_hosts("pv4")[0], api.known_hosts()).connect()
            try:
                with pytest.raises(HostBusy), HostSession(other) as second:
                    second.lock("/opt/.gpuprov.lock", "second")
            finally:
                other.close()
    finally:
        holder.close()  # the connection ends: the lock is gone with it
    assert provision(sim, "pv4").returncode == 0


def test_names_with_shell_metacharacters_reach_the_host_quoted(sim):
    """A model id and extra args full of shell syntax are data, never code: the plan refuses the unknown
    model before anything runs, and quoted args land verbatim in the launcher."""
    sim.up("pv5", gpu=A5000)
    evil = "x/y; touch /tmp/pwned #"
    p = provision(sim, "pv5", "--json", "-e", f"model={evil}")
    assert p.returncode == 2
    assert remote("pv5", "sh", "-c", "test -e /tmp/pwned && echo yes || echo no").strip() == "no"
    p = provision(sim, "pv5", "-e", "extra_serve_args=['--seed', '$(touch /tmp/pwned2)']",
                  "-e", "engine_env={GPUPROV_STANDIN_DELAY: '0.2'}")
    assert p.returncode == 0, p.stdout + p.stderr  # the odd value is just a value to --seed
    assert remote("pv5", "sh", "-c", "test -e /tmp/pwned2 && echo yes || echo no").strip() == "no"
    launcher = remote("pv5", "cat", "/opt/gpuprov/bin/vllm-serve")
    assert "'$(touch /tmp/pwned2)'" in launcher
