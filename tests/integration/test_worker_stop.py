"""Stopping a database_backup worker mid-dump, and losing its source connection: the part is handed
back and finished by another attempt, never failed for a reason that is not the real one."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncmy.errors
import pytest

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.source import AsyncmySqlServer
from backup_common.adapters.runtime.service import worker_app
from backup_common.adapters.settings import Settings
from backup_common.engine.database.sql import Row, SqlConnection
from backup_common.engine.database.target import MysqlTarget
from backup_database import bootstrap as database_backup
from tests.integration.gateway_support import (
    Gateway,
    running_apps,
    running_gateway,
    running_workers,
    source_url,
    system_overrides,
    wait_finished,
)
from tests.integration.source_db import connect, numbers, rows, run, run_on
from tests.integration.tcp_proxy import tcp_proxy

pytestmark = pytest.mark.integration

API = "/api/admin/backup"
ROWS = 300_000
# Generous: a worker stops in about a second; this only bounds a hung one.
STOP_TIMEOUT_SECONDS = 60


async def build_big_source(url: str, *, tables: int = 1) -> MysqlTarget:
    """A source database of ROWS rows (about 50 MB of SQL) in one table made in one statement, or
    split into ``tables`` tables ``events_N``."""
    target = MysqlTarget(url)
    await db.drop_database(target)
    await db.ensure_database(target)
    await run_on(
        target,
        "CREATE TABLE events (id BIGINT NOT NULL PRIMARY KEY, k INT NOT NULL, payload VARCHAR(200) NOT NULL)",
        f"""
INSERT INTO events (id, k, payload)
{numbers(ROWS)}
SELECT n, n % 1000, CONCAT(MD5(n), SHA2(n, 256), MD5(n + 1), SHA1(n)) FROM numbers
""",
    )
    if tables > 1:
        await run_on(
            target,
            *(
                f"CREATE TABLE events_{n} (PRIMARY KEY (id)) SELECT * FROM events WHERE id % {tables} = {n}"
                for n in range(tables)
            ),
            "DROP TABLE events",
        )
    return target


@pytest.fixture
async def big_source(settings: Settings) -> AsyncIterator[str]:
    url = source_url(settings)
    target = await build_big_source(url)
    try:
        yield url
    finally:
        await db.drop_database(target)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def worker_process(
    settings: Settings, log_file: Path, *, source_url: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m backup_database`` on the gateway's catalog, broker names and storage, dumping
    ``source_url`` and logging to ``log_file`` (a pipe nobody reads would fill and stall it).
    Killed at the end if still running."""
    assert settings.master_key is not None
    env = os.environ | {
        "BACKUP_MYSQL_URL": settings.mysql_url.get_secret_value(),
        "BACKUP_AMQP_URL": settings.amqp_url.get_secret_value(),
        "BACKUP_AMQP_EXCHANGE": settings.amqp_exchange,
        "BACKUP_AMQP_QUEUE_PREFIX": settings.amqp_queue_prefix,
        "BACKUP_SOURCE_MYSQL_URL": source_url,
        "BACKUP_STORAGE_DIR": str(settings.storage_dir),
        "BACKUP_MASTER_KEY": settings.master_key.get_secret_value(),
        "BACKUP_WORKER_HOST": "127.0.0.1",
        "BACKUP_DATABASE_BACKUP_PORT": str(free_port()),
        "BACKUP_LEASE_SECONDS": str(int(settings.lease_seconds)),
    }
    with log_file.open("wb") as log:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "backup_database", env=env, stdout=log, stderr=log
        )
        try:
            yield child
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()


# The pace of a throttled source's replies: the 50 MB dump then lasts several seconds, so its
# progress is surely seen before it ends, however fast the machine.
THROTTLE_BYTES_PER_SECOND = 8 * 1024 * 1024


@asynccontextmanager
async def throttled(url: str) -> AsyncIterator[str]:
    """``url`` reached through a proxy that passes the server's replies at THROTTLE_BYTES_PER_SECOND."""
    parts = urlsplit(url)
    upstream = (parts.hostname or "127.0.0.1", parts.port or 3306)
    async with tcp_proxy(*upstream, reply_bytes_per_second=THROTTLE_BYTES_PER_SECOND) as port:
        credentials = parts.netloc.rpartition("@")[0]
        yield urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}"))


async def until(check: Callable[[], Awaitable[Any]], *, seconds: float = 120) -> Any:
    """The first truthy result of ``check``, polled."""
    async with asyncio.timeout(seconds):
        while True:
            if result := await check():
                return result
            await asyncio.sleep(0.1)


async def backup_of(gateway: Gateway, backup_id: str) -> dict[str, Any]:
    status, body = await gateway.call("GET", f"{API}/{backup_id}")
    assert status == 200, body
    backup: dict[str, Any] = body["backup"]
    return backup


async def dumping_with_progress(gateway: Gateway, backup_id: str) -> bool:
    backup = await backup_of(gateway, backup_id)
    assert backup["status"] not in ("completed", "failed"), backup
    [part] = backup["parts"]
    return bool(part["status"] == "running" and (part["progress"] or {}).get("rows_done", 0) > 0)


async def lease_row(gateway: Gateway, backup_id: str) -> dict[str, Any]:
    [row] = await gateway.rows(
        "SELECT state, attempts, last_error FROM job_leases WHERE job_key = %s", (f"backup:{backup_id}:database",)
    )
    return row


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.startswith("."))


async def test_a_worker_stopped_mid_dump_hands_its_part_back_and_another_worker_completes_it(
    settings: Settings, big_source: str, tmp_path: Path
) -> None:
    overrides = system_overrides(big_source, tmp_path) | {"lease_seconds": 5}
    async with running_gateway(settings, **overrides) as gateway:
        log_file = tmp_path / "first-worker.log"
        async with (
            throttled(big_source) as slow_source,
            worker_process(gateway.settings, log_file, source_url=slow_source) as first,
        ):
            created = await gateway.create("database")
            await until(lambda: dumping_with_progress(gateway, created["id"]))
            first.send_signal(signal.SIGTERM)
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                await first.wait()
        log = log_file.read_text(errors="replace")
        assert first.returncode == 0, log
        lease = await lease_row(gateway, created["id"])
        assert lease["state"] == "released", (lease, log)
        assert (await backup_of(gateway, created["id"]))["status"] == "running", log

        async with running_workers(gateway, "database_backup"):
            backup = await wait_finished(gateway, created["id"])
        assert backup["status"] == "completed", backup["error"]
        [part] = backup["parts"]
        assert part["attempts"] == 2
        assert part["item_count"] == ROWS
        directory = gateway.settings.storage_dir / backup["storage_path"]
        assert sorted(path.name for path in directory.glob("*.zip")) == ["database.zip"]
        assert leftovers(directory) == []


# A pause after each batch a reader streams: the dump of ROWS rows then lasts several seconds, so its
# sessions are surely still reading when the test kills them.
BATCH_PAUSE_SECONDS = 0.05


class SlowStreams:
    """A source connection whose streams pause after each batch; everything else as it is."""

    def __init__(self, conn: SqlConnection) -> None:
        self._conn = conn

    async def execute(self, sql: str | bytes, args: Sequence[Any] | None = None) -> int:
        return await self._conn.execute(sql, args)

    async def fetch_one(self, sql: str, args: Sequence[Any] | None = None) -> dict[str, Any] | None:
        return await self._conn.fetch_one(sql, args)

    async def fetch_all(self, sql: str, args: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        return await self._conn.fetch_all(sql, args)

    async def stream(self, sql: str, batch_rows: int) -> AsyncIterator[Sequence[Row]]:
        async with aclosing(self._conn.stream(sql, batch_rows)) as batches:  # type: ignore[type-var]
            async for rows in batches:
                yield rows
                await asyncio.sleep(BATCH_PAUSE_SECONDS)

    async def commit(self) -> None:
        await self._conn.commit()

    async def rollback(self) -> None:
        await self._conn.rollback()

    def close(self) -> None:
        self._conn.close()


class SlowSource:
    def __init__(self, target: MysqlTarget) -> None:
        self._server = AsyncmySqlServer(target)
        self.target = target

    async def connect(self, database: str | None = None) -> SqlConnection:
        return SlowStreams(await self._server.connect(database))


async def source_session_of(database: str, admin: Any) -> list[int]:
    """The ids of the sessions on ``database``: the dump's (its readers, streaming or between two
    queries, and its control connection)."""
    found = await rows(
        admin,
        "SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
        (database,),
    )
    return [int(row["id"]) for row in found]


@pytest.fixture
async def split_source(settings: Settings) -> AsyncIterator[str]:
    """ROWS rows in 24 tables: each dump reader runs a query per table, so a killed session is
    noticed at its next query even when the driver had already received the whole current result."""
    url = source_url(settings)
    target = await build_big_source(url, tables=24)
    try:
        yield url
    finally:
        await db.drop_database(target)


async def test_a_dump_whose_source_connection_is_killed_is_retried_and_completes(
    settings: Settings, split_source: str, tmp_path: Path
) -> None:
    source = MysqlTarget(split_source)
    overrides = system_overrides(split_source, tmp_path) | {"lease_seconds": 5}
    async with running_gateway(settings, **overrides) as gateway:
        bootstrap = functools.partial(database_backup.bootstrap, source=SlowSource(source))
        async with running_apps(
            [(database_backup.NAME, worker_app(gateway.settings, database_backup.NAME, bootstrap))]
        ):
            created = await gateway.create("database")
            await until(lambda: dumping_with_progress(gateway, created["id"]))
            admin = await connect(source, database=False)
            try:
                sessions = await until(lambda: source_session_of(source.database, admin))
                for session in sessions:
                    # One of the dump's connections may have ended since it was listed (1094: unknown thread).
                    with contextlib.suppress(asyncmy.errors.OperationalError):
                        await run(admin, f"KILL {session}")
            finally:
                await admin.ensure_closed()
            backup = await wait_finished(gateway, created["id"])
        assert backup["status"] == "completed", backup["error"]
        [part] = backup["parts"]
        assert part["attempts"] == 2
        assert part["item_count"] == ROWS
        assert leftovers(gateway.settings.storage_dir / backup["storage_path"]) == []
