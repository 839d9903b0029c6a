"""STAND-IN for the `vllm` package, used only in gpuprov's simulated lab (there is no GPU there).

Installed on sim hosts as a distribution named ``vllm`` (version = the one the plan pins) from the lab's
package index, so the real install path (uv, venv, exact pins) runs. ``vllm serve`` parses flags the way the
real argparse parser does (unknown flags rejected: ``vllm serve: error: unrecognized arguments``), prints the
real startup log lines in order with a configurable delay, refuses connections until ready (the real server
calls listen() only after start-up), then serves /health, /version, /v1/models and /v1/chat/completions
(streaming and tool calls) and /metrics (the real engine's Prometheus names: requests running, waiting and
served). ``vllm download-kernels`` exists from 0.32.0 on, as in the real package. With ``--nnodes N``, the
multi-node start stood in: a ``--headless`` follower logs the real headless-executor line, joins the head's master
port and logs its ranks; the head logs the real "DP group leader" line, waits for every follower before it loads,
and answers 500 to requests once a follower goes away (its /health stays 200 for a while, like the real head's).

Behaviour knobs, read from the environment (the lab puts them in the engine's env file):
  GPUPROV_STANDIN_DELAY   seconds of simulated start-up (default 2)
  GPUPROV_STANDIN_KV_TOKENS  KV cache capacity in tokens; a larger --max-model-len fails like the real engine
  GPUPROV_STANDIN_FAIL    "oom" → dies with the CUDA out-of-memory error
  GPUPROV_STANDIN_REQUEST_S  seconds each chat completion takes (default 0)
  GPUPROV_STANDIN_JOIN_S  how long a multinode head waits for its followers, and a follower for the head (600)
"""

FLAGS_PLACEHOLDER = "__FLAGS__"
STRICT_PLACEHOLDER = "__STRICT__"
VERSION_PLACEHOLDER = "__VERSION__"


def source() -> str:
    """The stand-in package's program (``files/standin_vllm_package.py``), placeholders unfilled."""
    from importlib import resources

    return resources.files(__package__).joinpath("files/standin_vllm_package.py").read_text()



def render(version: str, flags: dict, strict: bool = True) -> str:
    """The stand-in's ``vllm/__init__.py`` for ``version`` accepting ``flags``."""
    return (source().replace(VERSION_PLACEHOLDER, version).replace(FLAGS_PLACEHOLDER, repr(flags))
            .replace(STRICT_PLACEHOLDER, repr(strict)))


def build_wheel(version: str, flags: dict, out_dir: str, strict: bool = True) -> str:
    """A pure-Python wheel named ``vllm`` for ``version`` (the stand-in), written without any build backend;
    ``strict``: unknown flags are refused (a recorded parser) rather than ignored with a warning."""
    from pathlib import Path

    from .wheels import write_wheel

    src = render(version, flags, strict)
    dist = f"vllm-{version}.dist-info"
    files = {
        "vllm/__init__.py": src,
        "vllm/__main__.py": "import sys\nfrom vllm import main\nsys.exit(main())\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                            "Summary: gpuprov lab STAND-IN for vLLM (no GPU, no model): not the real engine\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: gpuprov-sim\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\nvllm = vllm:main\n",
    }
    path = Path(out_dir) / f"vllm-{version}-py3-none-any.whl"
    return str(write_wheel(path, ((n, t.encode(), None) for n, t in files.items()), dist))
