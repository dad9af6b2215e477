"""Catalog schema migrations and the outbox relay against a real MariaDB."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from backup_common.adapters.mysql import db, migrations
from backup_common.adapters.mysql.leases import LeaseStore
from backup_common.adapters.mysql.outbox import OutboxRelay, RetryPolicy, add_to_outbox, parked_events, retry_parked
from backup_common.adapters.mysql.uow import MysqlUnitOfWork
from backup_common.adapters.settings import Settings
from backup_common.cli import main as backupctl
from backup_common.domain.events import BackupDeleted, BackupPart, BackupType, DeleteRequested, Event
from backup_common.domain.model import Backup, BackupFilter, PartResult, PartWarning
from backup_common.domain.ports import EventRefused, PublishError, StoredDocument
from backup_common.engine.database.target import MysqlTarget

pytestmark = pytest.mark.integration


@pytest.fixture
async def fresh_catalog(settings: Settings) -> AsyncIterator[MysqlTarget]:
    """A catalog database name that does not exist yet; dropped afterwards."""
    url = settings.mysql_url.get_secret_value().rsplit("/", 1)[0] + f"/backup_mig_{secrets.token_hex(4)}"
    target = MysqlTarget(url)
    yield target
    await db.drop_database(target)


async def test_services_starting_together_create_and_migrate_the_catalog_once(fresh_catalog: MysqlTarget) -> None:
    results = await asyncio.gather(*(migrations.migrate(fresh_catalog) for _ in range(5)))
    everything = len(migrations.load_migrations())
    assert sorted(len(applied) for applied in results) == [0, 0, 0, 0, everything]
    pool = await db.create_pool(fresh_catalog)
    try:
        async with db.transaction(pool) as conn:
            versions = await db.fetch_all(conn, "SELECT version FROM schema_migrations")
            listed = await db.fetch_all(
                conn, "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE()"
            )
            tables = {row["t"] for row in listed}
    finally:
        await db.close_pool(pool)
    assert [row["version"] for row in versions] == list(range(1, everything + 1))
    assert {"backups", "backup_parts", "restores", "schedules", "settings", "audit_log", "outbox",
            "processed_messages", "job_leases", "data_keys"} <= tables  # fmt: skip
    assert await migrations.migrate(fresh_catalog) == []


async def test_a_migration_changed_after_it_was_applied_is_refused(fresh_catalog: MysqlTarget) -> None:
    loaded = migrations.load_migrations()
    await migrations.migrate(fresh_catalog, loaded)
    edited = [migrations.Migration(m.version, m.name, m.sql + "\n-- edited\n") for m in loaded]
    with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
        await migrations.migrate(fresh_catalog, edited)


async def test_a_migration_whose_run_stopped_before_it_was_recorded_is_finished_by_the_next(
    fresh_catalog: MysqlTarget,
) -> None:
    await migrations.migrate(fresh_catalog)
    pool = await db.create_pool(fresh_catalog)
    try:
        async with db.transaction(pool) as conn:
            # As if the process died between the ALTER TABLE (DDL commits at once) and its record.
            await db.execute(conn, "DELETE FROM schema_migrations WHERE version = 2")

        assert await migrations.migrate(fresh_catalog) == ["0002_outbox_retries.sql"]
        async with db.transaction(pool) as conn:
            columns = await db.fetch_all(conn, "SHOW COLUMNS FROM outbox LIKE 'parked_at'")
    finally:
        await db.close_pool(pool)
    assert len(columns) == 1


class RecordingPublisher:
    """A broker that takes every event, or none while ``fail`` (unreachable), and refuses those of the
    routing keys in ``unbound``, as RabbitMQ refuses a mandatory message no queue is bound for."""

    def __init__(self, *, fail: bool = False, unbound: set[str] | None = None) -> None:
        self.events: list[Event] = []
        self.refused: list[Event] = []
        self.fail = fail
        self.unbound = unbound or set()
        self.published = asyncio.Event()

    async def publish(self, event: Event) -> None:
        await asyncio.sleep(0.001)
        if self.fail:
            raise PublishError("broker unreachable")
        if event.routing_key in self.unbound:
            self.refused.append(event)
            raise EventRefused(f"no queue is bound to routing key {event.routing_key!r}")
        self.events.append(event)
        self.published.set()


async def write_events(pool: db.Pool, count: int, *, requests: bool = False) -> list[str]:
    """Writes ``count`` announcements (BackupDeleted), or requests (DeleteRequested), to the outbox."""
    ids = []
    async with db.transaction(pool) as conn:
        for _ in range(count):
            backup_id = uuid.uuid4()
            event: Event = (
                DeleteRequested(backup_id=backup_id, requested_by="alice")
                if requests
                else BackupDeleted(backup_id=backup_id)
            )
            await add_to_outbox(conn, event)
            ids.append(str(event.event_id))
    return ids


async def unsent(pool: db.Pool, ids: list[str]) -> list[dict[str, object]]:
    async with db.transaction(pool) as conn:
        return await db.fetch_all(
            conn,
            f"SELECT event_id, attempts, last_error FROM outbox WHERE sent_at IS NULL"
            f" AND event_id IN ({', '.join(['%s'] * len(ids))})",
            ids,
        )


async def test_two_relays_publish_each_outbox_row_exactly_once(catalog_pool: db.Pool) -> None:
    ids = await write_events(catalog_pool, 120)
    first, second = RecordingPublisher(), RecordingPublisher()
    relays = [OutboxRelay(catalog_pool, batch_size=10), OutboxRelay(catalog_pool, batch_size=10)]
    for _ in range(20):
        await asyncio.gather(relays[0].relay_once(first), relays[1].relay_once(second))
    published = [str(e.event_id) for e in first.events + second.events if str(e.event_id) in ids]
    assert sorted(published) == sorted(ids)
    assert await unsent(catalog_pool, ids) == []


async def test_an_event_the_broker_did_not_confirm_stays_in_the_outbox_with_the_reason(catalog_pool: db.Pool) -> None:
    ids = await write_events(catalog_pool, 1)
    relay = OutboxRelay(catalog_pool)
    result = await relay.relay_once(RecordingPublisher(fail=True))
    assert result.unavailable >= 1
    [row] = await unsent(catalog_pool, ids)
    assert row["attempts"] == 1
    assert "broker unreachable" in str(row["last_error"])
    working = RecordingPublisher()
    while (await relay.relay_once(working)).sent:
        pass
    assert ids[0] in {str(e.event_id) for e in working.events}
    assert await unsent(catalog_pool, ids) == []


async def test_an_outbox_row_is_published_only_if_its_transaction_commits(catalog_pool: db.Pool) -> None:
    event = BackupDeleted(backup_id=uuid.uuid4())

    async def fail_after_writing() -> None:
        async with db.transaction(catalog_pool) as conn:
            await add_to_outbox(conn, event)
            raise RuntimeError("the state change failed")

    with pytest.raises(RuntimeError):
        await fail_after_writing()
    async with db.transaction(catalog_pool) as conn:
        rows = await db.fetch_all(conn, "SELECT id FROM outbox WHERE event_id = %s", (str(event.event_id),))
    assert rows == []


async def test_services_reading_the_settings_at_once_all_get_the_seeded_defaults(fresh_catalog: MysqlTarget) -> None:
    await migrations.migrate(fresh_catalog)
    pool = await db.create_pool(fresh_catalog, minsize=10, maxsize=10)
    try:
        for name in ("settings", "schedule", "settings", "schedule"):
            async with db.transaction(pool) as conn:
                await db.execute(conn, "DELETE FROM settings")
            # Several readers find no document at once, and all but one must see the one seeded.
            documents = await asyncio.gather(*(read_document(pool, name) for _ in range(10)))
            assert {document.revision for document in documents} == {1}
            assert all(document.document == documents[0].document for document in documents)
    finally:
        await db.close_pool(pool)


async def read_document(pool: db.Pool, name: str) -> StoredDocument:
    async with MysqlUnitOfWork(pool, LeaseStore(pool, 60)) as uow:
        stored = await uow.documents.get(name)
        await uow.commit()
    return stored


async def test_a_parts_warnings_and_their_count_are_written_and_read_back(catalog_pool: db.Pool) -> None:
    now = datetime.now(UTC)
    backup = Backup.request(BackupType.FULL, requested_by="alice", now=now)
    for part in BackupType.FULL.parts:
        backup.start_part(part, 1, now)
    warnings = (
        PartWarning("uploads/run/app.sock", "socket"),
        PartWarning("uploads/zoë ✓/queue", "fifo"),
        PartWarning("uploads/caf\\xe9.txt", "unreadable: Permission denied"),
    )
    backup.complete_part(BackupPart.DATABASE, PartResult("database.zip", 10, "0" * 64, 1, {}), now)
    backup.complete_part(BackupPart.FILES, PartResult("files.zip", 20, "1" * 64, 4, {}, warnings), now)
    backup.events.clear()  # the rows are what this test reads, not the outbox
    try:
        async with MysqlUnitOfWork(catalog_pool, LeaseStore(catalog_pool, 60)) as uow:
            await uow.backups.add(backup)
            await uow.backups.save(backup)
            await uow.commit()
        async with MysqlUnitOfWork(catalog_pool, LeaseStore(catalog_pool, 60)) as uow:
            page, _ = await uow.backups.list(BackupFilter(limit=500))
            [listed] = [found for found in page if found.id == backup.id]
            # Saved as listed, without its warnings: those stored stay.
            await uow.backups.save(listed)
            await uow.commit()
        async with MysqlUnitOfWork(catalog_pool, LeaseStore(catalog_pool, 60)) as uow:
            read = await uow.backups.get(backup.id)
    finally:
        async with db.transaction(catalog_pool) as conn:
            await db.execute(conn, "DELETE FROM backups WHERE id = %s", (backup.id,))

    assert read is not None
    assert (read.part(BackupPart.FILES).warnings, read.part(BackupPart.FILES).warning_count) == (list(warnings), 3)
    assert (read.part(BackupPart.DATABASE).warnings, read.part(BackupPart.DATABASE).warning_count) == ([], 0)
    # A page of backups carries the counts only: up to a thousand paths a part stay out of it.
    assert [(part.warnings, part.warning_count) for part in listed.parts] == [([], 0), ([], 3)]


class BrokerThatWaits:
    """A publisher that does not confirm until released, as a broker that has stopped answering."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()
        self.events: list[Event] = []

    async def publish(self, event: Event) -> None:
        self.waiting.set()
        await self.release.wait()
        self.events.append(event)


async def test_new_events_are_queued_while_the_relay_waits_for_the_broker(catalog_pool: db.Pool) -> None:
    # The relay holds its rows' locks until the broker answers (up to its publish timeout). Under
    # REPEATABLE READ its range scan would also lock the gap new rows go into, and every request
    # writing an event would wait for the broker too, or fail on the lock wait timeout.
    first = await write_events(catalog_pool, 1)
    broker = BrokerThatWaits()
    relaying = asyncio.create_task(OutboxRelay(catalog_pool).relay_once(broker))
    try:
        await broker.waiting.wait()
        second = await write_events(catalog_pool, 1)
        assert {row["event_id"] for row in await unsent(catalog_pool, first + second)} == {*first, *second}
    finally:
        broker.release.set()
        await relaying
    assert first[0] in {str(e.event_id) for e in broker.events}
    while (await OutboxRelay(catalog_pool).relay_once(RecordingPublisher())).sent:
        pass
    assert await unsent(catalog_pool, first + second) == []


async def outbox_rows(pool: db.Pool, ids: list[str]) -> list[dict[str, object]]:
    async with db.transaction(pool) as conn:
        return await db.fetch_all(
            conn,
            f"SELECT event_id, attempts, sent_at, parked_at, last_error FROM outbox"
            f" WHERE event_id IN ({', '.join(['%s'] * len(ids))})",
            ids,
        )


async def drain(relay: OutboxRelay, broker: RecordingPublisher) -> int:
    """Runs relay passes back to back, as ``run`` does while passes fill their batch; returns how many."""
    passes = 1
    while (await relay.relay_once(broker)).batch_full:
        passes += 1
    return passes


async def test_an_event_written_after_hundreds_the_broker_refuses_is_sent_before_any_is_retried(
    catalog_pool: db.Pool,
) -> None:
    # Reproduces the starvation of the first relay: it took the 100 oldest unsent rows, all refused,
    # again and again, and backed off, so nothing written after them was ever published.
    refused = await write_events(catalog_pool, 300, requests=True)
    [good] = await write_events(catalog_pool, 1)
    broker = RecordingPublisher(unbound={DeleteRequested.routing_key})
    relay = OutboxRelay(catalog_pool, batch_size=100)

    await drain(relay, broker)

    assert good in {str(event.event_id) for event in broker.events}
    # Each refused row was tried once and waits for its retry; none was tried twice before the good one went.
    rows = await outbox_rows(catalog_pool, refused)
    assert {row["attempts"] for row in rows} == {1}
    assert all(row["sent_at"] is None and row["parked_at"] is None for row in rows)
    assert len(broker.refused) == 300


async def test_a_refused_event_is_retried_later_then_parked_with_its_reason_and_sent_again_on_request(
    catalog_pool: db.Pool,
) -> None:
    [refused] = await write_events(catalog_pool, 1, requests=True)
    broker = RecordingPublisher(unbound={DeleteRequested.routing_key})
    relay = OutboxRelay(catalog_pool, retry=RetryPolicy(max_attempts=3, first_delay=0.0, max_delay=0.0))

    for expected_attempts in (1, 2):
        await drain(relay, broker)
        [row] = await outbox_rows(catalog_pool, [refused])
        assert row["attempts"] == expected_attempts
        assert row["parked_at"] is None
    await drain(relay, broker)

    [row] = await outbox_rows(catalog_pool, [refused])
    assert row["parked_at"] is not None
    assert "no queue is bound to routing key 'backup.delete.requested'" in str(row["last_error"])
    assert refused in {event.event_id for event in await parked_events(catalog_pool)}
    await drain(relay, broker)
    assert len([e for e in broker.refused if str(e.event_id) == refused]) == 3

    assert await retry_parked(catalog_pool) >= 1
    broker.unbound.clear()
    await drain(relay, broker)
    [row] = await outbox_rows(catalog_pool, [refused])
    assert row["sent_at"] is not None
    assert refused in {str(event.event_id) for event in broker.events}


async def test_a_broker_that_is_down_parks_nothing(catalog_pool: db.Pool) -> None:
    ids = await write_events(catalog_pool, 1)
    relay = OutboxRelay(catalog_pool, retry=RetryPolicy(max_attempts=1))

    for _ in range(3):
        await relay.relay_once(RecordingPublisher(fail=True))

    [row] = await outbox_rows(catalog_pool, ids)
    assert row["attempts"] == 3
    assert row["parked_at"] is None
    while (await relay.relay_once(RecordingPublisher())).sent:
        pass
    [row] = await outbox_rows(catalog_pool, ids)
    assert row["sent_at"] is not None


async def test_waking_the_relay_cuts_its_wait_short(catalog_pool: db.Pool) -> None:
    relay = OutboxRelay(catalog_pool, poll_seconds=3600)
    broker = RecordingPublisher()
    running = asyncio.create_task(relay.run(broker))
    try:
        await asyncio.sleep(0.2)  # the first pass is done; the relay waits for its next poll, an hour away
        [event_id] = await write_events(catalog_pool, 1)
        relay.wake()
        async with asyncio.timeout(30):
            while True:
                broker.published.clear()
                if event_id in {str(event.event_id) for event in broker.events}:
                    break
                await broker.published.wait()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_backupctl_outbox_lists_parked_events_with_their_reason_and_makes_them_due_again(
    settings: Settings,
    catalog_pool: db.Pool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    [refused] = await write_events(catalog_pool, 1, requests=True)
    relay = OutboxRelay(catalog_pool, retry=RetryPolicy(max_attempts=1))
    await drain(relay, RecordingPublisher(unbound={DeleteRequested.routing_key}))
    monkeypatch.setenv("BACKUP_MYSQL_URL", settings.mysql_url.get_secret_value())

    # In a thread: the command runs its own event loop.
    assert await asyncio.to_thread(backupctl, ["outbox"]) == 0
    listed = capsys.readouterr().out
    assert await asyncio.to_thread(backupctl, ["outbox", "retry"]) == 0
    retried = capsys.readouterr().out

    assert f"DeleteRequested {refused} (backup.delete.requested, 1 attempts)" in listed
    assert "no queue is bound to routing key 'backup.delete.requested'" in listed
    assert "parked events are due again" in retried
    [row] = await outbox_rows(catalog_pool, [refused])
    assert (row["parked_at"], row["attempts"]) == (None, 0)
