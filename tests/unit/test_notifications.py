"""Webhook notifications without I/O: the settings section, the signature, the retry schedule, what
the retention service records for failed backups and verifications and for missing scheduled backups
(on a fake clock), and its delivery loop against a fake webhook. The same against MariaDB, RabbitMQ
and a real HTTP receiver is in tests/integration/test_notifications.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from backup_common.adapters.settings import Settings
from backup_common.cli.local import use_local_secrets
from backup_common.domain.documents import MAX_WEBHOOKS, ScheduleDocument, ScheduleEntry, SettingsDocument
from backup_common.domain.events import BackupFailed, BackupPart, BackupType, BackupVerificationFailed
from backup_common.domain.model import Backup, BackupStatus, PartResult
from backup_common.domain.notifications import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Delivery,
    NotificationKind,
    RetryPolicy,
    attempt_outcome,
    backup_is_missing,
    public_url,
    signature,
    signature_is_valid,
)
from backup_common.domain.schedule import FiringOutcome
from backup_gateway import handlers as gateway
from backup_retention.bootstrap import bootstrap
from backup_retention.handlers import RetentionMetrics
from backup_retention.notifications import DROPPED, NO_SECRET, NotificationMetrics, Notifier
from backup_retention.scheduler import Scheduler
from tests.unit.fake_upkeep import FakeWebhooks
from tests.unit.fakes import FakeSystem, fake_ports

SECRET = "n" * 40
NOW = 1_800_000_000  # the wall clock the signatures are made at
HOOK = "https://hooks.example.com/backup?token=abc"
OTHER = "http://127.0.0.1:9/only-missing"


@pytest.fixture
def system(tmp_path: Path) -> FakeSystem:
    return fake_ports(tmp_path / "storage")


def settings_with(**notifications: Any) -> dict[str, Any]:
    return SettingsDocument().model_dump(mode="json") | {"notifications": notifications}


def refusal(notifications: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        SettingsDocument.model_validate(settings_with(**notifications))
    return str(caught.value)


# --- the settings section -------------------------------------------------------------------------


def test_the_default_settings_have_no_webhook_and_report_missing_backups_after_an_hour() -> None:
    section = SettingsDocument().notifications

    assert section.webhooks == []
    assert section.missing_after_minutes == 60


def test_a_webhook_receives_every_event_by_default_and_only_enabled_ones_subscribe() -> None:
    document = SettingsDocument.model_validate(
        settings_with(
            webhooks=[
                {"url": HOOK},
                {"url": OTHER, "events": ["backup_missing"]},
                {"url": "https://off.example.com/", "enabled": False},
            ]
        )
    )
    section = document.notifications

    assert section.webhooks[0].events == list(NotificationKind)
    assert section.webhooks[0].enabled
    assert section.subscribers(NotificationKind.BACKUP_FAILED) == [HOOK]
    assert section.subscribers(NotificationKind.BACKUP_MISSING) == [HOOK, OTHER]
    assert SettingsDocument.model_validate_json(document.model_dump_json()) == document


@pytest.mark.parametrize(
    ("webhook", "expected"),
    [
        ({"url": "ftp://example.com/x"}, "must be an http:// or https:// URL"),
        ({"url": "https:///no-host"}, "must name a host"),
        ({"url": "https://example.com:99999/"}, "not a valid URL"),
        ({"url": "https://example.com/a b"}, "must be ASCII without spaces"),
        ({"url": "https://exämple.com/"}, "must be ASCII without spaces"),
        ({"url": "https://example.com/#part"}, "must have no #fragment"),
        ({"url": "https://example.com/" + "a" * 2000}, "at most 2000 characters"),
        ({"url": ""}, "at least 1 character"),
        ({"url": HOOK, "events": []}, "at least 1 item"),
        ({"url": HOOK, "events": ["backup_failed", "backup_failed"]}, "each event may be listed once"),
        ({"url": HOOK, "events": ["backup_done"]}, "backup_failed"),
        ({"url": HOOK, "enabled": "yes"}, "valid boolean"),
        ({"url": HOOK, "enabled": 1}, "valid boolean"),
        ({"url": HOOK, "secret": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_webhook_is_refused_naming_the_problem(webhook: dict[str, Any], expected: str) -> None:
    assert expected in refusal({"webhooks": [webhook]})


def test_webhook_urls_are_unique_and_their_number_bounded() -> None:
    assert "webhook URLs must be unique" in refusal({"webhooks": [{"url": HOOK}, {"url": HOOK}]})
    many = [{"url": f"https://example.com/{n}"} for n in range(MAX_WEBHOOKS + 1)]
    assert f"at most {MAX_WEBHOOKS} items" in refusal({"webhooks": many})


@pytest.mark.parametrize("minutes", [True, "60", 0, 7 * 24 * 60 + 1, 1.5])
def test_the_missing_delay_is_a_strict_bounded_integer(minutes: Any) -> None:
    refusal({"missing_after_minutes": minutes})


def test_the_signing_secret_is_a_setting_of_at_least_32_characters_never_shown() -> None:
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(notification_secret="short")

    settings = Settings(notification_secret=SECRET)

    assert SECRET not in repr(settings)
    assert (settings.notification_max_attempts, settings.notification_retry_seconds) == (12, 10.0)


def test_a_local_run_gets_a_signing_secret_kept_in_var_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env: dict[str, str] = {}

    assert use_local_secrets({}, create=False).notes == []
    used = use_local_secrets(env, create=True)

    secret = (tmp_path / "var" / "secrets" / "notification-secret").read_text().strip()
    assert env["BACKUP_NOTIFICATION_SECRET"] == secret
    assert len(secret) >= 32
    assert oct(os.stat(tmp_path / "var" / "secrets" / "notification-secret").st_mode & 0o777) == "0o600"
    assert any("BACKUP_NOTIFICATION_SECRET" in note for note in used.notes)
    again: dict[str, str] = {}
    use_local_secrets(again, create=False)
    assert again["BACKUP_NOTIFICATION_SECRET"] == secret
    mine = {"BACKUP_NOTIFICATION_SECRET": "o" * 40}
    use_local_secrets(mine, create=True)
    assert mine["BACKUP_NOTIFICATION_SECRET"] == "o" * 40


# --- signature, retries, URLs ---------------------------------------------------------------------


def test_the_signature_is_the_hmac_sha256_of_the_timestamp_a_dot_and_the_raw_body() -> None:
    body = b'{"event":"backup_failed"}'
    expected = hmac.new(SECRET.encode(), b"1800000000." + body, hashlib.sha256).hexdigest()

    assert signature(SECRET.encode(), NOW, body) == f"sha256={expected}"


def test_a_receiver_accepts_the_signature_only_for_that_body_secret_and_a_recent_timestamp() -> None:
    body = b'{"event":"backup_failed"}'
    signed = signature(SECRET.encode(), NOW, body)

    assert signature_is_valid(SECRET.encode(), str(NOW), body, signed, now=NOW + 60)
    assert not signature_is_valid(SECRET.encode(), str(NOW), body + b" ", signed, now=NOW)
    assert not signature_is_valid(b"another secret of forty characters......", str(NOW), body, signed, now=NOW)
    assert not signature_is_valid(SECRET.encode(), str(NOW + 1), body, signed, now=NOW)  # the timestamp is signed
    assert not signature_is_valid(SECRET.encode(), str(NOW), body, signed, now=NOW + 301)  # a replay
    assert not signature_is_valid(SECRET.encode(), "soon", body, signed, now=NOW)


def test_retries_wait_ten_seconds_doubling_up_to_an_hour() -> None:
    policy = RetryPolicy(max_attempts=12, first_delay=10, max_delay=3600)

    assert [delay.total_seconds() for delay in policy.schedule()] == [
        10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600,
    ]  # fmt: skip


def test_a_delivery_is_given_up_with_its_reason_after_its_last_attempt(system: FakeSystem) -> None:
    policy = RetryPolicy(max_attempts=3, first_delay=10)
    now = system.clock()
    delivery = Delivery("d", HOOK, NotificationKind.BACKUP_FAILED, "k", {}, now, now)

    first = attempt_outcome(delivery, "HTTP 500", policy, now)
    second = attempt_outcome(Delivery(**{**delivery.__dict__, "attempts": 1}), "HTTP 500", policy, now)
    last = attempt_outcome(Delivery(**{**delivery.__dict__, "attempts": 2}), "HTTP 502", policy, now)
    delivered = attempt_outcome(delivery, None, policy, now)

    assert (first.attempts, first.next_attempt_at) == (1, now + timedelta(seconds=10))
    assert (second.attempts, second.next_attempt_at) == (2, now + timedelta(seconds=20))
    assert (last.attempts, last.given_up, last.error) == (3, True, "HTTP 502")
    assert delivered.delivered
    assert not delivered.given_up


def test_urls_are_logged_without_credentials_query_or_fragment() -> None:
    assert public_url("https://user:pass@hooks.example.com:8443/in?token=abc#x") == "https://hooks.example.com:8443/in"
    assert public_url("http://[::1]:80/x") == "http://[::1]:80/x"


# --- recording failures ---------------------------------------------------------------------------


async def set_webhooks(system: FakeSystem, *webhooks: dict[str, Any], missing_after_minutes: int = 60) -> None:
    document = settings_with(webhooks=list(webhooks), missing_after_minutes=missing_after_minutes)
    await gateway.replace_document(system.ports, "settings", document, updated_by="alice")


async def failed_backup(system: FakeSystem) -> tuple[Backup, BackupFailed]:
    backup = Backup.request(BackupType.FULL, requested_by="alice", now=system.clock(), description="nightly")
    backup.start_part(BackupPart.DATABASE, 1, system.clock())
    backup.fail_part(BackupPart.DATABASE, "disk full", system.clock())
    async with system.ports.uow() as uow:
        await uow.backups.add(backup)
        await uow.commit()
    (event,) = [event for event in system.catalog.outbox if isinstance(event, BackupFailed)]
    return backup, event


def service_of(system: FakeSystem, webhooks: FakeWebhooks, **settings: Any) -> Any:
    return bootstrap(
        Settings(notification_secret=SECRET, **settings), system.ports, CollectorRegistry(), webhooks=webhooks
    )


def notifier(
    system: FakeSystem, webhooks: FakeWebhooks, *, secret: str | None = SECRET, attempts: int = 10
) -> tuple[Notifier, CollectorRegistry]:
    registry = CollectorRegistry()
    made = Notifier(
        system.ports,
        NotificationMetrics(registry),
        webhooks,
        secret.encode() if secret else None,
        retry=RetryPolicy(max_attempts=attempts, first_delay=10),
        wall_clock=lambda: NOW,
    )
    return made, registry


def sample(registry: CollectorRegistry, name: str, kind: NotificationKind | None = None) -> float | None:
    return registry.get_sample_value(name, {"event": kind.value} if kind else {})


def test_the_service_consumes_failed_backups_and_verifications_and_delivers_in_two_more_loops(
    system: FakeSystem,
) -> None:
    service = service_of(system, FakeWebhooks())

    assert {BackupFailed, BackupVerificationFailed} <= set(service.handlers)
    assert len(service.loops) == 4


async def test_a_failed_backup_is_recorded_once_per_webhook_that_wants_it_even_when_redelivered(
    system: FakeSystem,
) -> None:
    await set_webhooks(
        system,
        {"url": HOOK},
        {"url": OTHER, "events": ["backup_missing"]},
        {"url": "https://x.example.com/", "enabled": False},
    )
    backup, event = await failed_backup(system)
    service = service_of(system, FakeWebhooks())

    await service.handlers[BackupFailed](event)
    await service.handlers[BackupFailed](event)
    await service.handlers[BackupFailed](event.model_copy(update={"event_id": uuid.uuid4()}))

    (delivery,) = system.catalog.deliveries.values()
    assert (delivery.url, delivery.kind, delivery.attempts) == (HOOK, NotificationKind.BACKUP_FAILED, 0)
    payload = delivery.payload
    assert (payload["event"], payload["delivery_id"]) == ("backup_failed", delivery.id)
    assert payload["occurred_at"] == event.occurred_at.isoformat()
    assert payload["backup"]["id"] == backup.id
    assert (payload["backup"]["type"], payload["backup"]["status"]) == ("full", "failed")
    assert payload["backup"]["error"] == "database part failed: disk full"
    assert payload["backup"]["parts"][0] == {"part": "database", "status": "failed", "error": "disk full"}


async def test_without_a_webhook_nothing_is_recorded(system: FakeSystem) -> None:
    _, event = await failed_backup(system)

    await service_of(system, FakeWebhooks()).handlers[BackupFailed](event)

    assert system.catalog.deliveries == {}


async def test_each_failed_verification_is_recorded_with_its_reason(system: FakeSystem) -> None:
    await set_webhooks(system, {"url": HOOK, "events": ["verification_failed"]})
    backup, _ = await failed_backup(system)
    service = service_of(system, FakeWebhooks())
    first = BackupVerificationFailed(backup_id=uuid.UUID(backup.id), reason="archive_digest: mismatch")
    second = BackupVerificationFailed(backup_id=uuid.UUID(backup.id), reason="restore_drill: failed")

    for event in (first, first, second):
        await service.handlers[BackupVerificationFailed](event)

    payloads = sorted((d.payload for d in system.catalog.deliveries.values()), key=lambda p: p["occurred_at"])
    assert [p["event"] for p in payloads] == ["verification_failed"] * 2
    assert [p["verification"]["error"] for p in payloads] == ["archive_digest: mismatch", "restore_drill: failed"]
    assert payloads[0]["backup"]["id"] == backup.id


# --- delivering -----------------------------------------------------------------------------------


async def test_a_delivery_is_a_signed_json_post_and_a_2xx_marks_it_delivered(system: FakeSystem) -> None:
    await set_webhooks(system, {"url": HOOK})
    _, event = await failed_backup(system)
    webhooks = FakeWebhooks([204])
    await service_of(system, webhooks).handlers[BackupFailed](event)
    sender, registry = notifier(system, webhooks)

    report = await sender.deliver_due()

    (delivery,) = system.catalog.deliveries.values()
    (post,) = webhooks.received
    assert report.delivered == [delivery.id]
    assert post.url == HOOK
    assert json.loads(post.body) == delivery.payload
    assert post.headers["Content-Type"] == "application/json"
    assert (post.headers[EVENT_HEADER], post.headers[DELIVERY_HEADER]) == ("backup_failed", delivery.id)
    assert post.headers[TIMESTAMP_HEADER] == str(NOW)
    assert signature_is_valid(
        SECRET.encode(), post.headers[TIMESTAMP_HEADER], post.body, post.headers[SIGNATURE_HEADER], now=NOW
    )
    assert (delivery.delivered_at, delivery.attempts) == (system.clock(), 1)
    assert sample(registry, "backup_notifications_delivered_total", NotificationKind.BACKUP_FAILED) == 1
    assert await sender.deliver_due() == type(report)()  # nothing left to do
    assert await sender.count_pending() == 0
    assert sample(registry, "backup_notifications_pending") == 0


async def test_a_failed_delivery_is_retried_after_its_delay_and_each_failure_counted(system: FakeSystem) -> None:
    await set_webhooks(system, {"url": HOOK})
    _, event = await failed_backup(system)
    webhooks = FakeWebhooks([500, "cannot connect: Connection refused", 200])
    await service_of(system, webhooks).handlers[BackupFailed](event)
    sender, registry = notifier(system, webhooks)

    first = await sender.deliver_due()
    (delivery,) = system.catalog.deliveries.values()
    assert first.retried == [delivery.id]
    assert (delivery.attempts, delivery.last_error) == (1, "HTTP 500: nope")
    assert await sender.count_pending() == 1
    system.clock.advance(9)
    assert (await sender.deliver_due()).attempted == 0  # not due yet
    system.clock.advance(1)
    await sender.deliver_due()
    assert system.catalog.deliveries[delivery.id].last_error == "cannot connect: Connection refused"
    system.clock.advance(20)
    third = await sender.deliver_due()

    assert third.delivered == [delivery.id]
    assert len(webhooks.received) == 3
    assert len({post.headers[DELIVERY_HEADER] for post in webhooks.received}) == 1
    assert system.catalog.deliveries[delivery.id].attempts == 3
    assert sample(registry, "backup_notification_failures_total", NotificationKind.BACKUP_FAILED) == 2
    assert sample(registry, "backup_notifications_delivered_total", NotificationKind.BACKUP_FAILED) == 1
    assert sample(registry, "backup_notifications_given_up_total", NotificationKind.BACKUP_FAILED) == 0


async def test_a_delivery_failing_every_attempt_is_given_up_with_its_reason(system: FakeSystem) -> None:
    await set_webhooks(system, {"url": HOOK})
    _, event = await failed_backup(system)
    webhooks = FakeWebhooks([503])
    await service_of(system, webhooks).handlers[BackupFailed](event)
    sender, registry = notifier(system, webhooks, attempts=3)

    for _ in range(5):
        await sender.deliver_due()
        system.clock.advance(3600)

    (delivery,) = system.catalog.deliveries.values()
    assert len(webhooks.received) == 3
    assert (delivery.attempts, delivery.given_up_at is not None, delivery.last_error) == (3, True, "HTTP 503: nope")
    assert sample(registry, "backup_notifications_given_up_total", NotificationKind.BACKUP_FAILED) == 1
    assert sample(registry, "backup_notification_failures_total", NotificationKind.BACKUP_FAILED) == 3
    assert await sender.count_pending() == 0


async def test_what_a_webhook_removed_or_disabled_since_had_coming_is_dropped_unsent(system: FakeSystem) -> None:
    await set_webhooks(system, {"url": HOOK}, {"url": OTHER})
    _, event = await failed_backup(system)
    webhooks = FakeWebhooks()
    await service_of(system, webhooks).handlers[BackupFailed](event)
    await set_webhooks(system, {"url": OTHER, "enabled": False})
    sender, registry = notifier(system, webhooks)

    report = await sender.deliver_due()

    assert len(report.dropped) == 2
    assert webhooks.received == []
    assert {d.last_error for d in system.catalog.deliveries.values()} == {DROPPED}
    assert all(d.given_up_at is not None and d.attempts == 0 for d in system.catalog.deliveries.values())
    assert sample(registry, "backup_notifications_given_up_total", NotificationKind.BACKUP_FAILED) == 0
    assert sample(registry, "backup_notification_failures_total", NotificationKind.BACKUP_FAILED) == 0


async def test_nothing_is_sent_unsigned_when_no_secret_is_set(system: FakeSystem) -> None:
    await set_webhooks(system, {"url": HOOK})
    _, event = await failed_backup(system)
    webhooks = FakeWebhooks()
    await service_of(system, webhooks).handlers[BackupFailed](event)
    sender, registry = notifier(system, webhooks, secret=None)

    await sender.deliver_due()

    (delivery,) = system.catalog.deliveries.values()
    assert webhooks.received == []
    assert delivery.last_error == NO_SECRET
    assert sample(registry, "backup_notification_failures_total", NotificationKind.BACKUP_FAILED) == 1


async def test_two_replicas_passing_at_once_post_each_delivery_once(system: FakeSystem) -> None:
    await set_webhooks(system, {"url": HOOK}, {"url": OTHER})
    _, event = await failed_backup(system)
    webhooks = FakeWebhooks()
    await service_of(system, webhooks).handlers[BackupFailed](event)
    first, _ = notifier(system, webhooks)
    second, _ = notifier(system, webhooks)

    async with system.ports.uow() as holding:
        held = await holding.notifications.due(system.clock(), 1)  # one replica is in its pass
        report = await second.deliver_due()
    assert [delivery.id for delivery in held] != report.delivered
    assert len(report.delivered) == 1
    late = await first.deliver_due()

    assert len(late.delivered) == 1
    assert sorted(post.url for post in webhooks.received) == sorted([HOOK, OTHER])


# --- missing backups ------------------------------------------------------------------------------


HOURLY = ScheduleEntry(name="hourly", type=BackupType.DATABASE, cron="0 * * * *")


async def scheduled(system: FakeSystem, *entries: ScheduleEntry) -> Scheduler:
    document = ScheduleDocument(timezone="UTC", schedules=list(entries)).model_dump(mode="json")
    await gateway.replace_document(system.ports, "schedule", document, updated_by="alice")
    system.clock.now = system.clock.now.replace(hour=0, minute=59)
    scheduler = Scheduler(system.ports, RetentionMetrics(CollectorRegistry()), catch_up=timedelta(hours=1))
    await scheduler.run_due()  # the entries' cursors start here
    return scheduler


async def minutes_pass(system: FakeSystem, scheduler: Scheduler, sender: Notifier, minutes: int) -> list[Any]:
    """The scheduler and the look for missing backups every minute, as the service runs them."""
    found = []
    for _ in range(minutes):
        system.clock.advance(60)
        await scheduler.run_due()
        found += await sender.find_missing()
    return found


def complete(system: FakeSystem, backup_id: str | None) -> None:
    backup = system.catalog.backups[backup_id or ""]
    for part in backup.parts:
        backup.start_part(part.part, 1, system.clock())
        backup.complete_part(part.part, PartResult("database.zip", 1, "0" * 64, 1, {}), system.clock())


def test_a_backup_is_missing_once_the_delay_passed_without_a_success_made_since_its_fire_time() -> None:
    fire_at = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
    hour = timedelta(hours=1)

    assert not backup_is_missing(fire_at, None, fire_at + timedelta(minutes=59), hour)
    assert backup_is_missing(fire_at, None, fire_at + hour, hour)
    assert backup_is_missing(fire_at, fire_at - timedelta(days=1), fire_at + hour, hour)
    assert not backup_is_missing(fire_at, fire_at + timedelta(seconds=1), fire_at + hour, hour)
    assert not backup_is_missing(fire_at, fire_at, fire_at + 2 * hour, hour)


async def test_a_scheduled_backup_not_made_is_reported_once_per_fire_time(system: FakeSystem) -> None:
    await set_webhooks(system, {"url": HOOK, "events": ["backup_missing"]}, missing_after_minutes=30)
    scheduler = await scheduled(system, HOURLY)
    sender, _ = notifier(system, FakeWebhooks())

    early = await minutes_pass(system, scheduler, sender, 30)  # 01:00 fired (pending forever), now 01:29
    reported = await minutes_pass(system, scheduler, sender, 90)  # to 02:59

    assert early == []
    assert [(m.schedule, f"{m.expected_at:%H:%M}") for m in reported] == [("hourly", "01:00"), ("hourly", "02:00")]
    assert [f"{m.expected_at + m.missing_after:%H:%M}" for m in reported] == ["01:30", "02:30"]
    payloads = sorted((d.payload for d in system.catalog.deliveries.values()), key=lambda p: p["occurred_at"])
    assert [p["event"] for p in payloads] == ["backup_missing", "backup_missing"]
    assert payloads[0]["schedule"] == {
        "name": "hourly",
        "type": "database",
        "cron": "0 * * * *",
        "timezone": "UTC",
        "expected_at": reported[0].expected_at.isoformat(),
        "missing_after_minutes": 30,
        "last_backup": None,
    }
    assert payloads[0]["occurred_at"] == (reported[0].expected_at + timedelta(minutes=30)).isoformat()
    reports = {key: f.missing_reported_at for key, f in system.catalog.firings.items() if f.missing_reported_at}
    assert len(reports) == 2


async def test_a_backup_completed_in_time_is_not_missing_and_a_late_one_is_reported(system: FakeSystem) -> None:
    await set_webhooks(system, {"url": HOOK}, missing_after_minutes=30)
    scheduler = await scheduled(system, HOURLY)
    sender, _ = notifier(system, FakeWebhooks())
    await minutes_pass(system, scheduler, sender, 2)  # 01:00 fired
    (fired,) = [f for f in system.catalog.firings.values() if f.outcome is FiringOutcome.FIRED]
    complete(system, fired.backup_id)

    assert await minutes_pass(system, scheduler, sender, 88) == []  # 02:00 fired too, still running at 02:30
    (late,) = await minutes_pass(system, scheduler, sender, 10)

    assert f"{late.expected_at:%H:%M}" == "02:00"
    assert late.last_success is not None
    assert late.last_success.id == fired.backup_id
    (delivery,) = system.catalog.deliveries.values()
    assert delivery.payload["schedule"]["last_backup"]["id"] == fired.backup_id


async def test_two_replicas_report_a_missing_backup_once(system: FakeSystem) -> None:
    await set_webhooks(system, {"url": HOOK}, {"url": OTHER, "events": ["backup_missing"]}, missing_after_minutes=30)
    scheduler = await scheduled(system, HOURLY)
    first, _ = notifier(system, FakeWebhooks())
    second, _ = notifier(system, FakeWebhooks())
    await minutes_pass(system, scheduler, first, 35)

    assert await second.find_missing() == []
    assert sorted(d.url for d in system.catalog.deliveries.values()) == sorted([HOOK, OTHER])


async def test_disabled_entries_and_settings_without_a_missing_webhook_report_nothing(system: FakeSystem) -> None:
    await set_webhooks(system, {"url": HOOK, "events": ["backup_failed"]}, missing_after_minutes=30)
    scheduler = await scheduled(system, HOURLY)
    sender, _ = notifier(system, FakeWebhooks())

    assert await minutes_pass(system, scheduler, sender, 40) == []
    assert all(f.missing_reported_at is None for f in system.catalog.firings.values())

    await set_webhooks(system, {"url": HOOK}, missing_after_minutes=30)
    document = ScheduleDocument(timezone="UTC", schedules=[HOURLY.model_copy(update={"enabled": False})])
    await gateway.replace_document(system.ports, "schedule", document.model_dump(mode="json"), updated_by="alice")
    assert await sender.find_missing() == []

    await gateway.replace_document(
        system.ports, "schedule", ScheduleDocument(schedules=[HOURLY]).model_dump(mode="json"), updated_by="alice"
    )
    (still,) = await sender.find_missing()  # a webhook added later hears of the backup still missing
    assert f"{still.expected_at:%H:%M}" == "01:00"


async def test_a_new_entry_is_not_missing_a_backup_from_before_it_existed(system: FakeSystem) -> None:
    await set_webhooks(system, {"url": HOOK}, missing_after_minutes=30)
    scheduler = await scheduled(system)
    sender, _ = notifier(system, FakeWebhooks())
    system.clock.advance(3 * 3600)
    await gateway.replace_document(
        system.ports, "schedule", ScheduleDocument(schedules=[HOURLY]).model_dump(mode="json"), updated_by="alice"
    )

    assert await minutes_pass(system, scheduler, sender, 40) == []  # to 04:39: it fires from 04:00 on, exclusive
    (missing,) = await minutes_pass(system, scheduler, sender, 52)  # to 05:31

    assert f"{missing.expected_at:%H:%M}" == "05:00"
    assert [b.status for b in system.catalog.backups.values()] == [BackupStatus.PENDING]
