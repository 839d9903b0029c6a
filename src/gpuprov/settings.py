"""Where gpuprov keeps things, and the only local environment variables it reads.

Paths are relative to the *project root*: the nearest folder, from the current one upwards, that holds
``tasks.py`` (the folder Invoke found the tasks in, as git finds ``.git``), so a task run from a subfolder sees
the same inventory and pinned keys. Each can be overridden:

- ``GPUPROV_HOME`` (default ``<root>/.gpuprov``): pinned host keys, local secrets, tunnels, the lab's state.
- ``GPUPROV_INVENTORY`` (default ``<root>/inventory``): the inventory file or folder.
- ``GPUPROV_MODEL``, ``GPUPROV_MAX_MODEL_LEN``, ``GPUPROV_GPU_MEMORY_UTILIZATION``, ``GPUPROV_MAX_NUM_SEQS``,
  ``GPUPROV_API_KEY``: defaults for those vars (below the inventory and the command line).
- ``GPUPROV_PARALLEL``: hosts worked on at once (default 64). ``HF_TOKEN``: the Hugging Face token.
- ``GPUPROV_SIM_PREFIX`` / ``GPUPROV_SIM_SUBNET`` / ``GPUPROV_PERSONA_PATH``: the lab's names, subnet and personas.

Nothing else in the controller's environment changes a plan: generic names such as ``MODEL`` or ``API_KEY``
belong to other programs (and, on a RunPod pod, to the host's own environment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import yaml

from .inventory import Var

#: local environment variables read as var defaults (below the inventory and the command line)
SEED_ENV = {
    "GPUPROV_MODEL": "model",
    "GPUPROV_MAX_MODEL_LEN": "max_model_len",
    "GPUPROV_GPU_MEMORY_UTILIZATION": "gpu_memory_utilization",
    "GPUPROV_MAX_NUM_SEQS": "max_num_seqs",
    "GPUPROV_API_KEY": "api_key",
}


def project_root(start: Path | None = None) -> Path:
    """The nearest folder holding ``tasks.py``, from ``start`` (the current folder) upwards; else ``start``."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "tasks.py").is_file():
            return d
    return here


def home() -> Path:
    env = os.environ.get("GPUPROV_HOME")
    return Path(env) if env else project_root() / ".gpuprov"


def inventory_path() -> Path:
    env = os.environ.get("GPUPROV_INVENTORY")
    return Path(env) if env else project_root() / "inventory"


def project_file(rel: str) -> Path:
    """A file of the project (``playbooks/vllm.yml``): the project root's copy, else the one gpuprov ships."""
    p = project_root() / rel
    return p if p.exists() else Path(__file__).resolve().parents[2] / rel


def sim_inventory_file() -> Path:
    inv = inventory_path()
    return (inv if inv.suffix not in (".yml", ".yaml") else inv.parent) / "sim.yml"


def known_hosts_file() -> Path:
    return home() / "known_hosts"


def api_key_file(host_name: str) -> Path:
    """Where a host's generated API key is kept (0600)."""
    return home() / "secrets" / f"{host_name}.api_key"


def defaults(env: Mapping[str, str] | None = None) -> dict[str, Var]:
    """Built-in defaults, then the seed environment on top."""
    from importlib import resources

    text = resources.files("gpuprov").joinpath("data/defaults.yml").read_text()
    data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}  # noqa: S506
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
