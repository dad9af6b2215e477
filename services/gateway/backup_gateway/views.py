"""The admin API's handlers: parse and validate, call the catalog, answer JSON."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from backup_common.adapters.mysql.catalog import BackupFilter, NewBackup
from backup_common.adapters.runtime.health import readiness
from backup_common.domain.errors import InvalidRequest, NotFound
from backup_common.domain.events import BackupType
from backup_gateway.keys import AUDIT_TARGET, BROKER, CATALOG, PRINCIPAL, RELAY, SETTINGS
from backup_gateway.models import (
    BackupEnvelope,
    BackupOut,
    BackupPage,
    CreateBackupRequest,
    DocumentOut,
    ListQuery,
    RestoreEnvelope,
    RestoreRequest,
    Stats,
)

MAX_IDEMPOTENCY_KEY = 255


def respond(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=model.model_dump_json().encode(), status=status, content_type="application/json", headers=headers
    )


async def json_body(request: web.Request) -> Any:
    if not request.body_exists:
        raise InvalidRequest("a JSON body is required")
    # The body is parsed as JSON whatever its declared type: `curl -d` labels JSON as a form.
    raw = await request.read()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None


def backup_id_of(request: web.Request) -> str:
    """The canonical form of the id in the path; a malformed id names no backup (404)."""
    raw = request.match_info["backup_id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise NotFound(f"no backup with id {raw}") from None


async def create_backup(request: web.Request) -> web.Response:
    body = await json_body(request)
    if isinstance(body, dict) and isinstance(body.get("type"), str):
        _check_backup_type(body["type"])
    parsed = CreateBackupRequest.model_validate(body)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    request_hash = hashlib.sha256(parsed.model_dump_json().encode()).hexdigest() if key else None
    backup, created = await request.app[CATALOG].create_backup(
        NewBackup(
            backup_type=parsed.type,
            description=parsed.description,
            requested_by=request[PRINCIPAL].subject,
            idempotency_key=key,
            request_hash=request_hash,
        )
    )
    request[AUDIT_TARGET] = backup["id"]
    if created:
        request.app[RELAY].wake()
    headers = {"Location": f"/api/admin/backup/{backup['id']}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return respond(BackupEnvelope(backup=BackupOut.model_validate(backup)), 202, headers)


def _check_backup_type(value: str) -> None:
    allowed = [t.value for t in BackupType]
    if value not in allowed:
        raise InvalidRequest(f"unknown backup type {value!r}; allowed types: {', '.join(allowed)}")


def _split(values: list[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


async def list_backups(request: web.Request) -> web.Response:
    unknown = set(request.query) - set(ListQuery.model_fields)
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    query = ListQuery.model_validate(
        {
            "type": _split(request.query.getall("type", [])),
            "status": _split(request.query.getall("status", [])),
            **{name: request.query[name] for name in ("limit", "offset") if name in request.query},
        }
    )
    rows, total = await request.app[CATALOG].list_backups(
        BackupFilter(types=query.type, statuses=query.status, limit=query.limit, offset=query.offset)
    )
    page = BackupPage(
        backups=[BackupOut.model_validate(row) for row in rows], total=total, limit=query.limit, offset=query.offset
    )
    return respond(page)


async def get_backup(request: web.Request) -> web.Response:
    backup = await request.app[CATALOG].get_backup(backup_id_of(request))
    return respond(BackupEnvelope(backup=BackupOut.model_validate(backup)))


async def restore_backup(request: web.Request) -> web.Response:
    backup_id = backup_id_of(request)
    body = await json_body(request)
    try:
        parsed = RestoreRequest.model_validate(body)
    except ValidationError as exc:
        if isinstance(body, dict) and "confirm" not in body:
            raise InvalidRequest(f'confirm the restore by sending {{"confirm": "{backup_id}"}}') from None
        raise exc
    if parsed.confirm.strip().lower() != backup_id:
        raise InvalidRequest(f'"confirm" must repeat the backup id {backup_id}')
    restore = await request.app[CATALOG].request_restore(backup_id, parsed.parts, request[PRINCIPAL].subject)
    request.app[RELAY].wake()
    return respond(RestoreEnvelope.model_validate({"restore": restore}), 202)


async def delete_backup(request: web.Request) -> web.Response:
    backup = await request.app[CATALOG].request_delete(backup_id_of(request), request[PRINCIPAL].subject)
    request.app[RELAY].wake()
    return respond(BackupEnvelope(backup=BackupOut.model_validate(backup)), 202)


def _filesystem_usage(directory: Path) -> tuple[int, int] | None:
    # The storage root may not exist before the first backup: measure the filesystem it will be on.
    for candidate in (directory, *directory.resolve().parents):
        if candidate.exists():
            usage = shutil.disk_usage(candidate)
            return usage.total, usage.free
    return None


async def backup_stats(request: web.Request) -> web.Response:
    stats = await request.app[CATALOG].stats()
    usage = await asyncio.to_thread(_filesystem_usage, request.app[SETTINGS].storage_dir)
    stats["storage"] = {
        "used_bytes": stats["bytes_total"],
        "filesystem_total_bytes": usage[0] if usage else None,
        "filesystem_free_bytes": usage[1] if usage else None,
    }
    return respond(Stats.model_validate(stats))


def _document_name(request: web.Request) -> str:
    return request.path.rstrip("/").rsplit("/", 1)[-1]


async def get_document(request: web.Request) -> web.Response:
    document = await request.app[CATALOG].get_document(_document_name(request))
    return respond(DocumentOut.model_validate(document))


async def put_document(request: web.Request) -> web.Response:
    name = _document_name(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    document = await request.app[CATALOG].put_document(name, body, request[PRINCIPAL].subject)
    request[AUDIT_TARGET] = name
    return respond(DocumentOut.model_validate(document))


async def readyz(request: web.Request) -> web.Response:
    return await readiness(request.app[CATALOG], request.app[BROKER])
