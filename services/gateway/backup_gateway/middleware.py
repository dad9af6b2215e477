"""Request pipeline: metrics, then header limits, then default-deny admin auth with an audit record,
then JSON errors innermost, so the outer layers see every outcome as a response with its final status."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from backup_common.adapters.mysql import db
from backup_common.adapters.runtime.service import RUNNING
from backup_common.adapters.tokens import InvalidToken
from backup_common.domain.errors import (
    Conflict,
    DomainError,
    Gone,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from backup_common.domain.model import AuditEntry
from backup_gateway import handlers
from backup_gateway.app_keys import (
    AUDIT_DETAIL,
    AUDIT_TARGET,
    HTTP_METRICS,
    PRINCIPAL,
    REQUEST_ID,
    TRANSFER_ABORTED,
    VERIFIER,
)

log = logging.getLogger(__name__)

ADMIN_PREFIX = "/api/admin/"

_DOMAIN_STATUS: dict[type[DomainError], int] = {
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    PreconditionFailed: 412,
    InvalidRequest: 400,
    Unavailable: 503,
}
_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
}

# A header field (name and value) may be as long as aiohttp's own default allows, and all of them
# together four times that; the parser itself lets longer ones through (PARSED_HEADER_FIELD_BYTES),
# so that they are refused here with 431 and an audit record rather than by the parser with a text page.
MAX_HEADER_FIELD_BYTES = 8190
MAX_HEADER_BYTES = 4 * MAX_HEADER_FIELD_BYTES
PARSED_HEADER_FIELD_BYTES = 128 * 1024

RETRY_AFTER_SECONDS = 5


def error_response(
    status: int, code: str, message: str, *, details: list[dict[str, Any]] | None = None, headers: Any = None
) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return web.json_response({"error": body}, status=status, headers=headers)


def validation_details(error: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    details = [
        {
            "field": ".".join(str(part) for part in item["loc"]) or "body",
            "message": item["msg"].removeprefix("Value error, "),
        }
        for item in error.errors(include_url=False)
    ]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return summary, details


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as `{"error": {"code", "message"}}` with its status; never an HTML page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
        code = _HTTP_CODES.get(exc.status, "error")
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404:
            message = f"no route {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed here; allowed: {exc.headers.get('Allow', '')}"
        return error_response(exc.status, code, message, headers=headers)
    except ValidationError as exc:
        summary, details = validation_details(exc)
        return error_response(400, "invalid_request", summary, details=details)
    except DomainError as exc:
        return error_response(_DOMAIN_STATUS.get(type(exc), 400), exc.code, exc.message)
    except Exception as exc:
        if db.unreachable(exc):
            log.warning("the catalog did not answer %s %s: %s", request.method, request.path, exc)
            return error_response(
                503,
                "unavailable",
                "the catalog database does not answer; try again shortly",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        log.exception("unhandled error answering %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; the gateway log has the details")


def route_label(request: web.Request) -> str:
    """The route's name, or its path pattern: never the raw path (unbounded label values)."""
    route = request.match_info.route
    if route.name:
        return route.name
    resource = route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Outside json_errors: every outcome, errors included, arrives here as a response.
    started = time.perf_counter()
    response = await handler(request)
    collected = request.app[HTTP_METRICS]
    label = route_label(request)
    collected.requests.labels(label, request.method, str(response.status)).inc()
    collected.latency.labels(label).observe(time.perf_counter() - started)
    return response


def _oversized_header(request: web.Request) -> str | None:
    """Why the request's headers are too large to be read, naming the header but never quoting it."""
    total = 0
    for name, value in request.raw_headers:
        size = len(name) + len(value)
        if size > MAX_HEADER_FIELD_BYTES:
            shown = name.decode("ascii", "replace")[:64]
            return f"the {shown} header is {size} bytes; a header may be {MAX_HEADER_FIELD_BYTES} bytes at most"
        total += size
    if total > MAX_HEADER_BYTES:
        return f"the headers are {total} bytes together; they may be {MAX_HEADER_BYTES} bytes at most"
    return None


@web.middleware
async def header_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """431 with a JSON body for headers too large, audited under /api/admin/ like any denied request."""
    reason = _oversized_header(request)
    if reason is None:
        return await handler(request)
    if request.path.startswith(ADMIN_PREFIX):
        request[REQUEST_ID] = str(uuid.uuid4())
        await _audit(request, "anonymous", "denied", 431, {"reason": reason})
    return error_response(431, "headers_too_large", reason)


class ParserErrorFilter(logging.Filter):
    """Logs a request the HTTP parser refused (a header beyond PARSED_HEADER_FIELD_BYTES, say) without
    the parser's message, which quotes the start of the offending line: a token, a cookie."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            said = record.getMessage()
            record.msg = "%s; refused a request the HTTP parser could not read (%s %s)"
            record.args = (said, type(error).__name__, error.code)
            record.exc_info = None
            record.exc_text = None
        return True


def _bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Default deny: every path under /api/admin/ needs a valid admin token, matched route or not."""
    if not request.path.startswith(ADMIN_PREFIX):
        return await handler(request)
    request[REQUEST_ID] = str(uuid.uuid4())
    token = _bearer_token(request)
    if token is None:
        await _audit(request, "anonymous", "denied", 401, {"reason": "no bearer token"})
        return error_response(
            401, "unauthorized", "an admin bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    try:
        principal = request.app[VERIFIER].verify(token)
    except InvalidToken as exc:
        await _audit(request, "anonymous", "denied", 401, {"reason": str(exc)})
        return error_response(
            401, "unauthorized", str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    if not principal.is_admin:
        await _audit(request, principal.subject, "denied", 403, {"reason": "admin role required"})
        return error_response(403, "forbidden", "this token does not carry the admin role")
    request[PRINCIPAL] = principal
    # Outside json_errors: a failed operation arrives as an error response, with its status.
    response = await handler(request)
    detail = request.get(AUDIT_DETAIL)
    aborted = request.get(TRANSFER_ABORTED)
    if aborted is not None:
        detail = {**(detail or {}), "aborted": aborted}
    outcome = "allowed" if response.status < 400 and aborted is None else "failed"
    await _audit(request, principal.subject, outcome, response.status, detail)
    return response


def _action(request: web.Request) -> str:
    name = request.match_info.route.name
    return name or f"{request.method} {request.path}"[:64]


async def _audit(request: web.Request, actor: str, outcome: str, status: int, detail: dict[str, Any] | None) -> None:
    target = request.get(AUDIT_TARGET) or request.match_info.get("backup_id", "")
    entry = AuditEntry(
        actor=actor,
        action=_action(request)[:64],
        outcome=outcome,
        target=target,
        status_code=status,
        source_address=request.remote or "",
        request_id=request.get(REQUEST_ID),
        detail={"method": request.method, **(detail or {})},
    )
    try:
        await handlers.record_audit(request.app[RUNNING].ports, entry)
    except Exception:
        # The request's own outcome stands; the failure is visible in logs and metrics.
        request.app[HTTP_METRICS].audit_failures.inc()
        log.exception("could not write the audit record of %s %s", request.method, request.path)
