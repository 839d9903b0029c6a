"""The host-side pieces of "beyond one host", run here without a lab: the preflight's network program (a real
listener and real connects on this machine's loopback), the status program's load read from a recorded real
/metrics, and the stand-in engine's /metrics against the real engine's names."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gpuprov import remote
from gpuprov.serve_flags import recorded_serve_flags
from gpuprov.sim import standin_vllm

from ..conftest import DATA

REAL_METRICS = DATA / "real-engine-cpu-metrics.txt"


def netcheck(*actions: list) -> list[dict]:
    argv, stdin = remote.command("netcheck", json.dumps(list(actions)))
    p = subprocess.run(argv, input=stdin, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False


def test_netcheck_listens_answers_its_token_and_ends_after_the_expected_connections():
    addrs, route, lis = netcheck(["addrs"], ["route", "127.0.0.1"], ["listen", 0, 20, "tok3n", 2])
    assert {"iface": "lo", "addr": "127.0.0.1"} in addrs
    assert route["iface"] == "lo" and route["addr"] == "127.0.0.1"
    port, pid = lis["port"], lis["pid"]
    assert alive(pid)
    ok, bad_token = netcheck(["connect", "127.0.0.1", port, "tok3n", 2], ["connect", "127.0.0.1", port, "other", 2])
    assert ok["ok"] is True
    assert bad_token["error"].startswith("bad answer")
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:  # two connections were expected: it is gone
        time.sleep(0.05)
    assert not alive(pid)
    assert netcheck(["connect", "127.0.0.1", port, "tok3n", 2])[0]["error"] == "refused"


def test_netcheck_reports_a_port_in_use_and_stops_only_its_own_listeners():
    (lis,) = netcheck(["listen", 0, 20, "t", 5])
    (again,) = netcheck(["listen", lis["port"], 20, "t", 1])
    assert again == {"error": "in use"}
    assert netcheck(["stop", 1]) == [{"error": "not a listener"}]  # PID 1 is not one of ours
    assert netcheck(["stop", lis["pid"]]) == [{"ok": True}]
    deadline = time.monotonic() + 5
    while alive(lis["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(lis["pid"])


def _engine_server(metrics: bytes) -> ThreadingHTTPServer:
    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = metrics if self.path == "/metrics" else b""
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_status_reads_the_engine_load_from_the_real_engines_metrics(tmp_path):
    text = REAL_METRICS.read_text()
    # the recorded engine had served some requests; make the numbers unmistakable
    lines = []
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running{"):
            line = line.rsplit(" ", 1)[0] + " 3.0"
        elif line.startswith("vllm:num_requests_waiting{"):
            line = line.rsplit(" ", 1)[0] + " 2.0"
        elif line.startswith("vllm:request_success_total{"):
            reason = line.split('finished_reason="')[1].split('"')[0]
            line = line.rsplit(" ", 1)[0] + " " + {"stop": "7.0", "length": "5.0"}.get(reason, "4.0")
        lines.append(line)
    srv = _engine_server(("\n".join(lines) + "\n").encode())
    try:
        (tmp_path / "state.json").write_text(json.dumps({"service_manager": "supervisor", "engine_port":
                                                          srv.server_address[1], "pidfile": str(tmp_path / "x.pid"),
                                                          "service": "gpuprov-vllm"}))
        argv, stdin = remote.command("status", str(tmp_path))
        out = json.loads(subprocess.run(argv, input=stdin, capture_output=True, timeout=60).stdout)
    finally:
        srv.shutdown()
    assert out["health"] == 200
    # stop 7 + length 5 + repetition 4; aborted and failed requests are not "served"
    assert out["load"] == {"running": 3, "waiting": 2, "served": 16}


def metric_names(text: str) -> set[tuple[str, str]]:
    """(name, sorted label names) of every sample in a Prometheus text exposition."""
    out = set()
    for line in text.splitlines():
        if line.startswith("vllm:"):
            name, _, rest = line.partition("{")
            out.add((name, ",".join(sorted(kv.split("=")[0] for kv in rest.rpartition("}")[0].split(",") if kv))))
    return out


def standin() -> dict:
    """The stand-in engine's program for 0.32.0, as the lab builds it, loaded here (nothing runs)."""
    flags = {f: {"takes_value": v} for f, v in (recorded_serve_flags("0.32.0") or {}).items()}
    ns: dict = {"__name__": "vllm"}
    exec(compile(standin_vllm.render("0.32.0", flags), "standin", "exec"), ns)  # noqa: S102
    return ns


def test_the_standin_serves_the_real_engines_metric_names():
    ns = standin()
    a = ns["parser"]().parse_args(["gpuprov-lab/tiny-llama"])
    eng = ns["Engine"](a)
    eng.success["stop"] = 2
    served = metric_names(eng.metrics().decode())
    real = metric_names(REAL_METRICS.read_text())
    assert served, "the stand-in serves no metrics"
    assert served <= real, f"names or labels the real engine does not have: {sorted(served - real)}"
    for needed in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:request_success_total"):
        assert any(n == needed for n, _ in served)


@pytest.mark.parametrize("kind", ["HELP", "TYPE"])
def test_the_standin_describes_each_metric_like_the_real_engine(kind):
    ns = standin()
    eng = ns["Engine"](ns["parser"]().parse_args(["m"]))
    real = {line.split()[2]: line for line in REAL_METRICS.read_text().splitlines() if line.startswith(f"# {kind} ")}
    mine = [line for line in eng.metrics().decode().splitlines() if line.startswith(f"# {kind} ")]
    for line in mine:
        name = line.split()[2]
        assert name in real and (kind == "HELP" or real[name] == line), (line, real.get(name))
