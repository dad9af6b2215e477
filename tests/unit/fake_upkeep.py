"""In-memory fakes of the ports the retention service adds: schedule firings, housekeeping, locks,
webhook deliveries and a webhook receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

from backup_common.domain.notifications import Delivery
from backup_common.domain.ports import WebhookError
from backup_common.domain.schedule import Firing

if TYPE_CHECKING:
    from tests.unit.fakes import FakeCatalog, FakeUnitOfWork


class FakeSchedules:
    """Firings are staged like everything else: a firing another unit of work recorded first (even
    one not committed yet, as MySQL's unique key would make it wait, then collide) is refused."""

    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow
        self._catalog = uow.catalog

    async def cursors(self) -> dict[str, datetime]:
        return dict(self._catalog.cursors)

    async def advance(self, schedule: str, checked_until: datetime, next_fire_at: datetime | None) -> None:
        current = self._uow.staged_cursors.get(schedule, self._catalog.cursors.get(schedule))
        self._uow.staged_cursors[schedule] = max(current, checked_until) if current else checked_until

    async def record(self, firing: Firing, holder: str) -> bool:
        key = (firing.schedule, firing.fire_at)
        if key in self._catalog.firings or key in self._uow.staged_firings:
            return False
        self._uow.staged_firings[key] = firing
        return True

    async def firings(self, schedule: str | None = None, limit: int = 100) -> list[Firing]:
        found = [f for f in self._catalog.firings.values() if schedule is None or f.schedule == schedule]
        return sorted(found, key=lambda f: f.fire_at, reverse=True)[:limit]

    async def latest_firing(self, schedule: str, at_or_before: datetime) -> Firing | None:
        found = [f for f in self._catalog.firings.values() if f.schedule == schedule and f.fire_at <= at_or_before]
        return max(found, key=lambda f: f.fire_at, default=None)

    async def report_missing(self, schedule: str, fire_at: datetime, now: datetime) -> bool:
        firing = self._catalog.firings.get((schedule, fire_at))
        key = (schedule, fire_at)
        if firing is None or firing.missing_reported_at is not None or key in self._uow.staged_reports:
            return False
        self._uow.staged_reports[key] = now
        return True


class FakeHousekeeping:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self.purges: list[datetime] = uow.catalog.purges

    async def purge(self, before: datetime, batch: int) -> dict[str, int]:
        self.purges.append(before)
        return {"outbox": 0, "processed_messages": 0, "job_leases": 0, "notification_deliveries": 0}


class FakeLocks:
    """Named locks shared by every fake process of one catalog."""

    def __init__(self, catalog: FakeCatalog) -> None:
        self._held = catalog.locks

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[bool]:
        if name in self._held:
            yield False
            return
        self._held.add(name)
        try:
            yield True
        finally:
            self._held.discard(name)


class FakeNotifications:
    """Deliveries staged until commit; ``due`` locks what it returns until the unit of work ends
    (another unit of work skips those), as SELECT ... FOR UPDATE SKIP LOCKED does."""

    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow
        self._catalog = uow.catalog

    def _keys(self) -> set[tuple[str, str]]:
        stored = [*self._catalog.deliveries.values(), *self._uow.staged_deliveries.values()]
        return {(delivery.dedupe_key, delivery.url) for delivery in stored}

    async def add(self, delivery: Delivery) -> bool:
        if (delivery.dedupe_key, delivery.url) in self._keys():
            return False
        self._uow.staged_deliveries[delivery.id] = delivery
        return True

    async def due(self, now: datetime, limit: int) -> list[Delivery]:
        due = [
            delivery
            for delivery in self._catalog.deliveries.values()
            if not delivery.finished and delivery.next_attempt_at <= now and delivery.id not in self._catalog.claimed
        ]
        due = sorted(due, key=lambda delivery: (delivery.next_attempt_at, delivery.id))[:limit]
        for delivery in due:
            self._catalog.claimed.add(delivery.id)
            self._uow.claimed.add(delivery.id)
        return due

    def _update(self, delivery_id: str, **changes: object) -> None:
        current = self._uow.staged_deliveries.get(delivery_id) or self._catalog.deliveries[delivery_id]
        self._uow.staged_deliveries[delivery_id] = replace(current, **changes)  # type: ignore[arg-type]

    async def delivered(self, delivery_id: str, attempts: int, now: datetime) -> None:
        self._update(delivery_id, attempts=attempts, delivered_at=now)

    async def retry(self, delivery_id: str, attempts: int, error: str, next_attempt_at: datetime) -> None:
        self._update(delivery_id, attempts=attempts, last_error=error, next_attempt_at=next_attempt_at)

    async def give_up(self, delivery_id: str, attempts: int, error: str, now: datetime) -> None:
        self._update(delivery_id, attempts=attempts, last_error=error, given_up_at=now)

    async def get(self, delivery_id: str) -> Delivery | None:
        return self._uow.staged_deliveries.get(delivery_id) or self._catalog.deliveries.get(delivery_id)

    async def pending(self) -> int:
        return sum(1 for delivery in self._catalog.deliveries.values() if not delivery.finished)


@dataclass
class Received:
    url: str
    body: bytes
    headers: dict[str, str]


@dataclass
class FakeWebhooks:
    """A ``WebhookSender`` that records each POST and answers with the next of ``answers`` (then
    with the last again); an ``int`` is a status, a string raises WebhookError with it."""

    answers: list[int | str] = field(default_factory=lambda: [200])
    received: list[Received] = field(default_factory=list)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        self.received.append(Received(url, body, dict(headers)))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, str):
            raise WebhookError(answer)
        return answer, "" if 200 <= answer < 300 else "nope"
