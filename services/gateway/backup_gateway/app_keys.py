"""Typed keys of what the gateway keeps on its application and on each request."""

from __future__ import annotations

from aiohttp import web

from backup_common.adapters.tokens import Principal, TokenVerifier
from backup_gateway.metrics import HttpMetrics

VERIFIER = web.AppKey("verifier", TokenVerifier)
HTTP_METRICS = web.AppKey("http_metrics", HttpMetrics)

PRINCIPAL = web.RequestKey("principal", Principal)
AUDIT_TARGET = web.RequestKey("audit_target", str)
REQUEST_ID = web.RequestKey("request_id", str)
