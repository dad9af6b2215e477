"""Webhook notifications with real MariaDB, RabbitMQ and an HTTP receiver on 127.0.0.1: a backup that
fails is POSTed, signed, to the webhook the settings name; a receiver that answers 500 twice gets the
delivery a third time, and /metrics counts the failures; a scheduled backup that is not made is
reported once per fire time, whatever the replicas."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from backup_common.adapters.mysql.leases import LeaseStore
from backup_common.adapters.mysql.uow import unit_of_work_factory
from backup_common.adapters.runtime.service import worker_app
from backup_common.adapters.settings import Settings
from backup_common.domain.notifications import Delivery, NotificationKind, new_delivery
from backup_retention import bootstrap as retention
from tests.integration.gateway_support import Gateway, running_gateway, stopping_within

pytestmark = pytest.mark.integration

API = "/api/admin/backup"
SECRET = "webhook-signing-secret-of-the-integration-tests"
TICK = 0.1


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook on 127.0.0.1: records each POST and answers with the next status of ``answers``
    (the last one once the others are used)."""

    url: str
    answers: list[int] = field(default_factory=lambda: [200])
    received: list[Request] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Request(dict(request.headers), await request.read()))
        status = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return web.Response(status=status, text="ok" if status < 300 else "try later")

    def of(self, event: str) -> list[Request]:
        return [request for request in self.received if request.headers.get("X-Backup-Event") == event]


@asynccontextmanager
async def receiving(*answers: int) -> AsyncIterator[Receiver]:
    receiver = Receiver("", list(answers) or [200])
    app = web.Application()
    app.router.add_post("/hooks/backup", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    receiver.url = str(server.make_url("/hooks/backup?token=t0ps3cret"))
    try:
        yield receiver
    finally:
        await server.close()


def verified(request: Request) -> bool:
    """What a receiver does, as the README shows it."""
    timestamp = request.headers["X-Backup-Timestamp"]
    if abs(time.time() - int(timestamp)) > 300:
        return False
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("sha256=" + expected, request.headers["X-Backup-Signature"])


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    # Retries 50 ms apart (doubling), so the test need not wait out real backoff.
    overrides = {"notification_secret": SECRET, "notification_retry_seconds": 0.05}
    async with running_gateway(settings, **overrides) as running:
        yield running


@asynccontextmanager
async def running_retention(gateway: Gateway, replicas: int = 1, **options: Any) -> AsyncIterator[list[str]]:
    """Retention replicas on the gateway's catalog; the base URL of each (for /metrics)."""
    options = {"tick_seconds": TICK, "round_seconds": TICK, "notify_seconds": TICK} | options
    bootstrap = partial(retention.bootstrap, **options)
    servers = [TestServer(worker_app(gateway.settings, retention.NAME, bootstrap)) for _ in range(replicas)]
    try:
        for server in servers:
            await server.start_server()
        yield [str(server.make_url("/")) for server in servers]
    finally:
        for server in servers:
            async with stopping_within(retention.NAME):
                await server.close()


async def until(check: Callable[[], Any], *, seconds: float = 60) -> Any:
    async with asyncio.timeout(seconds):
        while True:
            if result := await check():
                return result
            await asyncio.sleep(0.1)


async def set_webhooks(gateway: Gateway, *webhooks: dict[str, Any], missing_after_minutes: int = 60) -> None:
    patch = {"notifications": {"webhooks": list(webhooks), "missing_after_minutes": missing_after_minutes}}
    status, body = await gateway.call("PATCH", f"{API}/settings", patch)
    assert status == 200, body
    assert body["document"]["notifications"]["webhooks"][0]["events"]


async def unclaimed_backup(gateway: Gateway) -> dict[str, Any]:
    """A backup no worker took for two hours: the retention service's housekeeping fails it, and
    BackupFailed goes out through the outbox and the exchange, back to the retention service."""
    backup = await gateway.create("database", description="nobody takes me")
    await gateway.rows("UPDATE backups SET updated_at = NOW(6) - INTERVAL 2 HOUR WHERE id = %s", (backup["id"],))
    return backup


async def deliveries(gateway: Gateway, kind: str) -> list[dict[str, Any]]:
    return await gateway.rows(
        "SELECT id, webhook_url, attempts, delivered_at, given_up_at, last_error, payload"
        " FROM notification_deliveries WHERE event_kind = %s ORDER BY created_at",
        (kind,),
    )


async def metrics_of(base_url: str) -> str:
    async with aiohttp.ClientSession() as client, client.get(base_url + "metrics") as response:
        assert response.status == 200
        return await response.text()


def metric(text: str, line_start: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(line.rsplit(" ", 1)[1])


async def test_a_failed_backup_is_posted_signed_to_the_webhook(gateway: Gateway) -> None:
    async with receiving() as receiver:
        await set_webhooks(gateway, {"url": receiver.url, "events": ["backup_failed"]})
        backup = await unclaimed_backup(gateway)

        async with running_retention(gateway):
            await until(lambda: _received(receiver, "backup_failed", 1))
            (row,) = await until(lambda: _delivered(gateway, "backup_failed"))

    (request,) = receiver.received
    assert verified(request)
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Backup-Delivery"] == row["id"]
    body = request.json
    assert (body["event"], body["delivery_id"]) == ("backup_failed", row["id"])
    assert datetime.fromisoformat(body["occurred_at"]).tzinfo is not None
    assert (body["backup"]["id"], body["backup"]["type"], body["backup"]["status"]) == (
        backup["id"],
        "database",
        "failed",
    )
    assert "no worker took it within 60 minutes" in body["backup"]["error"]
    assert body["backup"]["description"] == "nobody takes me"
    assert (row["attempts"], row["last_error"], row["given_up_at"]) == (1, None, None)
    tampered = Request(request.headers, request.body.replace(b"failed", b"fine!!"))
    assert not verified(tampered)


async def _received(receiver: Receiver, event: str, count: int) -> bool:
    return len(receiver.of(event)) >= count


async def _delivered(gateway: Gateway, kind: str) -> list[dict[str, Any]]:
    rows = await deliveries(gateway, kind)
    return rows if rows and all(row["delivered_at"] for row in rows) else []


async def test_a_webhook_answering_500_twice_gets_the_delivery_a_third_time_and_metrics_count_failures(
    gateway: Gateway,
) -> None:
    async with receiving(500, 500, 200) as receiver:
        await set_webhooks(gateway, {"url": receiver.url})
        await unclaimed_backup(gateway)

        async with running_retention(gateway) as (base_url,):
            (row,) = await until(lambda: _delivered(gateway, "backup_failed"))
            text = await until(lambda: _metrics_when_settled(base_url))

    attempts = receiver.of("backup_failed")
    assert len(attempts) == 3
    assert {request.headers["X-Backup-Delivery"] for request in attempts} == {row["id"]}
    assert all(verified(request) for request in attempts)
    assert len({request.body for request in attempts}) == 1  # the same body, re-signed each time
    assert row["attempts"] == 3
    assert row["last_error"] == "HTTP 500: try later"  # the last failure, kept
    assert metric(text, 'backup_notification_failures_total{event="backup_failed"}') == 2
    assert metric(text, 'backup_notifications_delivered_total{event="backup_failed"}') == 1
    assert metric(text, 'backup_notifications_given_up_total{event="backup_failed"}') == 0
    assert metric(text, "backup_notifications_pending") == 0
    assert "t0ps3cret" not in text


async def _metrics_when_settled(base_url: str) -> str | None:
    text = await metrics_of(base_url)
    delivered = 'backup_notifications_delivered_total{event="backup_failed"}'
    if metric(text, delivered) == 1 and metric(text, "backup_notifications_pending") == 0:
        return text
    return None


class FastClock:
    """Real time from ``start``, ``speed`` times as fast: a schedule minute every 60 / speed seconds."""

    def __init__(self, start: datetime, speed: float) -> None:
        self._start = start
        self._began = time.monotonic()
        self._speed = speed

    def __call__(self) -> datetime:
        return self._start + timedelta(seconds=(time.monotonic() - self._began) * self._speed)


async def test_a_scheduled_backup_not_made_is_reported_missing_once_per_fire_time_by_two_replicas(
    gateway: Gateway,
) -> None:
    entry = {"name": "every-minute", "type": "database", "cron": "* * * * *"}
    status, body = await gateway.call("PUT", f"{API}/schedule", {"timezone": "UTC", "schedules": [entry]})
    assert status == 200, body
    clock = FastClock(datetime.now(UTC).replace(second=50, microsecond=0), speed=12)  # a minute every 5 s

    async with receiving() as receiver:
        await set_webhooks(gateway, {"url": receiver.url, "events": ["backup_missing"]}, missing_after_minutes=1)
        # No database_backup worker: the first backup stays pending, later firings are skipped.
        async with running_retention(gateway, 2, clock=clock):
            requests, rows, firings = await until(lambda: _settled(gateway, receiver, 3), seconds=90)

    reported = [request.json["schedule"] for request in requests]
    expected = [datetime.fromisoformat(schedule["expected_at"]) for schedule in reported]
    assert len(expected) == len(set(expected)) >= 3  # each fire time once
    assert all(later - earlier == timedelta(minutes=1) for earlier, later in itertools.pairwise(sorted(expected)))
    assert {(s["name"], s["missing_after_minutes"], s["last_backup"]) for s in reported} == {("every-minute", 1, None)}
    assert all(verified(request) for request in requests)
    assert sorted(row["id"] for row in rows) == sorted(request.headers["X-Backup-Delivery"] for request in requests)
    assert [row["fire_at"].replace(tzinfo=UTC) for row in firings] == sorted(expected)


async def _settled(
    gateway: Gateway, receiver: Receiver, count: int
) -> tuple[list[Request], list[dict[str, Any]], list[dict[str, Any]]] | None:
    """The POSTs received, the deliveries and the firings reported missing, once at least ``count``
    were reported and each of them was delivered (a consistent moment to compare them)."""
    firings = await gateway.rows(
        "SELECT fire_at FROM schedule_firings WHERE missing_reported_at IS NOT NULL ORDER BY fire_at"
    )
    rows = await deliveries(gateway, "backup_missing")
    requests = receiver.of("backup_missing")
    if len(firings) < count or len(rows) != len(firings) or not all(row["delivered_at"] for row in rows):
        return None
    return (requests, rows, firings) if len(requests) == len(rows) else None


# --- the catalog's side -------------------------------------------------------------------------


def delivery_of(url: str, key: str, now: datetime) -> Delivery:
    return new_delivery(str(uuid.uuid4()), url, NotificationKind.BACKUP_FAILED, key, {"backup": {"id": key}}, now)


async def test_deliveries_are_recorded_once_taken_by_one_replica_at_a_time_and_purged_when_finished(
    gateway: Gateway,
) -> None:
    leases = LeaseStore(gateway.pool, 60)
    uow = unit_of_work_factory(gateway.pool, leases)
    now = datetime.now(UTC)
    async with uow() as work:
        assert await work.notifications.add(delivery_of("https://a.example.com/", "k1", now))
        assert not await work.notifications.add(delivery_of("https://a.example.com/", "k1", now))  # the same again
        assert await work.notifications.add(delivery_of("https://b.example.com/", "k1", now))
        assert await work.notifications.add(delivery_of("https://a.example.com/", "k2", now))
        await work.commit()

    async with uow() as first, uow() as second:
        taken = await first.notifications.due(now, 2)
        others = await second.notifications.due(now, 10)  # SKIP LOCKED: only what the first did not take
        assert len(taken) == 2
        assert len(others) == 1
        assert {d.id for d in taken}.isdisjoint(d.id for d in others)
        await first.notifications.delivered(taken[0].id, 1, now)
        await first.notifications.give_up(taken[1].id, 3, "HTTP 410", now)
        await first.commit()
        await second.notifications.retry(others[0].id, 1, "HTTP 500", now + timedelta(hours=1))
        await second.commit()

    async with uow() as work:
        assert await work.notifications.due(now, 10) == []
        assert await work.notifications.pending() == 1
        given_up = await work.notifications.get(taken[1].id)
        assert given_up is not None
        assert (given_up.attempts, given_up.last_error) == (3, "HTTP 410")
        assert given_up.payload == {"backup": {"id": given_up.dedupe_key}, "event": "backup_failed",
                                    "delivery_id": given_up.id}  # fmt: skip
        purged = await work.housekeeping.purge(now + timedelta(days=1), 100)
        await work.commit()

    assert purged["notification_deliveries"] == 2  # the unfinished one stays
    (left,) = await gateway.rows("SELECT id FROM notification_deliveries")
    assert left["id"] == others[0].id
