"""The edges that must simply work: pretty-printed and multi-host facts files, user strings printed as typed,
a project found from a subfolder, nothing read from the controller's generic environment variables."""

from __future__ import annotations

import json

from gpuprov import settings

from ..conftest import REPO
from .test_bad_inputs import GOOD_FACTS, project, run_cli

POD = REPO / "examples" / "facts" / "pod-4090.json"


def test_pretty_printed_facts_file_plans(tmp_path):
    assert "\n  " in POD.read_text()  # the example is multi-line JSON (as `jq .` writes it)
    p = run_cli(project(tmp_path), ["plan", "--facts", str(POD), "--json"])
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert plan["host"] == "pod-4090" and plan["ok"] and plan["vllm_version"] == "0.32.0"


def test_multi_host_facts_file_plans_every_host(tmp_path):
    p = run_cli(project(tmp_path), ["plan", "--facts", str(GOOD_FACTS), "--json"])
    assert p.returncode == 0, p.stderr
    plans = [json.loads(line) for line in p.stdout.splitlines()]
    assert [(x["host"], x["vllm_version"]) for x in plans] == [("pod-4090", "0.32.0"), ("vm-h100x2", "0.33.0")]


def test_facts_and_host_plan_each_host_with_its_own_facts(tmp_path):
    cwd = project(tmp_path)
    (cwd / "inventory").mkdir()
    (cwd / "inventory" / "hosts.yml").write_text(
        "all:\n  hosts:\n    vm-h100x2: {address: 203.0.113.8, max_model_len: 8192}\n"
        "    other: {address: 203.0.113.9}\n")
    p = run_cli(cwd, ["plan", "--facts", str(GOOD_FACTS), "--host", "vm-h100x2", "--json"])
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert (plan["host"], plan["vllm_version"], plan["max_model_len"]) == ("vm-h100x2", "0.33.0", 8192)


def test_user_strings_print_as_typed(tmp_path):
    cwd = project(tmp_path)
    for model in ("foo[/]bar", "[red]x"):
        p = run_cli(cwd, ["plan", "--facts", str(POD), "--model", model])
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert f"REFUSED {model}" in p.stdout, p.stdout
    p = run_cli(cwd, ["plan", "--facts", str(POD), "-e", "served_model_name=[bold]mine[/]"])
    assert p.returncode == 0, p.stderr
    assert "--served-model-name '[bold]mine[/]'" in p.stdout and "\x1b[" not in p.stdout


def test_generic_local_environment_changes_nothing(tmp_path):
    cwd = project(tmp_path)
    base = run_cli(cwd, ["plan", "--facts", str(POD), "--json"])
    noisy = run_cli(cwd, ["plan", "--facts", str(POD), "--json"],
                    env={"MODEL": "gpt-4o", "MAX_MODEL_LEN": "abc", "API_KEY": "sk-other-service"})
    assert base.returncode == noisy.returncode == 0, noisy.stderr
    assert json.loads(noisy.stdout) == json.loads(base.stdout)
    assert json.loads(noisy.stdout)["api_key_required"] is False
    own = run_cli(cwd, ["plan", "--facts", str(POD), "--json"], env={"GPUPROV_MAX_MODEL_LEN": "16k"})
    assert json.loads(own.stdout)["max_model_len"] == 16384


def test_tasks_run_from_a_subfolder_find_the_project(tmp_path, monkeypatch):
    cwd = project(tmp_path)
    (cwd / "inventory").mkdir()
    (cwd / "inventory" / "hosts.yml").write_text("all:\n  hosts:\n    pod1: {address: 203.0.113.7, port: 22022}\n")
    deep = cwd / "a" / "b"
    deep.mkdir(parents=True)
    p = run_cli(deep, ["inventory", "--host", "pod1", "--json"])
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["port"] == 22022
    monkeypatch.chdir(deep)
    monkeypatch.delenv("GPUPROV_HOME", raising=False)
    monkeypatch.delenv("GPUPROV_INVENTORY", raising=False)
    assert settings.home() == cwd.resolve() / ".gpuprov"
    assert settings.inventory_path() == cwd.resolve() / "inventory"
    assert settings.known_hosts_file().parent == cwd.resolve() / ".gpuprov"


def test_verbose_shows_the_commands_and_the_error_chain(tmp_path):
    cwd = project(tmp_path)
    quiet = run_cli(cwd, ["probe", "--host", "local", "--json"])
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert json.loads(quiet.stdout)["host"] == "local"  # --host local: this machine, no SSH
    loud = run_cli(cwd, ["probe", "--host", "local", "--json", "-v"])
    assert loud.returncode == 0 and "[gpuprov.connection] local $ sh -c " in loud.stderr
    bad = ["plan", "--facts", str(POD), "-e", "max_model_len=lots"]
    p = run_cli(cwd, bad)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = run_cli(cwd, [*bad, "--verbose"])
    assert p.returncode == 2 and "Traceback (most recent call last)" in p.stderr
    assert p.stderr.rstrip().splitlines()[-1].startswith("error: max_model_len (from command line)")
