"""Writing wheel files for the lab's package index (the stand-in ``vllm`` builds and the repackaged real one):
the zip plus a RECORD that lists every file with its sha256 and size, as installers check it."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import zipfile
from collections.abc import Iterable
from pathlib import Path

Entry = tuple[str, bytes, "zipfile.ZipInfo | None"]  # path in the wheel, content, original entry (keeps mode, date)


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(path: Path, entries: Iterable[Entry], dist_info: str) -> Path:
    """Write ``entries`` and ``<dist_info>/RECORD`` (any RECORD among the entries is replaced)."""
    record = f"{dist_info}/RECORD"
    rows: list[tuple[str, str, str]] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, data, orig in entries:
            if name == record:
                continue
            info = zipfile.ZipInfo(name, orig.date_time if orig else (2026, 1, 1, 0, 0, 0))
            info.external_attr = orig.external_attr if orig else 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data, compresslevel=1)
            if not name.endswith("/"):
                rows.append((name, record_hash(data), str(len(data))))
        rows.append((record, "", ""))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        z.writestr(record, buf.getvalue())
    return path
