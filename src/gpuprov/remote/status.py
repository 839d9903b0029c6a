# What runs on this host now (gpuprov status): the installation found under the roots given on argv (the host's
# install_root var first), its service state, /health, /version and the GPUs' memory and utilisation. Prints JSON.
import json
import subprocess
import time


def engine_load(port):
    """Requests running and waiting now, and served so far (finished with stop or length), from the engine's
    Prometheus /metrics (vLLM's V1 names; summed over its engines; served: every finished reason but abort and
    error); None when it has no /metrics."""
    status, body = local_http(port, "GET", "/metrics", timeout=3)
    if status != 200:
        return None
    load = {"running": 0.0, "waiting": 0.0, "served": 0.0}
    names = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting"}
    for line in body.decode("utf-8", "replace").splitlines():
        if not line.startswith("vllm:"):
            continue
        name, _, rest = line.partition("{")
        labels, _, value = rest.rpartition("} ")
        try:
            v = float(value.split()[0])
        except (ValueError, IndexError):
            continue
        if name in names:
            load[names[name]] += v
        elif name == "vllm:request_success_total" and not any(
                'finished_reason="%s"' % r in labels for r in ("abort", "error")):
            load["served"] += v
    return {k: int(v) for k, v in load.items()}


out = {"installed": False}
for root in sys.argv[1:]:  # where to look: the host's install_root var first, then the defaults (gpuprov.layout)
    try:
        with open(root + "/state.json") as f:
            st = json.load(f)
        out.update(installed=True, root=root, state=st)
        break
    except (OSError, ValueError):
        pass
def run(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=15).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return ""
if out["installed"]:
    st = out["state"]
    if st["service_manager"] == "systemd":
        shown = run(["systemctl", "show", st["service"], "-p", "ActiveState,SubState,NRestarts,"
                     "ActiveEnterTimestampMonotonic,ExecMainStatus,MainPID,LoadState"])
        props = dict(kv.split("=", 1) for kv in shown.splitlines() if "=" in kv)
        active = props.get("ActiveState", "unknown")
        if active == "activating" and props.get("SubState") == "auto-restart":
            active = "failed"
        up = None
        mono = int(props.get("ActiveEnterTimestampMonotonic") or 0)
        if active == "active" and mono:
            up = time.clock_gettime(time.CLOCK_MONOTONIC) - mono / 1e6
        out["service"] = {"state": active, "restarts": int(props.get("NRestarts") or 0), "uptime_s": up,
                          "pid": int(props.get("MainPID") or 0) or None, "loaded": props.get("LoadState")}
    else:
        alive, s = supervisor_state(st["pidfile"])
        if alive and s.get("child"):
            state = "active"
        elif alive:
            state = "failed" if s.get("last_exit") not in (None, 0) else "activating"
        else:
            state = "failed" if s.get("last_exit") not in (None, 0) and not s.get("stopped") else "inactive"
        up = time.time() - s["child_started_at"] if state == "active" and s.get("child_started_at") else None
        out["service"] = {"state": state, "restarts": s.get("restarts", 0), "uptime_s": up, "pid": s.get("child"),
                          "last_exit": s.get("last_exit")}
    port = st.get("engine_port", 8000)
    out["health"] = http_status(port)
    status, body = local_http(port, "GET", "/version", timeout=3)
    try:
        out["version"] = json.loads(body).get("version") if status == 200 else None
    except (ValueError, AttributeError):
        out["version"] = None
    if out["health"] == 200:
        out["load"] = engine_load(port)


def nvml_gpus(venv):
    """GPU memory and utilisation through NVML: pynvml from this python, else from the engine's venv (vLLM
    depends on nvidia-ml-py). None when NVML cannot answer."""
    try:
        import pynvml
    except ImportError:
        import glob

        found = glob.glob(os.path.join(venv or "/nonexistent", "lib", "python3*", "site-packages"))
        if not found:
            return None
        sys.path.append(found[0])
        try:
            import pynvml
        except ImportError:
            return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, a mismatch: nvidia-smi may still say more
        return None
    try:
        res = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
            except Exception:  # noqa: BLE001 - MIG slices and some boards do not report it
                util = None
            res.append({"index": i, "memory_used_mib": mem.used // 1048576, "memory_total_mib": mem.total // 1048576,
                        "utilization_pct": util})
        return res
    except Exception:  # noqa: BLE001
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def smi_gpus():
    q = run(["nvidia-smi", "--query-gpu=index,memory.used,memory.total,utilization.gpu",
             "--format=csv,noheader,nounits"])
    gpus = []
    for line in q.splitlines():
        p = [x.strip() for x in line.split(",")]
        if len(p) == 4 and p[0].isdigit():
            gpus.append({"index": int(p[0]), "memory_used_mib": int(p[1]) if p[1].isdigit() else None,
                         "memory_total_mib": int(p[2]) if p[2].isdigit() else None,
                         "utilization_pct": int(p[3]) if p[3].isdigit() else None})
    return gpus


gpus = nvml_gpus((out.get("state") or {}).get("venv"))
out["gpu_source"] = "nvml" if gpus is not None else "nvidia-smi"
if gpus is None:
    gpus = smi_gpus()
out["gpus"] = gpus
print(json.dumps(out))
