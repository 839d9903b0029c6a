"""Facts about a host, and the pure parsers that build them from raw probe output.

No I/O here: the probe (``gpuprov.probe``) brings back raw text (NVML values, ``nvidia-smi -q -x``
XML, ``--query-gpu`` CSV, the plain table) and these functions turn any of them into one model.
"""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .runpod import is_secret_name, masked
from .secrets import Secret

# Compute capability by GPU name, for drivers whose nvidia-smi cannot report it (compute_cap arrived in
# the 510 branch). First match wins, so more specific patterns come first. Sources: NVIDIA's CUDA GPUs
# list (developer.nvidia.com/cuda-gpus) and the recorded outputs in tests/data/nvidia-smi.
NAME_TO_CC: tuple[tuple[str, str], ...] = (
    (r"GB300|B300", "10.3"),
    (r"GB200|B200|B100", "10.0"),
    (r"RTX PRO \d+ Blackwell|RTX 50\d\d|RTX 5\d\d\d", "12.0"),
    (r"GH200|H200|H100|H800|H20\b", "9.0"),
    (r"L40S?|\bL4\b|L20|RTX 40\d\d|RTX \d000 Ada|Ada Generation", "8.9"),
    (r"A100|A800|A30\b", "8.0"),
    (r"A10G?\b|A40\b|A16\b|\bA2\b|RTX A\d+|RTX 30\d\d|RTX 3\d\d\d", "8.6"),
    (r"T4\b|RTX 20\d\d|RTX 2\d\d\d|Quadro RTX|TITAN RTX|GTX 16\d\d", "7.5"),
    (r"V100|TITAN V\b", "7.0"),
    (r"P100", "6.0"),
    (r"P40|\bP4\b|GTX 10\d\d|GeForce GTX 108|Quadro P\d+|TITAN X", "6.1"),
    (r"K80", "3.7"),
)


@dataclass(frozen=True)
class MigDevice:
    index: int
    memory_total_mib: int
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    uuid: str | None = None
    pci_bus_id: str | None = None
    memory_total_mib: int | None = None
    memory_free_mib: int | None = None
    compute_capability: str | None = None
    mig_mode: str | None = None
    mig_devices: tuple[MigDevice, ...] = ()

    @property
    def cc_tuple(self) -> tuple[int, int] | None:
        if not self.compute_capability:
            return None
        major, _, minor = self.compute_capability.partition(".")
        return int(major), int(minor or 0)


@dataclass(frozen=True)
class GpuReport:
    """What one GPU source (NVML, nvidia-smi XML/CSV/table) says."""

    source: str
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: tuple[GPU, ...] = ()
    error: str | None = None
    #: where NVML and nvidia-smi both answered and said different things (None when they agree)
    disagreement: str | None = None


@dataclass(frozen=True)
class Facts:
    host: str
    hostname: str | None = None
    os_id: str | None = None
    os_version: str | None = None
    os_pretty: str | None = None
    kernel: str | None = None
    arch: str | None = None
    glibc: str | None = None
    python: str | None = None
    python_path: str | None = None
    python_venv: bool = False
    pythons: tuple[str, ...] = ()
    pid1: str | None = None
    systemd: bool = False
    container: tuple[str, ...] = ()
    is_root: bool = False
    sudo: bool = False
    workspace: bool = False
    install_root: str | None = None
    disk_free_bytes: int | None = None
    sftp: bool | None = None
    tools: Mapping[str, str | None] = field(default_factory=dict)
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    source: str | None = None
    gpu_error: str | None = None
    gpu_disagreement: str | None = None
    gpus: tuple[GPU, ...] = ()
    installed: Mapping[str, Any] = field(default_factory=dict)
    probe_errors: Mapping[str, str] = field(default_factory=dict)
    #: the pod's own environment (RUNPOD_*, HF_HOME, the seed image's knobs), read from PID 1 or
    #: /etc/rp_environment; secret-looking values are ``Secret``
    pod_env: Mapping[str, Any] = field(default_factory=dict)
    #: where ``pod_env`` was read: "PID 1", "/etc/rp_environment", or None
    pod_env_from: str | None = None
    #: the driver and GPUs as NVML names them (remote/probe.py); a provision records it in state.json, and the
    #: next provision's probe skips nvidia-smi while NVML still says the same
    gpu_fingerprint: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["tools"] = dict(self.tools)
        d["installed"] = dict(self.installed)
        d["probe_errors"] = dict(self.probe_errors)
        d["pod_env"] = masked(self.pod_env)
        return d

    @classmethod
    def from_json(cls, d: Any) -> Facts:
        """Read back what ``to_json`` wrote (``invoke probe --json``), for offline planning. The shape is checked
        (README, "Facts files"); a value of the wrong type is a ``ValueError`` naming the field."""
        if not isinstance(d, Mapping):
            raise ValueError(f"expected a JSON object (the facts of one host), got {_json_kind(d)}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k in _SKIP or k not in cls.__dataclass_fields__ or v is None:
                continue
            kw[k] = _check(k, v, _FACT_TYPES.get(k, "any"))
        gpus = d.get("gpus")
        if gpus is not None and not isinstance(gpus, list):
            raise ValueError(f"gpus must be a list of GPU objects, got {_json_kind(gpus)}")
        kw["gpus"] = tuple(_gpu_from_json(i, g) for i, g in enumerate(gpus or []))
        host = d.get("host") or d.get("hostname") or "offline"
        kw["host"] = _check("host", host, "str")
        return cls(**kw)


_SKIP = {"gpus", "host", "pod_env"}
_FACT_TYPES = {
    "hostname": "str", "os_id": "str", "os_version": "str", "os_pretty": "str", "kernel": "str", "arch": "str",
    "glibc": "str", "python": "str", "python_path": "str", "python_venv": "bool", "pythons": "strs",
    "pid1": "str", "systemd": "bool", "container": "strs", "is_root": "bool", "sudo": "bool", "workspace": "bool",
    "install_root": "str", "disk_free_bytes": "count", "sftp": "bool", "tools": "map", "driver_version": "str",
    "cuda_driver_version": "str", "source": "str", "gpu_error": "str", "gpu_disagreement": "str", "installed": "map",
    "probe_errors": "map", "pod_env_from": "str", "gpu_fingerprint": "str",
}
_GPU_TYPES = {"index": "count", "name": "str", "uuid": "str", "pci_bus_id": "str", "memory_total_mib": "count",
              "memory_free_mib": "count", "compute_capability": "cc", "mig_mode": "str"}
_EXPECTED = {"str": "a string", "bool": "true or false", "strs": "a list of strings", "count": "a whole number",
             "map": "an object", "cc": 'a compute capability such as "8.9"'}


def _json_kind(v: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(v), type(v).__name__) + (f" {v!r}" if isinstance(v, (str, int, float)) else "")


_VALID: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "strs": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "count": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "map": lambda v: isinstance(v, Mapping),
    "cc": lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool)
    and re.fullmatch(r"\d+(\.\d+)?", str(v).strip()) is not None,
    "any": lambda v: True,
}


def _check(name: str, v: Any, kind: str) -> Any:
    if not _VALID[kind](v):
        raise ValueError(f"{name} must be {_EXPECTED[kind]}, got {_json_kind(v)}")
    if kind == "strs":
        return tuple(v)
    if kind == "cc":
        return str(v).strip()
    return v


def _gpu_from_json(i: int, g: Any) -> GPU:
    where = f"gpus[{i}]"
    if not isinstance(g, Mapping):
        raise ValueError(f"{where} must be an object, got {_json_kind(g)}")
    for req in ("index", "name"):
        if req not in g:
            raise ValueError(f"{where} has no {req!r} (each GPU needs index and name)")
    kw = {k: _check(f"{where}.{k}", v, _GPU_TYPES[k]) for k, v in g.items() if k in _GPU_TYPES and v is not None}
    migs = g.get("mig_devices") or []
    if not isinstance(migs, list):
        raise ValueError(f"{where}.mig_devices must be a list, got {_json_kind(migs)}")
    mig_devices = []
    for j, m in enumerate(migs):
        if not isinstance(m, Mapping) or "index" not in m or "memory_total_mib" not in m:
            raise ValueError(f"{where}.mig_devices[{j}] must be an object with index and memory_total_mib")
        fields_ = {k: _check(f"{where}.mig_devices[{j}].{k}", v, "count")
                   for k, v in m.items() if k in MigDevice.__dataclass_fields__ and v is not None}
        mig_devices.append(MigDevice(**fields_))
    if "compute_capability" not in kw:
        kw["compute_capability"] = cc_from_name(kw["name"])
    return GPU(**kw, mig_devices=tuple(mig_devices))


def facts_from_text(text: str) -> list[Facts]:
    """The hosts in a facts file: one JSON object per line (``invoke probe --json > f``), or objects written any
    other way (pretty-printed, one after another). Raises ``ValueError`` naming the object and the field."""
    import json

    dec = json.JSONDecoder()
    out: list[Facts] = []
    pos, n = 0, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n\ufeff":
            pos += 1
        if pos >= len(text):
            break
        n += 1
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = dec.raw_decode(text, pos)
        except ValueError as e:
            raise ValueError(f"line {line}: not JSON ({getattr(e, 'msg', e)})") from None
        try:
            out.append(Facts.from_json(obj))
        except ValueError as e:
            raise ValueError(f"line {line}: {e}") from None
    if not out:
        raise ValueError("the file is empty (expected the output of `invoke probe --json`)")
    return out


# --------------------------------------------------------------------------- small helpers


def cc_from_name(name: str) -> str | None:
    for pattern, cc in NAME_TO_CC:
        if re.search(pattern, name, re.IGNORECASE):
            return cc
    return None


def _na(v: str | None) -> str | None:
    """nvidia-smi's many spellings of 'no value' → None."""
    if v is None:
        return None
    v = v.strip()
    if v in ("", "N/A", "[N/A]", "Not Supported", "[Not Supported]", "Unknown Error", "[Unknown Error]"):
        return None
    return v


def _mib(v: str | None) -> int | None:
    v = _na(v)
    if v is None:
        return None
    m = re.match(r"^([\d.]+)\s*(MiB|GiB|KiB|B)?$", v)
    if not m:
        return None
    n = float(m.group(1))
    unit = m.group(2) or "MiB"
    return int(round(n * {"MiB": 1, "GiB": 1024, "KiB": 1 / 1024, "B": 1 / 1048576}[unit]))


def cuda_version_from_int(v: int | None) -> str | None:
    """NVML/cuDriverGetVersion integer (12040) → "12.4"."""
    if not v:
        return None
    return f"{v // 1000}.{(v % 1000) // 10}"


def _mig_mode(v: str | None) -> str | None:
    v = _na(v)
    return v if v is None else v.capitalize()


# --------------------------------------------------------------------------- NVML


def parse_nvml(raw: Mapping[str, Any]) -> GpuReport:
    """The probe's NVML section (values read through the real pynvml on the host)."""
    if raw.get("error"):
        return GpuReport("nvml", error=str(raw["error"]))
    gpus = []
    for g in raw.get("gpus", []):
        mem = g.get("memory") or [None, None]
        cc = g.get("compute_capability")
        mig = g.get("mig_mode")
        gpus.append(
            GPU(
                index=int(g["index"]),
                name=g.get("name") or "unknown",
                uuid=g.get("uuid"),
                pci_bus_id=g.get("pci_bus_id"),
                memory_total_mib=mem[0] // 1048576 if mem[0] is not None else None,
                memory_free_mib=mem[1] // 1048576 if mem[1] is not None else None,
                compute_capability=f"{cc[0]}.{cc[1]}" if cc else cc_from_name(g.get("name", "")),
                mig_mode=None if mig is None else ("Enabled" if mig[0] == 1 else "Disabled"),
            )
        )
    cuda = raw.get("cuda_driver_version")
    return GpuReport(
        "nvml",
        driver_version=raw.get("driver_version"),
        cuda_driver_version=cuda_version_from_int(cuda) if isinstance(cuda, int) else cuda,
        gpus=tuple(gpus),
    )


# --------------------------------------------------------------------------- nvidia-smi -q -x


def parse_smi_xml(text: str, compute_caps: Mapping[int, str] | None = None) -> GpuReport:
    """``nvidia-smi -q -x`` → report. ``compute_caps`` (index → "8.0") comes from ``--query-gpu=compute_cap``."""
    try:
        root = ET.fromstring(text.lstrip("\ufeff").encode("utf-8"))
    except ET.ParseError as e:
        return GpuReport("nvidia-smi", error=f"unreadable nvidia-smi XML: {e}")

    def t(el: ET.Element | None, path: str) -> str | None:
        if el is None:
            return None
        x = el.find(path)
        return _na(x.text) if x is not None else None

    driver = t(root, "driver_version")
    cuda = t(root, "cuda_version")
    gpus = []
    for i, g in enumerate(root.findall("gpu")):
        name = t(g, "product_name") or "unknown"
        index = i
        migs: list[MigDevice] = []
        for m in g.findall("mig_devices/mig_device"):
            migs.append(
                MigDevice(
                    index=int(t(m, "index") or len(migs)),
                    memory_total_mib=_mib(t(m, "fb_memory_usage/total")) or 0,
                    gpu_instance_id=_int(t(m, "gpu_instance_id")),
                    compute_instance_id=_int(t(m, "compute_instance_id")),
                )
            )
        cc = (compute_caps or {}).get(index) or cc_from_name(name)
        gpus.append(
            GPU(
                index=index,
                name=name,
                uuid=t(g, "uuid"),
                pci_bus_id=t(g, "pci/pci_bus_id") or g.get("id"),
                memory_total_mib=_mib(t(g, "fb_memory_usage/total")),
                memory_free_mib=_mib(t(g, "fb_memory_usage/free")),
                compute_capability=cc,
                mig_mode=_mig_mode(t(g, "mig_mode/current_mig")),
                mig_devices=tuple(migs),
            )
        )
    return GpuReport("nvidia-smi", driver_version=driver, cuda_driver_version=cuda, gpus=tuple(gpus))


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def parse_compute_caps(text: str) -> dict[int, str]:
    """``--query-gpu=index,compute_cap --format=csv,noheader`` → {0: "9.0"}; unsupported → {}."""
    out = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and re.match(r"^\d+\.\d+$", parts[1]):
            out[int(parts[0])] = parts[1]
    return out


# --------------------------------------------------------------------------- --query-gpu CSV


def parse_smi_csv(text: str) -> GpuReport:
    """``nvidia-smi --query-gpu=... --format=csv`` (with header; units or nounits) → report."""
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff")), skipinitialspace=True))
    rows = [r for r in rows if r]
    if not rows:
        return GpuReport("nvidia-smi-csv", error="empty CSV")
    header = [re.sub(r"\s*\[.*\]$", "", h.strip()) for h in rows[0]]
    gpus = []
    driver = None
    for i, row in enumerate(rows[1:]):
        d = dict(zip(header, (c.strip() for c in row), strict=False))  # short rows: the rest is unknown
        name = _na(d.get("name")) or "unknown"
        driver = driver or _na(d.get("driver_version"))
        mem_total = _mib(d.get("memory.total"))
        if mem_total is None and _mib(d.get("memory.used")) is not None and _mib(d.get("memory.free")) is not None:
            mem_total = (_mib(d.get("memory.used")) or 0) + (_mib(d.get("memory.free")) or 0) + (
                _mib(d.get("memory.reserved")) or 0
            )
        cc = _na(d.get("compute_cap")) or cc_from_name(name)
        gpus.append(
            GPU(
                index=int(_na(d.get("index")) or i),
                name=name,
                uuid=_na(d.get("uuid")),
                pci_bus_id=_na(d.get("pci.bus_id")),
                memory_total_mib=mem_total,
                memory_free_mib=_mib(d.get("memory.free")),
                compute_capability=cc,
                mig_mode=_mig_mode(d.get("mig.mode.current")),
            )
        )
    return GpuReport("nvidia-smi-csv", driver_version=driver, gpus=tuple(gpus))


# --------------------------------------------------------------------------- plain table

_HEADER = re.compile(
    r"NVIDIA-SMI\s+(?P<smi>[\d.]+)\s+(?:Driver Version|KMD Version):\s*(?P<driver>[\d.]+)"
    r"(?:\s+(?:CUDA Version|CUDA UMD Version):\s*(?P<cuda>[\d.]+|N/A))?"
)
_ROW1 = re.compile(
    r"^\|\s+(?P<idx>\d+)\s+(?P<name>.+?)\s+(?:On|Off|WDDM|TCC)\s*\|\s+(?P<bus>[0-9A-Fa-f]{8}:[0-9A-Fa-f:.]+)\s+(?:On|Off)\s+\|"
)
_ROW2_MEM = re.compile(r"\|\s+(?P<used>\d+)MiB\s*/\s*(?P<total>\d+)MiB\s+\|")
_MIG_ROW = re.compile(r"^\|\s+(?P<gpu>\d+)\s+(?P<gi>\d+)\s+(?P<ci>\d+)\s+(?P<dev>\d+)\s+\|"
                      r"\s+(?P<used>\d+)MiB\s*/\s*(?P<total>\d+)MiB")


def parse_smi_table(text: str) -> GpuReport:
    """The plain ``nvidia-smi`` table (names may be cut short with '...'; the 610 driver relabels the header)."""
    text = text.lstrip("\ufeff")
    m = _HEADER.search(text)
    if not m:
        return GpuReport("nvidia-smi-table", error="no NVIDIA-SMI header found")
    cuda = m.group("cuda")
    lines = text.splitlines()
    gpus: list[dict[str, Any]] = []
    migs: dict[int, list[MigDevice]] = {}
    in_mig = False
    for i, line in enumerate(lines):
        if "MIG devices:" in line:
            in_mig = True
        if "Processes:" in line:
            in_mig = False
        if in_mig:
            mm = _MIG_ROW.match(line)
            if mm:
                migs.setdefault(int(mm["gpu"]), []).append(
                    MigDevice(int(mm["dev"]), int(mm["total"]), int(mm["gi"]), int(mm["ci"]))
                )
            continue
        r1 = _ROW1.match(line)
        if r1 and i + 1 < len(lines):
            mem = _ROW2_MEM.search(lines[i + 1])
            mig_cell = lines[i + 2].strip("| ").split("|")[-1].strip() if i + 2 < len(lines) else ""
            gpus.append(
                {
                    "index": int(r1["idx"]),
                    "name": r1["name"].strip(),
                    "pci_bus_id": r1["bus"],
                    "total": int(mem["total"]) if mem else None,
                    "used": int(mem["used"]) if mem else None,
                    "mig": mig_cell if mig_cell in ("Enabled", "Disabled") else None,
                }
            )
    out = []
    for g in gpus:
        name = g["name"]
        out.append(
            GPU(
                index=g["index"],
                name=name,
                pci_bus_id=g["pci_bus_id"],
                memory_total_mib=g["total"],
                memory_free_mib=(g["total"] - g["used"]) if g["total"] is not None else None,
                compute_capability=cc_from_name(name.rstrip(". ")),
                mig_mode=g["mig"],
                mig_devices=tuple(migs.get(g["index"], ())),
            )
        )
    return GpuReport(
        "nvidia-smi-table",
        driver_version=m.group("driver"),
        cuda_driver_version=None if cuda in (None, "N/A") else cuda,
        gpus=tuple(out),
    )


# --------------------------------------------------------------------------- probe JSON → Facts

MISMATCH = ("NVML/driver version mismatch: the driver was upgraded without a reboot; reboot the host or reload the "
            "driver (rmmod nvidia && modprobe nvidia)")
NO_PERMISSION = "no permission to open the GPU devices (/dev/nvidia*): run as root or as a user in the video group"
# the words nvidia-smi and NVML (through pynvml) print for each failure → what it means and what fixes it
SMI_FAILURES = (
    ("couldn't communicate with the nvidia driver", "the NVIDIA driver is not loaded (nvidia-smi cannot talk to it)"),
    ("driver/library version mismatch", MISMATCH),
    ("insufficient permissions", NO_PERMISSION),
    ("no devices were found", "the driver is loaded but sees no GPU"),
)
NVML_FAILURES = (
    ("shared library not found", "no NVIDIA driver: the NVML library (libnvidia-ml.so.1) is not installed"),
    ("driver not loaded", "the NVIDIA driver is not loaded (NVML: Driver Not Loaded)"),
    ("nvml/rm version mismatch", MISMATCH),
    ("insufficient permissions", NO_PERMISSION),
)


def _smi_error(res: Mapping[str, Any]) -> str:
    text = (res.get("out", "") + "\n" + res.get("err", "")).strip()
    low = text.lower()
    for needle, meaning in SMI_FAILURES:
        if needle in low:
            return f"{meaning}: {text.splitlines()[0][:200] if text else ''}".rstrip(": ")
    first = text.splitlines()[0][:200] if text else "no output"
    return f"nvidia-smi failed (exit {res.get('rc')}): {first}"


def _nvml_error(text: str) -> str:
    low = text.lower()
    for needle, meaning in NVML_FAILURES:
        if needle in low:
            return f"{meaning} ({text.strip()[:200]})"
    return f"NVML: {text.strip()[:200]}"


def disagreement(nvml: GpuReport, smi: GpuReport, compare_cc: bool = True) -> str | None:
    """What NVML and nvidia-smi say differently about the same driver and GPUs (None when they agree);
    ``compare_cc``: nvidia-smi was asked for the compute capabilities (not only the name table's guess)."""
    diffs = []
    if nvml.driver_version != smi.driver_version:
        diffs.append(f"driver {nvml.driver_version} (NVML) vs {smi.driver_version} (nvidia-smi)")
    if len(nvml.gpus) != len(smi.gpus):
        diffs.append(f"{len(nvml.gpus)} GPU(s) (NVML) vs {len(smi.gpus)} (nvidia-smi)")
    for a, b in zip(nvml.gpus, smi.gpus, strict=False):  # a count difference is reported above
        for what in ("name", "uuid", "compute_capability")[:3 if compare_cc else 2]:
            x, y = getattr(a, what), getattr(b, what)
            if x and y and x != y:
                diffs.append(f"GPU {a.index} {what} {x} (NVML) vs {y} (nvidia-smi)")
        if a.memory_total_mib and b.memory_total_mib and abs(a.memory_total_mib - b.memory_total_mib) > 1:
            diffs.append(f"GPU {a.index} memory {a.memory_total_mib} MiB (NVML) vs {b.memory_total_mib} MiB "
                         "(nvidia-smi)")
    return "; ".join(diffs) or None


def _smi_report(smi: Mapping[str, Any]) -> GpuReport | None:
    if not smi.get("present") or smi.get("skipped"):
        return None
    xml = smi.get("xml") or {}
    if xml.get("rc") == 0 and xml.get("out", "").strip():
        caps = parse_compute_caps((smi.get("compute_cap") or {}).get("out", ""))
        rep = parse_smi_xml(xml["out"], caps)
        if rep.error is None and not rep.gpus:
            return GpuReport(rep.source, rep.driver_version, rep.cuda_driver_version, (), "nvidia-smi lists no GPUs")
        return rep
    return GpuReport("nvidia-smi", error=_smi_error(xml))


def gpu_report_from_probe(raw: Mapping[str, Any]) -> GpuReport:
    """Choose the GPU source in the probe's output: NVML when it answers (noting where nvidia-smi disagrees), else
    nvidia-smi's XML, else the failure in the driver's own words and what fixes it."""
    nv = raw.get("nvml") or {}
    smi = _smi_report(raw.get("nvidia_smi") or {})
    nvml_note = None
    if nv.get("available") and not nv.get("error") and nv.get("gpus") is not None:
        rep = parse_nvml(nv)
        if rep.gpus:
            asked_cc = "compute_cap" in (raw.get("nvidia_smi") or {})
            other = disagreement(rep, smi, asked_cc) if smi is not None and smi.error is None else None
            return GpuReport(rep.source, rep.driver_version, rep.cuda_driver_version, rep.gpus, None, other)
        nvml_note = "NVML reports no GPUs"
    elif nv.get("error") and nv.get("available"):
        nvml_note = _nvml_error(str(nv["error"]))
    library_missing = "shared library not found" in str(nv.get("error", "")).lower()
    if smi is not None and (smi.error is None or nvml_note is None or library_missing):
        return smi
    if nvml_note:
        return GpuReport("nvml", error=nvml_note)
    return GpuReport("none", error="no NVIDIA driver: nvidia-smi not found and NVML not available")


def _python_versions(found: list[Mapping[str, str]], current: str | None) -> tuple[str, ...]:
    """Interpreter names on PATH (python3.11, python3.12, ...) → sorted unique versions ("3.11", ...)."""
    out = {p["name"][6:] for p in found if re.match(r"^python3\.\d+$", p.get("name", ""))}
    if current:
        out.add(".".join(current.split(".")[:2]))
    return tuple(sorted(out, key=lambda v: tuple(int(x) for x in v.split("."))))


def facts_from_probe(host: str, raw: Mapping[str, Any], sftp: bool | None = None) -> Facts:
    """The probe script's JSON → Facts."""
    rep = gpu_report_from_probe(raw)
    os_ = raw.get("os") or {}
    py = raw.get("python") or {}
    init = raw.get("init") or {}
    disk = raw.get("disk") or {}
    usr = raw.get("user") or {}
    driver = rep.driver_version
    if driver is None:
        files = raw.get("driver_files") or {}
        if files.get("sys"):
            driver = files["sys"].strip() or None
    installed: dict[str, Any] = {}
    import json

    state = raw.get("state") or {}
    for root, text in state.items():
        if root.endswith(":good"):
            continue
        try:
            installed[root] = json.loads(text)
        except ValueError:
            installed[root] = {"unreadable": True}
        # a verified configuration is kept beside it (*.good) for roll-back
        installed[root]["_good"] = f"{root}:good" in state
    return Facts(
        host=host,
        hostname=raw.get("hostname"),
        os_id=os_.get("id"),
        os_version=os_.get("version_id"),
        os_pretty=os_.get("pretty_name"),
        kernel=raw.get("kernel"),
        arch=raw.get("arch"),
        glibc=raw.get("glibc"),
        python=py.get("version"),
        python_path=py.get("path"),
        python_venv=bool(py.get("venv") and py.get("ensurepip")),
        pythons=_python_versions(raw.get("pythons") or [], py.get("version")),
        pid1=init.get("pid1"),
        systemd=bool(init.get("systemd")),
        container=tuple(raw.get("container") or ()),
        is_root=usr.get("uid") == 0,
        sudo=bool(usr.get("sudo")),
        workspace=bool(disk.get("workspace")),
        install_root=disk.get("install_root"),
        disk_free_bytes=disk.get("free_bytes"),
        sftp=sftp,
        tools=dict(raw.get("tools") or {}),
        driver_version=driver,
        cuda_driver_version=rep.cuda_driver_version,
        source=rep.source,
        gpu_error=rep.error,
        gpu_disagreement=rep.disagreement,
        gpus=rep.gpus,
        installed=installed,
        probe_errors=dict(raw.get("errors") or {}),
        gpu_fingerprint=raw.get("gpu_fingerprint"),
        **_pod_env(raw.get("pod_env") or {}),
    )


def _pod_env(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The probe's ``pod_env`` ({"pid1": {...}, "file": {...}}) → one mapping, PID 1 first (the live values), and
    where it came from; secret-looking values become ``Secret``."""
    pid1, file = raw.get("pid1") or {}, raw.get("file") or {}
    env = {**file, **pid1}
    if not env:
        return {}
    env = {k: Secret(str(v), k) if is_secret_name(k) else str(v) for k, v in sorted(env.items())}
    return {"pod_env": env, "pod_env_from": "PID 1" if pid1 else "/etc/rp_environment"}
