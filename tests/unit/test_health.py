"""Readiness parsing on the real vLLM 0.32.0 startup log (tests/data) and the known failure messages."""

from __future__ import annotations

import pytest

from gpuprov.health import Progress, diagnose
from gpuprov.ops.weights import bar

from ..conftest import DATA

#: the real vLLM 0.32.0 CPU build starting the lab's tiny model, recorded in the lab
REAL_LOG = DATA / "real-engine-cpu-startup.log"


def phases_through(log: str) -> tuple[list[str], Progress]:
    """Feed a startup log to the progress display line by line: the phases it went through, in order."""
    p = Progress()
    seen: list[str] = []
    for line in log.splitlines():
        p.feed(line)
        if not seen or seen[-1] != p.phase:
            seen.append(p.phase)
    return seen, p


def test_real_startup_log_reaches_ready_through_the_phases():
    if not REAL_LOG.is_file():
        pytest.skip(f"{REAL_LOG} not present")
    seen, p = phases_through(REAL_LOG.read_text())
    assert p.phase == "ready" and p.kv_tokens == 1_048_576 and p.percent == 100
    assert (seen.index("config") < seen.index("engine") < seen.index("load") < seen.index("loaded")
            < seen.index("kv") < seen.index("server") < seen.index("ready"))
    assert p.render().startswith("[OK] MODEL READY")


def test_progress_bar_text():
    p = Progress()
    p.feed("Filesystem type for checkpoints: EXT4. Checkpoint size: 80.00 GiB. Available RAM: 21.89 GiB.")
    p.feed("Loading safetensors checkpoint shards:  50% Completed | 7/15 [00:06<00:03,  3.19s/it]")
    assert "####----" in p.render() and "40.0GB / 80.0GB - loading weights" in p.render()
    assert bar(3 * 2**30, 12 * 2**30, 5).startswith("[DOWNLOAD] ##------ 3.0GB / 12.0GB")


@pytest.mark.parametrize(
    "line,needle",
    [
        ("ValueError: To serve at least one request with the models's max seq len (131072), (4.50 GiB KV cache is "
         "needed, which is larger than the available KV cache memory (1.71 GiB). Based on the available memory, the "
         "estimated maximum model length is 48640. Try increasing `gpu_memory_utilization`", "max_model_len=48640"),
        ("ValueError: The model's max seq len (131072) is larger than the maximum number of tokens that can be stored "
         "in KV cache (93760). Try increasing", "max_model_len <= 93760"),
        ("RuntimeError: The NVIDIA driver on your system is too old (found version 12040).", "driver is too old"),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.", "out of GPU memory"),
        ("vllm serve: error: unrecognized arguments: --disable-log-requests", "does not know --disable-log-requests"),
        ("vllm: error: unrecognized arguments: --no-such-flag", "does not know --no-such-flag"),  # 0.32.0's wording
        ("vllm serve: error: argument --max-num-seqs: invalid int value: 'lots'",
         "vllm serve rejected --max-num-seqs: invalid int value: 'lots'"),
        ("OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use",
         "port is taken"),
        ("WARNING [cpu.py:644] Failed to import from vllm._C: ImportError('libnuma.so.1: cannot open shared object "
         "file: No such file or directory')", "apt-get install libnuma1"),
        ("ImportError: libcuda.so.1: cannot open shared object file", "--gpus all"),
        ("Cannot access gated repo for url https://example/x. Access to model meta-llama/X is restricted.", "gated"),
    ],
)
def test_diagnoses(line, needle):
    assert needle in diagnose(["INFO something", line, "EngineCore failed to start."])


def test_no_diagnosis_for_a_clean_log():
    assert diagnose(["INFO Application startup complete."]) is None
