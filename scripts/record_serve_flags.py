#!/usr/bin/env python3
"""Record one vLLM release's `vllm serve` flags from its own parser (a maintainer tool).

    python scripts/record_serve_flags.py 0.33.0 --torch torch==2.13.0            # writes data/serve_flags/0.33.0.yml
    python scripts/record_serve_flags.py 0.32.0 --torch torch==2.13.0 --check    # the recorded table still matches?

How: the release wheel (the CUDA build everyone installs) goes into a throwaway venv with ``--no-deps``, beside its
pure-Python requirements; the GPU-only ones (CUDA kernels, torch's CUDA build and its companions) are left out and
any torch that imports stands in, since the parser needs none of them. Then vLLM's platform is forced to the CPU
(``vllm.platforms._current_platform = CpuPlatform()``) and the CLI's own ``main`` prints ``vllm serve --help=all``,
which gpuprov's ``parse_serve_help`` turns into {flag: takes a value}. The method was proved by regenerating
0.32.0's table (first recorded from the CPU build's live parser in the lab) exactly: run it with ``--check``.

Exit codes: 0 written or unchanged, 1 ``--check`` found a difference, 2 the recording itself failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from gpuprov.serve_flags import parse_serve_help  # noqa: E402

OUT_DIR = ROOT / "src" / "gpuprov" / "data" / "serve_flags"
#: requirements the parser never imports and that only exist (or only make sense) with a CUDA GPU
GPU_ONLY = re.compile(r"^(torch|torchaudio|torchvision|torchcodec|pynvvideocodec|flashinfer.*|tilelang|nvidia-.*|nvtx|"
                      r"fastsafetensors|instanttensor|quack-kernels|tokenspeed-.*|humming-kernels|cupy.*|triton)$",
                      re.IGNORECASE)
HELP_PROGRAM = """
import sys
import vllm.platforms as platforms
from vllm.platforms.cpu import CpuPlatform
platforms._current_platform = CpuPlatform()
sys.argv = ["vllm", "serve", "--help=all"]
from vllm.entrypoints.cli.main import main
main()
"""


def run(*argv: str, timeout: int = 1800, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def requirements(wheel: Path, python: Path) -> list[str]:
    """The wheel's unconditional Requires-Dist whose markers hold for ``python``, minus the GPU-only ones."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Requires-Dist:")]
    probe = ("import json, sys\nfrom pip._vendor.packaging.requirements import Requirement\nout = []\n"
             "for r in json.load(sys.stdin):\n    q = Requirement(r)\n"
             "    if q.marker is None or q.marker.evaluate({'extra': ''}):\n        out.append([q.name, r])\n"
             "print(json.dumps(out))")
    import json

    p = run(str(python), "-c", probe, input=json.dumps(reqs))
    if p.returncode:
        raise SystemExit(f"error: could not read the wheel's requirements: {p.stderr.strip()[-300:]}")
    return [r.split(";")[0].strip() for name, r in json.loads(p.stdout) if not GPU_ONLY.match(name)]


def prepare_venv(venv: Path, wheel: Path, torch: str) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        p = run(sys.executable, "-m", "venv", str(venv))
        if p.returncode:
            raise SystemExit(f"error: venv: {p.stderr.strip()[-300:]}")
    pip = [str(python), "-m", "pip", "install", "-q"]
    for step in ([torch], ["--no-deps", "--force-reinstall", str(wheel)], requirements(wheel, python)):
        p = run(*pip, *step)
        if p.returncode:
            raise SystemExit(f"error: pip install {' '.join(step)[:200]}: {p.stderr.strip()[-600:]}")
    return python


def serve_help(python: Path) -> str:
    env = {**os.environ, "COLUMNS": "200", "VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1"}
    p = run(str(python), "-c", HELP_PROGRAM, env=env, timeout=600)
    if p.returncode or "--max-model-len" not in p.stdout:
        raise SystemExit(f"error: `vllm serve --help=all` failed (exit {p.returncode}): {p.stderr.strip()[-800:]}")
    return p.stdout


def render(version: str, flags: dict[str, bool], wheel: Path) -> str:
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    head = (f"# `vllm serve` flags of vLLM {version}, parsed from the real parser's `vllm serve --help=all`\n"
            f"# (release wheel {wheel.name}, sha256 {sha[:16]}…, platform forced to CPU;\n"
            f"# recorded {dt.date.today()} by scripts/record_serve_flags.py).\n"
            "# value: true = takes a value, false = a switch.\n")
    body = "".join(f"  {f}: {'true' if v else 'false'}\n" for f, v in sorted(flags.items()))
    return f"{head}version: {version}\nflags:\n{body}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("version")
    ap.add_argument("--wheel", type=Path, help="the release wheel (default: pip download --no-deps vllm==VERSION)")
    ap.add_argument("--venv", type=Path, help="venv to use and keep (default: a throwaway one)")
    ap.add_argument("--torch", default="torch", help="torch requirement to stand in (default: torch)")
    ap.add_argument("--check", action="store_true", help="compare with the recorded table; write nothing")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuprov-flags-") as tmp:
        wheel = a.wheel
        if wheel is None:
            p = run(sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"vllm=={a.version}", "-d", tmp)
            wheels = sorted(Path(tmp).glob("vllm-*.whl"))
            if p.returncode or not wheels:
                print(f"error: could not download vllm=={a.version}: {p.stderr.strip()[-300:]}", file=sys.stderr)
                return 2
            wheel = wheels[0]
        python = prepare_venv(a.venv or Path(tmp) / "venv", wheel, a.torch)
        flags = parse_serve_help(serve_help(python))
        text = render(a.version, flags, wheel)
    out = OUT_DIR / f"{a.version}.yml"
    if a.check:
        import yaml

        recorded = yaml.safe_load(out.read_text())["flags"] if out.exists() else {}
        added, gone = sorted(set(flags) - set(recorded)), sorted(set(recorded) - set(flags))
        changed = sorted(f for f in set(flags) & set(recorded) if flags[f] != recorded[f])
        if not (added or gone or changed):
            print(f"vLLM {a.version}: the recorded table equals the real parser ({len(flags)} flags)")
            return 0
        print(f"vLLM {a.version}: the recorded table differs from the real parser: "
              f"new {added}, gone {gone}, takes-a-value changed {changed}")
        return 1
    out.write_text(text)
    print(f"wrote {out.relative_to(ROOT)} ({len(flags)} flags)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
