"""weights: wait for the model download that ``gpuprov-fetch start`` runs in the background, showing bytes."""

from __future__ import annotations

import json
import time
from typing import Any

from ..errors import RemoteError
from .base import Change, NoOp, Op, OpContext, State


def bar(done: int, total: int | None, secs: float) -> str:
    if not total:
        return f"[DOWNLOAD] {done / 2**30:.2f}GB ({secs:.0f}s)"
    pct = min(100, done * 100 // max(total, 1))
    unit, scale = ("GB", 2**30) if total >= 2**30 else ("MB", 2**20)
    return (f"[DOWNLOAD] {'#' * (pct * 8 // 100)}{'-' * (8 - pct * 8 // 100)} {done / scale:.1f}{unit} / "
            f"{total / scale:.1f}{unit} - downloading weights... ({secs:.0f}s)")


class Weights(Op):
    name = "weights"
    args = {"marker": True, "hf_home": True, "fetch": True, "python": True, "timeout": False}

    def queries(self, ctx: OpContext) -> list[State]:
        return [{"kind": "stat", "path": str(self.a["marker"])}]

    def check(self, ctx: OpContext, state: list[State]) -> NoOp | Change:
        if state[0].get("exists"):
            return NoOp("weights downloaded")
        return Change("wait for the weights download", (), poll=self._poll, changes=True)

    def _poll(self, runner: Any, ctx: OpContext) -> None:
        timeout = float(self.a.get("timeout", 7200))
        start = time.monotonic()
        argv = [str(self.a["python"]), str(self.a["fetch"]), "status", "--marker", str(self.a["marker"]),
                "--hf-home", str(self.a["hf_home"])]
        last = ""
        while time.monotonic() - start < timeout:
            res = runner.run(argv, timeout=60)
            try:
                st = json.loads(res.stdout)
            except ValueError:
                raise RemoteError(f"weights status unreadable: {res.stderr.strip()[-300:]}") from None
            if st.get("phase") == "failed":
                raise RemoteError(f"weights download failed: {st.get('error')}")
            if st.get("phase") == "done":
                if ctx.on_progress:
                    ctx.on_progress(bar(st.get("done_bytes", 0), st.get("done_bytes") or None, time.monotonic() - start)
                                    .replace("downloading weights...", "weights downloaded"))
                return
            text = bar(int(st.get("done_bytes") or 0), st.get("total_bytes"), time.monotonic() - start)
            if ctx.on_progress and text != last:
                ctx.on_progress(text)
                last = text
            time.sleep(1.0)
        raise RemoteError(f"weights not downloaded after {timeout:g} s")
