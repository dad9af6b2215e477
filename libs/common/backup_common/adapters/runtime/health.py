"""/healthz and /readyz, the same for every service."""

from __future__ import annotations

import asyncio

from aiohttp import web

from backup_common.adapters.amqp.link import BrokerLink
from backup_common.adapters.mysql.catalog import Catalog


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readiness(catalog: Catalog, broker: BrokerLink) -> web.Response:
    """200 when MySQL answers and RabbitMQ is connected, else 503 naming what is not."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(catalog.ping(), timeout=3)
        checks["mysql"] = "ok"
    except Exception as exc:
        checks["mysql"] = f"unavailable: {type(exc).__name__}"
    checks["rabbitmq"] = "ok" if broker.connected else "unavailable"
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return web.json_response(body, status=200 if ready else 503)
