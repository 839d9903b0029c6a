"""The programs gpuprov runs on hosts: each composed source (shared helpers + program) is valid Python 3.8, uses no
name it does not define, and runs the way the runner sends it (the loader on argv, the source on stdin)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from gpuprov import remote


@pytest.mark.parametrize("name", remote.PROGRAMS)
def test_composed_program_is_python_38_with_no_undefined_name(name, tmp_path):
    src = remote.source(name)
    ast.parse(src, feature_version=(3, 8))
    f = tmp_path / f"{name}.py"
    f.write_text(src)
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F821,F811,F401", "--quiet",
                        str(f)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_loader_runs_a_program_and_leaves_stdin_to_it():
    argv, stdin = remote.command("engine_health", 1)  # nothing listens on port 1
    p = subprocess.run(argv, input=stdin, capture_output=True, timeout=30)
    assert p.returncode == 0 and p.stdout.decode().strip() == "nothing answers on port 1", p.stderr
    argv, stdin = remote.command("gather", code="\nmain([{'kind': 'stat', 'path': '/'}])\n", flags=("-S",))
    p = subprocess.run(argv, input=stdin, capture_output=True, timeout=30)
    answers = ast.literal_eval(p.stdout.decode())
    assert answers[0]["exists"] and answers[0]["type"] == "directory"


def test_unknown_program_is_an_error():
    with pytest.raises(KeyError):
        remote.source("nope")


def test_the_stand_in_engine_is_python_38_with_no_undefined_name(tmp_path):
    """The lab's stand-in vllm package runs on sim hosts too: the same checks, once its placeholders are filled."""
    from gpuprov.sim import standin_vllm

    src = standin_vllm.render("0.32.0", {"--port": {"takes_value": True}}, strict=False)
    assert "__" + "STRICT__" not in src and "__" + "FLAGS__" not in src
    ast.parse(src, feature_version=(3, 8))
    f = tmp_path / "vllm_init.py"
    f.write_text(src)
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F821,F811,F401", "--quiet",
                        str(f)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
