"""Webhook notifications: the settings document's `notifications` section names the webhooks; this
records what each must be told and delivers it.

- A failed backup or a failed verification (the events this service consumes) is recorded as one
  delivery per webhook that wants it, in one unit of work; a redelivered event finds its rows and
  records nothing more.
- A scheduled backup is missing when the entry's latest recorded fire time is more than
  ``missing_after_minutes`` old and no backup of the entry made since that fire time completed: it
  is reported once per fire time (the firing row remembers it), so once per missed period.
- The delivery loop POSTs what is due (signed: see domain/notifications.py), marks a 2xx answer
  delivered and anything else failed, tried again after a growing delay or, after the last
  attempt, given up with its reason. Rows are taken FOR UPDATE SKIP LOCKED: of several replicas,
  one at a time attempts each.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from backup_common.adapters.waiting import wait_event
from backup_common.domain.documents import NotificationSettings, ScheduleEntry, SettingsDocument
from backup_common.domain.events import BackupFailed, BackupVerificationFailed, Event
from backup_common.domain.model import Backup
from backup_common.domain.notifications import (
    Delivery,
    MissingBackup,
    NotificationKind,
    Outcome,
    RetryPolicy,
    attempt_outcome,
    backup_is_missing,
    backup_summary,
    new_delivery,
    public_url,
    signed_headers,
)
from backup_common.domain.ports import (
    NotificationRepository,
    Ports,
    WebhookError,
    WebhookSender,
    read_schedule,
    read_settings,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
WATCH_SECONDS = 60.0
BATCH = 20
PENDING_EVERY = 15.0  # seconds between two counts of the pending deliveries, when nothing happens
DROPPED = "not sent: the webhook was removed from the settings, or disabled, or no longer wants this event"
NO_SECRET = "not sent: BACKUP_NOTIFICATION_SECRET is not set (never sent unsigned)"  # noqa: S105 (a message)


class NotificationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.delivered = Counter(
            "backup_notifications_delivered",
            "Webhook deliveries answered with a 2xx.",
            ["event"],
            registry=registry,
        )
        self.failures = Counter(
            "backup_notification_failures",
            "Webhook delivery attempts that failed (no answer, or one that is not a 2xx).",
            ["event"],
            registry=registry,
        )
        self.given_up = Counter(
            "backup_notifications_given_up",
            "Webhook deliveries abandoned after their last attempt failed.",
            ["event"],
            registry=registry,
        )
        self.pending = Gauge(
            "backup_notifications_pending",
            "Webhook deliveries neither delivered nor given up yet (every replica counts them all).",
            registry=registry,
        )
        for kind in NotificationKind:  # each series exists, at 0, before anything happens
            for counter in (self.delivered, self.failures, self.given_up):
                counter.labels(kind.value)


@dataclass
class PassReport:
    delivered: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # for a webhook removed or disabled: never sent

    @property
    def attempted(self) -> int:
        return len(self.delivered) + len(self.retried) + len(self.given_up) + len(self.dropped)


class Notifier:
    """Records notifications and delivers them. ``secret`` is the HMAC key (None: nothing can be
    sent, and every attempt fails saying so)."""

    def __init__(
        self,
        ports: Ports,
        metrics: NotificationMetrics,
        sender: WebhookSender,
        secret: bytes | None,
        *,
        retry: RetryPolicy | None = None,
        poll_seconds: float = POLL_SECONDS,
        watch_seconds: float = WATCH_SECONDS,
        batch: int = BATCH,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._ports = ports
        self._metrics = metrics
        self._sender = sender
        self._secret = secret
        self._retry = retry or RetryPolicy()
        self._poll_seconds = poll_seconds
        self._watch_seconds = watch_seconds
        self._batch = batch
        self._new_id = new_id
        self._wall_clock = wall_clock  # the signature's timestamp: the receiver's clock is a real one
        self._wakeup = asyncio.Event()
        self._counted_at = float("-inf")
        self._warned = False

    def wake(self) -> None:
        """Asks the delivery loop to look now rather than at its next poll."""
        self._wakeup.set()

    # --- recording --------------------------------------------------------------------------------

    async def _settings(self) -> NotificationSettings:
        return (await read_settings(self._ports.uow)).notifications

    async def record(
        self, kind: NotificationKind, dedupe_key: str, body: Callable[[Backup | None], dict[str, Any]], backup_id: str
    ) -> list[str]:
        """One delivery of ``kind`` per webhook that wants it, the body made from the backup as the
        catalog has it; the ids recorded (none when every one was recorded already)."""
        urls = (await self._settings()).subscribers(kind)
        if not urls:
            return []
        if self._secret is None and not self._warned:
            self._warned = True
            log.error("notifications: BACKUP_NOTIFICATION_SECRET is not set: deliveries fail until it is")
        now = self._ports.clock()
        recorded = []
        async with self._ports.uow() as uow:
            backup = await uow.backups.get(backup_id)
            payload = body(backup)
            for url in urls:
                delivery = new_delivery(self._new_id(), url, kind, dedupe_key, payload, now)
                if await uow.notifications.add(delivery):
                    recorded.append(delivery.id)
            await uow.commit()
        if recorded:
            log.info("notifications: %s of backup %s queued for %d webhooks", kind.value, backup_id, len(recorded))
            self.wake()
        return recorded

    async def backup_failed(self, event: BackupFailed) -> list[str]:
        def body(backup: Backup | None) -> dict[str, Any]:
            return {"occurred_at": event.occurred_at.isoformat(), "backup": _backup(event, backup, "failed")}

        # A backup fails once: its id makes the notification's key, whatever the event's copies.
        kind = NotificationKind.BACKUP_FAILED
        return await self.record(kind, f"{kind.value}:{event.backup_id}", body, str(event.backup_id))

    async def verification_failed(self, event: BackupVerificationFailed) -> list[str]:
        def body(backup: Backup | None) -> dict[str, Any]:
            verification = backup.verification if backup is not None else None
            return {
                "occurred_at": event.occurred_at.isoformat(),
                "backup": _backup(event, backup, None),
                "verification": {
                    "status": "failed",
                    "error": event.reason,
                    "checked_at": _iso(verification.checked_at) if verification else None,
                    "checks": [check.as_dict() for check in verification.checks] if verification else [],
                },
            }

        # A backup may fail verification again (each drill): each event is a notification of its own.
        kind = NotificationKind.VERIFICATION_FAILED
        return await self.record(kind, f"{kind.value}:{event.event_id}", body, str(event.backup_id))

    # --- missing backups --------------------------------------------------------------------------

    async def find_missing(self, now: datetime | None = None) -> list[MissingBackup]:
        """Reports the scheduled backups missing at ``now`` (the clock's by default) that were not
        reported yet; those this call reported. Nothing is looked at while no webhook wants to know."""
        now = now or self._ports.clock()
        settings = await self._settings()
        urls = settings.subscribers(NotificationKind.BACKUP_MISSING)
        if not urls:
            return []
        missing_after = timedelta(minutes=settings.missing_after_minutes)
        document = await read_schedule(self._ports.uow)
        reported = []
        for entry in document.schedules:
            if entry.enabled and (found := await self._missing(entry, document.timezone, missing_after, urls, now)):
                reported.append(found)
        if reported:
            self.wake()
        return reported

    async def _missing(
        self, entry: ScheduleEntry, timezone: str, missing_after: timedelta, urls: list[str], now: datetime
    ) -> MissingBackup | None:
        async with self._ports.uow() as uow:
            firing = await uow.schedules.latest_firing(entry.name, now - missing_after)
            if firing is None or firing.missing_reported_at is not None:
                return None
            last = await uow.backups.last_success_of_schedule(entry.name)
            if not backup_is_missing(firing.fire_at, last.created_at if last else None, now, missing_after):
                return None
            if not await uow.schedules.report_missing(entry.name, firing.fire_at, now):
                return None  # another replica reported it
            missing = MissingBackup(
                entry.name, entry.type.value, entry.cron, timezone, firing.fire_at, missing_after, last
            )
            kind = NotificationKind.BACKUP_MISSING
            for url in urls:
                await uow.notifications.add(
                    new_delivery(self._new_id(), url, kind, missing.dedupe_key, missing.body(now), now)
                )
            await uow.commit()
        log.warning(
            "notifications: schedule %s: no backup of it completed within %s of its firing at %s",
            entry.name, missing_after, firing.fire_at,
        )  # fmt: skip
        return missing

    # --- delivering -------------------------------------------------------------------------------

    async def deliver_due(self) -> PassReport:
        """One pass: every due delivery (a batch) attempted at once, its outcome recorded."""
        report = PassReport()
        async with self._ports.uow() as uow:
            due = await uow.notifications.due(self._ports.clock(), self._batch)
            if not due:
                return report
            # A webhook removed or disabled since: what it still had coming is dropped, not sent.
            settings = (await uow.documents.get("settings")).document
            assert isinstance(settings, SettingsDocument)
            subscribed = {kind: set(settings.notifications.subscribers(kind)) for kind in NotificationKind}
            wanted = [delivery for delivery in due if delivery.url in subscribed[delivery.kind]]
            dropped = [delivery for delivery in due if delivery.url not in subscribed[delivery.kind]]
            errors = await asyncio.gather(*(self._attempt(delivery) for delivery in wanted))
            now = self._ports.clock()
            outcomes = [
                attempt_outcome(delivery, error, self._retry, now)
                for delivery, error in zip(wanted, errors, strict=True)
            ]
            for outcome in outcomes:
                await self._save(uow.notifications, outcome, now)
            for delivery in dropped:
                await uow.notifications.give_up(delivery.id, delivery.attempts, DROPPED, now)
            await uow.commit()
        for outcome in outcomes:
            self._count(outcome, report)
        for delivery in dropped:
            report.dropped.append(delivery.id)
            log.info(
                "notifications: %s %s to %s dropped: %s", delivery.kind, delivery.id, public_url(delivery.url), DROPPED
            )
        return report

    async def _attempt(self, delivery: Delivery) -> str | None:
        """None when the webhook answered with a 2xx; otherwise why not."""
        if self._secret is None:
            return NO_SECRET
        body = delivery.body
        headers = signed_headers(self._secret, delivery, body, int(self._wall_clock()))
        try:
            status, answer = await self._sender.post(delivery.url, body, headers)
        except WebhookError as exc:
            return str(exc)
        except Exception as exc:  # a bug in a sender must not stop the others' outcomes being recorded
            log.exception("notifications: delivery %s could not be attempted", delivery.id)
            return f"not attempted: {type(exc).__name__}"
        if 200 <= status < 300:
            return None
        return f"HTTP {status}" + (f": {answer.strip()[:200]}" if answer.strip() else "")

    @staticmethod
    async def _save(repository: NotificationRepository, outcome: Outcome, now: datetime) -> None:
        delivery = outcome.delivery
        if outcome.error is None:
            await repository.delivered(delivery.id, outcome.attempts, now)
        elif outcome.next_attempt_at is not None:
            await repository.retry(delivery.id, outcome.attempts, outcome.error, outcome.next_attempt_at)
        else:
            await repository.give_up(delivery.id, outcome.attempts, outcome.error, now)

    def _count(self, outcome: Outcome, report: PassReport) -> None:
        delivery, kind = outcome.delivery, outcome.delivery.kind.value
        where = public_url(delivery.url)
        if outcome.error is None:
            self._metrics.delivered.labels(kind).inc()
            report.delivered.append(delivery.id)
            log.info("notifications: %s %s delivered to %s", kind, delivery.id, where)
            return
        self._metrics.failures.labels(kind).inc()
        if outcome.next_attempt_at is not None:
            report.retried.append(delivery.id)
            log.warning(
                "notifications: %s %s to %s failed (attempt %d of %d), trying again at %s: %s",
                kind, delivery.id, where, outcome.attempts, self._retry.max_attempts,
                f"{outcome.next_attempt_at:%Y-%m-%d %H:%M:%S}", outcome.error,
            )  # fmt: skip
        else:
            self._metrics.given_up.labels(kind).inc()
            report.given_up.append(delivery.id)
            log.error(
                "notifications: %s %s to %s given up after %d attempts: %s",
                kind, delivery.id, where, outcome.attempts, outcome.error,
            )  # fmt: skip

    async def count_pending(self) -> int:
        async with self._ports.uow() as uow:
            pending = await uow.notifications.pending()
        self._metrics.pending.set(pending)
        self._counted_at = time.monotonic()
        return pending

    async def run(self) -> None:
        """Delivers until cancelled."""
        while True:
            self._wakeup.clear()  # a wake during the pass makes the wait below return at once
            report = PassReport()
            try:
                report = await self.deliver_due()
                if report.attempted or time.monotonic() - self._counted_at >= PENDING_EVERY:
                    await self.count_pending()
            except Exception:
                log.exception("notification delivery pass failed; trying again")
            if report.attempted >= self._batch:
                continue  # more are probably due
            await wait_event(self._wakeup, self._poll_seconds)

    async def watch(self) -> None:
        """Looks for missing scheduled backups until cancelled."""
        while True:
            try:
                await self.find_missing()
            except Exception:
                log.exception("looking for missing backups failed; trying again")
            await asyncio.sleep(self._watch_seconds)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _backup(event: Event, backup: Backup | None, status: str | None) -> dict[str, Any]:
    """The backup as the catalog has it; from the event alone if the catalog no longer does."""
    if backup is not None:
        return backup_summary(backup)
    fields: Mapping[str, Any] = event.model_dump(mode="json")
    return {
        "id": str(event.backup_id),
        "type": fields.get("backup_type"),
        "status": status,
        "error": fields.get("reason") if status == "failed" else None,
    }
