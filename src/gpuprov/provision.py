"""``invoke provision``: probe → plan (refuse before touching anything) → playbooks/vllm.yml → readiness.

``plan_for`` is the plan step (vars validated, the model resolved, the planner, the disk check); this module
also builds the ``gp`` vars the playbook uses (paths, pins, indexes, the env file's contents and the secrets)
from the plan, the facts and the host's vars, and runs the play with the executor.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import health, remote, settings
from .connection import known_hosts, open_runner
from .errors import ModelUnavailable, RemoteError, UsageError
from .executor import HostRecap, HostRun, RunOptions, apply_one, service_op, template_dirs
from .facts import Facts
from .fleet import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, for_each_host
from .hostlock import HostSession
from .hub import local_model_dir, resolve_model
from .inventory import Host
from .layout import HostLayout
from .plan import Plan, engine_vars, make_plan, with_pod_env
from .playbook import load_playbook
from .probe import run_probe
from .runpod import hf_token as pod_hf_token
from .secrets import Secret, new_api_key, write_private
from .templating import Templar

BOOTSTRAP_PINS = ["uv==0.13.9", "huggingface-hub==2.4.0"]
VENV_OVERHEAD_GIB = 12.0  # a CUDA torch + vLLM venv is about 10 GB


@dataclass
class ProvisionResult:
    host: str
    plan: Plan | None = None
    recap: HostRecap | None = None
    readiness: Any = None
    refused: str | None = None
    #: the new configuration failed and the last verified one was put back and answers again
    rolled_back: bool | None = None
    #: seconds per phase (connect, probe, bootstrap, engine install, kernels, weights, engine start, verify)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def exit_code(self) -> int:
        if self.refused:
            return EXIT_REFUSED
        if self.recap is None:
            return EXIT_FAILED
        if self.recap.exit_code != EXIT_OK:
            return self.recap.exit_code
        return EXIT_OK if self.readiness is None or self.readiness.ready else EXIT_FAILED


#: the playbook's tasks by phase (name prefixes, first match wins); the rest configure and start the engine
PHASE_OF_TASK = (("weights fetcher", "weights"), ("start the weights download", "weights"),
                 ("weights downloaded", "weights"), ("engine venv", "engine install"), ("vLLM ", "engine install"),
                 ("vllm download-kernels", "kernels"), ("engine launcher", "engine start"),
                 ("systemd unit", "engine start"), ("unit is valid", "engine start"),
                 ("record the verified unit", "engine start"), ("supervisor", "engine start"),
                 ("engine running", "engine start"), ("restart vllm", "engine start"),
                 ("record what is installed", "engine start"))


def task_phases(recap: HostRecap) -> dict[str, float]:
    """The play's time by phase (everything before the engine venv that is not the weights is bootstrap)."""
    out: dict[str, float] = {}
    for r in recap.results:
        phase = next((ph for prefix, ph in PHASE_OF_TASK if r.task.startswith(prefix)), "bootstrap")
        out[phase] = out.get(phase, 0.0) + r.duration_s
    return out


def plan_for(host: Host, facts: Facts) -> Plan:
    """The plan step: the pod's own knobs as defaults, vars validated, the model resolved (catalog, folder, hub),
    the planner."""
    host = with_pod_env(host, facts)
    spec, err = resolve_spec(host)
    plan = make_plan(facts, host, spec, err, hf_token=hf_token_for(facts) is not None)
    if host.var("deployment") == "replicas" and host.var("deployment_group"):
        plan = replace(plan, deployment="replicas", group=str(host.var("deployment_group")))
    return plan


def resolve_spec(host: Host) -> tuple[Any, str | None]:
    """The host's model (catalog, folder, hub), or None and why it cannot be read; vars validated first."""
    ev = engine_vars(host)  # validates vars before any network use
    try:
        return resolve_model(ev.model, endpoint=str(host.var("hf_endpoint") or "") or None), None
    except ModelUnavailable as e:
        return None, str(e)


def hf_token_for(facts: Facts) -> Secret | None:
    """HF_TOKEN here, else the one set on the pod (HF_TOKEN / HUGGING_FACE_HUB_TOKEN in its own environment)."""
    here = os.environ.get("HF_TOKEN")
    return Secret(here, "HF_TOKEN") if here else pod_hf_token(facts.pod_env)


def local_model_refusal(model: str) -> str | None:
    """A model given as a folder on this machine cannot be served on another one: refuse before connecting."""
    if local_model_dir(model) is None:
        return None
    return (f"model {model} is a folder on this machine; provision serves models the host downloads from a hub, "
            f"so give a hub id (a private repo with HF_TOKEN, or a mirror with -e hf_endpoint=URL); "
            f"`invoke plan --model {model}` still sizes the folder offline")


def api_key_for(host: Host, plan: Plan) -> Secret | None:
    """The API key: given in vars, or generated once and kept 0600 in .gpuprov/secrets/HOST.api_key."""
    given = host.var("api_key")
    if isinstance(given, Secret) and given.reveal():
        return given
    if given:
        return Secret(str(given), "api_key")
    if not plan.api_key_required:
        return None
    path = settings.api_key_file(host.name)
    if path.is_file():
        return Secret(path.read_text().strip(), "api_key")
    key = new_api_key()
    write_private(path, key.reveal() + "\n")
    return key


def gp_vars(host: Host, facts: Facts, plan: Plan) -> dict[str, Any]:
    lay = HostLayout(plan.install_root)
    root = lay.root
    index = host.var("package_index")
    torch_backend = host.var("torch_backend", plan.torch_backend)
    if index:  # the host's own index replaces the planned ones (mirrors, the lab)
        extra: list[str] = []
    else:
        extra = [plan.extra_index_url] if plan.extra_index_url else []
    env = dict(plan.env)
    if host.var("hf_endpoint"):
        env["HF_ENDPOINT"] = str(host.var("hf_endpoint"))
    hf_token = hf_token_for(facts)
    api_key = api_key_for(with_pod_env(host, facts), plan)
    # the uv cache and the venvs live under the same install root, so uv hardlinks files out of its cache (its
    # default on Linux; it copies by itself across file systems): copying a 1 GB engine venv tripled the install
    # a Python uv fetches lives under the install root too: on a pod, everything outside /workspace goes at a reset
    uv_env = {"UV_CACHE_DIR": lay.uv_cache, "UV_PYTHON_INSTALL_DIR": f"{root}/python"}
    if not plan.python_managed:
        uv_env["UV_PYTHON_DOWNLOADS"] = "never"
    state = {"model": plan.model, "vllm_version": plan.vllm_version, "cuda_variant": plan.cuda_variant,
             # a fingerprint lets the next probe skip nvidia-smi: only when the two agreed
             "gpu_fingerprint": None if facts.gpu_disagreement else facts.gpu_fingerprint,
             "venv": plan.venv, "serve_args": list(plan.serve_args), "service_manager": plan.service_manager,
             "engine_port": plan.engine_port, "engine_host": plan.engine_host, **lay.to_state()}
    if plan.deployment != "single":  # status and control read how this host serves with the others
        state.update(deployment=plan.deployment, group=plan.group)
    if plan.deployment == "multinode":
        state.update(role=plan.role, node_rank=plan.node_rank, nnodes=plan.nnodes, master_addr=plan.master_addr,
                     master_port=plan.master_port, private_address=plan.private_address, interface=plan.interface,
                     tensor_parallel_size=plan.tensor_parallel_size,
                     pipeline_parallel_size=plan.pipeline_parallel_size)
    unit_text_hash = hashlib.sha256(json.dumps([plan.serve_args, plan.vllm_version, root]).encode()).hexdigest()[:12]
    return {
        "root": root, "bootstrap": lay.bootstrap, "uv": lay.uv, "venv": plan.venv,
        "bootstrap_pins": BOOTSTRAP_PINS,
        "engine_pins": [f"vllm=={plan.vllm_version}"],
        "index_url": index or None, "extra_index_urls": extra,
        "torch_backend": None if index else torch_backend,
        "uv_env": uv_env, "env": env, "env_file": lay.env_file,
        "hf_token": hf_token, "api_key": api_key,
        "service": lay.service, "launcher": lay.launcher, "unit": lay.unit, "unit_hash": unit_text_hash,
        "log": lay.log, "pidfile": lay.pidfile, "supervisor": lay.supervisor,
        "supervisor_source": remote.source("supervise"),
        "fetch_script": lay.fetch_script,
        "fetch_source": remote.source("fetch_weights"),
        "weights_marker": f"{plan.hf_home}/.gpuprov/{plan.model.replace('/', '--')}.done",
        "weights_timeout": int(host.var("weights_timeout", 7200)),
        "min_free_gib": float(host.var("weights_min_free_gib", round((plan.model_gib or 0) * 1.05, 1))),
        "state_json": json.dumps(state, indent=1, sort_keys=True) + "\n",
        # a multinode node is installed first and started with the others (gpuprov.multinode)
        "group_start": plan.deployment == "multinode",
    }


def gated_refusal(host: Host, plan: Plan) -> str | None:
    """A gated model without HF_TOKEN fails at the download, after the engine install: refuse it first. A host with
    its own hub (hf_endpoint: a mirror, the lab) decides for itself."""
    if not plan.needs_hf_token or host.var("hf_endpoint"):
        return None
    return (f"{plan.model} is gated on the hub and HF_TOKEN is not set here: accept the model's license on "
            f"huggingface.co/{plan.model} with your account, then export HF_TOKEN=<a read token of that account>")


def disk_refusal(facts: Facts, plan: Plan) -> str | None:
    need = (plan.model_gib or 0) + VENV_OVERHEAD_GIB
    free = (facts.disk_free_bytes or 0) / 2**30
    if facts.disk_free_bytes is not None and free < need:
        return (f"only {free:.1f} GiB free under {facts.install_root}; the weights ({plan.model_gib:g} GiB) and the "
                f"engine venv (~{VENV_OVERHEAD_GIB:g} GiB) need {need:.1f} GiB — grow the volume or free space")
    return None


def playbook_path() -> Path:
    return settings.project_file("playbooks/vllm.yml")


def provision_host(host: Host, runner: Any, *, check: bool = False, diff: bool = False, verify: bool = True,
                   on_event: Callable | None = None, on_progress: Callable[[str, str], None] | None = None,
                   ready_timeout: float = 1800) -> ProvisionResult:
    with HostSession(runner) as session:  # one exec: the probe, the run lock and the state gathering
        t0 = time.monotonic()
        facts = run_probe(session, check_sftp=False, quick=True)
        plan = plan_for(host, facts)
        probe_s = time.monotonic() - t0
        if not plan.ok:
            return ProvisionResult(host.name, plan, refused=plan.reason)
        refusal = gated_refusal(host, plan) or disk_refusal(facts, plan)
        if refusal:
            return ProvisionResult(host.name, plan, refused=refusal)
        gp = gp_vars(host, facts, plan)
        lay = HostLayout(plan.install_root)
        owner = f"provision by {getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"
        work_lock = lay.work_lock if facts.tools.get("flock") else None
        session.lock(lay.lock, owner, wait=float(host.var("lock_wait", 0) or 0), work_lock=work_lock)
        result = _run_locked(host, runner, facts, plan, gp, check, diff, verify, on_event, on_progress,
                             ready_timeout, work_lock, session)
        result.phases = {"probe": round(probe_s, 3), **result.phases}
        return result


def _run_locked(host, runner, facts, plan, gp, check, diff, verify, on_event, on_progress, ready_timeout,  # noqa: ANN001, ANN202
                work_lock=None, session=None):
    path = playbook_path()
    plays, templar = _playbook(str(path), path.stat().st_mtime_ns)
    opts = RunOptions(check=check, diff=diff, on_event=on_event, on_progress=on_progress)
    extra = {"plan": plan.to_json(), "facts": facts.to_json(), "gp": gp}
    recap = None
    for p in plays:
        r = HostRun(p, host, runner, facts, extra, templar, opts, work_lock, gather_runner=session).run()
        recap = r if recap is None else recap
    assert recap is not None
    result = ProvisionResult(host.name, plan, recap)
    if check or not verify or recap.failed or recap.unreachable:
        return result
    def wait() -> Any:  # inside the session (the run lock held through the proof): no exec of its own
        return health.wait_ready(
            session or runner, manager=plan.service_manager, unit=gp["service"], log=gp["log"], pidfile=gp["pidfile"],
            port=plan.engine_port, env_file=gp["env_file"], model=plan.model, timeout=ready_timeout,
            on_progress=(lambda text: on_progress(host.name, text)) if on_progress else None)

    result.readiness = wait()
    result.phases = {k: round(v, 3) for k, v in task_phases(recap).items()}
    comp_s = ((result.readiness.completion or {}).get("ms") or 0) / 1000
    result.phases["engine start"] = round(result.phases.get("engine start", 0) + result.readiness.seconds - comp_s, 3)
    result.phases["verify"] = round(comp_s, 3)
    if result.readiness.ready:
        if recap.changed or not facts.installed.get(gp["root"], {}).get("_good"):
            _keep_as_good(runner, gp)  # this configuration is proven: the one to return to
    elif recap.changed and _restore_good(runner, gp):
        # the new configuration does not start: put the last verified one back so the endpoint keeps serving
        lay = HostLayout(gp["root"], gp["service"])
        try:
            apply_one(runner, service_op(lay, plan.service_manager, "restarted", "roll back"), work_lock)
            result.rolled_back = wait().ready
        except RemoteError:
            result.rolled_back = False
    recap.execs = getattr(runner, "exec_count", 0)
    return result


@functools.lru_cache(maxsize=4)
def _playbook(path: str, mtime_ns: int) -> tuple[list[Any], Templar]:
    """The provisioning playbook, parsed once, and one Templar for all hosts of a run (templates and expressions
    compile once; rendering is per host), as ``invoke play`` does."""
    return load_playbook(path), Templar(template_dirs(Path(path)))


def _good_files(gp: dict) -> list[str]:
    return HostLayout(gp["root"], gp["service"]).good_files()


def _keep_as_good(runner: Any, gp: dict) -> None:
    """Copy the verified launcher, env file (0600 kept), unit and state aside as *.good."""
    runner.run(["sh", "-c", 'for f in "$@"; do if [ -e "$f" ]; then cp -p "$f" "$f.good"; fi; done', "sh",
                *_good_files(gp)], timeout=60).check()


def _restore_good(runner: Any, gp: dict) -> bool:
    """Put the last verified configuration back; False when there is none (a first provision)."""
    res = runner.run(["sh", "-c", '[ -e "$1.good" ] || exit 3; for f in "$@"; do if [ -e "$f.good" ]; then '
                      'cp -p "$f.good" "$f"; fi; done', "sh", *_good_files(gp)], timeout=60)
    return res.ok


def provision(hosts: Sequence[Host], **kw: Any) -> list[ProvisionResult]:
    def one(h: Host) -> ProvisionResult:
        t0 = time.monotonic()
        runner = open_runner(h, known_hosts())
        connect_s = time.monotonic() - t0
        try:
            result = provision_host(h, runner, **kw)
            result.phases = {"connect": round(connect_s, 3), **result.phases}
            return result
        finally:
            runner.close()

    for h in hosts:
        refusal = local_model_refusal(engine_vars(h).model)  # absurd values fail before any connection
        if refusal:
            raise UsageError(f"{h.name}: {refusal}")
    return [o.value if o.value is not None else
            ProvisionResult(o.host.name, recap=HostRecap.of_error(o.host.name, o.error or RuntimeError("no result")))
            for o in for_each_host(hosts, one)]
