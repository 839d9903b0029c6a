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


#: one attempt per file, this long: a hub that cannot be reached is answered in seconds, not after retries
HUB_TIMEOUT_S = 6.0


def _hub_json(name: str, filename: str, endpoint: str | None, token: str | None, timeout: float) -> dict | None:
    """One GET of ``filename`` from the model repo (no retries, no cache): the parsed JSON, None on 404."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    url = hf_hub_url(name, filename, endpoint=endpoint)
    try:
        r = get_session().get(url, headers=build_hf_headers(token=token), follow_redirects=True, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - DNS, refused, timeout: one line, said once
        where = endpoint or "the Hugging Face hub"
        raise ModelUnavailable(f"{name} is not in gpuprov's catalog and {where} could not be reached "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'no answer'}); "
                               "give the model as a local folder holding its config.json, or set hf_endpoint to a "
                               "mirror (`invoke models` lists the catalog)") from None
    if r.status_code in (401, 403):
        hint = "set HF_TOKEN to a token of an account with access" if not token else \
            "the HF_TOKEN given has no access to it (accept its license on the hub)"
        raise ModelUnavailable(f"{name} is gated or private on the hub: {hint}")
    if r.status_code == 404:
        return None
    if r.status_code != 200:
        raise ModelUnavailable(f"the hub answered HTTP {r.status_code} for {name}/{filename}")
    return json.loads(r.content)


def from_hub(name: str, *, endpoint: str | None = None, timeout: float = HUB_TIMEOUT_S) -> ModelSpec:
    token = os.environ.get("HF_TOKEN") or None
    cfg = _hub_json(name, "config.json", endpoint, token, timeout)
    if cfg is None:
        raise ModelUnavailable(f"{name} is neither in gpuprov's catalog nor on the hub (no such repository or no "
                               "config.json); check the name (`invoke models` lists the catalog)")
    index = _hub_json(name, "model.safetensors.index.json", endpoint, token, timeout)
    size = None
    if index is None:  # a single-file checkpoint: its size from the repo's file list
        from huggingface_hub import HfApi

        info = HfApi(token=token, endpoint=endpoint).model_info(name, files_metadata=True, timeout=timeout)
        size = sum(s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(".safetensors")) or None
    return models.from_config(name, cfg, index, size)


def resolve_model(name: str, *, endpoint: str | None = None, timeout: float = HUB_TIMEOUT_S) -> ModelSpec:
    """Catalog → local folder with config.json → the hub."""
    spec = models.lookup(name)
    if spec:
        return spec
    try:
        folder = local_model_dir(name)
        return from_folder(name, folder) if folder else from_hub(name, endpoint=endpoint, timeout=timeout)
    except ModelUnavailable:
        raise
    except GpuprovError as e:
        raise ModelUnavailable(str(e)) from e
    except Exception as e:  # noqa: BLE001 - network, auth, not found: a reason, not a crash
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        if os.environ.get("HF_TOKEN"):
            from .secrets import redact

            msg = redact(msg, os.environ["HF_TOKEN"])
        raise ModelUnavailable(f"cannot read {name}'s config.json from the hub: {msg}") from e
