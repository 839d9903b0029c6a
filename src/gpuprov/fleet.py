"""Hosts in parallel, and the one rule that turns their outcomes into the process's exit code.

``for_each_host`` runs a function for every host (one thread and one SSH connection each, at most
``GPUPROV_PARALLEL`` at once, read per call) and never lets one host's failure stop the others: *any*
exception becomes that host's ``HostOutcome.error`` — the exception object itself, so its type and exit code
survive until ``tasks.py`` maps them. An exception gpuprov did not raise on purpose is logged with its
traceback (shown with ``-v``) and reads as one line.

Exit codes (README, "Exit codes"):

====  ==========================================================================
0     every host ok
1     a host failed (or hosts failed in different ways)
2     refused or bad input, before anything changed
3     a host could not be reached (connect, authentication, host key)
4     a host is busy: another gpuprov run holds its lock
====  ==========================================================================
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import GpuprovError, UsageError
from .inventory import Host

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_BUSY = 0, 1, 2, 3, 4
DEFAULT_PARALLEL = 64

T = TypeVar("T")
log = logging.getLogger("gpuprov")


@dataclass(frozen=True)
class HostOutcome(Generic[T]):
    """What one host's work gave: a value, or the exception that ended it."""

    host: Host
    value: T | None = None
    error: BaseException | None = None
    duration_s: float = 0.0
    #: time.monotonic() when this host's work began and ended (shows that hosts overlapped)
    started: float = 0.0
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def failed(self) -> bool:
        return code_of(self) != EXIT_OK

    @property
    def message(self) -> str:
        """The error as one line (empty when there is none)."""
        return "" if self.error is None else one_line(self.error)


def one_line(e: BaseException) -> str:
    """An exception as one user-facing line: gpuprov's own message, or the type and first line of a foreign one."""
    text = str(e).strip()
    if isinstance(e, GpuprovError):
        return text.splitlines()[0] if text else type(e).__name__
    first = text.splitlines()[0] if text else ""
    return f"unexpected {type(e).__name__}" + (f": {first}" if first else "") + " (run with -v for the traceback)"


def parallel() -> int:
    raw = os.environ.get("GPUPROV_PARALLEL", "").strip()
    if not raw:
        return DEFAULT_PARALLEL
    if not raw.isdigit() or int(raw) < 1:
        raise UsageError(f"GPUPROV_PARALLEL must be a whole number >= 1, got {raw!r}")
    return int(raw)


def for_each_host(hosts: Iterable[Host], fn: Callable[[Host], T], max_workers: int | None = None,
                  ) -> list[HostOutcome[T]]:
    """Run ``fn(host)`` for every host in parallel; outcomes in the hosts' order."""
    hosts = list(hosts)
    workers = max_workers or parallel()

    def one(h: Host) -> HostOutcome[T]:
        start = time.monotonic()
        value: T | None = None
        error: BaseException | None = None
        try:
            value = fn(h)
        except GpuprovError as e:
            error = e
            log.debug("%s: %s", h.name, e, exc_info=e.__cause__ is not None)
        except Exception as e:  # noqa: BLE001 - one host's surprise is that host's failure, not everyone's
            error = e
            log.debug("%s: unexpected error", h.name, exc_info=True)
        end = time.monotonic()
        return HostOutcome(h, value, error, end - start, start, end)

    if len(hosts) == 1:
        return [one(hosts[0])]
    with ThreadPoolExecutor(max_workers=min(workers, len(hosts))) as pool:
        return list(pool.map(one, hosts))


def code_of(result: Any) -> int:
    """The exit code one host's result stands for: an outcome's error, or the value's own ``exit_code``."""
    if isinstance(result, HostOutcome):
        if result.error is not None:
            return int(getattr(result.error, "exit_code", EXIT_FAILED)) if isinstance(result.error, GpuprovError) \
                else EXIT_FAILED
        result = result.value
    return int(getattr(result, "exit_code", EXIT_OK)) if result is not None else EXIT_OK


def exit_code(results: Iterable[Any]) -> int:
    """One code for a run over several hosts: 0 when all are ok; the shared code when every failing host failed
    the same way (all refused → 2, all unreachable → 3, all busy → 4); 1 when failures differ."""
    codes = {code_of(r) for r in results} - {EXIT_OK}
    if not codes:
        return EXIT_OK
    return codes.pop() if len(codes) == 1 else EXIT_FAILED
