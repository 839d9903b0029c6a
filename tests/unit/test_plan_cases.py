"""Plan cases kept as data (tests/fixtures/plans/*.yml), run through one loader. A new case needs no code."""

from __future__ import annotations

from types import MappingProxyType

import pytest
import yaml

from gpuprov import settings
from gpuprov.errors import UsageError
from gpuprov.facts import GPU, Facts, parse_smi_csv, parse_smi_table, parse_smi_xml
from gpuprov.inventory import Host, Var
from gpuprov.models import lookup
from gpuprov.plan import make_plan

from ..conftest import FIXTURES, SMI_DATA

PARSERS = {"xml": parse_smi_xml, "csv": parse_smi_csv, "table": parse_smi_table}
CASES = [c for f in sorted((FIXTURES / "plans").glob("*.yml")) for c in yaml.safe_load(f.read_text())]


def case_facts(case: dict) -> Facts:
    base = {"host": "h", "arch": "x86_64", "glibc": "glibc 2.36", "pythons": ("3.11",), "systemd": True,
            "install_root": "/opt/gpuprov"}
    if "smi" in case:
        path = SMI_DATA / case["smi"]
        rep = PARSERS[path.parent.name](path.read_text())
        base.update(driver_version=rep.driver_version, cuda_driver_version=rep.cuda_driver_version, gpus=rep.gpus,
                    source=rep.source)
    over = dict(case.get("facts") or {})
    g = over.pop("gpus", None)
    if isinstance(g, dict):
        n = g.pop("count", 1)
        base["gpus"] = tuple(GPU(index=i, **g) for i in range(n))
    elif g == []:
        base["gpus"] = ()
    base.update(over)
    return Facts(**base)


def case_host(case: dict) -> Host:
    d = settings.defaults({})
    for k, v in (case.get("vars") or {}).items():
        d[k] = Var(v, "case")
    return Host(name="h", address="x", vars=MappingProxyType(d))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_plan_case(case):
    host = case_host(case)
    exp = dict(case["expect"])
    if "raises" in exp:  # bad input: one clear error, no plan
        with pytest.raises(UsageError) as ei:
            make_plan(case_facts(case), host, lookup(host.var("model")), hf_token=case.get("hf_token"))
        assert exp["raises"] in str(ei.value)
        return
    p = make_plan(case_facts(case), host, lookup(host.var("model")), hf_token=case.get("hf_token"))
    assert p.ok is exp.pop("ok"), (p.reason, p.why)
    if not p.ok:
        assert p.reason and p.ways_out, "a refusal names the reason and a way out"
    for key, want in exp.items():
        if key == "reason_has":
            assert want in p.reason
        elif key == "ways_out_has":
            for w in want:
                assert any(w in x for x in p.ways_out), (w, p.ways_out)
        elif key == "why_has":
            assert any(want in x for x in p.why), p.why
        elif key == "warnings_have":
            for w in want:
                assert any(w in x for x in p.warnings), (w, p.warnings)
        elif key == "serve_args_has":
            args = list(p.serve_args)
            i = args.index(want[0])
            assert args[i:i + len(want)] == want
        elif key == "max_model_len_between":
            assert want[0] <= p.max_model_len <= want[1], p.max_model_len
        elif key == "gpu_total_gib":
            assert p.memory["gpu_total_gib"] == want
        else:
            got = getattr(p, key)
            assert (list(got) if isinstance(got, tuple) else got) == want, (key, got)
    if p.ok:
        assert p.serve_args[0] == host.var("model")
        assert "--api-key" not in p.serve_args  # secrets never in argv
        if (host.var("engine_env") or {}).get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") != "1":
            assert p.max_model_len <= lookup(host.var("model")).max_position_embeddings
