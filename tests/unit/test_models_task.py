"""`invoke models`: the catalog as a table or JSON lines, and with --fit what each model gets on a host (here
from recorded facts; the lab tier probes a sim host)."""

from __future__ import annotations

import json

from gpuprov.models import catalog

from .test_bad_inputs import GOOD_FACTS, project, run_cli


def test_models_lists_the_catalog_with_what_matters(tmp_path):
    p = run_cli(project(tmp_path), ["models", "--json"])
    assert p.returncode == 0, p.stderr
    rows = {r["model"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert set(rows) == set(catalog())
    assert rows["openai/gpt-oss-20b"] == {
        "model": "openai/gpt-oss-20b", "weights_gib": 13.7, "max_context": 131072, "quantization": "mxfp4",
        "min_compute_capability": "8.0", "gated": False, "moe": True}
    assert rows["meta-llama/Llama-3.3-70B-Instruct"]["gated"] is True
    assert rows["Qwen/Qwen2.5-7B-Instruct"]["min_compute_capability"] == "7.5"  # vLLM's own floor
    (tmp_path / "h").mkdir()
    human = run_cli(project(tmp_path / "h"), ["models"])
    assert human.returncode == 0 and "meta-llama/Llama-3.3-70B-Instruct" in human.stdout


def test_models_fit_plans_every_catalog_model_for_each_host(tmp_path):
    p = run_cli(project(tmp_path), ["models", "--facts", str(GOOD_FACTS), "--json"])
    assert p.returncode == 0, p.stderr
    rows = {(r["host"], r["model"]): r for r in map(json.loads, p.stdout.splitlines())}
    assert len(rows) == 2 * len(catalog())
    small, big = rows[("pod-4090", "openai/gpt-oss-20b")], rows[("pod-4090", "openai/gpt-oss-120b")]
    assert small["ok"] and small["max_model_len"] == 131072 and small["vllm_version"] == "0.32.0"
    assert not big["ok"] and "does not fit" in big["reason"]
    h100 = rows[("vm-h100x2", "openai/gpt-oss-120b")]  # two H100s: tensor parallel 2 at vLLM's batch defaults
    assert h100["ok"] and (h100["tensor_parallel_size"], h100["data_parallel_size"]) == (2, 1)
    (tmp_path / "h").mkdir()
    cwd = project(tmp_path / "h")
    (cwd / "inventory").mkdir()
    (cwd / "inventory" / "hosts.yml").write_text("all:\n  hosts:\n    pod-4090: {address: 203.0.113.7}\n")
    human = run_cli(cwd, ["models", "--fit", "pod-4090", "--facts", str(GOOD_FACTS)])
    assert human.returncode == 0, human.stderr
    assert "pod-4090: 1 × NVIDIA GeForce RTX 4090" in human.stdout and "vm-h100x2" not in human.stdout
