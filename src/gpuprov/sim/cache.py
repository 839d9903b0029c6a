"""Where the lab keeps what it builds once per machine (outside any clone): rootfs images, wheels, the real engine."""

from __future__ import annotations

import os
from pathlib import Path

LAB_CACHE = Path(os.environ.get("GPUPROV_ROOTFS_CACHE", "/var/cache/gpuprov-sim"))
#: the stand-in vllm wheels and the third-party wheels the lab's index serves
WHEEL_CACHE = LAB_CACHE / "wheels"
