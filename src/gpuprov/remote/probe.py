# gpuprov probe: runs on the target host as `python3 -` (script on stdin), standard library only.
# It collects raw observations and prints ONE JSON object; gpuprov.facts parses them locally.
# Every failure is recorded as data, never raised: the probe must always print its JSON.

OUT = {"probe_version": 1, "errors": {}}


def attempt(key, fn):
    try:
        OUT[key] = fn()
    except Exception as e:  # noqa: BLE001 - a probe never crashes
        OUT["errors"][key] = "%s: %s" % (type(e).__name__, e)


def read(path, limit=65536):
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def run(argv, timeout=20):
    rc, out, err = spawn(argv, timeout)
    return {"rc": rc, "out": out, "err": err[-4000:]}


def os_release():
    text = read("/etc/os-release") or read("/usr/lib/os-release") or ""
    d = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            d[k] = v.strip().strip('"')
    return {"id": d.get("ID"), "version_id": d.get("VERSION_ID"), "pretty_name": d.get("PRETTY_NAME")}


def pythons():
    found, seen = [], set()
    for d in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in sorted(names):
            if n == "python3" or (n.startswith("python3.") and n[8:].isdigit()):
                p = os.path.join(d, n)
                real = os.path.realpath(p)
                if real in seen or not os.access(p, os.X_OK):
                    continue
                seen.add(real)
                found.append({"path": p, "name": os.path.basename(real)})
    return found


def this_python():
    # the path finder alone (importlib.util's find_spec imports ~8 ms more on a small VM): neither is built in
    from importlib.machinery import PathFinder

    return {
        "path": sys.executable,
        "version": "%d.%d.%d" % sys.version_info[:3],
        "venv": PathFinder.find_spec("venv") is not None,
        "ensurepip": PathFinder.find_spec("ensurepip") is not None,
    }


def init_system():
    comm = (read("/proc/1/comm") or "").strip()
    return {"pid1": comm or None, "systemd": comm == "systemd" and os.path.isdir("/run/systemd/system")}


def container():
    hints = []
    if os.path.exists("/.dockerenv"):
        hints.append("docker")
    if os.path.exists("/run/.containerenv"):
        hints.append("podman")
    env1 = read("/proc/1/environ") or ""
    for item in env1.split("\0"):
        if item.startswith("container="):
            hints.append(item.split("=", 1)[1])
        if item.startswith("RUNPOD_POD_ID="):
            hints.append("runpod")
    cg = read("/proc/1/cgroup") or ""
    for word in ("docker", "kubepods", "containerd", "lxc"):
        if word in cg and word not in hints:
            hints.append(word)
    if os.environ.get("RUNPOD_POD_ID") and "runpod" not in hints:
        hints.append("runpod")
    return hints


# the host's own install_root var, when it has one (argv), is searched first and measured for disk space;
# --quick (a provision): nvidia-smi is not asked again while NVML says what the last verified provision recorded
CUSTOM_ROOT = next((a for a in sys.argv[1:] if a.startswith("/")), None)
QUICK = "--quick" in sys.argv[1:]
ROOTS = ([CUSTOM_ROOT] if CUSTOM_ROOT else []) + [r for r in ("/workspace/gpuprov", "/opt/gpuprov") if r != CUSTOM_ROOT]


def disk():
    workspace = os.path.isdir("/workspace")
    root = CUSTOM_ROOT or ("/workspace/gpuprov" if workspace else "/opt/gpuprov")
    probe = root
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    st = os.statvfs(probe)
    return {"workspace": workspace, "install_root": root, "free_bytes": st.f_bavail * st.f_frsize, "measured_at": probe}


def user():
    return {"uid": os.getuid(), "name": os.environ.get("USER") or os.environ.get("LOGNAME"),
            "sudo": which("sudo") is not None}


def tools():
    return {t: which(t) for t in ("apt-get", "uv", "curl", "systemctl", "systemd-analyze", "journalctl",
                                  "nvidia-smi", "flock")}


def _ctypes_util_on_demand():
    """pynvml imports ctypes.util's find_library, which it calls only on Windows, and ctypes.util imports shutil,
    subprocess, re and tempfile: ~35 ms of CPU on a small VM, more than the rest of a quick probe. While pynvml
    loads, a module stands in whose find_library loads the real one when called. Returns it (None when the real
    one is loaded already)."""
    if "ctypes.util" in sys.modules:
        return None
    import types

    stand_in = types.ModuleType("ctypes.util")

    def find_library(name):
        if sys.modules.get("ctypes.util") is stand_in:
            del sys.modules["ctypes.util"]
        import ctypes.util

        return ctypes.util.find_library(name)

    stand_in.find_library = find_library
    sys.modules["ctypes.util"] = stand_in
    return stand_in


def nvml():
    stand_in = _ctypes_util_on_demand()
    try:
        import pynvml as n
    except Exception as e:  # noqa: BLE001
        return {"available": False, "error": "pynvml not importable: %s" % e}
    finally:
        if stand_in is not None and sys.modules.get("ctypes.util") is stand_in:
            del sys.modules["ctypes.util"]

    def s(v):
        return v.decode() if isinstance(v, bytes) else v

    try:
        n.nvmlInit()
    except Exception as e:  # noqa: BLE001
        return {"available": True, "error": "%s" % e}
    try:
        res = {"available": True, "driver_version": s(n.nvmlSystemGetDriverVersion()), "gpus": []}
        try:
            res["cuda_driver_version"] = n.nvmlSystemGetCudaDriverVersion_v2()
        except Exception:  # noqa: BLE001
            res["cuda_driver_version"] = n.nvmlSystemGetCudaDriverVersion()
        for i in range(n.nvmlDeviceGetCount()):
            h = n.nvmlDeviceGetHandleByIndex(i)
            g = {"index": i, "name": s(n.nvmlDeviceGetName(h))}
            for key, fn in (("uuid", lambda: s(n.nvmlDeviceGetUUID(h))),
                            ("pci_bus_id", lambda: s(n.nvmlDeviceGetPciInfo(h).busId)),
                            ("memory", lambda: [n.nvmlDeviceGetMemoryInfo(h).total, n.nvmlDeviceGetMemoryInfo(h).free]),
                            ("compute_capability", lambda: list(n.nvmlDeviceGetCudaComputeCapability(h))),
                            ("mig_mode", lambda: list(n.nvmlDeviceGetMigMode(h)))):
                try:
                    g[key] = fn()
                except Exception as e:  # noqa: BLE001
                    g[key + "_error"] = str(e)
            res["gpus"].append(g)
        return res
    except Exception as e:  # noqa: BLE001
        return {"available": True, "error": "%s" % e}
    finally:
        try:
            n.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def gpu_fingerprint():
    """The driver and the GPUs as NVML names them (None when NVML did not answer in full)."""
    nv = OUT.get("nvml") or {}
    if nv.get("error") or not nv.get("gpus") or not nv.get("driver_version"):
        return None
    return "|".join([nv["driver_version"]] + ["%s:%s:%s" % (g.get("name"), g.get("uuid"), (g.get("memory") or [0])[0])
                                             for g in nv["gpus"]])


def recorded_fingerprints():
    found = set()
    for text in (OUT.get("state") or {}).values():
        try:
            found.add(from_json(text).get("gpu_fingerprint"))
        except (ValueError, AttributeError):
            pass
    return found


def smi():
    exe = which("nvidia-smi")
    if not exe:
        return {"present": False}
    fp = OUT.get("gpu_fingerprint")
    if QUICK and fp and fp in recorded_fingerprints():
        # nvidia-smi takes 0.1-0.5 s on a GPU host; it was cross-checked against this same answer before
        return {"present": True, "path": exe, "skipped": "NVML answers what the last verified provision recorded"}
    res = {"present": True, "path": exe, "xml": run([exe, "-q", "-x"])}
    nv = OUT.get("nvml") or {}
    nvml_has_cc = bool(nv.get("gpus")) and all("compute_capability" in g for g in nv["gpus"])
    # the compute capabilities are asked of nvidia-smi only where NVML could not give them (one process less
    # per probe; on a many-GPU host nvidia-smi takes a good fraction of a second)
    if res["xml"]["rc"] == 0 and not nvml_has_cc:
        res["compute_cap"] = run([exe, "--query-gpu=index,compute_cap", "--format=csv,noheader"])
    return res


# the pod's own environment (RunPod keeps it in PID 1's environment and /etc/rp_environment; an SSH command sees
# neither): only what gpuprov uses leaves the host, and never the pod-scoped RUNPOD_API_KEY or PUBLIC_KEY
POD_NAMES = ("HF_HOME", "MODEL", "MAX_MODEL_LEN", "GPU_MEMORY_UTILIZATION", "MAX_NUM_SEQS", "API_KEY", "HF_TOKEN",
             "HUGGING_FACE_HUB_TOKEN", "CUDA_VERSION", "PYTORCH_VERSION")
POD_NEVER = ("RUNPOD_API_KEY", "PUBLIC_KEY", "SSH_PUBLIC_KEY", "JUPYTER_PASSWORD")


def pod_env():
    def keep(k):
        return k not in POD_NEVER and (k.startswith("RUNPOD_") or k in POD_NAMES)

    out = {}
    env1 = read("/proc/1/environ")
    if env1:
        pairs = [item.split("=", 1) for item in env1.split("\0") if "=" in item]
        found = dict((k, v) for k, v in pairs if keep(k))
        if found:
            out["pid1"] = found
    text = read("/etc/rp_environment")
    if text:
        import shlex

        found = {}
        for line in text.splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            if words[:1] == ["export"]:
                words = words[1:]
            for w in words:
                k, eq, v = w.partition("=")
                if eq and keep(k):
                    found[k] = v
        if found:
            out["file"] = found
    return out


def state():
    out = {}
    for root in ROOTS:
        text = read(root + "/state.json")
        if text:
            out[root] = text
            if os.path.exists(root + "/bin/vllm-serve.good"):
                out[root + ":good"] = "true"
    return out


attempt("hostname", lambda: os.uname().nodename)  # (what platform.node, .release and .machine read)
attempt("os", os_release)
attempt("kernel", lambda: os.uname().release)
attempt("arch", lambda: os.uname().machine)
attempt("glibc", lambda: os.confstr("CS_GNU_LIBC_VERSION"))
attempt("python", this_python)
attempt("pythons", pythons)
attempt("init", init_system)
attempt("container", container)
attempt("disk", disk)
attempt("user", user)
attempt("tools", tools)
attempt("driver_files", lambda: {"proc": read("/proc/driver/nvidia/version"),
                                  "sys": read("/sys/module/nvidia/version")})
attempt("nvml", nvml)
attempt("gpu_fingerprint", gpu_fingerprint)
attempt("state", state)
attempt("nvidia_smi", smi)  # both, so that where they disagree the probe can say so
attempt("pod_env", pod_env)
sys.stdout.write(to_json(OUT))
