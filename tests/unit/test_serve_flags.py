"""`vllm serve` flags: parsing the real parser's help, gpuprov's flag table against vLLM 0.32.0's recorded parser
(recorded from the real engine in the lab; tests/lab/test_real_engine.py re-checks the recording against the live
parser), the planner's refusal of flags a recorded version does not have, and the stand-in accepting exactly them."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from gpuprov.errors import UsageError
from gpuprov.models import lookup
from gpuprov.plan import flag_table, make_plan, parse_serve_help, recorded_serve_flags
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


def test_gpuprov_flag_table_agrees_with_the_recorded_0_32_0_parser():
    real = recorded_serve_flags("0.32.0")
    assert real is not None and len(real) > 300
    for flag, info in flag_table()["flags"].items():
        assert flag in real, f"gpuprov knows {flag}; vLLM 0.32.0 does not"
        assert real[flag] == info.get("takes_value", True), f"{flag}: value vs switch differs"
    for flag in flag_table()["removed"]:
        assert flag not in real, f"{flag} is listed as removed, but vLLM 0.32.0 accepts it"
    assert recorded_serve_flags("0.31.9") is None


def test_planner_refuses_a_flag_the_recorded_version_lacks_and_names_the_close_one():
    spec = lookup("openai/gpt-oss-20b")
    with pytest.raises(UsageError, match=r"vLLM 0.32.0's `vllm serve` has no --max-model-length — did you mean "
                                         r"--max-model-len\?"):
        make_plan(H100, host(vllm_version="0.32.0", extra_serve_args=["--max-model-length", "4096"]), spec)
    p = make_plan(H100, host(vllm_version="0.32.0", extra_serve_args=["--kv-cache-memory-bytes", "1G"]), spec)
    assert p.ok and not any("flag table" in w for w in p.warnings)  # known to the recorded parser: no warning
    p = make_plan(H100, host(extra_serve_args=["--max-model-length", "4096"]), spec)  # 0.33.0: nothing recorded
    assert p.vllm_version != "0.32.0" and any("--max-model-length" in w for w in p.warnings)


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
