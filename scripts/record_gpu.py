#!/usr/bin/env python3
"""Record the GPU of the machine this runs on as test data: run it whenever a GPU machine is lent.

    ./bootstrap python scripts/record_gpu.py --name h200_driver-570.133.20 [--source "who lent it, when"]

It saves, under the repository (or --out DIR):
  src/gpuprov/sim/personas/NAME.xml                 nvidia-smi -q -x (a new lab persona)
  tests/data/nvidia-smi/csv/NAME_query-gpu-all.csv  nvidia-smi --query-gpu=<the fields below> --format=csv
  tests/data/nvidia-smi/table/NAME.txt              plain nvidia-smi
  tests/data/nvml/NAME.json                         what the real pynvml reports here (the probe's NVML section)
  tests/data/recorded-plans/NAME.json               the plans gpuprov makes here for the catalog's common models
and appends a row for each file to the SOURCES.md beside it. It prints the entry for
tests/fixtures/nvidia-smi-expected.yml as the parser reads the files: check it against the files yourself before
committing (the expectations are written from the recordings, not from the parser).

The probe runs through gpuprov's own path (``--host local``), so NVML is read by the same code as on any host.
Nothing is changed on the machine: every command here only reads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from gpuprov.connection import LocalRunner  # noqa: E402
from gpuprov.facts import parse_nvml, parse_smi_csv, parse_smi_table, parse_smi_xml  # noqa: E402
from gpuprov.inventory import Host  # noqa: E402
from gpuprov.probe import probe_command  # noqa: E402

QUERY = ("index,name,uuid,pci.bus_id,driver_version,memory.total,memory.used,memory.free,compute_cap,"
         "mig.mode.current,utilization.gpu,temperature.gpu,power.draw,clocks.sm")
MODELS = ("openai/gpt-oss-20b", "openai/gpt-oss-120b", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-8B")


def smi(*args: str) -> str:
    p = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        sys.exit(f"record_gpu: nvidia-smi {' '.join(args)} failed ({p.returncode}): {(p.stdout + p.stderr).strip()}")
    return p.stdout


def query_csv() -> str:
    """--query-gpu with every field of QUERY this driver knows (older drivers reject some, e.g. compute_cap)."""
    fields = QUERY.split(",")
    while fields:
        p = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv"], capture_output=True,
                           text=True, timeout=120)
        m = re.search(r'Field "([^"]+)" is not a valid field', p.stdout + p.stderr)
        if p.returncode == 0 or not m or m.group(1) not in fields:
            break
        fields.remove(m.group(1))
    return smi(f"--query-gpu={','.join(fields)}", "--format=csv")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="file stem, e.g. h200_driver-570.133.20 (lowercase, no spaces)")
    ap.add_argument("--source", default="a GPU machine lent to a gpuprov session", help="where the recording came from")
    ap.add_argument("--out", type=Path, default=REPO, help="repository root to write into (default: this one)")
    a = ap.parse_args()
    if not shutil.which("nvidia-smi"):
        sys.exit("record_gpu: no nvidia-smi here: run this on the GPU machine")
    if any(c in a.name for c in " /\\") or a.name != a.name.lower():
        sys.exit(f"record_gpu: --name {a.name!r}: use lowercase letters, digits, dots, dashes and underscores")
    day = datetime.date.today().isoformat()
    files = {
        a.out / "src/gpuprov/sim/personas" / f"{a.name}.xml": smi("-q", "-x"),
        a.out / "tests/data/nvidia-smi/csv" / f"{a.name}_query-gpu-all.csv": query_csv(),
        a.out / "tests/data/nvidia-smi/table" / f"{a.name}.txt": smi(),
    }
    argv, stdin = probe_command(python=sys.executable)  # this interpreter has nvidia-ml-py (the test extras)
    res = LocalRunner(Host(name="local", address="local")).run(argv, stdin=stdin, timeout=120)
    raw = json.loads(res.stdout)
    files[a.out / "tests/data/nvml" / f"{a.name}.json"] = json.dumps(raw.get("nvml"), indent=1) + "\n"
    files[a.out / "tests/data/recorded-plans" / f"{a.name}.json"] = json.dumps(plans(raw), indent=1) + "\n"
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        sources = path.parent / "SOURCES.md"
        row = f"| {path.name} | recorded with scripts/record_gpu.py on {day}: {a.source} | this project |\n"
        with open(sources, "a") as f:
            f.write(row)
        print(f"wrote {path.relative_to(a.out)}")
    print("\nexpected values as the parsers read them (check each against the files, then add to "
          "tests/fixtures/nvidia-smi-expected.yml):")
    xml = parse_smi_xml(files[a.out / "src/gpuprov/sim/personas" / f"{a.name}.xml"])
    for label, rep in (("xml", xml), ("csv", parse_smi_csv(files[a.out / "tests/data/nvidia-smi/csv" /
                                                                  f"{a.name}_query-gpu-all.csv"])),
                       ("table", parse_smi_table(files[a.out / "tests/data/nvidia-smi/table" / f"{a.name}.txt"])),
                       ("nvml", parse_nvml(raw.get("nvml") or {}))):
        g = rep.gpus[0] if rep.gpus else None
        print(f"  {label}: count {len(rep.gpus)}, driver {rep.driver_version}, cuda {rep.cuda_driver_version}, "
              f"name {g.name if g else None}, mib {g.memory_total_mib if g else None}, "
              f"cc {g.compute_capability if g else None}" + (f", error {rep.error}" if rep.error else ""))
    return 0


def plans(raw: dict) -> dict:
    """The plan for each of a few catalog models on this machine's facts (offline: no hub, no install)."""
    from gpuprov import settings
    from gpuprov.facts import facts_from_probe
    from gpuprov.provision import plan_for

    facts = facts_from_probe("local", raw)
    out = {}
    for model in MODELS:
        h = Host(name="local", address="local", vars=settings.frozen(settings.defaults({})))
        out[model] = plan_for(h.with_vars({"model": model}, "record_gpu"), facts).to_json()
    return out


if __name__ == "__main__":
    sys.exit(main())
