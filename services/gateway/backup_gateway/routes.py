"""The one table of the gateway's routes: it registers them and it writes the OpenAPI document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel

from backup_common.adapters.runtime.health import healthz
from backup_common.adapters.runtime.service import readyz
from backup_common.domain.documents import ScheduleDocument, SettingsDocument
from backup_gateway import download, views
from backup_gateway.models import (
    BackupEnvelope,
    BackupPage,
    CreateBackupRequest,
    DocumentOut,
    DocumentPatch,
    ErrorBody,
    ListQuery,
    RestoreEnvelope,
    RestoreListQuery,
    RestorePage,
    RestoreRequest,
    RetentionPreview,
    Stats,
)
from backup_gateway.views import MAX_IDEMPOTENCY_KEY

API = "/api/admin/backup"
IF_MATCH = {"If-Match": 'The revision the change is made on, as in "3"; another one answers 412.'}
# Named routes under API take precedence over a backup id in the same position.
_RESERVED = ("list", "stats", "schedule", "settings", "create", "restores", "retention")
BACKUP_ID = "{backup_id:(?!(?:" + "|".join(_RESERVED) + ")$)[^/]+}"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    name: str
    summary: str
    status: int = 200
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    public: bool = False
    produces: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


ROUTES: tuple[Route, ...] = (
    Route(
        "POST", f"{API}/create", views.create_backup, "backup.create",
        "Request a backup; answers at once with the pending backup.",
        status=202, request=CreateBackupRequest, response=BackupEnvelope, errors=(400, 409),
        headers={"Idempotency-Key": "A retried request with the same key returns the same backup."},
    ),
    Route(
        "GET", f"{API}/list", views.list_backups, "backup.list",
        "Backups, newest first, filtered by type and status.", response=BackupPage, query=ListQuery, errors=(400,),
    ),
    Route("GET", f"{API}/stats", views.backup_stats, "backup.stats", "Counts, sizes, outcomes and storage.",
          response=Stats),
    Route("GET", f"{API}/schedule", views.get_document, "schedule.read",
          "The backup schedule, with each entry's next fire times.", response=DocumentOut),
    Route("PUT", f"{API}/schedule", views.put_document, "schedule.update",
          "Replace the whole backup schedule; takes effect at the next minute.",
          request=ScheduleDocument, response=DocumentOut, errors=(400, 412), headers=IF_MATCH),
    Route("PATCH", f"{API}/schedule", views.patch_document, "schedule.patch",
          "Change part of the backup schedule (JSON merge patch, RFC 7396).",
          request=DocumentPatch, response=DocumentOut, errors=(400, 412), headers=IF_MATCH),
    Route("GET", f"{API}/settings", views.get_document, "settings.read", "Retention, encryption and other settings.",
          response=DocumentOut),
    Route("PUT", f"{API}/settings", views.put_document, "settings.update", "Replace the whole settings document.",
          request=SettingsDocument, response=DocumentOut, errors=(400, 412), headers=IF_MATCH),
    Route("PATCH", f"{API}/settings", views.patch_document, "settings.patch",
          "Change part of the settings (JSON merge patch, RFC 7396): only the keys sent change.",
          request=DocumentPatch, response=DocumentOut, errors=(400, 412), headers=IF_MATCH),
    Route("GET", f"{API}/retention", views.retention_preview, "retention.preview",
          "What the retention policy would keep and delete now, and why.", response=RetentionPreview),
    Route("GET", f"{API}/{BACKUP_ID}", views.get_backup, "backup.read",
          "One backup with its parts, sizes, checksums, progress and errors.", response=BackupEnvelope, errors=(404,)),
    Route(
        "GET", f"{API}/{BACKUP_ID}/download", download.download_backup, "backup.download",
        "The backup's archive; for several parts, one zip of them and the manifest.",
        errors=(404, 409, 410), produces="application/zip",
    ),
    Route(
        "POST", f"{API}/{BACKUP_ID}/restore", views.restore_backup, "backup.restore",
        "Restore a completed backup in place (after a safety backup), or into another database or directory;"
        " the body repeats its id as confirmation.",
        status=202, request=RestoreRequest, response=RestoreEnvelope, errors=(400, 404, 409, 503),
    ),
    Route(
        "POST", f"{API}/{BACKUP_ID}/verify", views.verify_backup, "backup.verify",
        "Verify a completed backup again: manifest, archives, members, file contents, restore drill.",
        status=202, response=BackupEnvelope, errors=(404, 409),
    ),
    Route(
        "DELETE", f"{API}/{BACKUP_ID}", views.delete_backup, "backup.delete",
        "Delete a backup (its files and its key); refused while it is in progress.",
        status=202, response=BackupEnvelope, errors=(404, 409),
    ),
    Route(
        "GET", f"{API}/restores", views.list_restores, "restore.list",
        "Restores, newest first, with their status, progress and, when one failed, the reason.",
        response=RestorePage, query=RestoreListQuery, errors=(400,),
    ),
    Route("GET", f"{API}/restores/{{restore_id}}", views.get_restore, "restore.read",
          "One restore with its status and, when it failed, the reason.", response=RestoreEnvelope, errors=(404,)),
    Route("GET", "/healthz", healthz, "healthz", "The process is alive.", public=True),
    Route("GET", "/readyz", readyz, "readyz", "MySQL and RabbitMQ are reachable.", public=True, errors=(503,)),
)  # fmt: skip


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.name)


def openapi_path(route_path: str) -> str:
    return route_path.replace(BACKUP_ID, "{backup_id}")


_ERROR_TEXT = {
    400: "Invalid request",
    401: "No valid bearer token",
    403: "The token lacks the admin role",
    404: "No such backup or restore",
    409: "Conflicts with the backup's state",
    412: "The document changed since the revision in If-Match",
    410: "The backup's files are missing from storage",
    431: "A header, or all of them together, too large",
    503: "Not ready, or a server the request needs (the catalog, say) does not answer",
}
# What any admin request may be answered besides its own errors: no valid token, no admin role,
# oversized headers, the catalog unreachable.
_ADMIN_ERRORS = (401, 403, 431, 503)


# What the views accept of each header (views.MAX_IDEMPOTENCY_KEY, views._if_match).
HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Idempotency-Key": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
    "If-Match": {"type": "string", "pattern": r'^\s*(\*|(W/)?"?[0-9]+"?)\s*$'},
}


def query_parameters(query: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    """Each field of a query model as an OpenAPI query parameter with the field's own JSON schema
    (types, ranges, enums); a list travels comma-separated (style form, explode false)."""
    schema = query.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
    schemas.update(schema.pop("$defs", {}))
    parameters = []
    for name, info in query.model_fields.items():
        field = dict(schema["properties"][name])
        field.pop("title", None)
        field.pop("description", None)
        # An optional field is simply left out of a query string; it is never null there.
        alternatives = [option for option in field.pop("anyOf", []) if option != {"type": "null"}]
        if len(alternatives) == 1:
            field.update(alternatives[0])
        elif alternatives:
            field["anyOf"] = alternatives
        if field.get("default", 0) is None:
            del field["default"]
        parameter: dict[str, Any] = {
            "name": name, "in": "query", "required": False, "description": info.description or "", "schema": field,
        }  # fmt: skip
        if field.get("type") == "array":
            parameter.update(style="form", explode=False)
        parameters.append(parameter)
    return parameters


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 description of every route in ROUTES, with the request and response schemas."""
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel], mode: str) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)  # type: ignore[arg-type]
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error = {"application/json": {"schema": ref(ErrorBody, "serialization")}}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {"operationId": route.name, "summary": route.summary, "responses": {}}
        if route.public:
            operation["security"] = []
        path = openapi_path(route.path)
        parameters: list[dict[str, Any]] = []
        for name in ("backup_id", "restore_id"):
            if f"{{{name}}}" in path:
                parameters.append(
                    {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
                )
        if route.query is not None:
            parameters += query_parameters(route.query, schemas)
        for header, description in route.headers.items():
            parameters.append(
                {"name": header, "in": "header", "required": False, "description": description,
                 "schema": HEADER_SCHEMAS.get(header, {"type": "string"})}
            )  # fmt: skip
        if parameters:
            operation["parameters"] = parameters
        if route.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(route.request, "validation")}},
            }
        if route.response is not None:
            content = {"application/json": {"schema": ref(route.response, "serialization")}}
        elif route.produces == "application/zip":
            content = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
        else:
            content = {"application/json": {"schema": {"type": "object"}}}
        operation["responses"][str(route.status)] = {"description": "Success", "content": content}
        codes = route.errors if route.public else (*_ADMIN_ERRORS, *route.errors)
        for code in sorted(set(codes)):
            operation["responses"][str(code)] = {"description": _ERROR_TEXT.get(code, "Error"), "content": error}
        paths.setdefault(path, {})[route.method.lower()] = operation
    for public_path, summary in (("/metrics", "Prometheus metrics."), ("/api/openapi.json", "This document.")):
        paths[public_path] = {
            "get": {
                "operationId": public_path.strip("/").replace("/", ".").replace(".json", ""),
                "summary": summary,
                "security": [],
                "responses": {"200": {"description": "Success"}},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Backup and recovery API",
            "version": "1",
            "description": "Admin API of the backup system. Every /api/admin route needs a bearer JWT with the "
            'admin role. Errors are {"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
    }
