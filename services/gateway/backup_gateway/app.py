"""Builds the gateway application; every resource is opened and closed in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backup_common.adapters.amqp.link import BrokerLink
from backup_common.adapters.amqp.messaging import Topology
from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.catalog import Catalog
from backup_common.adapters.mysql.outbox import OutboxRelay
from backup_common.adapters.settings import Settings
from backup_common.adapters.tokens import TokenVerifier
from backup_gateway.keys import BROKER, CATALOG, METRICS, POOL, RELAY, SETTINGS, VERIFIER
from backup_gateway.metrics import GatewayMetrics
from backup_gateway.middleware import admin_auth, json_errors, metrics
from backup_gateway.routes import add_routes, openapi_document

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[metrics, admin_auth, json_errors], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[VERIFIER] = TokenVerifier(settings)
    app[METRICS] = GatewayMetrics()
    add_routes(app)
    app.router.add_get("/metrics", serve_metrics, name="metrics")
    app.router.add_get("/api/openapi.json", serve_openapi, name="openapi")
    app.cleanup_ctx.append(catalog_ctx)
    app.cleanup_ctx.append(broker_ctx)
    app.cleanup_ctx.append(relay_ctx)
    return app


async def catalog_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    await db.migrate(settings.catalog)
    pool = await db.create_pool(settings.catalog)
    app[POOL] = pool
    app[CATALOG] = Catalog(pool)
    yield
    await db.close_pool(pool)


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    link = BrokerLink(settings.amqp_url.get_secret_value(), Topology(settings))
    link.start()
    app[BROKER] = link
    yield
    await link.close()


async def relay_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    relay = OutboxRelay(app[POOL], poll_seconds=settings.outbox_poll_seconds)
    app[RELAY] = relay
    task = asyncio.create_task(relay.run(app[BROKER]), name="outbox-relay")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def serve_metrics(request: web.Request) -> web.Response:
    collected = request.app[METRICS]
    collected.broker_connected.set(1 if request.app[BROKER].connected else 0)
    with contextlib.suppress(Exception):
        collected.outbox_pending.set(await request.app[RELAY].pending_count())
    body = generate_latest(collected.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
