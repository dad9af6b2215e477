"""The gateway's composition root: the admin API's routes and middlewares over the ports."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CollectorRegistry

from backup_common.adapters.mysql.source import AsyncmySqlServer
from backup_common.adapters.runtime.health import ServiceMetrics
from backup_common.adapters.runtime.service import Service, bind, lifecycle, serve
from backup_common.adapters.settings import Settings
from backup_common.adapters.tokens import TokenVerifier
from backup_common.domain.ports import Ports
from backup_gateway.admin_page import add_admin_page
from backup_gateway.app_keys import HTTP_METRICS, RESTORE_TARGETS, VERIFIER
from backup_gateway.handlers import HANDLERS, RestoreTargets
from backup_gateway.metrics import HttpMetrics
from backup_gateway.middleware import (
    PARSED_HEADER_FIELD_BYTES,
    ParserErrorFilter,
    admin_auth,
    header_limits,
    json_errors,
    metrics,
)
from backup_gateway.routes import add_routes, openapi_document
from backup_gateway.system_metrics import add_system_metrics

NAME = "gateway"
MAX_BODY_BYTES = 1 << 20


def bootstrap(settings: Settings, ports: Ports, registry: CollectorRegistry) -> Service:
    return Service(NAME, bind(HANDLERS, ports))


def create_app(settings: Settings) -> web.Application:
    """Raises SettingsError when no key to check admin tokens with is configured."""
    app = web.Application(
        middlewares=[metrics, header_limits, admin_auth, json_errors],
        client_max_size=MAX_BODY_BYTES,
        # Long headers reach header_limits, which answers 431 in JSON (the pure-Python parser bounds a
        # header line by max_line_size as well).
        handler_args={
            "max_field_size": PARSED_HEADER_FIELD_BYTES,
            "max_line_size": PARSED_HEADER_FIELD_BYTES,
            "logger": _server_logger(),
        },
    )
    service_metrics = ServiceMetrics()
    app[VERIFIER] = TokenVerifier(settings)
    app[HTTP_METRICS] = HttpMetrics(service_metrics.registry)
    app[RESTORE_TARGETS] = RestoreTargets(
        source_database=settings.source.database,
        catalog_database=settings.catalog.database,
        restore_dir=settings.restore_dir,
        source=AsyncmySqlServer(settings.source),
    )
    add_routes(app)
    add_system_metrics(app, service_metrics)
    app.router.add_get("/api/openapi.json", serve_openapi, name="openapi")
    # The admin page and its files, public (admin_auth guards /api/admin/ only) and undocumented.
    add_admin_page(app, settings.admin_page_dir)
    app.cleanup_ctx.append(lifecycle(settings, NAME, bootstrap, service_metrics))
    return app


def _server_logger() -> logging.Logger:
    """aiohttp's server logger, for this gateway's connections, that never quotes a refused request."""
    logger = logging.getLogger("backup_gateway.http")
    if not any(isinstance(existing, ParserErrorFilter) for existing in logger.filters):
        logger.addFilter(ParserErrorFilter())
    return logger


async def serve_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def main() -> None:
    serve(NAME, create_app, lambda settings: (settings.gateway_host, settings.gateway_port))
