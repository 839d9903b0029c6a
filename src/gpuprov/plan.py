"""Facts + vars (+ model knowledge) → Plan. Pure functions, no I/O: every decision comes with its reason.

The plan holds what provisioning needs: the vLLM build (version, CUDA variant, torch backend, indexes,
forward compatibility), the sizing (tensor parallel size, max_model_len, utilization, batch limits), the
exact ``vllm serve`` argv and environment, and the paths on the host. A refused plan (``ok: false``) says
why and what would work; nothing is installed or downloaded for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .compat import Build, choose_build, vtuple
from .errors import UsageError
from .facts import GPU, Facts
from .fit import (
    DEFAULT_UTIL,
    KV_DTYPE_BYTES,
    MAX_AUTO_UTIL,
    MIN_CONTEXT,
    Sizing,
    batch_defaults,
    round_len,
    size,
    tp_candidates,
)
from .inventory import Host, Var
from .layout import ROOTS, HostLayout
from .models import ModelSpec, catalog
from .runpod import knob_values
from .secrets import Secret
from .serve_flags import check_extra_args, flags_warning, recorded_serve_flags


@dataclass(frozen=True)
class Plan:
    ok: bool
    host: str
    model: str
    reason: str | None = None
    ways_out: tuple[str, ...] = ()
    vllm_version: str | None = None
    cuda_variant: str | None = None
    cuda_compat: bool = False
    torch_backend: str | None = None
    torch_version: str | None = None
    extra_index_url: str | None = None
    index_url: str | None = None
    python: str | None = None
    python_managed: bool = False
    download_kernels: bool = False
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    #: replicas of the (tensor × pipeline parallel) engine on this host, behind vLLM's own API server
    data_parallel_size: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: str = "auto"
    attention_backend: str | None = None
    serve_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    api_key_required: bool = False
    #: the model is gated on the hub and no HF_TOKEN was given: the weights download would be refused
    needs_hf_token: bool = False
    engine_host: str = "127.0.0.1"
    engine_port: int = 8000
    service_manager: str = "supervisor"
    install_root: str = "/opt/gpuprov"
    venv: str | None = None
    hf_home: str | None = None
    model_gib: float | None = None
    memory: Mapping[str, Any] = field(default_factory=dict)
    why: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: how the host serves (deployment.py): single (alone), replica (one of a group behind a router) or a node of a
    #: multinode engine (role head or follower, its rank, the rendezvous on the head's private address)
    deployment: str = "single"
    group: str | None = None
    role: str | None = None
    node_rank: int | None = None
    nnodes: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    private_address: str | None = None
    interface: str | None = None

    @property
    def exit_code(self) -> int:
        """2 for a refused plan (nothing was changed), 0 otherwise."""
        return 0 if self.ok else 2

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["serve_args"] = list(self.serve_args)
        d["env"] = dict(self.env)
        d["memory"] = dict(self.memory)
        return d


# --------------------------------------------------------------------------- vars


@dataclass(frozen=True)
class EngineVars:
    model: str
    max_model_len: int | None
    gpu_memory_utilization: float | None
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    tensor_parallel_size: int | None
    data_parallel_size: int | None
    pipeline_parallel_size: int | None
    kv_cache_dtype: str
    vllm_version: str | None
    engine_host: str
    engine_port: int
    api_key: Secret | None
    extra_serve_args: tuple[str, ...]
    engine_env: Mapping[str, str]
    gpu_indices: tuple[int, ...] | None
    served_model_name: str | None
    enforce_eager: bool
    install_root: str | None


class _Vars:
    """Reads a host's vars for the planner; a wrong value is one line naming the var, where it was set
    (file:line, ``-e``, an environment variable) and what would be valid."""

    def __init__(self, host: Host):
        self.host = host

    def get(self, name: str, default: Any = None) -> Any:
        return self.host.var(name, default)

    def bad(self, name: str, expected: str, got: Any = None) -> UsageError:
        var = self.host.vars.get(name)
        where = f" (from {var.source})" if var is not None else ""
        shown = "***" if isinstance(got, Secret) else repr(got)
        return UsageError(f"{name}{where}: expected {expected}, got {shown}")

    def text(self, name: str, default: str | None = None) -> str | None:
        v = self.get(name)
        if v is None or v == "":
            return default
        if not isinstance(v, str) or any(c in v for c in "\n\r\0"):
            raise self.bad(name, "a string", v)
        return v.strip()

    def int(self, name: str, lo: int, hi: int, default: int | None = None) -> int | None:
        v = self.get(name)
        if v is None or v == "":
            return default
        if isinstance(v, str) and v.strip().lower().endswith("k") and v.strip()[:-1].isdigit():
            v = int(v.strip()[:-1]) * 1024
        digits = isinstance(v, str) and v.strip().lstrip("-").isdigit()
        if isinstance(v, bool) or not isinstance(v, (int, str)) or (isinstance(v, str) and not digits):
            raise self.bad(name, f"a whole number between {lo} and {hi}", v)
        n = int(v)
        if not lo <= n <= hi:
            raise self.bad(name, f"a whole number between {lo} and {hi}", n)
        return n

    def fraction(self, name: str) -> float | None:
        v = self.get(name)
        if v is None or v == "":
            return None
        try:
            f = float(v) if not isinstance(v, bool) else None
        except (TypeError, ValueError):
            f = None
        if f is None or not 0 < f <= 1:
            raise self.bad(name, "a number in (0, 1], such as 0.9", v)
        return f

    def flag(self, name: str, default: bool = False) -> bool:
        v = self.get(name, default)
        if not isinstance(v, bool):
            raise self.bad(name, "true or false", v)
        return v

    def version(self, name: str) -> str | None:
        v = self.get(name)
        if v is None or v == "":
            return None
        if not isinstance(v, str):
            raise self.bad(name, 'a version string such as "0.32.0" (quote it: -e \'vllm_version="0.32.0"\')', v)
        return v.strip()


def _is_default(v: Var | None) -> bool:
    return v is None or v.source == "built-in default" or v.source.startswith(("environment ", "pod env"))


def with_pod_env(host: Host, facts: Facts) -> Host:
    """The pod's own knobs (``MODEL``, ``MAX_MODEL_LEN``, ... set on a RunPod pod, read by the probe) as that host's
    defaults: above gpuprov's defaults and the controller's ``GPUPROV_*``, below the inventory and the command
    line. The controller's own ``MODEL`` is never read (settings.py)."""
    values = {k: v for k, v in knob_values(facts.pod_env).items() if _is_default(host.vars.get(k))}
    return host.with_vars(values, f"pod env ({facts.pod_env_from})") if values else host


def engine_vars(host: Host) -> EngineVars:
    """Validate the vars the planner reads; absurd values fail here, before any connection."""
    V = _Vars(host)
    model = V.text("model")
    if not model:
        raise V.bad("model", "a model id (org/name) or a path", V.get("model"))
    util = V.fraction("gpu_memory_utilization")
    kv = V.text("kv_cache_dtype", "auto")
    if kv not in KV_DTYPE_BYTES:
        raise V.bad("kv_cache_dtype", f"one of {', '.join(KV_DTYPE_BYTES)}", kv)
    extra = V.get("extra_serve_args") or []
    if isinstance(extra, str):
        import shlex

        extra = shlex.split(extra)
    if not isinstance(extra, list) or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool)
                                              for x in extra):
        raise V.bad("extra_serve_args", "a list of strings, such as [--dtype, float16]", extra)
    env = V.get("engine_env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and k.isidentifier() for k in env):
        raise V.bad("engine_env", "a mapping of NAME: value", env)
    gpus = V.get("gpu_indices")
    if gpus is not None:
        if isinstance(gpus, int) and not isinstance(gpus, bool):
            gpus = [gpus]
        if not isinstance(gpus, list) or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0
                                                 for g in gpus):
            raise V.bad("gpu_indices", "a list of GPU indexes, such as [0, 1]", gpus)
    key = V.get("api_key")
    if key is not None and not isinstance(key, Secret):
        if not isinstance(key, str):
            raise V.bad("api_key", "a string", key)
        key = Secret(key, "api_key") if key else None
    root = V.text("install_root")
    if root is not None and not root.startswith("/"):
        raise V.bad("install_root", "an absolute path on the host, such as /workspace/gpuprov", root)
    return EngineVars(
        model=model,
        max_model_len=V.int("max_model_len", 1, 10_000_000),
        gpu_memory_utilization=util,
        max_num_seqs=V.int("max_num_seqs", 1, 65536),
        max_num_batched_tokens=V.int("max_num_batched_tokens", 1, 1_048_576),
        tensor_parallel_size=V.int("tensor_parallel_size", 1, 64),
        data_parallel_size=V.int("data_parallel_size", 1, 64),
        pipeline_parallel_size=V.int("pipeline_parallel_size", 1, 64),
        kv_cache_dtype=kv or "auto",
        vllm_version=V.version("vllm_version"),
        engine_host=V.text("engine_host", "127.0.0.1") or "127.0.0.1",
        engine_port=V.int("engine_port", 1, 65535, 8000) or 8000,
        api_key=key,
        extra_serve_args=tuple(str(x) for x in extra),
        engine_env={k: str(x) for k, x in env.items()},
        gpu_indices=tuple(gpus) if gpus is not None else None,
        served_model_name=V.text("served_model_name"),
        enforce_eager=V.flag("enforce_eager"),
        install_root=root,
    )


# --------------------------------------------------------------------------- sizing


def _devices(facts: Facts, ev: EngineVars) -> tuple[list[GPU], list[str]]:
    notes = []
    gpus = list(facts.gpus)
    if ev.gpu_indices is not None:
        known = {g.index for g in gpus}
        bad = [i for i in ev.gpu_indices if i not in known]
        if bad:
            raise UsageError(f"gpu_indices {bad} not on this host (it has GPUs {sorted(known)})")
        gpus = [g for g in gpus if g.index in ev.gpu_indices]
    mig = [g for g in gpus if g.mig_mode == "Enabled"]
    if mig:
        # a vLLM process uses one MIG slice; tensor parallelism across slices is not supported
        slices = [(m.memory_total_mib, g, m) for g in mig for m in g.mig_devices]
        if slices:
            mib, g, m = max(slices, key=lambda x: x[0])
            notes.append(f"MIG is enabled on GPU {g.index}: planning for its largest slice ({mib} MiB, MIG device "
                         f"{m.index}); tensor parallelism across MIG slices is not possible")
            return [GPU(g.index, f"{g.name} MIG {m.index}", g.uuid, g.pci_bus_id, mib, None, g.compute_capability,
                        "Enabled")], notes
    return gpus, notes


def _choose_sizing(model: ModelSpec, gpus: list[GPU], ev: EngineVars) -> tuple[Sizing | None, list[Sizing], str]:
    """vLLM's own batch defaults if at all possible, then the fewest GPUs per replica, then the least aggressive
    utilisation, that reach the target context."""
    mem = min(g.memory_total_mib or 0 for g in gpus)
    name = gpus[0].name
    seqs0, batched0 = batch_defaults(mem / 1024, name)
    target = ev.max_model_len or model.max_position_embeddings
    pp = ev.pipeline_parallel_size or 1
    tps = [ev.tensor_parallel_size] if ev.tensor_parallel_size else tp_candidates(model, len(gpus) // pp)
    utils = [ev.gpu_memory_utilization] if ev.gpu_memory_utilization else [DEFAULT_UTIL, MAX_AUTO_UTIL]
    batches = [(ev.max_num_seqs or seqs0, ev.max_num_batched_tokens or batched0)]
    if not (ev.max_num_seqs or ev.max_num_batched_tokens):
        for s, b in ((256, 2048), (128, 1024)):
            if (s, b) != batches[0] and s <= batches[0][0]:
                batches.append((s, b))
    tried: list[Sizing] = []
    for seqs, batched in batches:
        for tp in tps:
            for util in utils:
                cand = size(model, mem, name, tp, util, seqs, batched, ev.kv_cache_dtype, ev.enforce_eager, pp)
                tried.append(cand)
                if cand.max_len_that_fits >= target:
                    return cand, tried, "target"
    # nothing reaches the target: the configuration with the longest context (if any context fits)
    best = max(tried, key=lambda s: s.max_len_that_fits, default=None)
    if best and best.max_len_that_fits >= MIN_CONTEXT and not ev.max_model_len:
        return best, tried, "best"
    return None, tried, "none"


def _data_parallel(model: ModelSpec, ev: EngineVars, s: Sizing, n_gpus: int) -> tuple[int, list[str], list[str]]:
    """Replicas for the GPUs one engine leaves free (vLLM's ``--data-parallel-size``: one API server in front,
    requests balanced between the replicas); with the reason, and a warning for GPUs that stay idle."""
    per = s.tensor_parallel_size * s.pipeline_parallel_size
    dp = ev.data_parallel_size or max(1, n_gpus // per)
    why, warnings = [], []
    if ev.data_parallel_size:
        why.append(f"data_parallel_size {dp}: as requested")
    elif dp > 1:
        why.append(f"data_parallel_size {dp}: {dp} replicas of tensor parallel {s.tensor_parallel_size} use all "
                   f"{dp * per} GPUs (one endpoint, requests balanced between them; data_parallel_size: 1 leaves "
                   f"{n_gpus - per} free)")
    idle = n_gpus - dp * per
    if idle and not ev.data_parallel_size:
        warnings.append(f"{idle} of the {n_gpus} GPUs stay idle: replicas of {per} GPU(s) do not divide them "
                        f"({model.name} has {model.num_attention_heads} attention heads; tensor parallel sizes that "
                        f"divide them: {', '.join(map(str, tp_candidates(model, 64)))}); gpu_indices picks the GPUs")
    return dp, why, warnings


def _overridden_defaults(ev: EngineVars, s: Sizing, gpus: list[GPU], max_len: int, model: ModelSpec) -> list[str]:
    """Every vLLM default the planner changed on its own, with the value vLLM would have used and why."""
    out = []
    seqs0, batched0 = batch_defaults(min(g.memory_total_mib or 0 for g in gpus) / 1024, gpus[0].name)
    if not (ev.max_num_seqs or ev.max_num_batched_tokens) and (s.max_num_seqs, s.max_num_batched_tokens) != \
            (seqs0, batched0):
        out.append(f"max_num_seqs {s.max_num_seqs} and max_num_batched_tokens {s.max_num_batched_tokens} instead of "
                   f"vLLM's {seqs0} and {batched0} on {gpus[0].name}: with those, the activation peak leaves the KV "
                   f"cache too small for {max_len} tokens; set them (and a shorter max_model_len) to choose otherwise")
    if not ev.gpu_memory_utilization and s.gpu_memory_utilization != DEFAULT_UTIL:
        out.append(f"gpu_memory_utilization {s.gpu_memory_utilization:g} instead of vLLM's {DEFAULT_UTIL:g}: "
                   f"needed for {max_len} tokens of KV cache; leave less room for other processes on these GPUs")
    if not ev.max_model_len and max_len < model.max_position_embeddings:
        out.append(f"max_model_len {max_len} instead of vLLM's {model.max_position_embeddings} (the model's "
                   "maximum): vLLM would refuse to start, as the full context does not fit the KV cache")
    return out


# --------------------------------------------------------------------------- flags


def _serve_args(model: ModelSpec | None, ev: EngineVars, s: Sizing, dp: int, max_len: int, build: Build,
                cc: str | None) -> tuple[list[str], str | None, list[str]]:
    warnings: list[str] = []
    args = [ev.model, "--host", ev.engine_host, "--port", str(ev.engine_port),
            "--served-model-name", ev.served_model_name or ev.model,
            "--max-model-len", str(max_len),
            "--gpu-memory-utilization", f"{s.gpu_memory_utilization:g}",
            "--max-num-seqs", str(s.max_num_seqs),
            "--max-num-batched-tokens", str(s.max_num_batched_tokens)]
    if s.tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(s.tensor_parallel_size)]
    if s.pipeline_parallel_size > 1:
        args += ["--pipeline-parallel-size", str(s.pipeline_parallel_size)]
    if dp > 1:
        args += ["--data-parallel-size", str(dp)]
    if ev.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", ev.kv_cache_dtype]
    if ev.enforce_eager:
        args.append("--enforce-eager")
    attention = None
    if model is not None:
        if model.tool_call_parser:
            args += ["--enable-auto-tool-choice", "--tool-call-parser", model.tool_call_parser]
        if model.reasoning_parser:
            args += ["--reasoning-parser", model.reasoning_parser]
        ab = model.attention_backend_before
        if ab and cc and vtuple(build.vllm_version) < vtuple(ab["version"]):
            attention = ab["by_cc"].get(cc)
            if attention:
                args += ["--attention-backend", attention]
    extra = list(ev.extra_serve_args)
    warnings += flags_warning(build.vllm_version) + check_extra_args(extra, build.vllm_version)
    table = recorded_serve_flags(build.vllm_version)
    for flag in (a for a in args if a.startswith("--")):
        assert table is None or flag in table, f"gpuprov emitted {flag}, unknown to vLLM {build.vllm_version}"
    args += extra
    return args, attention, warnings


# --------------------------------------------------------------------------- the plan


def _context_refusal(model: ModelSpec, ev: EngineVars) -> tuple[str, tuple[str, ...]] | None:
    """A context longer than the model's maximum: vLLM refuses it at start, after the install, so refuse it now."""
    if not ev.max_model_len or ev.max_model_len <= model.max_position_embeddings:
        return None
    if ev.engine_env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") == "1":
        return None
    return (f"max_model_len {ev.max_model_len} is longer than {model.name}'s maximum context of "
            f"{model.max_position_embeddings} tokens (vLLM refuses it at start)",
            (f"max_model_len={model.max_position_embeddings} or shorter",
             "engine_env: {VLLM_ALLOW_LONG_MAX_MODEL_LEN: '1'} if you know the model extrapolates that far"))


def _cc_cause(model: ModelSpec) -> str | None:
    """Why the model needs a newer GPU than vLLM itself does (named in the refusal)."""
    if model.quantization == "mxfp4":
        return "its MXFP4 weights need vLLM's MXFP4 kernels, which run on compute capability 8.0 (Ampere) or newer"
    return None


def _warnings(model: ModelSpec, gpus: list[GPU], facts: Facts, needs_token: bool) -> list[str]:
    out = _busy_gpus(gpus)
    if needs_token:
        out.append(f"{model.name} is gated on the hub: set HF_TOKEN to a token of an account that accepted its "
                   f"license (huggingface.co/{model.name}), or the weights download is refused")
    if facts.gpu_disagreement:
        out.append(f"NVML and nvidia-smi disagree ({facts.gpu_disagreement}); planned with NVML's values — "
                   "a driver upgraded without a reboot often shows this way")
    return out


def _sizing_why(model: ModelSpec, ev: EngineVars, sizing: Any, how: str, max_len: int, n_gpus: int) -> list[str]:
    why = []
    if how == "best" and not ev.max_model_len:
        why.append(f"the model's full {model.max_position_embeddings}-token context does not fit; "
                   f"max_model_len {max_len} is the longest that does")
    else:
        why.append(f"max_model_len {max_len}: " + ("as requested" if ev.max_model_len else "the model's maximum")
                   + f", fits in {sizing.kv_available_gib:g} GiB of KV cache per GPU")
    pp = f" × pipeline parallel {sizing.pipeline_parallel_size}" if sizing.pipeline_parallel_size > 1 else ""
    why.append(f"tensor_parallel_size {sizing.tensor_parallel_size}{pp}: " +
               ("as requested" if ev.tensor_parallel_size else f"fewest of the {n_gpus} GPU(s) that fit") +
               f" (weights {model.weight_gib:g} GiB → {sizing.weights_gib:g} GiB per GPU)")
    why.append(f"gpu_memory_utilization {sizing.gpu_memory_utilization:g}, max_num_seqs {sizing.max_num_seqs}, "
               f"max_num_batched_tokens {sizing.max_num_batched_tokens}")
    return why


def _busy_gpus(gpus: list[GPU]) -> list[str]:
    return [f"GPU {g.index} has only {g.memory_free_mib} MiB free now (another process, or a running engine that "
            "gpuprov will replace); vLLM needs its share free at start-up"
            for g in gpus if g.memory_free_mib is not None and g.memory_total_mib
            and g.memory_free_mib < 0.5 * g.memory_total_mib]


def _min_cc(gpus: list[GPU]) -> str | None:
    return min((g.compute_capability for g in gpus if g.compute_capability), key=vtuple, default=None)


def _check_tensor_parallel(ev: EngineVars, model: ModelSpec, gpus: list[GPU], host: str) -> None:
    if ev.tensor_parallel_size and ev.tensor_parallel_size > len(gpus):
        raise UsageError(f"tensor_parallel_size {ev.tensor_parallel_size} > the {len(gpus)} GPU(s) on {host}")
    asked = [(n, v) for n, v in (("tensor_parallel_size", ev.tensor_parallel_size),
                                 ("pipeline_parallel_size", ev.pipeline_parallel_size),
                                 ("data_parallel_size", ev.data_parallel_size)) if v]
    world = 1
    for _, v in asked:
        world *= v
    if world > len(gpus):
        raise UsageError(f"{' × '.join(f'{n} {v}' for n, v in asked)} needs {world} GPUs; {host} has {len(gpus)}")
    if ev.tensor_parallel_size and model.num_attention_heads % ev.tensor_parallel_size:
        raise UsageError(f"tensor_parallel_size {ev.tensor_parallel_size} does not divide {model.name}'s "
                         f"{model.num_attention_heads} attention heads")


def _does_not_fit(model: ModelSpec, gpus: list[GPU], ev: EngineVars, best: Any,
                  cc: str | None) -> tuple[str, tuple[str, ...]]:
    """Why nothing fits (the best sizing tried), and ways out computed with the same arithmetic."""
    fits = round_len(best.max_len_that_fits)
    target = ev.max_model_len or MIN_CONTEXT
    ways = []
    n = nodes_needed(model, gpus, ev, best, target)
    if n and (ev.pipeline_parallel_size or 1) == 1:
        ways.append(f"fits across {n} such hosts: group them with deployment: multinode (pipeline parallel {n})")
    if fits >= MIN_CONTEXT:
        ways.append(f"max_model_len={fits} (the longest that fits here)")
    ways += _ways_out(model, gpus, ev, best, target, cc)
    ways.append("a GPU with more memory")
    if best.max_len_that_fits < 0 or fits < MIN_CONTEXT:
        reason = (f"{model.name} does not fit: {model.weight_gib:g} GiB of weights "
                  f"({best.weights_gib:g} GiB per GPU at tensor parallel {best.tensor_parallel_size}) + "
                  f"{best.overhead_gib:g} GiB overhead exceed {best.gpu_gib:g} GiB × "
                  f"{best.gpu_memory_utilization:g} per GPU on {len(gpus)} × {gpus[0].name}")
    else:
        reason = (f"max_model_len {ev.max_model_len} does not fit: the KV cache holds at most {fits} tokens on "
                  f"{best.tensor_parallel_size} × {gpus[0].name}")
    return reason, tuple(ways)


def nodes_needed(model: ModelSpec, gpus: list[GPU], ev: EngineVars, best: Any, target: int,
                 most: int = 16) -> int | None:
    """The fewest hosts like this one (2..most) across which ``model`` fits ``target`` tokens: tensor parallel
    over each host's GPUs, pipeline parallel across the hosts (each stage holds 1/N of the layers)."""
    tp = max((t for t in tp_candidates(model, len(gpus))), default=1)
    mib = int(best.gpu_gib * 1024)
    for n in range(2, min(most, model.layers_full + model.layers_sliding) + 1):
        s = size(model, mib, gpus[0].name, tp, best.gpu_memory_utilization, best.max_num_seqs,
                 best.max_num_batched_tokens, ev.kv_cache_dtype, ev.enforce_eager, n)
        if s.max_len_that_fits >= target:
            return n
    return None


def _ways_out(model: ModelSpec, gpus: list[GPU], ev: EngineVars, best: Any, target: int,
              cc: str | None) -> list[str]:
    """Changes that would make ``target`` tokens fit, each checked with ``size``: a higher utilisation, an fp8 KV
    cache, more GPUs of this kind, a smaller model from the catalog."""
    mib, name = int(best.gpu_gib * 1024), gpus[0].name

    def fit(m: ModelSpec = model, tp: int = best.tensor_parallel_size, util: float = best.gpu_memory_utilization,
            kv: str = ev.kv_cache_dtype) -> int:
        return size(m, mib, name, tp, util, best.max_num_seqs, best.max_num_batched_tokens, kv, ev.enforce_eager,
                    best.pipeline_parallel_size).max_len_that_fits

    ways = []
    if best.gpu_memory_utilization < MAX_AUTO_UTIL:
        steps = [u / 100 for u in range(int(best.gpu_memory_utilization * 100) + 1, int(MAX_AUTO_UTIL * 100) + 1)]
        for want in dict.fromkeys((ev.max_model_len or model.max_position_embeddings, target)):
            util = next((u for u in steps if fit(util=u) >= want), None)
            if util:
                ways.append(f"gpu_memory_utilization={util:g} (fits {want} tokens on the same GPUs)")
                break
    fp8 = fit(kv="fp8") if ev.kv_cache_dtype == "auto" else 0
    if fp8 > max(best.max_len_that_fits, 0):
        ways.append(f"kv_cache_dtype=fp8 (halves the KV cache: up to {round_len(fp8)} tokens)")
    more = next(((t, n) for t in tp_candidates(model, 16) if t > len(gpus) and (n := fit(tp=t)) >= target), None)
    if more:
        ways.append(f"{more[0]} GPUs like these (tensor parallel {more[0]}: up to "
                    f"{round_len(min(more[1], model.max_position_embeddings))} tokens)")
    smaller = sorted((m for m in catalog().values() if m.weight_gib < model.weight_gib and m.name != model.name
                      and (cc is None or not m.min_compute_capability or vtuple(cc) >= vtuple(m.min_compute_capability))
                      and max(fit(m, tp) for tp in tp_candidates(m, len(gpus))) >= min(target, 32768)),
                     key=lambda m: (m.name.split("/")[0] != model.name.split("/")[0], -m.weight_gib))[:2]
    if smaller:
        ways.append("a smaller model from the catalog that fits here: " + ", ".join(m.name for m in smaller))
    return ways


def make_plan(facts: Facts, host: Host, model: ModelSpec | None, model_error: str | None = None,
              hf_token: bool | None = None) -> Plan:
    """The plan for ``host`` with these facts and this model (``hf_token``: whether HF_TOKEN is set; None when
    unknown, as in unit tests)."""
    ev = engine_vars(host)
    base: dict[str, Any] = {"host": host.name, "model": ev.model, "engine_host": ev.engine_host,
                            "engine_port": ev.engine_port}
    why: list[str] = []
    warnings: list[str] = []
    if model is None:
        return Plan(False, reason=model_error or f"unknown model {ev.model}",
                    ways_out=("use a model from the catalog (gpuprov.models), a hub id whose config.json can be "
                              "read (set HF_TOKEN for gated models), or a local path",), **base)
    too_long = _context_refusal(model, ev)
    if too_long:
        return Plan(False, reason=too_long[0], ways_out=too_long[1], **base)
    build, refusal, bwhy = choose_build(facts, ev.vllm_version, model.min_compute_capability, model.min_vllm,
                                        _cc_cause(model))
    why += bwhy
    if refusal:
        return Plan(False, reason=refusal.reason, ways_out=refusal.ways_out, why=tuple(why), **base)
    assert build is not None
    gpus, notes = _devices(facts, ev)
    why += notes
    if not gpus:
        return Plan(False, reason="no GPU selected", ways_out=("check gpu_indices",), **base)
    needs_token = bool(model.gated and hf_token is False)
    warnings += _warnings(model, gpus, facts, needs_token)
    _check_tensor_parallel(ev, model, gpus, host.name)
    sizing, tried, how = _choose_sizing(model, gpus, ev)
    mem = {"gpu": gpus[0].name, "gpus": len(gpus), "weights_gib": model.weight_gib,
           "kv_bytes_per_token": model.kv_bytes_per_token(KV_DTYPE_BYTES.get(ev.kv_cache_dtype, 2))}
    if sizing is None:
        best = max(tried, key=lambda s: s.max_len_that_fits)
        reason, ways = _does_not_fit(model, gpus, ev, best, _min_cc(gpus))
        return Plan(False, reason=reason, ways_out=ways, why=tuple(why), memory={**mem, **best.as_dict()}, **base)
    max_len = ev.max_model_len or min(model.max_position_embeddings, round_len(sizing.max_len_that_fits))
    why += _sizing_why(model, ev, sizing, how, max_len, len(gpus))
    dp, dp_why, dp_warnings = _data_parallel(model, ev, sizing, len(gpus))
    why += dp_why
    warnings += dp_warnings + _overridden_defaults(ev, sizing, gpus, max_len, model)
    layout = HostLayout(ev.install_root or facts.install_root or ROOTS[-1])
    root, hf_home = layout.root, layout.hf_home
    pod_hf = str(facts.pod_env.get("HF_HOME") or "").rstrip("/")
    if pod_hf.startswith("/workspace/") and root.startswith("/workspace/"):
        hf_home = pod_hf  # the pod's own model cache, on the disk that survives a reset
        why.append(f"model cache: the pod's HF_HOME {pod_hf} ({facts.pod_env_from})")
    cc = _min_cc(gpus)
    args, attention, flag_warnings = _serve_args(model, ev, sizing, dp, max_len, build, cc)
    warnings += flag_warnings
    if attention is None:
        why.append("attention backend: vLLM " + build.vllm_version + " picks it by itself")
    # HF_HUB_OFFLINE: gpuprov downloads the weights before the engine starts, so a restart never waits on (or
    # fails with) the hub; engine_env can set it to "0" for models that fetch more files at start.
    env = {"HF_HOME": hf_home, "HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": f"{root}/vllm-cache",
           "VLLM_NO_USAGE_STATS": "1",
           "VLLM_DO_NOT_TRACK": "1", "VLLM_DISABLE_LOG_LOGO": "1", **build.env, **ev.engine_env}
    if ev.gpu_indices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g.index) for g in gpus)
    bound_public = ev.engine_host not in ("127.0.0.1", "localhost", "::1")
    if bound_public:
        why.append(f"engine binds {ev.engine_host}: an API key is required (generated unless api_key is set)")
    venv = layout.venv(build.vllm_version, build.cuda_variant, build.python)
    total_gib = round(min(g.memory_total_mib or 0 for g in gpus) / 1024, 2)
    return Plan(
        True,
        vllm_version=build.vllm_version, cuda_variant=build.cuda_variant, cuda_compat=build.cuda_compat,
        torch_backend=build.torch_backend, torch_version=build.torch_version, extra_index_url=build.extra_index_url,
        python=build.python, python_managed=build.python_managed, download_kernels=build.download_kernels,
        tensor_parallel_size=sizing.tensor_parallel_size, pipeline_parallel_size=sizing.pipeline_parallel_size,
        data_parallel_size=dp, max_model_len=max_len,
        gpu_memory_utilization=sizing.gpu_memory_utilization, max_num_seqs=sizing.max_num_seqs,
        max_num_batched_tokens=sizing.max_num_batched_tokens, kv_cache_dtype=ev.kv_cache_dtype,
        attention_backend=attention, serve_args=tuple(args), env=env,
        api_key_required=bound_public or ev.api_key is not None, needs_hf_token=needs_token,
        service_manager="systemd" if facts.systemd else "supervisor", install_root=root, venv=venv, hf_home=hf_home,
        model_gib=model.weight_gib, memory={**mem, **sizing.as_dict(), "gpu_total_gib": total_gib},
        why=tuple(why), warnings=tuple(warnings), **base,
    )


def fit_catalog(facts: Facts, host: Host, hf_token: bool | None = None) -> list[Plan]:
    """``invoke models --fit``: every catalog model planned for this host at the longest context that fits (the
    host's other vars kept); a model the host's vars rule out is a refusal with the reason, not an error."""
    host = with_pod_env(host, facts)
    out = []
    for name, spec in catalog().items():
        h = host.with_vars({"model": name, "max_model_len": None}, "invoke models --fit")
        try:
            out.append(make_plan(facts, h, spec, hf_token=hf_token))
        except UsageError as e:
            out.append(Plan(False, host=host.name, model=name, reason=str(e)))
    return out
