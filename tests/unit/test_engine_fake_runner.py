"""The playbook engine without a host: HostRun, apply_one, wait_ready, read_status and the host lock driven by
gpuprov.testing.FakeRunner (commands recorded, answers from a function). No root, no lab."""

from __future__ import annotations

import json

import pytest

from gpuprov import health
from gpuprov.connection import LocalRunner
from gpuprov.errors import HostBusy, RemoteError
from gpuprov.executor import HostRun, RunOptions, apply_one, service_op
from gpuprov.hostlock import HostSession
from gpuprov.inventory import Host, Var
from gpuprov.layout import HostLayout
from gpuprov.playbook import load_playbook
from gpuprov.status import read_status
from gpuprov.templating import Templar
from gpuprov.testing import Call, FakeRunner, gathered

from ..conftest import REPO

LAY = HostLayout("/opt/gpuprov")


def test_apply_one_restarts_the_supervised_engine_with_exactly_stop_start_wait():
    r = FakeRunner(gathered(lambda q: {"running": True, "pid": 42}))
    assert apply_one(r, service_op(LAY, "supervisor", "restarted", "restart")) is True
    cmds = r.commands()
    assert [c.split()[:3] for c in cmds] == [["python3", "/opt/gpuprov/bin/gpuprov-supervise", "stop"],
                                            ["setsid", "-f", "python3"],
                                            ["python3", "/opt/gpuprov/bin/gpuprov-supervise", "wait-started"]]
    assert "-- /opt/gpuprov/bin/vllm-serve" in cmds[1] and "--env-file /opt/gpuprov/vllm.env" in cmds[1]


def test_apply_one_is_a_no_op_when_already_so_and_fails_loudly_when_a_command_fails():
    r = FakeRunner(gathered(lambda q: {"running": True, "pid": 42}))
    assert apply_one(r, service_op(LAY, "supervisor", "started", "start")) is False
    assert r.commands() == []

    def failing(call: Call):
        if call.queries is not None:
            return json.dumps([{"props": {"ActiveState": "inactive", "LoadState": "loaded"}}])
        return (5, "", "Job for gpuprov-vllm.service failed")

    r = FakeRunner(failing)
    with pytest.raises(RemoteError, match="exited 5: Job for gpuprov-vllm.service failed"):
        apply_one(r, service_op(LAY, "systemd", "started", "start"), work_lock="/opt/.gpuprov.work.lock")
    assert r.commands() == ["flock -s -o /opt/.gpuprov.work.lock systemctl start gpuprov-vllm"]


PLAY = """
- name: engine test
  hosts: all
  gather_facts: false
  tasks:
    - name: marker exists already
      command: {argv: [touch, /m], creates: /m}
    - name: config written
      command: {argv: [write-config]}
      register: cfg
      notify: restart
    - name: also notifies
      command: {argv: [write-more]}
      notify: restart
    - name: only when the config changed
      command: {argv: [echo, changed]}
      when: cfg.changed
    - name: skipped
      command: {argv: [never]}
      when: false
    - name: retried until ok
      shell: {cmd: probe-it}
      register: probe
      until: probe.stdout == 'up'
      retries: 3
      delay: 0
  handlers:
    - name: restart
      command: {argv: [restart-engine]}
"""


def _run_play(tmp_path, handler, **opts):
    path = tmp_path / "play.yml"
    path.write_text(PLAY)
    play = load_playbook(path)[0]
    r = FakeRunner(handler)
    recap = HostRun(play, Host(name="h", address="x"), r, None, {}, Templar([tmp_path]), RunOptions(**opts)).run()
    return recap, r


def test_host_run_check_apply_handlers_register_when_until(tmp_path):
    probes = iter(["down", "down", "up"])

    def handler(call: Call):
        if call.queries is not None:
            return json.dumps([{"exists": q.get("path") == "/m"} for q in call.queries])
        if call.argv[:2] == ("/bin/sh", "-c"):
            return next(probes)
        return None

    recap, r = _run_play(tmp_path, handler)
    # Ansible's counts: ok includes the changed tasks
    assert (recap.ok, recap.changed, recap.failed, recap.skipped) == (6, 5, 0, 1), recap.results
    cmds = r.commands()
    assert cmds == ["write-config", "write-more", "echo changed", "/bin/sh -c probe-it", "/bin/sh -c probe-it",
                    "/bin/sh -c probe-it", "restart-engine"]  # the handler ran once, at the end, for two notifications
    assert recap.exit_code == 0


def test_host_run_stops_at_a_failed_task_and_runs_no_handler(tmp_path):
    def handler(call: Call):
        if call.queries is not None:
            return json.dumps([{"exists": True} for _ in call.queries])
        return (1, "", "disk full") if call.argv == ("write-more",) else None

    recap, r = _run_play(tmp_path, handler)
    assert recap.failed == 1 and "write-more exited 1: disk full" in (recap.error or "")
    assert r.commands() == ["write-config", "write-more"] and recap.exit_code == 1


def test_check_mode_runs_nothing(tmp_path):
    recap, r = _run_play(tmp_path, gathered(lambda q: {"exists": False}), check=True)
    assert r.commands() == [] and recap.failed == 0


def _poll(lines, health_code, service, completion=None):
    d = {"pos": 10, "lines": lines, "service": service, "health": health_code}
    return json.dumps(d if completion is None else {**d, "completion": completion})


def test_wait_ready_follows_the_phases_then_proves_readiness_with_a_completion():
    polls = iter([_poll(["(EngineCore pid=7) INFO Loading weights took 1.0 seconds"], None, {"active": "active"}),
                  _poll(["INFO Application startup complete."], 200, {"active": "active"},
                        {"ok": True, "ms": 12, "model": "m"})])
    seen = []

    def handler(call: Call):
        if call.program == "poll":
            assert json.loads(call.args[0])["complete"] == {"env_file": "/e", "model": "m", "timeout": 120}
            return next(polls)
        raise AssertionError(call.line)

    rd = health.wait_ready(FakeRunner(handler), manager="supervisor", unit="u", log="/l", pidfile="/p", port=8000,
                           env_file="/e", model="m", timeout=10, on_progress=seen.append, poll_s=0)
    assert rd.ready and rd.completion == {"ok": True, "ms": 12, "model": "m"}
    assert seen[0].startswith("[LOADING]") and seen[-1].startswith("[OK] MODEL READY")


def test_wait_ready_reports_a_crash_with_its_diagnosis_and_bad_output_as_an_error():
    crash = _poll(["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"], None,
                  {"active": "failed"})
    rd = health.wait_ready(FakeRunner(lambda c: crash), manager="systemd", unit="u", log="/l", pidfile="/p",
                           port=8000, env_file="/e", model="m", timeout=10, poll_s=0)
    assert not rd.ready and rd.error == "the engine exited during start-up" and "memory" in (rd.diagnosis or "")
    rd = health.wait_ready(FakeRunner(lambda c: "Segmentation fault"), manager="systemd", unit="u", log="/l",
                           pidfile="/p", port=8000, env_file="/e", model="m", timeout=10, poll_s=0)
    assert not rd.ready and "printed no JSON: Segmentation fault" in (rd.error or "")


def test_read_status_searches_the_custom_install_root_first():
    host = Host(name="h", address="x", vars={"install_root": Var("/data/gp", "test")})
    state = {"service_manager": "supervisor", "service": "gpuprov-vllm", "model": "m", "engine_port": 8000,
             "pidfile": "/data/gp/run/vllm.pid", "log": "/data/gp/logs/vllm.log", "root": "/data/gp"}

    def handler(call: Call):
        assert call.program == "status"
        assert call.args == ("/data/gp", "/workspace/gpuprov", "/opt/gpuprov")
        return json.dumps({"installed": True, "root": "/data/gp", "state": state, "health": 200,
                           "service": {"state": "active", "restarts": 1}, "version": "0.32.0", "gpus": []})

    st, raw = read_status(FakeRunner(handler, host=host))
    assert (st.service, st.ready, st.root, st.restarts) == ("active", True, "/data/gp", 1)
    assert HostLayout.from_state(raw["state"], raw["root"]).launcher == "/data/gp/bin/vllm-serve"
    with pytest.raises(RemoteError, match="the status script failed"):
        read_status(FakeRunner(lambda c: (1, "", "python3: not found"), host=host))


def test_host_lock_answers():
    r = FakeRunner(lambda c: "LOCKED\n")
    with HostSession(r) as s:
        s.lock("/opt/.gpuprov.lock", "me")
        assert not r.streams[0].closed
    assert r.streams[0].closed  # released on exit
    busy = FakeRunner(lambda c: "BUSY provision by someone since 10:00\n")
    with pytest.raises(HostBusy, match=r"holds the host lock \(provision by someone since 10:00\)"), \
            HostSession(busy) as s:
        s.lock("/l", "me")


def test_host_lock_on_the_local_runner_is_real(tmp_path):
    """--host local: the lock is a real flock held by a local process (no SSH transport needed)."""
    me = LocalRunner(Host(name="me", address="local"))
    path = str(tmp_path / "gpuprov.lock")
    with HostSession(me) as s:
        s.lock(path, "first run", work_lock=str(tmp_path / "work.lock"), orphan_timeout=5)
        second = LocalRunner(Host(name="me", address="local"))
        with pytest.raises(HostBusy, match="first run"), HostSession(second) as t:
            t.lock(path, "second run")
    with HostSession(me) as s:
        s.lock(path, "third run")


def _provision_with(tmp_path, monkeypatch, restore_rc: int, readiness: list[bool]):
    """_run_locked on a one-task playbook (it always changes something), with the readiness results given."""
    from gpuprov import provision
    from gpuprov.probe import read_facts_file
    from gpuprov.provision import _run_locked, gp_vars, plan_for

    facts = read_facts_file(REPO / "examples" / "facts" / "pod-4090.json")[0]
    host = Host(name="pod-4090", address="x", vars={"model": Var("openai/gpt-oss-20b", "test")})
    plan = plan_for(host, facts)
    assert plan.ok and plan.service_manager == "supervisor"
    gp = gp_vars(host, facts, plan)
    book = tmp_path / "vllm.yml"
    book.write_text("- name: t\n  hosts: all\n  tasks:\n    - name: new launcher\n"
                    "      command: {argv: [write-launcher]}\n")
    monkeypatch.setattr(provision, "playbook_path", lambda: book)
    results = iter(readiness)
    monkeypatch.setattr(health, "wait_ready", lambda *a, **k: health.Readiness(next(results), 0.1, error="boom"))

    def handler(call: Call):
        if call.queries is not None:
            return json.dumps([{"running": True, "pid": 9} if q["kind"] == "service" else {"exists": False}
                         for q in call.queries])
        if call.argv[:2] == ("sh", "-c") and ".good" in call.argv[2] and "exit 3" in call.argv[2]:
            return (restore_rc, "", "")
        return None

    r = FakeRunner(handler, host=host)
    return _run_locked(host, r, facts, plan, gp, False, False, True, None, None, 60), r


def test_a_failed_new_configuration_rolls_back_to_the_last_verified_one(tmp_path, monkeypatch):
    result, r = _provision_with(tmp_path, monkeypatch, restore_rc=0, readiness=[False, True])
    cmds = r.commands()
    restore = next(i for i, c in enumerate(cmds) if "exit 3" in c)
    assert cmds[0] == "write-launcher"
    assert [c.split()[:3] for c in cmds[restore + 1:]] == [
        ["python3", "/workspace/gpuprov/bin/gpuprov-supervise", "stop"], ["setsid", "-f", "python3"],
        ["python3", "/workspace/gpuprov/bin/gpuprov-supervise", "wait-started"]]
    assert result.rolled_back is True and result.exit_code == 1  # the new configuration still failed


def test_no_roll_back_without_a_verified_configuration(tmp_path, monkeypatch):
    result, r = _provision_with(tmp_path, monkeypatch, restore_rc=3, readiness=[False])
    assert result.rolled_back is None
    assert not any("gpuprov-supervise" in c for c in r.commands())


def test_a_verified_configuration_is_kept_as_the_one_to_return_to(tmp_path, monkeypatch):
    result, r = _provision_with(tmp_path, monkeypatch, restore_rc=0, readiness=[True])
    keep = [c for c in r.commands() if 'cp -p "$f" "$f.good"' in c]
    assert len(keep) == 1 and "/workspace/gpuprov/bin/vllm-serve" in keep[0] and result.ok


def test_local_commands_get_the_machines_environment_not_gpuprovs_python():
    from gpuprov.connection import host_environment

    env = host_environment({"PATH": "/usr/bin", "HOME": "/root", "PYTHONPATH": "/opt/site", "VIRTUAL_ENV": "/v",
                            "UV_INDEX_URL": "http://x", "PIP_INDEX_URL": "http://y", "HF_TOKEN": "hf_x"})
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "HF_TOKEN": "hf_x"}
    out = LocalRunner(Host(name="me", address="local")).run(["sh", "-c", "echo ${PYTHONPATH:-none}"]).stdout
    assert out.strip() == "none"
