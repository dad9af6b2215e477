"""Leases on long jobs (a backup part, a restore part): who holds one, and what losing it means.

A worker claims a job, acknowledges the message that asked for it, and works while a heartbeat keeps
its lease alive. Every claim bumps ``version``; every write of the job's results checks that its lease
is still the current one, so a worker whose lease was taken over can no longer write anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backup_common.domain.events import BackupPart

# A part whose worker was lost this many times is failed rather than requested again.
MAX_JOB_ATTEMPTS = 3


class LeaseLost(Exception):
    """The lease was taken over, released, reaped or finished: its holder must stop and not write."""

    def __init__(self, job_key: str, detail: str) -> None:
        super().__init__(f"lease on {job_key} lost: {detail}")
        self.job_key = job_key
        self.detail = detail


@dataclass(frozen=True)
class Lease:
    """One holder's claim on a job; ``version`` identifies this claim among all claims of the job."""

    job_key: str
    holder: str
    version: int
    expires_at: datetime  # UTC, by the catalog's clock
    attempts: int


@dataclass(frozen=True)
class ReapedJob:
    job_key: str
    holder: str | None
    version: int
    attempts: int
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class ReapResult:
    requeue: list[ReapedJob] = field(default_factory=list)
    """Released again, so a worker may claim them: the caller re-emits each job from its payload."""
    failed: list[ReapedJob] = field(default_factory=list)
    """Lost too many times; now failed for good."""


def part_job_key(backup_id: str, part: BackupPart) -> str:
    return f"backup:{backup_id}:{part.value}"


def restore_job_key(restore_id: str, part: BackupPart) -> str:
    return f"restore:{restore_id}:{part.value}"


VERIFY_JOB_PREFIX = "verify:"


def verify_job_key(backup_id: str) -> str:
    """One lease per backup's verification, taken again for each verification (see JobLeases.reopen)."""
    return VERIFY_JOB_PREFIX + backup_id


def parse_job_key(job_key: str) -> tuple[str, str, BackupPart] | None:
    """The kind (``backup`` or ``restore``), the id and the part of a job's key; None for another key."""
    kind, _, rest = job_key.partition(":")
    job_id, _, part = rest.partition(":")
    if kind not in ("backup", "restore") or not job_id or part not in BackupPart.__members__.values():
        return None
    return kind, job_id, BackupPart(part)
