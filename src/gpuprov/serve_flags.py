"""`vllm serve` flags as each vLLM version's own parser knows them: the tables recorded from it
(``data/serve_flags/VERSION.yml``, by scripts/record_serve_flags.py), and the checks of ``extra_serve_args``
against the table of the version being installed. Pure: package data only."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

from .compat import data_file, vtuple
from .errors import UsageError


@functools.cache
def recorded_serve_flags(version: str) -> Mapping[str, bool] | None:
    """Every flag one vLLM version's ``vllm serve`` accepts (flag → takes a value), recorded from that version's
    own parser (data/serve_flags/VERSION.yml, by scripts/record_serve_flags.py); None for other versions."""
    try:
        return MappingProxyType(dict(data_file(f"serve_flags/{version}.yml")["flags"]))
    except FileNotFoundError:
        return None


@functools.cache
def recorded_versions() -> tuple[str, ...]:
    """The vLLM versions whose parser gpuprov recorded, oldest first."""
    folder = resources.files("gpuprov").joinpath("data/serve_flags")
    return tuple(sorted((f.name[:-4] for f in folder.iterdir() if f.name.endswith(".yml")), key=vtuple))


@functools.cache
def known_serve_flags() -> Mapping[str, bool]:
    """Every flag of every recorded version (for versions gpuprov has no table of)."""
    out: dict[str, bool] = {}
    for v in recorded_versions():
        out.update(recorded_serve_flags(v) or {})
    return MappingProxyType(out)


_HELP_OPTION = re.compile(r"^  (-\S.*?)(?:\s{2,}|$)")


def parse_serve_help(text: str) -> dict[str, bool]:
    """``vllm serve --help=all`` → {long flag: takes a value}. argparse prints each option at a two-space indent
    (``  --max-model-len MAX_MODEL_LEN``, ``  --enable-x, --no-enable-x``); descriptions are indented further."""
    flags: dict[str, bool] = {}
    for line in text.splitlines():
        m = _HELP_OPTION.match(line)
        if m:
            for part in m.group(1).split(", "):
                name, *metavar = part.split(None, 1)
                if name.startswith("--"):
                    flags[name] = bool(metavar)
    return flags


#: flags the plan sets from vars: given in extra_serve_args they would silently override what the plan shows
PLAN_OWNED = {"--max-model-len": "max_model_len", "--gpu-memory-utilization": "gpu_memory_utilization",
              "--max-num-seqs": "max_num_seqs", "--max-num-batched-tokens": "max_num_batched_tokens",
              "--tensor-parallel-size": "tensor_parallel_size", "-tp": "tensor_parallel_size",
              "--data-parallel-size": "data_parallel_size", "-dp": "data_parallel_size",
              "--pipeline-parallel-size": "pipeline_parallel_size", "-pp": "pipeline_parallel_size",
              "--kv-cache-dtype": "kv_cache_dtype", "--host": "engine_host", "--port": "engine_port",
              "--served-model-name": "served_model_name", "--enforce-eager": "enforce_eager"}
#: flags that would put a secret in the process list, and where the secret goes instead
SECRET_FLAGS = {"--api-key": "set api_key", "--hf-token": "set HF_TOKEN in your environment"}


def _renamed(flag: str, table: Mapping[str, bool]) -> str | None:
    """The other spelling of a switch's negative form (0.33.0 turned ``--no-enable-x`` into ``--disable-x`` and
    ``--no-disable-x`` into ``--enable-x``; older versions the other way round), when ``table`` has it."""
    forms = []
    for old, new in (("--no-enable-", "--disable-"), ("--no-disable-", "--enable-"), ("--disable-", "--no-enable-"),
                     ("--enable-", "--no-disable-")):
        if flag.startswith(old):
            forms.append(new + flag[len(old):])
    return next((f for f in forms if f in table), None)


def _unknown_flag(flag: str, version: str, table: Mapping[str, bool]) -> str:
    """Why ``flag`` is not one of ``version``'s, with the flag that was probably meant."""
    had = [v for v in recorded_versions() if v != version and flag in (recorded_serve_flags(v) or {})]
    msg = f"vLLM {version}'s `vllm serve` has no {flag}" + (f" (vLLM {', '.join(had)} has it)" if had else "")
    close = _renamed(flag, table) or next(iter(difflib.get_close_matches(flag, list(table), n=1)), None)
    return msg + (f" — did you mean {close}?" if close else "")


def check_extra_args(extra: list[str], version: str) -> list[str]:
    """``extra_serve_args`` against the plan's own flags and the recorded parser of ``version``; warnings."""
    warnings: list[str] = []
    recorded = recorded_serve_flags(version)
    for a in extra:
        flag = a.split("=", 1)[0]
        if flag in PLAN_OWNED:
            var = PLAN_OWNED[flag]
            raise UsageError(f"extra_serve_args: {flag} is set by the plan from the var {var}; set {var} instead "
                             f"(-e {var}=...), so the plan, its checks and the engine agree")
        if flag in SECRET_FLAGS:
            raise UsageError(f"extra_serve_args: {flag} would put a secret in the process list; "
                             f"{SECRET_FLAGS[flag]} instead")
        if not flag.startswith("--"):
            continue
        if recorded is not None and flag not in recorded:
            raise UsageError(f"extra_serve_args: {_unknown_flag(flag, version, recorded)}")
        if recorded is None and flag not in known_serve_flags():
            warnings.append(f"extra_serve_args: {_unknown_flag(flag, version, known_serve_flags())}"
                            .replace(f"vLLM {version}'s", "no recorded vLLM's", 1) + "; passed through as given")
    return warnings


def flags_warning(version: str) -> list[str]:
    if recorded_serve_flags(version) is not None:
        return []
    return [f"vLLM {version}: gpuprov has no recorded `vllm serve` flag table for this version (recorded: "
            f"{', '.join(recorded_versions())}), so the planned and extra flags are not checked against its parser; "
            "scripts/record_serve_flags.py records one"]
