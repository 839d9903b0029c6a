"""Operation cases from tests/fixtures/ops/cases.yml: arguments + gathered state → commands, no-op, or error."""

from __future__ import annotations

import shlex
from types import SimpleNamespace

import pytest
import yaml

from gpuprov.errors import UsageError
from gpuprov.ops import NoOp, Op, OpContext

from ..conftest import FIXTURES

CASES = yaml.safe_load((FIXTURES / "ops" / "cases.yml").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_op_case(case):
    facts = SimpleNamespace(is_root=case.get("root", True))
    ctx = OpContext(None, facts, become=bool(case.get("become")))
    if "error" in case and "state" not in case:
        with pytest.raises(UsageError, match=None) as ei:
            Op.registry[case["op"]](case["args"], case["name"])
        assert case["error"] in str(ei.value)
        return
    op = Op.registry[case["op"]](case["args"], case["name"])
    assert len(op.queries(ctx)) == len(case["state"]), "one answer per query"
    if "error" in case:
        with pytest.raises(UsageError) as ei:
            op.check(ctx, case["state"])
        assert case["error"] in str(ei.value)
        return
    decision = op.check(ctx, case["state"])
    if "noop" in case:
        assert isinstance(decision, NoOp), decision
        assert case["noop"] in decision.reason
        return
    assert not isinstance(decision, NoOp), decision.reason
    assert [shlex.join(c.argv) for c in decision.commands] == case["commands"]
    if "stdin" in case:
        assert [(c.stdin or b"").decode() for c in decision.commands] == case["stdin"]


def test_every_operation_has_cases():
    covered = {c["op"] for c in CASES}
    assert {"command", "shell", "file", "copy", "apt", "venv", "pip", "service"} <= covered
