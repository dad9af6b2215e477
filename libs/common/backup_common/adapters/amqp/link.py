"""The link of one service process to RabbitMQ, up as soon as the broker answers.

A service must start, and take requests, while RabbitMQ is down: the link keeps trying in the
background and publishing fails with PublishError until it is up (the outbox keeps the events).
Once connected, the link declares the exchanges and every service's queue (``Topology``).
"""

from __future__ import annotations

import asyncio
import logging

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.connection import make_url

from backup_common.adapters.amqp.publisher import AmqpPublisher
from backup_common.adapters.amqp.topology import ServiceQueues, Topology
from backup_common.adapters.waiting import cancel_and_wait
from backup_common.domain.events import Event
from backup_common.domain.ports import PublishError

log = logging.getLogger(__name__)


class BrokerLink:
    """One robust connection and a confirming publisher on it."""

    def __init__(
        self, url: str, topology: Topology, queues: ServiceQueues | None = None, *, retry_seconds: float = 2.0
    ) -> None:
        self._url = url
        self._topology = topology
        self._queues = queues or {}
        self._retry_seconds = retry_seconds
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AmqpPublisher | None = None
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()

    @property
    def connected(self) -> bool:
        return (
            self._publisher is not None
            and self._connection is not None
            and not self._connection.is_closed
            and self._connection.connected.is_set()
        )

    @property
    def connection(self) -> AbstractRobustConnection | None:
        return self._connection

    async def wait_connected(self) -> AbstractRobustConnection:
        """The connection, once the broker first answered (it reconnects by itself afterwards)."""
        await self._up.wait()
        assert self._connection is not None
        return self._connection

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect_until_up(), name="broker-link")

    async def _connect_until_up(self) -> None:
        delay = self._retry_seconds
        while True:
            # Made here rather than by connect_robust: stopped while it connects, a connection only
            # connect_robust knew of would be left reconnecting forever.
            connection: AbstractRobustConnection = aio_pika.RobustConnection(make_url(self._url))
            attempt = asyncio.create_task(self._open(connection), name="broker-link-attempt")
            try:
                # Shielded: aio_pika's connect cancelled half-way can lose the AMQP connection it is
                # opening (asyncio.wait_for on Python 3.11 drops a result that came as it was cancelled),
                # whose reader and heartbeat would then run for good.
                await asyncio.shield(attempt)
                self._connection = connection
                self._up.set()
                log.info("connected to RabbitMQ; exchange %s", self._topology.exchange)
                return
            except BaseException as exc:
                # Also when stopped half-way: a robust connection left open would reconnect forever.
                try:
                    await _settle(attempt)
                finally:
                    self._publisher = None
                    await connection.close()
                if not isinstance(exc, Exception):
                    raise
                log.warning("RabbitMQ not reachable (%s); retrying in %.0f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _open(self, connection: AbstractRobustConnection) -> None:
        await connection.connect(timeout=10)
        await self._declare(connection)
        self._publisher = await AmqpPublisher(connection, self._topology).start()

    async def _declare(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel()
        try:
            await self._topology.declare_exchanges(channel)
            await self._topology.declare_service_queues(channel, self._queues)
        finally:
            await channel.close()

    async def publish(self, event: Event) -> None:
        """The ``Publisher`` port: raises PublishError while the broker is not reachable."""
        if self._publisher is None:
            raise PublishError("not connected to RabbitMQ yet")
        await self._publisher.publish(event)

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        if self._publisher is not None:
            await self._publisher.close()
        if self._connection is not None:
            await self._connection.close()


async def _settle(attempt: asyncio.Task[None]) -> None:
    """Lets a connection attempt its caller stopped end by itself (its timeout bounds it), so that
    what it opened is known and can be closed; cancels it when the caller is stopped again."""
    try:
        await asyncio.wait([attempt])
    except asyncio.CancelledError:
        attempt.cancel()
        await asyncio.wait([attempt])
        raise
    finally:
        if attempt.done() and not attempt.cancelled():
            attempt.exception()  # retrieved: the caller reports the failure it saw
