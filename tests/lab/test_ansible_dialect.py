"""The Ansible dialect against the real ansible-core: each playbook in tests/fixtures/ansible runs under
`ansible-playbook` on one sim host and under `invoke play` on its twin, at the same time; the end states (every path
under /opt/difft with type, mode, owner, link target and content hash; accounts and the unit for the systemd case)
and all recap counts must be the same, and a second `invoke play` must change nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from gpuprov import api, settings
from gpuprov.connection import SSHRunner

from ..conftest import FIXTURES

pytestmark = pytest.mark.lab
HERE = FIXTURES / "ansible"
CASES = yaml.safe_load((HERE / "cases.yml").read_text())
ANSIBLE = Path(sys.executable).parent / "ansible-playbook"
RECAP = re.compile(r"^target\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)\s+"
                   r"rescued=(\d+)\s+ignored=(\d+)", re.M)
COUNTS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")

#: the end state of a host: run there by python3, printed as JSON
SNAPSHOT = r"""
import grp, hashlib, json, os, pwd, stat, subprocess, sys
root, system = sys.argv[1], sys.argv[2] == "1"
out = {}
for base, dirs, files in os.walk(root):
    dirs.sort()
    if base.endswith("/venv/lib"):  # a venv: its installed distributions, not its bytecode
        out["venv dists"] = sorted(d for p in os.listdir(base) for d in
                                   os.listdir(os.path.join(base, p, "site-packages")) if d.endswith(".dist-info"))
        dirs[:] = []
        continue
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    for n in [base] + [os.path.join(base, f) for f in sorted(files)] + [os.path.join(base, d) for d in dirs
                                                                         if os.path.islink(os.path.join(base, d))]:
        st = os.lstat(n)
        e = {"mode": format(stat.S_IMODE(st.st_mode), "04o"), "owner": pwd.getpwuid(st.st_uid).pw_name,
             "group": grp.getgrgid(st.st_gid).gr_name}
        if stat.S_ISLNK(st.st_mode):
            e.update(type="link", target=os.readlink(n))
        elif stat.S_ISDIR(st.st_mode):
            e["type"] = "dir"
        else:
            e["type"] = "file"
            with open(n, "rb") as f:
                data = f.read()
            e["sha256"] = hashlib.sha256(data).hexdigest()
            e["text"] = data.decode("utf-8", "replace")[:300] if len(data) < 2000 else None
        out[n] = e
if system:
    def run(*a):
        return subprocess.run(a, capture_output=True, text=True).stdout.strip()
    out["passwd"] = [l for l in open("/etc/passwd").read().splitlines() if l.startswith("gpuprov-")]
    out["group"] = [l for l in open("/etc/group").read().splitlines() if l.startswith("gpuprov-")]
    out["homes"] = sorted(x for x in os.listdir("/home") if x.startswith("gpuprov-"))
    out["unit"] = [run("systemctl", "is-enabled", "gpuprov-t"), run("systemctl", "is-active", "gpuprov-t"),
                   open("/etc/systemd/system/gpuprov-t.service").read() if os.path.exists(
                       "/etc/systemd/system/gpuprov-t.service") else None]
print(json.dumps(out, sort_keys=True))
"""


def on_host(name: str, argv: list[str], stdin: bytes | None = None) -> str:
    r = SSHRunner(api.select_hosts(name)[0], api.known_hosts()).connect()
    try:
        res = r.run(argv, stdin=stdin, timeout=120)
        assert res.exit_status == 0, res.stderr
        return res.stdout
    finally:
        r.close()


def snapshot(name: str, system: bool) -> dict:
    return json.loads(on_host(name, ["python3", "-", "/opt/difft", "1" if system else "0"], SNAPSHOT.encode()))


@pytest.fixture(scope="module")
def twins(sim):
    """Two plain sim hosts (ansible's, gpuprov's) and, built when the systemd case asks, two nspawn ones."""
    from gpuprov.sim import control as lab

    for n in ("ansa", "ansg"):
        sim.up(n)
    made: dict[str, tuple[str, str]] = {"plain": ("ansa", "ansg")}

    def pair(tier: str) -> tuple[str, str]:
        if tier not in made:
            for n in ("ansc", "ansd"):
                sim.up(n, systemd=True)
            made[tier] = ("ansc", "ansd")
        return made[tier]

    index = lab.sim_lab().services_url.rstrip("/")
    with urllib.request.urlopen(urllib.request.Request(f"{index}/simple/idna/", headers={
            "Accept": "application/vnd.pypi.simple.v1+json"}), timeout=10) as r:
        f = json.load(r)["files"][0]
    facts = {"index": index, "index_host": urlparse(index).hostname, "idna_file": f["filename"],
             "idna_sha": f["hashes"]["sha256"], "idna_version": f["filename"].split("-")[1], "here": str(HERE)}
    return pair, facts


def inventory_for(host: str, tmp: Path, tool: str) -> Path:
    """The fixture inventory folder plus a file with the twin's address (Ansible's connection vars)."""
    from gpuprov.sim import control as lab

    h = lab.sim_lab().hosts()[host]
    inv = tmp / f"inv-{tool}"
    shutil.copytree(HERE / "inventory", inv)
    (inv / "connection.yml").write_text(yaml.safe_dump({"all": {"hosts": {"target": {
        "ansible_host": h.address, "ansible_user": "root",
        "ansible_ssh_private_key_file": str(lab.sim_lab().client_key)}}}}))
    return inv


def run_ansible(playbook: Path, inv: Path, extra: list[str], tmp: Path) -> dict:
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_HOME": str(tmp / "ansible-home"),
           "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp / "cp"),
           "ANSIBLE_PIPELINING": "True", "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
           "ANSIBLE_SSH_ARGS": f"-o ControlMaster=auto -o ControlPersist=30s "
                               f"-o UserKnownHostsFile={settings.known_hosts_file()} -o StrictHostKeyChecking=yes"}
    p = subprocess.run([str(ANSIBLE), "-i", str(inv), str(playbook), *extra], cwd=tmp, env=env, capture_output=True,
                       text=True, timeout=300)
    m = RECAP.search(p.stdout)
    assert m, f"ansible-playbook exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-2000:]}"
    return dict(zip(COUNTS, map(int, m.groups()), strict=True)) | {"log": p.stdout[-4000:]}


def run_gpuprov(sim, playbook: Path, inv: Path, extra: list[str]) -> dict:
    p = sim.cli("play", str(playbook), "--inventory", str(inv), "--json", *extra, timeout=300)
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
    assert lines, f"invoke play exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    rec = json.loads(lines[-1])["hosts"]["target"]
    return {k: int(rec[k]) for k in COUNTS if k != "unreachable"} | {
        "unreachable": int(rec["unreachable"]), "log": p.stdout[-2000:] + p.stderr[-2000:]}


@pytest.mark.parametrize("case", CASES, ids=[c["playbook"].removesuffix(".yml") for c in CASES])
def test_same_end_state_and_counts_as_ansible(case, twins, sim, tmp_path):
    pair, facts = twins
    a_host, g_host = pair(case.get("tier", "plain"))
    system = case.get("tier") == "systemd"
    for h in (a_host, g_host):
        on_host(h, ["rm", "-rf", "/opt/difft"])
    extra = [x.format(**facts) for x in case.get("extra", [])]
    playbook = HERE / case["playbook"]
    a_inv, g_inv = inventory_for(a_host, tmp_path, "ansible"), inventory_for(g_host, tmp_path, "gpuprov")
    with ThreadPoolExecutor(2) as pool:  # the twins are separate hosts: both tools run at once
        fa = pool.submit(run_ansible, playbook, a_inv, extra, tmp_path)
        fg = pool.submit(run_gpuprov, sim, playbook, g_inv, extra)
        runs = [(fa.result(), fg.result())]
    again = run_gpuprov(sim, playbook, g_inv, extra)
    a_state, g_state = snapshot(a_host, system), snapshot(g_host, system)
    assert len(a_state) > 1, "the playbook left nothing to compare"
    differ = [f"{k}:\n  gpuprov: {g_state.get(k)}\n  ansible: {a_state.get(k)}"
              for k in sorted(set(a_state) | set(g_state)) if a_state.get(k) != g_state.get(k)]
    a, g = runs[0]
    logs = f"\nansible:\n{a['log']}\ngpuprov:\n{g['log']}\ngpuprov again:\n{again['log']}"
    assert g_state == a_state, "\n".join(differ) + logs
    for k in ("changed", "failed", "rescued", "ignored", "skipped", "ok", "unreachable"):
        assert g[k] == a[k], f"{k}: {g[k]} (gpuprov) != {a[k]} (ansible)" + logs
    assert a["changed"] > 0
    # the second run changes nothing and fails nothing new
    assert (again["changed"], again["failed"], again["unreachable"]) == (0, 0, 0), logs
