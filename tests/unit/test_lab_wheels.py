"""The lab's wheel rewriting (real_engine.repackage over wheels.write_wheel): a new distribution name and local
version, requirements dropped, dist-info renamed, and a RECORD that matches every file (uv rejects one that does
not — a path with a comma once broke it)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import sys
import zipfile

from gpuprov.sim.real_engine import repackage
from gpuprov.sim.wheels import write_wheel

META = ("Metadata-Version: 2.1\nName: demo-cpu\nVersion: 1.0\nRequires-Dist: numpy>=2\n"
        "Requires-Dist: torchvision; platform_machine != \"riscv64\"\nRequires-Dist: TorchAudio\n\nThe description.\n")


def test_repackage_renames_drops_and_rehashes(tmp_path):
    src = tmp_path / "demo_cpu-1.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    write_wheel(src, [("demo/__init__.py", b"X = 1\n", None),
                      ("demo/configs/E=1,N=14336,device=A100.json", b"{}", None),
                      ("demo_cpu-1.0.dist-info/METADATA", META.encode(), None),
                      ("demo_cpu-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\nTag: cp312-cp312-linux_x86_64\n", None)],
                "demo_cpu-1.0.dist-info")
    out = repackage(src, tmp_path, name="demo", version="1.0+cpu", drop=("torchvision", "torchaudio"))
    assert out.name == "demo-1.0+cpu-cp38-abi3-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert {"demo/__init__.py", "demo-1.0+cpu.dist-info/METADATA", "demo-1.0+cpu.dist-info/RECORD"} <= names
        assert not any(n.startswith("demo_cpu-1.0.dist-info") for n in names)
        meta = z.read("demo-1.0+cpu.dist-info/METADATA").decode()
        assert "Name: demo\nVersion: 1.0+cpu\nRequires-Dist: numpy>=2\n\nThe description." in meta
        assert z.read("demo-1.0+cpu.dist-info/WHEEL").decode().endswith("Tag: cp38-abi3-manylinux_2_28_x86_64\n")
        rows = list(csv.reader(io.StringIO(z.read("demo-1.0+cpu.dist-info/RECORD").decode())))
        assert {r[0] for r in rows} == names
        for path, digest, size in rows:
            if path.endswith("RECORD"):
                assert (digest, size) == ("", "")
                continue
            data = z.read(path)
            want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (want, len(data)), path


def test_real_tier_says_why_it_cannot_run(tmp_path, monkeypatch):
    from gpuprov.sim import real_engine

    monkeypatch.setattr(real_engine, "CACHE", tmp_path / "no-cache")
    monkeypatch.setattr(real_engine, "find_links", lambda: [tmp_path])  # a find-links folder without the torch wheel
    why = real_engine.unavailable()
    assert why and "torch 2.13.0+cpu" in why and "find-links" in why
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    (tmp_path / f"torch-2.13.0+cpu-{tag}-{tag}-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert real_engine.unavailable() is None
