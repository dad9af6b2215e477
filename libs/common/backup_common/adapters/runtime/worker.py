"""The process around a worker service: catalog, broker link, outbox relay, consumer, lease reaper,
and the /healthz, /readyz and /metrics endpoints, all opened and closed in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from backup_common.adapters.amqp.link import SERVICE_SUBSCRIPTIONS, BrokerLink
from backup_common.adapters.amqp.messaging import Consumer, Topology
from backup_common.adapters.logs import configure_logging
from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.catalog import Catalog
from backup_common.adapters.mysql.leases import LeaseStore
from backup_common.adapters.mysql.outbox import OutboxRelay
from backup_common.adapters.mysql.parts import PartJobs
from backup_common.adapters.mysql.processed import MysqlProcessedMessages
from backup_common.adapters.runtime.health import healthz, readiness
from backup_common.adapters.settings import Settings, load_settings
from backup_common.domain.events import Event

log = logging.getLogger(__name__)

# A part whose worker was lost this many times is failed rather than requested again.
MAX_JOB_ATTEMPTS = 3


class WorkerMetrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter("backup_jobs", "Jobs finished, by outcome.", ["service", "outcome"], registry=self.registry)
        self.running = Gauge("backup_jobs_running", "Jobs in progress.", ["service"], registry=self.registry)
        self.broker_connected = Gauge(
            "backup_broker_connected", "1 while the connection to RabbitMQ is up.", registry=self.registry
        )
        self.service = service


@dataclass
class WorkerContext:
    service: str
    settings: Settings
    pool: db.Pool
    catalog: Catalog
    broker: BrokerLink
    relay: OutboxRelay
    leases: LeaseStore
    parts: PartJobs
    metrics: WorkerMetrics


class Worker(Protocol):
    async def handle(self, event: Event) -> None:
        """Claims and starts the job an event asks for; returns at once (the job runs on)."""

    async def shutdown(self) -> None:
        """Gives back every running job so another replica resumes it."""


CONTEXT = web.AppKey("worker_context", WorkerContext)
WORKER = web.AppKey("worker", Worker)


def holder_name(service: str) -> str:
    return f"{service}@{socket.gethostname()}:{os.getpid()}"


def run_worker(service: str, make_worker: Callable[[WorkerContext], Worker], port: Callable[[Settings], int]) -> None:
    """The entry point of a worker process: serves until SIGINT or SIGTERM, then gives its jobs back."""
    settings = load_settings()
    configure_logging(settings, service)
    app = create_worker_app(settings, service, make_worker)
    web.run_app(app, host=settings.worker_host, port=port(settings), print=None, access_log=None)


def create_worker_app(
    settings: Settings, service: str, make_worker: Callable[[WorkerContext], Worker]
) -> web.Application:
    app = web.Application()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await db.migrate(settings.catalog)
        pool = await db.create_pool(settings.catalog, maxsize=10)
        topology = Topology(settings)
        broker = BrokerLink(settings.amqp_url.get_secret_value(), topology)
        broker.start()
        leases = LeaseStore(pool, settings.lease_seconds)
        context = WorkerContext(
            service=service,
            settings=settings,
            pool=pool,
            catalog=Catalog(pool),
            broker=broker,
            relay=OutboxRelay(pool, poll_seconds=settings.outbox_poll_seconds),
            leases=leases,
            parts=PartJobs(pool, leases, holder_name(service)),
            metrics=WorkerMetrics(service),
        )
        worker = make_worker(context)
        app[CONTEXT] = context
        app[WORKER] = worker
        tasks = [
            asyncio.create_task(context.relay.run(broker), name="outbox-relay"),
            asyncio.create_task(_reap_forever(context), name="lease-reaper"),
        ]
        consumer_task = asyncio.create_task(_consume(context, worker), name="consumer")
        yield
        consumer = await _cancel_consumer_start(consumer_task)
        if consumer is not None:
            await consumer.stop()
        await worker.shutdown()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await broker.close()
        await db.close_pool(pool)

    app.cleanup_ctx.append(resources)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _consume(context: WorkerContext, worker: Worker) -> Consumer:
    connection = await context.broker.wait_connected()
    consumer = Consumer(
        connection,
        Topology(context.settings),
        context.service,
        SERVICE_SUBSCRIPTIONS[context.service],
        worker.handle,
        MysqlProcessedMessages(context.pool),
    )
    await consumer.start()
    return consumer


async def _cancel_consumer_start(task: asyncio.Task[Consumer]) -> Consumer | None:
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def _reap_forever(context: WorkerContext) -> None:
    interval = max(1.0, context.settings.lease_seconds / 2)
    while True:
        await asyncio.sleep(interval)
        try:
            await context.parts.reap(MAX_JOB_ATTEMPTS)
        except Exception:
            log.exception("lease reaping failed; will try again")
        context.relay.wake()


async def _readyz(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    return await readiness(context.catalog, context.broker)


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[CONTEXT].metrics
    metrics.broker_connected.set(1 if request.app[CONTEXT].broker.connected else 0)
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
