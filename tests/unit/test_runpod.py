"""RunPod without RunPod: the ``plugin: runpod`` inventory source against a local STAND-IN of the v2 API answering
with tests/fixtures/runpod/pods.json (the API's documented example and variations of it), the pod's environment
as facts and host defaults, the proxy's signature, pid files that name one process, and pins per pod ID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paramiko
import pytest

from gpuprov import remote
from gpuprov.connection import KnownHosts, SSHRunner
from gpuprov.errors import InventoryError, ProxyOnly, UsageError
from gpuprov.facts import Facts, facts_from_probe
from gpuprov.inventory import Inventory, Var
from gpuprov.plan import with_pod_env
from gpuprov.runpod import knob_values, proxy_refusal
from gpuprov.secrets import Secret

from ..conftest import FIXTURES

PODS = json.loads((FIXTURES / "runpod" / "pods.json").read_text())
KEY = "rpa_TESTKEY0123456789ABCDEF"


class StandInAPI(BaseHTTPRequestHandler):
    """A STAND-IN of RunPod's v2 API: GET /v2/pods for the bearer KEY; records every request it saw."""

    seen: list = []
    answer: tuple = (200, PODS)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append({"line": self.requestline, "headers": dict(self.headers)})
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            code, body = 401, {"error": "unauthorized"}
        elif self.path.split("?")[0] != "/v2/pods":
            code, body = 404, {"error": "not found"}
        else:
            code, body = type(self).answer
        data = (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(code)
        if code in (301, 302):
            self.send_header("Location", "http://127.0.0.1:9/v2/pods")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api():
    StandInAPI.seen, StandInAPI.answer = [], (200, PODS)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), StandInAPI)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def source(tmp_path: Path, api_url: str, extra: str = "") -> Path:
    inv = tmp_path / "inventory"
    inv.mkdir(exist_ok=True)
    (inv / "pods.yml").write_text(f"plugin: runpod\napi_url: {api_url}\n{extra}")
    return inv


def load(inv: Path, defaults: dict | None = None) -> Inventory:
    return Inventory.from_path(inv, defaults or {"model": Var("openai/gpt-oss-20b", "built-in default")})


def test_running_pods_with_a_direct_endpoint_become_hosts(tmp_path, api, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    inv = load(source(tmp_path, api, "group_by: [datacenter]\nvars: {identity_file: ~/.ssh/id_ed25519}\n"))
    # two pods named llm-b: the one with the smaller pod ID keeps the name, the other one gets its ID appended
    assert sorted(inv.hosts) == ["My-Pod-1-test", "llm-b", "llm-b-k2j4h6g8f0", "pytorch-training"]
    h = inv.host("pytorch-training")
    assert (h.address, h.port, h.user) == ("195.26.233.3", 34446, "root")  # ssh.direct of the documented example
    assert h.var("host_key_alias") == "runpod-7h9k2m4n6p"
    got = (h.var("runpod_pod_id"), h.var("runpod_cuda_version"), h.var("runpod_gpu_count"))
    assert got == ("7h9k2m4n6p", "12.8", 1)
    assert h.var("runpod_started_at") == "2026-06-01T12:02:00Z"
    assert set(h.groups) >= {"all", "runpod", "runpod_datacenter_us_ks_2"}
    assert inv.host("llm-b-k2j4h6g8f0").groups[-1] == "runpod_datacenter_eu_ro_1"
    assert inv.host("llm-b").identity_file == os.path.expanduser("~/.ssh/id_ed25519")
    why = {name: inv.unavailable(name) for name in ("llm-proxy-only", "llm-stopped", "llm-booting")}
    assert "no direct SSH endpoint" in why["llm-proxy-only"] and "22/tcp" in why["llm-proxy-only"]
    assert "EXITED" in why["llm-stopped"] and "starting" in why["llm-booting"]
    with pytest.raises(UsageError, match="llm-proxy-only: RunPod pod p9q8r7s6t5 .* no direct SSH endpoint"):
        inv.select("llm-proxy-only")


def test_the_key_travels_only_as_a_bearer_header(tmp_path, api, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    load(source(tmp_path, api))
    (req,) = StandInAPI.seen
    assert req["line"] == "GET /v2/pods HTTP/1.1" and KEY not in req["line"]
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert [k for k, v in req["headers"].items() if KEY in v] == ["Authorization"]


def test_pod_env_is_a_layer_below_the_inventory_and_its_secrets_stay_secret(tmp_path, api, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    inv_dir = source(tmp_path, api, "vars: {max_model_len: 32768}\n")
    defaults = {"model": Var("openai/gpt-oss-20b", "built-in default"),
                "gpu_memory_utilization": Var(0.5, "environment GPUPROV_GPU_MEMORY_UTILIZATION")}
    h = load(inv_dir, defaults).host("llm-b-k2j4h6g8f0")
    assert h.vars["model"] == Var("openai/gpt-oss-120b", "pod env (RunPod API)")  # above the built-in default
    assert h.var("gpu_memory_utilization") == 0.88  # above the controller's GPUPROV_* (less specific)
    assert h.var("max_model_len") == 32768 and "pod env" not in h.vars["max_model_len"].source  # inventory wins
    assert "HF_TOKEN" not in h.vars and "hf_sEcReTtOkEn123456" not in repr(dict(h.vars))
    assert all("hunter2" not in repr(v.value) for v in h.vars.values())


def test_an_api_that_fails_leaves_the_rest_of_the_inventory_working(tmp_path, api, monkeypatch):
    inv_dir = source(tmp_path, api)
    (inv_dir / "hosts.yml").write_text("lab:\n  hosts:\n    box: {address: 203.0.113.9}\n")
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    inv = load(inv_dir)
    assert inv.select("box")[0].address == "203.0.113.9"
    (src,) = inv.sources
    assert "no RunPod API key: export RUNPOD_API_KEY=" in src.error
    with pytest.raises(UsageError, match="found no pods: no RunPod API key"):
        inv.select("llm-b")
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_WRONG_KEY_999")
    inv = load(inv_dir)
    assert inv.sources[0].error == f"the RunPod API at {api} refused the API key (HTTP 401); check RUNPOD_API_KEY"
    assert "rpa_WRONG_KEY_999" not in inv.sources[0].error


@pytest.mark.parametrize(("answer", "says"), [
    ((302, b""), "(HTTP 302)"),  # a redirect would carry the key elsewhere: refused, never followed
    ((200, b"<html>maintenance</html>"), "answered something that is not JSON"),
    ((200, {"data": []}), "answered without a pods list"),
    ((500, b"oops"), "answered (HTTP 500)"),
])
def test_odd_api_answers_are_one_line(tmp_path, api, monkeypatch, answer, says):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    StandInAPI.answer = answer
    inv = load(source(tmp_path, api))
    assert says in inv.sources[0].error and not inv.hosts
    assert len(StandInAPI.seen) == 1


def test_key_file_must_be_private(tmp_path, api, monkeypatch):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    key.chmod(0o644)
    inv = load(source(tmp_path, api, f"api_key_file: {key}\n"))
    assert inv.sources[0].error == f"the API key file {key} is readable by others (chmod 600 {key})"
    key.chmod(0o600)
    assert "llm-b" in load(source(tmp_path, api, f"api_key_file: {key}\n")).hosts


def test_name_filter_and_env_url_override(tmp_path, api, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    monkeypatch.setenv("RUNPOD_API_URL", api)
    inv_dir = tmp_path / "inv"
    inv_dir.mkdir()
    (inv_dir / "rp.yml").write_text("plugin: runpod\nname_filter: '^llm-'\ngroup: gpus\n")
    inv = load(inv_dir)
    assert sorted(inv.hosts) == ["llm-b", "llm-b-k2j4h6g8f0"]
    assert "pytorch-training" not in inv.hosts and inv.unavailable("pytorch-training") is None


@pytest.mark.parametrize(("text", "says"), [
    ("plugin: runpod\napi_token: x\n", "pods.yml:2: runpod source: unknown option 'api_token'"),
    ("plugin: runpod\nname_filter: '['\n", "pods.yml:2: runpod source: name_filter must be a regular expression"),
    ("plugin: runpod\ntimeout: 0\n", "pods.yml:2: runpod source: timeout must be seconds, from 1 to 120"),
    ("plugin: runpod\ngroup_by: [gpus]\n", "runpod source: group_by must be a list of gpu, datacenter, cloud"),
    ("plugin: runpod\napi_url: ftp://x\n", "api_url must be an http(s) URL"),
    ("plugin: aws_ec2\n", "pods.yml:1: unknown inventory plugin 'aws_ec2' (gpuprov has: runpod)"),
])
def test_bad_source_options_name_the_file_and_line(tmp_path, text, says):
    inv = tmp_path / "inventory"
    inv.mkdir()
    (inv / "pods.yml").write_text(text)
    with pytest.raises(InventoryError) as e:
        load(inv)
    assert says in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- the pod's environment on the host


def probed(pod_env: dict) -> Facts:
    disk = {"workspace": True, "install_root": "/workspace/gpuprov"}
    return facts_from_probe("pod1", {"pod_env": pod_env, "disk": disk})


def test_probe_reads_the_pod_env_pid1_first_and_keeps_secrets_secret():
    f = probed({"file": {"MODEL": "old/model", "HF_TOKEN": "hf_abcdefgh123", "RUNPOD_POD_ID": "abc"},
                "pid1": {"MODEL": "Qwen/Qwen3-8B", "API_KEY": "sk-pod-123456", "RUNPOD_POD_ID": "abc"}})
    assert f.pod_env_from == "PID 1" and f.pod_env["MODEL"] == "Qwen/Qwen3-8B"
    assert isinstance(f.pod_env["HF_TOKEN"], Secret) and isinstance(f.pod_env["API_KEY"], Secret)
    shown = json.dumps(f.to_json())
    assert "hf_abcdefgh123" not in shown and "sk-pod-123456" not in shown and '"API_KEY": "***"' in shown
    assert Facts.from_json(json.loads(shown)).pod_env == {}  # a masked file plans without the pod's secrets


def test_pod_knobs_are_defaults_below_inventory_and_command_line():
    from gpuprov.inventory import Host

    f = probed({"pid1": {"MODEL": "Qwen/Qwen3-8B", "MAX_NUM_SEQS": "32", "GPU_MEMORY_UTILIZATION": "0.85",
                         "API_KEY": "sk-pod-123456"}})
    h = Host("pod1", "203.0.113.5", vars={"model": Var("openai/gpt-oss-20b", "built-in default"),
                                          "max_num_seqs": Var(8, "inventory/hosts.yml:4 (host pod1)")})
    got = with_pod_env(h, f)
    assert got.vars["model"] == Var("Qwen/Qwen3-8B", "pod env (PID 1)")
    assert got.var("max_num_seqs") == 8  # the inventory beats the pod
    assert got.var("gpu_memory_utilization") == 0.85 and got.var("api_key") == Secret("sk-pod-123456")
    cli = h.with_vars({"model": "meta-llama/Llama-3.2-3B-Instruct"}, "command line")
    assert with_pod_env(cli, f).var("model") == "meta-llama/Llama-3.2-3B-Instruct"
    assert knob_values({"MAX_MODEL_LEN": "lots"}) == {"max_model_len": "lots"}  # left for engine_vars to refuse


def test_the_probe_program_reads_pid1_and_rp_environment(tmp_path):
    """remote/probe.py's pod_env() against files shaped like a pod's (the paths redirected into tmp_path)."""
    rp = tmp_path / "rp_environment"
    rp.write_text('export RUNPOD_POD_ID="abc123"\nexport MODEL="Qwen/Qwen3-8B"\nexport RUNPOD_API_KEY="rpa_pod"\n'
                  "export HF_HOME='/workspace/hf home'\n# a comment\nexport BROKEN=\"unterminated\n")
    env1 = tmp_path / "environ"
    env1.write_bytes(b"PATH=/usr/bin\0RUNPOD_POD_ID=abc123\0PUBLIC_KEY=ssh-ed25519 AAAA\0MAX_NUM_SEQS=16\0")
    program = remote.source("probe").replace('"/proc/1/environ"', repr(str(env1))).replace(
        '"/etc/rp_environment"', repr(str(rp)))
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    got = json.loads(out.stdout)["pod_env"]
    assert got["pid1"] == {"RUNPOD_POD_ID": "abc123", "MAX_NUM_SEQS": "16"}  # never PUBLIC_KEY
    assert got["file"] == {"RUNPOD_POD_ID": "abc123", "MODEL": "Qwen/Qwen3-8B", "HF_HOME": "/workspace/hf home"}


# --------------------------------------------------------------------------- the proxy, pid files, pins


def test_proxy_signature_and_address():
    assert "RunPod's SSH proxy" in proxy_refusal("pod1", "Error: Your SSH client doesn't support PTY\n")
    assert proxy_refusal("pod1", "gpuprov: no such file\n") is None
    from gpuprov.inventory import parse_adhoc

    with pytest.raises(ProxyOnly, match="pod1-64411eb2@ssh.runpod.io|SSH over exposed TCP"):
        SSHRunner(parse_adhoc("pod1-64411eb2@ssh.runpod.io"), KnownHosts(Path("/nonexistent/kh"))).connect()


def test_a_pid_file_from_before_a_reset_names_no_process(tmp_path):
    ns: dict = {}
    from importlib import resources

    exec(resources.files("gpuprov.remote").joinpath("_common.py").read_text(), ns)  # the hosts' shared helpers
    pidfile = tmp_path / "p.pid"
    pidfile.write_text(ns["pid_record"](os.getpid()))
    assert ns["read_pid"](str(pidfile)) == os.getpid()
    pidfile.write_text(f"{os.getpid()} 1")  # same number, another start time: another process
    assert ns["read_pid"](str(pidfile)) is None
    pidfile.write_text(f"{os.getpid()}\n")  # a pid file written before start times were recorded
    assert ns["read_pid"](str(pidfile)) == os.getpid()


def test_pins_per_pod_id_and_the_repin_rule(tmp_path):
    from gpuprov.inventory import Host

    kh = KnownHosts(tmp_path / "known_hosts", user_file=tmp_path / "none")
    key = paramiko.RSAKey.generate(1024)
    kh.pin("runpod-abc", key, "2026-06-01T12:02:00Z")
    assert kh.pinned_start("runpod-abc") == "2026-06-01T12:02:00Z"
    assert kh.for_name("runpod-abc", "[203.0.113.5]:40022").lookup("[203.0.113.5]:40022")["ssh-rsa"] == key

    def runner(started: str | None) -> SSHRunner:
        return SSHRunner(Host("pod1", "203.0.113.5", 40022, vars={
            "host_key_alias": Var("runpod-abc", "api"), "runpod_started_at": Var(started, "api")}), kh)

    assert runner("2026-06-03T09:00:00Z")._may_repin("203.0.113.5", 40022)  # restarted since the pin
    assert not runner("2026-06-01T12:02:00Z")._may_repin("203.0.113.5", 40022)  # same start: refuse
    assert not runner("2026-05-30T00:00:00Z")._may_repin("203.0.113.5", 40022)  # an older start: refuse
    assert not runner(None)._may_repin("203.0.113.5", 40022)
    # a restart that kept its key: the pinned key answered, so that start is remembered, and a key change at that
    # same start is refused (it would otherwise pass as "started since the pin")
    runner("2026-06-03T09:00:00Z")._note_start()
    assert kh.pinned_start("runpod-abc") == "2026-06-03T09:00:00Z"
    assert not runner("2026-06-03T09:00:00Z")._may_repin("203.0.113.5", 40022)
    strict = KnownHosts(kh.path, strict=True, user_file=tmp_path / "none")
    r = runner("2026-06-09T00:00:00Z")
    r.known_hosts = strict
    assert not r._may_repin("203.0.113.5", 40022)  # strict host keys: never re-pinned
    kh.pin("runpod-abc", paramiko.RSAKey.generate(1024), replace=True)
    assert len(kh.for_name("runpod-abc", "x")._entries) == 1  # replaced, not added
    assert kh.forget("runpod-abc", None) and kh.pinned_start("runpod-abc") is None


def test_the_hosts_http_client_answers_oddities_with_a_reason():
    """remote/_common.py's local_http against a local server: a body by length, chunked, and malformed answers."""
    import socket
    from importlib import resources

    ns: dict = {}
    exec(resources.files("gpuprov.remote").joinpath("_common.py").read_text(), ns)
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokIGNORED",
               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\nx", b"garbage"]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve() -> None:
        for a in answers:
            c, _ = srv.accept()
            c.recv(65536)
            c.sendall(a)
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    port = srv.getsockname()[1]
    try:
        assert ns["local_http"](port) == (200, b"ok")
        assert ns["local_http"](port) == (200, b"abcde")
        assert ns["local_http"](port) == (None, "a malformed HTTP answer")
        assert ns["local_http"](port) == (None, "not an HTTP answer")
    finally:
        t.join(5)
        srv.close()
