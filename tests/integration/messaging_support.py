"""Helpers of the messaging adapter's integration tests: events, handlers that record, reading queues."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from uuid import uuid4

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from backup_common.adapters.amqp.consumer import Consumer
from backup_common.adapters.amqp.topology import Topology
from backup_common.adapters.mysql.processed import MysqlProcessedMessages
from backup_common.domain.commands import Command
from backup_common.domain.events import BackupPart, BackupRequested, BackupType, Event
from backup_common.domain.ports import Message, MessageRejected

TIMEOUT = 10.0
FAST_RETRY = 0.01


def backup_requested() -> BackupRequested:
    backup_id = uuid4()
    return BackupRequested(
        backup_id=backup_id,
        backup_type=BackupType.FULL,
        parts=(BackupPart.DATABASE, BackupPart.FILES),
        requested_by="admin",
    )


class CountingProcessed:
    """Counts ``seen`` checks, so a test can tell when a skipped duplicate was settled."""

    def __init__(self, inner: MysqlProcessedMessages) -> None:
        self.inner = inner
        self.checks = 0

    async def seen(self, consumer: str, message_id: str) -> bool:
        found = await self.inner.seen(consumer, message_id)
        self.checks += 1
        return found

    async def remember(self, consumer: str, message_id: str) -> None:
        await self.inner.remember(consumer, message_id)


class RecordingHandler:
    """Records each event (or command); fails the first ``failures`` calls (all of them with
    ``failures=-1``), or rejects every one with ``reject``."""

    def __init__(self, failures: int = 0, *, reject: str | None = None) -> None:
        self.events: list[Message] = []
        self.failures = failures
        self.reject = reject

    async def __call__(self, event: Message) -> None:
        self.events.append(event)
        if self.reject is not None:
            raise MessageRejected(self.reject)
        if self.failures < 0 or len(self.events) <= self.failures:
            raise RuntimeError(f"handler failure number {len(self.events)}")


async def eventually(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    async def poll() -> None:
        while True:
            result = condition()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), TIMEOUT)
    except TimeoutError:
        pytest.fail(f"timed out after {TIMEOUT} s waiting until {what}")


async def next_message(channel: AbstractChannel, queue: str) -> AbstractIncomingMessage:
    """The next message in ``queue``, taken (acked) within the timeout."""
    declared = await channel.get_queue(queue)
    got: list[AbstractIncomingMessage] = []

    async def arrived() -> bool:
        message = await declared.get(no_ack=True, fail=False)
        if message is not None:
            got.append(message)
        return bool(got)

    await eventually(arrived, f"a message arrives in {queue}")
    return got[0]


async def ready_count(channel: AbstractChannel, queue: str) -> int:
    """Messages ready in ``queue``, asked afresh (a robust channel answers a passive declare from cache)."""
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(queue, passive=True)
    assert declared.message_count is not None
    return declared.message_count


async def send(channel: AbstractChannel, queue: str, body: bytes, *, message_id: str | None = None) -> None:
    """Puts a raw message straight into ``queue``, as a misbehaving producer might."""
    await channel.default_exchange.publish(
        aio_pika.Message(body, message_id=message_id or uuid4().hex, content_type="application/json"),
        routing_key=queue,
    )


@asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[Consumer]:
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


@asynccontextmanager
async def consumer_for(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    name: str,
    handler: RecordingHandler,
    processed: MysqlProcessedMessages | CountingProcessed,
    *,
    takes: type[Event] | type[Command] = BackupRequested,
) -> AsyncIterator[Consumer]:
    consumer = Consumer(
        amqp_connection,
        topology,
        name,
        {takes: handler},
        processed,
        max_attempts=3,
        retry_backoff=FAST_RETRY,
    )
    async with running(consumer):
        yield consumer
