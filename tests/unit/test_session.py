"""The session (hostlock.HostSession): one channel that runs gpuprov's host-side programs and holds the run lock.
Here the channel is a real local process (LocalRunner): the real session program, real flock."""

from __future__ import annotations

import json

import pytest

from gpuprov import remote
from gpuprov.connection import LocalRunner
from gpuprov.errors import ConnectError
from gpuprov.executor import gather
from gpuprov.hostlock import HostSession
from gpuprov.inventory import Host
from gpuprov.probe import run_probe


def local() -> LocalRunner:
    return LocalRunner(Host(name="me", address="local"))


def test_probe_lock_and_gather_cost_one_exec(tmp_path):
    f = tmp_path / "unit.txt"
    f.write_text("x\n")
    r = local()
    with HostSession(r) as s:
        facts = run_probe(s, check_sftp=False)
        s.lock(str(tmp_path / "run.lock"), "test run")
        state = gather(s, [{"kind": "stat", "path": str(f)}, {"kind": "stat", "path": str(tmp_path / "none")}])
        assert r.exec_count == 1 and s.exec_count == 1
    assert facts.arch and facts.pythons
    assert state[0]["exists"] and not state[1]["exists"]


def test_programs_get_their_stdin_exit_status_and_both_streams(tmp_path):
    with HostSession(local()) as s:
        res = s.run(["sh", "-c", "cat; echo err >&2; exit 3"], stdin=b"a\x00b" * 50_000, timeout=30)
        assert (res.exit_status, res.stdout, res.stderr) == (3, "a\x00b" * 50_000, "err\n")
        args = {"manager": "supervisor", "unit": "u", "log": str(tmp_path / "none.log"), "pidfile": str(tmp_path / "p"),
                "port": 9, "pos": None, "since": 0}
        res = remote.run(s, "poll", json.dumps(args), timeout=30)  # a remote program, through the session
        assert res.ok and json.loads(res.stdout)["health"] is None
        slow = s.run(["sleep", "5"], timeout=1)
        assert slow.exit_status == 124 and "timed out" in slow.stderr
        assert s.run(["true"], timeout=5).ok  # the session goes on after a timed-out program


def test_a_closed_session_says_so():
    s = HostSession(local()).open()
    s.close()
    with pytest.raises(ConnectError, match="the gpuprov session is closed"):
        s.run(["true"], timeout=5)


def test_the_readiness_poll_watches_on_the_host_and_answers_once_health_is_up(tmp_path):
    """One poll exec with "wait": it returns when /health turns 200 (here after ~1 s), with the log lines written
    meanwhile and the completion made in the same exec; nothing else was executed."""
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    up = threading.Event()

    class Engine(BaseHTTPRequestHandler):
        def log_message(self, *a):  # noqa: ANN002
            pass

        def _send(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            self._send(200 if up.is_set() else 503, b"")

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(200, json.dumps({"model": "m", "choices": [{"message": {"content": "OK"},
                                                                    "finish_reason": "length"}]}).encode())

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    log, pidfile = tmp_path / "vllm.log", tmp_path / "vllm.pid"
    log.write_text("loading\n")
    pidfile.write_text(str(os.getpid()))  # a live process: the "engine" is running

    def later():
        with open(log, "a") as f:
            f.write("Application startup complete.\n")
        up.set()

    threading.Timer(1.0, later).start()
    r = local()
    args = {"manager": "supervisor", "unit": "u", "log": str(log), "pidfile": str(pidfile),
            "port": srv.server_address[1], "pos": None, "since": 0, "wait": 10,
            "complete": {"env_file": str(tmp_path / "none.env"), "model": "m", "timeout": 5}}
    try:
        res = remote.run(r, "poll", json.dumps(args), timeout=30)
    finally:
        srv.shutdown()
        srv.server_close()
    d = json.loads(res.stdout)
    assert r.exec_count == 1 and d["health"] == 200
    assert d["lines"] == ["loading", "Application startup complete."]
    assert d["completion"]["ok"] and d["completion"]["content"] == "OK"


def test_own_programs_run_inside_the_session_and_cannot_touch_its_channel(tmp_path, monkeypatch):
    """gpuprov's programs run in the session's Python (no interpreter of their own); a child they start cannot read
    the session's requests or write into its answers, and a program's exit status, crash and timeout are answers."""
    import gpuprov.remote as rem

    def program(body: str) -> dict:
        text = ("import os, sys\n" + body).encode()
        return {"argv": rem.loader_argv("test", text, args=["arg1"]), "stdin": text}

    with HostSession(local()) as s:
        seen = []
        real_request = s._request
        monkeypatch.setattr(s, "_request", lambda req, data, t: seen.append(req["op"]) or real_request(req, data, t))
        res = s.run(**program("import subprocess\n"
                                "child = subprocess.run(['sh', '-c', 'cat; echo child-out; echo child-err >&2'],"
                                " timeout=5)\n"
                                "print(sys.argv[1:], os.getpid(), child.returncode)\nsys.exit(5)\n"), timeout=30)
        assert seen == ["py"] and res.exit_status == 5
        args, pid, child_rc = res.stdout.split(" ", 1)[0], res.stdout.split()[-2], res.stdout.split()[-1]
        assert args == "['arg1']" and child_rc == "0" and "child-out" not in res.stdout
        assert "child-err" not in res.stdout + res.stderr  # the channel merges stderr: the child never reached it
        again = s.run(**program("print(os.getpid())\n"), timeout=30)
        assert again.stdout.strip() == pid  # the same process: no new interpreter
        crash = s.run(**program("raise ValueError('boom')\n"), timeout=30)
        assert crash.exit_status == 1 and "ValueError: boom" in crash.stderr
        slow = s.run(**program("import time\ntime.sleep(30)\n"), timeout=1)
        assert slow.exit_status == 124 and "timed out" in slow.stderr
        assert s.run(["sh", "-c", "echo still here"], timeout=10).stdout == "still here\n"
        assert seen == ["py", "py", "py", "py", "run"]
