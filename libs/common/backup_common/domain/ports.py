"""The interfaces handlers depend on; adapters (aio-pika, asyncmy) implement them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from backup_common.domain.events import Event


class PublishError(Exception):
    """The broker did not take responsibility for a message: nacked, unroutable or unreachable."""


class Publisher(Protocol):
    async def publish(self, event: Event) -> None:
        """Returns once the broker confirmed the event; raises PublishError otherwise."""


class ProcessedMessages(Protocol):
    """Which messages a consumer already handled, so a redelivery is skipped."""

    async def seen(self, consumer: str, message_id: str) -> bool: ...

    async def remember(self, consumer: str, message_id: str) -> None: ...


EventHandler = Callable[[Event], Awaitable[None]]
