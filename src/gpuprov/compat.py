"""Which vLLM build can this driver run? Pure functions over ``data/compat.yml`` (dated, with sources).

Rules (see the data file for sources): a driver >= 580 runs the default CUDA 13.0 wheel of any listed
release; 525 <= driver < 580 needs the ``+cu129`` variant (0.32.0 is the last release with one), or — on
data center GPUs only — the CUDA 13 wheel with NVIDIA forward compatibility (``cuda-compat-13-0``);
older drivers, compute capability < 7.5, no GPU, or an unsupported CPU arch are refused with a way out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from .facts import Facts


def vtuple(v: str | float | None) -> tuple[int, ...]:
    if v is None:
        return ()
    return tuple(int(x) for x in re.findall(r"\d+", str(v))[:4])


@cache
def data_file(name: str) -> Mapping[str, Any]:
    """A YAML data file shipped in ``gpuprov/data`` (compat matrix, flag table, model catalog), read once."""
    text = resources.files("gpuprov").joinpath(f"data/{name}").read_text()
    # libyaml's parser where PyYAML has it: the flag tables are 400 lines each, ~10× faster to read in C
    data: Mapping[str, Any] = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    return data


def matrix() -> Mapping[str, Any]:
    return data_file("compat.yml")


@dataclass(frozen=True)
class Build:
    vllm_version: str
    cuda_variant: str
    cuda: str
    torch_version: str
    torch_backend: str
    extra_index_url: str | None
    cuda_compat: bool
    python: str
    python_managed: bool  # True: uv fetches this Python (the host has none in range)
    download_kernels: bool
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refusal:
    reason: str
    ways_out: tuple[str, ...]


def is_datacenter(name: str) -> bool:
    return bool(re.search(matrix()["datacenter_gpus"], name))


def _pick_python(facts: Facts, lo: str, hi: str) -> tuple[str, bool]:
    lo_t, hi_t = vtuple(lo), vtuple(hi)
    ok = [p for p in facts.pythons if lo_t <= vtuple(p) <= hi_t]
    if ok:
        return max(ok, key=vtuple), False
    return "3.12", True


def _host_refusal(facts: Facts, m: Mapping[str, Any]) -> Refusal | None:
    """No GPU, an architecture or a C library the wheels do not support."""
    if not facts.gpus:
        return Refusal(
            f"no usable NVIDIA GPU: {facts.gpu_error or 'none found'}",
            ("use a host with an NVIDIA GPU and a loaded driver (nvidia-smi must work there)",
             "if the driver was just upgraded, reboot the host (NVML/driver mismatch clears on reboot)"))
    if facts.arch and facts.arch not in m["archs"]:
        return Refusal(f"CPU architecture {facts.arch} has no vLLM CUDA wheels",
                       (f"use an {' or '.join(m['archs'])} host",))
    if facts.glibc and vtuple(facts.glibc.split()[-1]) < vtuple(m["manylinux_glibc"]):
        return Refusal(f"{facts.glibc} is older than the {m['manylinux_glibc']} the manylinux_2_28 wheels need",
                       ("use a newer OS image (Debian 12, Ubuntu 22.04 or later)",))
    return None


def _cc_refusal(facts: Facts, m: Mapping[str, Any], model_min_cc: str | None, why: list[str],
                cause: str | None = None) -> Refusal | None:
    """The GPUs' compute capability against the wheels' floor and the model's (MXFP4 kernels need 8.0)."""
    lowest_cc = min((g.compute_capability for g in facts.gpus if g.compute_capability), key=vtuple, default=None)
    if lowest_cc is None:
        return Refusal("the GPUs' compute capability is unknown", ("probe again with a newer nvidia-smi",))
    need_cc = max(m["min_compute_capability"], model_min_cc or "0", key=vtuple)
    if vtuple(lowest_cc) >= vtuple(need_cc):
        why.append(f"compute capability {lowest_cc} >= {need_cc}")
        return None
    gpu = facts.gpus[0].name
    if model_min_cc and vtuple(model_min_cc) > vtuple(m["min_compute_capability"]) and vtuple(lowest_cc) >= vtuple(
            m["min_compute_capability"]):
        return Refusal(f"{gpu} has compute capability {lowest_cc}; this model needs >= {model_min_cc}"
                       + (f": {cause}" if cause else ""),
                       ("use an Ampere or newer GPU (A10, A100, L4, L40S, RTX 30xx/40xx, H100)",
                        "serve a model without this requirement"))
    return Refusal(f"{gpu} has compute capability {lowest_cc}; current vLLM CUDA wheels need >= "
                   f"{m['min_compute_capability']} (CUDA 13 dropped Maxwell, Pascal and Volta)",
                   ("use a Turing or newer GPU (T4, A10, L4, A100, L40S, RTX 20xx and up, H100)",))


def _releases(m: Mapping[str, Any], pin: str | None, model_min_vllm: str | None) -> list[Mapping[str, Any]] | Refusal:
    releases: list[Mapping[str, Any]] = m["vllm"]
    if model_min_vllm:
        releases = [r for r in releases if vtuple(r["version"]) >= vtuple(model_min_vllm)]
    if not pin:
        return releases
    rel = [r for r in releases if r["version"] == str(pin)]
    if rel:
        return rel
    known = ", ".join(r["version"] for r in m["vllm"])
    return Refusal(f"vllm_version {pin} is not in the compatibility table (updated {m['updated']})",
                   (f"pin one of: {known}", "or unset vllm_version to let gpuprov choose"))


def choose_build(facts: Facts, pin: str | None = None, model_min_cc: str | None = None,
                 model_min_vllm: str | None = None, cc_cause: str | None = None,
                 ) -> tuple[Build | None, Refusal | None, list[str]]:
    """facts (+ a user's ``vllm_version`` pin) → the build to install, or a refusal; plus the reasons.
    ``cc_cause`` says why the model needs ``model_min_cc`` (named in the refusal)."""
    m = matrix()
    why: list[str] = []
    refusal = _host_refusal(facts, m) or _cc_refusal(facts, m, model_min_cc, why, cc_cause)
    if refusal:
        return None, refusal, why
    driver = facts.driver_version
    if not driver:
        return None, Refusal("the NVIDIA driver version is unknown", ("check that nvidia-smi works on the host",)), why
    ccs = [g.compute_capability for g in facts.gpus]
    cc_driver = max((m["min_driver_by_cc"].get(c, "0") for c in ccs if c), key=vtuple, default="0")
    if vtuple(driver) < vtuple(cc_driver):
        lowest_cc = min((c for c in ccs if c), key=vtuple)
        return None, Refusal(
            f"{facts.gpus[0].name} (compute capability {lowest_cc}) needs driver >= {cc_driver}; the host has {driver}",
            (f"upgrade the NVIDIA driver to >= {cc_driver} (R580 or newer recommended)",)), why
    releases = _releases(m, pin, model_min_vllm)
    if isinstance(releases, Refusal):
        return None, releases, why
    return _by_driver(facts, m, releases, pin, why)


def _by_driver(facts: Facts, m: Mapping[str, Any], releases: list[Mapping[str, Any]], pin: str | None,
               why: list[str]) -> tuple[Build | None, Refusal | None, list[str]]:
    """The CUDA family the driver runs picks the release and variant: cu130 on R580+, +cu129 on 525–579 (or CUDA 13
    with forward compatibility on a data center GPU when only a CUDA-13 build fits)."""
    driver = str(facts.driver_version)
    dv = vtuple(driver)
    ccs = [g.compute_capability for g in facts.gpus]
    datacenter = all(is_datacenter(g.name) for g in facts.gpus)

    def build(rel: Mapping[str, Any], variant: str, compat: bool) -> Build:
        v = rel["variants"][variant]
        py, managed = _pick_python(facts, *(str(v) for v in rel["python"]))
        env = dict(m["forward_compat"]["env"]) if compat else {}
        return Build(rel["version"], variant, v["cuda"], rel["torch"], v["torch_backend"], v.get("extra_index"),
                     compat, py, managed, bool(rel.get("download_kernels")), env)

    if dv >= vtuple(m["cuda_families"]["13"]["min_driver"]):
        rel = releases[0]
        why.append(f"driver {driver} >= {m['cuda_families']['13']['min_driver']} runs CUDA 13: "
                   f"vLLM {rel['version']} default cu130 wheel")
        return build(rel, "cu130", False), None, why
    if dv >= vtuple(m["cuda_families"]["12"]["min_driver"]):
        cu129 = [r for r in releases if "cu129" in r["variants"]
                 and not (set(r["variants"]["cu129"].get("skips_cc", [])) & set(ccs))]
        fc = m["forward_compat"]
        compat_ok = datacenter and dv[0] in fc["host_branches"]
        if pin and not cu129:
            if compat_ok:
                why.append(f"vLLM {pin} has no cu129 wheel; data center GPU on R{dv[0]}: CUDA 13 wheel with "
                           f"forward compatibility ({fc['apt_package']})")
                return build(releases[0], "cu130", True), None, why
            consumer = "" if datacenter else (f", and forward compatibility does not work on {facts.gpus[0].name} "
                                              "(consumer GPU)")
            return None, Refusal(
                f"vLLM {pin} is built for CUDA 13 only, which needs driver >= "
                f"{m['cuda_families']['13']['min_driver']}; the host has {driver}{consumer}",
                ("upgrade the driver to R580 or newer",
                 "or unpin vllm_version (0.32.0 is the newest release with a CUDA 12.9 build)")), why
        if cu129:
            rel = cu129[0]
            why.append(f"driver {driver} supports CUDA {facts.cuda_driver_version or '12.x'} (< 13): the +cu129 "
                       f"build of vLLM {rel['version']} from its wheel index, torch {rel['torch']} cu129")
            return build(rel, "cu129", False), None, why
        if compat_ok:
            why.append(f"no cu129 build fits; data center GPU on R{dv[0]}: CUDA 13 + forward compatibility")
            return build(releases[0], "cu130", True), None, why
        return None, Refusal(
            f"no vLLM build for driver {driver} and {facts.gpus[0].name}",
            ("upgrade the NVIDIA driver to R580 or newer",)), why
    return None, Refusal(
        f"driver {driver} supports CUDA {facts.cuda_driver_version or '< 12'} only; current vLLM needs driver >= "
        f"{m['cuda_families']['12']['min_driver']} (CUDA 12.x builds, up to vLLM 0.32.0) or >= "
        f"{m['cuda_families']['13']['min_driver']} (CUDA 13)",
        ("upgrade the NVIDIA driver to R580 or newer (R580 is the long-term branch until 2028)",
         "or pick a host whose CUDA version is >= 13.0 (RunPod: filter by CUDA version)")), why
