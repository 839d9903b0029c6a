"""Where things live on a host: one owner for every path gpuprov writes there.

``HostLayout(root)`` names each path under an install root. Provisioning writes the layout into the host's
``state.json``; status, control, logs and teardown read it back from there (``HostLayout.from_state``) instead of
spelling paths again. The host-side scripts that look for an installation search ``search_roots(install_root)``:
the host's own ``install_root`` var first, then the two defaults — so a custom root is found everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SERVICE = "gpuprov-vllm"
#: the default install roots: /workspace survives a RunPod pod's restart; /opt elsewhere
ROOTS = ("/workspace/gpuprov", "/opt/gpuprov")


def search_roots(install_root: str | None = None) -> list[str]:
    """Where to look for an installation on a host: its ``install_root`` var (when set), then the defaults."""
    roots = [install_root.rstrip("/")] if install_root else []
    return roots + [r for r in ROOTS if r not in roots]


@dataclass(frozen=True)
class HostLayout:
    root: str
    service: str = SERVICE

    @property
    def bootstrap(self) -> str:
        return f"{self.root}/bootstrap"

    @property
    def uv(self) -> str:
        return f"{self.bootstrap}/bin/uv"

    @property
    def uv_cache(self) -> str:
        return f"{self.root}/uv-cache"

    @property
    def launcher(self) -> str:
        return f"{self.root}/bin/vllm-serve"

    @property
    def supervisor(self) -> str:
        return f"{self.root}/bin/gpuprov-supervise"

    @property
    def fetch_script(self) -> str:
        return f"{self.root}/bin/gpuprov-fetch"

    @property
    def env_file(self) -> str:
        return f"{self.root}/vllm.env"

    @property
    def log(self) -> str:
        return f"{self.root}/logs/vllm.log"

    @property
    def pidfile(self) -> str:
        return f"{self.root}/run/vllm.pid"

    @property
    def state_json(self) -> str:
        return f"{self.root}/state.json"

    @property
    def hf_home(self) -> str:
        return f"{self.root}/hf"

    @property
    def unit(self) -> str:
        return f"/etc/systemd/system/{self.service}.service"

    @property
    def lock(self) -> str:
        """The run lock and the work lock live beside the root (so they exist before the root does)."""
        return f"{self.root.rsplit('/', 1)[0] or ''}/.gpuprov.lock"

    @property
    def work_lock(self) -> str:
        return f"{self.root.rsplit('/', 1)[0] or ''}/.gpuprov.work.lock"

    def venv(self, vllm_version: str, cuda_variant: str, python: str) -> str:
        return f"{self.root}/venvs/vllm-{vllm_version}-{cuda_variant}-py{python}"

    def good_files(self) -> list[str]:
        """What a verified configuration is made of (kept as ``*.good`` to roll back to)."""
        return [self.launcher, self.env_file, self.unit, self.state_json]

    def to_state(self) -> dict[str, str]:
        """The paths ``state.json`` records (read back by status, control, logs and teardown)."""
        return {"root": self.root, "service": self.service, "env_file": self.env_file, "log": self.log,
                "pidfile": self.pidfile, "launcher": self.launcher, "supervisor": self.supervisor}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], root: str) -> HostLayout:
        """The layout a host's ``state.json`` describes (``root`` is where it was found)."""
        return cls(str(state.get("root") or root), str(state.get("service") or SERVICE))
