"""Feeding a service's queue to its handler table.

Handlers never see aio-pika: they receive a validated ``Event``, or a ``Command`` (the table's
commands are told apart by the routing key they were published with, their body naming no model).
Delivery is at least once; the consumer skips message ids it already processed, retries a failing
handler a bounded number of times, and dead-letters whatever it cannot handle: an invalid message,
one its table has no handler for, one its handler rejects (``MessageRejected``, at once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ConsumerTag,
    HeadersType,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from pydantic import ValidationError

from backup_common.adapters.amqp.publisher import KeyedLocks, confirmed_publish, event_type
from backup_common.adapters.amqp.topology import Topology, routing_keys
from backup_common.adapters.waiting import wait_event
from backup_common.domain.commands import Command, parse_command
from backup_common.domain.events import Event, parse_event
from backup_common.domain.ports import Message, MessageHandler, MessageRejected, ProcessedMessages, PublishError

log = logging.getLogger(__name__)

ATTEMPTS_HEADER = "x-attempts"
LAST_ERROR_HEADER = "x-last-error"
DEAD_LETTER_REASON_HEADER = "x-dead-letter-reason"
# The routing key a message was first published with, kept on the copies the consumer retries (sent
# straight to the queue) and dead-letters: a retried command is still known by it.
ROUTING_KEY_HEADER = "x-routing-key"
# processed_messages.message_id is VARCHAR(128); a longer id could never be remembered.
MAX_MESSAGE_ID_LENGTH = 128
_MAX_ERROR_TEXT = 300

HandlerTable = Mapping[type[Event] | type[Command], MessageHandler]


class Consumer:
    """Feeds one service queue to its handler table: idempotent, bounded retries, dead-letters the rest.

    ``name`` is the consumer's identity: its queue is ``topology.queue_name(name)``, bound to the
    routing keys of the table's events, and processed message ids are remembered under it.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        topology: Topology,
        name: str,
        handlers: HandlerTable,
        processed: ProcessedMessages,
        *,
        max_attempts: int | None = None,
        prefetch: int | None = None,
        retry_backoff: float = 0.5,
        max_retry_backoff: float = 30.0,
        confirm_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.queue_name = topology.queue_name(name)
        self.max_attempts = topology.settings.max_delivery_attempts if max_attempts is None else max_attempts
        self.prefetch = topology.settings.amqp_prefetch if prefetch is None else prefetch
        if self.max_attempts < 1 or self.prefetch < 1:
            raise ValueError("max_attempts and prefetch must be at least 1")
        self._connection = connection
        self._topology = topology
        if not handlers:
            raise ValueError(f"consumer {name} has no handler: it would consume nothing")
        self._handlers = dict(handlers)
        self._commands = {model.routing_key: model for model in handlers if issubclass(model, Command)}
        self._routing_keys = routing_keys(handlers)
        self._processed = processed
        self._retry_backoff = retry_backoff
        self._max_retry_backoff = max_retry_backoff
        self._confirm_timeout = confirm_timeout
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: ConsumerTag | None = None
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._processing_ids = KeyedLocks()
        self._publishing_ids = KeyedLocks()

    async def start(self) -> None:
        if self._channel is not None:
            raise RuntimeError(f"consumer {self.name} already started")
        self._stopping.clear()
        # Confirms and returns on this channel make a retry copy safe before the original is acked.
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            await channel.set_qos(prefetch_count=self.prefetch)
            await self._topology.declare_exchanges(channel)
            queue = await self._topology.declare_queue(channel, self.queue_name, self._routing_keys)
            self._consumer_tag = await queue.consume(self._on_message)
        except BaseException:
            await channel.close()
            raise
        self._channel, self._queue = channel, queue
        log.info("consumer %s: consuming %s (prefetch %d)", self.name, self.queue_name, self.prefetch)

    async def stop(self) -> None:
        """Stops consuming, lets the handlers in flight finish, then closes the channel.

        Messages delivered but not yet started are left unacknowledged; closing the channel hands them
        back to the broker for another consumer.
        """
        channel = self._channel
        if channel is None:
            return
        self._stopping.set()
        if self._queue is not None and self._consumer_tag is not None and not channel.is_closed:
            try:
                await self._queue.cancel(self._consumer_tag)
            except CONNECTION_EXCEPTIONS as exc:
                log.warning("consumer %s: cancelling the subscription failed: %r", self.name, exc)
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))
        self._channel = self._queue = self._consumer_tag = None
        if not channel.is_closed:
            await channel.close()
        log.info("consumer %s: stopped", self.name)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping.is_set():
            # Left unsettled: closing the channel in stop() hands it back to the broker.
            return
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            await self._process(message)
        except Exception:
            # A bug here must not kill the subscription; the unsettled message returns to the broker
            # when the channel closes.
            log.exception("consumer %s: unexpected error on message %s", self.name, message.message_id)
        finally:
            self._in_flight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        message_id = message.message_id
        if not message_id:
            await self._dead_letter(message, "it has no message_id")
            return
        if len(message_id) > MAX_MESSAGE_ID_LENGTH:
            await self._dead_letter(message, f"its message_id is longer than {MAX_MESSAGE_ID_LENGTH}")
            return
        routing_key = _first_routing_key(message)
        command = self._commands.get(routing_key)
        received: Message
        try:
            received = parse_command(command, message.body, message_id) if command else parse_event(message.body)
        except ValidationError as exc:
            if command is None:
                await self._dead_letter(message, f"it is not a valid event ({_describe_invalid(exc)})")
            else:
                invalid = _describe_invalid(exc, with_messages=True)
                await self._dead_letter(message, f"it is not a valid {routing_key} command ({invalid})")
            return
        kind = message_kind(received)
        handler = self._handlers.get(type(received))
        if handler is None:
            # Bound by another routing key, or published here by hand: never acknowledged unhandled.
            await self._dead_letter(message, f"{self.name} has no handler for {kind}")
            return

        failure: Exception | None = None
        rejected: MessageRejected | None = None
        # Duplicates delivered together wait for each other, so the second one sees the first remembered.
        async with self._processing_ids.hold(message_id):
            try:
                if await self._processed.seen(self.name, message_id):
                    log.info("consumer %s: skipping %s %s, already processed", self.name, kind, message_id)
                    await self._settle(message.ack())
                    return
                await handler(received)
                await self._processed.remember(self.name, message_id)
            except MessageRejected as exc:
                rejected = exc
            except Exception as exc:
                failure = exc
        if rejected is not None:
            # Not remembered: once the cause is fixed, the dead letter may be published again.
            await self._dead_letter(message, str(rejected) or f"{self.name} rejected {kind}")
        elif failure is None:
            log.debug("consumer %s: processed %s %s", self.name, kind, message_id)
            await self._settle(message.ack())
        else:
            await self._retry_or_dead_letter(message, kind, failure)

    async def _retry_or_dead_letter(self, message: AbstractIncomingMessage, kind: str, exc: Exception) -> None:
        attempt = _attempt_of(message)
        error = _error_text(exc)
        if attempt >= self.max_attempts:
            log.error(
                "consumer %s: %s %s failed on attempt %d of %d: %s",
                self.name, kind, message.message_id, attempt, self.max_attempts, error, exc_info=exc,
            )  # fmt: skip
            await self._dead_letter(message, f"it failed {attempt} times; the last error: {error}")
            return
        delay = min(self._retry_backoff * 2**attempt, self._max_retry_backoff)
        log.warning(
            "consumer %s: %s %s failed on attempt %d of %d, retrying in %.2f s: %s",
            self.name, kind, message.message_id, attempt, self.max_attempts, delay, error, exc_info=exc,
        )  # fmt: skip
        # Cut short on stop() so shutdown does not wait out a long backoff.
        await wait_event(self._stopping, delay)
        try:
            await self._republish(message, attempt + 1, error)
        except PublishError as publish_error:
            # Not lost: the broker redelivers the original (the attempt is counted again).
            log.warning(
                "consumer %s: could not queue the retry of %s: %s", self.name, message.message_id, publish_error
            )
            await self._settle(message.nack(requeue=True))
            return
        await self._settle(message.ack())

    async def _republish(self, message: AbstractIncomingMessage, attempt: int, error: str) -> None:
        """Queues a copy carrying the attempt count; the original is acked only once this is confirmed."""
        channel = self._channel
        if channel is None or channel.is_closed:
            raise PublishError("the consumer channel is closed")
        await confirmed_publish(
            channel.default_exchange,
            _copy(message, {ATTEMPTS_HEADER: attempt, LAST_ERROR_HEADER: error}),
            self.queue_name,
            what=f"retry of message {message.message_id}",
            confirm_timeout=self._confirm_timeout,
            same_id=self._publishing_ids,
        )

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Moves the message to the queue's dead-letter queue with ``reason`` in its headers, so an
        operator reading it there knows why; if that copy cannot be queued, the broker dead-letters
        the original (without the reason)."""
        log.error(
            "consumer %s: dead-lettering message %s (type %s, routing key %s) because %s",
            self.name, message.message_id, message.type, _first_routing_key(message), reason,
        )  # fmt: skip
        channel = self._channel
        try:
            if channel is None or channel.is_closed:
                raise PublishError("the consumer channel is closed")
            exchange = await channel.get_exchange(self._topology.dead_letter_exchange, ensure=False)
            await confirmed_publish(
                exchange,
                _copy(message, {DEAD_LETTER_REASON_HEADER: reason[:_MAX_ERROR_TEXT]}),
                self.queue_name,
                what=f"dead letter of message {message.message_id or '(no id)'}",
                confirm_timeout=self._confirm_timeout,
                same_id=self._publishing_ids,
            )
        except PublishError as exc:
            log.warning("consumer %s: dead-lettering without the reason: %s", self.name, exc)
            await self._settle(message.reject(requeue=False))
            return
        await self._settle(message.ack())

    async def _settle(self, outcome: Awaitable[Any]) -> None:
        """Awaits an ack, nack or reject; a closed channel means the broker redelivers the message."""
        try:
            await outcome
        except CONNECTION_EXCEPTIONS as exc:
            log.warning("consumer %s: could not settle a message, it will be redelivered: %r", self.name, exc)


def message_kind(message: Message) -> str:
    """What a message is, for logs and reasons: the event's type, or the command's model."""
    return type(message).__name__ if isinstance(message, Command) else event_type(message)


def _first_routing_key(message: AbstractIncomingMessage) -> str:
    """The routing key the message was first published with (a retried copy comes straight to the queue)."""
    value = message.headers.get(ROUTING_KEY_HEADER)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value if isinstance(value, str) else (message.routing_key or "")


def _copy(message: AbstractIncomingMessage, extra_headers: HeadersType) -> aio_pika.Message:
    """The message with the same body and properties, the routing key it was first published with,
    and ``extra_headers`` added."""
    return aio_pika.Message(
        message.body,
        headers={ROUTING_KEY_HEADER: _first_routing_key(message), **message.headers, **extra_headers},
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=message.delivery_mode or aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
        # user_id is left out: the broker refuses one that is not this connection's user.
    )


def _attempt_of(message: AbstractIncomingMessage) -> int:
    value = message.headers.get(ATTEMPTS_HEADER)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        attempt = int(value) if isinstance(value, int | str) and not isinstance(value, bool) else 1
    except ValueError:
        attempt = 1
    return max(attempt, 1)


def _error_text(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."


def _describe_invalid(exc: ValidationError, *, with_messages: bool = False) -> str:
    """Where and how the body is invalid, without the offending values (they come from the body);
    ``with_messages`` says what is expected too (pydantic's messages name the rule, not the input)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        location = ".".join(str(part) for part in error["loc"]) or "body"
        said = f"{error['type']}, {error['msg'][:120]}" if with_messages else error["type"]
        parts.append(f"{location}: {said}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
