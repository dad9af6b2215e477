"""What verifying a backup found: named checks, each passed or failed with its detail and time, and
the latest verification of each backup, which the catalog keeps."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from backup_common.domain.events import BackupVerificationFailed, BackupVerified, Event

MAX_REASON = 4000  # the catalog's error columns are TEXT


@dataclass(frozen=True)
class Check:
    """One check of a backup, e.g. ``archive_digest`` of its database part or ``restore_drill``."""

    name: str
    ok: bool
    detail: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Check:
        return cls(str(value["name"]), bool(value["ok"]), str(value.get("detail", "")), float(value.get("seconds", 0)))


class VerificationStatus(StrEnum):
    PENDING = "pending"  # never verified, or being verified
    VERIFIED = "verified"
    FAILED = "failed"


@dataclass
class Verification:
    """The latest verification of one backup: its checks, and whether they all passed."""

    backup_id: str
    status: VerificationStatus = VerificationStatus.PENDING
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    requested_at: datetime | None = None
    checked_at: datetime | None = None  # when the last verification ended
    events: list[Event] = field(default_factory=list, repr=False, compare=False)

    def record(self, checks: list[Check], now: datetime) -> None:
        """Ends a verification with its checks: verified when every one passed, failed otherwise
        with the failing checks named in the reason; announces the outcome."""
        self.checks = list(checks)
        self.checked_at = now
        failing = [check for check in checks if not check.ok]
        backup_id = uuid.UUID(self.backup_id)
        if not checks:
            failing = [Check("checks", False, "nothing was checked")]
        if failing:
            self.status = VerificationStatus.FAILED
            self.error = "; ".join(f"{check.name}: {check.detail}" for check in failing)[:MAX_REASON]
            self.events.append(BackupVerificationFailed(backup_id=backup_id, reason=self.error))
        else:
            self.status = VerificationStatus.VERIFIED
            self.error = None
            self.events.append(BackupVerified(backup_id=backup_id))
