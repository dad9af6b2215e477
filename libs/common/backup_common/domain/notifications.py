"""Webhook notifications: what is reported (a backup failed, a verification failed, a scheduled
backup is missing), the JSON each webhook receives, how it is signed and when a failed delivery is
tried again.

Signature scheme (as Stripe's and GitHub's webhooks): every POST carries

- ``X-Backup-Timestamp: <unix seconds>``, when this attempt was sent;
- ``X-Backup-Signature: sha256=<hex>``, the HMAC-SHA256, keyed with the UTF-8 bytes of
  ``BACKUP_NOTIFICATION_SECRET``, of ``<timestamp>.<raw body>`` (the timestamp's decimal digits, a
  full stop, then the body's bytes exactly as received).

A receiver recomputes the HMAC over the raw body, compares with ``hmac.compare_digest``, refuses a
timestamp further than a few minutes from its clock (a replayed request), and treats
``X-Backup-Delivery`` as an idempotency key: a delivery is retried until a 2xx answer, so the same
delivery may arrive more than once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from backup_common.domain.model import Backup

SIGNATURE_HEADER = "X-Backup-Signature"
TIMESTAMP_HEADER = "X-Backup-Timestamp"
EVENT_HEADER = "X-Backup-Event"
DELIVERY_HEADER = "X-Backup-Delivery"
SIGNATURE_PREFIX = "sha256="
# How far a receiver should accept a timestamp from its own clock (the snippet in the README uses it).
REPLAY_TOLERANCE_SECONDS = 300
MAX_ERROR_TEXT = 2000


class NotificationKind(StrEnum):
    BACKUP_FAILED = "backup_failed"
    VERIFICATION_FAILED = "verification_failed"
    BACKUP_MISSING = "backup_missing"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class Delivery:
    """One POST of one notification to one webhook, retried until answered with a 2xx or given up."""

    id: str  # also ``delivery_id`` in the body and X-Backup-Delivery
    url: str
    kind: NotificationKind
    dedupe_key: str  # with the URL, what makes recording the same notification twice a no-op
    payload: dict[str, Any]  # the JSON body
    created_at: datetime
    next_attempt_at: datetime
    attempts: int = 0
    delivered_at: datetime | None = None
    given_up_at: datetime | None = None
    last_error: str | None = None

    @property
    def body(self) -> bytes:
        return encode_body(self.payload)

    @property
    def finished(self) -> bool:
        return self.delivered_at is not None or self.given_up_at is not None


def encode_body(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def new_delivery(
    delivery_id: str, url: str, kind: NotificationKind, dedupe_key: str, body: Mapping[str, Any], now: datetime
) -> Delivery:
    """A delivery due at once; ``body`` gets the envelope's ``event`` and ``delivery_id``."""
    payload = {**body, "event": kind.value, "delivery_id": delivery_id}
    return Delivery(delivery_id, url, kind, dedupe_key, payload, created_at=now, next_attempt_at=now)


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>``."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def signature_is_valid(
    secret: bytes,
    timestamp: str,
    body: bytes,
    signed: str,
    now: float,
    tolerance: float = REPLAY_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver checks: a timestamp close to ``now`` (unix seconds) and a matching HMAC."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), signed)


def signed_headers(secret: bytes, delivery: Delivery, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        EVENT_HEADER: delivery.kind.value,
        DELIVERY_HEADER: delivery.id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


def public_url(url: str) -> str:
    """The URL as logs may show it: no user name, password, query or fragment (they may hold tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class RetryPolicy:
    """A delivery not answered with a 2xx is tried again after ``first_delay`` seconds, doubling up to
    ``max_delay``, and given up once it has been tried ``max_attempts`` times."""

    max_attempts: int = 12
    first_delay: float = 10.0
    max_delay: float = 3600.0

    def delay(self, attempts: int) -> timedelta:
        """How long after its ``attempts``-th failed attempt a delivery is tried again."""
        seconds = min(self.first_delay * 2 ** max(attempts - 1, 0), max(self.max_delay, self.first_delay))
        return timedelta(seconds=seconds)

    def schedule(self) -> list[timedelta]:
        """The delays between every two attempts, in order."""
        return [self.delay(attempts) for attempts in range(1, self.max_attempts)]


@dataclass(frozen=True)
class Outcome:
    """What became of one attempt: None ``error`` means delivered."""

    delivery: Delivery
    error: str | None
    attempts: int
    next_attempt_at: datetime | None = None  # when it is tried again; None when delivered or given up

    @property
    def delivered(self) -> bool:
        return self.error is None

    @property
    def given_up(self) -> bool:
        return self.error is not None and self.next_attempt_at is None


def attempt_outcome(delivery: Delivery, error: str | None, policy: RetryPolicy, now: datetime) -> Outcome:
    attempts = delivery.attempts + 1
    if error is None:
        return Outcome(delivery, None, attempts)
    error = error[:MAX_ERROR_TEXT]
    if attempts >= policy.max_attempts:
        return Outcome(delivery, error, attempts)
    return Outcome(delivery, error, attempts, now + policy.delay(attempts))


# --- what each notification says ------------------------------------------------------------------


def backup_summary(backup: Backup) -> dict[str, Any]:
    return {
        "id": backup.id,
        "type": backup.type.value,
        "status": backup.status.value,
        "error": backup.error,
        "description": backup.description,
        "trigger": backup.trigger.value,
        "schedule": backup.schedule,
        "requested_by": backup.requested_by,
        "created_at": _iso(backup.created_at),
        "completed_at": _iso(backup.completed_at),
        "parts": [{"part": part.part.value, "status": part.status.value, "error": part.error} for part in backup.parts],
    }


@dataclass(frozen=True)
class MissingBackup:
    """A schedule entry whose fire time passed more than the allowed delay ago with no successful
    backup of the entry made since."""

    schedule: str
    backup_type: str
    cron: str
    timezone: str
    expected_at: datetime  # the fire time whose backup is missing
    missing_after: timedelta
    last_success: Backup | None = field(default=None, compare=False)

    @property
    def dedupe_key(self) -> str:
        return f"{NotificationKind.BACKUP_MISSING.value}:{self.schedule}:{self.expected_at.isoformat()}"

    def body(self, now: datetime) -> dict[str, Any]:
        last = self.last_success
        return {
            "occurred_at": now.isoformat(),
            "schedule": {
                "name": self.schedule,
                "type": self.backup_type,
                "cron": self.cron,
                "timezone": self.timezone,
                "expected_at": self.expected_at.isoformat(),
                "missing_after_minutes": int(self.missing_after.total_seconds() // 60),
                "last_backup": None
                if last is None
                else {"id": last.id, "created_at": _iso(last.created_at), "completed_at": _iso(last.completed_at)},
            },
        }


def backup_is_missing(
    fire_at: datetime, last_success: datetime | None, now: datetime, missing_after: timedelta
) -> bool:
    """Whether the backup a schedule entry was due to make at ``fire_at`` is missing at ``now``: the
    allowed delay has passed and no backup of the entry made at or after ``fire_at`` succeeded
    (``last_success``: when the entry's latest successful backup was made)."""
    if now - fire_at < missing_after:
        return False
    return last_success is None or last_success < fire_at
