"""Model knowledge for the memory model: a catalog of popular models (``data/models.yml``), or any model's
own ``config.json`` + ``model.safetensors.index.json``. Pure: reading files from the hub is ``api``'s job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

from .errors import UsageError

GIB = 1024**3


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str
    layers_full: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    weight_gib: float
    layers_sliding: int = 0
    sliding_window: int | None = None
    quantization: str | None = None
    moe: bool = False
    min_compute_capability: str | None = None
    min_vllm: str | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    attention_backend_before: Mapping[str, Any] | None = None
    #: the hub serves the weights only with the token of an account that accepted the model's license
    gated: bool = False
    source: str = ""

    def kv_bytes_per_token(self, kv_dtype_bytes: int = 2, tp: int = 1) -> int:
        """Full-attention KV bytes per token on one GPU: layers × 2 (K,V) × KV heads per rank × head_dim × bytes."""
        heads = max(1, -(-self.num_key_value_heads // tp))
        return self.layers_full * 2 * heads * self.head_dim * kv_dtype_bytes


@lru_cache(maxsize=1)
def catalog() -> Mapping[str, ModelSpec]:
    from .compat import data_file

    data = data_file("models.yml")
    names = {f.name for f in fields(ModelSpec)}
    return {k: ModelSpec(name=k, **{a: b for a, b in v.items() if a in names}) for k, v in data["models"].items()}


def lookup(name: str) -> ModelSpec | None:
    cat = catalog()
    if name in cat:
        return cat[name]
    low = {k.lower(): v for k, v in cat.items()}
    return low.get(name.lower())


def from_config(name: str, config: Mapping[str, Any], index: Mapping[str, Any] | None = None,
                weight_bytes: int | None = None) -> ModelSpec:
    """A Hugging Face ``config.json`` (+ safetensors index or total file size) → ModelSpec."""
    cfg = dict(config.get("text_config") or {}) or dict(config)
    for k in ("architectures", "quantization_config"):
        cfg.setdefault(k, config.get(k))
    try:
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{name}: config.json lacks {e} needed to size the KV cache") from None
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    types = cfg.get("layer_types") or []
    sliding = sum(1 for t in types if "sliding" in str(t))
    if not types and cfg.get("sliding_window") and cfg.get("sliding_window_pattern"):
        pattern = int(cfg["sliding_window_pattern"])
        sliding = layers - layers // pattern
    if types or sliding:
        full = layers - sliding
    else:
        full = layers
    total = weight_bytes
    if total is None and index:
        total = (index.get("metadata") or {}).get("total_size")
    if not total:
        raise UsageError(f"{name}: the weights' size is unknown (no model.safetensors.index.json total_size)")
    q = cfg.get("quantization_config") or {}
    arch = (cfg.get("architectures") or ["unknown"])[0]
    return ModelSpec(
        name=name,
        architecture=arch,
        layers_full=full,
        layers_sliding=sliding,
        sliding_window=cfg.get("sliding_window") if sliding else None,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        vocab_size=int(cfg.get("vocab_size") or 32000),
        max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096),
        weight_gib=round(total / GIB, 2),
        quantization=q.get("quant_method"),
        moe=bool(cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts")),
        min_compute_capability="8.0" if q.get("quant_method") == "mxfp4" else None,
        source="config.json",
    )
