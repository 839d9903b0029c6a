"""Hosts in parallel and the one exit-code rule (README "Exit codes")."""

from __future__ import annotations

import threading

import pytest

from gpuprov import fleet
from gpuprov.errors import ConnectError, HostBusy, UsageError
from gpuprov.executor import HostRecap
from gpuprov.inventory import Host
from gpuprov.plan import Plan

HOSTS = [Host(name=f"h{i}", address=f"203.0.113.{i}") for i in range(6)]


def test_outcomes_keep_host_order_and_the_exception_itself():
    def fn(h: Host) -> str:
        if h.name == "h2":
            raise ConnectError("h2: cannot reach")
        if h.name == "h4":
            raise KeyError("surprise")  # not gpuprov's: still only this host's failure
        return h.name.upper()

    out = fleet.for_each_host(HOSTS, fn)
    assert [o.host.name for o in out] == [h.name for h in HOSTS]
    assert [o.value for o in out] == ["H0", "H1", None, "H3", None, "H5"]
    assert isinstance(out[2].error, ConnectError) and fleet.code_of(out[2]) == 3
    assert isinstance(out[4].error, KeyError) and fleet.code_of(out[4]) == 1
    assert out[4].message == "unexpected KeyError: 'surprise' (run with -v for the traceback)"
    assert fleet.exit_code(out) == 1  # failures of two kinds


@pytest.mark.parametrize("results,code", [
    ([HostRecap("a"), HostRecap("b")], 0),
    ([HostRecap("a"), HostRecap("b", unreachable=True)], 3),
    ([HostRecap("a", failed=1), HostRecap("b", unreachable=True)], 1),
    ([HostRecap.of_error("a", HostBusy("a: busy"))], 4),
    ([HostRecap.of_error("a", ConnectError("a: down"))], 3),
    ([HostRecap.of_error("a", UsageError("a: bad"))], 2),
    ([Plan(False, "a", "m"), Plan(True, "b", "m")], 2),
    ([Plan(True, "a", "m")], 0),
])
def test_exit_code_of_results(results, code):
    assert fleet.exit_code(results) == code


def test_parallelism_is_read_per_call(monkeypatch):
    seen: set[int] = set()
    lock = threading.Lock()
    running = [0]
    gate = threading.Barrier(2, timeout=5)

    def fn(h: Host) -> None:
        with lock:
            running[0] += 1
            seen.add(running[0])
        if h.name in ("h0", "h1"):
            gate.wait()  # with two workers, h0 and h1 run together
        with lock:
            running[0] -= 1

    monkeypatch.setenv("GPUPROV_PARALLEL", "1")
    out = fleet.for_each_host(HOSTS[2:], fn)
    assert all(o.ok for o in out) and seen == {1}
    monkeypatch.setenv("GPUPROV_PARALLEL", "2")
    seen.clear()
    out = fleet.for_each_host(HOSTS[:2], fn)
    assert all(o.ok for o in out) and max(seen) == 2
    monkeypatch.setenv("GPUPROV_PARALLEL", "0")
    with pytest.raises(UsageError, match="GPUPROV_PARALLEL"):
        fleet.for_each_host(HOSTS, fn)
