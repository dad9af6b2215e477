"""Typed keys of everything the gateway keeps on its application and requests."""

from __future__ import annotations

from aiohttp import web

from backup_common.adapters.amqp.link import BrokerLink
from backup_common.adapters.mysql.catalog import Catalog
from backup_common.adapters.mysql.outbox import OutboxRelay
from backup_common.adapters.settings import Settings
from backup_common.adapters.tokens import Principal, TokenVerifier
from backup_gateway.metrics import GatewayMetrics

SETTINGS = web.AppKey("settings", Settings)
CATALOG = web.AppKey("catalog", Catalog)
RELAY = web.AppKey("relay", OutboxRelay)
VERIFIER = web.AppKey("verifier", TokenVerifier)
METRICS = web.AppKey("metrics", GatewayMetrics)
BROKER = web.AppKey("broker", BrokerLink)
POOL = web.AppKey("pool", object)  # asyncmy ships no type for its pool

PRINCIPAL = web.RequestKey("principal", Principal)
AUDIT_TARGET = web.RequestKey("audit_target", str)
REQUEST_ID = web.RequestKey("request_id", str)
