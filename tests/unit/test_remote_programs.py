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


def test_the_loader_is_python_38():
    ast.parse(remote.LOADER, feature_version=(3, 8))


def test_the_loader_runs_a_program_and_leaves_stdin_to_it(tmp_path):
    argv, stdin = remote.command("engine_health", 1)  # nothing listens on port 1
    p = subprocess.run(argv, input=stdin, capture_output=True, timeout=30, env={"HOME": str(tmp_path)})
    assert p.returncode == 0 and p.stdout.decode().strip() == "nothing answers on port 1", p.stderr
    argv, stdin = remote.command("gather", code="\nmain([{'kind': 'stat', 'path': '/'}])\n", flags=("-S",))
    p = subprocess.run(argv, input=stdin, capture_output=True, timeout=30, env={"HOME": str(tmp_path)})
    answers = ast.literal_eval(p.stdout.decode())
    assert answers[0]["exists"] and answers[0]["type"] == "directory"


def _gather_root(home, argv_stdin=None):
    argv, stdin = argv_stdin or remote.command("gather", code="\nmain([{'kind': 'stat', 'path': '/'}])\n",
                                               flags=("-S",))
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, *argv[1:]], input=stdin, capture_output=True, timeout=30, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode()


def _plant(path, text):
    """A compiled program that is not the one its name says (what a folder others can write to could hold)."""
    import marshal

    path.write_bytes(marshal.dumps(compile(text, "planted", "exec")))


def test_the_loader_keeps_each_program_compiled_in_a_private_folder_and_trusts_nothing_else(tmp_path):
    """A host compiles a version of a program once: its code is kept under its name and hash in ~/.cache/gpuprov/py
    (0700, files 0600) and used from there; a file that is not code is compiled again; a folder that is not the
    user's alone (group-writable, a link) is never read; older versions of the program are removed."""
    import os
    import stat

    argv, stdin = remote.command("gather", code="\nmain([{'kind': 'stat', 'path': '/'}])\n", flags=("-S",))
    key = argv[argv.index(remote.LOADER) + 3]
    tag = sys.implementation.cache_tag  # the host's python3 is this one (_gather_root)
    home = tmp_path / "home"
    cache = home / ".cache" / "gpuprov" / "py"
    cache.mkdir(parents=True, mode=0o700)
    (cache / f"gather-{'0' * 24}.{tag}").write_bytes(b"an older version")
    (cache / f"probe-{'0' * 24}.{tag}").write_bytes(b"another program")
    real = _gather_root(home, (argv, stdin))
    assert ast.literal_eval(real)[0]["type"] == "directory"
    kept = cache / f"{key}.{tag}"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700 and stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert sorted(p.name for p in cache.iterdir()) == sorted([kept.name, f"probe-{'0' * 24}.{tag}"])
    # the kept code is what runs: planted there, it runs instead (so a folder others may write must never be read)
    _plant(kept, "import sys\ndef main(queries): sys.stdout.write('planted')")
    assert _gather_root(home, (argv, stdin)) == "planted"
    os.chmod(cache, 0o770)
    assert _gather_root(home, (argv, stdin)) == real
    os.chmod(cache, 0o700)
    kept.write_bytes(b"not code")
    assert _gather_root(home, (argv, stdin)) == real
    assert kept.read_bytes() != b"not code"  # compiled again, and kept
    # a link in its place is not followed, even to a folder of the user's own
    other = tmp_path / "elsewhere"
    cache.rename(other)
    _plant(other / kept.name, "import sys\ndef main(queries): sys.stdout.write('planted')")
    cache.symlink_to(other)
    assert _gather_root(home, (argv, stdin)) == real


def test_the_loader_runs_without_a_writable_home(tmp_path):
    home = tmp_path / "ro"
    home.mkdir(mode=0o500)
    try:
        assert ast.literal_eval(_gather_root(home))[0]["type"] == "directory"
    finally:
        home.chmod(0o700)


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
