"""gpuprov's command line: thin Invoke tasks that parse flags, call ``gpuprov.api`` and render with ``report``.

Run ``invoke --list`` for the tasks and ``invoke --help TASK`` for one. Exit codes: 0 ok, 1 failed,
2 bad input or refused plan, 3 a host could not be reached.
"""

from __future__ import annotations

import sys
from functools import wraps

from invoke import Exit, task

HOST_HELP = "inventory host, group, comma list, ~/.ssh/config alias, or user@address:port"
COMMON_HELP = {
    "host": HOST_HELP,
    "inventory": "inventory file or folder (default: inventory/)",
    "json": "machine-readable output (one JSON object per host per line)",
    "e": "extra var key=value (repeatable; highest precedence)",
}


def _exit_for(outcomes):
    """Exit non-zero with the worst error's code when any host failed."""
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise Exit(code=max(o.error.exit_code for o in failed))


def _errors(fn):
    """Map GpuprovError to a one-line message and its exit code; never a traceback for expected failures."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        from gpuprov import report
        from gpuprov.errors import GpuprovError

        try:
            return fn(*args, **kwargs)
        except GpuprovError as e:
            report.error(str(e))
            raise Exit(code=e.exit_code) from None
        except KeyboardInterrupt:
            report.error("interrupted")
            raise Exit(code=130) from None

    return wrapper


@task(help=COMMON_HELP | {"strict_host_keys": "refuse hosts whose key is not pinned yet"}, iterable=["e"])
@_errors
def probe(c, host, inventory=None, json=False, strict_host_keys=False, e=None):
    """Learn a host's GPU stack in one round trip: driver, CUDA, GPUs, OS, Python, systemd, disk."""
    from gpuprov import api, report

    hosts = api.select_hosts(host, inventory, e or [])
    outcomes = api.probe(hosts, strict=strict_host_keys)
    (report.probe_json if json else report.probe_human)(outcomes)
    _exit_for(outcomes)


@task(
    help=COMMON_HELP | {
        "model": "model to serve (hub id or local path; default: the model var)",
        "max_model_len": "context length to require (refused when it does not fit)",
        "facts": "plan offline from a saved `invoke probe --json` file instead of probing",
    },
    iterable=["e"],
)
@_errors
def plan(c, host=None, model=None, max_model_len=None, inventory=None, json=False, facts=None, e=None):
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
    hosts = api.select_hosts(host, inventory, extra) if host else [api.offline_host(facts, extra)]
    outcomes = api.plan(hosts, facts_file=facts)
    (report.plan_json if json else report.plan_human)(outcomes)
    _exit_for(outcomes)
    if any(not o.value.ok for o in outcomes):
        raise Exit(code=2)


@task(
    help=COMMON_HELP | {"playbook": "playbook file (e.g. playbooks/site.yml)", "check": "change nothing; report what would change",
                        "diff": "show before/after diffs of files and units", "tags": "only tasks with these tags (comma list)"},
    iterable=["e"],
)
@_errors
def play(c, playbook, host, check=False, diff=False, tags=None, inventory=None, json=False, e=None):
    """Run a playbook on hosts in parallel, Ansible-style; prints a recap (exit 1 when any host failed)."""
    from gpuprov import api, report

    hosts = api.select_hosts(host, inventory, e or [])
    recaps = api.play(playbook, hosts, check=check, diff=diff, tags=[x for x in (tags or "").split(",") if x],
                      on_event=None if json else report.task_event)
    (report.recap_json if json else report.recap_human)(recaps)
    if any(r.failed or r.unreachable for r in recaps):
        raise Exit(code=1)


@task(
    help=COMMON_HELP | {"model": "model to serve (default: the model var)", "check": "change nothing; show what would change",
                        "diff": "show before/after diffs (secrets hidden)", "no_verify": "skip the readiness check"},
    iterable=["e"],
)
@_errors
def provision(c, host, model=None, check=False, diff=False, no_verify=False, inventory=None, json=False, e=None):
    """Bare GPU host → healthy, verified vLLM endpoint (systemd or supervisor); a second run changes nothing."""
    from gpuprov import api, report
    from gpuprov.provision import provision as run

    extra = list(e or []) + ([f"model={model}"] if model else [])
    hosts = api.select_hosts(host, inventory, extra)
    results = run(hosts, check=check, diff=diff, verify=not no_verify,
                  on_event=None if json else report.task_event, on_progress=None if json else report.progress_line)
    (report.provision_json if json else report.provision_human)(results)
    if any(r.refused for r in results) and all(r.refused or r.ok for r in results):
        raise Exit(code=2)
    if not all(r.ok or (check and r.recap and not r.recap.failed) for r in results):
        raise Exit(code=1)


@task(
    help={"host": HOST_HELP, "local_port": "local port (default: the remote port, 8000)", "remote_port": "engine port on the host",
          "next_free": "take the next free local port when the one asked for is busy",
          "paramiko": "use paramiko instead of the system ssh client", "inventory": COMMON_HELP["inventory"],
          "background": "keep running after this command returns (pid file under .gpuprov/tunnels)",
          "stop": "stop the background tunnel(s) of --host"},
)
@_errors
def tunnel(c, host, local_port=None, remote_port=None, next_free=False, paramiko=False, inventory=None,
           background=False, stop=False):
    """Forward a local port to the engine on each host, kept alive and reconnecting; prints the OpenAI base URL."""
    import os
    import signal
    import subprocess
    import time

    from gpuprov import api, report, settings

    hosts = api.select_hosts(host, inventory)
    tdir = settings.home() / "tunnels"
    if stop:
        for h in hosts:
            pidf = tdir / f"{h.name}.pid"
            if pidf.is_file():
                try:
                    os.kill(int(pidf.read_text().split()[0]), signal.SIGTERM)
                    report.note(f"{h.name}: tunnel stopped")
                except (ProcessLookupError, ValueError):
                    report.note(f"{h.name}: tunnel was not running")
                pidf.unlink()
            else:
                report.note(f"{h.name}: no background tunnel")
        return
    if background:
        tdir.mkdir(parents=True, exist_ok=True)
        for i, h in enumerate(hosts):
            port = int(local_port or 8000) + i
            args = [sys.executable, "-m", "invoke", "tunnel", "--host", h.name, "--local-port", str(port)]
            args += ["--next-free"] * bool(next_free) + ["--paramiko"] * bool(paramiko)
            args += ["--inventory", inventory] if inventory else []
            args += ["--remote-port", str(remote_port)] if remote_port else []
            log = open(tdir / f"{h.name}.log", "ab")
            p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            (tdir / f"{h.name}.pid").write_text(f"{p.pid}\n")
            report.note(f"{h.name}: tunnel in the background (pid {p.pid}, log {tdir / (h.name + '.log')}); "
                        f"`invoke tunnel --host {h.name} --stop` ends it")
        return
    tunnels = []
    try:
        for i, h in enumerate(hosts):
            lp = int(local_port) + i if local_port else None
            t = api.open_tunnel(h, lp, remote_port, next_free=next_free or len(hosts) > 1,
                                transport="paramiko" if paramiko else "auto")
            tunnels.append(t)
            key = api.api_key_path(h)
            report.out.print(f"{h.name}: OPENAI_BASE_URL={t.base_url}  (via {t.kind})"
                             + (f"  API key in {key} (0600)" if key else ""), markup=False)
        report.note("Ctrl-C to stop")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for t in tunnels:
            t.stop()


@task(help={"keep": "leave the simulated host (and its engine) running", "systemd": "use a systemd (VM-like) host",
            "model": "model to serve (default openai/gpt-oss-20b; with --engine real, the lab's tiny model)",
            "engine": "standin (default, ~10 s) | real: the real vLLM 0.32.0 CPU build (~1 min, ~1 GB download once)"})
@_errors
def demo(c, keep=False, systemd=False, model=None, engine="standin"):
    """The whole job on a simulated lab: sim host up → provision → tunnel → a chat completion → down."""
    import time

    from gpuprov import api, report
    from gpuprov.provision import provision as run
    from gpuprov.sim import real_engine

    name = "demo"
    t0 = time.monotonic()
    lab = api.sim_lab()
    if name in lab.hosts():
        api.sim_down(name)
    if engine == "real":
        persona, model = real_engine.PERSONA, model or real_engine.MODEL_ID
        report.note("1/4 simulated GPU host: real sshd in its own network namespace; GPU = recorded RTX 3060, driver "
                    f"570; engine = {real_engine.describe()}")
    else:
        persona, model = "2x-rtx-a5000_driver-590.44.01", model or "openai/gpt-oss-20b"
        report.note("1/4 simulated GPU host: real sshd in its own network namespace; GPU = recorded 2× RTX A5000, "
                    "driver 590; engine = the lab's stand-in vllm")
    api.sim_up(name, gpu=persona, systemd=systemd, engine=engine)
    try:
        report.note(f"2/4 provision {model} (probe → plan → install → service → verify)")
        hosts = api.select_hosts(name, None, [f"model={model}"])
        results = run(hosts, on_event=report.task_event, on_progress=report.progress_line)
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
            report.out.print(f"\n[bold]assistant:[/] {reply.choices[0].message.content}\n")
            if engine == "real":
                report.note("(the tiny model's weights are random, so its words are junk: what matters is that the "
                            "real engine generated them)")
        finally:
            t.stop()
        report.note(f"demo done in {time.monotonic() - t0:.1f} s"
                    + (f"; `invoke sim-down --name {name}` removes the host" if keep else ""))
    finally:
        if not keep:
            api.sim_down(name)


@task(help={"host": HOST_HELP, "inventory": COMMON_HELP["inventory"], "json": COMMON_HELP["json"]})
@_errors
def status(c, host, inventory=None, json=False):
    """Service state, readiness, model, vLLM version, uptime, restarts, GPU memory and utilisation, endpoint."""
    from gpuprov import api, report

    outcomes = api.status(api.select_hosts(host, inventory))
    (report.status_json if json else report.status_human)(outcomes)
    _exit_for(outcomes)


@task(help={"host": HOST_HELP, "inventory": COMMON_HELP["inventory"], "f": "follow (until Ctrl-C)", "n": "lines (default 100)"})
@_errors
def logs(c, host, f=False, n=100, inventory=None):
    """The engine's log: the journal (systemd) or the supervisor's log file; -f follows it."""
    from gpuprov import api

    hosts = api.select_hosts(host, inventory)
    if len(hosts) != 1:
        from gpuprov.errors import UsageError

        raise UsageError("logs takes one host")
    try:
        api.stream_logs(hosts[0], int(n), f, lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    except KeyboardInterrupt:
        pass


def _control(action):
    @task(name=action, help={"host": HOST_HELP, "inventory": COMMON_HELP["inventory"]})
    @_errors
    def control(c, host, inventory=None):
        from gpuprov import api, report

        outcomes = api.control(api.select_hosts(host, inventory), action)
        report.control_human(action, outcomes)
        if any(not o.ok or (o.value["ready"] is not None and not o.value["ready"].ready) for o in outcomes):
            raise Exit(code=1)

    control.__doc__ = {"start": "Start the engine and wait until it answers a completion.",
                       "stop": "Stop the engine (it stays installed).",
                       "restart": "Restart the engine and wait until it answers a completion."}[action]
    return control


start = _control("start")
stop = _control("stop")
restart = _control("restart")


@task(help={"host": HOST_HELP, "inventory": COMMON_HELP["inventory"], "purge": "also delete the downloaded weights"})
@_errors
def teardown(c, host, purge=False, inventory=None):
    """Remove the service, venvs, scripts, logs and secrets files (weights stay unless --purge)."""
    from gpuprov import api, report

    outcomes = api.teardown(api.select_hosts(host, inventory), purge=purge, on_event=report.task_event)
    for o in outcomes:
        if not o.ok:
            report.error(str(o.error))
        elif o.value is None:
            report.note(f"{o.host.name}: nothing to tear down")
        else:
            report.note(f"{o.host.name}: removed ({o.value.changed} changes)" + ("" if purge else "; weights kept"))
    if any(not o.ok or (o.value and o.value.failed) for o in outcomes):
        raise Exit(code=1)


@task(help={"hosts": "host counts, comma list (default 1,10,50)", "runs": "timed runs after the warm-up (default 3)",
            "json": "print {\"rows\": [...]} as JSON", "keep": "leave the benchmark hosts up",
            "tools": "comma list of gpuprov,pyinfra,ansible", "provision_hosts": "host counts for the provision no-op rows"})
def bench(c, hosts="1,10,50", runs=3, json=False, keep=False, tools="gpuprov,pyinfra,ansible", provision_hosts=None):
    """No-op runs: gpuprov vs pyinfra vs ansible-core on the same sim hosts, plus provision no-op and tunnel latency."""
    import json as _json
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench"))
    import run as bench_run

    sizes = [int(x) for x in str(hosts).split(",") if x]
    prov = [int(x) for x in str(provision_hosts).split(",") if x] if provision_hosts else None
    result = bench_run.main(sizes, int(runs), json, keep, tuple(str(tools).split(",")), prov)
    if json:
        print(_json.dumps(result))
        return
    from gpuprov import report

    report.bench_human(result)


@task(name="inventory", help=COMMON_HELP, iterable=["e"])
@_errors
def inventory_(c, host="all", inventory=None, json=False, e=None):
    """Show hosts with their merged vars and where each value came from."""
    from gpuprov import api, report

    hosts = api.select_hosts(host, inventory, e or [])
    (report.inventory_json if json else report.inventory_human)(hosts)


@task(help={"host": HOST_HELP, "inventory": COMMON_HELP["inventory"]})
@_errors
def forget_host(c, host, inventory=None):
    """Forget a pinned host key (after a host was rebuilt on purpose)."""
    from gpuprov import api, report

    for h in api.select_hosts(host, inventory):
        gone = api.forget_host(h)
        report.note(f"{h.name}: {'forgot the pinned key' if gone else 'no pinned key'}")


@task(
    help={
        "name": "host name (lowercase letters, digits, dashes)",
        "gpu": "GPU persona: a recorded nvidia-smi -q -x file or its name, or 'none'",
        "systemd": "boot a real systemd in an nspawn container (VM-like); default is a RunPod-like host",
        "gpu_mode": "make the stand-in nvidia-smi fail: no-driver | mismatch",
        "engine": "standin (default: a small stand-in vllm) | real (the real vLLM 0.32.0 CPU build and a tiny model)",
    }
)
@_errors
def sim_up(c, name, gpu="2x-rtx-a5000_driver-590.44.01", systemd=False, gpu_mode="", engine="standin"):
    """Start a simulated GPU host (real sshd in its own network namespace; the GPU is a stand-in)."""
    from gpuprov import api, report

    h = api.sim_up(name, gpu=gpu, systemd=systemd, gpu_mode=gpu_mode, engine=engine)
    report.note(f"{h.name}: up at {h.address} ({'systemd' if h.systemd else 'plain'}, GPU persona "
                f"{'none' if h.gpu == 'none' else h.gpu.rsplit('/', 1)[-1]}"
                f"{', real vLLM CPU engine' if h.engine == 'real' else ''}); try `invoke probe --host {h.name}`")


@task(help={"name": "one host (default: all)"})
@_errors
def sim_down(c, name=None):
    """Remove one or all simulated hosts, leaving nothing running or mounted."""
    from gpuprov import api, report

    names = api.sim_down(name)
    report.note(f"removed: {', '.join(names) or 'nothing (the lab was empty)'}")


@task(help={"k": "pytest -k expression", "x": "stop at first failure", "quick": "skip the lab tiers"})
def test(c, k=None, x=False, quick=False):
    """Run the whole test suite (unit tests, then the simulated lab over real SSH)."""
    args = [sys.executable, "-m", "pytest", "tests"]
    if k:
        args += ["-k", k]
    if x:
        args.append("-x")
    if quick:
        args += ["-m", "not lab"]
    import shlex

    c.run(shlex.join(args), pty=False)
