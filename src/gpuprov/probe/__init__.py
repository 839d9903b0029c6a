"""Probe a host in one round trip: send the stdlib-only ``gpuprov/remote/probe.py`` on stdin, read one JSON object
back."""

from __future__ import annotations

import json
from pathlib import Path

from .. import remote
from ..errors import ProbeError, UsageError
from ..facts import Facts, facts_from_probe, facts_from_text

PROBE_TIMEOUT = 60.0
# without python3 the host still answers with a fact, not a crash
NO_PYTHON = ('printf \'{"probe_version": 1, "errors": {"python": "python3 not found on PATH"}, "kernel": "%s", '
             '"arch": "%s"}\' "$(uname -r)" "$(uname -m)"')


def probe_command(install_root: str | None = None, python: str = "python3", quick: bool = False
                  ) -> tuple[list[str], bytes]:
    """``(argv, stdin)`` of the probe; a custom ``install_root`` is where it looks for an installation first;
    ``quick``: nvidia-smi is not asked while NVML answers what the last verified provision recorded."""
    args = ([install_root] if install_root else []) + (["--quick"] if quick else [])
    argv, stdin = remote.command("probe", *args, python=python)
    shell = ('if command -v "$1" >/dev/null 2>&1; then exec "$@"; else cat >/dev/null; ' + NO_PYTHON + "; fi")
    return ["sh", "-c", shell, "gpuprov-probe", *argv], stdin


def parse_probe_output(host: str, stdout: str, stderr: str = "", sftp: bool | None = None) -> Facts:
    try:
        raw = json.loads(stdout)
    except ValueError:
        tail = stderr.strip().splitlines()[-3:]  # not stdout's end: a cut-short answer ends with the pod's env
        said = " | ".join(tail) or (f"{len(stdout)} bytes that are not JSON" if stdout.strip() else "no output")
        raise ProbeError(f"{host}: the probe printed no JSON: {said}") from None
    if not isinstance(raw, dict):
        raise ProbeError(f"{host}: the probe printed {type(raw).__name__}, not an object")
    return facts_from_probe(host, raw, sftp)


def run_probe(runner, check_sftp: bool = True, quick: bool = False) -> Facts:  # noqa: ANN001 - any Runner
    """The host's facts; a custom ``install_root`` var is where the probe looks for an installation first."""
    root = runner.host.var("install_root")
    argv, stdin = probe_command(root if isinstance(root, str) and root.startswith("/") else None, quick=quick)
    res = runner.run(argv, stdin=stdin, timeout=PROBE_TIMEOUT)
    if res.exit_status != 0 and not res.stdout.strip():
        raise ProbeError(f"{runner.host.name}: the probe exited {res.exit_status}: {res.stderr.strip()[-300:]}")
    sftp = runner.sftp_works() if check_sftp else None
    return parse_probe_output(runner.host.name, res.stdout, res.stderr, sftp)


def read_facts_file(path: str | Path) -> list[Facts]:
    """A saved ``invoke probe --json`` (one host per line, or pretty-printed objects) → each host's facts."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--facts {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        return facts_from_text(text)
    except ValueError as e:
        raise UsageError(f"--facts {path}: {e}; see README \"Facts files\" (examples/facts/)") from None
