"""Fixtures shared by the integration and end-to-end tests (unit tests use none of them)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from backup_common.adapters.mysql import db, migrations
from backup_common.adapters.settings import Settings
from tests.services import ServiceEndpoints, test_servers


@pytest.fixture(scope="session")
def servers() -> Iterator[ServiceEndpoints]:
    with test_servers() as found:
        yield found


@pytest.fixture(scope="session")
def jwt_secret() -> str:
    return secrets.token_urlsafe(48)


@pytest.fixture(scope="session")
def settings(servers: ServiceEndpoints, jwt_secret: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of an isolated catalog database and exchange for this test run."""
    root = tmp_path_factory.mktemp("backup")
    return Settings(
        mysql_url=servers.mysql_url(f"backup_test_{servers.run_id}"),
        source_mysql_url=servers.mysql_url(f"backup_test_app_{servers.run_id}"),
        amqp_url=servers.amqp_url,
        amqp_exchange=f"test.{servers.run_id}.events",
        amqp_queue_prefix=f"test.{servers.run_id}",
        jwt_secret=jwt_secret,
        storage_dir=root / "storage",
        uploads_dir=root / "app" / "uploads",
        configs_dir=root / "app" / "configs",
        logs_dir=root / "app" / "logs",
        restore_dir=root / "restores",
        outbox_poll_seconds=0.2,
    )


@pytest.fixture(scope="session")
async def catalog_pool(settings: Settings) -> AsyncIterator[db.Pool]:
    """A pool on this run's freshly migrated catalog database, dropped at the end."""
    await migrations.migrate(settings.catalog)
    pool = await db.create_pool(settings.catalog)
    try:
        yield pool
    finally:
        await db.close_pool(pool)
        await db.drop_database(settings.catalog)


@pytest.fixture(scope="session")
async def amqp_connection(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    """One broker connection for the run; the run's exchanges and queues are deleted at the end."""
    connection = await aio_pika.connect_robust(settings.amqp_url.get_secret_value())
    try:
        yield connection
    finally:
        await delete_run_topology(connection, settings)
        await connection.close()


# Queue and exchange names the tests declared; deleted with the run's exchanges at the end.
DECLARED_QUEUES: list[str] = []
DECLARED_EXCHANGES: list[str] = []


async def delete_run_topology(connection: aio_pika.abc.AbstractConnection, settings: Settings) -> None:
    channel = await connection.channel()
    for queue in DECLARED_QUEUES:
        await channel.queue_delete(queue)
    for exchange in (settings.amqp_exchange, f"{settings.amqp_exchange}.dlx", *DECLARED_EXCHANGES):
        await channel.exchange_delete(exchange)
    await channel.close()


@pytest.fixture
def declare_queue_name(settings: Settings) -> Any:
    """Returns a unique queue name in this run's namespace, deleted at the end of the run."""

    def make(label: str) -> str:
        name = f"{settings.amqp_queue_prefix}.{label}.{secrets.token_hex(3)}"
        DECLARED_QUEUES.append(name)
        return name

    return make


@pytest.fixture
def storage_dir(settings: Settings) -> Path:
    settings.storage_dir.mkdir(parents=True, exist_ok=True)
    return settings.storage_dir
