"""Inventory: groups, precedence with provenance, host selection, and clear errors with file and line."""

from __future__ import annotations

import textwrap

import pytest

from gpuprov.errors import InventoryError, UsageError
from gpuprov.inventory import Inventory, Var, parse_adhoc, parse_extra_vars


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


LAB = """\
all:
  vars:
    model: all-model
    max_num_seqs: 64
  children:
    gpus:
      vars:
        model: gpus-model
        kv_cache_dtype: fp8
      children:
        a100s:
          vars:
            model: a100-model
          hosts:
            a1:
              address: 10.0.0.5
              port: 2222
              user: ubuntu
            a2:
              model: host-model
    runpod:
      hosts:
        pod1: {address: 203.0.113.7, port: 22022}
"""


def test_precedence_and_provenance(tmp_path):
    inv = Inventory.from_path(write(tmp_path, "lab.yml", LAB), {"model": Var("default", "built-in default"),
                                                                  "engine_port": Var(8000, "built-in default")})
    a1 = inv.host("a1")
    assert (a1.address, a1.port, a1.user) == ("10.0.0.5", 2222, "ubuntu")
    assert a1.groups == ("all", "gpus", "a100s")
    assert a1.var("model") == "a100-model"
    assert a1.vars["model"].source.endswith("lab.yml:13 (group a100s)")
    assert a1.vars["kv_cache_dtype"].source.endswith("lab.yml:9 (group gpus)")
    assert a1.vars["max_num_seqs"].source.endswith("lab.yml:4 (group all)")
    assert a1.vars["engine_port"].source == "built-in default"
    a2 = inv.host("a2")
    assert a2.var("model") == "host-model" and a2.vars["model"].source.endswith("(host a2)")
    assert a2.address == "a2"  # no address: the name is the address
    cli = a2.with_vars({"model": "cli-model"}, "command line")
    assert cli.vars["model"] == Var("cli-model", "command line")
    assert inv.host("pod1").var("model") == "all-model"


def test_select_group_comma_and_adhoc(tmp_path):
    inv = Inventory.from_path(write(tmp_path, "lab.yml", LAB))
    assert [h.name for h in inv.select("gpus")] == ["a1", "a2"]
    assert [h.name for h in inv.select("pod1,a1,pod1")] == ["pod1", "a1"]
    h = inv.select("ubuntu@198.51.100.4:2200")[0]
    assert (h.user, h.address, h.port) == ("ubuntu", "198.51.100.4", 2200)
    alias = inv.select("mybox", ssh_config_hosts=["mybox"])[0]
    assert alias.address == "mybox" and alias.port is None
    with pytest.raises(UsageError, match="unknown host or group 'nope'.*known: a1, a2, pod1"):
        inv.select("nope")


def test_folder_merges_files_and_sim_file(tmp_path):
    write(tmp_path, "a.yml", "lab:\n  hosts:\n    x1: {address: 10.1.1.1}\n")
    write(tmp_path, "sim.yml", "sim:\n  vars: {user: root}\n  hosts:\n    s1: {address: 10.2.2.2}\n")
    inv = Inventory.from_path(tmp_path)
    assert sorted(inv.hosts) == ["s1", "x1"]
    assert inv.host("s1").user == "root"


@pytest.mark.parametrize(
    "text,line,needle",
    [
        ("all:\n  hosts:\n    a: {address: 1.2.3.4\n", 4, "malformed YAML"),
        ("all:\n  hosts:\n    a:\n      port: twenty-two\n", 4, "port must be int"),
        ("all:\n  hosts:\n    a:\n      port: 70000\n", 4, "out of range"),
        ("all:\n  host:\n    a: {}\n", 2, "unknown key 'host'"),
        ("all:\n  hosts:\n    a: {}\n    a: {}\n", 4, "duplicate key"),
        ("all:\n  vars:\n    bad-name: 1\n", 3, "invalid var name"),
        ("all:\n  hosts: [a, b]\n", 2, "must be a mapping"),
        ("all:\n  children:\n    g:\n      children:\n        g: {}\n", 5, "own ancestor"),
        ("- just\n- a list\n", 1, "top level"),
        ("all:\n  hosts:\n    'bad host': {}\n", 3, "invalid host name"),
    ],
)
def test_bad_inventory_names_file_and_line(tmp_path, text, line, needle):
    p = write(tmp_path, "bad.yml", text)
    with pytest.raises(InventoryError) as ei:
        Inventory.from_path(p)
    assert needle in str(ei.value)
    assert f"bad.yml:{line}:" in str(ei.value)


def test_missing_inventory(tmp_path):
    with pytest.raises(InventoryError, match="no such inventory"):
        Inventory.from_path(tmp_path / "nope.yml")


def test_extra_vars():
    assert parse_extra_vars(["a=1", "b=true", "c=hello world", "d=0.9", "e=", "f=a=b"]) == {
        "a": 1, "b": True, "c": "hello world", "d": 0.9, "e": "", "f": "a=b"}
    assert parse_extra_vars(["m=$(rm -rf /)"]) == {"m": "$(rm -rf /)"}
    with pytest.raises(UsageError):
        parse_extra_vars(["novalue"])
    with pytest.raises(UsageError):
        parse_extra_vars(["1bad=x"])


@pytest.mark.parametrize("spec", ["root@", "a b", "user@host:port", "x@[::1", "h:0", "h:99999"])
def test_bad_adhoc(spec):
    with pytest.raises(UsageError):
        parse_adhoc(spec)


def test_extra_vars_in_ansibles_forms(tmp_path):
    f = tmp_path / "v.yml"
    f.write_text("a: 1\nb: [x]\n")
    got = parse_extra_vars([f"@{f}", '{"c": {"d": 2}}', 'url="http://10.0.0.1/simple" v=3.20 n=4096 m=0755'])
    # quoted text loses its quotes; a value YAML would change (3.20 → 3.2, 0755 → 493) stays as written
    assert got == {"a": 1, "b": ["x"], "c": {"d": 2}, "url": "http://10.0.0.1/simple", "v": "3.20", "n": 4096,
                   "m": "0755"}


def test_ini_folder_with_group_vars_and_patterns(tmp_path):
    inv = tmp_path / "inv"
    (inv / "group_vars" / "gpus").mkdir(parents=True)
    (inv / "host_vars").mkdir()
    (inv / "hosts.ini").write_text("[gpus]\nnode[1:3] ansible_user=root\n\n[gpus:vars]\nhttp_port=2222\n\n"
                                   "[big:children]\ngpus\n\n[edge]\nnode3 ansible_host=10.0.0.3 ansible_port=2200\n")
    (inv / "group_vars" / "all.yml").write_text("color: blue\nshared: all\n")
    (inv / "group_vars" / "gpus" / "a.yml").write_text("shared: gpus-file\n")
    (inv / "host_vars" / "node2.yml").write_text("shared: host-file\n")
    i = Inventory.from_path(inv)
    assert sorted(h.name for h in i.select("big")) == ["node1", "node2", "node3"]
    assert [h.name for h in i.select("gpus:&edge")] == ["node3"]
    assert sorted(h.name for h in i.select("node*:!edge")) == ["node1", "node2"]
    n3 = i.host("node3")
    assert (n3.address, n3.port, n3.user) == ("10.0.0.3", 2200, "root")
    # the group's inline vars lose to its group_vars/ file, which loses to host_vars/
    assert i.host("node1").var("shared") == "gpus-file" and i.host("node2").var("shared") == "host-file"
    assert i.host("node1").var("http_port") == 2222 and i.host("node1").var("color") == "blue"
