"""The simulated lab: GPU hosts you can SSH into, on this machine, for trying gpuprov and for its tests.

Each host is a network namespace with its own address on a private bridge, its own hostname, ``/root``,
``/opt``, ``/usr/local`` and ``/tmp``, and a real OpenSSH server. A ``--systemd`` host is a real systemd
booted in an nspawn container (rootfs from debootstrap, built once and cached as a tarball).

What is *not* real, and says so: the GPU. A host's ``nvidia-smi`` is a stand-in script answering from
a recorded ``nvidia-smi -q -x`` file (its "persona"); ``--gpu none`` means no NVIDIA driver at all.

A ``--runpod`` host behaves like a RunPod pod: no systemd, a private ``/workspace`` that is all that survives
``reset`` (which kills the host's processes, wipes everything else private, makes a new host key and moves sshd
to a new port, as a pod reset does), and PID 1's environment and ``/etc/rp_environment`` holding ``RUNPOD_*``,
``HF_HOME`` and the ``--pod-env`` knobs, which SSH sessions do not see. The lab's STAND-IN of RunPod's v2 API
(``runpod_api.py``) lists these hosts. A ``--ssh-proxy-only`` host's sshd behaves like RunPod's SSH proxy: an
interactive PTY only; a command without a PTY, SFTP and port forwarding are refused the way the proxy refuses them.

Needs root, ``ip`` (iproute2), ``sshd`` (openssh-server) and, for ``--systemd``, ``systemd-nspawn``
(systemd-container) and ``debootstrap``. Only processes the lab started are ever killed, by PID or by
membership of the lab's own network namespaces.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import LabError
from ..facts import cc_from_name, parse_smi_xml
from . import nvml, runpod_api
from .cache import LAB_CACHE

# the lab's cache, outside any clone: the systemd rootfs, third-party wheels, the real engine (real_engine.py)
# libnuma1: the real vLLM CPU build's kernels link it (a VM image that runs vLLM has it; minbase does not)
ROOTFS_PACKAGES = ("systemd,systemd-sysv,dbus,openssh-server,iproute2,python3,python3-venv,curl,ca-certificates,"
                   "procps,libnuma1")
ROOTFS_VERSION = "bookworm-v2"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
ENGINES = ("standin", "real")
#: a pod's /workspace: where this machine has none, /workspace is made a link into /usr/local, which every plain
#: sim host has privately; only a pod mounts its own folder there, so on other hosts (and here) the link dangles.
#: The link stays (like an empty mount point): another lab on this machine may have a pod using it.
SIM_SHARE = "/usr/local/share/gpuprov-sim"
WORKSPACE_TARGET = f"{SIM_SHARE}/workspace"
PROXY_MESSAGE = "Error: Your SSH client doesn't support PTY"


@dataclass
class SimHost:
    name: str
    index: int
    address: str
    systemd: bool
    gpu: str  # persona path, or "none"
    pid: int  # sshd (plain) or systemd-nspawn (systemd) pid
    netns: str
    veth: str
    dir: str
    gpu_mode: str = ""
    workspace: bool = False
    engine: str = "standin"  # or "real": the lab serves it the real vLLM CPU build (real_engine.py)
    runpod: bool = False  # a RunPod-like pod (see the module docstring)
    port: int = 22  # sshd's port (a pod's: the "public port mapped to 22", new at every reset)
    pod_id: str = ""
    pod_env: dict = field(default_factory=dict)  # the knobs given with --pod-env (the pod's template env)
    started_at: str = ""  # when the pod (re)started: the stand-in API's startedAt
    proxy_only: bool = False  # sshd behaves like RunPod's PTY-only SSH proxy


def _run(argv: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv)} ran past {timeout} s") from None
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed "
                       "(the lab needs iproute2, openssh-server, systemd-container)") from None
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return p


def find_persona(spec: str, search: list[Path] | None = None) -> Path:
    """``--gpu`` value → a recorded XML: a path, or the name of a bundled persona (or one on GPUPROV_PERSONA_PATH)."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p.resolve()
    stem = spec[:-4] if spec.endswith(".xml") else spec
    dirs = [Path(str(resources.files(__package__).joinpath("personas")))] + (search or [])
    dirs += [Path(d) for d in os.environ.get("GPUPROV_PERSONA_PATH", "").split(":") if d]
    for d in dirs:
        f = d / f"{stem}.xml"
        if f.is_file():
            return f.resolve()
    known = sorted({x.stem for d in dirs if d.is_dir() for x in d.glob("*.xml")})
    raise LabError(f"no GPU persona {spec!r}: give a path to an nvidia-smi -q -x file or one of: {', '.join(known)}")


class Lab:
    """A set of simulated hosts sharing one bridge; state lives in ``dir/state.json``."""

    def __init__(self, dir: str | Path, prefix: str = "gps", subnet: str = "10.231.0.0/24"):
        if not re.match(r"^[a-z][a-z0-9]{1,5}$", prefix):
            raise LabError(f"lab prefix {prefix!r} must be 2-6 lowercase letters/digits")
        self.dir = Path(dir).resolve()
        self.prefix = prefix
        self.net = ipaddress.ip_network(subnet)
        self.bridge = f"{prefix}br0"
        self.bridge_ip = str(self.net.network_address + 1)

    # ----------------------------------------------------------- state
    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            yield

    def hosts(self) -> dict[str, SimHost]:
        if not self.state_file.is_file():
            return {}
        data = json.loads(self.state_file.read_text())
        return {h["name"]: SimHost(**h) for h in data.get("hosts", [])}

    def _save(self, hosts: dict[str, SimHost]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"hosts": [asdict(h) for h in hosts.values()]}, indent=1))
        os.replace(tmp, self.state_file)

    @property
    def client_key(self) -> Path:
        return self.dir / "id_ed25519"

    def _ensure_client_key(self) -> None:
        if not self.client_key.is_file():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpuprov-sim", "-f", str(self.client_key)])

    # ----------------------------------------------------------- network
    def _ensure_bridge(self) -> None:
        if _run(["ip", "link", "show", self.bridge], check=False).returncode == 0:
            return
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.bridge_ip}/{self.net.prefixlen}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

    def _drop_bridge_if_unused(self) -> None:
        if not self.hosts():
            self.stop_services()
            _run(["ip", "link", "del", self.bridge], check=False)

    # ----------------------------------------------------------- services (package index + model hub)
    SERVICES_PORT = 8765

    @property
    def services_url(self) -> str:
        return f"http://{self.bridge_ip}:{self.SERVICES_PORT}"

    def ensure_services(self) -> None:
        pidfile = self.dir / "services.pid"
        if pidfile.is_file() and Path(f"/proc/{pidfile.read_text().strip()}").exists():
            return
        with socket.socket() as probe_sock:
            if probe_sock.connect_ex((self.bridge_ip, self.SERVICES_PORT)) == 0:
                raise LabError(f"another gpuprov lab already serves {self.services_url} on bridge {self.bridge}; "
                               "take it down (`invoke sim-down` with its GPUPROV_HOME) or use GPUPROV_SIM_PREFIX and "
                               "GPUPROV_SIM_SUBNET to run a second lab")
        from .content import prepare

        root = self.dir / "services"
        prepare(root)
        log = open(self.dir / "services.log", "ab")
        import sys

        p = subprocess.Popen([sys.executable, "-m", "gpuprov.sim.services", "--dir", str(root),
                              "--bind", self.bridge_ip, "--port", str(self.SERVICES_PORT)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        log.close()
        assert p.stdout is not None
        line = p.stdout.readline()
        if b"ready" not in line:
            raise LabError(f"the lab's package index did not start; see {self.dir / 'services.log'}")
        pidfile.write_text(str(p.pid))

    def stop_services(self) -> None:
        pidfile = self.dir / "services.pid"
        if pidfile.is_file():
            try:
                _kill_pid(int(pidfile.read_text().strip()), signal.SIGTERM, wait=3)
            except ValueError:
                pass
            pidfile.unlink()

    def ensure_real_engine(self) -> None:
        """Serve the real vLLM CPU build at /real/simple and the tiny model on the hub (built once, cached)."""
        from . import real_engine
        from .content import third_party_wheels

        root = self.dir / "services"
        real = root / "real-wheels"
        real.mkdir(parents=True, exist_ok=True)
        for w in [*real_engine.wheelhouse().iterdir(), *third_party_wheels()]:
            if w.suffix in (".whl", ".sha256") and not (real / w.name).exists():
                (real / w.name).symlink_to(w)
        model = root / "hub" / real_engine.MODEL_ID
        if not (model / "config.json").is_file():
            shutil.copytree(real_engine.model_repo(), model, dirs_exist_ok=True)

    def _make_netns(self, h: SimHost, peer: str) -> None:
        _run(["ip", "netns", "add", h.netns])
        _run(["ip", "link", "add", h.veth, "type", "veth", "peer", "name", peer, "netns", h.netns])
        _run(["ip", "link", "set", h.veth, "master", self.bridge, "up"])
        _run(["ip", "-n", h.netns, "addr", "add", f"{h.address}/{self.net.prefixlen}", "dev", peer])
        _run(["ip", "-n", h.netns, "link", "set", peer, "up"])
        _run(["ip", "-n", h.netns, "link", "set", "lo", "up"])

    # ----------------------------------------------------------- up
    def up(self, name: str, gpu: str = "none", systemd: bool = False, gpu_mode: str = "",
           workspace: bool = False, engine: str = "standin", wait: float = 60, runpod: bool = False,
           pod_env: dict | None = None, proxy_only: bool = False) -> SimHost:
        if engine not in ENGINES:
            raise LabError(f"--engine {engine!r}: use one of {', '.join(ENGINES)}")
        nvml.check_mode(gpu_mode)
        if not NAME_RE.match(name):
            raise LabError(f"sim host name {name!r}: "
                           "use 1-20 lowercase letters, digits and dashes, starting with a letter")
        if (runpod or proxy_only) and systemd:
            raise LabError("--runpod and --ssh-proxy-only hosts are containers without systemd; drop --systemd")
        if pod_env and not runpod:
            raise LabError("--pod-env sets a RunPod pod's environment; add --runpod")
        for k in pod_env or {}:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise LabError(f"--pod-env {k!r}: a variable name is letters, digits and _")
        if os.geteuid() != 0:
            raise LabError("the simulated lab needs root (network namespaces, mounts)")
        persona = "none" if gpu == "none" else str(find_persona(gpu))
        with self._locked():
            hosts = self.hosts()
            if name in hosts:
                raise LabError(f"sim host {name!r} already exists; `invoke sim-down --name {name}` first")
            used = {h.index for h in hosts.values()}
            index = next(i for i in range(1, 200) if i not in used)
            address = str(self.net.network_address + 9 + index)
            hdir = self.dir / "hosts" / name
            if hdir.exists():
                shutil.rmtree(hdir)
            hdir.mkdir(parents=True)
            h = SimHost(name, index, address, systemd, persona, 0, f"{self.prefix}-{name}", f"{self.prefix}v{index}",
                        str(hdir), gpu_mode, workspace or runpod, engine, runpod=runpod, pod_env=dict(pod_env or {}),
                        proxy_only=proxy_only)
            if runpod:
                h.pod_id = "".join(random.SystemRandom().choices("abcdefghijklmnopqrstuvwxyz0123456789", k=14))
                h.port, h.started_at = self._new_port(hosts), _now()
            self._ensure_client_key()
            self._ensure_bridge()
            self.ensure_services()
            if engine == "real":
                self.ensure_real_engine()
            self._new_host_key(h)
            try:
                if systemd:
                    self._up_systemd(h)
                else:
                    self._make_netns(h, "eth0")
                    self._up_plain(h)
            except BaseException:
                self._teardown(h)
                raise
            hosts[name] = h
            self._save(hosts)
        self._wait_ssh(h, wait)
        return h

    def _wait_ssh(self, h: SimHost, wait: float) -> None:
        try:
            wait_for_ssh(h.address, h.port, wait)
        except LabError:
            log = (Path(h.dir) / ("console.log" if h.systemd else "sshd.log"))
            tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
            self.down(h.name)
            raise LabError(f"sim host {h.name} did not answer SSH within {wait:g} s\n{tail}") from None

    def _new_port(self, hosts: dict[str, SimHost]) -> int:
        """A pod's "public port mapped to 22": random, as RunPod's are, and new at every reset."""
        used = {h.port for h in hosts.values()}
        rng = random.SystemRandom()
        return next(p for p in iter(lambda: rng.randrange(10000, 60000), None) if p not in used)

    def _new_host_key(self, h: SimHost) -> None:
        d = Path(h.dir)
        for f in (d / "host_ed25519", d / "host_ed25519.pub"):
            f.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"sim-{h.name}", "-f", str(d / "host_ed25519")])

    # ----------------------------------------------------------- a pod's reset
    def reset(self, name: str, wait: float = 60) -> SimHost:
        """What a RunPod pod reset does: every process of the host ends, everything private but /workspace is
        wiped, the host key is made anew (the image's start script does that at boot) and sshd gets a new port."""
        with self._locked():
            hosts = self.hosts()
            if name not in hosts:
                raise LabError(f"no sim host {name!r} (have: {', '.join(hosts) or 'none'})")
            h = hosts[name]
            if not h.runpod:
                raise LabError(f"sim host {name} is not a RunPod pod (`invoke sim-up --runpod`); only pods reset")
            self._kill_processes(h)
            d = Path(h.dir)
            for sub in ("root", "opt", "usrlocal", "etcup", "etcwork", "libup", "libwork"):
                shutil.rmtree(d / sub, ignore_errors=True)
            self._new_host_key(h)
            h.port, h.started_at = self._new_port({k: v for k, v in hosts.items() if k != name}), _now()
            self._up_plain(h)
            self._save(hosts)
        self._wait_ssh(h, wait)
        return h

    def rekey(self, name: str) -> None:
        """A new host key on a running host, without a restart (what an attacker in the middle would present)."""
        h = self.hosts()[name]
        self._new_host_key(h)
        etc = Path(h.dir) / "usrlocal" / "etc" / "sshd"
        shutil.copy(Path(h.dir) / "host_ed25519", etc / "host_ed25519")
        sshd = [p for p in _run(["ip", "netns", "pids", h.netns], check=False).stdout.split()
                if b"[listener]" in Path(f"/proc/{p}/cmdline").read_bytes()]  # sshd's title for its listener
        for pid in sshd:  # sshd re-executes itself on SIGHUP and reads its host key again
            os.kill(int(pid), signal.SIGHUP)
        time.sleep(0.5)
        wait_for_ssh(h.address, h.port, 20)

    def _gpu_files(self, h: SimHost, usrlocal: Path, libdir: Path) -> None:
        """The stand-in driver: nvidia-smi answering from the persona, and NVML (the real pynvml in front of the
        lab's stand-in library, reading the same persona) unless the mode takes it away."""
        (usrlocal / "bin").mkdir(parents=True, exist_ok=True)
        share = usrlocal / "share" / "gpuprov-sim"
        share.mkdir(parents=True, exist_ok=True)
        if h.gpu == "none":
            return
        nvml.install(Path(h.gpu), h.gpu_mode, share, usrlocal, libdir)
        xml = Path(h.gpu).read_bytes()
        (share / "nvidia-smi.xml").write_bytes(xml)
        rep = parse_smi_xml(xml.decode("utf-8", "replace"))
        (share / "compute_cap").write_text(" ".join(cc_from_name(g.name) or "[N/A]" for g in rep.gpus) + "\n")
        if h.gpu_mode:
            (share / "mode").write_text(h.gpu_mode + "\n")
        smi = usrlocal / "bin" / "nvidia-smi"
        smi.write_bytes(resources.files(__package__).joinpath("files/nvidia-smi").read_bytes())
        smi.chmod(0o755)

    def _sshd_config(self, h: SimHost, authorized: str, hostkey: str) -> str:
        # a proxy-only host: RunPod's ssh.runpod.io STAND-IN (PTY shells only; no commands, SFTP or forwarding)
        proxy = [f"ForceCommand {SIM_SHARE}/proxy-gate", "AllowTcpForwarding no",
                 "PermitTTY yes"] if h.proxy_only else ["AllowTcpForwarding yes", "Subsystem sftp internal-sftp"]
        return "\n".join([
            "# gpuprov simulated host",
            "ListenAddress 0.0.0.0",
            f"Port {h.port}",
            f"HostKey {hostkey}",
            "PidFile none",
            f"AuthorizedKeysFile {authorized}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "MaxStartups 200",
            "MaxSessions 100",
            "LogLevel VERBOSE",
            *proxy,
            "",
        ])

    def _up_plain(self, h: SimHost) -> None:
        d = Path(h.dir)
        for sub in ("root", "opt", "usrlocal", "workspace"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "root").chmod(0o700)
        (d / "hostname").write_text(h.name + "\n")
        self._gpu_files(h, d / "usrlocal", d / "libup")
        # sshd's own files live in the host's /usr/local/etc/sshd: paths as seen *inside* the host, because
        # the host's private /tmp may hide the lab folder.
        etc = d / "usrlocal" / "etc" / "sshd"
        etc.mkdir(parents=True)
        inside = "/usr/local/etc/sshd"
        shutil.copy(self.client_key.with_suffix(".pub"), etc / "authorized_keys")
        shutil.copy(d / "host_ed25519", etc / "host_ed25519")
        (etc / "sshd_config").write_text(self._sshd_config(h, f"{inside}/authorized_keys", f"{inside}/host_ed25519"))
        if h.proxy_only:
            gate = d / "usrlocal" / SIM_SHARE.removeprefix("/usr/local/") / "proxy-gate"
            gate.write_text("#!/bin/sh\n# STAND-IN of RunPod's SSH proxy: an interactive terminal, nothing else\n"
                            f'if [ ! -t 0 ]; then echo "{PROXY_MESSAGE}"; exit 1; fi\nexec /bin/sh -i\n')
            gate.chmod(0o755)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        mounts = [["hostname", h.name],
                  ["mount", "--bind", str(d / "root"), "/root"],
                  ["mount", "--bind", str(d / "opt"), "/opt"],
                  ["mount", "--bind", str(d / "usrlocal"), "/usr/local"]]
        if h.runpod:  # a pod's own /etc, holding the start script's /etc/rp_environment
            for sub in ("etcup", "etcwork"):
                (d / sub).mkdir(exist_ok=True)
            (d / "etcup" / "hostname").write_text(h.name + "\n")
            (d / "etcup" / "rp_environment").write_text(
                "".join(f"export {k}={_q(v)}\n" for k, v in sorted(self._pod_environment(h).items())
                        if k != "PUBLIC_KEY"))
            mounts.append(["mount", "-t", "overlay", "overlay", "-o",
                           f"lowerdir=/etc,upperdir={d / 'etcup'},workdir={d / 'etcwork'}", "/etc"])
        else:
            mounts.append(["mount", "--bind", str(d / "hostname"), "/etc/hostname"])
        if h.workspace:
            mounts += self._workspace_mounts(d)
        if (d / "libup").is_dir():  # this host's view of the library folder gains the NVML stand-in
            (d / "libwork").mkdir(exist_ok=True)
            mounts.append(["mount", "-t", "overlay", "overlay", "-o",
                           f"lowerdir={nvml.MULTIARCH_LIB},upperdir={d / 'libup'},workdir={d / 'libwork'}",
                           str(nvml.MULTIARCH_LIB)])
        mounts += [
            ["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/tmp"],
            ["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/var/tmp"],
            # its own /dev/shm, as a machine has (vLLM's shared-memory queues and leftovers stay per host)
            ["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/dev/shm"],
            ["/usr/sbin/sshd", "-t", "-f", f"{inside}/sshd_config"],
        ]
        script = "set -e\n" + "".join(" ".join(_q(a) for a in m) + "\n" for m in mounts)
        sshd = f"/usr/sbin/sshd -D -e -f {inside}/sshd_config"
        if h.runpod:  # PID 1 is the image's start script, with the pod's environment; sshd is its child
            start = d / "usrlocal" / SIM_SHARE.removeprefix("/usr/local/") / "start.sh"
            start.write_text("#!/bin/sh\n# STAND-IN of a RunPod image's /start.sh: sshd, then wait (as PID 1, reaping)"
                             f"\n{sshd} &\nwait\n")
            start.chmod(0o755)
            script += f"exec {SIM_SHARE}/start.sh\n"
        else:
            script += f"exec {sshd}\n"
        log = open(d / "sshd.log", "ab")
        # a pod's PID 1 carries its environment (RUNPOD_*, HF_HOME, the template's env); sshd gives sessions none
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **self._pod_environment(h)}
        p = subprocess.Popen(
            ["ip", "netns", "exec", h.netns, "unshare", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
             "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env,
        )
        log.close()
        h.pid = p.pid

    def _workspace_mounts(self, d: Path) -> list[list[str]]:
        """The host's own folder at /workspace: a bind mount where this machine has a /workspace folder, else at
        the place this machine's /workspace link points to (which only this host has)."""
        ws = Path("/workspace")
        if ws.is_dir() and not ws.is_symlink():
            return [["mount", "--bind", str(d / "workspace"), "/workspace"]]
        if not ws.is_symlink():
            ws.symlink_to(WORKSPACE_TARGET)
        elif os.readlink(ws) != WORKSPACE_TARGET:
            raise LabError(f"/workspace on this machine is a link to {os.readlink(ws)}, not the lab's")
        (d / "usrlocal" / WORKSPACE_TARGET.removeprefix("/usr/local/")).mkdir(parents=True, exist_ok=True)
        return [["mount", "--bind", str(d / "workspace"), WORKSPACE_TARGET]]

    def _pod_environment(self, h: SimHost) -> dict[str, str]:
        """PID 1's environment on a pod: what RunPod sets, the base image's HF_HOME, and the template's env."""
        if not h.runpod:
            return {}
        gpus = 0 if h.gpu == "none" else len(parse_smi_xml(Path(h.gpu).read_text(errors="replace")).gpus)
        return {"RUNPOD_POD_ID": h.pod_id, "RUNPOD_POD_HOSTNAME": f"{h.pod_id}-sim", "RUNPOD_GPU_COUNT": str(gpus),
                "RUNPOD_CPU_COUNT": str(os.cpu_count() or 1), "RUNPOD_PUBLIC_IP": h.address,
                "RUNPOD_TCP_PORT_22": str(h.port), "RUNPOD_DC_ID": "SIM-LAB-1",
                "RUNPOD_API_KEY": "rpa_pod_scoped_" + h.pod_id,  # a pod-scoped key: must never leave the pod
                "PUBLIC_KEY": self.client_key.with_suffix(".pub").read_text().strip(),
                "HF_HOME": "/workspace/.cache/huggingface/", "UV_CACHE_DIR": "/workspace/.cache/uv",
                "RP_WORKSPACE": "/workspace", **h.pod_env}

    def _up_systemd(self, h: SimHost) -> None:
        if not shutil.which("systemd-nspawn"):
            raise LabError("--systemd needs systemd-nspawn (apt-get install systemd-container)")
        rootfs = ensure_rootfs()
        d = Path(h.dir)
        for sub in ("upper", "work", "merged"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        up = d / "upper"
        (up / "etc/ssh/sshd_config.d").mkdir(parents=True)
        (up / "root/.ssh").mkdir(parents=True, mode=0o700)
        (up / "etc/hostname").write_text(h.name + "\n")
        (up / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {h.name}\n::1 localhost\n")
        (up / "etc/machine-id").write_text("")
        shutil.copy(self.client_key.with_suffix(".pub"), up / "root/.ssh/authorized_keys")
        for suffix in ("", ".pub"):
            shutil.copy(d / f"host_ed25519{suffix}", up / f"etc/ssh/ssh_host_ed25519_key{suffix}")
        os.chmod(up / "etc/ssh/ssh_host_ed25519_key", 0o600)
        (up / "etc/ssh/sshd_config.d/gpuprov-sim.conf").write_text(
            "Port 22\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "HostKey /etc/ssh/ssh_host_ed25519_key\nLogLevel VERBOSE\nMaxStartups 200\nMaxSessions 100\n"
        )
        self._gpu_files(h, up / "usr/local", up / str(nvml.MULTIARCH_LIB).lstrip("/"))
        _run(["mount", "-t", "overlay", "overlay", "-o",
              f"lowerdir={rootfs},upperdir={up},workdir={d / 'work'}", str(d / "merged")])
        self._make_netns(h, "host0")
        log = open(d / "console.log", "ab")
        p = subprocess.Popen(
            ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-M", h.name, "-D", str(d / "merged"),
             f"--network-namespace-path=/run/netns/{h.netns}", "-b"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
        log.close()
        h.pid = p.pid

    # ----------------------------------------------------------- down
    def down(self, name: str | None = None) -> list[str]:
        with self._locked():
            hosts = self.hosts()
            if name is not None and name not in hosts:
                raise LabError(f"no sim host {name!r} (have: {', '.join(hosts) or 'none'})")
            names = [name] if name else list(hosts)
            for n in names:
                self._teardown(hosts[n])
                del hosts[n]
                self._save(hosts)
            self._drop_bridge_if_unused()
        return names

    def _kill_processes(self, h: SimHost) -> None:
        """Every process of a plain host: its PID namespace ends with the `unshare` that holds it."""
        if h.pid:
            _kill_pid(h.pid, signal.SIGKILL, wait=3)
        for pid in _run(["ip", "netns", "pids", h.netns], check=False).stdout.split():
            _kill_pid(int(pid), signal.SIGKILL, wait=2)

    def _teardown(self, h: SimHost) -> None:
        d = Path(h.dir)
        if h.pid:
            # systemd-nspawn halts the container cleanly on SIGTERM; `unshare --fork` ignores SIGTERM, and
            # killing it (with --kill-child) ends the host's PID namespace, i.e. every process of that host
            _kill_pid(h.pid, signal.SIGTERM if h.systemd else signal.SIGKILL, wait=15 if h.systemd else 3)
        ns_exists = Path(f"/run/netns/{h.netns}").exists()
        if ns_exists:
            pids = _run(["ip", "netns", "pids", h.netns], check=False).stdout.split()
            for pid in pids:
                _kill_pid(int(pid), signal.SIGKILL, wait=2)
        if h.systemd and (d / "merged").is_dir():
            for _ in range(20):
                if (_run(["umount", str(d / "merged")], check=False).returncode == 0
                        or not os.path.ismount(d / "merged")):
                    break
                time.sleep(0.25)
        if ns_exists:
            _run(["ip", "netns", "del", h.netns], check=False)
        _run(["ip", "link", "del", h.veth], check=False)
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)

    # ----------------------------------------------------------- inventory
    def _common_vars(self, indent: str) -> list[str]:
        return [indent + x for x in (
            "user: root",
            f"identity_file: {self.client_key}",
            "# the lab's own package index and model hub (stand-ins), on the lab bridge",
            f"package_index: {self.services_url}/simple",
            f"hf_endpoint: {self.services_url}",
            "torch_backend: null",
            "engine_env: {GPUPROV_STANDIN_DELAY: '2'}")]

    def _engine_vars(self, h: SimHost, indent: str) -> list[str]:
        if h.engine != "real":
            return []
        from .real_engine import host_vars

        return ([f"{indent}sim_engine: real", f"{indent}# the real vLLM CPU build from the lab's /real index"]
                + [f"{indent}{k}: {json.dumps(v)}" for k, v in host_vars(self.services_url).items()])

    @staticmethod
    def _listed_in_sim(h: SimHost) -> bool:
        """A pod with a direct endpoint is found through the runpod source (its port moves at every reset)."""
        return not h.runpod or h.proxy_only

    def inventory_yaml(self) -> str:
        lines = [
            "# Generated by `invoke sim-up`; do not edit. Simulated hosts: the GPU is a stand-in.",
            "sim:",
            "  vars:",
            *self._common_vars("    "),
            "  hosts:",
        ]
        hosts = [h for h in self.hosts().values() if self._listed_in_sim(h)]
        if not hosts:
            lines[-1] = "  hosts: {}"
        for h in sorted(hosts, key=lambda x: x.index):
            gpu = "none" if h.gpu == "none" else Path(h.gpu).stem
            lines += [f"    {h.name}:", f"      address: {h.address}", f"      sim_gpu: {gpu}",
                      f"      sim_systemd: {'true' if h.systemd else 'false'}"]
            if h.port != 22:
                lines.append(f"      port: {h.port}")
            lines += self._engine_vars(h, "      ")
        return "\n".join(lines) + "\n"

    def runpod_inventory_yaml(self) -> str:
        pods = sorted((h for h in self.hosts().values() if h.runpod), key=lambda x: x.index)
        lines = [
            "# Generated by `invoke sim-up --runpod`; do not edit. The lab's pods, listed at every run by the lab's",
            "# STAND-IN of RunPod's v2 API (GET /v2/pods) on the lab bridge, as a `plugin: runpod` source lists yours.",
            "plugin: runpod",
            f"api_url: {self.services_url}",
            f"api_key_file: {runpod_api.key_file(self.services_root)}",
            "group: sim_runpod",
            "vars:",
            *self._common_vars("  "),
        ]
        real = [h for h in pods if h.engine == "real"]
        if real:
            lines.append("hosts:")
            for h in real:
                lines += [f"  {h.name}:", *self._engine_vars(h, "    ")]
        return "\n".join(lines) + "\n"

    @property
    def services_root(self) -> Path:
        return self.dir / "services"

    def write_inventory(self, path: Path) -> None:
        """``sim.yml`` beside ``path``'s folder, and ``sim-runpod.yml`` while any pod exists; the stand-in API's
        view of the pods is written at the same time."""
        path.parent.mkdir(parents=True, exist_ok=True)
        hosts = self.hosts()
        runpod_api.write_pods(self.services_root, [h for h in hosts.values() if h.runpod])
        rp = path.with_name("sim-runpod.yml")
        for f, text, any_ in ((path, self.inventory_yaml, any(self._listed_in_sim(h) for h in hosts.values())),
                              (rp, self.runpod_inventory_yaml, any(h.runpod for h in hosts.values()))):
            if any_:
                f.write_text(text())
            elif f.exists():
                f.unlink()

    def drop(self, name: str, address: str, port: int) -> None:
        """A firewall rule inside sim host ``name``: its TCP packets to ``address``:``port`` are dropped (nftables,
        in the host's own network namespace; gone with the host)."""
        h = self.hosts()[name]
        for rule in (["add", "table", "inet", "gpsim"],
                     ["add", "chain", "inet", "gpsim", "out", "{ type filter hook output priority 0 ; }"],
                     ["add", "rule", "inet", "gpsim", "out", "ip", "daddr", address, "tcp", "dport", str(port),
                      "drop"]):
            _run(["ip", "netns", "exec", h.netns, "nft", *rule])

    def host_public_key(self, name: str) -> str:
        h = self.hosts()[name]
        return (Path(h.dir) / "host_ed25519.pub").read_text().split()[1]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _kill_pid(pid: int, sig: int, wait: float) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if not _alive(pid):
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, waiting for a parent that is not us to reap it) is not alive."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_for_ssh(address: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise LabError(f"{address}:{port} did not answer SSH within {timeout:g} s")


# --------------------------------------------------------------------------- systemd rootfs


def debian_mirror() -> str:
    """The Debian mirror this machine's apt already uses (never hard-coded)."""
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if not f.is_file() or f.name.endswith((".disabled", ".save")) or "disabled" in f.name:
            continue
        text = f.read_text(errors="replace")
        if "debian-security" in text and "URIs:" not in text and "deb " not in text:
            continue
        for m in re.finditer(r"^URIs:\s*(\S+)", text, re.M):
            if "security" not in m.group(1):
                return m.group(1)
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\b", text, re.M):
            return m.group(1)
    raise LabError("no Debian mirror found in /etc/apt/sources.list*; the systemd rootfs cannot be built")


def ensure_rootfs(cache: Path | None = None) -> Path:
    """An unpacked Debian 12 rootfs with systemd + sshd + python3; built with debootstrap once, then cached."""
    cache = cache or LAB_CACHE
    root = cache / f"rootfs-{ROOTFS_VERSION}"
    tarball = cache / f"rootfs-{ROOTFS_VERSION}.tar.gz"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        if (root / ".gpuprov-complete").is_file():
            return root
        mounts = Path("/proc/mounts").read_text()
        for old in cache.glob("rootfs-bookworm-v*"):  # earlier versions, unless a running host still uses one
            if not old.name.startswith(f"rootfs-{ROOTFS_VERSION}") and f"lowerdir={old}" not in mounts:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        if root.exists():
            shutil.rmtree(root)
        if tarball.is_file():
            root.mkdir()
            _run(["tar", "-xzf", str(tarball), "-C", str(root)], timeout=300)
        else:
            if not shutil.which("debootstrap"):
                raise LabError("--systemd needs debootstrap (apt-get install debootstrap)")
            tmp = cache / "rootfs-building"
            if tmp.exists():
                shutil.rmtree(tmp)
            _run(["debootstrap", "--variant=minbase", f"--include={ROOTFS_PACKAGES}", "bookworm", str(tmp),
                  debian_mirror()], timeout=900)
            for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"):
                for link in tmp.glob(f"etc/systemd/system/*.wants/{unit}"):
                    link.unlink()
            (tmp / "etc/hosts").write_text("127.0.0.1 localhost\n")
            _run(["tar", "-czf", str(tarball) + ".tmp", "-C", str(tmp), "."], timeout=300)
            os.replace(str(tarball) + ".tmp", tarball)
            tmp.rename(root)
        (root / ".gpuprov-complete").write_text(ROOTFS_VERSION + "\n")
    return root
