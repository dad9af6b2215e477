"""The gateway's OpenAPI document: valid OpenAPI 3.1, in step with the routes the app registers."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupPart
from backup_common.domain.model import MAX_PART_WARNINGS
from backup_gateway.admin_page import ROUTE_NAMES as ADMIN_PAGE_ROUTES
from backup_gateway.bootstrap import create_app
from backup_gateway.routes import API, ROUTES, openapi_document, openapi_path

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
BACKUP_UUID = "6f1c0d7e-3b52-4c8e-9a51-2f0d5c3e8b11"


@pytest.fixture(scope="module")
def app() -> web.Application:
    """The real application; building it opens nothing (cleanup_ctx only runs on startup)."""
    return create_app(Settings(jwt_secret="j" * 40))


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def registered_operations(app: web.Application) -> set[tuple[str, str]]:
    """(OpenAPI path, lower-case method) of every route on the router, minus aiohttp's implicit HEADs
    and the admin page's files, which are served beside the API but are not part of it."""
    operations = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.name in ADMIN_PAGE_ROUTES:
            continue
        assert route.resource is not None
        operations.add((openapi_path(route.resource.canonical), route.method.lower()))
    return operations


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS}


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")

    validate(document)
    validate(document, cls=OpenAPIV31SpecValidator)


def test_the_document_is_built_afresh_on_each_call() -> None:
    first = openapi_document()
    first["paths"].clear()

    assert openapi_document()["paths"]


def test_every_registered_route_is_documented_with_its_method(app: web.Application, document: dict[str, Any]) -> None:
    registered = registered_operations(app)

    undocumented = registered - documented_operations(document)

    assert len(registered) >= len(ROUTES)
    assert not undocumented, f"routes missing from the OpenAPI document: {sorted(undocumented)}"


def test_every_documented_operation_is_a_registered_route(app: web.Application, document: dict[str, Any]) -> None:
    phantom = documented_operations(document) - registered_operations(app)

    assert not phantom, f"documented but not served: {sorted(phantom)}"


def test_the_app_serves_its_document_and_its_metrics(app: web.Application) -> None:
    registered = registered_operations(app)

    assert ("/api/openapi.json", "get") in registered
    assert ("/metrics", "get") in registered


def test_openapi_path_turns_the_backup_id_pattern_into_a_plain_parameter() -> None:
    paths = {openapi_path(route.path) for route in ROUTES}

    assert f"{API}/{{backup_id}}" in paths
    assert f"{API}/{{backup_id}}/download" in paths
    assert f"{API}/{{backup_id}}/restore" in paths
    assert all("(" not in path and ":" not in path for path in paths), paths


@pytest.mark.parametrize("path", sorted({openapi_path(route.path) for route in ROUTES if route.path.startswith(API)}))
def test_every_admin_path_declares_401_and_403(document: dict[str, Any], path: str) -> None:
    for method, operation in document["paths"][path].items():
        responses = operation["responses"]
        assert "401" in responses, f"{method.upper()} {path} does not declare 401"
        assert "403" in responses, f"{method.upper()} {path} does not declare 403"


def test_every_documented_admin_path_declares_401_and_403_and_needs_the_bearer(document: dict[str, Any]) -> None:
    admin_paths = [path for path in document["paths"] if path.startswith("/api/admin/")]

    assert len(admin_paths) >= 6
    for path in admin_paths:
        for method, operation in document["paths"][path].items():
            assert {"401", "403"} <= set(operation["responses"]), f"{method.upper()} {path}"
            assert operation.get("security") != [], f"{method.upper()} {path} must not opt out of the bearer"


def test_the_document_requires_a_bearer_jwt_by_default(document: dict[str, Any]) -> None:
    assert document["security"] == [{"bearer": []}]
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/api/openapi.json"])
def test_public_paths_opt_out_of_authentication(document: dict[str, Any], path: str) -> None:
    operation = document["paths"][path]["get"]

    assert operation["security"] == []
    assert "401" not in operation["responses"]


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [operation["operationId"] for item in document["paths"].values() for operation in item.values()]

    assert len(ids) == len(set(ids)), ids


def test_every_success_status_of_a_route_is_documented(document: dict[str, Any]) -> None:
    for route in ROUTES:
        operation = document["paths"][openapi_path(route.path)][route.method.lower()]
        assert str(route.status) in operation["responses"], route.name
        for code in route.errors:
            assert str(code) in operation["responses"], f"{route.name} lacks {code}"


def test_every_schema_reference_resolves(document: dict[str, Any]) -> None:
    text = repr(document)
    references = set(re.findall(r"#/components/schemas/([A-Za-z0-9_.-]+)", text))

    missing = references - set(document["components"]["schemas"])

    assert references
    assert not missing


def test_the_download_is_documented_as_a_zip(document: dict[str, Any]) -> None:
    success = document["paths"][f"{API}/{{backup_id}}/download"]["get"]["responses"]["200"]

    assert "application/zip" in success["content"]


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("GET", f"{API}/list", "backup.list"),
        ("GET", f"{API}/stats", "backup.stats"),
        ("GET", f"{API}/schedule", "schedule.read"),
        ("PUT", f"{API}/settings", "settings.update"),
        ("POST", f"{API}/create", "backup.create"),
        ("GET", f"{API}/{BACKUP_UUID}", "backup.read"),
        ("DELETE", f"{API}/{BACKUP_UUID}", "backup.delete"),
        ("GET", f"{API}/{BACKUP_UUID}/download", "backup.download"),
        ("POST", f"{API}/{BACKUP_UUID}/restore", "backup.restore"),
        ("GET", f"{API}/listing", "backup.read"),
        ("GET", "/healthz", "healthz"),
    ],
)
async def test_named_routes_take_precedence_over_a_backup_id(
    app: web.Application, method: str, path: str, name: str
) -> None:
    match = await app.router.resolve(make_mocked_request(method, path, app=app))

    assert match.route.name == name


@pytest.mark.parametrize("reserved", ["list", "stats", "schedule", "settings", "create"])
async def test_a_reserved_name_is_never_taken_for_a_backup_id_to_delete(app: web.Application, reserved: str) -> None:
    match = await app.router.resolve(make_mocked_request("DELETE", f"{API}/{reserved}", app=app))

    assert match.route.name != "backup.delete"
    assert "backup_id" not in match


def _parameter(document: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    found = [p for p in document["paths"][path][method].get("parameters", []) if p["name"] == name]
    assert len(found) == 1, (path, method, name)
    parameter: dict[str, Any] = found[0]
    return parameter


@pytest.mark.parametrize("path", [f"{API}/list", f"{API}/restores"])
def test_the_paging_parameters_are_integers_with_their_real_ranges(document: dict[str, Any], path: str) -> None:
    limit = _parameter(document, path, "get", "limit")["schema"]
    offset = _parameter(document, path, "get", "offset")["schema"]

    assert (limit["type"], limit["minimum"], limit["maximum"], limit["default"]) == ("integer", 1, 500, 50)
    assert (offset["type"], offset["minimum"], offset["maximum"]) == ("integer", 0, 10**9)


def test_list_filters_are_comma_separated_lists_of_their_enum(document: dict[str, Any]) -> None:
    parameter = _parameter(document, f"{API}/list", "get", "type")

    assert (parameter["style"], parameter["explode"]) == ("form", False)
    assert parameter["schema"] == {"type": "array", "items": {"$ref": "#/components/schemas/BackupType"}}
    assert set(document["components"]["schemas"]["BackupType"]["enum"]) == {"full", "database", "files", "incremental"}


def test_the_backup_id_filter_of_restores_is_a_uuid_never_null(document: dict[str, Any]) -> None:
    assert _parameter(document, f"{API}/restores", "get", "backup_id")["schema"] == {"type": "string", "format": "uuid"}


def test_headers_state_their_lengths_and_patterns(document: dict[str, Any]) -> None:
    key = _parameter(document, f"{API}/create", "post", "Idempotency-Key")["schema"]
    if_match = _parameter(document, f"{API}/settings", "put", "If-Match")["schema"]

    assert (key["minLength"], key["maxLength"]) == (1, 255)
    assert all(re.match(if_match["pattern"], value) for value in ('"3"', 'W/"3"', "3", "*"))
    assert not re.match(if_match["pattern"], "three")


def test_bodies_state_their_limits(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    restore = schemas["RestoreRequest"]["properties"]

    assert restore["parts"]["uniqueItems"] is True
    assert restore["confirm"]["maxLength"] == 64
    assert schemas["TargetIn"]["properties"]["database"]["pattern"] == "^[A-Za-z0-9_$-]{1,64}$"
    assert schemas["CreateBackupRequest"]["properties"]["description"]["maxLength"] == 500
    assert schemas["RetentionPolicy"]["properties"]["keep_last"] == {
        "default": 3, "description": "Most recent completed backups always kept.", "maximum": 1000, "minimum": 1,
        "title": "Keep Last", "type": "integer",
    }  # fmt: skip


def test_a_backup_shows_its_warnings_with_their_limit_and_a_listed_one_only_their_count(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    detail = schemas["BackupDetailOut"]
    listed = schemas["BackupOut"]

    assert schemas["BackupEnvelope"]["properties"]["backup"] == {"$ref": "#/components/schemas/BackupDetailOut"}
    assert schemas["BackupPage"]["properties"]["backups"]["items"] == {"$ref": "#/components/schemas/BackupOut"}
    assert {"warnings", "warning_count"} <= set(detail["required"])
    assert detail["properties"]["warnings"]["items"] == {"$ref": "#/components/schemas/WarningOut"}
    assert detail["properties"]["warnings"]["maxItems"] == MAX_PART_WARNINGS * len(BackupPart)
    assert set(schemas["WarningOut"]["required"]) == {"part", "path", "reason"}
    assert "warnings" not in listed["properties"]
    assert listed["properties"]["warning_count"]["minimum"] == 0


def test_every_admin_operation_declares_431_for_oversized_headers_and_503_for_an_unreachable_catalog(
    document: dict[str, Any],
) -> None:
    for path, item in document["paths"].items():
        if path.startswith("/api/admin/"):
            for method, operation in item.items():
                assert {"431", "503"} <= set(operation["responses"]), (path, method)
