"""Operation cases from tests/fixtures/ops/cases.yml: arguments + gathered state → commands, no-op, or error."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from gpuprov.errors import UsageError
from gpuprov.ops import NoOp, Op, OpContext

from ..conftest import FIXTURES

CASES = yaml.safe_load((FIXTURES / "ops" / "cases.yml").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_op_case(case):
    facts = SimpleNamespace(is_root=case.get("root", True))
    ctx = OpContext(None, facts, become=bool(case.get("become")))
    if "error" in case and "state" not in case:
        with pytest.raises(UsageError, match=None) as ei:
            Op.registry[case["op"]](case["args"], case["name"])
        assert case["error"] in str(ei.value)
        return
    op = Op.registry[case["op"]](case["args"], case["name"])
    assert len(op.queries(ctx)) == len(case["state"]), "one answer per query"
    if "error" in case:
        with pytest.raises(UsageError) as ei:
            op.check(ctx, case["state"])
        assert case["error"] in str(ei.value)
        return
    decision = op.check(ctx, case["state"])
    if "noop" in case:
        assert isinstance(decision, NoOp), decision
        assert case["noop"] in decision.reason
        return
    assert not isinstance(decision, NoOp), decision.reason
    assert [shlex.join(c.argv) for c in decision.commands] == case["commands"]
    if "stdin" in case:
        assert [(c.stdin or b"").decode() for c in decision.commands] == case["stdin"]


def test_every_operation_has_cases():
    covered = {c["op"] for c in CASES}
    assert {"command", "shell", "file", "copy", "apt", "venv", "pip", "service"} <= covered


def test_pip_runs_from_its_wheel_in_a_venv_made_without_it(tmp_path, monkeypatch):
    """Real, no network: a venv made as ``venv: {pip: false}`` makes it has no pip; the pip op's runner finds the
    wheel ensurepip would install and runs pip from it, and with no wheel found lets ensurepip put pip in first."""
    from gpuprov.ops import packages

    ctx = OpContext(None, SimpleNamespace(is_root=True), become=False)
    venv = tmp_path / "boot"
    python = getattr(sys, "_base_executable", sys.executable)
    made = Op.registry["venv"]({"path": str(venv), "python": python, "pip": False}, "v").check(ctx, [{}])
    for c in made.commands:
        subprocess.run(c.argv, check=True, timeout=120)
    assert not list(venv.glob("lib/python*/site-packages/pip")), "made without pip"
    pip = Op.registry["pip"]({"venv": str(venv), "packages": ["uv==0.13.9"]}, "p")
    install = pip.check(ctx, [{"exists": True, "packages": {}}, {"exists": True}]).commands[-1].argv
    runner = list(install[1:install.index("install")])  # after `env`: the runner, then pip's own arguments
    assert runner[:2] == ["sh", "-c"] and install[-1] == "uv==0.13.9"
    out = subprocess.run([*runner, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and ".whl/pip" in out.stdout, out  # pip 23.0.1 from …/pip-23.0.1-py3-none-any.whl/pip
    assert not list(venv.glob("lib/python*/site-packages/pip")), "pip ran from its wheel, nothing installed"
    monkeypatch.setattr(packages, "PIP_WHEEL", "raise SystemExit(1)")  # a host with no pip wheel to be found
    out = subprocess.run([*packages.Pip._pip(str(venv), False), "--version"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and str(Path(venv, "lib")) in out.stdout, out  # ensurepip put it in the venv


PINS = [("vllm==0.32.0", "0.32.0+cpu"), ("vllm==0.32.0", "0.32.0"), ("vllm==0.32", "0.32.0"),
        ("vllm==0.32.0", "0.31.0"), ("uv==0.13.9", "0.13.9rc1"), ("a==1.0", "1.0.post1"),
        ("a==1.0", "not-a-version"), ("a==1.0", "1.0+x.y"), ("A_b.c==2", "2.0.0")]


@pytest.mark.parametrize("pin,have", PINS)
def test_a_plain_pin_is_judged_as_packaging_judges_it(pin, have):
    from packaging.requirements import Requirement

    from gpuprov.ops.packages import _Pin, _req

    name, spec = _req(pin)
    assert isinstance(spec, _Pin) and name == Requirement(pin).name.lower().replace("_", "-").replace(".", "-")
    assert spec.contains(have, prereleases=True) == Requirement(pin).specifier.contains(have, prereleases=True)
