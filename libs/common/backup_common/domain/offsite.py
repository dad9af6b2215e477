"""The off-site copy of a backup: its state, when a failed copy is tried again, and how long Object
Lock keeps it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # documents imports the model, which holds an OffsiteCopy
    from backup_common.domain.documents import RetentionPolicy

MAX_RETRY_DELAY = timedelta(hours=1)
MAX_ERROR = 2000


class OffsiteStatus(StrEnum):
    PENDING = "pending"  # not copied yet, or being copied
    COPIED = "copied"
    FAILED = "failed"  # the last attempt failed; tried again at next_attempt_at
    REMOVED = "removed"  # the backup was deleted and its objects removed
    LOCKED = "locked"  # the backup was deleted; Object Lock keeps its objects until retain_until


@dataclass
class OffsiteCopy:
    backup_id: str
    status: OffsiteStatus = OffsiteStatus.PENDING
    attempts: int = 0
    bytes_copied: int = 0
    location: str | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    copied_at: datetime | None = None
    retain_until: datetime | None = None
    local_removed_at: datetime | None = None  # when the local copy was removed, the off-site one kept

    def copied(self, location: str, size: int, retain_until: datetime | None, now: datetime) -> None:
        self.status = OffsiteStatus.COPIED
        self.attempts += 1
        self.location = location
        self.bytes_copied = size
        self.retain_until = retain_until
        self.copied_at = now
        self.error = None
        self.next_attempt_at = None

    def failed(self, reason: str, now: datetime, first_delay: timedelta) -> None:
        """A failed attempt: tried again after ``first_delay``, doubled on each failure up to an hour."""
        self.status = OffsiteStatus.FAILED
        self.attempts += 1
        self.error = reason[:MAX_ERROR]
        self.next_attempt_at = now + retry_delay(self.attempts, first_delay)

    def removed(self) -> None:
        self.status = OffsiteStatus.REMOVED
        self.error = None
        self.next_attempt_at = None

    def locked(self, reason: str, until: datetime | None, now: datetime, first_delay: timedelta) -> None:
        """Object Lock refused the removal: tried again once the lock ends (or after the retry delay
        when the store did not say when)."""
        self.status = OffsiteStatus.LOCKED
        self.error = reason[:MAX_ERROR]
        self.retain_until = until or self.retain_until
        self.next_attempt_at = max(until, now) if until is not None else now + retry_delay(1, first_delay)


def retry_delay(attempts: int, first_delay: timedelta) -> timedelta:
    """The delay after the ``attempts``-th failure: ``first_delay``, doubled each time, at most an hour."""
    return min(first_delay * (1 << min(max(attempts - 1, 0), 30)), MAX_RETRY_DELAY)


def lock_days(policy: RetentionPolicy, configured: int | None) -> int:
    """How many days from its creation Object Lock keeps a copy: as configured, else as long as the
    policy surely keeps a backup (its age limit, else its daily rule)."""
    if configured is not None:
        return configured
    if policy.max_age_days is not None:
        return policy.max_age_days
    return max(policy.keep_daily, 1)
