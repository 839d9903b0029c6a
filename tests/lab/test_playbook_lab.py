"""The playbook engine over real SSH on sim hosts: idempotence, check/diff, handlers, failures, parallelism."""

from __future__ import annotations

import json

import pytest

from gpuprov import api
from gpuprov.connection import SSHRunner
from gpuprov.errors import UsageError

from ..conftest import FIXTURES

pytestmark = pytest.mark.lab
SITE = FIXTURES / "playbooks" / "site.yml"
N = 8


@pytest.fixture(scope="module")
def hosts(sim):
    for i in range(N):
        sim.up(f"p{i}")
    return sim


def run(*names, **kw):
    return {r.host: r for r in api.play(SITE, api.select_hosts(",".join(names)), **kw)}


def remote(name: str, *argv: str) -> str:
    r = SSHRunner(api.select_hosts(name)[0], api.known_hosts()).connect()
    try:
        return r.run(list(argv)).stdout
    finally:
        r.close()


def test_check_mode_changes_nothing_and_shows_diffs(hosts):
    rec = run("p0", check=True, diff=True)["p0"]
    assert rec.failed == 0 and rec.changed >= 3
    diffs = "\n".join(d for r in rec.results for d in r.diffs)
    assert "+model=openai/gpt-oss-20b" in diffs and "+[app]" in diffs
    assert remote("p0", "sh", "-c", "test -e /opt/site && echo yes || echo no").strip() == "no"


def test_apply_twice_second_run_changes_nothing_in_one_exec(hosts):
    names = [f"p{i}" for i in range(N)]
    first = run(*names)
    assert all(r.failed == 0 and r.changed >= 4 and not r.unreachable for r in first.values())
    second = run(*names)
    for r in second.values():
        assert (r.changed, r.failed) == (0, 0), [(x.task, x.status, x.msg) for x in r.results]
        # the one state-gathering exec, the registered command, and the task that uses its result
        assert r.execs <= 3
    assert remote("p0", "cat", "/opt/site/py.txt") == "python3\n"
    # handler notified by two tasks ran once on the first run and not at all on the second
    assert len(remote("p0", "cat", "/opt/site/restarts").splitlines()) == 1
    skipped = [x for x in second["p0"].results if x.task == "never on this host"]
    assert skipped and skipped[0].status == "skipped"


def test_one_var_changes_one_file_and_one_handler_run(hosts):
    run("p1")
    before = remote("p1", "cat", "/opt/site/restarts")
    rec = api.play(SITE, api.select_hosts("p1", None, ["max_num_seqs=9"]), diff=True)[0]
    changed = [x.task for x in rec.results if x.status == "changed"]
    assert changed == ["config", "restart app"]
    config = next(x for x in rec.results if x.task == "config")
    assert "-seqs=4" in "".join(config.diffs) and "+seqs=9" in "".join(config.diffs)
    assert len(remote("p1", "cat", "/opt/site/restarts").splitlines()) == len(before.splitlines()) + 1


def test_hosts_run_in_parallel(hosts):
    recs = run(*[f"p{i}" for i in range(N)])
    assert max(r.started for r in recs.values()) < min(r.ended for r in recs.values())


def test_unreachable_host_does_not_stop_the_others(hosts, lab_env):
    import ipaddress

    dead = str(ipaddress.ip_network(lab_env["GPUPROV_SIM_SUBNET"]).network_address + 251)
    p = hosts.cli("play", str(SITE), "--host", f"p2,p3,p4,root@{dead}", "--json", timeout=120)
    assert p.returncode == 3  # the only failure is an unreachable host (README "Exit codes")
    recap = json.loads(p.stdout.strip().splitlines()[-1])["hosts"]
    assert {k: v["unreachable"] for k, v in recap.items()} == {"p2": False, "p3": False, "p4": False,
                                                                f"root@{dead}": True}
    assert all(recap[h]["failed"] == 0 for h in ("p2", "p3", "p4"))
    assert "cannot reach" in recap[f"root@{dead}"]["error"]
    human = hosts.cli("play", str(SITE), "--host", f"p2,root@{dead}", timeout=120)
    assert "RECAP" in human.stdout and f"root@{dead}: " in human.stderr and "cannot reach" in human.stderr


def test_tags_limit_the_tasks(hosts):
    rec = api.play(SITE, api.select_hosts("p5"), tags=["probe"])[0]
    # Ansible's fact gathering is tagged always
    assert {x.task for x in rec.results} == {"Gathering Facts", "python version", "use the registered result"}


def test_bad_playbooks_are_clear_errors(hosts, tmp_path):
    cases = {
        "- name: x\n  tasks:\n    - name: t\n      nosuchop: {}\n": "unknown module 'nosuchop'",
        "- name: x\n  tasks:\n    - name: t\n      file: {path: /a}\n      copy: {dest: /b, content: x}\n":
            "exactly one module",
        "- name: x\n  tasks:\n    - name: t\n      file: {path: /a}\n      notify: ghost\n": "notifies 'ghost'",
        "- name: x\n  tasks:\n    - name: t\n      file: {path: /a, colour: red}\n": "no argument(s) colour",
        "- name: x\n  tasks:\n    - name: t\n      file: {path: relative}\n": "must be absolute",
        "- name: x\n  tasks:\n    - name: t\n      copy: {dest: /x, content: '{{ nope }}'}\n":
            "undefined variable 'nope'",
    }
    for text, needle in cases.items():
        pb = tmp_path / "bad.yml"
        pb.write_text(text)
        rec = None
        try:
            rec = api.play(pb, api.select_hosts("p6"))[0]
        except UsageError as e:
            assert needle in str(e), (needle, str(e))
            continue
        assert rec.failed and needle in (rec.error or ""), (needle, rec.error)


def test_wait_for_reports_ok_or_fails_with_the_reason(hosts, tmp_path):
    pb = tmp_path / "wait.yml"
    pb.write_text(
        "- name: waits\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: sshd is there\n      wait_for: {host: 127.0.0.1, port: 22, timeout: 5}\n"
        "    - name: nothing listens here\n      wait_for: {host: 127.0.0.1, port: 9, timeout: 1}\n")
    rec = api.play(pb, api.select_hosts("p7"))[0]
    assert [(r.task, r.status) for r in rec.results] == [("sshd is there", "ok"), ("nothing listens here", "failed")]
    assert rec.changed == 0 and "Timeout when waiting for 127.0.0.1:9" in rec.results[1].msg
