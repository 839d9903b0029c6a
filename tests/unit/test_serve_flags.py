"""`vllm serve` flags: parsing the real parser's help, the recorded tables (data/serve_flags, from each release's
own parser by scripts/record_serve_flags.py; tests/lab/test_real_engine.py re-checks 0.32.0 against the live
parser), and the stand-in accepting exactly them. The planner's verdicts on flags are plan cases
(tests/fixtures/plans/flags.yml)."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from gpuprov.compat import matrix, vtuple
from gpuprov.models import lookup
from gpuprov.plan import make_plan
from gpuprov.serve_flags import known_serve_flags, parse_serve_help, recorded_serve_flags, recorded_versions
from gpuprov.sim.standin_vllm import build_wheel

from .test_fit_and_vars import H100, host

HELP = """usage: vllm serve [model_tag] [options]

options:
  --api-server-count API_SERVER_COUNT, -asc API_SERVER_COUNT
                        How many API server processes to run. Defaults to
  --disable-log-stats   Disable logging statistics. (default: False)
  --enable-log-requests, --no-enable-log-requests
                        Enable logging request information, dependant on log
  -h, --help            show this help message and exit
  --api-key API_KEY [API_KEY ...]
  --dtype {auto,bfloat16,float,float16,float32,half}
                        Data type for model weights and activations.
                        --this-is-description-text not an option
"""


def test_parse_serve_help():
    assert parse_serve_help(HELP) == {
        "--api-server-count": True, "--disable-log-stats": False, "--enable-log-requests": False,
        "--no-enable-log-requests": False, "--help": False, "--api-key": True, "--dtype": True,
    }


def test_every_version_the_planner_picks_by_default_has_a_recorded_table():
    """Default picks: the newest release (R580+) and the newest with a CUDA 12 variant (R525–R570)."""
    rels = matrix()["vllm"]
    defaults = {rels[0]["version"], next(r["version"] for r in rels if any(v["cuda"].startswith("12")
                                                                          for v in r["variants"].values()))}
    assert defaults <= set(recorded_versions()), defaults
    assert list(recorded_versions()) == sorted(recorded_versions(), key=vtuple)
    for v in recorded_versions():
        table = recorded_serve_flags(v)
        assert table is not None and len(table) > 300 and "--max-model-len" in table and table["--max-model-len"]
    assert recorded_serve_flags("0.31.9") is None


def test_0_33_0_renamed_the_negative_switches():
    old, new = recorded_serve_flags("0.32.0"), recorded_serve_flags("0.33.0")
    assert "--no-enable-prefix-caching" in old and "--no-enable-prefix-caching" not in new
    assert "--disable-prefix-caching" in new and "--disable-prefix-caching" not in old
    assert set(known_serve_flags()) == set(old) | set(new)


def test_a_version_without_a_table_plans_with_a_warning_naming_it():
    spec = lookup("openai/gpt-oss-20b")
    p = make_plan(H100, host(vllm_version="0.31.0"), spec)
    assert p.ok and any(w.startswith("vLLM 0.31.0: gpuprov has no recorded `vllm serve` flag table")
                        for w in p.warnings)
    p = make_plan(H100, host(vllm_version="0.31.0", extra_serve_args=["--max-model-length", "4096"]), spec)
    assert any("--max-model-length" in w and "did you mean --max-model-len?" in w for w in p.warnings), p.warnings
    p = make_plan(H100, host(vllm_version="0.32.0"), spec)
    assert p.ok and not any("flag table" in w for w in p.warnings)


def test_standin_0_32_0_accepts_exactly_the_recorded_flags(tmp_path):
    build_wheel("0.32.0", {f: {"takes_value": v} for f, v in recorded_serve_flags("0.32.0").items()}, str(tmp_path))
    with zipfile.ZipFile(tmp_path / "vllm-0.32.0-py3-none-any.whl") as z:
        z.extractall(tmp_path / "site")

    def parse(*argv: str) -> subprocess.CompletedProcess:
        code = (f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); "
                "import vllm; print(vllm.parser().parse_args(sys.argv[1:]))")
        return subprocess.run([sys.executable, "-c", code, "m", *argv], capture_output=True, text=True, timeout=30)

    ok = parse("--kv-cache-memory-bytes", "64M", "--enforce-eager", "--all2all-backend", "x")
    assert ok.returncode == 0, ok.stderr
    bad = parse("--max-model-length", "5")
    assert bad.returncode == 2 and "unrecognized arguments: --max-model-length" in bad.stderr


def test_standin_of_each_recorded_version_accepts_that_versions_negative_switches(tmp_path):
    """0.32.0 spells a switch off as --no-enable-prefix-caching, 0.33.0 as --disable-prefix-caching: each stand-in
    takes its own version's spelling and refuses the other's, as the real parsers do."""
    for version, own, other in (("0.32.0", "--no-enable-prefix-caching", "--disable-prefix-caching"),
                                ("0.33.0", "--disable-prefix-caching", "--no-enable-prefix-caching")):
        out = tmp_path / version
        out.mkdir()
        build_wheel(version, {f: {"takes_value": v} for f, v in recorded_serve_flags(version).items()}, str(out))
        with zipfile.ZipFile(out / f"vllm-{version}-py3-none-any.whl") as z:
            z.extractall(out / "site")
        code = (f"import sys; sys.path.insert(0, {str(out / 'site')!r}); "
                "import vllm; print(vllm.parser().parse_args(sys.argv[1:]))")
        ok = subprocess.run([sys.executable, "-c", code, "m", own], capture_output=True, text=True, timeout=30)
        bad = subprocess.run([sys.executable, "-c", code, "m", other], capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        assert bad.returncode == 2 and f"unrecognized arguments: {other}" in bad.stderr
