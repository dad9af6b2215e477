"""/healthz, /readyz and /metrics, the same for every service."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from backup_common.adapters.amqp.link import BrokerLink
from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.outbox import OutboxRelay


class ServiceMetrics:
    """The metrics every service exposes, in a registry of its own (one per application)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.broker_connected = Gauge(
            "backup_broker_connected", "1 while the connection to RabbitMQ is up.", registry=self.registry
        )
        self.outbox_pending = Gauge(
            "backup_outbox_pending_events",
            "Events written to the outbox and not yet confirmed by the broker (parked ones excluded).",
            registry=self.registry,
        )
        self.outbox_parked = Gauge(
            "backup_outbox_parked_events",
            "Events the broker refused too many times, kept with their reason until `backupctl outbox retry`.",
            registry=self.registry,
        )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readiness(pool: db.Pool, broker: BrokerLink) -> web.Response:
    """200 when MySQL answers and RabbitMQ is connected, else 503 naming what is not."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(3):
            await db.ping(pool)
        checks["mysql"] = "ok"
    except Exception as exc:
        checks["mysql"] = f"unavailable: {type(exc).__name__}"
    checks["rabbitmq"] = "ok" if broker.connected else "unavailable"
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return web.json_response(body, status=200 if ready else 503)


async def metrics_response(metrics: ServiceMetrics, broker: BrokerLink, relay: OutboxRelay) -> web.Response:
    metrics.broker_connected.set(1 if broker.connected else 0)
    with contextlib.suppress(Exception):  # the catalog may be down; the other metrics still tell
        pending, parked = await relay.counts()
        metrics.outbox_pending.set(pending)
        metrics.outbox_parked.set(parked)
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
