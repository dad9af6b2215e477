"""The process around every service: the adapters its handlers get (catalog, leases, keys, storage),
the broker link, the outbox relay, the consumer of its handler table, the lease reaper, and the
/healthz, /readyz and /metrics endpoints, all opened and closed in aiohttp's cleanup_ctx.

A service provides ``bootstrap(settings, ports, registry) -> Service``: its one composition root,
which unit tests call with fakes of the ports.

A catalog that cannot be reached or migrated at start stops the process with one line naming the
variable (``StartupError``), which a supervisor (`backupctl run`, a container's restart policy)
answers by starting it again; RabbitMQ need not be up: the broker link keeps trying.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aio_pika
from aiohttp import web
from asyncmy.errors import MySQLError
from prometheus_client import CollectorRegistry

from backup_common.adapters.amqp.consumer import Consumer, HandlerTable
from backup_common.adapters.amqp.link import BrokerLink
from backup_common.adapters.amqp.topology import Topology, load_service_queues
from backup_common.adapters.logs import configure_logging
from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.keys import MysqlKeyStore
from backup_common.adapters.mysql.leases import LeaseStore
from backup_common.adapters.mysql.locks import MysqlLocks
from backup_common.adapters.mysql.migrations import MigrationError, migrate
from backup_common.adapters.mysql.outbox import OutboxRelay, RetryPolicy
from backup_common.adapters.mysql.processed import MysqlProcessedMessages
from backup_common.adapters.mysql.uow import unit_of_work_factory
from backup_common.adapters.offsite.s3 import s3_offsite
from backup_common.adapters.runtime.health import ServiceMetrics, healthz, metrics_response, readiness
from backup_common.adapters.runtime.jobs import JobWorker, reap_jobs
from backup_common.adapters.settings import ENV_PREFIX, Settings, SettingsError, load_settings
from backup_common.adapters.waiting import cancel_and_wait
from backup_common.domain.commands import Command
from backup_common.domain.events import Event
from backup_common.domain.jobs import MAX_JOB_ATTEMPTS
from backup_common.domain.ports import Message, MessageHandler, Ports
from backup_common.engine.crypto import MasterKey
from backup_common.engine.database.target import MysqlTarget
from backup_common.engine.storage import LocalStorage

log = logging.getLogger(__name__)


async def _nothing() -> None:
    return None


@dataclass
class Service:
    """What a service's bootstrap returns: its bound handlers and what to do when it stops."""

    name: str
    handlers: HandlerTable = field(default_factory=dict)
    stop: Callable[[], Awaitable[None]] = _nothing  # gives running jobs back, so another replica resumes them
    wait_idle: Callable[[], Awaitable[None]] = _nothing  # returns once no job of this process runs
    reaps_leases: bool = False  # re-requests (or fails) the jobs of workers that were lost
    loops: tuple[Callable[[], Coroutine[Any, Any, None]], ...] = ()  # run for the life of the process (timers)


def job_worker_service(name: str, handlers: HandlerTable, *workers: JobWorker[Any]) -> Service:
    """A service whose handlers start leased jobs (backup and restore parts): it gives them back when
    it stops, and reaps the leases of lost workers."""

    async def stop() -> None:
        for worker in workers:
            await worker.shutdown()

    async def wait_idle() -> None:
        for worker in workers:
            await worker.wait_idle()

    return Service(name, handlers, stop=stop, wait_idle=wait_idle, reaps_leases=True)


Bootstrap = Callable[[Settings, Ports, CollectorRegistry], Service]
Dependencies = TypeVar("Dependencies")
# A service's handler table: each handler takes its event (or command) and the service's dependencies.
Handlers = Mapping[type[Event] | type[Command], Callable[[Any, Dependencies], Awaitable[None]]]


def bind(handlers: Handlers[Dependencies], dependencies: Dependencies) -> HandlerTable:
    """The table with each handler given the dependencies, as the consumer calls it."""

    def bound(handler: Callable[[Any, Dependencies], Awaitable[None]]) -> MessageHandler:
        async def handle(message: Message) -> None:
            await handler(message, dependencies)

        return handle

    return {event: bound(handler) for event, handler in handlers.items()}


@dataclass
class Running:
    """One service process's open resources, for its endpoints and views."""

    settings: Settings
    ports: Ports
    pool: db.Pool
    broker: BrokerLink
    relay: OutboxRelay
    metrics: ServiceMetrics
    service: Service


RUNNING = web.AppKey("running", Running)


def holder_name(service: str) -> str:
    return f"{service}@{socket.gethostname()}:{os.getpid()}"


def system_clock() -> datetime:
    return datetime.now(UTC)


def service_ports(settings: Settings, pool: db.Pool, holder: str, on_events: Callable[[], None]) -> Ports:
    """The ports of a service process on the catalog ``pool``; ``on_events`` is called after a commit
    that wrote events (it wakes the outbox relay)."""
    leases = LeaseStore(pool, settings.lease_seconds)
    return Ports(
        uow=unit_of_work_factory(pool, leases, on_events),
        leases=leases,
        keys=MysqlKeyStore(pool, lambda: MasterKey(settings.load_master_key())),
        storage=LocalStorage(settings.storage_dir),
        locks=MysqlLocks(pool),
        clock=system_clock,
        holder=holder,
        offsite=s3_offsite(settings),
    )


def lifecycle(
    settings: Settings, name: str, bootstrap: Bootstrap, metrics: ServiceMetrics | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup_ctx that opens the service's adapters, bootstraps it and runs its loops."""
    metrics = metrics or ServiceMetrics()

    async def run(app: web.Application) -> AsyncIterator[None]:
        pool = await open_catalog(settings)
        relay = OutboxRelay(
            pool,
            poll_seconds=settings.outbox_poll_seconds,
            retry=RetryPolicy(max_attempts=settings.outbox_max_attempts),
        )
        ports = service_ports(settings, pool, holder_name(name), relay.wake)
        queues = await asyncio.to_thread(load_service_queues)
        broker = BrokerLink(settings.amqp_url.get_secret_value(), Topology(settings), queues)
        broker.start()
        service = bootstrap(settings, ports, metrics.registry)
        running = Running(settings, ports, pool, broker, relay, metrics, service)
        app[RUNNING] = running
        tasks = [asyncio.create_task(relay.run(broker), name="outbox-relay")]
        if service.reaps_leases:
            tasks.append(asyncio.create_task(_reap_forever(running), name="lease-reaper"))
        loops: list[asyncio.Task[None]] = [
            asyncio.create_task(loop(), name=getattr(loop, "__name__", "loop")) for loop in service.loops
        ]
        consuming = asyncio.create_task(_consume(running), name="consumer") if service.handlers else None
        yield
        consumer = await _started(consuming) if consuming is not None else None
        if consumer is not None:
            await consumer.stop()
        # The service's own loops first, so none starts a job while its jobs are handed back.
        await cancel_and_wait(loops)
        await service.stop()
        await cancel_and_wait(tasks)
        await broker.close()
        if ports.offsite is not None:
            await ports.offsite.close()
        await db.close_pool(pool)

    return run


class StartupError(Exception):
    """A server the process needs at start does not answer or refuses it; the message is one line
    naming the variable that points at it (never its password)."""


CATALOG_VARIABLE = f"{ENV_PREFIX}MYSQL_URL"
AMQP_VARIABLE = f"{ENV_PREFIX}AMQP_URL"
# The client's "cannot reach the server" errors (as opposed to the server's refusals): can't connect
# through a socket or TCP, server gone, connection lost.
_UNREACHABLE = frozenset({2002, 2003, 2005, 2006, 2013})
_ERRNO = re.compile(r"\[Errno (-?\d+)\] ([^)\]]+)")
# What reaching, using or migrating the catalog raises when MySQL does not answer or refuses.
CATALOG_ERRORS: tuple[type[BaseException], ...] = (MySQLError, MigrationError, ConnectionError, TimeoutError)


def _os_reason(exc: BaseException) -> str | None:
    """What the operating system said, as `Connection refused`, from an error or the one it wraps."""
    for error in (exc, exc.__cause__, exc.__context__):
        if not isinstance(error, OSError):
            continue
        if isinstance(error.errno, int) and error.errno > 0:
            return os.strerror(error.errno)
        if error.strerror:  # a resolver's error: negative numbers, their own text
            return str(error.strerror)
    return None


def mysql_problem(target: MysqlTarget, variable: str, exc: BaseException) -> str:
    """One line saying why the MySQL server of ``target`` (set by ``variable``) could not be used."""
    where = f"MySQL at {target.host}:{target.port} ({variable})"
    if isinstance(exc, MigrationError):
        return f"cannot migrate the catalog {target.database} on {where}: {exc}"
    if isinstance(exc, MySQLError) and len(exc.args) >= 2 and isinstance(exc.args[0], int):
        code, message = exc.args[0], str(exc.args[1])
        if code in _UNREACHABLE:
            match = _ERRNO.search(message)
            if match and int(match.group(1)) > 0:
                reason = os.strerror(int(match.group(1)))
            else:
                reason = _os_reason(exc) or (match.group(2) if match else message)
            return f"cannot reach {where}: {reason}"
        return f"cannot use {where}: {message} (error {code})"
    if isinstance(exc, TimeoutError):
        return f"cannot reach {where}: no answer in time"
    return f"cannot reach {where}: {_os_reason(exc) or str(exc) or type(exc).__name__}"


def amqp_problem(url: str, variable: str, exc: BaseException) -> str:
    """One line saying why the RabbitMQ of ``url`` (set by ``variable``) could not be used."""
    parts = urlsplit(url)
    try:
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    except ValueError:
        port = 5672
    where = f"RabbitMQ at {parts.hostname or 'localhost'}:{port} ({variable})"
    reason = _os_reason(exc)
    if reason is None and isinstance(exc, TimeoutError):
        reason = "no answer in time"
    if reason is None:
        # aiormq's errors carry the broker's reply (ACCESS_REFUSED - …) as their arguments.
        reason = "; ".join(str(arg) for arg in exc.args) or type(exc).__name__
    return f"cannot reach {where}: {reason}"


async def open_catalog(settings: Settings, *, maxsize: int = 10) -> db.Pool:
    """Migrates the catalog and opens a pool on it; raises StartupError when it cannot."""
    try:
        await migrate(settings.catalog)
        return await db.create_pool(settings.catalog, maxsize=maxsize)
    except CATALOG_ERRORS as exc:
        raise StartupError(mysql_problem(settings.catalog, CATALOG_VARIABLE, exc)) from exc


async def check_broker(settings: Settings, *, seconds: float = 10.0) -> None:
    """Connects to RabbitMQ once and closes; raises StartupError when it does not answer or refuses."""
    url = settings.amqp_url.get_secret_value()
    # aiormq logs each failed connection as an error of its own; the StartupError says it once.
    quiet = logging.getLogger("aiormq.connection")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        connection = await aio_pika.connect(url, timeout=seconds)
    except Exception as exc:
        raise StartupError(amqp_problem(url, AMQP_VARIABLE, exc)) from exc
    finally:
        quiet.setLevel(level)
    await connection.close()


async def _consume(running: Running) -> Consumer:
    connection = await running.broker.wait_connected()
    consumer = Consumer(
        connection,
        Topology(running.settings),
        running.service.name,
        running.service.handlers,
        MysqlProcessedMessages(running.pool),
    )
    await consumer.start()
    return consumer


async def _started(task: asyncio.Task[Consumer]) -> Consumer | None:
    """The consumer if it started; otherwise its start is cancelled (the broker never answered)."""
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    await cancel_and_wait([task])
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()  # it started as it was being cancelled
    return None


async def _reap_forever(running: Running) -> None:
    interval = max(1.0, running.settings.lease_seconds / 2)
    while True:
        await asyncio.sleep(interval)
        try:
            await reap_jobs(running.ports, MAX_JOB_ATTEMPTS)
        except Exception:
            log.exception("lease reaping failed; will try again")


async def readyz(request: web.Request) -> web.Response:
    running = request.app[RUNNING]
    return await readiness(running.pool, running.broker)


async def metrics_view(request: web.Request) -> web.Response:
    running = request.app[RUNNING]
    return await metrics_response(running.metrics, running.broker, running.relay)


def add_health_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/metrics", metrics_view, name="metrics")


def worker_app(settings: Settings, name: str, bootstrap: Bootstrap) -> web.Application:
    """A service that serves only /healthz, /readyz and /metrics besides consuming its queue."""
    app = web.Application()
    app.cleanup_ctx.append(lifecycle(settings, name, bootstrap))
    add_health_routes(app)
    return app


def serve(
    name: str, create_app: Callable[[Settings], web.Application], address: Callable[[Settings], tuple[str, int]]
) -> None:
    """The entry point of a service process: serves until SIGINT or SIGTERM, then gives its jobs back."""
    settings = load_settings()
    configure_logging(settings, name)
    try:
        app = create_app(settings)
    except SettingsError as exc:
        raise SystemExit(f"invalid configuration:\n{exc}") from None
    host, port = address(settings)
    try:
        web.run_app(app, host=host, port=port, print=None, access_log=None)
    except StartupError as exc:
        # One line, not a traceback: whoever supervises the process starts it again.
        log.error("%s cannot start: %s", name, exc)
        raise SystemExit(1) from None
