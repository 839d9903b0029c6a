"""vLLM's releases as the package index lists them, checked against ``data/compat.yml`` and the recorded flag
tables (``invoke compat-check``, the maintainer's check when a release lands).

The index is asked with the Simple API: JSON (PEP 691, with PEP 700's upload times) where it offers it, HTML
(PEP 503) otherwise. A release's torch pin comes from its wheel's own METADATA: the index's copy of it (PEP 658 /
714) when there is one, else the wheel's zip directory and METADATA entry read with HTTP range requests (a few
hundred KB of a 300 MB wheel), as pip's lazy wheel does.
"""

from __future__ import annotations

import html.parser
import io
import json
import os
import re
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from email.parser import HeaderParser
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from .compat import matrix, vtuple
from .errors import GpuprovError, UsageError

TIMEOUT_S = 20.0
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_FINAL = re.compile(r"^\d+(\.\d+)+$")  # final releases only: no rc, dev, post or local (+cpu) versions


class IndexUnreadable(GpuprovError):
    """The package index could not be read (exit 1: nothing about compat.yml was decided)."""

    exit_code = 1


@dataclass(frozen=True)
class Release:
    version: str
    date: str | None  # the first upload, YYYY-MM-DD (None when the index does not say)
    requires_python: str | None
    wheel_url: str | None = None
    metadata_url: str | None = None  # the index's copy of the wheel's METADATA (PEP 658), when offered
    torch: str | None = None  # the torch version the release pins (Requires-Dist torch==X)


def default_index() -> tuple[str, str]:
    """(URL, how to name it): GPUPROV_PACKAGE_INDEX, else the index pip is configured with, else pip's default."""
    for name in ("GPUPROV_PACKAGE_INDEX", "PIP_INDEX_URL", "UV_INDEX_URL"):
        if os.environ.get(name):
            return os.environ[name], f"{name}'s index"
    try:
        from pip._internal.models.index import PyPI
    except ImportError as e:  # pip is not importable here: the user names the index
        raise UsageError("no package index known: give --index URL (a Simple API root such as .../simple)") from e
    return str(PyPI.simple_url), "pip's default index"


# --------------------------------------------------------------------------- reading the index


def _get(url: str, headers: Mapping[str, str] | None = None, timeout: float = TIMEOUT_S) -> tuple[bytes, str]:
    req = urllib.request.Request(url, headers={"User-Agent": "gpuprov compat-check", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read(), r.headers.get("Content-Type", "")
    except Exception as e:  # noqa: BLE001 - any network failure is one line naming the URL
        raise IndexUnreadable(f"could not read {_safe(url)}: {e}") from e


def _safe(url: str) -> str:
    """A URL without credentials (an index URL may carry user:token@)."""
    p = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(p._replace(netloc=p.hostname + (f":{p.port}" if p.port else ""))) \
        if p.hostname else url


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.files: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.files.append({"filename": None, "url": a["href"], "requires-python": a.get("data-requires-python"),
                               "core-metadata": a.get("data-core-metadata") or a.get("data-dist-info-metadata"),
                               "yanked": "data-yanked" in a})

    def handle_data(self, data: str) -> None:
        if self.files and self.files[-1]["filename"] is None and data.strip():
            self.files[-1]["filename"] = data.strip()


def index_files(index: str, project: str = "vllm", timeout: float = TIMEOUT_S) -> list[dict[str, Any]]:
    """The project page's files, as PEP 691 dicts (absolute URLs)."""
    page = index.rstrip("/") + f"/{project}/"
    body, ctype = _get(page, {"Accept": f"{SIMPLE_JSON}, text/html;q=0.1"}, timeout)
    if SIMPLE_JSON in ctype or body.lstrip().startswith(b"{"):
        files = json.loads(body)["files"]
    else:
        p = _Links()
        p.feed(body.decode("utf-8", "replace"))
        files = p.files
    for f in files:
        f["url"] = urllib.parse.urljoin(page, f["url"])
        f["filename"] = f.get("filename") or urllib.parse.unquote(f["url"].split("#")[0].rsplit("/", 1)[-1])
    return files


def _version_of(filename: str, project: str) -> str | None:
    stem = filename[len(project) + 1:] if filename.lower().startswith(project + "-") else ""
    v = stem[:-len(".tar.gz")] if stem.endswith(".tar.gz") else stem.split("-")[0] if stem.endswith(".whl") else ""
    return v if _FINAL.match(v) else None


def releases(files: Iterable[Mapping[str, Any]], project: str = "vllm") -> list[Release]:
    """Final, not yanked releases, newest first, with their first upload date and the wheel to read pins from."""
    by: dict[str, list[Mapping[str, Any]]] = {}
    for f in files:
        v = _version_of(f["filename"], project)
        if v and not f.get("yanked"):
            by.setdefault(v, []).append(f)
    out = []
    for v, fs in by.items():
        dates = sorted(str(f["upload-time"])[:10] for f in fs if f.get("upload-time"))
        wheels = [f for f in fs if f["filename"].endswith(".whl")]
        wheel = next((f for f in wheels if "manylinux" in f["filename"] and "x86_64" in f["filename"]),
                     wheels[0] if wheels else None)
        meta = wheel.get("core-metadata") or wheel.get("dist-info-metadata") if wheel else None
        url = wheel["url"].split("#")[0] if wheel else None
        out.append(Release(v, dates[0] if dates else None, next((f["requires-python"] for f in fs
                                                                 if f.get("requires-python")), None),
                           url, f"{url}.metadata" if url and meta else None))
    return sorted(out, key=lambda r: vtuple(r.version), reverse=True)


class _RangeFile(io.RawIOBase):
    """A remote file read with HTTP range requests, seekable, for ``zipfile`` (only what is read is fetched)."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout, self.pos = url, timeout, 0
        self.size = self._fetch("bytes=-1")[1]

    def _fetch(self, rng: str) -> tuple[bytes, int]:
        req = urllib.request.Request(self.url, headers={"Range": rng, "User-Agent": "gpuprov compat-check"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                cr = r.headers.get("Content-Range", "")
                if r.status != 206 or "/" not in cr:
                    raise IndexUnreadable(f"{_safe(self.url)} does not answer range requests")
                return r.read(), int(cr.rsplit("/", 1)[1])
        except IndexUnreadable:
            raise
        except Exception as e:  # noqa: BLE001
            raise IndexUnreadable(f"could not read {_safe(self.url)}: {e}") from e

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        data, _ = self._fetch(f"bytes={self.pos}-{self.pos + max(n, 1 << 16) - 1}")
        data = data[:n]
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


def wheel_metadata(rel: Release, timeout: float = TIMEOUT_S) -> str:
    """The release wheel's METADATA text."""
    if rel.metadata_url:
        return _get(rel.metadata_url, timeout=timeout)[0].decode()
    if not rel.wheel_url:
        raise IndexUnreadable(f"vLLM {rel.version} has no wheel on the index")
    with zipfile.ZipFile(io.BufferedReader(_RangeFile(rel.wheel_url, timeout), 1 << 16)) as z:
        name = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        return z.read(name).decode()


def torch_pin(metadata: str) -> str | None:
    """``Requires-Dist: torch==X`` (unconditional, or for Linux x86_64) → X."""
    for line in HeaderParser().parsestr(metadata).get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name.lower() != "torch":
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": "", "platform_machine": "x86_64",
                                                              "sys_platform": "linux", "platform_system": "Linux"}):
            continue
        pins = [s.version for s in req.specifier if s.operator == "=="]
        if pins:
            return pins[0]
    return None


# --------------------------------------------------------------------------- the check


def python_range(requires_python: str | None) -> tuple[str, str] | None:
    """``>=3.11,<3.15`` → ("3.11", "3.14"): the lowest and highest CPython 3.x minor it admits (3.8–3.20)."""
    if not requires_python:
        return None
    try:
        spec = SpecifierSet(requires_python)
    except InvalidSpecifier:
        return None
    ok = [f"3.{m}" for m in range(8, 21) if Version(f"3.{m}.0") in spec or Version(f"3.{m}.99") in spec]
    return (ok[0], ok[-1]) if ok else None


@dataclass
class Row:
    version: str
    date: str | None
    requires_python: str | None
    torch: str | None
    in_compat: bool
    flag_table: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class CompatReport:
    index: str  # how the index is named in output: its URL without credentials, or where it came from
    rows: list[Row]
    newest: str | None

    @property
    def exit_code(self) -> int:
        """1 when the newest release is not in compat.yml or a default pick has no flag table; 0 otherwise."""
        return 1 if any(r.problems for r in self.rows) else 0

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "newest": self.newest, "ok": self.exit_code == 0,
                "rows": [asdict(r) for r in self.rows]}


def check(rels: Sequence[Release], recorded: Iterable[str], compat: Mapping[str, Any] | None = None) -> list[Row]:
    """Each release from the oldest compat.yml row up, against its row and its flag table."""
    compat = compat or matrix()
    rows_by = {str(r["version"]): r for r in compat["vllm"]}
    oldest = min(rows_by, key=vtuple)
    newest_row = max(rows_by, key=vtuple)
    recorded = set(recorded)
    out = []
    for rel in rels:
        if vtuple(rel.version) < vtuple(oldest):
            break
        row = rows_by.get(rel.version)
        r = Row(rel.version, rel.date, rel.requires_python, rel.torch, row is not None, rel.version in recorded)
        if row is None:
            newer = vtuple(rel.version) > vtuple(newest_row)
            (r.problems if newer else r.notes).append("missing from compat.yml" if newer else
                                                      "skipped in compat.yml (older than its newest row)")
        else:
            _compare(rel, row, r)
        out.append(r)
    for r in out:
        if r.version in default_picks(compat) and not r.flag_table:
            r.problems.append("the planner picks it by default, but data/serve_flags has no table for it "
                              "(scripts/record_serve_flags.py)")
    return out


def default_picks(compat: Mapping[str, Any]) -> set[str]:
    """The versions the planner picks without a pin: the newest row (R580+), and the newest with a CUDA 12
    variant (R525–R570 without forward compatibility)."""
    rows = sorted(compat["vllm"], key=lambda r: vtuple(str(r["version"])), reverse=True)
    cuda12 = next((str(r["version"]) for r in rows if any(str(v["cuda"]).startswith("12")
                                                         for v in r["variants"].values())), None)
    return {str(rows[0]["version"])} | ({cuda12} if cuda12 else set())


def _compare(rel: Release, row: Mapping[str, Any], r: Row) -> None:
    if rel.torch and str(row.get("torch")) != rel.torch:
        r.problems.append(f"stale: compat.yml says torch {row.get('torch')}, the wheel pins torch=={rel.torch}")
    rng = python_range(rel.requires_python)
    listed = [str(x) for x in row.get("python") or []]
    if rng and listed and (listed[0], listed[-1]) != rng:
        r.problems.append(f"stale: compat.yml says Python {listed[0]}–{listed[-1]}, Requires-Python "
                          f"{rel.requires_python} admits {rng[0]}–{rng[1]}")
    if rel.date and row.get("date") and str(row["date"]) != rel.date:
        r.notes.append(f"compat.yml dates it {row['date']}, the index {rel.date}")
    if not r.flag_table:
        r.notes.append("no flag table (pinned, it plans with a warning)")


def compat_check(index: str | None = None, recorded: Iterable[str] = (), timeout: float = TIMEOUT_S) -> CompatReport:
    index, label = (index, _safe(index)) if index else default_index()
    rels = releases(index_files(index, timeout=timeout))
    if not rels:
        raise IndexUnreadable(f"{_safe(index)} lists no vllm release")
    oldest = min((str(r["version"]) for r in matrix()["vllm"]), key=vtuple)
    pinned = []
    for rel in rels:
        if vtuple(rel.version) < vtuple(oldest):
            break
        try:
            pin = torch_pin(wheel_metadata(rel, timeout))
        except (IndexUnreadable, StopIteration, zipfile.BadZipFile, InvalidVersion):
            pin = None
        pinned.append(Release(**{**asdict(rel), "torch": pin}))
    return CompatReport(label, check(pinned, recorded), rels[0].version)
