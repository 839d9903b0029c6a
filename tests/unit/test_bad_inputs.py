"""Every bad input in tests/fixtures/bad_inputs.yml ends in one clear line, the documented exit code, and no
traceback: the CLI is run as a user runs it (``invoke ...`` in a project folder), needing no root and no lab."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from ..conftest import FIXTURES, REPO

CASES = yaml.safe_load((FIXTURES / "bad_inputs.yml").read_text())
GOOD_FACTS = REPO / "examples" / "facts" / "fleet.jsonl"


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ports():
    """A local HTTP server (answers, but is not SSH) and a local port nothing listens on."""
    srv = HTTPServer(("127.0.0.1", 0), _Hello)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    try:
        yield {"http_port": srv.server_address[1], "closed_port": closed}
    finally:
        srv.shutdown()
        srv.server_close()


def project(tmp_path: Path) -> Path:
    """A scratch project folder: tasks.py and nothing else (its own inventory/ and .gpuprov/ come from the case)."""
    shutil.copy(REPO / "tasks.py", tmp_path / "tasks.py")
    shutil.copy(REPO / "invoke.yaml", tmp_path / "invoke.yaml")
    return tmp_path


def run_cli(cwd: Path, args: list[str], env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GPUPROV_")}
    clean.update(HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env=clean, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def fill(text: str, values: dict) -> str:
    return text.format(**values) if "{" in text else text


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input_gets_one_line(case, tmp_path, ports):
    cwd = project(tmp_path)
    values = {"dir": str(cwd), "good_facts": str(GOOD_FACTS), **ports}
    for rel, content in (case.get("files") or {}).items():
        f = cwd / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(content)
    before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    env = {k: fill(str(v), values) for k, v in (case.get("env") or {}).items()}
    p = run_cli(cwd, [fill(a, values) for a in case["args"]], env)
    both = p.stdout + p.stderr
    assert "Traceback" not in both, both
    errors = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, f"expected one line on stderr, got:\n{p.stderr}"
    assert errors[0].startswith("error: "), errors[0]
    assert fill(case["says"], values) in errors[0], errors[0]
    assert p.returncode == case["code"], (p.returncode, both)
    # a dead background tunnel keeps its log (that is where its reason is); nothing else may appear
    after = sorted(r for r in (p.relative_to(cwd) for p in cwd.rglob("*"))
                   if r.parts[:2] not in ((".gpuprov",), (".gpuprov", "tunnels")) or r.suffix == ".pid")
    assert after == before, "a refused command left files behind"


def test_every_case_has_a_unique_name_and_a_documented_code():
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))
    assert {c["code"] for c in CASES} <= {1, 2, 3, 4}
