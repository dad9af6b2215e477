"""The confirming publisher and the topology against a real RabbitMQ."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from uuid import uuid4

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from backup_common.adapters.amqp.link import BrokerLink
from backup_common.adapters.amqp.publisher import AmqpPublisher
from backup_common.adapters.amqp.topology import Topology
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupCompleted, BackupRequested, BackupType
from backup_common.domain.ports import EventRefused, PublishError
from tests.integration.messaging_support import (
    backup_requested,
    next_message,
    ready_count,
)

pytestmark = pytest.mark.integration


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


@pytest.mark.parametrize("after", [0.0, 0.002, 0.005, 0.01, 0.02, 0.05])
async def test_a_link_stopped_while_it_connects_leaves_no_connection_reconnecting(
    settings: Settings, after: float
) -> None:
    # The integration conftest fails a test that leaves a task behind: a robust connection only
    # connect_robust knew of, its connect cancelled, went on reconnecting for good.
    link = BrokerLink(settings.amqp_url.get_secret_value(), Topology(settings))
    link.start()
    await asyncio.sleep(after)
    await link.close()
