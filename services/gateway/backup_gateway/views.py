"""The admin API's views: parse and validate the request, call its handler, answer JSON."""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from backup_common.adapters.runtime.service import RUNNING
from backup_common.domain.errors import InvalidRequest, NotFound
from backup_common.domain.events import BackupType
from backup_common.domain.model import BackupFilter, Idempotency, RestoreFilter, RestoreTarget
from backup_common.domain.ports import Ports, StoredDocument
from backup_gateway import handlers
from backup_gateway.app_keys import AUDIT_DETAIL, AUDIT_TARGET, PRINCIPAL, RESTORE_TARGETS
from backup_gateway.models import (
    BackupEnvelope,
    BackupPage,
    CreateBackupRequest,
    ListQuery,
    RestoreEnvelope,
    RestoreListQuery,
    RestorePage,
    RestoreRequest,
    backup_detail_out,
    backup_out,
    document_out,
    restore_out,
    retention_out,
    stats_out,
)

MAX_IDEMPOTENCY_KEY = 255
# No document of the API nests deeper; a deeper body would only exhaust the recursion of what reads it.
MAX_JSON_DEPTH = 32


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
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest(f"the body nests arrays or objects more than {MAX_JSON_DEPTH} deep") from None
    except ValueError:
        # Python refuses to convert an integer of more digits than this (CVE-2020-10735).
        limit = sys.get_int_max_str_digits()
        raise InvalidRequest(f"the body holds a number of more than {limit} digits") from None
    if _depth_exceeds(body, MAX_JSON_DEPTH):
        raise InvalidRequest(f"the body nests arrays or objects more than {MAX_JSON_DEPTH} deep")
    return body


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists or objects more than ``limit`` deep; level by level, never recursive."""
    level: list[Any] = [value]
    for _ in range(limit + 1):
        containers = [item for item in level if isinstance(item, dict | list)]
        if not containers:
            return False
        level = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]
    return True


def ports(request: web.Request) -> Ports:
    return request.app[RUNNING].ports


def _id_in_path(request: web.Request, kind: str) -> str:
    """The canonical form of the id in the path; a malformed id names nothing (404)."""
    raw = request.match_info[f"{kind}_id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise NotFound(f"no {kind} with id {raw}") from None


def backup_id_of(request: web.Request) -> str:
    return _id_in_path(request, "backup")


async def create_backup(request: web.Request) -> web.Response:
    body = await json_body(request)
    if isinstance(body, dict) and isinstance(body.get("type"), str):
        _check_backup_type(body["type"])
    parsed = CreateBackupRequest.model_validate(body)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    idempotency = None
    if key is not None:
        idempotency = Idempotency(key, hashlib.sha256(parsed.model_dump_json().encode()).hexdigest())
    backup, created = await handlers.create_backup(
        ports(request),
        parsed.type,
        requested_by=request[PRINCIPAL].subject,
        description=parsed.description,
        idempotency=idempotency,
    )
    request[AUDIT_TARGET] = backup.id
    headers = {"Location": f"/api/admin/backup/{backup.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return respond(BackupEnvelope(backup=backup_detail_out(backup)), 202, headers)


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
            "verification": _split(request.query.getall("verification", [])),
            **{name: request.query[name] for name in ("limit", "offset") if name in request.query},
        }
    )
    backups, total = await handlers.list_backups(
        ports(request),
        BackupFilter(
            types=query.type,
            statuses=query.status,
            verification=query.verification,
            limit=query.limit,
            offset=query.offset,
        ),
    )
    page = BackupPage(
        backups=[backup_out(backup) for backup in backups], total=total, limit=query.limit, offset=query.offset
    )
    return respond(page)


async def get_backup(request: web.Request) -> web.Response:
    backup = await handlers.read_backup(ports(request), backup_id_of(request))
    return respond(BackupEnvelope(backup=backup_detail_out(backup)))


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
    target = parsed.target
    spec = handlers.RestoreSpec(
        parts=parsed.parts,
        target=RestoreTarget(target.database, target.directory, target.replace) if target else RestoreTarget(),
        tables=parsed.tables,
        paths=parsed.paths,
        safety_backup=parsed.safety_backup,
    )
    restore = await handlers.request_restore(
        ports(request), request.app[RESTORE_TARGETS], backup_id, spec, requested_by=request[PRINCIPAL].subject
    )
    request[AUDIT_DETAIL] = {
        "restore_id": restore.id,
        "parts": [part.value for part in restore.part_names],
        "target": restore.target.as_dict(),
        "tables": list(restore.tables),
        "paths": list(restore.paths),
        "safety_backup_id": restore.safety_backup_id,
    }
    headers = {"Location": f"/api/admin/backup/restores/{restore.id}"}
    return respond(RestoreEnvelope(restore=restore_out(restore)), 202, headers)


async def list_restores(request: web.Request) -> web.Response:
    unknown = set(request.query) - set(RestoreListQuery.model_fields)
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    query = RestoreListQuery.model_validate(
        {
            "status": _split(request.query.getall("status", [])),
            **{name: request.query[name] for name in ("limit", "offset", "backup_id") if name in request.query},
        }
    )
    restores, total = await handlers.list_restores(
        ports(request),
        RestoreFilter(
            statuses=query.status,
            backup_id=str(query.backup_id) if query.backup_id else None,
            limit=query.limit,
            offset=query.offset,
        ),
    )
    return respond(
        RestorePage(
            restores=[restore_out(restore) for restore in restores],
            total=total,
            limit=query.limit,
            offset=query.offset,
        )
    )


async def get_restore(request: web.Request) -> web.Response:
    restore = await handlers.read_restore(ports(request), _id_in_path(request, "restore"))
    return respond(RestoreEnvelope(restore=restore_out(restore)))


async def verify_backup(request: web.Request) -> web.Response:
    backup = await handlers.request_verification(
        ports(request), backup_id_of(request), requested_by=request[PRINCIPAL].subject
    )
    return respond(BackupEnvelope(backup=backup_detail_out(backup)), 202)


async def delete_backup(request: web.Request) -> web.Response:
    backup = await handlers.request_delete(
        ports(request), backup_id_of(request), requested_by=request[PRINCIPAL].subject
    )
    return respond(BackupEnvelope(backup=backup_detail_out(backup)), 202)


async def backup_stats(request: web.Request) -> web.Response:
    stats = await handlers.catalog_stats(ports(request))
    usage = await ports(request).storage.usage()
    return respond(stats_out(stats, usage))


def _document_name(request: web.Request) -> str:
    return request.path.rstrip("/").rsplit("/", 1)[-1]


def _if_match(request: web.Request) -> int | None:
    """The revision an If-Match header names (``"3"``, ``W/"3"`` or ``3``); None without one or for ``*``."""
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    text = header.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise InvalidRequest(f'If-Match must carry the document\'s revision, as in If-Match: "3"; not {header!r}')
    return int(text)


def _document_response(request: web.Request, stored: StoredDocument) -> web.Response:
    return respond(document_out(stored, ports(request).clock()), headers={"ETag": f'"{stored.revision}"'})


async def get_document(request: web.Request) -> web.Response:
    stored = await handlers.read_document(ports(request), _document_name(request))
    return _document_response(request, stored)


async def _object_body(request: web.Request) -> dict[str, Any]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


async def put_document(request: web.Request) -> web.Response:
    name = _document_name(request)
    body = await _object_body(request)
    request[AUDIT_TARGET] = name
    stored = await handlers.replace_document(
        ports(request), name, body, updated_by=request[PRINCIPAL].subject, if_match=_if_match(request)
    )
    return _document_response(request, stored)


async def patch_document(request: web.Request) -> web.Response:
    name = _document_name(request)
    patch = await _object_body(request)
    request[AUDIT_TARGET] = name
    request[AUDIT_DETAIL] = {"patch": patch}
    stored = await handlers.patch_document(
        ports(request), name, patch, updated_by=request[PRINCIPAL].subject, if_match=_if_match(request)
    )
    return _document_response(request, stored)


async def retention_preview(request: web.Request) -> web.Response:
    return respond(retention_out(await handlers.preview_retention(ports(request))))
