"""RunPod as it really behaves: its SSH proxy, its pods' own environment, and its v2 REST API as an inventory source.

- **The proxy.** ``ssh <pod>@ssh.runpod.io`` carries an interactive PTY shell only: a command without a PTY is
  answered ``Error: Your SSH client doesn't support PTY``, and there is no SFTP and no port forwarding. Only "SSH
  over exposed TCP" (``root@<public ip> -p <mapped port>``) is real SSH. ``proxy_refusal`` turns either sign into
  one line that says what to use instead.
- **The pod's environment.** ``RUNPOD_*``, ``HF_HOME`` and the template's env live in PID 1's environment and in
  ``/etc/rp_environment``; an SSH command sees neither. The probe reads both (``remote/probe.py``) and
  ``knob_values`` turns the seed image's knobs (``MODEL``, ``MAX_MODEL_LEN``, ...) into vars: defaults for that host,
  below the inventory and the command line.
- **The inventory source.** A file holding ``plugin: runpod`` lists the account's pods through
  ``GET {api}/v2/pods`` (bearer key from ``RUNPOD_API_KEY`` or a 0600 file; never in a URL, argv, log or error) at
  every run; each running pod with a direct SSH endpoint becomes a host, and the others are listed with the reason.
  Its host key is pinned per pod ID (``host_key_alias``), since a reset makes a new key on a new port.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InventoryError
from .secrets import Secret

log = logging.getLogger("gpuprov.runpod")

DEFAULT_API = "https://api.runpod.io"
PROXY_HOSTS = ("ssh.runpod.io",)
PROXY_SIGNATURE = re.compile(r"^(?:Error: )?Your SSH client doesn't support PTY", re.M)
PROXY_FIX = ("this is RunPod's SSH proxy, which carries an interactive terminal only (no commands, no SFTP, no "
             "port forwarding); gpuprov needs SSH over exposed TCP: expose 22/tcp on a pod with a public IP and use "
             "root@<its public IP> -p <the port mapped to 22> (the pod's Connect tab), or a `plugin: runpod` "
             "inventory source that finds them for you")
#: the seed image's knobs set on a pod → the vars they are defaults for
POD_KNOBS = {"MODEL": "model", "MAX_MODEL_LEN": "max_model_len", "GPU_MEMORY_UTILIZATION": "gpu_memory_utilization",
             "MAX_NUM_SEQS": "max_num_seqs", "API_KEY": "api_key"}
TOKEN_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.I)
_INT_KNOBS = {"MAX_MODEL_LEN", "MAX_NUM_SEQS"}
OPTIONS = {"plugin", "api_url", "api_key_env", "api_key_file", "name_filter", "group", "group_by", "vars", "hosts",
           "timeout"}
GROUP_BY = ("gpu", "datacenter", "cloud")


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def masked(env: Mapping[str, Any]) -> dict[str, str]:
    """An environment as it may be shown: secret-looking names (and Secret values) print as ``***``."""
    return {k: "***" if is_secret_name(k) or isinstance(v, Secret) else str(v) for k, v in env.items()}


def proxy_refusal(host: str, text: str) -> str | None:
    """The one-line explanation when ``text`` (a command's output) is the proxy's answer, else None."""
    return f"{host}: {PROXY_FIX}" if PROXY_SIGNATURE.search(text or "") else None


def is_proxy_address(address: str) -> bool:
    return address.lower().rstrip(".") in PROXY_HOSTS


def knob_values(env: Mapping[str, Any]) -> dict[str, Any]:
    """The seed image's knobs in a pod's environment → var values (numbers typed; API_KEY kept a Secret)."""
    out: dict[str, Any] = {}
    for name, var in POD_KNOBS.items():
        raw = env.get(name)
        if raw is None or (not isinstance(raw, Secret) and not str(raw).strip()):
            continue
        if var == "api_key":
            out[var] = raw if isinstance(raw, Secret) else Secret(str(raw), "api_key")
            continue
        text = raw.reveal() if isinstance(raw, Secret) else str(raw).strip()
        if name in _INT_KNOBS and text.isdigit():
            out[var] = int(text)
        elif var == "gpu_memory_utilization" and re.fullmatch(r"\d*\.\d+|\d+", text):
            out[var] = float(text)
        else:
            out[var] = text
    return out


def hf_token(env: Mapping[str, Any]) -> Secret | None:
    for name in TOKEN_NAMES:
        v = env.get(name)
        if v:
            return v if isinstance(v, Secret) else Secret(str(v), name)
    return None


# --------------------------------------------------------------------------- the inventory source


@dataclass
class SourceResult:
    """What one ``plugin: runpod`` file contributed: inventory data in Ansible's YAML shape, the pods' knobs (the
    pod-env layer, below the inventory), the pods that are not hosts (with why), and the error, if the API failed."""

    path: str
    groups: dict[str, Any] = field(default_factory=dict)
    pod_env: dict[str, dict[str, Any]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class PodSource:
    path: str
    api_url: str
    key_env: str
    key_file: str | None
    name_filter: re.Pattern | None
    group: str
    group_by: tuple[str, ...]
    vars: Mapping[str, Any]
    hosts: Mapping[str, Mapping[str, Any]]
    timeout: float

    @classmethod
    def from_options(cls, path: Path, data: Mapping[str, Any]) -> PodSource:
        def bad(key: str, what: str) -> InventoryError:
            line = getattr(data, "key_lines", {}).get(key)
            return InventoryError(f"runpod source: {key} must be {what}, got {data.get(key)!r}", str(path), line)

        unknown = sorted(set(data) - OPTIONS)
        if unknown:
            line = getattr(data, "key_lines", {}).get(unknown[0])
            raise InventoryError(f"runpod source: unknown option {unknown[0]!r} (known: {', '.join(sorted(OPTIONS))})",
                                 str(path), line)
        for key in ("api_url", "api_key_env", "api_key_file", "name_filter", "group"):
            if key in data and not isinstance(data[key], str):
                raise bad(key, "a string")
        url = str(data.get("api_url") or os.environ.get("RUNPOD_API_URL") or DEFAULT_API).rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise bad("api_url", "an http(s) URL")
        try:
            flt = re.compile(data["name_filter"]) if data.get("name_filter") else None
        except re.error as e:
            raise bad("name_filter", f"a regular expression ({e})") from None
        group = str(data.get("group") or "runpod")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", group):
            raise bad("group", "a group name")
        by = data.get("group_by") or []
        if isinstance(by, str):
            by = [by]
        if not isinstance(by, list) or any(b not in GROUP_BY for b in by):
            raise bad("group_by", f"a list of {', '.join(GROUP_BY)}")
        for key in ("vars", "hosts"):
            if data.get(key) is not None and not isinstance(data[key], Mapping):
                raise bad(key, "a mapping")
        hosts = data.get("hosts") or {}
        if any(not isinstance(v, Mapping) for v in hosts.values() if v is not None):
            raise bad("hosts", "a mapping of pod name → vars")
        timeout = data.get("timeout", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 120:
            raise bad("timeout", "seconds, from 1 to 120")
        key_file = data.get("api_key_file")
        return cls(str(path), url, str(data.get("api_key_env") or "RUNPOD_API_KEY"),
                   os.path.expanduser(key_file) if key_file else None, flt, group, tuple(by),
                   dict(data.get("vars") or {}), {k: dict(v or {}) for k, v in hosts.items()}, float(timeout))

    # ----------------------------------------------------------- the API
    def api_key(self) -> Secret:
        if self.key_file:
            p = Path(self.key_file)
            try:
                mode = p.stat().st_mode
            except OSError:
                raise LookupError(f"the API key file {p} does not exist") from None
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise LookupError(f"the API key file {p} is readable by others (chmod 600 {p})")
            key = p.read_text().strip()
        else:
            key = os.environ.get(self.key_env, "").strip()
        if not key:
            raise LookupError(f"no RunPod API key: export {self.key_env}=<a key from RunPod's console, Settings → "
                              f"API Keys> (or set api_key_file: PATH, a 0600 file, in {self.path})")
        return Secret(key, "runpod_api_key")

    def list_pods(self) -> list[dict[str, Any]]:
        """``GET /v2/pods`` with the key as a bearer header; one-line errors that never hold the key."""
        import urllib.error
        import urllib.request

        key = self.api_key()
        url = f"{self.api_url}/v2/pods"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key.reveal()}",
                                                   "Accept": "application/json", "User-Agent": "gpuprov"})
        log.debug("GET %s", url)
        try:
            with urllib.request.build_opener(_no_redirect()).open(req, timeout=self.timeout) as resp:
                body = resp.read(64 << 20)
        except urllib.error.HTTPError as e:
            why = {401: "refused the API key", 403: "the API key may not list pods"}.get(e.code, "answered")
            raise LookupError(f"the RunPod API at {self.api_url} {why} (HTTP {e.code})"
                              + ("" if self.key_file else f"; check {self.key_env}")) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise LookupError(f"cannot reach the RunPod API at {self.api_url}: {reason}") from None
        try:
            doc = json.loads(body)
        except ValueError:
            raise LookupError(f"the RunPod API at {self.api_url} answered something that is not JSON") from None
        pods = doc.get("pods") if isinstance(doc, dict) else None
        if not isinstance(pods, list):
            raise LookupError(f"the RunPod API at {self.api_url} answered without a pods list")
        return [p for p in pods if isinstance(p, dict)]

    # ----------------------------------------------------------- pods → hosts
    def load(self) -> SourceResult:
        res = SourceResult(self.path)
        try:
            pods = self.list_pods()
        except LookupError as e:
            res.error = str(e)
            return res
        hosts: dict[str, Any] = {}
        extra: dict[str, set[str]] = {}
        for pod in sorted(pods, key=lambda p: (str(p.get("name")), str(p.get("id")))):
            name = _host_name(pod, hosts)
            if self.name_filter and not self.name_filter.search(str(pod.get("name") or "")):
                continue
            why = unavailable_reason(pod)
            if why:
                res.unavailable[name] = f"RunPod pod {pod.get('id')} ({pod.get('name')}) {why}"
                continue
            hosts[name] = {**host_data(pod), **self.hosts.get(name, {})}
            res.pod_env[name] = knob_values(pod.get("env") or {})
            for key in self.group_by:
                extra.setdefault(f"{self.group}_{key}_{_slug(_group_value(pod, key))}", set()).add(name)
        res.groups[self.group] = {"vars": dict(self.vars), "hosts": hosts,
                                  "children": {g: {"hosts": {n: None for n in sorted(ns)}}
                                               for g, ns in sorted(extra.items())} or None}
        return res


def _no_redirect() -> Any:
    """A redirect handler that refuses: a redirect would carry the Authorization header to another address."""
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201, PLR0913
            raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)

    return NoRedirect


def unavailable_reason(pod: Mapping[str, Any]) -> str | None:
    """Why a pod cannot be a host (None: it can)."""
    status = str(pod.get("status") or "?")
    if status in ("PROVISIONING", "STARTING"):
        return f"is {status.lower()}: run again once it is RUNNING"
    if status != "RUNNING":
        return f"is {status} (not running): start it in RunPod's console or API first"
    direct = (pod.get("ssh") or {}).get("direct")
    if not direct or not direct.get("host") or not direct.get("port"):
        return ("has no direct SSH endpoint (22/tcp is not exposed, or the pod has no public IP; RunPod's proxy "
                "ssh.runpod.io cannot run commands): add 22/tcp to its TCP ports on a pod with a public IP")
    return None


def host_data(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A running pod's connection keys and facts as host vars (the key pinned per pod ID, not per address)."""
    direct = pod["ssh"]["direct"]
    gpu = pod.get("gpu") or {}
    pid = str(pod.get("id"))
    return {
        "address": str(direct["host"]), "port": int(direct["port"]), "user": str(direct.get("username") or "root"),
        "host_key_alias": f"runpod-{pid}",
        "runpod_pod_id": pid, "runpod_status": pod.get("status"), "runpod_started_at": pod.get("startedAt"),
        "runpod_gpu_type": gpu.get("id"), "runpod_gpu_count": gpu.get("count"),
        "runpod_cuda_version": pod.get("cudaVersion"), "runpod_datacenter": pod.get("dataCenterId"),
        "runpod_cloud": pod.get("cloud"), "runpod_http_proxy": f"https://{pid}-8000.proxy.runpod.net",
    }


def _host_name(pod: Mapping[str, Any], taken: Mapping[str, Any]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(pod.get("name") or "")).strip("-.") or f"pod-{pod.get('id')}"
    if not name[0].isalnum():
        name = "pod-" + name
    return name if name not in taken else f"{name}-{pod.get('id')}"


def _group_value(pod: Mapping[str, Any], key: str) -> str:
    return str({"gpu": (pod.get("gpu") or {}).get("id"), "datacenter": pod.get("dataCenterId"),
                "cloud": pod.get("cloud")}[key] or "none")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "none"
