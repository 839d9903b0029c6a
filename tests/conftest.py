"""Shared fixtures. The lab fixtures build real hosts (sshd in network namespaces, systemd in nspawn)
with names, subnet and state folder unique to this test run, and always tear them down."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
#: recorded nvidia-smi outputs (xml/ links to the lab's personas); sources in SOURCES.md there
SMI_DATA = DATA / "nvidia-smi"
FIXTURES = Path(__file__).parent / "fixtures"


def lab_missing() -> str | None:
    if os.geteuid() != 0:
        return "the simulated lab needs root"
    for tool in ("ip", "ssh-keygen"):
        if not shutil.which(tool):
            return f"{tool} is not installed (run through ./bootstrap, which installs the lab's packages)"
    if not Path("/usr/sbin/sshd").exists():
        return "openssh-server is not installed (run through ./bootstrap)"
    return None


@pytest.fixture(scope="session")
def lab_env(tmp_path_factory):
    """Environment for this run's lab: own GPUPROV_HOME, inventory, interface prefix and subnet."""
    why = lab_missing()
    if why:
        pytest.skip(why)
    home = tmp_path_factory.mktemp("gpuprov-home")
    tag = f"{random.randrange(16**3):03x}"
    in_use = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, timeout=10).stdout
    while True:  # a subnet no interface on this machine uses
        subnet = f"10.{random.randrange(100, 250)}.{random.randrange(0, 250)}"
        if f" {subnet}." not in in_use:
            break
    env = {
        "GPUPROV_HOME": str(home),
        "GPUPROV_INVENTORY": str(home / "inventory"),
        "GPUPROV_SIM_PREFIX": f"t{tag}",
        "GPUPROV_SIM_SUBNET": f"{subnet}.0/24",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        from gpuprov.sim import control as lab

        try:
            lab.sim_down()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class Sim:
    """Start sim hosts for one test module; everything started is removed at the end."""

    def __init__(self, env: dict):
        self.env = env
        self.names: list[str] = []

    def up(self, name: str, gpu: str = "none", systemd: bool = False, **kw):
        from gpuprov.sim import control as lab

        h = lab.sim_up(name, gpu=gpu, systemd=systemd, **kw)
        self.names.append(name)
        return h

    def down(self, name: str) -> None:
        from gpuprov.sim import control as lab

        lab.sim_down(name)
        self.names.remove(name)

    def cli(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        """Run `invoke ARGS` as a user would, in the repo, with this lab's environment."""
        env = {**os.environ, **self.env}
        p = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"invoke {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def teardown(self) -> None:
        from gpuprov.sim import control as lab

        for n in list(self.names):
            try:
                lab.sim_down(n)
            except Exception:  # noqa: BLE001 - keep tearing down the rest
                pass
            self.names.remove(n)


@pytest.fixture(scope="module")
def sim(lab_env):
    s = Sim(lab_env)
    try:
        yield s
    finally:
        s.teardown()
