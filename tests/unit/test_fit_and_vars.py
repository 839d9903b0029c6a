"""The memory model against the facts, and bad vars refused before anything connects."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from gpuprov import settings
from gpuprov.errors import UsageError
from gpuprov.facts import GPU, Facts
from gpuprov.fit import size
from gpuprov.inventory import Host, Var
from gpuprov.models import from_config, lookup
from gpuprov.plan import engine_vars, make_plan
from gpuprov.secrets import Secret

H100 = Facts(host="h", driver_version="580.95.05", cuda_driver_version="13.0", arch="x86_64", glibc="glibc 2.36",
             pythons=("3.11",),
             gpus=(GPU(0, "NVIDIA H100 80GB HBM3", memory_total_mib=81559, compute_capability="9.0"),
                   GPU(1, "NVIDIA H100 80GB HBM3", memory_total_mib=81559, compute_capability="9.0")))


def host(**vars):
    d = settings.defaults({})
    for k, v in vars.items():
        d[k] = Var(v, "test")
    return Host(name="h", address="x", vars=MappingProxyType(d))


def test_gpt_oss_weights_and_kv_per_token_match_the_facts():
    small, big = lookup("openai/gpt-oss-20b"), lookup("openai/gpt-oss-120b")
    assert 13 <= small.weight_gib <= 14 and 64 <= big.weight_gib <= 66
    assert small.kv_bytes_per_token() == 24 * 1024 and big.kv_bytes_per_token() == 36 * 1024
    assert small.kv_bytes_per_token(1) == 12 * 1024  # fp8 halves it
    assert big.kv_bytes_per_token(2, tp=2) == 18 * 1024  # TP=2 divides it


@pytest.mark.parametrize("model", ["openai/gpt-oss-20b", "openai/gpt-oss-120b"])
@pytest.mark.parametrize("util,seqs,batched", [(0.95, 1024, 8192), (0.92, 256, 2048), (0.90, 128, 1024)])
def test_largest_context_matches_the_kv_arithmetic(model, util, seqs, batched):
    """max_len ≈ (avail_kv − sw_overhead) / (n_full × 2 × kv_heads × head_dim × bytes), gpu-stack-facts.md §5."""
    m = lookup(model)
    s = size(m, 81559, "NVIDIA H100 80GB HBM3", 1, util, seqs, batched)
    n_sw = m.layers_sliding
    sw_bytes = n_sw * 2 * 1024 * (127 + batched)  # "n_sw × 2 KiB × (127 + max_in_flight)"
    arithmetic = (s.kv_available_gib * 2**30 - sw_bytes) / (m.layers_full * 2 * 8 * 64 * 2)
    assert abs(s.max_len_that_fits - arithmetic) <= 0.15 * abs(arithmetic)


def test_measured_kv_memory_is_reproduced():
    # vllm#27508: gpt-oss-120b, one H100 80GB, utilization 0.95, default batching → 1.71 GiB of KV cache
    s = size(lookup("openai/gpt-oss-120b"), 81559, "NVIDIA H100 80GB HBM3", 1, 0.95, 1024, 8192)
    assert abs(s.kv_available_gib - 1.71) < 0.3


def test_more_gpus_more_context():
    one = size(lookup("openai/gpt-oss-120b"), 81559, "H100", 1, 0.92, 256, 2048)
    two = size(lookup("openai/gpt-oss-120b"), 81559, "H100", 2, 0.92, 256, 2048)
    assert two.max_len_that_fits > 2 * one.max_len_that_fits


@pytest.mark.parametrize(
    "vars,needle",
    [
        ({"max_model_len": -5}, "max_model_len (from test): expected a whole number between 1 and"),
        ({"max_model_len": "lots"}, "max_model_len (from test): expected a whole number"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization (from test): expected a number in (0, 1]"),
        ({"gpu_memory_utilization": 0}, "(0, 1]"),
        ({"gpu_memory_utilization": "high"}, "number"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"engine_port": 70000}, "engine_port"),
        ({"kv_cache_dtype": "fp4"}, "kv_cache_dtype"),
        ({"model": ""}, "model (from test): expected a model id"),
        ({"model": "a\nb"}, "model (from test): expected a string"),
        ({"gpu_indices": ["zero"]}, "gpu_indices"),
        ({"engine_env": {"BAD-NAME": "x"}}, "engine_env"),
    ],
)
def test_absurd_vars_are_refused(vars, needle):
    with pytest.raises(UsageError) as ei:
        engine_vars(host(**vars))
    assert needle in str(ei.value)


def test_unknown_gpu_index_and_bad_tp():
    with pytest.raises(UsageError, match=r"gpu_indices \[7\] not on this host"):
        make_plan(H100, host(gpu_indices=[7]), lookup("openai/gpt-oss-20b"))
    with pytest.raises(UsageError, match="tensor_parallel_size 4 >"):
        make_plan(H100, host(tensor_parallel_size=4), lookup("openai/gpt-oss-20b"))
    with pytest.raises(UsageError, match="secret"):
        make_plan(H100, host(extra_serve_args=["--api-key", "k"]), lookup("openai/gpt-oss-20b"))


def test_gpu_indices_and_extra_args_reach_the_plan():
    p = make_plan(H100, host(gpu_indices=[1], extra_serve_args=["--disable-custom-all-reduce", "--seed", "7"]),
                  lookup("openai/gpt-oss-20b"))
    assert p.env["CUDA_VISIBLE_DEVICES"] == "1"
    assert list(p.serve_args[-3:]) == ["--disable-custom-all-reduce", "--seed", "7"]
    with pytest.raises(UsageError, match="vLLM 0.33.0's `vllm serve` has no --some-new-flag"):
        make_plan(H100, host(extra_serve_args=["--some-new-flag"]), lookup("openai/gpt-oss-20b"))


def test_local_environment_is_read_only_under_gpuprov_names():
    """Generic names (MODEL, API_KEY) belong to other programs: they never change a plan or become a key."""
    unrelated = {"MODEL": "gpt-4o", "MAX_MODEL_LEN": "abc", "GPU_MEMORY_UTILIZATION": "2", "MAX_NUM_SEQS": "x",
                 "API_KEY": "sk-other-service"}
    assert settings.defaults(unrelated) == settings.defaults({})
    assert "api_key" not in settings.defaults(unrelated)


def test_bad_environment_value_names_the_variable():
    h = Host(name="h", address="x", vars=MappingProxyType(settings.defaults({"GPUPROV_MAX_MODEL_LEN": "lots"})))
    with pytest.raises(UsageError, match=r"max_model_len \(from environment GPUPROV_MAX_MODEL_LEN\): expected a whole"):
        engine_vars(h)


def test_seed_environment_is_a_default_below_vars():
    env = {"GPUPROV_MODEL": "Qwen/Qwen3-8B", "GPUPROV_MAX_MODEL_LEN": "8192", "GPUPROV_GPU_MEMORY_UTILIZATION": "0.85",
           "GPUPROV_MAX_NUM_SEQS": "16", "GPUPROV_API_KEY": "sk-seed-secret"}
    d = settings.defaults(env)
    assert d["model"] == Var("Qwen/Qwen3-8B", "environment GPUPROV_MODEL")
    assert d["max_model_len"].value == 8192 and d["gpu_memory_utilization"].value == 0.85
    assert isinstance(d["api_key"].value, Secret) and str(d["api_key"].value) == "***"
    h = Host(name="h", address="x", vars=MappingProxyType(d))
    p = make_plan(H100, h, lookup("Qwen/Qwen3-8B"))
    assert (p.max_model_len, p.gpu_memory_utilization, p.max_num_seqs) == (8192, 0.85, 16)
    assert p.api_key_required and "sk-seed-secret" not in repr(p.to_json())
    assert h.with_vars({"max_model_len": 4096}, "command line").var("max_model_len") == 4096


def test_unknown_model_from_config_json():
    cfg = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "hidden_size": 2048, "vocab_size": 128256, "max_position_embeddings": 131072}
    m = from_config("me/tiny-llama", cfg, {"metadata": {"total_size": 2_471_645_696}})
    assert m.head_dim == 64 and m.layers_full == 16 and round(m.weight_gib, 1) == 2.3
    gptoss = {"architectures": ["GptOssForCausalLM"], "num_hidden_layers": 24, "num_attention_heads": 64,
              "num_key_value_heads": 8, "head_dim": 64, "hidden_size": 2880, "sliding_window": 128,
              "layer_types": ["sliding_attention", "full_attention"] * 12, "num_local_experts": 32,
              "quantization_config": {"quant_method": "mxfp4"}}
    m = from_config("x/gpt-oss-like", gptoss, {"metadata": {"total_size": 13_761_300_000}})
    assert (m.layers_full, m.layers_sliding, m.moe, m.min_compute_capability) == (12, 12, True, "8.0")
    with pytest.raises(UsageError, match="num_hidden_layers"):
        from_config("x/broken", {"hidden_size": 1}, {"metadata": {"total_size": 1}})
    p = make_plan(H100, host(model="nobody/nothing"), None, "cannot read nobody/nothing's config.json")
    assert not p.ok and "config.json" in p.reason


def test_provision_refuses_a_gated_model_without_a_token_unless_the_host_has_its_own_hub():
    from gpuprov.provision import gated_refusal

    spec = lookup("meta-llama/Llama-3.1-8B-Instruct")
    h = host(model="meta-llama/Llama-3.1-8B-Instruct", max_model_len=8192)
    p = make_plan(H100, h, spec, hf_token=False)
    assert p.ok and p.needs_hf_token
    assert "accept the model's license on huggingface.co/meta-llama/Llama-3.1-8B-Instruct" in gated_refusal(h, p)
    assert gated_refusal(h.with_vars({"hf_endpoint": "http://mirror:8080"}, "test"), p) is None
    assert gated_refusal(h, make_plan(H100, h, spec, hf_token=True)) is None
