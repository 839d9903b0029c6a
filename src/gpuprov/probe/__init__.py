"""Probe a host in one round trip: send the stdlib-only ``remote.py`` on stdin, read one JSON object back."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import ProbeError, UsageError
from ..facts import Facts, facts_from_probe, facts_from_text

PROBE_TIMEOUT = 60.0
# `python3 -` reads the script from stdin; without python3 the host still answers with a fact, not a crash.
PROBE_ARGV = [
    "sh",
    "-c",
    'if command -v python3 >/dev/null 2>&1; then exec python3 - "$@"; else cat >/dev/null; '
    'printf \'{"probe_version": 1, "errors": {"python": "python3 not found on PATH"}, "kernel": "%s", "arch": "%s"}\' '
    '"$(uname -r)" "$(uname -m)"; fi',
    "gpuprov-probe",
]


def probe_script() -> bytes:
    return resources.files(__package__).joinpath("remote.py").read_bytes()


def parse_probe_output(host: str, stdout: str, stderr: str = "", sftp: bool | None = None) -> Facts:
    try:
        raw = json.loads(stdout)
    except ValueError:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        raise ProbeError(f"{host}: the probe printed no JSON: {' | '.join(tail) or 'no output'}") from None
    if not isinstance(raw, dict):
        raise ProbeError(f"{host}: the probe printed {type(raw).__name__}, not an object")
    return facts_from_probe(host, raw, sftp)


def run_probe(runner, check_sftp: bool = True) -> Facts:  # noqa: ANN001 - any Runner
    """The host's facts; a custom ``install_root`` var is where the probe looks for an installation first."""
    root = runner.host.var("install_root") if hasattr(runner.host, "var") else None
    argv = PROBE_ARGV + ([str(root)] if isinstance(root, str) and root.startswith("/") else [])
    res = runner.run(argv, stdin=probe_script(), timeout=PROBE_TIMEOUT)
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
