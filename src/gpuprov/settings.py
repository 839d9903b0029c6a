"""Where gpuprov keeps things, each overridable by an environment variable (tests use their own).

- ``GPUPROV_HOME`` (default ``./.gpuprov``): pinned host keys, local secrets, the lab's state.
- ``GPUPROV_INVENTORY`` (default ``./inventory``): the inventory file or folder.
- ``GPUPROV_SIM_PREFIX`` / ``GPUPROV_SIM_SUBNET``: the lab's interface prefix and private subnet.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import yaml

from .inventory import Var

# The gpt-oss RunPod image's environment variables, read as defaults (below inventory and flags).
SEED_ENV = {
    "MODEL": "model",
    "MAX_MODEL_LEN": "max_model_len",
    "GPU_MEMORY_UTILIZATION": "gpu_memory_utilization",
    "MAX_NUM_SEQS": "max_num_seqs",
    "API_KEY": "api_key",
}


def home() -> Path:
    return Path(os.environ.get("GPUPROV_HOME", ".gpuprov"))


def inventory_path() -> Path:
    return Path(os.environ.get("GPUPROV_INVENTORY", "inventory"))


def sim_inventory_file() -> Path:
    inv = inventory_path()
    return (inv if inv.suffix not in (".yml", ".yaml") else inv.parent) / "sim.yml"


def known_hosts_file() -> Path:
    return home() / "known_hosts"


def defaults(env: Mapping[str, str] | None = None) -> dict[str, Var]:
    """Built-in defaults, then the seed environment on top."""
    from importlib import resources

    data = yaml.safe_load(resources.files("gpuprov").joinpath("data/defaults.yml").read_text()) or {}
    out = {k: Var(v, "built-in default") for k, v in data.items()}
    env = os.environ if env is None else env
    for name, var in SEED_ENV.items():
        if env.get(name, "").strip():
            raw = env[name].strip()
            if var == "api_key":
                from .secrets import Secret

                out[var] = Var(Secret(raw, "api_key"), f"environment {name}")
                continue
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
            out[var] = Var(value if isinstance(value, (int, float, str)) else raw, f"environment {name}")
    return out


def frozen(d: Mapping[str, Var]) -> Mapping[str, Var]:
    return MappingProxyType(dict(d))
