"""Typed keys of what the gateway keeps on its application and on each request."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from backup_common.adapters.tokens import Principal, TokenVerifier
from backup_gateway.handlers import RestoreTargets
from backup_gateway.metrics import HttpMetrics

VERIFIER = web.AppKey("verifier", TokenVerifier)
HTTP_METRICS = web.AppKey("http_metrics", HttpMetrics)
RESTORE_TARGETS = web.AppKey("restore_targets", RestoreTargets)

PRINCIPAL = web.RequestKey("principal", Principal)
AUDIT_TARGET = web.RequestKey("audit_target", str)
AUDIT_DETAIL = web.RequestKey("audit_detail", dict[str, Any])  # what the request did, for its audit record
REQUEST_ID = web.RequestKey("request_id", str)
# Why a response was cut off after its status went out (a damaged archive mid-download).
TRANSFER_ABORTED = web.RequestKey("transfer_aborted", str)
