"""Fixtures of the integration tests: databases of their own, and the messaging adapter's exchange,
queues and processed ids."""

from __future__ import annotations

import asyncio
import io
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from backup_common.adapters.amqp.topology import Topology
from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.processed import MysqlProcessedMessages
from backup_common.adapters.settings import Settings
from backup_common.engine.database.target import MysqlTarget
from tests.conftest import DECLARED_QUEUES
from tests.integration import source_db
from tests.integration.gateway_support import Gateway, running_gateway
from tests.integration.s3_support import moto_endpoint as moto_endpoint
from tests.integration.source_snapshot import snapshot
from tests.services import ServiceEndpoints

NewDatabase = Callable[[str], MysqlTarget]


@pytest.fixture(scope="module")
async def feature_source(servers: ServiceEndpoints) -> AsyncIterator[MysqlTarget]:
    """The feature database (tests/integration/source_db.py), built once per module; tests only read it."""
    target = MysqlTarget(servers.mysql_url(f"backup_src_{secrets.token_hex(5)}"))
    try:
        await source_db.build_feature_database(target)
        yield target
    finally:
        await db.drop_database(target)


@pytest.fixture(scope="module")
async def feature_snapshot(feature_source: MysqlTarget) -> dict[str, Any]:
    return await snapshot(feature_source)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """A gateway of the test's own (catalog, exchange and queues), without workers."""
    async with running_gateway(settings) as running:
        yield running


@pytest.fixture
async def new_database(servers: ServiceEndpoints) -> AsyncIterator[NewDatabase]:
    """Makes unique database names (``backup_<role>_<hex>``); every one is dropped at the end."""
    made: list[MysqlTarget] = []

    def make(role: str) -> MysqlTarget:
        target = MysqlTarget(servers.mysql_url(f"backup_{role}_{secrets.token_hex(5)}"))
        made.append(target)
        return target

    try:
        yield make
    finally:
        for target in made:
            await db.drop_database(target)


@pytest.fixture
async def topology(settings: Settings, amqp_connection: AbstractRobustConnection) -> AsyncIterator[Topology]:
    """The run's names on an exchange of this test's own, so no other test's binding routes its events."""
    exchange = f"{settings.amqp_exchange}.{secrets.token_hex(3)}"
    own = Topology(settings.model_copy(update={"amqp_exchange": exchange}))
    yield own
    channel = await amqp_connection.channel()
    for name in (own.exchange, own.dead_letter_exchange):
        await channel.exchange_delete(name)
    await channel.close()


@pytest.fixture
def service_name(
    settings: Settings, topology: Topology, declare_queue_name: Callable[[str], str]
) -> Callable[[str], str]:
    """A consumer name whose queue and dead-letter queue are deleted at the end of the run."""

    def make(label: str) -> str:
        queue = declare_queue_name(label)
        DECLARED_QUEUES.append(topology.dead_letter_queue_name(queue))
        name = queue.removeprefix(f"{settings.amqp_queue_prefix}.")
        assert topology.queue_name(name) == queue
        return name

    return make


@pytest.fixture
async def channel(amqp_connection: AbstractRobustConnection) -> AsyncIterator[AbstractChannel]:
    """A plain channel for the test's own declarations, sends and reads."""
    opened = await amqp_connection.channel()
    yield opened
    await opened.close()


@pytest.fixture
def processed(catalog_pool: db.Pool) -> MysqlProcessedMessages:
    return MysqlProcessedMessages(catalog_pool)


@pytest.fixture(autouse=True)
async def no_task_left_behind() -> AsyncIterator[None]:
    """Fails a test that leaves a task running: on the run's one event loop, a leaked consumer or
    relay would live on into later tests (and a robust connection reconnects forever)."""
    before = asyncio.all_tasks()
    yield
    left: set[asyncio.Task[Any]] = set()
    for _ in range(40):  # tasks that are ending get two seconds to finish
        left = asyncio.all_tasks() - before - {asyncio.current_task()}
        if not left:
            return
        await asyncio.sleep(0.05)
    stacks = io.StringIO()
    for task in left:
        task.print_stack(limit=8, file=stacks)
    pytest.fail(f"{len(left)} tasks left running:\n{stacks.getvalue()}")
