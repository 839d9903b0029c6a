"""The lab's NVML stand-in behind the REAL nvidia-ml-py, without root or a lab host: the library is compiled,
pointed at a persona's data file, and the real pynvml (in a child process that finds it through
LD_LIBRARY_PATH) must report what the recording says; each failure mode answers with the driver's words."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from gpuprov.facts import parse_nvml, parse_smi_xml
from gpuprov.remote import source
from gpuprov.sim import nvml

from ..conftest import SMI_DATA

pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")
XMLS = sorted((SMI_DATA / "xml").glob("*.xml"))


def _probe_nvml(tmp_path, xml_text: str, mode: str = "") -> dict:
    """The probe's own nvml() function, run against the stand-in library fed from ``xml_text``."""
    libdir = tmp_path / "lib"
    libdir.mkdir(exist_ok=True)
    shutil.copy(nvml.library(), libdir / "libnvidia-ml.so.1")
    data = tmp_path / "nvml.txt"
    data.write_text(nvml.data_file(xml_text, mode))
    prog = source("probe").split("\nattempt(", 1)[0] + "\nimport json\nprint(json.dumps(nvml()))\n"
    env = {**os.environ, "LD_LIBRARY_PATH": str(libdir), "GPUPROV_STANDIN_NVML_DATA": str(data)}
    p = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize("xml", XMLS, ids=[x.stem for x in XMLS])
def test_real_pynvml_reports_what_the_recording_says(xml, tmp_path):
    text = xml.read_text(encoding="utf-8", errors="replace")
    smi, got = parse_smi_xml(text), parse_nvml(_probe_nvml(tmp_path, text))
    assert got.error is None
    assert (got.driver_version, got.cuda_driver_version) == (smi.driver_version, smi.cuda_driver_version)
    assert [(g.index, g.name, g.uuid, g.pci_bus_id, g.memory_total_mib, g.mig_mode) for g in got.gpus] == \
           [(g.index, g.name, g.uuid, g.pci_bus_id, g.memory_total_mib, g.mig_mode or "Disabled") for g in smi.gpus]


@pytest.mark.parametrize("mode,words", [("driver-not-loaded", "Driver Not Loaded"),
                                        ("mismatch", "RM has detected an NVML/RM version mismatch."),
                                        ("no-permission", "Insufficient Permissions")])
def test_failure_modes_answer_with_the_drivers_words(mode, words, tmp_path):
    raw = _probe_nvml(tmp_path, XMLS[0].read_text(), mode)
    assert raw["available"] is True and words in raw["error"]


def test_unknown_gpu_mode_is_refused():
    from gpuprov.errors import LabError

    with pytest.raises(LabError, match="expected one of"):
        nvml.check_mode("broken")
