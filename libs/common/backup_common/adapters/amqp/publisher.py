"""A confirming publisher: ``publish`` returns once the broker has taken responsibility for the event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from backup_common.adapters.amqp.topology import Topology
from backup_common.domain.events import Event
from backup_common.domain.ports import EventRefused, PublishError


class KeyedLocks:
    """One lock per key, kept only while a task holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


async def confirmed_publish(
    exchange: AbstractExchange,
    message: aio_pika.Message,
    routing_key: str,
    *,
    what: str,
    confirm_timeout: float,
    same_id: KeyedLocks,
    mandatory: bool = True,
) -> None:
    """Publishes on a confirming channel opened with ``on_return_raises``; raises EventRefused when
    the broker refuses it (unroutable while ``mandatory``, or nacked), PublishError otherwise.

    aiormq matches a returned message to its publish by message_id, so two publishes of one id in
    flight on one channel could confirm an unroutable message as delivered; those two wait for each
    other, every other publish runs concurrently.
    """
    try:
        async with same_id.hold(message.message_id or ""), asyncio.timeout(confirm_timeout):
            confirmation = await exchange.publish(message, routing_key=routing_key, mandatory=mandatory)
    except aio_pika.exceptions.PublishError as exc:
        raise EventRefused(f"{what}: no queue is bound to routing key {routing_key!r}") from exc
    except aio_pika.exceptions.DeliveryError as exc:
        raise EventRefused(f"{what}: the broker refused it ({type(exc.frame).__name__})") from exc
    except TimeoutError as exc:  # before OSError, which it subclasses
        raise PublishError(f"{what}: the broker did not confirm it within {confirm_timeout:g} s") from exc
    except CONNECTION_EXCEPTIONS as exc:
        raise PublishError(f"{what}: the broker is unreachable: {exc!r}") from exc
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise PublishError(f"{what}: the broker did not confirm it: {confirmation!r}")


class AmqpPublisher:
    """``Publisher`` on its own confirming channel; ``publish`` returns once the broker has the event."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        topology: Topology,
        *,
        confirm_timeout: float = 30.0,
    ) -> None:
        self._connection = connection
        self._topology = topology
        self._confirm_timeout = confirm_timeout
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._publishing_ids = KeyedLocks()

    async def start(self) -> AmqpPublisher:
        if self._channel is not None:
            raise RuntimeError("publisher already started")
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            # Publishing to a missing exchange would close the channel, so make sure it exists.
            self._exchange = await self._topology.declare_exchanges(channel)
        except BaseException:
            await channel.close()
            raise
        self._channel = channel
        return self

    async def close(self) -> None:
        channel, self._channel, self._exchange = self._channel, None, None
        if channel is not None and not channel.is_closed:
            await channel.close()

    async def __aenter__(self) -> AmqpPublisher:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def publish(self, event: Event) -> None:
        if self._exchange is None:
            raise PublishError("the publisher is not started or already closed")
        message = aio_pika.Message(
            event.to_json(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(event.event_id),
            correlation_id=str(event.correlation_id),
            type=event_type(event),
            timestamp=event.occurred_at,
        )
        await confirmed_publish(
            self._exchange,
            message,
            event.routing_key,
            what=f"{event_type(event)} {event.event_id}",
            confirm_timeout=self._confirm_timeout,
            same_id=self._publishing_ids,
            mandatory=event.requires_consumer,
        )


def event_type(event: Event) -> str:
    # Every concrete event declares a ``type`` literal; the base class does not.
    return str(getattr(event, "type", type(event).__name__))
