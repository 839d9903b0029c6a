"""Where things live on a host, over real SSH: a custom install_root works for provision, status, logs, stop/start
and teardown; and `--host local` provisions the machine gpuprov itself runs on (gpuprov run inside a sim host)."""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import shutil
from pathlib import Path

import pytest

from gpuprov.sim.control import sim_lab

from ..conftest import REPO
from .test_provision_lab import A5000, provision, remote

pytestmark = pytest.mark.lab
ROOT = "/opt/custom-gp"  # /opt is the sim host's own


def status_of(sim, name: str) -> dict:
    p = sim.cli("status", "--host", name, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_a_custom_install_root_is_found_by_every_task(sim):
    sim.up("pvr", gpu=A5000)
    inv = Path(sim.env["GPUPROV_INVENTORY"])
    (inv / "custom-root.yml").write_text(
        f"all:\n  children:\n    custom_root:\n      vars: {{install_root: {ROOT}}}\n      hosts:\n        pvr: {{}}\n")
    try:
        p = provision(sim, "pvr")
        assert p.returncode == 0, p.stdout + p.stderr
        assert remote("pvr", "sh", "-c", "test -e /opt/gpuprov && echo yes || echo no").strip() == "no"
        s = status_of(sim, "pvr")
        assert (s["service"], s["ready"], s["root"]) == ("active", True, ROOT)
        assert "Application startup complete." in sim.cli("logs", "--host", "pvr", "-n", "400").stdout
        assert sim.cli("stop", "--host", "pvr").returncode == 0
        assert status_of(sim, "pvr")["service"] == "inactive"
        p = sim.cli("start", "--host", "pvr")
        assert p.returncode == 0 and "ready" in p.stdout, p.stdout + p.stderr
        assert provision(sim, "pvr", "--json").returncode == 0  # the probe finds it too: nothing changes
        recap = json.loads(provision(sim, "pvr", "--json").stdout.splitlines()[-1])["hosts"]["pvr"]
        assert recap["changed"] == 0
        p = sim.cli("teardown", "--host", "pvr")
        assert p.returncode == 0, p.stdout + p.stderr
        assert remote("pvr", "ls", "-A", ROOT).split() == ["hf"]
        assert status_of(sim, "pvr")["service"] == "not-installed"
    finally:
        (inv / "custom-root.yml").unlink()


def _dists(name: str, seen: set[str]) -> None:
    """``name`` and everything it requires on this platform (markers evaluated, no extras)."""
    from packaging.requirements import Requirement

    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return
    seen.add(key)
    for text in md.distribution(name).requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            _dists(req.name, seen)


def _install_gpuprov_into(usrlocal: Path) -> None:
    """gpuprov, its tasks and its dependencies, copied into the sim host's own /usr/local."""
    site, proj = usrlocal / "gpuprov-site", usrlocal / "gpuprov-proj"
    names: set[str] = set()
    _dists("gpuprov", names)
    names.discard("gpuprov")
    for n in sorted(names):
        dist = md.distribution(n)
        for f in dist.files or []:
            src = Path(str(dist.locate_file(f)))
            if src.is_file() and ".." not in f.parts:
                dst = site / f
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    shutil.copytree(REPO / "src" / "gpuprov", site / "gpuprov", ignore=shutil.ignore_patterns("__pycache__"))
    proj.mkdir(parents=True, exist_ok=True)
    for item in ("tasks.py", "invoke.yaml", "playbooks", "templates"):
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy2)(REPO / item, proj / item)


def test_host_local_provisions_the_machine_gpuprov_runs_on(sim):
    h = sim.up("pvl", gpu=A5000)
    _install_gpuprov_into(Path(sim_lab().hosts()["pvl"].dir) / "usrlocal")
    inv = json.loads(sim.cli("inventory", "--host", "pvl", "--json", check=True).stdout)["vars"]
    lab_vars = [f"{k}={json.dumps(inv[k]['value'])}" for k in ("package_index", "hf_endpoint") if k in inv]
    cli = ["sh", "-c", 'cd /usr/local/gpuprov-proj && PYTHONPATH=/usr/local/gpuprov-site exec /usr/bin/python3 '
           '-m invoke "$@"', "sh"]
    args = ["provision", "--host", "local", "--json"]
    for v in lab_vars:
        args += ["-e", v]
    out = remote("pvl", *cli, *args)
    recap = json.loads(out.strip().splitlines()[-1])["hosts"]["local"]
    assert recap["failed"] == 0 and recap["ready"] is True, out
    human = remote("pvl", *cli, *[a for a in args if a != "--json"])
    assert "changed" not in human.split("RECAP")[0], human
    # the same installation, seen over SSH from the controller
    assert status_of(sim, "pvl")["service"] == "active" and h.name == "pvl"
