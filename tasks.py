"""gpuprov's command line: thin Invoke tasks that parse flags, call ``gpuprov.api`` and render with ``report``.

Run ``invoke --list`` for the tasks and ``invoke --help TASK`` for one. Every task takes ``-v/--verbose`` (the
commands run on hosts, and the full error chain). Exit codes (``gpuprov.fleet``): 0 ok, 1 a host failed,
2 refused or bad input (nothing changed), 3 a host could not be reached, 4 a host is busy (locked), 130 Ctrl-C.
"""

from __future__ import annotations

import gc
import sys
from functools import wraps
from pathlib import Path

from invoke import Exit, task

HOST_HELP = "inventory host, group, comma list, ~/.ssh/config alias, or user@address:port"
VERBOSE_HELP = "show the commands run on hosts and the full error chain"
COMMON_HELP = {
    "host": HOST_HELP,
    "inventory": "inventory file or folder (default: inventory/)",
    "json": "machine-readable output (one JSON object per host per line)",
    "e": "extra var key=value (repeatable; highest precedence)",
    "verbose": VERBOSE_HELP,
}


def _finish(results):
    """Exit with the one code the hosts' results stand for (gpuprov.fleet.exit_code)."""
    from gpuprov.fleet import exit_code

    code = exit_code(results)
    if code:
        raise Exit(code=code)


def _verbose(on):
    import logging

    from gpuprov import report

    notices = logging.getLogger("gpuprov.notice")  # one-line notices (a re-pinned host key), with or without -v
    if not notices.handlers:
        handler = logging.Handler()
        handler.emit = lambda rec: report.note(rec.getMessage())
        notices.addHandler(handler)
        notices.propagate = False
        notices.setLevel(logging.INFO)
    if on:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="[%(name)s] %(message)s")
        logging.getLogger("paramiko").setLevel(logging.INFO)
        logging.getLogger("invoke").setLevel(logging.WARNING)


def _errors(fn):
    """Every way a task can end: a one-line message and its exit code; a traceback only with -v."""

    @wraps(fn)
    def wrapper(c, *args, **kwargs):
        import traceback

        from gpuprov import report
        from gpuprov.errors import GpuprovError, UsageError
        from gpuprov.fleet import one_line

        verbose = bool(kwargs.get("verbose"))
        _verbose(verbose)
        try:
            if c.config.run.dry:
                raise UsageError("invoke's --dry does not apply to gpuprov (it never runs local shell commands); "
                                 "for a dry run use `invoke provision --check --diff` or `invoke play --check`")
            return fn(c, *args, **kwargs)
        except Exit:
            raise
        except KeyboardInterrupt:
            report.error("interrupted")
            raise Exit(code=130) from None
        except BrokenPipeError:  # `invoke models | head`: the reader left; nothing to say, as with any Unix tool
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=141) from None
        except Exception as e:  # noqa: BLE001 - the CLI's last line of defence: one line, never a traceback
            if verbose:
                sys.stderr.write("".join(traceback.format_exception(e)))
            report.error(one_line(e))
            raise Exit(code=e.exit_code if isinstance(e, GpuprovError) else 1) from None
        finally:
            # the task's work is done: what the process holds now is freed at exit anyway, so the collector need
            # not walk it first (the interpreter's shutdown took ~80 ms of every command's time, ~10 ms after this)
            gc.freeze()

    return wrapper


def _number(value, flag, lo, hi):
    """A number from the command line, checked before anything connects."""
    from gpuprov.errors import UsageError

    if value is None or value == "":
        return None
    text = str(value).strip()
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise UsageError(f"{flag} {value!r}: expected a whole number from {lo} to {hi}")
    return int(text)


def _port(value, flag):
    return _number(value, flag, 1, 65535)


@task(help=COMMON_HELP | {"strict_host_keys": "refuse hosts whose key is not pinned yet"}, iterable=["e"])
@_errors
def probe(c, host, inventory=None, json=False, strict_host_keys=False, e=None, verbose=False):
    """Learn a host's GPU stack in one round trip: driver, CUDA, GPUs, OS, Python, systemd, disk."""
    from gpuprov import api, report

    hosts = api.select_hosts(host, inventory, e or [])
    outcomes = api.probe(hosts, strict=strict_host_keys)
    (report.probe_json if json else report.probe_human)(outcomes)
    _finish(outcomes)


@task(
    help=COMMON_HELP | {
        "model": "model to serve (hub id or local path; default: the model var)",
        "max_model_len": "context length to require (refused when it does not fit)",
        "facts": "plan offline from a saved `invoke probe --json` file (every host in it, or those of --host)",
    },
    iterable=["e"],
)
@_errors
def plan(c, host=None, model=None, max_model_len=None, inventory=None, json=False, facts=None, e=None,
         verbose=False):
    """Choose the vLLM build this driver can run and engine flags that fit; explain each choice."""
    from gpuprov import api, report
    from gpuprov.errors import UsageError

    extra = list(e or [])
    if model:
        extra.append(f"model={model}")
    if max_model_len:
        extra.append(f"max_model_len={max_model_len}")
    if not host and not facts:
        raise UsageError("give --host, or --facts FILE to plan offline")
    if facts:
        outcomes, group_plans = api.plan_offline(facts, host, inventory, extra), []
    else:
        singles, groups = api.select_targets(host, inventory, extra, whole=False)
        singles += [h for g in groups if g.kind != "multinode" for h in g.hosts]
        outcomes = api.plan(singles) if singles else []
        group_plans = api.plan_deployments([g for g in groups if g.kind == "multinode"])
    (report.plan_json if json else report.plan_human)(outcomes)
    for gp in group_plans:
        (report.group_plan_json if json else report.group_plan_human)(gp)
    _finish(outcomes + group_plans)


@task(
    help={"fit": "plan every catalog model for these hosts (probed; or read from --facts)",
          "facts": "with --fit: the hosts' saved `invoke probe --json` facts instead of probing",
          "inventory": COMMON_HELP["inventory"], "json": COMMON_HELP["json"], "e": COMMON_HELP["e"],
          "verbose": VERBOSE_HELP},
    iterable=["e"],
)
@_errors
def models(c, fit=None, facts=None, inventory=None, json=False, e=None, verbose=False):
    """List the model catalog (size, context, quantization, compute capability, gated); --fit: what fits a host."""
    from gpuprov import report
    from gpuprov.compat import matrix
    from gpuprov.errors import UsageError
    from gpuprov.models import catalog

    if not fit and not facts:
        if e:
            raise UsageError("-e sets vars for --fit; without --fit there is nothing to plan")
        (report.models_json if json else report.models_human)(catalog().values(), matrix()["min_compute_capability"])
        return
    from gpuprov import api

    outcomes = api.models_fit(fit, inventory, e or [], facts)
    (report.fit_json if json else report.fit_human)(outcomes)
    _finish(outcomes)


@task(name="compat-check", help={"index": "package index (Simple API root; default: GPUPROV_PACKAGE_INDEX, else "
                                           "pip's index)", "json": "one JSON document", "verbose": VERBOSE_HELP})
@_errors
def compat_check(c, index=None, json=False, verbose=False):
    """Maintainers: vLLM's releases on the package index against data/compat.yml and the recorded flag tables
    (exit 1 when the newest release is missing or stale)."""
    import json as json_

    from gpuprov import report
    from gpuprov.releases import compat_check as check
    from gpuprov.serve_flags import recorded_versions

    result = check(index, recorded_versions())
    if json:
        print(json_.dumps(result.to_json(), indent=2))
    else:
        report.compat_human(result)
    if result.exit_code:
        raise Exit(code=result.exit_code)


@task(
    help=COMMON_HELP | {"playbook": "playbook file (e.g. tests/fixtures/playbooks/site.yml)",
                        "host": "which hosts (Ansible's patterns: a,b  a:&b  a:!b  web*); default: each play's "
                                "own hosts: from the inventory",
                        "limit": "like Ansible's --limit: narrow each play's hosts to this pattern",
                        "check": "change nothing; report what would change",
                        "diff": "show before/after diffs of files and units",
                        "tags": "only tasks with these tags (comma list)", "skip_tags": "skip tasks with these tags",
                        "forks": "hosts at once (default GPUPROV_PARALLEL or 50)",
                        "e": "extra vars: key=value, @vars.yml or a JSON mapping (repeatable)"},
    iterable=["e"],
)
@_errors
def play(c, playbook, host=None, limit=None, check=False, diff=False, tags=None, skip_tags=None, forks=None,
         inventory=None, json=False, e=None, verbose=False):
    """Run a playbook Ansible-style (each play on its hosts:, hosts in parallel); prints a recap (exit 1 when any
    host failed)."""
    from gpuprov import api, report
    from gpuprov.errors import UsageError

    if host and limit:
        raise UsageError("give one of --host and --limit (they mean the same here)")
    if forks is not None and (not str(forks).isdigit() or int(forks) < 1):
        raise UsageError(f"--forks must be a positive number, got {forks!r}")
    if not Path(playbook).is_file():
        raise UsageError(f"no such playbook: {playbook}")
    hosts = api.select_hosts(host or limit or "all", inventory, e or [], playbook=playbook)
    recaps = api.play(playbook, hosts, check=check, diff=diff, tags=[x for x in (tags or "").split(",") if x],
                      skip_tags=[x for x in (skip_tags or "").split(",") if x], forks=int(forks) if forks else None,
                      on_event=None if json else report.task_event)
    (report.recap_json if json else report.recap_human)(recaps)
    _finish(recaps)


@task(
    help=COMMON_HELP | {"model": "model to serve (default: the model var)",
                        "check": "change nothing; show what would change",
                        "diff": "show before/after diffs (secrets hidden)", "no_verify": "skip the readiness check"},
    iterable=["e"],
)
@_errors
def provision(c, host, model=None, check=False, diff=False, no_verify=False, inventory=None, json=False, e=None,
              verbose=False):
    """Bare GPU host → healthy, verified vLLM endpoint (systemd or supervisor); a second run changes nothing."""
    from gpuprov import api, report

    extra = list(e or []) + ([f"model={model}"] if model else [])
    singles, groups = api.select_targets(host, inventory, extra)
    results = api.provision_targets(singles, groups, check=check, diff=diff, verify=not no_verify,
                                    on_event=None if json else report.task_event,
                                    on_progress=None if json else report.progress_line)
    if json:
        report.provision_json(results)
    else:
        report.provision_human(results, verbose=verbose)
    _finish(results)


@task(
    help={"host": HOST_HELP, "local_port": "local port (default: the remote port, 8000)",
          "remote_port": "engine port on the host",
          "next_free": "take the next free local port when the one asked for is busy",
          "paramiko": "use paramiko instead of the system ssh client", "inventory": COMMON_HELP["inventory"],
          "background": "keep running after this command returns (pid file under .gpuprov/tunnels); returns once "
                        "the tunnel answers",
          "stop": "stop the background tunnel(s) of --host", "verbose": VERBOSE_HELP},
)
@_errors
def tunnel(c, host, local_port=None, remote_port=None, next_free=False, paramiko=False, inventory=None,
           background=False, stop=False, verbose=False):
    """Forward a local port to the engine on each host, kept alive and reconnecting; prints the OpenAI base URL."""
    import time

    from gpuprov import api, report, settings
    from gpuprov.tunnel import Background

    lport, rport = _port(local_port, "--local-port"), _port(remote_port, "--remote-port")
    singles, groups = api.select_targets(host, inventory, whole=False)
    # a multinode deployment answers at its head; replicas answer through the router in front of them
    hosts = singles + [g.host(g.head) for g in groups if g.kind == "multinode"]
    fronts = [g for g in groups if g.kind == "replicas"]
    names = [h.name for h in hosts] + [g.name for g in fronts]
    if lport is not None:
        _port(lport + len(names) - 1, "--local-port (one port per host from there)")
    tdir = settings.home() / "tunnels"
    if stop:
        for name in names:
            report.note(f"{name}: {Background(name, tdir).stop()}")
        return
    if background:
        for i, name in enumerate(names):
            bg = Background(name, tdir)
            args = [sys.executable, "-m", "invoke", "tunnel", "--host", name,
                    "--local-port", str((lport or 8000) + i)]
            args += ["--next-free"] * bool(next_free) + ["--paramiko"] * bool(paramiko)
            args += ["--inventory", str(inventory)] if inventory else []
            args += ["--remote-port", str(rport)] if rport else []
            url = bg.start(args, timeout=300 if name in {g.name for g in fronts} else 60)
            report.out.print(f"{name}: OPENAI_BASE_URL={url}  (background pid {bg.pidfile.read_text().strip()}, "
                             f"log {bg.log}; `invoke tunnel --host {name} --stop` ends it)", markup=False)
        return
    import signal

    def _terminated(*_):
        raise KeyboardInterrupt  # `--stop` (SIGTERM) closes the tunnels and the router like Ctrl-C

    signal.signal(signal.SIGTERM, _terminated)
    opened = []
    transport = "paramiko" if paramiko else "auto"
    try:
        for i, h in enumerate(hosts):
            t = api.open_tunnel(h, lport + i if lport else None, rport, next_free=next_free or len(names) > 1,
                                transport=transport, inventory=inventory)
            opened.append(t)
            key = api.api_key_path(h)
            report.out.print(f"{h.name}: OPENAI_BASE_URL={t.base_url}  (via {t.kind})"
                             + (f"  API key in {key} (0600)" if key else ""), markup=False)
        for j, g in enumerate(fronts):
            gt = api.open_replicas(g, (lport + len(hosts) + j) if lport else None,
                                   next_free=next_free or len(names) > 1, transport=transport, inventory=inventory,
                                   note=report.note)
            opened.append(gt)
            for name, why in gt.skipped.items():
                report.note(f"warning: {name}: not ready now ({why}); it joins the rotation once it answers")
            key = api.api_key_path(g.hosts[0])
            report.out.print(f"{g.name}: OPENAI_BASE_URL={gt.base_url}  (vllm-router {gt.router_version}, round "
                             f"robin over {', '.join(g.names)})" + (f"  API key in {key} (0600)" if key else ""),
                             markup=False)
        sys.stdout.flush()
        report.note("Ctrl-C to stop")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for t in opened:
            t.stop()


@task(help={"keep": "leave the simulated host (and its engine) running", "systemd": "use a systemd (VM-like) host",
            "model": "model to serve (default openai/gpt-oss-20b; with --engine real, the lab's tiny model)",
            "engine": "standin (default, ~10 s) | real: the real vLLM 0.32.0 CPU build (~1 min, ~1 GB download once)",
            "verbose": VERBOSE_HELP})
@_errors
def demo(c, keep=False, systemd=False, model=None, engine="standin", verbose=False):
    """The whole job on a simulated lab: sim host up → provision → tunnel → a chat completion → down."""
    import time

    from gpuprov import api, report
    from gpuprov.sim import control as lab
    from gpuprov.sim import real_engine

    name = "demo"
    t0 = time.monotonic()
    if name in lab.sim_lab().hosts():
        lab.sim_down(name)
    if engine == "real":
        persona, model = real_engine.PERSONA, model or real_engine.MODEL_ID
        report.note("1/4 simulated GPU host: real sshd in its own network namespace; GPU = recorded RTX 3060, driver "
                    f"570; engine = {real_engine.describe()}")
    else:
        persona, model = "2x-rtx-a5000_driver-590.44.01", model or "openai/gpt-oss-20b"
        report.note("1/4 simulated GPU host: real sshd in its own network namespace; GPU = recorded 2× RTX A5000, "
                    "driver 590; engine = the lab's stand-in vllm")
    lab.sim_up(name, gpu=persona, systemd=systemd, engine=engine)
    try:
        report.note(f"2/4 provision {model} (probe → plan → install → service → verify)")
        hosts = api.select_hosts(name, None, [f"model={model}"])
        results = api.provision(hosts, on_event=report.task_event, on_progress=report.progress_line)
        report.provision_human(results)
        if not results[0].ok:
            raise Exit("demo: provisioning failed", code=1)
        report.note("3/4 tunnel to the engine")
        t = api.open_tunnel(hosts[0], 8000, next_free=True)
        try:
            report.note(f"4/4 chat completion through {t.base_url} with the OpenAI client")
            from openai import OpenAI

            client = OpenAI(base_url=t.base_url, api_key="unused", timeout=30, max_retries=2)
            reply = client.chat.completions.create(model=model, max_tokens=32,
                                                   messages=[{"role": "user", "content": "Hello, GPU box!"}])
            report.out.print(f"\n[bold]assistant:[/] {report.esc(reply.choices[0].message.content)}\n")
            if engine == "real":
                report.note("(the tiny model's weights are random, so its words are junk: what matters is that the "
                            "real engine generated them)")
        finally:
            t.stop()
        report.note(f"demo done in {time.monotonic() - t0:.1f} s"
                    + (f"; `invoke sim-down --name {name}` removes the host" if keep else ""))
    finally:
        if not keep:
            lab.sim_down(name)


HOST_ONLY_HELP = {"host": HOST_HELP, "inventory": COMMON_HELP["inventory"], "verbose": VERBOSE_HELP}


@task(help=HOST_ONLY_HELP | {"json": COMMON_HELP["json"]})
@_errors
def status(c, host, inventory=None, json=False, verbose=False):
    """Service state, readiness, model, vLLM version, uptime, restarts, GPU memory and utilisation, endpoint."""
    from gpuprov import api, report

    singles, groups = api.select_targets(host, inventory, whole=False)
    outcomes = api.status(singles) if singles else []
    deployments = api.deployment_status(groups)
    if singles:
        (report.status_json if json else report.status_human)(outcomes)
    for d in deployments:
        (report.deployment_json if json else report.deployment_human)(d)
    _finish(outcomes + deployments)


@task(help=HOST_ONLY_HELP | {"f": "follow (until Ctrl-C)", "n": "lines (default 100)"})
@_errors
def logs(c, host, f=False, n=None, inventory=None, verbose=False):
    """The engine's log: the journal (systemd) or the supervisor's log file; -f follows it."""
    from gpuprov import api
    from gpuprov.errors import UsageError

    lines = _number(n, "-n/--n", 1, 1_000_000) or 100
    singles, groups = api.select_targets(host, inventory, whole=False)
    hosts = singles + [h for g in groups for h in g.hosts]
    if len(hosts) > 1 and groups and not f and not singles and len(groups) == 1:
        for h in hosts:  # a deployment's nodes one after the other, each line marked with its node
            prefix = f"{h.name}| "
            api.stream_logs(h, lines, False, lambda text, p=prefix: sys.stdout.write(
                "".join(p + line for line in text.splitlines(keepends=True))))
        sys.stdout.flush()
        return
    if len(hosts) != 1:
        raise UsageError(f"logs takes one host; {host!r} is {len(hosts)} hosts ({', '.join(h.name for h in hosts)})")
    try:
        api.stream_logs(hosts[0], lines, f, lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    except KeyboardInterrupt:
        pass


def _control(action):
    @task(name=action, help=HOST_ONLY_HELP)
    @_errors
    def control(c, host, inventory=None, verbose=False):
        from gpuprov import api, report

        singles, groups = api.select_targets(host, inventory)
        singles += [h for g in groups if g.kind != "multinode" for h in g.hosts]
        outcomes = api.control(singles, action) if singles else []
        report.control_human(action, outcomes)
        groups_done = api.control_deployments([g for g in groups if g.kind == "multinode"], action)
        report.control_groups_human(action, groups_done)
        _finish(outcomes + groups_done)

    control.__doc__ = {"start": "Start the engine and wait until it answers a completion.",
                       "stop": "Stop the engine (it stays installed).",
                       "restart": "Restart the engine and wait until it answers a completion."}[action]
    return control


start = _control("start")
stop = _control("stop")
restart = _control("restart")


@task(help=HOST_ONLY_HELP | {"purge": "also delete the downloaded weights"})
@_errors
def teardown(c, host, purge=False, inventory=None, verbose=False):
    """Remove the service, venvs, scripts, logs and secrets files (weights stay unless --purge)."""
    from gpuprov import api, report

    singles, groups = api.select_targets(host, inventory)
    hosts = singles + [h for g in groups for h in g.hosts]
    outcomes = api.teardown(hosts, purge=purge, on_event=report.task_event)
    for o in outcomes:
        if not o.ok:
            report.outcome_error(o)
        elif o.value is None:
            report.note(f"{o.host.name}: nothing to tear down")
        else:
            report.note(f"{o.host.name}: removed ({o.value.changed} changes)" + ("" if purge else "; weights kept"))
    _finish(outcomes)


@task(help={"hosts": "host counts, comma list (default 1,10,50)", "runs": "timed runs after the warm-up (default 3)",
            "json": "print {\"rows\": [...]} as JSON", "keep": "leave the benchmark hosts up",
            "tools": "comma list of gpuprov,pyinfra,ansible",
            "provision_hosts": "host counts for the provision no-op rows",
            "first_provision": "also time a first provision with the real engine against the same steps by hand",
            "verbose": VERBOSE_HELP})
@_errors
def bench(c, hosts="1,10,50", runs=3, json=False, keep=False, tools="gpuprov,pyinfra,ansible", provision_hosts=None,
          first_provision=False, verbose=False):
    """No-op runs: gpuprov vs pyinfra vs ansible-core on the same sim hosts, plus provision no-op and tunnel latency."""
    import json as _json
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench"))
    import run as bench_run

    sizes = [_number(x, "--hosts", 1, 500) for x in str(hosts).split(",") if x]
    prov = ([_number(x, "--provision-hosts", 1, 500) for x in str(provision_hosts).split(",") if x]
            if provision_hosts else None)
    result = bench_run.main(sizes, _number(runs, "--runs", 1, 100), json, keep, tuple(str(tools).split(",")), prov,
                            first_provision)
    if json:
        print(_json.dumps(result))
        return
    from gpuprov import report

    report.bench_human(result)


@task(name="inventory", help=COMMON_HELP, iterable=["e"])
@_errors
def inventory_(c, host="all", inventory=None, json=False, e=None, verbose=False):
    """Show hosts with their merged vars and where each value came from (and the pods a runpod source skipped)."""
    from gpuprov import api, report

    inv = api.load_inventory(inventory)
    hosts = api.select_hosts(host, inv, e or [])
    (report.inventory_json if json else report.inventory_human)(hosts)
    for src in inv.sources:
        if src.error:
            report.error(f"{src.path}: {src.error}")
        for name, why in sorted(src.unavailable.items()):
            report.note(f"{name}: not a host: {why}")


@task(help=HOST_ONLY_HELP)
@_errors
def forget_host(c, host, inventory=None, verbose=False):
    """Forget a pinned host key (after a host was rebuilt on purpose)."""
    from gpuprov import api, report

    for h in api.select_hosts(host, inventory):
        gone = api.forget_host(h)
        report.note(f"{h.name}: {'forgot the pinned key' if gone else 'no pinned key'}")


@task(
    help={
        "name": "host name (lowercase letters, digits, dashes)",
        "gpu": "GPU persona: a recorded nvidia-smi -q -x file or its name, or 'none'",
        "systemd": "boot a real systemd in an nspawn container (VM-like); default is a container-like host",
        "gpu_mode": "how the stand-in driver behaves: no-nvml (only nvidia-smi) | no-driver | driver-not-loaded | "
                    "mismatch | no-permission",
        "engine": "standin (default: a small stand-in vllm) | real (the real vLLM 0.32.0 CPU build and a tiny model)",
        "runpod": "a RunPod-like pod: private /workspace, RUNPOD_* in PID 1's env and /etc/rp_environment, sshd on "
                  "a random port, listed by the lab's stand-in RunPod API (inventory/sim-runpod.yml)",
        "pod_env": "KEY=VALUE in the pod's own environment, such as MODEL=org/name (repeatable; needs --runpod)",
        "ssh_proxy_only": "sshd behaves like RunPod's SSH proxy: a PTY shell only (no commands, SFTP, forwarding)",
        "verbose": VERBOSE_HELP,
    },
    iterable=["pod_env"],
)
@_errors
def sim_up(c, name, gpu="2x-rtx-a5000_driver-590.44.01", systemd=False, gpu_mode="", engine="standin",
           runpod=False, pod_env=None, ssh_proxy_only=False, verbose=False):
    """Start a simulated GPU host (real sshd in its own network namespace; the GPU is a stand-in)."""
    from gpuprov import report
    from gpuprov.errors import UsageError
    from gpuprov.sim import control as lab

    env = {}
    for item in pod_env or []:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise UsageError(f"--pod-env {item!r}: expected KEY=VALUE")
        env[k] = v
    h = lab.sim_up(name, gpu=gpu, systemd=systemd, gpu_mode=gpu_mode, engine=engine, runpod=runpod, pod_env=env,
                   proxy_only=ssh_proxy_only)
    kind = ("RunPod-like pod " + h.pod_id if h.runpod else "systemd" if h.systemd else "plain")
    report.note(f"{h.name}: up at {h.address}{'' if h.port == 22 else f' port {h.port}'} ({kind}, GPU persona "
                f"{'none' if h.gpu == 'none' else h.gpu.rsplit('/', 1)[-1]}"
                f"{', real vLLM CPU engine' if h.engine == 'real' else ''}"
                f"{', PTY-only like RunPod’s SSH proxy' if h.proxy_only else ''}); "
                f"try `invoke probe --host {h.name}`")


@task(help={"name": "the pod (a host started with --runpod)", "verbose": VERBOSE_HELP})
@_errors
def sim_reset(c, name, verbose=False):
    """Reset a simulated pod as RunPod does: processes end, all but /workspace is wiped, new host key, new port."""
    from gpuprov import report
    from gpuprov.sim import control as lab

    h = lab.sim_reset(name)
    report.note(f"{h.name}: reset (pod {h.pod_id} started {h.started_at}); sshd now on port {h.port} with a new "
                "host key; only /workspace was kept")


@task(help={"name": "one host (default: all)", "verbose": VERBOSE_HELP})
@_errors
def sim_down(c, name=None, verbose=False):
    """Remove one or all simulated hosts, leaving nothing running or mounted."""
    from gpuprov import report
    from gpuprov.sim import control as lab

    names = lab.sim_down(name)
    report.note(f"removed: {', '.join(names) or 'nothing (the lab was empty)'}")


@task(help={"k": "pytest -k expression", "x": "stop at first failure", "quick": "skip the lab tiers",
            "no_lint": "skip ruff and mypy"})
def test(c, k=None, x=False, quick=False, no_lint=False):
    """Run the static checks (ruff, mypy) and the whole test suite (unit tests, then the lab over real SSH)."""
    import shlex

    if not no_lint:
        c.run(shlex.join([sys.executable, "-m", "ruff", "check", "."]), pty=False)
        c.run(shlex.join([sys.executable, "-m", "mypy"]), pty=False)
    # the 15 slowest tests close the report: CI's time budget is watched from it
    args = [sys.executable, "-m", "pytest", "tests", "--durations=15"]
    if k:
        args += ["-k", k]
    if x:
        args.append("-x")
    if quick:
        args += ["-m", "not lab"]
    c.run(shlex.join(args), pty=False)
