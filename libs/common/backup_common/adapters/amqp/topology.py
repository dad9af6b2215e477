"""Names and declarations of the exchanges and queues one deployment uses.

Events (and the commands automation sends) travel on one durable topic exchange; a service's queue is
bound to the routing keys of the events and commands its handler table handles, and dead-letters into
its own `.dead` queue. Which queues exist is derived from the handler tables into
infra/rabbitmq/topology.json (`make schemas`), and every process declares all of them when it connects:
an event that several services take (a full backup's BackupRequested) then reaches each of them, even
one that has not started yet, and a command waits for the gateway.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from backup_common.adapters.settings import Settings
from backup_common.domain.commands import Command
from backup_common.domain.events import Event
from backup_common.paths import INFRA_DIR

TOPOLOGY_FILE = INFRA_DIR / "rabbitmq" / "topology.json"

# Service name -> the routing keys its queue is bound to.
ServiceQueues = dict[str, list[str]]


def routing_keys(handlers: Mapping[type[Event] | type[Command], object]) -> list[str]:
    """The routing keys a service's queue is bound to: those of the events and commands it has handlers for."""
    return sorted({event.routing_key for event in handlers})


def load_service_queues() -> ServiceQueues:
    """The queues of every service, as generated from their handler tables (blocking: a file read)."""
    document = json.loads(TOPOLOGY_FILE.read_text())
    return {str(name): [str(key) for key in keys] for name, keys in document["queues"].items()}


@dataclass(frozen=True)
class Topology:
    """Exchange and queue names of one deployment, all derived from its settings."""

    settings: Settings

    @property
    def exchange(self) -> str:
        return self.settings.amqp_exchange

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.exchange}.dlx"

    def queue_name(self, service: str) -> str:
        return f"{self.settings.amqp_queue_prefix}.{service}"

    @staticmethod
    def dead_letter_queue_name(queue: str) -> str:
        return f"{queue}.dead"

    async def declare_exchanges(self, channel: AbstractChannel) -> AbstractExchange:
        """Declares the event exchange and its dead-letter exchange; returns the event exchange."""
        await channel.declare_exchange(self.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        return await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)

    async def declare_queue(self, channel: AbstractChannel, queue: str, routing_keys: Iterable[str]) -> AbstractQueue:
        """Declares ``queue`` with its dead-letter queue, bound to each routing key; returns ``queue``.

        Expects the exchanges to exist (``declare_exchanges``).
        """
        dead = await channel.declare_queue(self.dead_letter_queue_name(queue), durable=True)
        await dead.bind(self.dead_letter_exchange, routing_key=queue)
        declared = await channel.declare_queue(
            queue,
            durable=True,
            arguments={
                "x-dead-letter-exchange": self.dead_letter_exchange,
                "x-dead-letter-routing-key": queue,
            },
        )
        for routing_key in routing_keys:
            await declared.bind(self.exchange, routing_key=routing_key)
        return declared

    async def declare_service_queue(
        self, channel: AbstractChannel, service: str, routing_keys: Iterable[str]
    ) -> AbstractQueue:
        return await self.declare_queue(channel, self.queue_name(service), routing_keys)

    async def declare_service_queues(self, channel: AbstractChannel, queues: ServiceQueues) -> None:
        """Declares every service's queue, so events wait for the services that are not running."""
        for service, keys in queues.items():
            await self.declare_service_queue(channel, service, keys)
