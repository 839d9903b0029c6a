"""What a play did on a host: each task's result and the recap, counted as Ansible counts them.

Ansible's counts: ``ok`` is every task that succeeded (changed ones included), ``changed`` those that changed
something, ``skipped``, ``failed``, ``rescued`` (blocks whose rescue section ran), ``ignored`` (failures under
``ignore_errors``, which also count as ok), ``unreachable``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConnectError, GpuprovError
from .fleet import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, one_line


@dataclass
class TaskResult:
    task: str
    status: str  # ok | changed | failed | skipped
    msg: str = ""
    diffs: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    #: a failure that ignore_errors let pass (counted ok + ignored, and changed when it had changed something)
    ignored: bool = False
    changed: bool = False
    #: a failure a block's rescue section took over
    rescued: bool = False
    #: debug output and other results the user asked to see
    show: bool = False


@dataclass
class HostRecap:
    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0
    unreachable: bool = False
    error: str | None = None
    time_s: float = 0.0
    execs: int = 0
    results: list[TaskResult] = field(default_factory=list)
    #: time.monotonic() at start and end (lets tests see that hosts overlapped)
    started: float = 0.0
    ended: float = 0.0
    #: the exit code of the error that ended the run, when it has its own (a busy host: 4)
    code: int | None = None

    @property
    def exit_code(self) -> int:
        if self.code is not None:
            return self.code
        if self.unreachable:
            return EXIT_UNREACHABLE
        return EXIT_FAILED if self.failed or self.error else EXIT_OK

    def merge(self, other: HostRecap) -> None:
        """Add a later play's recap for the same host."""
        for k in ("ok", "changed", "failed", "skipped", "rescued", "ignored", "time_s", "execs"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.unreachable |= other.unreachable
        self.error = self.error or other.error
        self.code = self.code if self.code is not None else other.code
        self.results += other.results

    @classmethod
    def of_error(cls, host: str, e: BaseException, time_s: float = 0.0, execs: int = 0) -> HostRecap:
        """The recap of a run that an error ended before or between tasks."""
        if isinstance(e, ConnectError):
            return cls(host, unreachable=True, error=one_line(e), time_s=time_s, execs=execs)
        code = e.exit_code if isinstance(e, GpuprovError) and e.exit_code not in (EXIT_OK, EXIT_FAILED) else None
        return cls(host, failed=1, error=one_line(e), time_s=time_s, execs=execs, code=code)

    def count(self, r: TaskResult) -> None:
        self.results.append(r)
        if r.status == "failed" and r.ignored:
            self.ok += 1
            self.ignored += 1
            self.changed += int(r.changed)
        elif r.status == "failed":
            self.failed += 1
        elif r.status == "skipped":
            self.skipped += 1
        else:
            self.ok += 1
            self.changed += int(r.status == "changed")

    def rescue(self) -> None:
        """The last failure was taken over by a block's rescue: Ansible counts it rescued, not failed."""
        for r in reversed(self.results):
            if r.status == "failed" and not r.ignored and not r.rescued:
                r.rescued = True
                self.failed -= 1
                self.rescued += 1
                break
        self.error = None

    def to_json(self) -> dict:
        return {"ok": self.ok, "changed": self.changed, "failed": self.failed, "skipped": self.skipped,
                "rescued": self.rescued, "ignored": self.ignored, "unreachable": self.unreachable,
                "time_s": round(self.time_s, 3), "execs": self.execs, **({"error": self.error} if self.error else {})}
