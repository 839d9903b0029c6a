"""The only module that prints: rich tables for people, JSON for programs, errors on stderr.

Every string that comes from the user or a host goes through ``esc`` before it meets rich markup, so a model id
such as ``foo[/]bar`` prints as typed and never restyles (or crashes) the output.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .secrets import Secret

if TYPE_CHECKING:
    from .facts import Facts
    from .fleet import HostOutcome
    from .inventory import Host
    from .plan import Plan

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _default(o: Any) -> Any:
    if isinstance(o, Secret):
        return "***"
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def json_line(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=_default) + "\n")
    sys.stdout.flush()


def esc(value: Any) -> str:
    """A user's or a host's string, safe inside rich markup."""
    return escape(str(value))


def error(msg: str) -> None:
    err.print(f"[bold red]error:[/] {esc(msg)}", markup=True, highlight=False)


def outcome_error(o: HostOutcome[Any]) -> None:
    error(o.message)


def note(msg: str) -> None:
    err.print(msg, markup=False)


def fmt_gib(mib: int | None) -> str:
    return "?" if mib is None else f"{mib / 1024:.0f} GiB"


# --------------------------------------------------------------------------- probe


def probe_json(outcomes: Sequence[HostOutcome[Facts]]) -> None:
    for o in outcomes:
        if o.value is not None:
            d = o.value.to_json()
            d["host"] = o.host.name
            json_line(d)
        else:
            outcome_error(o)


def probe_human(outcomes: Sequence[HostOutcome[Facts]]) -> None:
    for o in outcomes:
        f = o.value
        if f is None:
            outcome_error(o)
            continue
        out.print(f"[bold]{esc(o.host.name)}[/]  ({esc(f.hostname)}, {o.duration_s:.2f} s)")
        rows = [
            ("OS", f"{f.os_pretty or f.os_id} · kernel {f.kernel} · {f.arch} · {f.glibc}"),
            ("Python", f"{f.python} at {f.python_path} (venv {'ok' if f.python_venv else 'missing'}); "
                       f"on PATH: {', '.join(f.pythons) or 'none'}"),
            ("Init", f"PID 1 = {f.pid1}; systemd {'yes' if f.systemd else 'no'}"
                     + (f"; container: {', '.join(f.container)}" if f.container else "")),
            ("Disk", f"{(f.disk_free_bytes or 0) / 2**30:.1f} GiB free for {f.install_root}"
                     + (" (/workspace persists)" if f.workspace else "")),
            ("SFTP", "yes" if f.sftp else "no (uploads go through exec)"),
            ("Driver", f"{f.driver_version or 'none'}; highest CUDA {f.cuda_driver_version or '?'} "
                       f"(from {f.source})"),
        ]
        for k, v in rows:
            out.print(f"  {k:<7} {v}", markup=False)
        if f.gpu_error:
            out.print(f"  [yellow]GPU     {esc(f.gpu_error)}[/]")
        if f.gpu_disagreement:
            out.print(f"  [yellow]GPU     NVML and nvidia-smi disagree: {esc(f.gpu_disagreement)} "
                      "(NVML's values used)[/]")
        if f.gpus:
            t = Table(show_edge=False, pad_edge=False, box=None)
            for col in ("#", "name", "memory", "CC", "MIG", "PCI bus", "UUID"):
                t.add_column(col)
            for g in f.gpus:
                mig = g.mig_mode or "-"
                if g.mig_devices:
                    mig += " (" + ", ".join(fmt_gib(m.memory_total_mib) for m in g.mig_devices) + ")"
                t.add_row(*(esc(x) for x in (g.index, g.name, fmt_gib(g.memory_total_mib), g.compute_capability or "?",
                                             mig, g.pci_bus_id or "?", g.uuid or "?")))
            out.print(t)


# --------------------------------------------------------------------------- the model catalog


def _model_row(m: Any, min_cc: str) -> dict[str, Any]:
    return {"model": m.name, "weights_gib": m.weight_gib, "max_context": m.max_position_embeddings,
            "quantization": m.quantization or "bf16", "min_compute_capability": m.min_compute_capability or min_cc,
            "gated": m.gated, "moe": m.moe}


def models_human(models: Iterable[Any], min_cc: str) -> None:
    t = Table(box=None, pad_edge=False)
    for col in ("model", "GiB", "context", "quant", "min CC", "gated", "MoE"):
        t.add_column(col, no_wrap=True)
    for m in models:
        r = _model_row(m, min_cc)
        t.add_row(esc(r["model"]), f"{r['weights_gib']:g}", str(r["max_context"]), esc(r["quantization"]),
                  esc(r["min_compute_capability"]), "yes" if r["gated"] else "no", "yes" if r["moe"] else "no")
    out.print(t)
    out.print("[dim]GiB: weights; gated: the hub wants HF_TOKEN. Any other hub model works too when its config.json "
              "can be read; `invoke models --fit HOST` plans each of these for a host.[/]")


def models_json(models: Iterable[Any], min_cc: str) -> None:
    for m in models:
        json_line(_model_row(m, min_cc))


def _fit_row(p: Plan) -> dict[str, Any]:
    return {"host": p.host, "model": p.model, "ok": p.ok, "max_model_len": p.max_model_len,
            "tensor_parallel_size": p.tensor_parallel_size, "data_parallel_size": p.data_parallel_size,
            "vllm_version": p.vllm_version, "reason": p.reason, "warnings": list(p.warnings)}


def _fit_note(p: Plan) -> str:
    """One short phrase per model (the full reasons are in --json and `invoke plan`)."""
    if not p.ok:
        head = (p.reason or "refused").replace(p.model, "").split(":")[0].strip() or "refused"
        way = next((w for w in p.ways_out if not w.startswith("a GPU with more memory")), None)
        return head + (f"; {way.split(' (')[0]}" if way else "")
    notes = ["gated: set HF_TOKEN"] if p.needs_hf_token else []
    if any("instead of vLLM's" in w and w.startswith("max_model_len") for w in p.warnings):
        notes.append("context shortened to fit")
    if any(w.startswith("max_num_seqs") for w in p.warnings):
        notes.append("smaller batches")
    return ", ".join(notes)


def fit_human(outcomes: Sequence[HostOutcome[Any]]) -> None:
    for o in outcomes:
        if o.value is None:
            outcome_error(o)
            continue
        f = o.value.facts
        gpus = f"{len(f.gpus)} × {f.gpus[0].name}" if f.gpus else "no GPU"
        out.print(f"[bold]{esc(o.host.name)}[/]: {esc(gpus)}, driver {esc(f.driver_version or '?')}")
        t = Table(box=None, pad_edge=False)
        for col in ("model", "fits", "context", "GPUs", "vLLM"):
            t.add_column(col, no_wrap=True)
        t.add_column("note")
        for p in o.value.plans:
            if p.ok:
                layout = f"TP {p.tensor_parallel_size}" + (f" × DP {p.data_parallel_size}"
                                                          if (p.data_parallel_size or 1) > 1 else "")
                t.add_row(esc(p.model), "[green]yes[/]", str(p.max_model_len), layout, esc(p.vllm_version),
                          esc(_fit_note(p)))
            else:
                t.add_row(esc(p.model), "[red]no[/]", "-", "-", esc(p.vllm_version or "-"), esc(_fit_note(p)))
        out.print(t)


def fit_json(outcomes: Sequence[HostOutcome[Any]]) -> None:
    for o in outcomes:
        if o.value is None:
            outcome_error(o)
            continue
        for p in o.value.plans:
            json_line(_fit_row(p))


def compat_human(r: Any) -> None:
    """``invoke compat-check``: every release from the oldest compat.yml row up, what is missing or stale."""
    from .releases import python_range

    out.print(f"vLLM releases on {esc(r.index)} (newest: {esc(r.newest)})")
    t = Table(box=None, pad_edge=False)
    for col in ("version", "date", "Python", "torch", "compat.yml", "flag table", "verdict"):
        t.add_column(col, no_wrap=col != "verdict")
    for row in r.rows:
        py = python_range(row.requires_python)
        verdict = "; ".join(row.problems) or "; ".join(row.notes) or "ok"
        t.add_row(esc(row.version), esc(row.date or "?"), esc("–".join(py) if py else "?"), esc(row.torch or "?"),
                  "yes" if row.in_compat else "[red]no[/]", "yes" if row.flag_table else "no",
                  f"[red]{esc(verdict)}[/]" if row.problems else esc(verdict))
    out.print(t)
    if r.exit_code:
        error(f"{sum(bool(x.problems) for x in r.rows)} release(s) need compat.yml or data/serve_flags updated")
    else:
        out.print("[green]compat.yml and the flag tables cover the newest release[/]")


# --------------------------------------------------------------------------- inventory


def inventory_human(hosts: Iterable[Host]) -> None:
    for h in hosts:
        out.print(f"[bold]{esc(h.name)}[/]  {esc(h.user or '(ssh config)')}@{esc(h.address)}:{h.port or 22}  "
                  f"groups: {esc(', '.join(h.groups))}  [dim]declared at {esc(h.source)}[/]")
        t = Table(show_edge=False, box=None, pad_edge=False)
        t.add_column("var")
        t.add_column("value")
        t.add_column("from", style="dim")
        for k in sorted(h.vars):
            v = h.vars[k]
            t.add_row(esc(k), esc("***" if isinstance(v.value, Secret) else json.dumps(v.value, default=_default)),
                      esc(v.source))
        out.print(t)


def inventory_json(hosts: Iterable[Host]) -> None:
    for h in hosts:
        json_line({
            "host": h.name, "address": h.address, "port": h.port or 22, "user": h.user,
            "identity_file": h.identity_file, "proxy_jump": h.proxy_jump, "groups": list(h.groups),
            "vars": {k: {"value": v.value, "source": v.source} for k, v in h.vars.items()},
        })


# --------------------------------------------------------------------------- plan


def plan_json(outcomes: Sequence[HostOutcome[Plan]]) -> None:
    for o in outcomes:
        if o.value is not None:
            json_line(o.value.to_json())
        else:
            outcome_error(o)


def _refused(title: str, r: Any) -> None:
    """A refused plan (one host's or a deployment's): the reason, what would work, and why."""
    out.print(f"{title}: [bold red]REFUSED[/] {esc(r.model)}")
    out.print(f"  why: {r.reason}", markup=False)
    for w in r.ways_out:
        out.print(f"  would work: {w}", markup=False)
    for w in r.why:
        out.print(f"  · {esc(w)}")


def group_plan_json(gp) -> None:  # noqa: ANN001
    json_line(gp.to_json())


def group_plan_human(gp) -> None:  # noqa: ANN001
    """A multinode deployment's plan: the deployment's reasons, then each node's plan (its rank's flags)."""
    if not gp.ok:
        _refused(f"[bold]{esc(gp.group)}[/] (multinode)", gp)
        return
    out.print(f"[bold]{esc(gp.group)}[/] (multinode): [green]OK[/] {esc(gp.model)} on {len(gp.nodes)} nodes, head "
              f"{esc(gp.head)}, tensor parallel {gp.tensor_parallel_size} × pipeline parallel "
              f"{gp.pipeline_parallel_size}, master port {gp.master_port} (the address comes from the preflight "
              "at provision)")
    for p in gp.nodes.values():
        plan_one(p)


def plan_human(outcomes: Sequence[HostOutcome[Plan]]) -> None:
    for o in outcomes:
        if o.value is None:
            outcome_error(o)
        else:
            plan_one(o.value)


def plan_one(p: Plan) -> None:
    import shlex

    if not p.ok:
        _refused(f"[bold]{esc(p.host)}[/]", p)
        return
    out.print(f"[bold]{esc(p.host)}[/]: [green]OK[/] {esc(p.model)}")
    compat = " + CUDA forward compatibility" if p.cuda_compat else ""
    extra = f" from {p.extra_index_url}" if p.extra_index_url else " from the default index"
    rows = [
        ("vLLM", f"{p.vllm_version} ({p.cuda_variant}{compat}){extra}; "
                 f"torch {p.torch_version} ({p.torch_backend})"),
        ("Python", f"{p.python}{' (uv-managed)' if p.python_managed else ''} in {p.venv}"),
        ("Sizing", f"tensor_parallel_size {p.tensor_parallel_size}"
                   + (f" × pipeline {p.pipeline_parallel_size}" if (p.pipeline_parallel_size or 1) > 1 else "")
                   + (f" × {p.data_parallel_size} replicas" if (p.data_parallel_size or 1) > 1 else "")
                   + f", max_model_len {p.max_model_len}, gpu_memory_utilization {p.gpu_memory_utilization}, "
                   f"max_num_seqs {p.max_num_seqs}, max_num_batched_tokens {p.max_num_batched_tokens}"),
        ("Memory", f"per GPU {p.memory.get('gpu_gib')} GiB: weights {p.memory.get('weights_gib')} + overhead "
                   f"{p.memory.get('overhead_gib')} + KV {p.memory.get('kv_available_gib')} GiB "
                   f"({p.memory.get('kv_bytes_per_token')} B/token)"),
        ("Service", f"{p.service_manager}; endpoint http://{p.engine_host}:{p.engine_port}/v1"),
        ("Command", "vllm serve " + shlex.join(p.serve_args)),
    ]
    for k, v in rows:
        out.print(f"  {k:<8} {v}", markup=False)
    for w in p.why:
        out.print(f"  · {esc(w)}")
    for w in p.warnings:
        out.print(f"  [yellow]! {esc(w)}[/]")


# --------------------------------------------------------------------------- playbook runs

_STATUS_STYLE = {"ok": "green", "changed": "yellow", "failed": "bold red", "skipped": "cyan"}


def task_event(host: str, task: str, r) -> None:  # noqa: ANN001
    style = _STATUS_STYLE.get(r.status, "")
    if r.status == "ok" and not r.diffs and not getattr(r, "show", False):
        return
    out.print(f"[{style}]{r.status:<8}[/] {esc(host)} | {esc(task)}: {esc(r.msg)}", markup=True, highlight=False)
    for d in r.diffs:
        if d:
            out.print(d.rstrip("\n"), markup=False, highlight=False)


def recap_human(recaps) -> None:  # noqa: ANN001
    t = Table(title="RECAP", title_justify="left", box=None, pad_edge=False)
    for col in ("host", "ok", "changed", "failed", "skipped", "rescued", "ignored", "unreachable", "time", "execs"):
        t.add_column(col)
    for r in recaps:
        t.add_row(esc(r.host), str(r.ok), f"[yellow]{r.changed}[/]" if r.changed else "0",
                  f"[red]{r.failed}[/]" if r.failed else "0", str(r.skipped), str(r.rescued), str(r.ignored),
                  "[red]yes[/]" if r.unreachable else "no", f"{r.time_s:.2f}s", str(r.execs))
    out.print(t)
    for r in recaps:
        if r.error:
            error(r.error if r.error.startswith(f"{r.host}:") else f"{r.host}: {r.error}")


def recap_json(recaps) -> None:  # noqa: ANN001
    json_line({"hosts": {r.host: r.to_json() for r in recaps}})


# --------------------------------------------------------------------------- provision


def progress_line(host: str, text: str) -> None:
    out.print(f"{host}: {text}", markup=False, highlight=False)


def phases_line(phases: dict) -> str:
    """``connect 0.02 s · probe 0.11 s · ...`` in the order they happen."""
    return " · ".join(f"{k} {v:.2f} s" for k, v in phases.items())


def provision_human(results, verbose: bool = False) -> None:  # noqa: ANN001
    recaps = [r.recap for r in results if r.recap]
    for r in results:
        if r.refused:
            out.print(f"[bold]{esc(r.host)}[/]: [bold red]REFUSED[/] before installing anything: {esc(r.refused)}")
            if r.plan is not None:
                for w in r.plan.ways_out:
                    out.print(f"  would work: {w}", markup=False)
    if recaps:
        recap_human(recaps)
    for r in results:
        rd = r.readiness
        if rd is None:
            continue
        if rd.ready and r.plan is not None and r.plan.role == "follower":
            out.print(f"[green]{esc(r.host)}: joined[/] {esc(r.plan.group)} as node rank {r.plan.node_rank} of "
                      f"{r.plan.nnodes} (headless; its log shows its ranks and the head's address)")
        elif rd.ready:
            c = rd.completion or {}
            out.print(f"[green]{esc(r.host)}: verified[/] — a 1-token chat completion answered in {c.get('ms')} ms "
                      f"(model {esc(c.get('model'))}); "
                      f"endpoint http://{esc(r.plan.engine_host)}:{r.plan.engine_port}/v1 "
                      f"on the host — `invoke tunnel --host {esc(r.host)}` to reach it")
            if verbose and r.phases:
                out.print(f"  phases: {phases_line(r.phases)}", markup=False)
        else:
            error(f"{r.host}: {rd.error}")
            if rd.diagnosis:
                out.print(f"  diagnosis: {rd.diagnosis}", markup=False)
            if r.rolled_back is not None:
                out.print("  rolled back: the previous verified configuration is serving again" if r.rolled_back
                          else "  roll back attempted, but the previous configuration did not come back either",
                          markup=False)
            for line in rd.last_lines[-12:]:
                out.print(f"  | {line}", markup=False, highlight=False)


def provision_json(results) -> None:  # noqa: ANN001
    hosts = {}
    for r in results:
        d = r.recap.to_json() if r.recap else {"ok": 0, "changed": 0, "failed": 1, "skipped": 0, "unreachable": False}
        if r.refused:
            d.update(failed=1, refused=r.refused)
        if r.readiness is not None:
            d["ready"] = r.readiness.ready
            if r.readiness.error:
                d["error"] = r.readiness.error
            if r.readiness.diagnosis:
                d["diagnosis"] = r.readiness.diagnosis
        if r.rolled_back is not None:
            d["rolled_back"] = r.rolled_back
        if r.phases:
            d["phases"] = r.phases
        hosts[r.host] = d
    json_line({"hosts": hosts})


# --------------------------------------------------------------------------- status and control


def status_json(outcomes) -> None:  # noqa: ANN001
    for o in outcomes:
        if o.ok:
            json_line(o.value.to_json())
        else:
            outcome_error(o)


def _uptime(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def status_human(outcomes) -> None:  # noqa: ANN001
    t = Table(box=None, pad_edge=False)
    for col in ("host", "service", "ready", "model", "vLLM", "uptime", "restarts", "GPU memory", "GPU util",
                "endpoint"):
        t.add_column(col)
    for o in outcomes:
        if not o.ok:  # the reason, one line each, follows the table
            t.add_row(esc(o.host.name), "[red]unreachable[/]", "-", "-", "-", "-", "-", "-", "-", "(below)")
            continue
        s = o.value
        mem = ", ".join(f"{(g['memory_used_mib'] or 0) / 1024:.0f}/{(g['memory_total_mib'] or 0) / 1024:.0f} GiB"
                        for g in s.gpus) or "-"
        util = ", ".join(f"{g['utilization_pct']}%" for g in s.gpus if g.get("utilization_pct") is not None) or "-"
        style = {"active": "green", "failed": "red"}.get(s.service, "yellow")
        t.add_row(esc(s.host), f"[{style}]{esc(s.service)}[/]", "yes" if s.ready else "no", esc(s.model or "-"),
                  esc(s.vllm_version or "-"), _uptime(s.uptime_s), str(s.restarts), mem, util, esc(s.endpoint or "-"))
    out.print(t)
    for o in outcomes:
        if not o.ok:
            outcome_error(o)


def deployment_json(d) -> None:  # noqa: ANN001
    json_line(d.to_json())


def deployment_human(d) -> None:  # noqa: ANN001
    """One deployment: its state, then one row per node (multinode: role, rank, private address, versions) or
    per replica (in the router's rotation, requests running / waiting / served, from the engine's /metrics)."""
    style = {"ready": "green", "degraded": "yellow", "down": "red"}[d.state]
    out.print(f"[bold]{esc(d.name)}[/] ({d.kind}): [{style}]{d.state}[/]")
    t = Table(box=None, pad_edge=False)
    cols = ("node", "role", "rank", "address", "service", "ready", "model", "vLLM", "GPUs", "uptime") \
        if d.kind == "multinode" else ("replica", "service", "ready", "in rotation", "running", "waiting", "served",
                                       "model", "vLLM", "uptime")
    for col in cols:
        t.add_column(col)
    for n in d.nodes:
        s = n.engine
        if s is None:
            t.add_row(esc(n.host), *(["-"] * (len(cols) - 2)), "(below)")
            continue
        svc = f"[{ {'active': 'green', 'failed': 'red'}.get(s.service, 'yellow') }]{esc(s.service)}[/]"
        if d.kind == "multinode":
            ready = ("yes" if s.ready else "no") if n.role == "head" else "-"
            where = f"{n.address or '-'} ({n.interface})" if n.interface else (n.address or "-")
            gpus = str(len(s.gpus)) if s.gpus else "-"
            t.add_row(esc(n.host), esc(n.role or "-"), str(n.rank if n.rank is not None else "-"), esc(where), svc,
                      ready, esc(s.model or "-"), esc(s.vllm_version or "-"), gpus, _uptime(s.uptime_s))
        else:
            load = s.load or {}
            rot = "-" if n.in_rotation is None else ("yes" if n.in_rotation else "[red]no[/]")
            t.add_row(esc(n.host), svc, "yes" if s.ready else "no", rot,
                      *(str(load.get(k, "-")) for k in ("running", "waiting", "served")), esc(s.model or "-"),
                      esc(s.vllm_version or "-"), _uptime(s.uptime_s))
    out.print(t)
    for n in d.nodes:
        if n.error:
            error(f"{n.host}: {n.error}")


def control_groups_human(action: str, results) -> None:  # noqa: ANN001
    for g in results:
        for name, rd in g.nodes.items():
            msg = f"{g.group}/{name}: {action.replace('stop', 'stopp')}ed with the deployment"
            if rd is not None:
                msg += "; ready" if rd.ready else f"; NOT ready: {rd.error}"
            out.print(msg, markup=False)
            if rd is not None and not rd.ready and rd.diagnosis:
                out.print(f"  diagnosis: {rd.diagnosis}", markup=False)


def control_human(action: str, outcomes) -> None:  # noqa: ANN001
    for o in outcomes:
        if not o.ok:
            outcome_error(o)
            continue
        rd = o.value.ready
        what = f"{action}ed" if o.value.changed else f"nothing to {action}"
        msg = f"{o.host.name}: {what.replace('stoped', 'stopped')}"
        if rd is not None:
            msg += "; ready (a completion answered)" if rd.ready else f"; NOT ready: {rd.error}"
        out.print(msg, markup=False)
        if rd is not None and not rd.ready and rd.diagnosis:
            out.print(f"  diagnosis: {rd.diagnosis}", markup=False)


def bench_human(result: dict) -> None:
    t = Table(title="no-op play (whole CLI wall time, seconds)", title_justify="left", box=None, pad_edge=False)
    for col in ("tool", "hosts", "median", "min", "max", "exec/host", "conn/host"):
        t.add_column(col)
    for r in result["rows"]:
        t.add_row(r["tool"], str(r["hosts"]), f"{r['median_s']:.3f}", f"{r['min_s']:.3f}", f"{r['max_s']:.3f}",
                  f"{r['exec_per_host']:g}", f"{r['conn_per_host']:g}")
    out.print(t)
    for r in result.get("ratios", []):
        out.print(f"gpuprov / {r['vs']} at {r['hosts']} hosts: {r['ratio']:.3f}×", markup=False)
    for e in result.get("extra", []):
        if e.get("what") == "first provision" and "ratio" in e:
            out.print(f"first provision (real engine): gpuprov {e['gpuprov_s']:.1f} s, by hand {e['by_hand_s']:.1f} s "
                      f"→ {e['ratio']:.2f}×", markup=False)
            out.print(f"  gpuprov: {phases_line(e['phases'])}", markup=False)
            out.print(f"  by hand: {phases_line(e['by_hand_phases'])}", markup=False)
        else:
            out.print(json.dumps(e), markup=False)
