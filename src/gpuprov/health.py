"""Readiness: follow the engine's log by phase (download, load, compile, KV cache, graphs, ready), then prove it
with a real 1-token chat completion; on failure, the last log lines and a diagnosis of the known errors.

Each poll is one remote exec of a small stdlib script that returns new log lines (journal or supervisor
log), the service state and the HTTP status of /health. The completion is made on the host itself (the
engine binds 127.0.0.1) with the API key read there from the 0600 env file, never from argv.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import remote

PHASES = [  # in startup order; the lines of vLLM 0.26–0.33 (tests/data/real-engine-cpu-startup.log)
    ("config", re.compile(r"Resolved architecture: ")),
    ("engine", re.compile(r"Initializing a V1 LLM engine")),
    ("download", re.compile(r"Time spent downloading weights")),
    ("load", re.compile(r"Loading safetensors checkpoint shards(?: \(eager\))?:\s+(\d+)% Completed \| (\d+)/(\d+)")),
    ("load", re.compile(r"Initializing model took")),
    ("loaded", re.compile(r"Loading weights took|Model loading took")),
    ("compile", re.compile(r"torch\.compile take?s? [\d.]+ ?s in total|saved AOT compiled function|Compiling a graph")),
    ("kv", re.compile(r"KV cache size: ([\d,]+) tokens")),
    ("graphs", re.compile(r"Capturing CUDA graphs|Graph capturing finished")),
    ("server", re.compile(r"Starting vLLM (?:API )?server on")),
    ("ready", re.compile(r"Application startup complete")),
]
CHECKPOINT = re.compile(r"Checkpoint size: ([\d.]+) GiB")

LIBRARY_FIX = {
    "libnuma.so.1": "apt-get install libnuma1 (vLLM's CPU kernels and NUMA binding use it)",
    "libcuda.so.1": "the NVIDIA driver's user-space library is missing — a container started without GPU access "
                    "(RunPod/docker: --gpus all) or a driver install without its libraries",
}

DIAGNOSES = [
    (re.compile(r"estimated maximum model length is (\d+)"),
     lambda m: f"the KV cache is too small for max_model_len: the engine estimates {m.group(1)} tokens fit; "
               f"provision again with -e max_model_len={m.group(1)} (or kv_cache_dtype=fp8, or more GPUs)"),
    (re.compile(r"maximum number of tokens that can be stored in KV cache \((\d+)\)"),
     lambda m: f"the KV cache holds {m.group(1)} tokens: set max_model_len <= {m.group(1)}"),
    (re.compile(r"NVIDIA driver on your system is too old|CUDA driver version is insufficient"
                r"|forward compatibility was attempted"),
     lambda m: "the driver is too old for this CUDA build: re-plan (gpuprov picks the +cu129 build for 525–579 "
               "drivers) or upgrade the driver to R580+"),
    (re.compile(r"CUDA out of memory|OutOfMemoryError"),
     lambda m: "out of GPU memory: lower gpu_memory_utilization, max_num_seqs or max_model_len, or use more GPUs "
               "(tensor_parallel_size)"),
    (re.compile(r"unrecognized arguments: (.+)"),
     lambda m: f"this vLLM version does not know {m.group(1).strip()}: remove it from extra_serve_args"),
    (re.compile(r"vllm serve: error: argument (--[\w-]+)(?:/-\S+)?: (.+)"),
     lambda m: f"vllm serve rejected {m.group(1)}: {m.group(2).strip()} — fix its value in extra_serve_args (or "
               "the var that sets it)"),
    (re.compile(r"(lib[\w+-]+\.so[.\d]*): cannot open shared object file"),
     lambda m: f"the engine needs the system library {m.group(1)}, which this host lacks: "
               f"{LIBRARY_FIX.get(m.group(1), 'install the package that provides it')}, then provision again"),
    (re.compile(r"failed to listen on any local network address\. port: (\d+)"),
     lambda m: f"the multinode master port {m.group(1)} is taken on the head by another process: free it or set "
               "master_port"),
    (re.compile(r"Timed out after \d+ seconds waiting for clients|DistStoreError"),
     lambda m: "a node could not join the head's master port in time: check that the nodes reach each other "
               "(`invoke provision` checks it first) and that every node started"),
    (re.compile(r"error while attempting to bind on address|Address already in use"),
     lambda m: "the engine's port is taken by another process: free it or set engine_port"),
    (re.compile(r"(?:401|403).*(?:gated|restricted)|Cannot access gated repo"),
     lambda m: "the model is gated: accept its licence on the hub and export HF_TOKEN before provisioning"),
]


def diagnose(lines: list[str]) -> str | None:
    text = "\n".join(lines)
    for rx, explain in DIAGNOSES:
        m = rx.search(text)
        if m:
            return explain(m)
    return None


#: the engine's log lines kept while it starts (for the diagnosis and the last lines shown on failure)
KEEP_LINES = 200


@dataclass
class Progress:
    phase: str = "starting"
    percent: int | None = None
    checkpoint_gib: float | None = None
    kv_tokens: int | None = None
    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    def keep(self, lines: list[str]) -> None:
        """Keep ``lines`` as the last ones seen (no phase read from them)."""
        self.lines = (self.lines + list(lines))[-KEEP_LINES:]

    def feed(self, line: str) -> None:
        self.lines.append(line)
        del self.lines[:-KEEP_LINES]
        if "[gpuprov-supervise] starting" in line or "vLLM server version" in line or "vLLM API server version" in line:
            self.phase, self.percent, self.kv_tokens = "starting", None, None  # a new engine process
        m = CHECKPOINT.search(line)
        if m:
            self.checkpoint_gib = float(m.group(1))
        for name, rx in PHASES:
            m = rx.search(line)
            if m:
                self.phase = name
                if name == "load" and m.groups():
                    self.percent = int(m.group(1))
                if name == "kv":
                    self.kv_tokens = int(m.group(1).replace(",", ""))

    def render(self) -> str:
        secs = time.monotonic() - self.started
        if self.phase == "ready":
            return f"[OK] MODEL READY (loaded in {secs:.0f}s)"
        labels = {"starting": "starting engine", "config": "reading the model config",
                  "engine": "starting the engine core", "download": "downloading weights", "load": "loading weights",
                  "loaded": "weights loaded", "compile": "compiling", "kv": "allocating KV cache",
                  "graphs": "capturing CUDA graphs", "server": "starting the API server"}
        bar = ""
        if self.phase == "load" and self.percent is not None:
            filled = self.percent * 8 // 100
            size = ""
            if self.checkpoint_gib:
                unit, scale = ("GB", 1) if self.checkpoint_gib >= 1 else ("MB", 1024)
                size = (f" {self.checkpoint_gib * scale * self.percent / 100:.1f}{unit} / "
                        f"{self.checkpoint_gib * scale:.1f}{unit}")
            bar = f" {'#' * filled}{'-' * (8 - filled)}{size} -"
        extra = f" ({self.kv_tokens:,} tokens)" if self.phase == "kv" and self.kv_tokens else ""
        return f"[LOADING]{bar} {labels.get(self.phase, self.phase)}{extra}... ({secs:.0f}s)"


@dataclass
class Readiness:
    ready: bool
    seconds: float
    completion: dict | None = None
    error: str | None = None
    diagnosis: str | None = None
    last_lines: list[str] = field(default_factory=list)


COMPLETION_TIMEOUT_S = 120
POLL_WAIT_S = 3.0


def wait_ready(runner: Any, *, manager: str, unit: str, log: str, pidfile: str, port: int, env_file: str,
               model: str, timeout: float = 1800, on_progress: Callable[[str], None] | None = None,
               poll_s: float = 0.2, abort: Callable[[], str | None] | None = None) -> Readiness:
    """Follow the engine's start until it answers a completion; ``abort`` (checked between polls) ends the wait
    early with its reason (a multinode follower that stopped)."""
    args = {"manager": manager, "unit": unit, "log": log, "pidfile": pidfile, "port": port, "pos": None,
            "since": time.time() - 5,
            # an engine that is already up is proven in this same exec (a re-provision: one exec to verify)
            "complete": {"env_file": env_file, "model": model, "timeout": COMPLETION_TIMEOUT_S},
            # while it starts, the host watches for up to this long per exec (remote/poll.py)
            "wait": POLL_WAIT_S,
            # an engine that is already up sends only the lines that would be kept
            "keep": KEEP_LINES}
    prog = Progress()
    deadline = time.monotonic() + timeout
    seen_restarts = None
    last = ""
    while time.monotonic() < deadline:
        res = remote.run(runner, "poll", json.dumps(args), timeout=30 + POLL_WAIT_S + COMPLETION_TIMEOUT_S)
        if res.exit_status != 0:
            return Readiness(False, time.monotonic() - prog.started, error=f"poll failed: {res.stderr.strip()[-300:]}")
        try:
            d = json.loads(res.stdout)
        except ValueError:
            return Readiness(False, time.monotonic() - prog.started,
                             error=f"the readiness poll printed no JSON: {res.stdout.strip()[-200:] or 'no output'}")
        args["pos"] = d["pos"]
        if d.get("health") == 200:  # up: no phase to follow, only the last lines to keep (for a failed completion)
            prog.keep(d["lines"])
        else:
            for line in d["lines"]:
                prog.feed(line)
        svc = d.get("service") or {}
        if seen_restarts is None:
            seen_restarts = svc.get("restarts", 0)
        if d.get("health") == 200:
            prog.phase = "ready"
            comp = d.get("completion") or {"ok": False, "error": "the readiness poll made no completion"}
            if on_progress:
                on_progress(prog.render())
            if comp.get("ok"):
                return Readiness(True, time.monotonic() - prog.started, comp)
            return Readiness(False, time.monotonic() - prog.started, comp, error=f"/health is 200 but a completion "
                             f"failed: {comp.get('error')}", last_lines=prog.lines[-20:])
        restarted = svc.get("restarts", 0) > (seen_restarts or 0)
        # a failed unit, an engine the supervisor had to restart, or a stopped one whose log says why
        if svc.get("active") == "failed" or restarted or (svc.get("active") == "inactive" and diagnose(prog.lines)):
            return Readiness(False, time.monotonic() - prog.started, error="the engine exited during start-up",
                             diagnosis=diagnose(prog.lines), last_lines=prog.lines[-20:])
        stop = abort() if abort else None
        if stop:
            return Readiness(False, time.monotonic() - prog.started, error=stop, last_lines=prog.lines[-20:])
        text = prog.render()
        if on_progress and text != last:
            on_progress(text)
            last = text
        time.sleep(poll_s)
    return Readiness(False, timeout, error=f"not ready after {timeout:g} s", diagnosis=diagnose(prog.lines),
                     last_lines=prog.lines[-20:])
