"""scripts/record_gpu.py, the recorder run whenever a GPU machine is lent, run here against the lab's stand-ins (the
stand-in nvidia-smi and the stand-in NVML library behind the real pynvml): what it writes parses to the persona."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from gpuprov.facts import parse_smi_csv, parse_smi_table
from gpuprov.sim import nvml

from ..conftest import REPO, SMI_DATA

pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")
PERSONA = SMI_DATA / "xml" / "2x-rtx-a5000_driver-590.44.01.xml"


def test_recorder_writes_every_view_of_the_gpu(tmp_path):
    fake = tmp_path / "standin"
    (fake / "bin").mkdir(parents=True)
    share = fake / "share" / "gpuprov-sim"
    share.mkdir(parents=True)
    shutil.copy(REPO / "src/gpuprov/sim/files/nvidia-smi", fake / "bin" / "nvidia-smi")
    (fake / "bin" / "nvidia-smi").chmod(0o755)
    shutil.copy(PERSONA, share / "nvidia-smi.xml")
    (share / "compute_cap").write_text("8.6 8.6\n")
    (fake / "lib").mkdir()
    shutil.copy(nvml.library(), fake / "lib" / "libnvidia-ml.so.1")
    (share / "nvml.txt").write_text(nvml.data_file(PERSONA.read_text(), ""))
    out = tmp_path / "repo"
    env = {**os.environ, "PATH": f"{fake / 'bin'}:{os.environ['PATH']}", "LD_LIBRARY_PATH": str(fake / "lib"),
           "GPUPROV_STANDIN_NVML_DATA": str(share / "nvml.txt"), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "record_gpu.py"), "--name", "a5000x2_test",
                        "--source", "the lab's stand-ins (a test)", "--out", str(out)],
                       capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    xml = out / "src/gpuprov/sim/personas/a5000x2_test.xml"
    assert xml.read_bytes() == PERSONA.read_bytes()
    csv_rep = parse_smi_csv((out / "tests/data/nvidia-smi/csv/a5000x2_test_query-gpu-all.csv").read_text())
    tab_rep = parse_smi_table((out / "tests/data/nvidia-smi/table/a5000x2_test.txt").read_text())
    nv = json.loads((out / "tests/data/nvml/a5000x2_test.json").read_text())
    assert [g.name for g in csv_rep.gpus] == [g.name for g in tab_rep.gpus] == ["NVIDIA RTX A5000"] * 2
    assert nv["driver_version"] == "590.44.01" and len(nv["gpus"]) == 2
    plans = json.loads((out / "tests/data/recorded-plans/a5000x2_test.json").read_text())
    assert plans["openai/gpt-oss-20b"]["ok"] is True
    assert "a5000x2_test.xml | recorded with scripts/record_gpu.py" in (xml.parent / "SOURCES.md").read_text()
    assert "nvml: count 2, driver 590.44.01, cuda 13.1" in p.stdout
