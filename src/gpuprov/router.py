"""One endpoint in front of a deployment's replicas: the vLLM project's router (the ``vllm-router`` package, a
Rust load balancer), pinned exactly, installed on first use into a venv gpuprov keeps under ``.gpuprov/router``.

``invoke tunnel --host GROUP`` opens one tunnel per replica and starts the router on one local port, round robin
over the tunnels, with health checks: a replica that stops answering leaves the rotation, and comes back when it
answers again. The router binds 127.0.0.1 and forwards the client's Authorization header to the replicas.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import settings
from .errors import UsageError
from .tunnel import pick_port

VERSION = "0.1.17"
PIN = f"vllm-router=={VERSION}"
#: the distribution's own words (another project's router has the same name but is not this one)
SUMMARY_WORDS = ("Rust", "load balancer")
HEALTH_INTERVAL_S = 5
#: the router renames its process (setproctitle)
PROCESS_TITLE = b"vllm::router"
INSTALL_TIMEOUT_S = 600


def venv_dir() -> Path:
    return settings.home() / "router" / f"venv-{VERSION}"


def _platform_refusal() -> str | None:
    libc, ver = platform.libc_ver()
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        return (f"vllm-router {VERSION} ships Linux wheels only (manylinux_2_28, x86_64 and aarch64); this machine is "
                f"{sys.platform} {platform.machine()}")
    if libc != "glibc" or tuple(int(x) for x in ver.split(".")[:2] if x.isdigit()) < (2, 28):
        return f"vllm-router {VERSION} needs glibc 2.28 or newer (manylinux_2_28); this machine has {libc} {ver}"
    return None


def installed() -> Path | None:
    exe = venv_dir() / "bin" / "vllm-router"
    return exe if exe.is_file() and (venv_dir() / ".gpuprov-verified").is_file() else None


def ensure(note: Any = None) -> Path:
    """The router's executable, installed (and checked to be the vLLM project's router) on first use."""
    exe = installed()
    if exe:
        return exe
    why = _platform_refusal()
    if why:
        raise UsageError(f"{why}: run the replicas' router on a Linux machine")
    d = venv_dir()
    if note:
        note(f"installing {PIN} into {d} (once)")
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    from uv import find_uv_bin

    uv = find_uv_bin()
    try:
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(d)], check=True, capture_output=True,
                       timeout=120)
        p = subprocess.run([uv, "pip", "install", "-q", "--python", str(d / "bin" / "python"), "--only-binary",
                            ":all:", PIN], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        raise UsageError(f"could not create the router's venv {d}: {e}") from None
    if p.returncode:
        last = (p.stderr or p.stdout).strip().splitlines()
        raise UsageError(f"could not install {PIN}: {last[-1] if last else 'uv failed'}")
    meta = subprocess.run([str(d / "bin" / "python"), "-c", "import importlib.metadata as m, json; d = "
                           "m.metadata('vllm-router'); print(json.dumps({'name': d['Name'], 'version': d['Version'], "
                           "'summary': d['Summary']}))"], capture_output=True, text=True, timeout=60)
    info = json.loads(meta.stdout or "{}")
    if info.get("version") != VERSION or not all(w.lower() in (info.get("summary") or "").lower()
                                                 for w in SUMMARY_WORDS):
        raise UsageError(f"the installed vllm-router is not the vLLM project's router {VERSION} ({info}); "
                         f"remove {d} and check the package index")
    (d / ".gpuprov-verified").write_text(json.dumps(info) + "\n")
    return d / "bin" / "vllm-router"


def argv(exe: Path, port: int, workers: list[str], metrics_port: int) -> list[str]:
    """The router's command line: round robin, a health check every 5 s (out after 2 misses, back after 1
    answer), and its Prometheus port given (its default, 29000, would collide with a second router)."""
    return [str(exe), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *workers,
            "--policy", "round_robin", "--health-check-endpoint", "/health",
            "--health-check-interval-secs", str(HEALTH_INTERVAL_S), "--health-check-timeout-secs", "3",
            "--health-failure-threshold", "2", "--health-success-threshold", "1",
            "--worker-startup-timeout-secs", "60", "--worker-startup-check-interval", "2",
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port), "--log-level", "info"]


def _get(port: int, path: str, timeout: float = 3) -> tuple[int | None, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:  # noqa: S310
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except (OSError, ValueError):
        return None, b""


@dataclass
class Router:
    """A running router (a child of ``invoke tunnel``) and where it sends requests: {worker url: host}."""
    group: str
    port: int
    metrics_port: int
    workers: dict[str, str]
    proc: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, group: str, port: int, workers: dict[str, str], timeout: float = 60) -> Router:
        exe = ensure()
        metrics = pick_port(29000, True)
        log = settings.home() / "router" / f"{group}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            proc = subprocess.Popen(argv(exe, port, list(workers), metrics), stdin=subprocess.DEVNULL, stdout=f,
                                    stderr=f, start_new_session=True)
        r = cls(group, port, metrics, workers, proc, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise UsageError(f"{group}: the router exited ({proc.returncode}): {tail[0][-300:]} (log {log})")
            if _get(port, "/health")[0] == 200:
                r._write_state()
                return r
            time.sleep(0.2)
        r.stop()
        raise UsageError(f"{group}: the router did not answer within {timeout:g} s (log {log})")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _write_state(self) -> None:
        state_file(self.group).write_text(json.dumps({"pid": self.proc.pid, "port": self.port,
                                                      "metrics_port": self.metrics_port, "workers": self.workers,
                                                      "log": str(self.log), "version": VERSION}) + "\n")

    def stop(self) -> None:
        state_file(self.group).unlink(missing_ok=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def state_file(group: str) -> Path:
    return settings.home() / "router" / f"{group}.json"


def rotation(group: str) -> dict[str, bool] | None:
    """{host: in rotation} from the group's running router (its ``/workers``), or None without a live router."""
    f = state_file(group)
    try:
        st = json.loads(f.read_text())
        pid = int(st["pid"])
        if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(PROCESS_TITLE):
            return None
    except (OSError, ValueError, KeyError):
        return None
    code, body = _get(int(st["port"]), "/workers")
    if code != 200:
        return None
    try:
        workers = json.loads(body).get("workers") or []
    except ValueError:
        return None
    return {st["workers"].get(w.get("url"), w.get("url")): bool(w.get("is_healthy")) for w in workers}
