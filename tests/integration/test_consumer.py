"""The consumer of a handler table and the processed-message store against a real RabbitMQ and MariaDB."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from uuid import uuid4

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from backup_common.adapters.amqp.consumer import Consumer
from backup_common.adapters.amqp.publisher import AmqpPublisher
from backup_common.adapters.amqp.topology import Topology
from backup_common.adapters.mysql.processed import MysqlProcessedMessages
from backup_common.domain.commands import CreateBackupCommand
from backup_common.domain.events import BackupCompleted, BackupRequested, BackupType, Event
from tests.integration.messaging_support import (
    TIMEOUT,
    CountingProcessed,
    RecordingHandler,
    backup_requested,
    consumer_for,
    eventually,
    next_message,
    ready_count,
    running,
    send,
)

pytestmark = pytest.mark.integration


async def test_a_consumer_hands_a_published_event_to_its_handler_and_acks_it(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
) -> None:
    name = service_name("dispatch")
    handler = RecordingHandler()
    event = backup_requested()

    async with (
        consumer_for(amqp_connection, topology, name, handler, processed),
        AmqpPublisher(amqp_connection, topology) as publisher,
    ):
        await publisher.publish(event)
        await eventually(lambda: processed.seen(name, str(event.event_id)), "the event is remembered")

    assert handler.events == [event]
    assert await ready_count(channel, topology.queue_name(name)) == 0
    assert await ready_count(channel, topology.dead_letter_queue_name(topology.queue_name(name))) == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="malformed JSON"),
        pytest.param(
            b'{"type": "BackupExploded", "correlation_id": "' + uuid4().hex.encode() + b'"}', id="unknown type"
        ),
        pytest.param(b'{"type": "BackupRequested", "backup_id": "not-a-uuid"}', id="invalid fields"),
    ],
)
async def test_a_message_that_is_not_a_valid_event_goes_to_the_dead_letter_queue_at_once(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
    body: bytes,
) -> None:
    name = service_name("invalid")
    queue = topology.queue_name(name)
    handler = RecordingHandler()

    async with consumer_for(amqp_connection, topology, name, handler, processed):
        await send(channel, queue, body, message_id="invalid-1")
        dead = await next_message(channel, topology.dead_letter_queue_name(queue))

    assert dead.body == body
    assert dead.message_id == "invalid-1"
    assert handler.events == []
    # Dead-lettered by the broker on the first rejection, never retried by the consumer.
    assert "x-attempts" not in dead.headers
    assert await ready_count(channel, queue) == 0


async def test_a_message_whose_id_is_too_long_to_remember_goes_to_the_dead_letter_queue_at_once(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
) -> None:
    name = service_name("long-id")
    queue = topology.queue_name(name)
    handler = RecordingHandler()

    async with consumer_for(amqp_connection, topology, name, handler, processed):
        await send(channel, queue, backup_requested().to_json(), message_id="x" * 200)
        dead = await next_message(channel, topology.dead_letter_queue_name(queue))

    assert dead.message_id == "x" * 200
    assert handler.events == []


async def test_a_handler_that_always_fails_is_called_max_attempts_times_then_dead_lettered(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
) -> None:
    name = service_name("failing")
    queue = topology.queue_name(name)
    handler = RecordingHandler(failures=-1)
    event = backup_requested()

    async with consumer_for(amqp_connection, topology, name, handler, processed) as consumer:
        await send(channel, queue, event.to_json(), message_id=str(event.event_id))
        dead = await next_message(channel, topology.dead_letter_queue_name(queue))

    assert consumer.max_attempts == 3
    assert handler.events == [event, event, event]
    assert dead.message_id == str(event.event_id)
    assert dead.headers["x-attempts"] == 3
    # The copy that failed last carries the error of the attempt before it.
    assert dead.headers["x-last-error"] == "RuntimeError: handler failure number 2"
    assert (
        dead.headers["x-dead-letter-reason"]
        == "it failed 3 times; the last error: RuntimeError: handler failure number 3"
    )
    assert await ready_count(channel, queue) == 0
    assert not await processed.seen(name, str(event.event_id))


async def test_an_event_the_table_has_no_handler_for_is_dead_lettered_with_the_reason_and_not_remembered(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
) -> None:
    name = service_name("unhandled")
    queue = topology.queue_name(name)
    handler = RecordingHandler()
    event = BackupCompleted(backup_id=uuid4(), backup_type=BackupType.FULL, size_bytes=1)

    async with consumer_for(amqp_connection, topology, name, handler, processed):
        await send(channel, queue, event.to_json(), message_id=str(event.event_id))
        dead = await next_message(channel, topology.dead_letter_queue_name(queue))

    assert handler.events == []
    assert dead.message_id == str(event.event_id)
    assert dead.body == event.to_json()
    assert dead.headers["x-dead-letter-reason"] == f"{name} has no handler for BackupCompleted"
    assert await ready_count(channel, queue) == 0
    assert not await processed.seen(name, str(event.event_id))


async def test_a_message_its_handler_rejects_is_dead_lettered_at_once_with_the_reason_and_not_remembered(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
) -> None:
    name = service_name("rejecting")
    queue = topology.queue_name(name)
    handler = RecordingHandler(reject="backup 42 is not in the catalog")
    event = backup_requested()

    async with (
        consumer_for(amqp_connection, topology, name, handler, processed) as consumer,
        AmqpPublisher(amqp_connection, topology) as publisher,
    ):
        await publisher.publish(event)
        dead = await next_message(channel, topology.dead_letter_queue_name(queue))

    assert consumer.max_attempts == 3
    assert handler.events == [event]  # never retried
    assert dead.message_id == str(event.event_id)
    assert dead.headers["x-dead-letter-reason"] == "backup 42 is not in the catalog"
    assert dead.headers["x-routing-key"] == "backup.requested"
    assert "x-attempts" not in dead.headers
    assert await ready_count(channel, queue) == 0
    assert not await processed.seen(name, str(event.event_id))


async def publish_command(channel: AbstractChannel, topology: Topology, body: bytes, message_id: str) -> None:
    exchange = await channel.get_exchange(topology.exchange)
    message = aio_pika.Message(body, message_id=message_id, content_type="application/json")
    await exchange.publish(message, routing_key=CreateBackupCommand.routing_key, mandatory=True)


async def test_a_command_is_known_by_its_routing_key_and_still_is_when_retried(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
) -> None:
    name = service_name("commands")
    queue = topology.queue_name(name)
    handler = RecordingHandler(failures=1)
    body = b'{"type": "full", "requested_by": "ci"}'

    async with consumer_for(amqp_connection, topology, name, handler, processed, takes=CreateBackupCommand):
        await publish_command(channel, topology, body, "deploy-7")
        await eventually(lambda: processed.seen(name, "deploy-7"), "the command is remembered")

    # The retry went straight to the queue, under the queue's name; it is still the command.
    expected = CreateBackupCommand(type=BackupType.FULL, requested_by="ci").with_message_id("deploy-7")
    assert handler.events == [expected, expected]
    assert [command.message_id for command in handler.events if isinstance(command, CreateBackupCommand)] == [
        "deploy-7",
        "deploy-7",
    ]
    assert await ready_count(channel, topology.dead_letter_queue_name(queue)) == 0


async def test_an_invalid_command_is_dead_lettered_at_once_saying_what_is_wrong(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
) -> None:
    name = service_name("bad-command")
    queue = topology.queue_name(name)
    handler = RecordingHandler()

    async with consumer_for(amqp_connection, topology, name, handler, processed, takes=CreateBackupCommand):
        await publish_command(channel, topology, b'{"type": "weekly"}', "deploy-8")
        dead = await next_message(channel, topology.dead_letter_queue_name(queue))

    assert handler.events == []
    assert dead.headers["x-dead-letter-reason"] == (
        "it is not a valid command.backup.create command (type: enum, Input should be 'full', 'database',"
        " 'files' or 'incremental'; requested_by: missing, Field required)"
    )
    assert dead.headers["x-routing-key"] == "command.backup.create"


async def test_a_consumer_binds_its_queue_to_the_routing_keys_of_its_handler_table_only(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
) -> None:
    name = service_name("bindings")
    handler = RecordingHandler()

    async with (
        AmqpPublisher(amqp_connection, topology) as publisher,
        consumer_for(amqp_connection, topology, name, handler, processed),
    ):
        wanted = backup_requested()
        await publisher.publish(wanted)
        # Nothing else binds this test's exchange: an announcement reaches no queue at all.
        await publisher.publish(BackupCompleted(backup_id=uuid4(), backup_type=BackupType.FULL, size_bytes=1))
        await eventually(lambda: handler.events == [wanted], "the request is handled")

    assert await ready_count(channel, topology.dead_letter_queue_name(topology.queue_name(name))) == 0


async def test_a_handler_that_fails_once_then_succeeds_is_called_twice_and_nothing_is_dead_lettered(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
) -> None:
    name = service_name("flaky")
    queue = topology.queue_name(name)
    handler = RecordingHandler(failures=1)
    event = backup_requested()

    async with consumer_for(amqp_connection, topology, name, handler, processed):
        await send(channel, queue, event.to_json(), message_id=str(event.event_id))
        await eventually(lambda: processed.seen(name, str(event.event_id)), "the event is remembered")

    assert handler.events == [event, event]
    assert await ready_count(channel, queue) == 0
    assert await ready_count(channel, topology.dead_letter_queue_name(queue)) == 0


async def test_a_duplicate_message_id_is_handled_once(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
) -> None:
    name = service_name("duplicate")
    queue = topology.queue_name(name)
    handler = RecordingHandler()
    counting = CountingProcessed(processed)
    event = backup_requested()

    async with consumer_for(amqp_connection, topology, name, handler, counting):
        # Both copies are delivered at once (prefetch 8), so they race for the same id.
        for _ in range(2):
            await send(channel, queue, event.to_json(), message_id=str(event.event_id))
        await eventually(lambda: counting.checks == 2, "both copies were checked")

    assert handler.events == [event]
    assert await ready_count(channel, queue) == 0
    assert await ready_count(channel, topology.dead_letter_queue_name(queue)) == 0


async def test_handlers_run_concurrently_up_to_the_prefetch_count(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
) -> None:
    name = service_name("prefetch")
    queue = topology.queue_name(name)
    release = asyncio.Event()
    running_now: list[Event] = []
    most = 0
    done: list[Event] = []

    async def blocking_handler(event: Event) -> None:
        nonlocal most
        running_now.append(event)
        most = max(most, len(running_now))
        await release.wait()
        running_now.remove(event)
        done.append(event)

    consumer = Consumer(amqp_connection, topology, name, {BackupRequested: blocking_handler}, processed, prefetch=2)
    async with running(consumer):
        for _ in range(3):
            event = backup_requested()
            await send(channel, queue, event.to_json(), message_id=str(event.event_id))
        await eventually(lambda: len(running_now) == 2, "two handlers run at once")
        # The third message must wait for a free slot: give it a chance to start wrongly.
        await asyncio.sleep(0.2)
        assert most == 2
        release.set()
        await eventually(lambda: len(done) == 3, "every message is handled")

    assert await ready_count(channel, queue) == 0


async def test_stopping_a_consumer_lets_the_handler_in_flight_finish_and_ack(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
    processed: MysqlProcessedMessages,
) -> None:
    name = service_name("stopping")
    queue = topology.queue_name(name)
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[Event] = []

    async def slow_handler(event: Event) -> None:
        started.set()
        await release.wait()
        finished.append(event)

    consumer = Consumer(amqp_connection, topology, name, {BackupRequested: slow_handler}, processed)
    await consumer.start()
    event = backup_requested()
    await send(channel, queue, event.to_json(), message_id=str(event.event_id))
    await asyncio.wait_for(started.wait(), TIMEOUT)

    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, TIMEOUT)

    assert finished == [event]
    assert await processed.seen(name, str(event.event_id))
    assert await ready_count(channel, queue) == 0


async def test_processed_messages_are_remembered_per_consumer(processed: MysqlProcessedMessages) -> None:
    consumer, other, message_id = f"test-{uuid4().hex[:8]}", f"test-{uuid4().hex[:8]}", str(uuid4())

    assert not await processed.seen(consumer, message_id)
    await processed.remember(consumer, message_id)
    await processed.remember(consumer, message_id)  # a second time is harmless

    assert await processed.seen(consumer, message_id)
    assert not await processed.seen(other, message_id)
    assert not await processed.seen(consumer, str(uuid4()))
