"""`invoke probe` over real SSH against simulated hosts (real sshd in network namespaces; stand-in GPUs)."""

from __future__ import annotations

import json
from pathlib import Path

import paramiko
import pytest
import yaml

from gpuprov import api
from gpuprov.connection import KnownHosts, SSHRunner
from gpuprov.errors import AuthError, HostKeyMismatch, HostKeyUnknown
from gpuprov.inventory import Host
from gpuprov.sim.control import sim_lab

from ..conftest import FIXTURES, SMI_DATA

pytestmark = pytest.mark.lab
EXPECTED = yaml.safe_load((FIXTURES / "nvidia-smi-expected.yml").read_text())
XMLS = sorted(p for p in (SMI_DATA / "xml").glob("*.xml"))


def host_name(i: int) -> str:
    return f"x{i}"


@pytest.fixture(scope="module")
def xml_lab(sim):
    """Per recorded XML: a host where NVML answers (the real pynvml in front of the lab's stand-in library) and one
    where only nvidia-smi does; plus hosts with no GPU and with each driver failure."""
    assert XMLS, f"no recorded XML files in {SMI_DATA}"
    for i, xml in enumerate(XMLS):
        sim.up(host_name(i), gpu=str(xml))
        sim.up(f"s{i}", gpu=str(xml), gpu_mode="no-nvml")
    sim.up("nogpu", gpu="none")
    for mode in FAILURES:
        sim.up(f"f-{mode}", gpu=str(XMLS[0]), gpu_mode=mode)
    return sim


FAILURES = {  # --gpu-mode → what the probe must say (the driver's words and the fix)
    "no-driver": "not loaded",
    "driver-not-loaded": "the NVIDIA driver is not loaded (NVML: Driver Not Loaded)",
    "mismatch": "reboot the host or reload the driver",
    "no-permission": "run as root or as a user in the video group",
}


@pytest.mark.parametrize("prefix,source", [("x", "nvml"), ("s", "nvidia-smi")])
def test_probe_every_recorded_xml_over_ssh(xml_lab, prefix, source):
    names = ",".join([f"{prefix}{i}" for i in range(len(XMLS))] + ["nogpu"])
    p = xml_lab.cli("probe", "--host", names, "--json")
    assert p.returncode == 0, p.stderr
    by_host = {d["host"]: d for d in map(json.loads, p.stdout.splitlines())}
    assert len(by_host) == len(XMLS) + 1
    for i, xml in enumerate(XMLS):
        exp = EXPECTED[f"xml/{xml.name}"]
        d = by_host[f"{prefix}{i}"]
        assert d["source"] == source and d["gpu_error"] is None, (xml.name, d["gpu_error"])
        assert d["gpu_disagreement"] is None, (xml.name, d["gpu_disagreement"])
        assert len(d["gpus"]) == exp["count"], xml.name
        assert d["driver_version"] == exp["driver"], xml.name
        assert d["cuda_driver_version"] == exp["cuda"], xml.name
        assert d["gpus"][0]["name"] == exp["name"], xml.name
        assert d["gpus"][0]["memory_total_mib"] == exp["mib"], xml.name
        assert d["gpus"][0]["compute_capability"] == exp["cc"], xml.name
        assert d["systemd"] is False
        assert d["hostname"] == f"{prefix}{i}"
        for key in ("index", "name", "uuid", "pci_bus_id", "memory_total_mib", "compute_capability", "mig_mode"):
            assert key in d["gpus"][0]


def test_both_paths_report_the_same_gpus(xml_lab):
    """NVML and nvidia-smi read the same recording: any difference would be a parser's bug."""
    for i in range(len(XMLS)):
        a, b = (json.loads(xml_lab.cli("probe", "--host", n, "--json").stdout) for n in (f"x{i}", f"s{i}"))
        keys = ("index", "name", "uuid", "pci_bus_id", "memory_total_mib", "compute_capability")
        assert [{k: g[k] for k in keys} for g in a["gpus"]] == [{k: g[k] for k in keys} for g in b["gpus"]], XMLS[i]


def test_host_without_driver_reports_no_gpus(xml_lab):
    p = xml_lab.cli("probe", "--host", "nogpu", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["gpus"] == [] and d["driver_version"] is None and "no NVIDIA driver" in d["gpu_error"]


@pytest.mark.parametrize("mode", list(FAILURES))
def test_each_driver_failure_is_a_fact_and_the_planner_refuses_with_it(xml_lab, mode):
    p = xml_lab.cli("probe", "--host", f"f-{mode}", "--json")
    d = json.loads(p.stdout)
    assert d["gpus"] == [] and FAILURES[mode] in d["gpu_error"], d["gpu_error"]
    plan = xml_lab.cli("plan", "--host", f"f-{mode}", "--json")
    assert plan.returncode == 2
    assert FAILURES[mode] in json.loads(plan.stdout)["reason"]


def test_human_output(xml_lab):
    p = xml_lab.cli("probe", "--host", host_name(0))
    assert p.returncode == 0
    exp = EXPECTED[f"xml/{XMLS[0].name}"]
    assert exp["name"] in p.stdout and exp["driver"] in p.stdout


def test_eight_hosts_are_probed_in_parallel(xml_lab):
    hosts = api.select_hosts(",".join(host_name(i) for i in range(8)))
    outcomes = api.probe(hosts)
    assert all(o.ok for o in outcomes), [str(o.error) for o in outcomes if not o.ok]
    # every host's probe had started before the first one finished: they overlapped
    assert max(o.started for o in outcomes) < min(o.ended for o in outcomes)


def test_unknown_host_and_unreachable_address(xml_lab, lab_env):
    p = xml_lab.cli("probe", "--host", "no-such-host")
    assert p.returncode == 2 and "unknown host or group 'no-such-host'" in p.stderr
    import ipaddress

    net = ipaddress.ip_network(lab_env["GPUPROV_SIM_SUBNET"])
    dead = str(net.network_address + 250)  # on the lab bridge, nobody there
    p = xml_lab.cli("probe", "--host", f"root@{dead}", timeout=60)
    assert p.returncode == 3
    assert f"cannot reach {dead}:22" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_malformed_inventory_via_cli(xml_lab, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("all:\n  hosts:\n    h1:\n      port: [22]\n")
    p = xml_lab.cli("probe", "--host", "h1", "--inventory", str(bad))
    assert p.returncode == 2 and f"{bad}:4:" in p.stderr and "port must be int" in p.stderr


def _sim_host(name: str, lab_env) -> Host:
    return api.select_hosts(name)[0]


def test_host_keys_tofu_pin_mismatch_strict(xml_lab, lab_env, tmp_path):
    a, b = _sim_host(host_name(0), lab_env), _sim_host(host_name(1), lab_env)
    kh = KnownHosts(tmp_path / "known_hosts", user_file=tmp_path / "none")
    with pytest.raises(HostKeyUnknown, match="strict"):
        SSHRunner(a, KnownHosts(kh.path, strict=True, user_file=kh.user_file)).connect()
    assert not kh.path.exists()
    r = SSHRunner(a, kh).connect()  # trust on first use: pinned
    r.close()
    assert a.address in kh.path.read_text()
    SSHRunner(a, KnownHosts(kh.path, strict=True, user_file=kh.user_file)).connect().close()  # pinned: accepted
    # the key for a's address changes (here: b's key appears at a's address)
    b_key = paramiko.Ed25519Key(data=__import__("base64").b64decode(
        Path(sim_lab().hosts()[b.name].dir, "host_ed25519.pub").read_text().split()[1]))
    kh.forget(a.address, 22)
    kh.pin(a.address, b_key)
    with pytest.raises(HostKeyMismatch) as ei:
        SSHRunner(a, kh).connect()
    assert "CHANGED" in str(ei.value) and "invoke forget-host" in str(ei.value)
    assert kh.forget(a.address, 22)  # the documented fix works
    SSHRunner(a, kh).connect().close()


def test_wrong_key_is_an_auth_error(xml_lab, tmp_path):
    a = _sim_host(host_name(0), None)
    other = tmp_path / "other_key"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=30)
    wrong = Host(**{**a.__dict__, "identity_file": str(other)})
    with pytest.raises(AuthError, match="refused our key"):
        SSHRunner(wrong, api.known_hosts()).connect()
    missing = Host(**{**a.__dict__, "identity_file": str(tmp_path / "missing")})
    with pytest.raises(AuthError, match="does not exist"):
        SSHRunner(missing, api.known_hosts()).connect()


def test_connection_basics(xml_lab):
    r = SSHRunner(_sim_host(host_name(0), None), api.known_hosts()).connect()
    try:
        res = r.run(["printf", "%s", "a b; $(echo no) 'q' \"d\"\nnl"])
        assert res.stdout == "a b; $(echo no) 'q' \"d\"\nnl"  # argv reaches the host intact, nothing executed
        res = r.run(["sh", "-c", "cat; echo err >&2; exit 3"], stdin=b"in-data")
        assert (res.exit_status, res.stdout, res.stderr) == (3, "in-data", "err\n")
        # a command that ends without reading its stdin (python3 missing, RunPod's proxy refusing) is its own answer,
        # not a lost connection: 8 MiB outlasts the channel's window, so the host closes it mid-send
        res = r.run(["sh", "-c", "echo early; exit 4"], stdin=b"x" * (8 << 20))
        assert (res.exit_status, res.stdout) == (4, "early\n")
        r.put(b"secret\n", "/root/f.txt", mode=0o600)
        assert r.run(["stat", "-c", "%a %s", "/root/f.txt"]).stdout.strip() == "600 7"
        from gpuprov.errors import RemoteTimeout

        with pytest.raises(RemoteTimeout):
            r.run(["sleep", "5"], timeout=0.5)
        assert r.run(["true"]).ok  # the connection still works after a timeout
    finally:
        r.close()


@pytest.mark.systemd
def test_systemd_host_reports_systemd(sim):
    sim.up("sd1", gpu="a10g_driver-515.105.01", systemd=True)
    p = sim.cli("probe", "--host", "sd1", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["systemd"] is True and d["pid1"] == "systemd"
    assert d["gpus"][0]["name"] == "NVIDIA A10G" and d["driver_version"] == "515.105.01"


def test_plan_on_every_recorded_xml_host(xml_lab, tmp_path):
    """`invoke plan --host sim` probes each sim host over SSH and plans it; refusals exit 2 with JSON printed."""
    names = ",".join([host_name(i) for i in range(len(XMLS))] + ["nogpu"])
    p = xml_lab.cli("plan", "--host", names, "--json", "-e", "model=meta-llama/Llama-3.2-3B-Instruct")
    plans = {d["host"]: d for d in map(json.loads, p.stdout.splitlines())}
    assert len(plans) == len(XMLS) + 1, p.stderr
    assert p.returncode == 2  # some recorded GPUs (Pascal, Volta, old drivers) are refused
    for i, xml in enumerate(XMLS):
        d = plans[host_name(i)]
        for key in ("ok", "reason", "vllm_version", "cuda_variant", "cuda_compat", "torch_backend",
                    "tensor_parallel_size", "max_model_len", "gpu_memory_utilization", "attention_backend",
                    "serve_args"):
            assert key in d, key
        exp = EXPECTED[f"xml/{xml.name}"]
        if d["ok"]:
            assert d["serve_args"][0] == "meta-llama/Llama-3.2-3B-Instruct"
            assert d["cuda_variant"] == ("cu130" if exp["driver"] >= "580" else "cu129")
        else:
            assert d["reason"]
    assert plans["nogpu"]["ok"] is False and "no usable NVIDIA GPU" in plans["nogpu"]["reason"]
    # offline: the same decision from a saved probe
    facts = tmp_path / "facts.json"
    facts.write_text(xml_lab.cli("probe", "--host", host_name(0), "--json").stdout)
    off = xml_lab.cli("plan", "--facts", str(facts), "--json", "-e", "model=meta-llama/Llama-3.2-3B-Instruct")
    d = json.loads(off.stdout)
    on = plans[host_name(0)]
    assert {k: d[k] for k in ("ok", "vllm_version", "cuda_variant", "max_model_len")} == \
        {k: on[k] for k in ("ok", "vllm_version", "cuda_variant", "max_model_len")}
    assert off.returncode == (0 if d["ok"] else 2)
