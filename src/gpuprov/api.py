"""The functions ``tasks.py`` calls. No printing here (that is ``report``); errors are ``GpuprovError``s.

Every multi-host function runs hosts in parallel, one SSH connection per worker thread, and isolates
failures: one host's error is recorded in its ``HostOutcome`` and never stops the others.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from . import settings
from .connection import KnownHosts, open_runner, ssh_config_aliases
from .errors import GpuprovError
from .facts import Facts
from .inventory import Host, Inventory, parse_extra_vars
from .probe import run_probe

T = TypeVar("T")
#: hosts worked on at once (one thread and one SSH connection each); GPUPROV_PARALLEL overrides
MAX_PARALLEL = int(os.environ.get("GPUPROV_PARALLEL", "64"))


@dataclass(frozen=True)
class HostOutcome:
    host: Host
    value: Any = None
    error: GpuprovError | None = None
    duration_s: float = 0.0
    #: time.monotonic() when this host's work began and ended (shows that hosts overlapped)
    started: float = 0.0
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


# --------------------------------------------------------------------------- inventory


def load_inventory(path: str | Path | None = None) -> Inventory:
    p = Path(path) if path else settings.inventory_path()
    if path is None and not p.exists():
        return Inventory([], settings.defaults())
    return Inventory.from_path(p, settings.defaults())


def select_hosts(pattern: str, inventory: str | Path | None = None, extra_vars: Sequence[str] = ()) -> list[Host]:
    """``--host`` + ``-e key=value`` → hosts with the command-line vars on top."""
    extra = parse_extra_vars(extra_vars)
    hosts = load_inventory(inventory).select(pattern, ssh_config_aliases())
    return [h.with_vars(extra, "command line") if extra else h for h in hosts]


def known_hosts(strict: bool = False) -> KnownHosts:
    return KnownHosts(settings.known_hosts_file(), strict=strict)


def for_each_host(hosts: Iterable[Host], fn: Callable[[Host], T], max_workers: int = MAX_PARALLEL) -> list[HostOutcome]:
    """Run ``fn(host)`` for every host in parallel; outcomes in the hosts' order."""
    hosts = list(hosts)

    def one(h: Host) -> HostOutcome:
        start = time.monotonic()
        try:
            value, error = fn(h), None
        except GpuprovError as e:
            value, error = None, e
        end = time.monotonic()
        return HostOutcome(h, value, error, end - start, start, end)

    if len(hosts) == 1:
        return [one(hosts[0])]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(hosts))) as pool:
        return list(pool.map(one, hosts))


# --------------------------------------------------------------------------- probe


def probe_host(host: Host, strict: bool = False) -> Facts:
    runner = open_runner(host, known_hosts(strict))
    try:
        return run_probe(runner)
    finally:
        runner.close()


def probe(hosts: Iterable[Host], strict: bool = False) -> list[HostOutcome]:
    return for_each_host(hosts, lambda h: probe_host(h, strict))


# --------------------------------------------------------------------------- plan


def resolve_model(name: str, timeout: float = 20.0, endpoint: str | None = None):  # noqa: ANN201
    """(ModelSpec | None, error | None): catalog → local folder with config.json → the hub (HF_TOKEN from the
    environment; the host's ``hf_endpoint`` var, else HF_ENDPOINT)."""
    import json

    from . import models

    spec = models.lookup(name)
    if spec:
        return spec, None
    local = Path(name).expanduser()
    if (local / "config.json").is_file():
        cfg = json.loads((local / "config.json").read_text())
        idx_file = local / "model.safetensors.index.json"
        index = json.loads(idx_file.read_text()) if idx_file.is_file() else None
        size = None if index else sum(f.stat().st_size for f in local.glob("*.safetensors")) or None
        try:
            return models.from_config(name, cfg, index, size), None
        except GpuprovError as e:
            return None, str(e)
    try:
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.utils import HfHubHTTPError

        token = os.environ.get("HF_TOKEN") or None
        cfg_path = hf_hub_download(name, "config.json", token=token, etag_timeout=timeout, endpoint=endpoint)
        cfg = json.loads(Path(cfg_path).read_text())
        index, size = None, None
        try:
            index = json.loads(Path(hf_hub_download(name, "model.safetensors.index.json", token=token,
                                                    etag_timeout=timeout, endpoint=endpoint)).read_text())
        except Exception:  # noqa: BLE001 - single-file checkpoints have no index
            info = HfApi(token=token, endpoint=endpoint).model_info(name, files_metadata=True, timeout=timeout)
            size = sum(s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(".safetensors")) or None
        return models.from_config(name, cfg, index, size), None
    except GpuprovError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - network, auth, not found: a reason, not a crash
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        if os.environ.get("HF_TOKEN"):
            from .secrets import redact

            msg = redact(msg, os.environ["HF_TOKEN"])
        return None, f"cannot read {name}'s config.json from the hub: {msg}"


def plan_for(host: Host, facts: Facts):  # noqa: ANN201
    from .plan import engine_vars, make_plan

    ev = engine_vars(host)  # validates vars before any network use
    spec, err = resolve_model(ev.model, endpoint=str(host.var("hf_endpoint") or "") or None)
    return make_plan(facts, host, spec, err)


def offline_host(facts_file: str, extra_vars: Sequence[str] = ()) -> Host:
    """A host for ``invoke plan --facts FILE`` without ``--host``: named after the facts, with default vars."""
    import json

    from .errors import UsageError
    from .inventory import Host as _Host

    try:
        first = json.loads(Path(facts_file).read_text().splitlines()[0])
    except (OSError, ValueError, IndexError) as e:
        raise UsageError(f"--facts {facts_file}: {e}") from None
    h = _Host(name=str(first.get("host") or "offline"), address="offline", groups=("all",),
              vars=settings.frozen(settings.defaults()))
    extra = parse_extra_vars(extra_vars)
    return h.with_vars(extra, "command line") if extra else h


def plan(hosts: Iterable[Host], facts_file: str | None = None, strict: bool = False) -> list[HostOutcome]:
    """Probe (or read ``--facts``) and plan each host."""
    from .plan import engine_vars

    for h in hosts:
        engine_vars(h)  # absurd values: a clear error before connecting anywhere
    if facts_file:
        import json

        from .errors import UsageError

        try:
            lines = [json.loads(x) for x in Path(facts_file).read_text().splitlines() if x.strip()]
        except (OSError, ValueError) as e:
            raise UsageError(f"--facts {facts_file}: {e}") from None
        offline = [Facts.from_json(d) for d in lines]
        return for_each_host(hosts, lambda h: plan_for(h, offline[0] if len(offline) == 1 else
                                                       next((f for f in offline if f.host == h.name), offline[0])))
    return for_each_host(hosts, lambda h: plan_for(h, probe_host(h, strict)))


def forget_host(host: Host) -> bool:
    return known_hosts().forget(host.address, host.port or 22)


# --------------------------------------------------------------------------- simulated lab


def sim_lab():  # noqa: ANN201
    from .sim.lab import Lab

    return Lab(
        settings.home() / "sim",
        prefix=os.environ.get("GPUPROV_SIM_PREFIX", "gps"),
        subnet=os.environ.get("GPUPROV_SIM_SUBNET", "10.231.0.0/24"),
    )


def sim_up(name: str, gpu: str = "none", systemd: bool = False, gpu_mode: str = "", workspace: bool = False,  # noqa: ANN201
           engine: str = "standin"):
    """Start a simulated host, pin its (lab-made) host key, and add it to ``inventory/sim.yml``."""
    import paramiko

    lab = sim_lab()
    h = lab.up(name, gpu=gpu, systemd=systemd, gpu_mode=gpu_mode, workspace=workspace, engine=engine)
    kh = known_hosts()
    kh.forget(h.address, 22)
    kh.pin(h.address, paramiko.Ed25519Key(data=_b64(lab.host_public_key(name))))
    lab.write_inventory(settings.sim_inventory_file())
    return h


def sim_down(name: str | None = None) -> list[str]:
    lab = sim_lab()
    hosts = lab.hosts()
    names = lab.down(name)
    kh = known_hosts()
    for n in names:
        kh.forget(hosts[n].address, 22)
    lab.write_inventory(settings.sim_inventory_file())
    return names


def _b64(s: str) -> bytes:
    import base64

    return base64.b64decode(s)


# --------------------------------------------------------------------------- playbooks


def play(playbook: str | Path, hosts: Sequence[Host], check: bool = False, diff: bool = False,
         tags: Sequence[str] = (), on_event=None, strict: bool = False):  # noqa: ANN001, ANN201
    """Run a playbook's plays on ``hosts`` (each play on the selected hosts it matches)."""
    from .executor import RunOptions, run_play, template_dirs
    from .playbook import Templar, load_playbook

    path = Path(playbook)
    plays = load_playbook(path)
    templar = Templar(template_dirs(path))
    opts = RunOptions(check=check, diff=diff, tags=tuple(tags), on_event=on_event)
    recaps: dict[str, Any] = {}
    for p in plays:
        rs = run_play(p, hosts, lambda h: open_runner(h, known_hosts(strict)), lambda h, r: None,
                      lambda h, r, f: {}, templar, opts)
        for r in rs:
            if r.host in recaps:
                prev = recaps[r.host]
                for k in ("ok", "changed", "failed", "skipped", "time_s", "execs"):
                    setattr(prev, k, getattr(prev, k) + getattr(r, k))
                prev.unreachable |= r.unreachable
                prev.error = prev.error or r.error
                prev.results += r.results
            else:
                recaps[r.host] = r
    return list(recaps.values())


# --------------------------------------------------------------------------- tunnel


HEALTH_ARGV = ["python3", "-c",
               "import sys,urllib.request\n"
               "try:\n    urllib.request.urlopen('http://127.0.0.1:%s/health' % sys.argv[1], timeout=5); print('ok')\n"
               "except Exception as e:\n    print(e)"]


def engine_ready(host: Host, port: int) -> str | None:
    """None when the engine on ``host`` answers /health; else the reason."""
    runner = open_runner(host, known_hosts())
    try:
        out = runner.run(HEALTH_ARGV + [str(port)], timeout=20).stdout.strip()
        return None if out == "ok" else out or "no answer"
    finally:
        runner.close()


def open_tunnel(host: Host, local_port: int | None = None, remote_port: int | None = None, next_free: bool = False,
                transport: str = "auto", check_ready: bool = True):  # noqa: ANN201
    from .errors import UsageError
    from .tunnel import Tunnel, pick_port

    remote = int(remote_port or host.var("engine_port", 8000))
    if check_ready:
        why = engine_ready(host, remote)
        if why:
            raise UsageError(f"{host.name}: the engine on port {remote} is not ready ({why}); "
                             f"run `invoke provision --host {host.name}` or `invoke status --host {host.name}`")
    port = pick_port(int(local_port or remote), next_free)
    return Tunnel(host, port, remote, settings.known_hosts_file(), transport).start()


def api_key_path(host: Host) -> Path | None:
    from .provision import key_file

    p = key_file(host)
    return p if p.is_file() else None


# --------------------------------------------------------------------------- status, control, logs, teardown


def status(hosts: Sequence[Host]) -> list[HostOutcome]:
    from .status import read_status

    def one(h: Host):  # noqa: ANN202
        r = open_runner(h, known_hosts())
        try:
            return read_status(r)[0]
        finally:
            r.close()

    return for_each_host(hosts, one)


def control(hosts: Sequence[Host], action: str, wait: bool = True, timeout: float = 900) -> list[HostOutcome]:
    """start | stop | restart the engine; start/restart wait for readiness (a real completion)."""
    from .errors import UsageError
    from .health import wait_ready
    from .ops import NoOp, OpContext
    from .ops.service import Service
    from .status import read_status

    if action not in ("start", "stop", "restart"):
        raise UsageError(f"unknown action {action!r}")

    def one(h: Host):  # noqa: ANN202
        r = open_runner(h, known_hosts())
        try:
            st, raw = read_status(r)
            if st.service == "not-installed":
                raise UsageError(f"{h.name}: nothing provisioned here (no state.json); run `invoke provision` first")
            s, root = raw["state"], raw["root"]
            args = {"name": s["service"], "manager": s["service_manager"],
                    "state": {"start": "started", "stop": "stopped", "restart": "restarted"}[action]}
            if s["service_manager"] == "supervisor":
                args.update(command=[f"{root}/bin/vllm-serve"], env_file=s["env_file"], log=s["log"],
                            pidfile=s["pidfile"], supervisor=f"{root}/bin/gpuprov-supervise", workdir=root)
            op = Service(args, action)
            ctx = OpContext(r, None)
            from .executor import gather

            decision = op.check(ctx, gather(r, op.queries(ctx)))
            changed = not isinstance(decision, NoOp)
            if changed:
                for cmd in decision.commands:
                    r.run(cmd.argv, timeout=cmd.timeout).check()
            ready = None
            if wait and action != "stop":
                ready = wait_ready(r, manager=s["service_manager"], unit=s["service"], log=s["log"],
                                   pidfile=s["pidfile"], port=s["engine_port"], env_file=s["env_file"],
                                   model=s["model"], timeout=timeout)
            return {"changed": changed, "ready": ready}
        finally:
            r.close()

    return for_each_host(hosts, one)


def logs_argv(state: dict, lines: int, follow: bool) -> list[str]:
    if state["service_manager"] == "systemd":
        return ["journalctl", "-u", state["service"], "--no-pager", "-o", "cat", "-n", str(lines)] + (["-f"] * follow)
    return ["tail", "-n", str(lines)] + (["-F"] if follow else []) + [state["log"]]


def stream_logs(host: Host, lines: int, follow: bool, write) -> None:  # noqa: ANN001
    """Print the engine's log (journal or supervisor log); with follow, until interrupted."""
    import socket as _socket

    from .errors import UsageError
    from .status import read_status

    r = open_runner(host, known_hosts())
    try:
        st, raw = read_status(r)
        if st.service == "not-installed":
            raise UsageError(f"{host.name}: nothing provisioned here")
        argv = logs_argv(raw["state"], lines, follow)
        if not follow:
            write(r.run(argv, timeout=60).stdout)
            return
        import shlex

        chan = r.transport.open_session(timeout=10)
        chan.exec_command(shlex.join(argv))
        chan.settimeout(1.0)
        try:
            while True:
                try:
                    data = chan.recv(65536)
                except _socket.timeout:
                    continue
                if not data:
                    break
                write(data.decode("utf-8", "replace"))
        finally:
            chan.close()
    finally:
        r.close()


def teardown(hosts: Sequence[Host], purge: bool = False, on_event=None) -> list[HostOutcome]:  # noqa: ANN001
    from .executor import HostRun, RunOptions, template_dirs
    from .playbook import Templar, load_playbook
    from .provision import key_file
    from .status import read_status

    path = Path(__file__).resolve().parents[2] / "playbooks" / "teardown.yml"
    if (Path.cwd() / "playbooks" / "teardown.yml").is_file():
        path = Path.cwd() / "playbooks" / "teardown.yml"
    play_ = load_playbook(path)[0]

    def one(h: Host):  # noqa: ANN202
        r = open_runner(h, known_hosts())
        try:
            st, raw = read_status(r)
            if st.service == "not-installed":
                return None
            s = raw["state"]
            unit_exists = s["service_manager"] == "systemd" and st.service != "unknown"
            extra = {"st": s, "root": raw["root"], "purge": purge, "unit_exists": unit_exists}
            recap = HostRun(play_, h, r, None, extra, Templar(template_dirs(path)), RunOptions(on_event=on_event)).run()
            if not recap.failed:
                kf = key_file(h)
                if kf.exists():
                    kf.unlink()
            return recap
        finally:
            r.close()

    return for_each_host(hosts, one)
