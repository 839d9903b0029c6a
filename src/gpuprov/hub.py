"""Model knowledge from outside the catalog: a local folder, or the Hugging Face hub.

``resolve_model(name)`` → ``ModelSpec`` (catalog first), or raises ``ModelUnavailable`` with the reason.
The hub is asked with ``HF_TOKEN`` from the environment and the host's ``hf_endpoint`` (a mirror) when given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import models
from .errors import GpuprovError, ModelUnavailable
from .models import ModelSpec


def local_model_dir(name: str) -> Path | None:
    """The local folder ``name`` names (``./m``, ``~/models/x``, ``/data/m``) when it holds a config.json."""
    p = Path(name).expanduser()
    return p if (p / "config.json").is_file() else None


def from_folder(name: str, folder: Path) -> ModelSpec:
    cfg = json.loads((folder / "config.json").read_text())
    idx_file = folder / "model.safetensors.index.json"
    index = json.loads(idx_file.read_text()) if idx_file.is_file() else None
    size = None if index else sum(f.stat().st_size for f in folder.glob("*.safetensors")) or None
    return models.from_config(name, cfg, index, size)


def from_hub(name: str, *, endpoint: str | None = None, timeout: float = 20.0) -> ModelSpec:
    from huggingface_hub import HfApi, hf_hub_download

    token = os.environ.get("HF_TOKEN") or None
    cfg = json.loads(Path(hf_hub_download(name, "config.json", token=token, etag_timeout=timeout,
                                          endpoint=endpoint)).read_text())
    index, size = None, None
    try:
        index = json.loads(Path(hf_hub_download(name, "model.safetensors.index.json", token=token,
                                                etag_timeout=timeout, endpoint=endpoint)).read_text())
    except Exception:  # noqa: BLE001 - single-file checkpoints have no index
        info = HfApi(token=token, endpoint=endpoint).model_info(name, files_metadata=True, timeout=timeout)
        size = sum(s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(".safetensors")) or None
    return models.from_config(name, cfg, index, size)


def resolve_model(name: str, *, endpoint: str | None = None, timeout: float = 20.0) -> ModelSpec:
    """Catalog → local folder with config.json → the hub."""
    spec = models.lookup(name)
    if spec:
        return spec
    try:
        folder = local_model_dir(name)
        return from_folder(name, folder) if folder else from_hub(name, endpoint=endpoint, timeout=timeout)
    except GpuprovError as e:
        raise ModelUnavailable(str(e)) from e
    except Exception as e:  # noqa: BLE001 - network, auth, not found: a reason, not a crash
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        if os.environ.get("HF_TOKEN"):
            from .secrets import redact

            msg = redact(msg, os.environ["HF_TOKEN"])
        raise ModelUnavailable(f"cannot read {name}'s config.json from the hub: {msg}") from e
