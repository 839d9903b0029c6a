"""The lab's NVML stand-in: a small ``libnvidia-ml.so.1`` (``files/standin_nvml.c``, compiled here at test time with
the system C compiler) behind the REAL nvidia-ml-py on each sim host, answering from the host's GPU persona.

``host_files(persona_xml, mode)`` gives what a host gets: the data file the library reads (written from the same
recording the stand-in ``nvidia-smi`` reads), the library itself, and ``pynvml.py`` from nvidia-ml-py. Each host
finds the library through its own mount namespace (an overlay of the multiarch library folder, or the nspawn
rootfs's own copy), never through this machine's loader configuration.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sysconfig
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

from ..errors import LabError
from ..facts import cc_from_name, parse_smi_xml
from .cache import LAB_CACHE

#: --gpu-mode values: how the stand-in driver fails (nvidia-smi and NVML fail alike, as real drivers do)
MODES = {
    "": "a working driver: NVML and nvidia-smi both answer",
    "no-nvml": "only nvidia-smi answers (no libnvidia-ml.so.1 on the loader's path)",
    "no-driver": "no driver at all: nvidia-smi cannot talk to it and there is no NVML library",
    "driver-not-loaded": "the library is there, the kernel module is not (NVML_ERROR_DRIVER_NOT_LOADED)",
    "mismatch": "Driver/library version mismatch: the driver was upgraded without a reboot",
    "no-permission": "the user may not open the GPU device (NVML_ERROR_NO_PERMISSION)",
}
#: modes in which the library is present (it then answers, or fails the way the mode says)
WITH_LIBRARY = ("", "driver-not-loaded", "mismatch", "no-permission")
MULTIARCH_LIB = Path("/usr/lib") / (sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise LabError(f"--gpu-mode {mode!r}: expected one of {', '.join(m or '(empty)' for m in MODES)}")


def library() -> Path:
    """The compiled stand-in library (built once per source version, under a lock)."""
    src = resources.files(__package__).joinpath("files/standin_nvml.c").read_bytes()
    out = LAB_CACHE / f"standin-nvml-{hashlib.sha256(src).hexdigest()[:12]}" / "libnvidia-ml.so.1"
    if out.is_file():
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise LabError("the lab's NVML stand-in needs a C compiler (apt-get install gcc), or use --gpu-mode no-nvml")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        if not out.is_file():
            (out.parent / "standin_nvml.c").write_bytes(src)
            tmp = out.with_suffix(".tmp")
            p = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp),
                                str(out.parent / "standin_nvml.c")], capture_output=True, text=True, timeout=120)
            if p.returncode != 0:
                raise LabError(f"compiling the NVML stand-in failed: {p.stderr.strip()[-500:]}")
            tmp.replace(out)
    return out


def data_file(xml: str, mode: str) -> str:
    """nvml.txt for the stand-in library, from a recorded ``nvidia-smi -q -x``."""
    rep = parse_smi_xml(xml)
    root = ET.fromstring(xml)
    cuda = rep.cuda_driver_version or "0.0"
    major, _, minor = cuda.partition(".")
    lines = [f"mode {mode if mode in WITH_LIBRARY else ''}".rstrip(), f"driver {rep.driver_version or ''}".rstrip(),
             f"cuda {int(major) * 1000 + int(minor or 0) * 10}", f"count {len(rep.gpus)}"]
    elements = root.findall("gpu")
    for i, g in enumerate(rep.gpus):
        el = elements[i] if i < len(elements) else None
        cc = g.compute_capability or cc_from_name(g.name) or ""
        ccmaj, _, ccmin = cc.partition(".")
        total = (g.memory_total_mib or 0) * 1048576
        free = (g.memory_free_mib if g.memory_free_mib is not None else g.memory_total_mib or 0) * 1048576
        lines += [f"gpu.{i}.name {g.name}", f"gpu.{i}.uuid {g.uuid or ''}".rstrip(),
                  f"gpu.{i}.pci {g.pci_bus_id or ''}".rstrip(), f"gpu.{i}.mem_total {total}",
                  f"gpu.{i}.mem_free {free}", f"gpu.{i}.mem_used {max(0, total - free)}",
                  f"gpu.{i}.cc_major {ccmaj or 0}", f"gpu.{i}.cc_minor {ccmin or 0}",
                  f"gpu.{i}.mig {1 if g.mig_mode == 'Enabled' else 0}",
                  f"gpu.{i}.util_gpu {_util(el, 'gpu_util')}", f"gpu.{i}.util_mem {_util(el, 'memory_util')}"]
    return "\n".join(lines) + "\n"


def _util(el: ET.Element | None, tag: str) -> int:
    return _pct(el.findtext(f"utilization/{tag}")) if el is not None else 0


def _pct(text: str | None) -> int:
    digits = "".join(c for c in (text or "") if c.isdigit())
    return int(digits) if digits else 0


def pynvml_file() -> Path:
    """nvidia-ml-py's pynvml.py, as installed beside gpuprov (it is pure Python: one file)."""
    try:
        import pynvml
    except ImportError:
        raise LabError("the lab's NVML path needs nvidia-ml-py (pip install -e '.[test]'), or --gpu-mode no-nvml") \
            from None
    return Path(str(pynvml.__file__))


def dist_packages(usrlocal: Path) -> Path:
    """The host's /usr/local site folder for its system python3 (Debian: /usr/local/lib/python3.X/dist-packages)."""
    ver = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=30).stdout.strip() or "3.11"
    return usrlocal / "lib" / f"python{ver}" / "dist-packages"


def install(xml_path: Path, mode: str, share: Path, usrlocal: Path, libdir: Path) -> None:
    """Give a host the NVML path: data file, pynvml, and (unless the mode says no library) the library."""
    (share / "nvml.txt").write_text(data_file(xml_path.read_text(encoding="utf-8", errors="replace"), mode))
    site = dist_packages(usrlocal)
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(pynvml_file(), site / "pynvml.py")
    if mode in WITH_LIBRARY:
        libdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(library(), libdir / "libnvidia-ml.so.1")
