"""The programs gpuprov runs on hosts: each composed source (shared helpers + program) is valid Python 3.8, uses no
name it does not define, and runs the way the runner sends it (the loader on argv, the source on stdin)."""

from __future__ import annotations

import ast
import json
import os
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
    answers = json.loads(p.stdout.decode())
    assert answers[0]["exists"] and answers[0]["type"] == "directory"


def _gather_root(home, argv_stdin=None):
    argv, stdin = argv_stdin or remote.command("gather", code="\nmain([{'kind': 'stat', 'path': '/'}])\n",
                                               flags=("-S",))
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "GPUPROV_PY_CACHE": str(home / ".cache" / "gpuprov" / "py")}
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
    assert json.loads(real)[0]["type"] == "directory"
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


@pytest.mark.skipif(os.path.isdir("/workspace"), reason="a /workspace folder here: the loader keeps its cache there")
def test_the_loader_keeps_its_cache_in_the_home_where_there_is_no_workspace(tmp_path):
    argv, stdin = remote.command("gather", code="\nmain([])\n", flags=("-S",))
    p = subprocess.run([sys.executable, *argv[1:]], input=stdin, capture_output=True, timeout=30,
                       env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0 and json.loads(p.stdout) == [], p.stderr
    key = argv[argv.index(remote.LOADER) + 3]
    assert (tmp_path / ".cache" / "gpuprov" / "py" / f"{key}.{sys.implementation.cache_tag}").is_file()


def test_the_loader_runs_without_a_writable_home(tmp_path):
    home = tmp_path / "ro"
    home.mkdir(mode=0o500)
    try:
        assert json.loads(_gather_root(home))[0]["type"] == "directory"
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


def _common_helpers():
    ns: dict = {"__name__": "gpuprov_common"}
    exec(compile(remote.source("gather").split("# ----", 1)[0], "_common", "exec"), ns)  # noqa: S102
    return ns


JSON_CASES = [
    {"a": [1, 2.5, -0.0, True, False, None], "b": {"nested": {"deep": []}}, "": ""},
    ["plain", "quote\" backslash\\ slash/", "tab\t nl\n cr\r nul\x00 bell\x07", "é ü 中文 🚀",
     "\udc80\udcff surrogates"],
    {"mtime": 1796173976.0355694, "big": 2 ** 70, "neg": -12, "exp": 1e-300},
    {1: "int key", 2.5: "float key", False: "bool key", None: "none key"},
    [float("nan"), float("inf"), float("-inf")],
    [], {}, "", 0, None,
]


@pytest.mark.parametrize("value", JSON_CASES, ids=range(len(JSON_CASES)))
def test_the_host_side_json_is_json(value):
    """The programs' JSON (the C encoder and scanner json uses, without importing json) reads and writes exactly
    what json does."""
    h = _common_helpers()
    text = h["to_json"](value)
    assert text == json.dumps(value)
    back = h["from_json"](text)
    assert repr(back) == repr(json.loads(text))  # (repr: NaN is not equal to itself)
    assert repr(h["from_json"](text.encode())) == repr(back)


@pytest.mark.parametrize("text", ["", "   ", "{", "[1, 2", "nope", '{"a": 1} trailing', "{'single': 1}"])
def test_the_host_side_json_refuses_what_json_refuses(text):
    h = _common_helpers()
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        h["from_json"](text)


def test_the_host_side_helpers_work_without_the_c_modules():
    """Where a Python has no _json or _sha256 (they are CPython's accelerators), json and hashlib serve (signal and
    socket cannot be without _signal and _socket)."""
    code = ("import sys\nfor m in ('_json', '_sha256', '_sha2'):\n    sys.modules[m] = None\n"
            + remote.source("gather").split("# ----", 1)[0]
            + "\nprint(to_json(from_json('{\"a\": [1, \"\\\\u00e9\"]}')), signals().SIGALRM, sha256().hexdigest()[:8],"
              " http_status(1))\n")
    p = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ['{"a":', '[1,', '"\\u00e9"]}', "14", "e3b0c442", "None"]


def test_spawn_reports_a_missing_command_and_a_timeout():
    h = _common_helpers()
    assert h["spawn"](["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, "out\n", "err\n")
    rc, _, err = h["spawn"](["no-such-command-gpuprov"])
    assert rc == 127 and "No such file" in err
    rc, out, err = h["spawn"](["sh", "-c", "echo started; exec sleep 30"], timeout=0.5)
    assert rc == 124 and out == "started\n" and "timed out after 0.5s" in err
    sh = subprocess.run(["sh", "-c", "command -v sh"], capture_output=True, text=True, timeout=10).stdout.strip()
    assert h["which"]("sh") == sh
    assert h["which"]("no-such-command-gpuprov") is None


@pytest.mark.parametrize("name", ["vllm", "Flash_Attn", "zope.interface", "a-_.b", "__x__", "-lead", "trail.", "A..B"])
def test_the_gatherer_normalises_package_names_as_pep_503_does(name):
    import re

    ns: dict = {"__name__": "gpuprov_gather"}
    exec(compile(remote.source("gather").rsplit("# main([...])", 1)[0], "gather", "exec"), ns)  # noqa: S102
    assert ns["norm"](name) == re.sub(r"[-_.]+", "-", name).lower()


def test_the_gatherer_reads_a_venvs_packages(tmp_path):
    """The pip query lists each dist-info's Name and Version (glob's folders, in a stable order)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    for py, pkg, ver in (("python3.11", "Foo_Bar", "1.0"), ("python3.11", "baz", "2.0rc1"), ("python3.12", "q.x", "3")):
        d = venv / "lib" / py / "site-packages" / f"{pkg}-{ver}.dist-info"
        d.mkdir(parents=True)
        (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: {ver}\n\nbody\nName: not-this\n")
    (venv / "lib" / "python3.11" / "site-packages" / "foo_bar").mkdir()
    argv, stdin = remote.gather_command([{"kind": "pip", "venv": str(venv)}, {"kind": "pip", "venv": str(tmp_path)}])
    p = subprocess.run([sys.executable, *argv[1:]], input=stdin, capture_output=True, timeout=30,
                       env={"HOME": str(tmp_path)})
    answers = json.loads(p.stdout)
    assert answers[0]["packages"] == {"foo-bar": "1.0", "baz": "2.0rc1", "q-x": "3"}
    assert answers[1] == {"exists": False, "packages": {}}


def test_the_probe_loads_pynvml_without_ctypes_util_and_find_library_still_answers(tmp_path):
    """While pynvml loads, ctypes.util (shutil, subprocess, re, tempfile) is not imported; a find_library call made
    meanwhile still gets the real answer."""
    import ctypes.util

    fake = tmp_path / "pynvml.py"
    fake.write_text("import sys\nfrom ctypes.util import find_library\n"
                    "HEAVY = sorted(m for m in ('shutil', 'subprocess', 'tempfile') if m in sys.modules)\n"
                    "def nvmlInit():\n    raise RuntimeError('libc %s heavy %s' % (find_library('c'), HEAVY))\n")
    argv, stdin = remote.command("probe", "--quick")
    p = subprocess.run([sys.executable, *argv[1:]], input=stdin, capture_output=True, timeout=60,
                       env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)})
    nv = json.loads(p.stdout)["nvml"]
    assert nv["error"] == f"libc {ctypes.util.find_library('c')} heavy []", nv
