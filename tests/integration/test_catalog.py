"""Catalog schema migrations and the outbox relay against a real MariaDB."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator

import pytest

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.catalog import Catalog
from backup_common.adapters.mysql.outbox import OutboxRelay, add_to_outbox
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupDeleted, Event
from backup_common.domain.ports import PublishError
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
    results = await asyncio.gather(*(db.migrate(fresh_catalog) for _ in range(5)))
    assert sorted(len(applied) for applied in results) == [0, 0, 0, 0, 1]
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
    assert versions == [{"version": 1}]
    assert {"backups", "backup_parts", "restores", "schedules", "settings", "audit_log", "outbox",
            "processed_messages", "job_leases", "data_keys"} <= tables  # fmt: skip
    assert await db.migrate(fresh_catalog) == []


async def test_a_migration_changed_after_it_was_applied_is_refused(fresh_catalog: MysqlTarget) -> None:
    migrations = db.load_migrations()
    await db.migrate(fresh_catalog, migrations)
    edited = [db.Migration(m.version, m.name, m.sql + "\n-- edited\n") for m in migrations]
    with pytest.raises(db.MigrationError, match="changed after it was applied"):
        await db.migrate(fresh_catalog, edited)


class RecordingPublisher:
    def __init__(self, *, fail: bool = False) -> None:
        self.events: list[Event] = []
        self.fail = fail

    async def publish(self, event: Event) -> None:
        await asyncio.sleep(0.001)
        if self.fail:
            raise PublishError("broker unreachable")
        self.events.append(event)


async def write_events(pool: db.Pool, count: int) -> list[str]:
    ids = []
    async with db.transaction(pool) as conn:
        for _ in range(count):
            event = BackupDeleted(backup_id=uuid.uuid4())
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
    assert result.failed >= 1
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
    await db.migrate(fresh_catalog)
    pool = await db.create_pool(fresh_catalog, minsize=10, maxsize=10)
    try:
        for name in ("settings", "schedule", "settings", "schedule"):
            async with db.transaction(pool) as conn:
                await db.execute(conn, "DELETE FROM settings")
            # Several readers find no document at once, and all but one must see the one seeded.
            documents = await asyncio.gather(*(Catalog(pool).get_document(name) for _ in range(10)))
            assert {document["revision"] for document in documents} == {1}
            assert all(document["document"] == documents[0]["document"] for document in documents)
    finally:
        await db.close_pool(pool)


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
