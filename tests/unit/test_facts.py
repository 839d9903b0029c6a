"""Every recorded nvidia-smi output parses into the same facts model (expected values: fixtures file)."""

from __future__ import annotations

import json

import pytest
import yaml

from gpuprov.errors import ProbeError
from gpuprov.facts import (
    Facts,
    cc_from_name,
    cuda_version_from_int,
    facts_from_probe,
    parse_compute_caps,
    parse_nvml,
    parse_smi_csv,
    parse_smi_table,
    parse_smi_xml,
)
from gpuprov.probe import parse_probe_output

from ..conftest import FIXTURES, SMI_DATA

EXPECTED = yaml.safe_load((FIXTURES / "nvidia-smi-expected.yml").read_text())
PARSERS = {"xml": parse_smi_xml, "csv": parse_smi_csv, "table": parse_smi_table}


def recorded_files():
    if not SMI_DATA.is_dir():
        return []
    return sorted(str(p.relative_to(SMI_DATA)) for p in SMI_DATA.glob("*/*")
                  if p.parent.name in PARSERS and p.suffix in (".xml", ".csv", ".txt"))


def test_every_recorded_file_has_an_expectation():
    files = recorded_files()
    assert files, f"no recorded nvidia-smi files under {SMI_DATA}"
    assert sorted(EXPECTED) == files


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_recorded_file_parses(rel):
    exp = EXPECTED[rel]
    path = SMI_DATA / rel
    report = PARSERS[path.parent.name](path.read_text(encoding="utf-8"))
    assert report.error is None
    assert len(report.gpus) == exp["count"]
    assert report.driver_version == exp["driver"]
    assert report.cuda_driver_version == exp["cuda"]
    g = report.gpus[0]
    assert g.name == exp["name"]
    assert g.memory_total_mib == exp["mib"]
    assert g.compute_capability == exp["cc"]
    assert g.mig_mode == exp["mig"]
    assert len(g.mig_devices) == exp["migs"]
    assert [x.index for x in report.gpus] == list(range(exp["count"]))


def test_same_gpu_in_two_formats_gives_the_same_facts():
    csv_ = parse_smi_csv((SMI_DATA / "csv/h100-80gb-hbm3-mig_driver-590.48.01_query-gpu-all.csv").read_text())
    tab = parse_smi_table((SMI_DATA / "table/h100-80gb-hbm3-mig_driver-590.48.01.txt").read_text())
    for field in ("name", "memory_total_mib", "compute_capability", "mig_mode", "pci_bus_id"):
        assert getattr(csv_.gpus[0], field) == getattr(tab.gpus[0], field), field
    assert csv_.driver_version == tab.driver_version


def test_mig_slices_carry_their_own_memory():
    rep = parse_smi_xml((SMI_DATA / "xml/a100-sxm4-80gb-mig_driver-535.54.03.xml").read_text())
    assert [m.memory_total_mib for m in rep.gpus[0].mig_devices] == [19968] * 4
    tab = parse_smi_table((SMI_DATA / "table/h100-80gb-hbm3-mig_driver-590.48.01.txt").read_text())
    assert [m.memory_total_mib for m in tab.gpus[0].mig_devices] == [40448, 20096, 9984, 9984]


def test_compute_cap_query_overrides_the_name_table():
    xml = (SMI_DATA / "xml/tesla-t4_driver-515.105.01.xml").read_text()
    assert parse_smi_xml(xml, {0: "7.5"}).gpus[0].compute_capability == "7.5"
    assert parse_smi_xml(xml, parse_compute_caps("0, 9.9\n")).gpus[0].compute_capability == "9.9"
    # an old driver rejects the field: the answer is not a capability, so the name table decides
    assert parse_compute_caps('Field "compute_cap" is not a valid field to query.\n') == {}


@pytest.mark.parametrize(
    "name,cc",
    [("NVIDIA H100 80GB HBM3", "9.0"), ("NVIDIA A100-SXM4-40GB", "8.0"), ("NVIDIA L40S", "8.9"), ("Tesla T4", "7.5"),
     ("NVIDIA GeForce RTX 4090", "8.9"), ("NVIDIA GeForce RTX 3090", "8.6"), ("Tesla V100-PCIE-32GB", "7.0"),
     ("NVIDIA B200", "10.0"), ("NVIDIA GeForce RTX 5090", "12.0"), ("NVIDIA A10G", "8.6"), ("Mystery GPU", None)],
)
def test_name_to_compute_capability(name, cc):
    assert cc_from_name(name) == cc


def test_bad_xml_is_a_fact_not_a_crash():
    rep = parse_smi_xml("<nvidia_smi_log><gpu>")
    assert rep.error and "XML" in rep.error and rep.gpus == ()


def test_cuda_int():
    assert cuda_version_from_int(12040) == "12.4"
    assert cuda_version_from_int(13010) == "13.1"
    assert cuda_version_from_int(None) is None


def test_nvml_values_parse():
    rep = parse_nvml({
        "available": True, "driver_version": "570.133.20", "cuda_driver_version": 12080,
        "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1", "pci_bus_id": "00000000:01:00.0",
                  "memory": [85520809984, 84000000000], "compute_capability": [9, 0], "mig_mode": [0, 0]}],
    })
    assert rep.source == "nvml" and rep.cuda_driver_version == "12.8"
    g = rep.gpus[0]
    assert (g.memory_total_mib, g.compute_capability, g.mig_mode) == (81559, "9.0", "Disabled")


@pytest.mark.parametrize(
    "smi_out,needle",
    [
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", "not loaded"),
        ("Failed to initialize NVML: Driver/library version mismatch", "mismatch"),
        ("No devices were found", "sees no GPU"),
        ("something else entirely", "nvidia-smi failed (exit 9)"),
    ],
)
def test_driver_failures_are_facts(smi_out, needle):
    raw = {"nvml": {"available": False}, "nvidia_smi": {"present": True, "xml": {"rc": 9, "out": smi_out, "err": ""}}}
    f = facts_from_probe("h", raw)
    assert f.gpus == () and needle in f.gpu_error
    assert f.source == "nvidia-smi"


def test_no_driver_and_nvml_error():
    f = facts_from_probe("h", {"nvml": {"available": False, "error": "no module"}, "nvidia_smi": {"present": False}})
    assert f.gpu_error.startswith("no NVIDIA driver") and f.driver_version is None
    f = facts_from_probe("h", {"nvml": {"available": True, "error": "NVML Shared Library Not Found"}})
    assert "NVML" in f.gpu_error


def test_probe_output_without_json_is_a_probe_error():
    with pytest.raises(ProbeError, match="no JSON"):
        parse_probe_output("h", "Traceback ...", "SyntaxError: boom")
    with pytest.raises(ProbeError):
        parse_probe_output("h", "[1, 2]")


def test_facts_json_roundtrip():
    raw = {"nvidia_smi": {"present": True,
                          "xml": {"rc": 0,
                                  "out": (SMI_DATA / "xml/a100-sxm4-80gb-mig_driver-535.54.03.xml").read_text()}},
           "init": {"pid1": "systemd", "systemd": True}, "python": {"version": "3.11.2"},
           "pythons": [{"name": "python3.11"}, {"name": "python3.12"}, {"name": "python3"}]}
    f = facts_from_probe("h", raw)
    back = Facts.from_json(json.loads(json.dumps(f.to_json())))
    assert back == f
    assert f.pythons == ("3.11", "3.12") and f.systemd


NVML_OK = {"available": True, "driver_version": "570.124.04", "cuda_driver_version": 12080,
           "gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 3060", "uuid": "GPU-d6889ff6-2523-9142-ca3c-1ca3f396a625",
                     "memory": [12884901888, 1],
                     "compute_capability": [8, 6], "mig_mode": [0, 0]}]}


@pytest.mark.parametrize("error,needle", [
    ("NVML Shared Library Not Found", "the NVML library (libnvidia-ml.so.1) is not installed"),
    ("Driver Not Loaded", "the NVIDIA driver is not loaded"),
    ("RM has detected an NVML/RM version mismatch.", "reboot the host or reload the driver"),
    ("Insufficient Permissions", "run as root or as a user in the video group"),
])
def test_nvml_failures_are_facts_in_the_drivers_words(error, needle):
    f = facts_from_probe("h", {"nvml": {"available": True, "error": error}, "nvidia_smi": {"present": False}})
    assert f.gpus == () and needle in f.gpu_error and error in f.gpu_error


def test_nvml_is_used_and_a_disagreement_with_nvidia_smi_is_reported():
    xml = (SMI_DATA / "xml/rtx-3060_driver-570.124.04.xml").read_text()
    agree = facts_from_probe("h", {"nvml": NVML_OK, "nvidia_smi": {"present": True, "xml": {"rc": 0, "out": xml}}})
    assert agree.source == "nvml" and agree.gpu_disagreement is None, agree.gpu_disagreement
    other = dict(NVML_OK, driver_version="575.51.03")
    f = facts_from_probe("h", {"nvml": other, "nvidia_smi": {"present": True, "xml": {"rc": 0, "out": xml}}})
    assert f.source == "nvml" and "driver 575.51.03 (NVML) vs 570.124.04 (nvidia-smi)" in f.gpu_disagreement


def test_compute_capability_is_compared_only_when_nvidia_smi_was_asked_for_it():
    """With NVML's compute capabilities in hand the probe does not ask nvidia-smi for them; the name table's guess
    is then no evidence of a disagreement. When nvidia-smi was asked, a different answer is one."""
    xml = (SMI_DATA / "xml/rtx-3060_driver-570.124.04.xml").read_text()
    odd = dict(NVML_OK, gpus=[dict(NVML_OK["gpus"][0], compute_capability=[8, 9])])
    quiet = facts_from_probe("h", {"nvml": odd, "nvidia_smi": {"present": True, "xml": {"rc": 0, "out": xml}}})
    assert quiet.gpu_disagreement is None and quiet.gpus[0].compute_capability == "8.9"
    asked = facts_from_probe("h", {"nvml": odd, "nvidia_smi": {"present": True, "xml": {"rc": 0, "out": xml},
                                                               "compute_cap": {"rc": 0, "out": "0, 8.6\n"}}})
    assert "GPU 0 compute_capability 8.9 (NVML) vs 8.6 (nvidia-smi)" in asked.gpu_disagreement


def test_a_missing_nvml_library_defers_to_nvidia_smi():
    xml = (SMI_DATA / "xml/rtx-3060_driver-570.124.04.xml").read_text()
    f = facts_from_probe("h", {"nvml": {"available": True, "error": "NVML Shared Library Not Found"},
                               "nvidia_smi": {"present": True, "xml": {"rc": 0, "out": xml}}})
    assert f.source == "nvidia-smi" and f.gpu_error is None and len(f.gpus) == 1
