"""How many messages wait in each queue, from passive declarations (no management plugin needed).

A passive declaration only asks: it never creates a queue nor changes one. It runs on a channel of
its own on the process's connection, not a robust one, so nothing is re-declared after a reconnect.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import ChannelClosed


@dataclass(frozen=True)
class QueueDepth:
    messages: int  # ready for delivery (not those delivered and awaiting their acknowledgement)
    consumers: int


async def queue_depths(connection: AbstractConnection, queues: Iterable[str]) -> dict[str, QueueDepth]:
    """The depth of each of ``queues`` that exists (the broker closes the channel on one that does not;
    the others are asked on a new one). The caller bounds the time it may take."""
    depths: dict[str, QueueDepth] = {}
    channel: AbstractChannel | None = None
    try:
        for name in queues:
            if channel is None or channel.is_closed:
                channel = aio_pika.Channel(connection, publisher_confirms=False)
                await channel.initialize()
            try:
                declared = await channel.declare_queue(name, passive=True)
            except ChannelClosed:  # NOT_FOUND: no such queue
                continue
            result = declared.declaration_result
            depths[name] = QueueDepth(messages=result.message_count or 0, consumers=result.consumer_count or 0)
    finally:
        if channel is not None and not channel.is_closed:
            await channel.close()
    return depths
