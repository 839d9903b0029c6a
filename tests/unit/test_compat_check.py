"""`invoke compat-check` against the lab's package index (its Simple API handler, on 127.0.0.1, serving wheels
shaped like vLLM's releases: real METADATA with Requires-Python and the torch pin, a payload, upload times)."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from gpuprov.compat import matrix
from gpuprov.releases import compat_check, index_files, python_range, releases, torch_pin
from gpuprov.serve_flags import recorded_versions
from gpuprov.sim.services import make_handler
from gpuprov.sim.wheels import write_wheel

from .test_bad_inputs import project, run_cli


def release_wheel(folder: Path, version: str, torch: str, python: str, date: str) -> None:
    """A wheel named and shaped like vLLM's release (the METADATA gpuprov reads, 300 KB of payload after it)."""
    dist = f"vllm-{version}.dist-info"
    meta = (f"Metadata-Version: 2.4\nName: vllm\nVersion: {version}\nRequires-Python: {python}\n"
            "Requires-Dist: regex\nRequires-Dist: torch-c-dlpack-ext; extra == \"cuda\"\n"
            f"Requires-Dist: torch=={torch}\nRequires-Dist: torchvision==0.29.0\n")
    path = folder / f"vllm-{version}-cp38-abi3-manylinux_2_28_x86_64.whl"
    write_wheel(path, [(f"{dist}/METADATA", meta.encode(), None), ("vllm/_payload.bin", os.urandom(300_000), None)],
                dist)
    stamp = dt.datetime.fromisoformat(f"{date}T10:00:00+00:00").timestamp()
    os.utime(path, (stamp, stamp))


def mirror_compat(folder: Path) -> None:
    """Every compat.yml row as the registry shows it."""
    for row in matrix()["vllm"]:
        lo, hi = row["python"]
        release_wheel(folder, row["version"], row["torch"], f"<3.{int(hi.split('.')[1]) + 1},>={lo}", str(row["date"]))


@pytest.fixture
def index(tmp_path):
    (tmp_path / "wheels").mkdir()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(tmp_path))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield tmp_path / "wheels", f"http://127.0.0.1:{srv.server_address[1]}/simple"
    finally:
        srv.shutdown()
        srv.server_close()


def test_an_index_that_matches_compat_yml_passes(index):
    folder, url = index
    mirror_compat(folder)
    r = compat_check(url, recorded_versions())
    assert r.exit_code == 0 and r.newest == matrix()["vllm"][0]["version"]
    rows = {x.version: x for x in r.rows}
    assert set(rows) == {str(x["version"]) for x in matrix()["vllm"]}
    assert rows["0.33.0"].torch == "2.14.0" and rows["0.26.0"].torch == "2.11.0"  # read out of the wheels by range
    assert rows["0.33.0"].date == "2026-11-02" and rows["0.33.0"].flag_table and not rows["0.33.0"].problems
    assert rows["0.31.0"].notes == ["no flag table (pinned, it plans with a warning)"]


def test_a_new_release_or_a_stale_row_fails_and_says_which(index, tmp_path):
    folder, url = index
    mirror_compat(folder)
    release_wheel(folder, "0.34.0", "2.15.0", "<3.15,>=3.11", "2026-11-30")
    release_wheel(folder, "0.32.0", "2.13.1", "<3.15,>=3.12", "2026-10-18")  # the registry disagrees with the row
    r = compat_check(url, recorded_versions())
    assert r.exit_code == 1 and r.newest == "0.34.0"
    rows = {x.version: x for x in r.rows}
    assert rows["0.34.0"].problems == ["missing from compat.yml"] and not rows["0.34.0"].in_compat
    assert "stale: compat.yml says torch 2.13.0, the wheel pins torch==2.13.1" in rows["0.32.0"].problems
    assert any("Requires-Python <3.15,>=3.12 admits 3.12–3.14" in p for p in rows["0.32.0"].problems)
    (tmp_path / "p").mkdir()
    cli = run_cli(project(tmp_path / "p"), ["compat-check", "--index", url, "--json"])
    assert cli.returncode == 1, cli.stderr
    doc = json.loads(cli.stdout)
    assert doc["newest"] == "0.34.0" and doc["ok"] is False and doc["index"] == url


def test_the_html_simple_api_is_read_too(index, monkeypatch):
    """An index without PEP 691 JSON: the PEP 503 page gives the files (no upload times there)."""
    folder, url = index
    mirror_compat(folder)
    monkeypatch.setattr("gpuprov.releases.SIMPLE_JSON", "application/x-not-offered")
    rels = releases(index_files(url))
    assert [r.version for r in rels] == [str(x["version"]) for x in matrix()["vllm"]]
    assert rels[0].date is None and rels[0].wheel_url.endswith("manylinux_2_28_x86_64.whl")


def test_pins_and_python_ranges_are_read_as_packaging_reads_them():
    meta = ("Metadata-Version: 2.4\nName: vllm\nRequires-Dist: torch==2.9.0; platform_machine == \"aarch64\"\n"
            "Requires-Dist: torch==2.14.0; platform_machine == \"x86_64\"\n")
    assert torch_pin(meta) == "2.14.0"
    assert torch_pin("Name: x\nRequires-Dist: torch>=2\n") is None
    assert python_range("<3.15,>=3.11") == ("3.11", "3.14") and python_range(">=3.10") == ("3.10", "3.20")
    assert python_range(None) is None and python_range("not a spec") is None
