"""`invoke bench`: gpuprov against pyinfra and ansible-core on the same job (docs/research/peer-benchmark.md),
on the same simulated hosts, in the same run; plus provision no-op time, tunnel latency and peak memory.

Hosts are the lab's plain sim hosts (real sshd, LogLevel VERBOSE) in their own lab (prefix ``gpb``), so SSH
connections and exec requests per host are counted from each host's sshd log. Peers are installed into
throwaway venvs under /var/cache/gpuprov-bench (kept between runs). Every tool's no-op runs are timed as
whole CLI processes (time.perf_counter around the subprocess) after one warm-up run that makes the changes.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = Path(os.environ.get("GPUPROV_BENCH_PEERS", "/var/cache/gpuprov-bench"))
PEER_PINS = {"ansible": "ansible-core==2.19.14", "pyinfra": "pyinfra==3.10.0"}
BENCH_HOME = REPO / ".gpuprov" / "bench"


def log(msg: str) -> None:
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


def ensure_peer(tool: str) -> Path:
    venv = PEERS / tool
    exe = venv / "bin" / ("ansible-playbook" if tool == "ansible" else "pyinfra")
    if exe.is_file():
        return exe
    log(f"installing {PEER_PINS[tool]} into {venv}")
    PEERS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", PEER_PINS[tool]], check=True, timeout=1200)
    return exe


# --------------------------------------------------------------------------- hosts


def bring_up(n: int):  # noqa: ANN201
    os.environ["GPUPROV_HOME"] = str(BENCH_HOME)
    os.environ["GPUPROV_INVENTORY"] = str(BENCH_HOME / "inventory")
    os.environ["GPUPROV_SIM_PREFIX"] = "gpb"
    os.environ["GPUPROV_SIM_SUBNET"] = "10.232.0.0/24"
    from gpuprov.sim import control as lab_control

    lab = lab_control.sim_lab()
    have = lab.hosts()
    for i in range(1, n + 1):
        name = f"b{i}"
        if name not in have:
            lab_control.sim_up(name, gpu="2x-rtx-a5000_driver-590.44.01")
    hosts = [lab.hosts()[f"b{i}"] for i in range(1, n + 1)]
    for h in hosts:  # the job's 4-line GPU probe, in each host's own /usr/local/bin
        dst = Path(h.dir) / "usrlocal" / "bin" / "fake-nvidia-smi"
        shutil.copy(HERE / "job" / "fake-nvidia-smi", dst)
        dst.chmod(0o755)
    return lab, hosts


def write_inventories(lab, hosts, tmp: Path) -> dict[str, Path]:  # noqa: ANN001
    job = json.loads((HERE / "job" / "vars.json").read_text())
    key = str(lab.client_key)
    kh = BENCH_HOME / "known_hosts"
    # gpuprov
    lines = ["bench:", "  vars:", "    user: root", f"    identity_file: {key}"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in job.items()]
    lines.append("  hosts:")
    for i, h in enumerate(hosts, 1):
        lines += [f"    {h.name}: {{address: {h.address}, host_id: {i}, host_label: {h.name}}}"]
    (tmp / "gpuprov.yml").write_text("\n".join(lines) + "\n")
    # ansible
    lines = ["all:", "  hosts:"]
    for i, h in enumerate(hosts, 1):
        lines += [f"    {h.name}: {{ansible_host: {h.address}, ansible_user: root, "
                  f"ansible_ssh_private_key_file: {key}, host_id: {i}, host_label: {h.name}}}"]
    (tmp / "ansible.yml").write_text("\n".join(lines) + "\n")
    # pyinfra
    entries = ",\n".join(
        f'    ("{h.address}", {{"ssh_user": "root", "ssh_key": "{key}", "ssh_known_hosts_file": "{kh}", '
        f'"ssh_strict_host_key_checking": "yes", "host_id": {i}, "host_label": "{h.name}"}})'
        for i, h in enumerate(hosts, 1))
    (tmp / "pyinfra_inventory.py").write_text(f"bench = [\n{entries},\n]\n")
    return {"gpuprov": tmp / "gpuprov.yml", "ansible": tmp / "ansible.yml", "pyinfra": tmp / "pyinfra_inventory.py"}


def sshd_counts(hosts) -> dict[str, tuple[int, int]]:  # noqa: ANN001
    out = {}
    for h in hosts:
        text = (Path(h.dir) / "sshd.log").read_text(errors="replace")
        out[h.name] = (text.count("Accepted publickey"), text.count("Starting session: command"))
    return out


# --------------------------------------------------------------------------- one tool, one size


def command_for(tool: str, inv: Path, hosts, tmp: Path) -> tuple[list[str], dict]:  # noqa: ANN001
    env = dict(os.environ)
    names = ",".join(h.name for h in hosts)
    if tool == "gpuprov":
        return [str(Path(sys.executable).parent / "invoke"), "play", str(HERE / "gpuprov" / "job.yml"), "--host", names,
                "--inventory", str(inv)], env
    if tool == "ansible":
        cp = Path(tempfile.mkdtemp(prefix="cp", dir=tmp))  # a fresh ControlPath dir: a cold run, like the baseline
        env.update(ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="False",
                   ANSIBLE_SSH_CONTROL_PATH_DIR=str(cp), ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-local"),
                   ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=60s "
                                    f"-o UserKnownHostsFile={BENCH_HOME / 'known_hosts'} "
                                    "-o StrictHostKeyChecking=yes", ANSIBLE_PYTHON_INTERPRETER="auto_silent")
        return [str(ensure_peer("ansible")), "-i", str(inv), str(HERE / "ansible" / "playbook.yml"),
                "-f", str(min(len(hosts), 50))], env
    return [str(ensure_peer("pyinfra")), str(inv), str(HERE / "pyinfra" / "deploy.py"), "-y", "--parallel",
            str(len(hosts))], env


def run_once(argv: list[str], env: dict, cwd: Path) -> float:
    """One whole-CLI run; its wall time. A non-zero exit is an error (the job must succeed)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = p.communicate(timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {p.returncode}:\n{out.decode(errors='replace')[-3000:]}")
    return time.perf_counter() - t0


def stop_ansible_masters(tmp: Path) -> None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(tmp) in cmd and cmd.startswith("ssh"):
            try:
                os.kill(int(pid), 15)
            except OSError:
                pass


def interleaved(commands: dict, hosts, runs: int, tmp: Path) -> dict[str, dict]:  # noqa: ANN001
    """Each command (name -> a function giving (argv, env)) run once to warm up, then ``runs`` rounds of one run
    each, the order rotating every round: every ratio compares runs made side by side, on the same state of this
    (shared, noisy) machine. SSH connections and exec requests per host are counted from the hosts' sshd logs around
    each run."""
    import resource

    walls: dict[str, list[float]] = {k: [] for k in commands}
    counts = {k: [0, 0] for k in commands}
    for make in commands.values():
        argv, env = make()
        run_once(argv, env, HERE)  # warm-up: the first run makes the changes
        stop_ansible_masters(tmp)
    names = list(commands)
    for i in range(runs):
        for k in names[i % len(names):] + names[:i % len(names)]:
            argv, env = commands[k]()
            before = sshd_counts(hosts)
            walls[k].append(run_once(argv, env, HERE))
            stop_ansible_masters(tmp)
            after = sshd_counts(hosts)
            counts[k][0] += sum(after[h.name][0] - before[h.name][0] for h in hosts)
            counts[k][1] += sum(after[h.name][1] - before[h.name][1] for h in hosts)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    n = len(hosts)
    return {k: {"hosts": n, "median_s": round(statistics.median(w), 3), "min_s": round(min(w), 3),
                "max_s": round(max(w), 3), "exec_per_host": round(counts[k][1] / (n * runs), 2),
                "conn_per_host": round(counts[k][0] / (n * runs), 2), "runs": runs, "maxrss_mb_any_child": rss}
            for k, w in walls.items()}


def bench_tools(tools, hosts, invs: dict, runs: int, tmp: Path) -> list[dict]:  # noqa: ANN001
    """The no-op play of every tool on ``hosts``, the tools' runs interleaved."""
    commands = {t: (lambda t=t: command_for(t, invs[t], hosts, tmp)) for t in tools}
    rows = interleaved(commands, hosts, runs, tmp)
    return [{"tool": t, **rows[t]} for t in tools]


# --------------------------------------------------------------------------- provision no-op and tunnel


def bench_provision(hosts, runs: int, play_inv: Path, tmp: Path) -> dict:  # noqa: ANN001
    """``invoke provision`` of already provisioned hosts, its runs interleaved with gpuprov's no-op play on the same
    hosts: the ratio of the two medians is taken side by side."""
    from gpuprov import api
    from gpuprov.provision import provision

    sel = api.select_hosts(",".join(h.name for h in hosts))
    first = provision(sel)
    bad = [r.host for r in first if not r.ok]
    if bad:
        raise RuntimeError(f"provisioning failed on {bad}")
    prov = [str(Path(sys.executable).parent / "invoke"), "provision", "--host", ",".join(h.name for h in hosts),
            "--json"]
    rows = interleaved({"provision": lambda: (prov, dict(os.environ)),
                        "play": lambda: command_for("gpuprov", play_inv, hosts, tmp)}, hosts, runs, tmp)
    p = subprocess.run(prov, cwd=REPO, capture_output=True, text=True, timeout=900)
    recap = json.loads(p.stdout.strip().splitlines()[-1])["hosts"]
    assert all(v["changed"] == 0 and v.get("ready") for v in recap.values()), recap
    r, play = rows["provision"], rows["play"]
    return {"what": "provision no-op", "hosts": len(hosts), "median_s": r["median_s"], "min_s": r["min_s"],
            "max_s": r["max_s"], "exec_per_host": r["exec_per_host"], "play_median_s": play["median_s"],
            "vs_play": round(r["median_s"] / play["median_s"], 3)}


LAT_SCRIPT = r"""
import json, sys, time, urllib.request
n, url = int(sys.argv[1]), sys.argv[2]
ts = []
for _ in range(n):
    t = time.perf_counter()
    urllib.request.urlopen(url, timeout=10).read()
    ts.append((time.perf_counter() - t) * 1000)
ts.sort()
print(json.dumps({"median_ms": ts[len(ts) // 2], "p90_ms": ts[int(len(ts) * 0.9)]}))
"""


def bench_tunnel(host, n: int = 300) -> dict:  # noqa: ANN001
    from gpuprov import api

    h = api.select_hosts(host.name)[0]
    r = api.open_runner(h, api.known_hosts())
    try:
        direct = json.loads(r.run(["python3", "-c", LAT_SCRIPT, str(n), "http://127.0.0.1:8000/v1/models"],
                                  timeout=300).stdout)
    finally:
        r.close()
    out = {"what": "tunnel latency", "requests": n, "direct_median_ms": round(direct["median_ms"], 3)}
    for transport in ("openssh", "paramiko"):
        t = api.open_tunnel(h, 18900, next_free=True, transport=transport)
        try:
            p = subprocess.run([sys.executable, "-c", LAT_SCRIPT, str(n), f"http://127.0.0.1:{t.local_port}/v1/models"],
                               capture_output=True, text=True, timeout=300)
            via = json.loads(p.stdout)
        finally:
            t.stop()
        out[f"{transport}_median_ms"] = round(via["median_ms"], 3)
        out[f"{transport}_added_ms"] = round(via["median_ms"] - direct["median_ms"], 3)
    return out


# --------------------------------------------------------------------------- main


def main(sizes: list[int], runs: int, as_json: bool, keep: bool = False, tools=("gpuprov", "pyinfra", "ansible"),
         provision_sizes: list[int] | None = None, first_provision: bool = False) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="gpuprov-bench-"))
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "kernel": platform.release()}, "rows": [], "extra": []}
    lab = None
    try:
        lab, hosts = bring_up(max(sizes))
        for n in sizes:
            sel = hosts[:n]
            invs = write_inventories(lab, sel, tmp)
            fast = [t for t in tools if not (t == "ansible" and n >= 50)]
            log(f"{', '.join(fast)} × {n} hosts: warm-up + {runs} interleaved runs")
            for row in bench_tools(fast, sel, invs, runs, tmp):
                result["rows"].append(row)
                log(json.dumps(row))
            if len(fast) < len(tools):  # ansible at 50 hosts takes minutes a run: two runs, on its own
                log(f"ansible × {n} hosts: warm-up + 2 runs")
                row = bench_tools(["ansible"], sel, invs, max(1, min(runs, 2)), tmp)[0]
                result["rows"].append(row)
                log(json.dumps(row))
        for n in provision_sizes if provision_sizes is not None else [s for s in sizes if s <= 10]:
            log(f"provision no-op × {n}, interleaved with the no-op play")
            invs = write_inventories(lab, hosts[:n], tmp)
            result["extra"].append(bench_provision(hosts[:n], runs, invs["gpuprov"], tmp))
        log("tunnel latency")
        result["extra"].append(bench_tunnel(hosts[0]))
        if first_provision:
            from first_provision import bench_first_provision

            result["extra"].extend(bench_first_provision())
        result["ratios"] = ratios(result["rows"])
    finally:
        if lab is not None and not keep:
            from gpuprov.sim import control as lab_control

            lab_control.sim_down()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for n in sorted({r["hosts"] for r in rows}):
        g = next((r for r in rows if r["tool"] == "gpuprov" and r["hosts"] == n), None)
        for peer in ("pyinfra", "ansible"):
            p = next((r for r in rows if r["tool"] == peer and r["hosts"] == n), None)
            if g and p:
                out.append({"hosts": n, "vs": peer, "ratio": round(g["median_s"] / p["median_s"], 3)})
    return out
