"""The aio-pika adapter and the processed-message store against a real RabbitMQ and MariaDB."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from uuid import uuid4

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from backup_common.adapters.amqp.consumer import Consumer
from backup_common.adapters.amqp.publisher import AmqpPublisher
from backup_common.adapters.amqp.topology import Topology
from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.processed import MysqlProcessedMessages
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupCompleted, BackupPart, BackupRequested, BackupType, Event
from backup_common.domain.ports import EventRefused, PublishError
from tests.conftest import DECLARED_QUEUES

pytestmark = pytest.mark.integration

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
    """Records each event; fails the first ``failures`` calls (all of them with ``failures=-1``)."""

    def __init__(self, failures: int = 0) -> None:
        self.events: list[Event] = []
        self.failures = failures

    async def __call__(self, event: Event) -> None:
        self.events.append(event)
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
) -> AsyncIterator[Consumer]:
    consumer = Consumer(
        amqp_connection,
        topology,
        name,
        {BackupRequested: handler},
        processed,
        max_attempts=3,
        retry_backoff=FAST_RETRY,
    )
    async with running(consumer):
        yield consumer


async def test_a_published_event_reaches_a_bound_queue_persistent_and_with_its_ids(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
) -> None:
    await topology.declare_exchanges(channel)
    queue = topology.queue_name(service_name("bound"))
    await topology.declare_queue(channel, queue, [BackupRequested.routing_key])
    event = backup_requested()

    async with AmqpPublisher(amqp_connection, topology) as publisher:
        await publisher.publish(event)

    message = await next_message(channel, queue)
    assert BackupRequested.model_validate_json(message.body) == event
    assert message.message_id == str(event.event_id)
    assert message.correlation_id == str(event.backup_id)
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.type == "BackupRequested"
    assert message.content_type == "application/json"
    assert message.routing_key == BackupRequested.routing_key


async def test_concurrent_publishes_are_each_confirmed_and_delivered(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    service_name: Callable[[str], str],
    channel: AbstractChannel,
) -> None:
    await topology.declare_exchanges(channel)
    queue = topology.queue_name(service_name("concurrent"))
    await topology.declare_queue(channel, queue, ["backup.#"])
    events = [backup_requested() for _ in range(20)]

    async with AmqpPublisher(amqp_connection, topology) as publisher:
        await asyncio.gather(*(publisher.publish(event) for event in events))

    assert await ready_count(channel, queue) == len(events)


async def test_publishing_an_event_no_queue_is_bound_to_raises_publish_error(
    amqp_connection: AbstractRobustConnection, topology: Topology
) -> None:
    async with AmqpPublisher(amqp_connection, topology) as publisher:
        with pytest.raises(PublishError, match="no queue is bound"):
            await publisher.publish(backup_requested())
        # The channel survives an unroutable message.
        with pytest.raises(PublishError, match="no queue is bound"):
            await publisher.publish(backup_requested())


async def test_an_announcement_no_queue_is_bound_to_is_confirmed_and_a_request_is_refused(
    amqp_connection: AbstractRobustConnection, topology: Topology
) -> None:
    announcement = BackupCompleted(backup_id=uuid4(), backup_type=BackupType.FULL, size_bytes=1)

    async with AmqpPublisher(amqp_connection, topology) as publisher:
        await publisher.publish(announcement)
        with pytest.raises(EventRefused, match=r"no queue is bound to routing key 'backup\.requested'"):
            await publisher.publish(backup_requested())


async def test_publishing_on_a_closed_publisher_raises_publish_error(
    amqp_connection: AbstractRobustConnection, topology: Topology
) -> None:
    publisher = await AmqpPublisher(amqp_connection, topology).start()
    await publisher.close()

    with pytest.raises(PublishError):
        await publisher.publish(backup_requested())


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
