"""The lab's network services, on the lab bridge only: a package index and a model hub STAND-IN.

- ``/simple/<project>/`` lists the wheels in ``<dir>/wheels`` (the stand-in ``vllm`` builds, uv, huggingface_hub
  and its dependencies), so sim hosts run the real ``uv pip install`` path against it. It speaks the Simple API
  as the registry does: HTML (PEP 503), or JSON (PEP 691, with PEP 700's ``upload-time``: the file's mtime, and
  each wheel's ``Requires-Python``) when asked with ``Accept: application/vnd.pypi.simple.v1+json``; files answer
  range requests (``invoke compat-check`` reads METADATA out of a wheel that way).
- ``/real/simple/<project>/`` lists ``<dir>/real-wheels``: the real vLLM CPU build and everything it needs
  (see real_engine.py), for hosts started with ``--engine real``.
- The hub answers the part of the Hugging Face Hub API that ``huggingface_hub`` uses to download a repo
  (``HF_ENDPOINT`` points there): ``/api/models/<repo>/revision/<rev>`` and ``/<repo>/resolve/<rev>/<file>``
  (HEAD and GET, with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``). Repos live in ``<dir>/hub/<org>/<name>``.
- ``/v2/pods``: the STAND-IN of RunPod's v2 API listing the lab's ``--runpod`` hosts (runpod_api.py).

Run: ``python -m gpuprov.sim.services --dir D --bind 10.231.0.1 --port 8765``.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
import shutil
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..ops.packages import norm
from . import runpod_api

COMMIT = "0" * 32 + "5ca1ab1e"


def wheel_project(filename: str) -> str:
    return norm(filename.split("-")[0])


def make_handler(root: Path) -> type:
    """The lab's index + hub handler serving ``root`` (wheels/, real-wheels/, hub/)."""
    return type("LabHandler", (LabHandler,), {"root": root})


class LabHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path = Path(".")

    @property
    def hub(self) -> Path:
        return self.root / "hub"

    @property
    def indexes(self) -> dict[str, Path]:
        return {"": self.root / "wheels", "/real": self.root / "real-wheels"}  # stand-ins; the real engine

    def log_message(self, fmt, *args):  # quiet; the lab keeps no access log
        pass

    def start(self, code: int, ctype: str, length: int, headers: dict | None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def send(self, code: int, body: bytes, ctype: str = "text/html", headers: dict | None = None, head=False):
        self.start(code, ctype, len(body), headers)
        if not head:
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET(head=True)

    def send_file(self, f: Path, ctype: str, headers: dict | None = None, head=False):
        size = f.stat().st_size
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "") or "")
        if rng and (rng.group(1) or rng.group(2)):  # one range, as HTTP/1.1 clients ask for it
            a, b = rng.groups()
            first, last = (size - int(b), size - 1) if not a else (int(a), min(int(b or size - 1), size - 1))
            first = max(first, 0)
            if first > last:
                return self.send(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"}, head)
            self.send_response(206)
            for k, v in {"Content-Type": ctype, "Content-Length": str(last - first + 1),
                         "Content-Range": f"bytes {first}-{last}/{size}", **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                with open(f, "rb") as fh:
                    fh.seek(first)
                    self.wfile.write(fh.read(last - first + 1))
            return None
        self.start(200, ctype, size, {"Accept-Ranges": "bytes", **(headers or {})})
        if not head:
            with open(f, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile, 1 << 20)
        return None

    def do_GET(self, head=False):
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        if path.rstrip("/") == "/v2/pods":
            return runpod_api.answer(self, self.root)
        if re.match(r"(/real)?/(simple|files)(/|$)", path):
            return self.index(path, head)
        return self.model_hub(path, head)

    def index(self, path: str, head: bool):  # noqa: ANN201 - PEP 503 simple index and the wheel files
        indexes = self.indexes
        m = re.fullmatch(r"(/real)?/simple/?", path)
        if m:
            prefix, d = m.group(1) or "", indexes[m.group(1) or ""]
            names = sorted({wheel_project(f.name) for f in d.glob("*.whl")})
            body = "".join(f'<a href="{prefix}/simple/{n}/">{n}</a><br>\n' for n in names)
            return self.send(200, f"<!DOCTYPE html><html><body>{body}</body></html>".encode(), head=head)
        m = re.fullmatch(r"(/real)?/simple/([^/]+)/?", path)
        if m:
            prefix, d = m.group(1) or "", indexes[m.group(1) or ""]
            files = sorted(f for f in d.glob("*.whl") if wheel_project(f.name) == norm(m.group(2)))
            if not files:
                return self.send(404, b"not found", head=head)
            if "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", ""):
                return self.send(200, json.dumps(_project_json(norm(m.group(2)), prefix, files)).encode(),
                                 "application/vnd.pypi.simple.v1+json", head=head)
            links = "".join(f'<a href="{prefix}/files/{html.escape(f.name)}#sha256={_sha(f)}">{html.escape(f.name)}'
                            "</a><br>\n" for f in files)
            return self.send(200, f"<!DOCTYPE html><html><body>{links}</body></html>".encode(), head=head)
        m = re.fullmatch(r"(/real)?/files/([^/]+\.whl)", path)
        if m and (indexes[m.group(1) or ""] / m.group(2)).is_file():
            return self.send_file(indexes[m.group(1) or ""] / m.group(2), "application/octet-stream", head=head)
        return self.send(404, b"not found", "text/plain", head=head)

    def model_hub(self, path: str, head: bool):  # noqa: ANN201 - the HF API routes huggingface_hub uses
        hub = self.hub
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(/tree/[^/]+(?:/.*)?|/revision/[^/]+)?", path)
        if m and not (hub / m.group(1)).is_dir():
            return self.send(404, json.dumps({"error": "Repository not found"}).encode(), "application/json",
                             {"X-Error-Code": "RepoNotFound"}, head)
        if m and (m.group(2) or "").startswith("/tree/"):
            repo = hub / m.group(1)
            entries: list[dict[str, object]] = []
            for f in sorted(repo.rglob("*")):
                rel = str(f.relative_to(repo))
                if f.is_dir():
                    entries.append({"type": "directory", "path": rel, "oid": "0" * 40})
                else:
                    entries.append({"type": "file", "path": rel, "size": f.stat().st_size, "oid": _sha(f)[:40]})
            return self.send(200, json.dumps(entries).encode(), "application/json", head=head)
        if m:
            repo = hub / m.group(1)
            files = [f for f in sorted(repo.rglob("*")) if f.is_file()]
            sib = [{"rfilename": str(f.relative_to(repo)), "size": f.stat().st_size} for f in files]
            info = {"id": m.group(1), "modelId": m.group(1), "sha": COMMIT, "private": False, "siblings": sib,
                    "usedStorage": sum(f.stat().st_size for f in files)}
            return self.send(200, json.dumps(info).encode(), "application/json", head=head)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            f = hub / m.group(1) / m.group(3)
            if not f.is_file():
                return self.send(404, b"Entry not found", "text/plain", {"X-Error-Code": "EntryNotFound"}, head)
            return self.send_file(f, "application/octet-stream", {"X-Repo-Commit": COMMIT, "ETag": f'"{_sha(f)}"'},
                                  head)
        return self.send(404, b"not found", "text/plain", head=head)



def _project_json(name: str, prefix: str, files: list[Path]) -> dict:
    """A PEP 691 project page (with PEP 700's upload-time and each wheel's Requires-Python)."""
    import datetime as dt

    out = []
    for f in files:
        entry = {"filename": f.name, "url": f"{prefix}/files/{urllib.parse.quote(f.name)}",
                 "hashes": {"sha256": _sha(f)}, "size": f.stat().st_size,
                 "upload-time": dt.datetime.fromtimestamp(f.stat().st_mtime, dt.UTC)
                 .strftime("%Y-%m-%dT%H:%M:%SZ")}
        rp = _requires_python(f)
        if rp:
            entry["requires-python"] = rp
        out.append(entry)
    return {"meta": {"api-version": "1.1"}, "name": name, "files": out}


def _requires_python(f: Path) -> str | None:
    import zipfile

    try:
        with zipfile.ZipFile(f) as z:
            meta = next((n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
            text = z.read(meta).decode() if meta else ""
    except (OSError, zipfile.BadZipFile):
        return None
    m = re.search(r"^Requires-Python: *(.+)$", text, re.M)
    return m.group(1).strip() if m else None


_SHA: dict[str, str] = {}


def _sha(f: Path) -> str:
    """A file's sha256: from a ``<file>.sha256`` beside it (the real-engine wheels) or computed once."""
    key = f"{f}:{f.stat().st_mtime}:{f.stat().st_size}"
    if key not in _SHA:
        side = f.with_name(f.name + ".sha256")
        if side.is_file():
            _SHA[key] = side.read_text().strip()
        else:
            with open(f, "rb") as fh:
                _SHA[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _SHA[key]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    srv = ThreadingHTTPServer((a.bind, a.port), make_handler(Path(a.dir)))
    srv.daemon_threads = True
    os.write(1, b"ready\n")
    srv.serve_forever()


if __name__ == "__main__":
    main()
