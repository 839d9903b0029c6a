"""Memory fit: weights + KV cache + overheads per GPU → tensor parallel size, max_model_len,
gpu_memory_utilization, max_num_seqs and max_num_batched_tokens. Pure arithmetic, no I/O.

Per GPU, vLLM's budget is ``total × gpu_memory_utilization``. From it come the weights (split across
tensor-parallel ranks), a framework reserve (CUDA context, cuBLAS/NCCL workspaces), the activation peak of
the profiling run (grows with ``max_num_batched_tokens``; mixture-of-experts models need far more), the
sampler's logits (``max_num_seqs × vocab × 8`` bytes) and CUDA graphs. What is left holds the KV cache:

    per token = layers_full × 2 × kv_heads_per_rank × head_dim × dtype_bytes
    one request of length L = L × per token + sliding layers × (window − 1 + batched tokens) × per-layer bytes

Calibration: gpt-oss-120b on one H100 80GB at utilization 0.95 with vLLM's defaults (8192 batched tokens,
1024 sequences) logged "Available KV cache memory: 1.71 GiB" (vllm#27508); the MoE activation factor below
reproduces that. Dense models use a smaller factor. Everything is an estimate: gpuprov refuses only what
clearly cannot fit, and the engine's own error (with its "estimated maximum model length") is diagnosed.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import floor
from typing import Any

from .models import GIB, ModelSpec

RESERVE_GIB = 1.5
CUDA_GRAPHS_GIB = 0.5
ACT_FACTOR = {True: 138.0, False: 24.0}  # × batched_tokens × hidden × 2 bytes (moe, dense)
DEFAULT_UTIL = 0.92  # vLLM's default in 0.26–0.33
MAX_AUTO_UTIL = 0.95
MIN_CONTEXT = 2048
KV_DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


def batch_defaults(gpu_gib: float, gpu_name: str) -> tuple[int, int]:
    """vLLM's server-mode defaults (max_num_seqs, max_num_batched_tokens) by GPU memory (get_batch_defaults)."""
    if gpu_gib >= 160:
        return 1024, 16384
    if gpu_gib >= 70 and "A100" not in gpu_name:
        return 1024, 8192
    return 256, 2048


@dataclass(frozen=True)
class Sizing:
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_dtype: str
    gpu_gib: float
    weights_gib: float
    overhead_gib: float
    kv_available_gib: float
    kv_bytes_per_token: int
    sliding_overhead_gib: float
    max_len_that_fits: int  # may be < 0 when the weights do not fit
    pipeline_parallel_size: int = 1

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def size(model: ModelSpec, gpu_mib: int, gpu_name: str, tp: int, util: float, seqs: int, batched: int,
         kv_cache_dtype: str = "auto", enforce_eager: bool = False, pp: int = 1) -> Sizing:
    """One GPU's budget at tensor parallel ``tp`` × pipeline parallel ``pp`` (each pipeline stage holds 1/pp of
    the layers: of the weights and of the KV cache)."""
    gpu_gib = gpu_mib / 1024
    kv_bytes = KV_DTYPE_BYTES.get(kv_cache_dtype, 2)
    weights = model.weight_gib / (tp * pp)
    act = batched * model.hidden_size * 2 * ACT_FACTOR[model.moe] / GIB / tp
    sampler = seqs * model.vocab_size * 8 / GIB
    overhead = RESERVE_GIB + act + sampler + (0 if enforce_eager else CUDA_GRAPHS_GIB)
    kv_avail = gpu_gib * util - weights - overhead
    per_token = -(-model.kv_bytes_per_token(kv_bytes, tp) // pp)
    sw = 0.0
    if model.layers_sliding and model.sliding_window:
        heads = max(1, -(-model.num_key_value_heads // tp))
        per_layer = 2 * heads * model.head_dim * kv_bytes
        sw = -(-model.layers_sliding // pp) * per_layer * (model.sliding_window - 1 + batched) / GIB
    max_len = floor((kv_avail - sw) * GIB / per_token) if per_token else 0
    return Sizing(tp, util, seqs, batched, kv_cache_dtype, round(gpu_gib, 2), round(weights, 2), round(overhead, 2),
                  round(kv_avail, 2), per_token, round(sw, 3), max_len, pp)


def tp_candidates(model: ModelSpec, n_gpus: int) -> list[int]:
    return [t for t in (1, 2, 4, 8, 16) if t <= n_gpus and model.num_attention_heads % t == 0]


def round_len(n: int) -> int:
    """Round a length down to a multiple of 256 (keeps numbers readable; vLLM blocks are 16 tokens)."""
    return n if n < 256 else n - n % 256
