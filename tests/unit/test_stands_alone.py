"""The repository stands alone: its files, copied the way a clone would have them into an empty folder with nothing
beside it, pass the unit tests there (the recorded data, the personas and the docs all travel with it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ..conftest import REPO

#: what a file that reaches outside the clone would say: the sibling folder the project was developed beside
SIBLING = "shared"
OUTSIDE = (f"../{SIBLING}", f"GPUPROV_{SIBLING.upper()}")


def test_no_file_reaches_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    bad = []
    for rel in files:
        p = REPO / rel
        if p.is_symlink():
            target = (p.parent / os.readlink(p)).resolve()
            if REPO.resolve() not in (target, *target.parents):
                bad.append(f"{rel} -> {os.readlink(p)}")
            continue
        if p.suffix in (".py", ".md", ".yml", ".yaml", ".toml", ".j2", ".txt", "") and p.is_file():
            text = p.read_text(errors="replace")
            if any(needle in text for needle in OUTSIDE):
                bad.append(rel)
    assert bad == []


@pytest.mark.timeout(600)
def test_unit_tests_pass_in_a_lone_copy(tmp_path):
    """Tracked and new (not ignored) files of the working tree, as the next commit would hold them."""
    if os.environ.get("GPUPROV_IN_LONE_COPY"):
        pytest.skip("already inside the lone copy")
    if not [p for p in REPO.parent.iterdir() if p != REPO] and (REPO / ".git").is_dir():
        # a clone with nothing beside it (what .ci/run makes): the suite running here already is that proof
        pytest.skip(f"this run is itself in a lone clone ({REPO}, nothing beside it)")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, timeout=30)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    dest = tmp_path / "lone" / "gpuprov"  # nothing beside it
    dest.mkdir(parents=True)
    names = [n for n in listed.stdout.decode().split("\0") if n and (REPO / n).exists()]
    subprocess.run(["tar", "-C", str(REPO), "--null", "-T", "-", "-cf", str(tmp_path / "tree.tar")],
                   input="\0".join(names).encode(), check=True, timeout=120)
    subprocess.run(["tar", "-C", str(dest), "-xf", str(tmp_path / "tree.tar")], check=True, timeout=120)
    assert not (dest.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPROV_")}
    env.update(PYTHONPATH=str(dest / "src"), GPUPROV_IN_LONE_COPY="1", HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"],
                       cwd=dest, env=env, capture_output=True, text=True, timeout=580)
    tail = "\n".join(p.stdout.splitlines()[-15:])
    assert p.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail, tail
    # the copy's own gpuprov was the one imported (not the checkout's editable install)
    check = subprocess.run([sys.executable, "-c", "import gpuprov; print(gpuprov.__file__)"], cwd=dest, env=env,
                           capture_output=True, text=True, timeout=30)
    assert check.stdout.strip().startswith(str(dest)), check.stdout
