"""The admin API served in-process against a real MariaDB catalog and a real RabbitMQ."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
import zipfile
from collections.abc import Callable
from typing import Any

import aio_pika
import jwt
import pytest
from aio_pika.abc import AbstractChannel

from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupRequested, DeleteRequested, RestoreRequested, parse_event
from backup_gateway.routes import ROUTES, openapi_path
from tests.integration.gateway_support import Gateway, running_gateway

pytestmark = pytest.mark.integration

API = "/api/admin/backup"


def concrete(path: str, backup_id: str) -> str:
    return openapi_path(path).replace("{backup_id}", backup_id)


ADMIN_ROUTES = [route for route in ROUTES if not route.public]


async def test_every_admin_route_answers_401_without_a_token(gateway: Gateway) -> None:
    some_id = str(uuid.uuid4())
    for route in ADMIN_ROUTES:
        status, body = await gateway.call(route.method, concrete(route.path, some_id), {}, headers={})
        assert status == 401, (route.method, route.path, body)
        assert body["error"]["code"] == "unauthorized"


async def test_an_unknown_path_under_the_admin_prefix_is_denied_before_it_is_looked_up(gateway: Gateway) -> None:
    status, body = await gateway.call("GET", "/api/admin/secret/things", headers={})
    assert status == 401
    assert body["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda s: "not.a.jwt", id="garbage"),
        pytest.param(lambda s: jwt.encode({"sub": "x", "role": "admin", "exp": 1}, s.jwt_secret.get_secret_value()),
                     id="expired"),
        pytest.param(lambda s: jwt.encode({"sub": "x", "role": "admin"}, s.jwt_secret.get_secret_value()),
                     id="no-exp"),
        pytest.param(lambda s: jwt.encode({"sub": "x", "role": "admin", "exp": 2**33}, "another-secret" * 4),
                     id="wrong-key"),
    ],
)  # fmt: skip
async def test_an_invalid_token_answers_401(gateway: Gateway, make_token: Callable[[Settings], str]) -> None:
    headers = {"Authorization": f"Bearer {make_token(gateway.settings)}"}
    status, body = await gateway.call("GET", f"{API}/list", headers=headers)
    assert status == 401, body
    assert body["error"]["code"] == "unauthorized"


async def test_every_admin_route_answers_403_to_a_valid_token_without_the_admin_role(gateway: Gateway) -> None:
    some_id = str(uuid.uuid4())
    headers = gateway.auth(roles=("viewer",), subject="bob")
    for route in ADMIN_ROUTES:
        status, body = await gateway.call(route.method, concrete(route.path, some_id), {}, headers=headers)
        assert status == 403, (route.method, route.path, body)
        assert body["error"]["code"] == "forbidden"


async def test_denied_and_allowed_requests_are_both_in_the_audit_log(gateway: Gateway) -> None:
    await gateway.call("GET", f"{API}/list", headers={})
    await gateway.call("GET", f"{API}/stats", headers=gateway.auth(roles=("viewer",), subject="bob"))
    backup = await gateway.create("database")
    rows = await gateway.rows("SELECT actor, action, target, outcome, status_code, source_address FROM audit_log")
    entries = [(r["actor"], r["action"], r["outcome"], r["status_code"]) for r in rows]
    assert ("anonymous", "backup.list", "denied", 401) in entries
    assert ("bob", "backup.stats", "denied", 403) in entries
    created = [r for r in rows if r["action"] == "backup.create"]
    assert created[0]["actor"] == "alice"
    assert created[0]["target"] == backup["id"]
    assert created[0]["outcome"] == "allowed"
    assert all(r["source_address"] for r in rows)


async def test_the_audit_log_refuses_changes_and_deletions(gateway: Gateway) -> None:
    await gateway.call("GET", f"{API}/list", headers={})
    with pytest.raises(Exception, match="append-only"):
        await gateway.rows("UPDATE audit_log SET actor = 'mallory'")
    with pytest.raises(Exception, match="append-only"):
        await gateway.rows("DELETE FROM audit_log")


@pytest.mark.parametrize(
    ("backup_type", "parts"),
    [("full", ["database", "files"]), ("database", ["database"]), ("files", ["files"]), ("incremental", ["files"])],
)
async def test_create_answers_202_with_a_pending_backup_of_each_type(
    gateway: Gateway, backup_type: str, parts: list[str]
) -> None:
    backup = await gateway.create(backup_type, description="before the upgrade")
    assert backup["type"] == backup_type
    assert backup["status"] == "pending"
    assert backup["description"] == "before the upgrade"
    assert backup["requested_by"] == "alice"
    assert [part["part"] for part in backup["parts"]] == parts
    assert all(part["status"] == "pending" for part in backup["parts"])
    assert backup["storage_path"] == f"{backup['created_at'][:10]}/{backup['id']}"
    outbox = await gateway.rows("SELECT routing_key, payload FROM outbox WHERE correlation_id = %s", (backup["id"],))
    event = parse_event(outbox[0]["payload"])
    assert isinstance(event, BackupRequested)
    assert [part.value for part in event.parts] == parts


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"type": "weekly"}, "allowed types: full, database, files, incremental"),
        ({}, "type"),
        ({"type": "full", "colour": "blue"}, "colour"),
        ({"type": "full", "description": "x" * 501}, "description"),
        ([1, 2], "body"),
    ],
)
async def test_create_refuses_a_bad_body_with_400_naming_the_problem(
    gateway: Gateway, body: Any, fragment: str
) -> None:
    status, answer = await gateway.call("POST", f"{API}/create", body)
    assert status == 400, answer
    assert fragment in json.dumps(answer["error"])
    assert await gateway.rows("SELECT id FROM backups") == []


async def test_create_refuses_a_body_that_is_not_json(gateway: Gateway) -> None:
    response = await gateway.client.post(f"{API}/create", data=b"{type: full", headers=gateway.auth())
    assert response.status == 400
    assert "not valid JSON" in (await response.json())["error"]["message"]


async def test_a_retried_create_with_the_same_idempotency_key_returns_the_same_backup(gateway: Gateway) -> None:
    headers = gateway.auth() | {"Idempotency-Key": "nightly-2026-11-26"}
    first_status, first = await gateway.call("POST", f"{API}/create", {"type": "full"}, headers=headers)
    second_status, second = await gateway.call("POST", f"{API}/create", {"type": "full"}, headers=headers)
    assert (first_status, second_status) == (202, 202)
    assert first["backup"]["id"] == second["backup"]["id"]
    assert len(await gateway.rows("SELECT id FROM backups")) == 1
    assert len(await gateway.rows("SELECT id FROM outbox")) == 1


async def test_concurrent_creates_with_one_idempotency_key_make_one_backup(gateway: Gateway) -> None:
    headers = gateway.auth() | {"Idempotency-Key": "burst"}
    answers = await asyncio.gather(
        *(gateway.call("POST", f"{API}/create", {"type": "files"}, headers=headers) for _ in range(8))
    )
    assert {status for status, _ in answers} == {202}
    assert len({body["backup"]["id"] for _, body in answers}) == 1
    assert len(await gateway.rows("SELECT id FROM backups")) == 1


async def test_an_idempotency_key_reused_for_another_request_is_a_conflict(gateway: Gateway) -> None:
    headers = gateway.auth() | {"Idempotency-Key": "k1"}
    await gateway.call("POST", f"{API}/create", {"type": "full"}, headers=headers)
    status, body = await gateway.call("POST", f"{API}/create", {"type": "database"}, headers=headers)
    assert status == 409
    assert body["error"]["code"] == "idempotency_key_reused"


async def test_list_is_newest_first_paginated_and_filtered(gateway: Gateway) -> None:
    made = [await gateway.create(kind) for kind in ("full", "database", "files", "incremental", "database")]
    await gateway.complete(made[1])
    status, page = await gateway.call("GET", f"{API}/list?limit=2")
    assert status == 200
    assert page["total"] == 5
    assert [b["id"] for b in page["backups"]] == [made[4]["id"], made[3]["id"]]
    _, rest = await gateway.call("GET", f"{API}/list?limit=2&offset=4")
    assert [b["id"] for b in rest["backups"]] == [made[0]["id"]]
    _, databases = await gateway.call("GET", f"{API}/list?type=database")
    assert [b["id"] for b in databases["backups"]] == [made[4]["id"], made[1]["id"]]
    _, done = await gateway.call("GET", f"{API}/list?type=database,full&status=completed")
    assert [b["id"] for b in done["backups"]] == [made[1]["id"]]


@pytest.mark.parametrize("query", ["type=weekly", "status=lost", "limit=0", "limit=x", "offset=-1", "colour=red"])
async def test_list_refuses_a_bad_query_with_400(gateway: Gateway, query: str) -> None:
    status, body = await gateway.call("GET", f"{API}/list?{query}")
    assert status == 400, body
    assert body["error"]["message"]


async def test_one_backup_is_shown_with_its_parts_sizes_and_checksums(gateway: Gateway) -> None:
    backup = await gateway.create("full")
    await gateway.complete(backup)
    status, body = await gateway.call("GET", f"{API}/{backup['id']}")
    assert status == 200
    shown = body["backup"]
    assert shown["status"] == "completed"
    assert shown["progress"] == {"parts_completed": 2, "parts_total": 2}
    assert {p["part"]: p["size_bytes"] for p in shown["parts"]} == {
        "database": len(b"archive bytesdatabase"),
        "files": len(b"archive bytesfiles"),
    }
    assert all(len(p["sha256"]) == 64 for p in shown["parts"])


@pytest.mark.parametrize("backup_id", ["not-a-uuid", str(uuid.uuid4()), "%2e%2e"])
async def test_a_malformed_or_unknown_id_answers_404(gateway: Gateway, backup_id: str) -> None:
    for method, suffix in (("GET", ""), ("GET", "/download"), ("DELETE", ""), ("POST", "/restore")):
        status, body = await gateway.call(method, f"{API}/{backup_id}{suffix}", {"confirm": backup_id})
        assert status == 404, (method, suffix, body)
        assert body["error"]["code"] == "not_found"


async def test_a_wrong_method_answers_405_as_json(gateway: Gateway) -> None:
    for method, path in (("DELETE", f"{API}/list"), ("POST", f"{API}/stats"), ("GET", f"{API}/create")):
        status, body = await gateway.call(method, path)
        assert status == 405, (method, path)
        assert body["error"]["code"] == "method_not_allowed"


async def test_download_is_refused_with_409_until_the_backup_is_completed(gateway: Gateway) -> None:
    backup = await gateway.create("database")
    status, body = await gateway.call("GET", f"{API}/{backup['id']}/download")
    assert status == 409
    assert "pending" in body["error"]["message"]


async def test_download_of_a_one_part_backup_streams_its_archive(gateway: Gateway) -> None:
    backup = await gateway.create("database")
    await gateway.complete(backup, content=b"\x00" * 3_000_000)
    response = await gateway.client.get(f"{API}/{backup['id']}/download", headers=gateway.auth())
    data = await response.read()
    assert response.status == 200
    assert data == b"\x00" * 3_000_000 + b"database"
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Content-Disposition"].endswith(f'{backup["id"]}-database.zip"')


async def test_download_of_a_full_backup_is_one_zip_of_its_parts_and_manifest(gateway: Gateway) -> None:
    backup = await gateway.create("full")
    await gateway.complete(backup, content=b"payload-" * 100_000)
    response = await gateway.client.get(f"{API}/{backup['id']}/download", headers=gateway.auth())
    data = await response.read()
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        assert sorted(bundle.namelist()) == ["database.zip", "files.zip", "manifest.json"]
        assert bundle.read("files.zip") == b"payload-" * 100_000 + b"files"
        assert json.loads(bundle.read("manifest.json"))["id"] == backup["id"]


async def test_download_of_a_backup_missing_from_storage_answers_410(gateway: Gateway) -> None:
    backup = await gateway.create("database")
    directory = await gateway.complete(backup)
    (directory / "database.zip").unlink()
    status, body = await gateway.call("GET", f"{API}/{backup['id']}/download")
    assert status == 410
    assert "database.zip" in body["error"]["message"]


async def test_restore_needs_the_backup_id_repeated_as_confirmation(gateway: Gateway) -> None:
    backup = await gateway.create("full")
    await gateway.complete(backup)
    for body in ({}, {"confirm": "yes"}, {"confirm": str(uuid.uuid4())}, None):
        status, answer = await gateway.call("POST", f"{API}/{backup['id']}/restore", body)
        assert status == 400, (body, answer)
        assert answer["error"]["code"] == "invalid_request"
    assert await gateway.rows("SELECT id FROM restores") == []


async def test_restore_in_place_answers_202_and_requests_its_safety_backup_first(gateway: Gateway) -> None:
    backup = await gateway.create("full")
    await gateway.complete(backup)
    status, body = await gateway.call("POST", f"{API}/{backup['id']}/restore", {"confirm": backup["id"]})
    assert status == 202, body
    restore = body["restore"]
    assert (restore["status"], restore["safety_backup"]) == ("pending", True)
    assert [(p["part"], p["status"]) for p in restore["parts"]] == [("database", "pending"), ("files", "pending")]
    assert restore["target"]["kind"] == "in_place"
    rows = await gateway.rows("SELECT type, trigger_source FROM backups WHERE id = %s", (restore["safety_backup_id"],))
    assert rows == [{"type": "full", "trigger_source": "pre-restore"}]
    assert await gateway.rows("SELECT 1 FROM outbox WHERE routing_key = 'restore.requested'") == []


async def test_a_restore_elsewhere_is_requested_at_once(gateway: Gateway) -> None:
    backup = await gateway.create("database")
    await gateway.complete(backup)
    body = {"confirm": backup["id"], "target": {"database": f"backup_copy_{uuid.uuid4().hex[:8]}"}}
    status, answer = await gateway.call("POST", f"{API}/{backup['id']}/restore", body)
    assert status == 202, answer
    rows = await gateway.rows("SELECT payload FROM outbox WHERE routing_key = 'restore.requested'")
    event = parse_event(rows[0]["payload"])
    assert isinstance(event, RestoreRequested)
    assert str(event.restore_id) == answer["restore"]["id"]
    assert answer["restore"]["safety_backup_id"] is None


async def test_restores_are_read_back_alone_and_listed_newest_first_with_filters(gateway: Gateway) -> None:
    backup = await gateway.create("database")
    await gateway.complete(backup)
    made = []
    for name in ("a", "b"):
        body = {"confirm": backup["id"], "target": {"database": f"backup_{name}_{uuid.uuid4().hex[:8]}"}}
        status, answer = await gateway.call("POST", f"{API}/{backup['id']}/restore", body)
        assert status == 202, answer
        made.append(answer["restore"])

    status, one = await gateway.call("GET", f"{API}/restores/{made[0]['id']}")
    assert status == 200, one
    assert one["restore"] == made[0]
    status, page = await gateway.call("GET", f"{API}/restores?limit=1")
    assert status == 200, page
    assert (page["total"], [r["id"] for r in page["restores"]]) == (2, [made[1]["id"]])
    status, page = await gateway.call("GET", f"{API}/restores?status=completed,failed&backup_id={backup['id']}")
    assert (status, page["total"]) == (200, 0)
    status, page = await gateway.call("GET", f"{API}/restores?status=pending&backup_id={backup['id']}")
    assert (status, page["total"]) == (200, 2)
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        status, body = await gateway.call("GET", f"{API}/restores/{missing}")
        assert status == 404
        assert body["error"]["message"] == f"no restore with id {missing}"
    for query in ("page=2", "status=done", "backup_id=nope"):
        status, body = await gateway.call("GET", f"{API}/restores?{query}")
        assert status == 400, (query, body)


async def test_every_bad_restore_request_is_refused_with_its_reason_and_records_nothing(gateway: Gateway) -> None:
    full = await gateway.create("full")
    await gateway.complete(full)
    database_only = await gateway.create("database")
    await gateway.complete(database_only)
    restore_dir = str(gateway.settings.restore_dir.resolve())
    catalog = gateway.settings.catalog.database
    source = gateway.settings.source.database
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"parts": ["tapes"]}, 400, "invalid_request"),
        ({"parts": []}, 400, "invalid_request"),
        ({"target": {"database": "mysql"}, "parts": ["database"]}, 400, "belongs to the server"),
        ({"target": {"database": "information_schema"}, "parts": ["database"]}, 400, "belongs to the server"),
        ({"target": {"database": catalog}, "parts": ["database"]}, 400, "backup catalog"),
        ({"target": {"database": source}, "parts": ["database"]}, 400, "is the source database"),
        ({"target": {"database": "no/slash"}, "parts": ["database"]}, 400, "invalid database name"),
        ({"target": {"database": "x", "directory": "/y"}}, 400, "exactly one of"),
        ({"target": {}}, 400, "exactly one of"),
        ({"target": {"database": "copy"}, "parts": ["database", "files"]}, 400, "the database part only"),
        ({"target": {"directory": restore_dir + "/x"}, "parts": ["database"]}, 400, "needs the files part"),
        ({"target": {"database": "copy"}, "parts": ["database"], "safety_backup": True}, 400, "only before"),
        ({"target": {"directory": "/etc"}, "parts": ["files"]}, 400, "must be below the restore directory"),
        ({"target": {"directory": restore_dir + "/../x"}, "parts": ["files"]}, 400, "must be below"),
        ({"target": {"directory": "relative"}, "parts": ["files"]}, 400, "must be an absolute path"),
        ({"tables": ["ghost"]}, 400, "unknown_tables"),
        ({"paths": ["nowhere/at/all"]}, 400, "unknown_paths"),
        ({"paths": ["../etc"]}, 400, "unknown_paths"),
        ({"tables": ["x"], "parts": ["files"]}, 400, "tables select from the database part"),
        ({"extra": 1}, 400, "invalid_request"),
    ]
    for extra, status_wanted, reason in cases:
        body = {"confirm": full["id"], **extra}
        status, answer = await gateway.call("POST", f"{API}/{full['id']}/restore", body)
        assert status == status_wanted, (extra, answer)
        assert reason in (answer["error"]["code"] + " " + answer["error"]["message"]), (extra, answer)
    assert await gateway.rows("SELECT id FROM restores") == []
    status, answer = await gateway.call(
        "POST", f"{API}/{database_only['id']}/restore", {"confirm": database_only["id"], "parts": ["files"]}
    )
    assert (status, answer["error"]["code"]) == (400, "part_not_in_backup")


async def test_a_second_restore_of_one_target_and_a_restore_of_a_backup_being_deleted_are_conflicts(
    gateway: Gateway,
) -> None:
    backup = await gateway.create("database")
    await gateway.complete(backup)
    path = f"{API}/{backup['id']}/restore"
    status, first = await gateway.call("POST", path, {"confirm": backup["id"]})
    assert status == 202, first
    status, second = await gateway.call("POST", path, {"confirm": backup["id"], "safety_backup": False})
    assert (status, second["error"]["code"]) == (409, "restore_in_progress"), second
    assert first["restore"]["id"] in second["error"]["message"]
    status, refused = await gateway.call("DELETE", f"{API}/{backup['id']}")
    assert (status, refused["error"]["code"]) == (409, "backup_being_restored"), refused

    other = await gateway.create("database")
    await gateway.complete(other)
    status, _ = await gateway.call("DELETE", f"{API}/{other['id']}")
    assert status == 202
    status, body = await gateway.call("POST", f"{API}/{other['id']}/restore", {"confirm": other["id"]})
    assert (status, body["error"]["code"]) == (409, "backup_not_restorable"), body


async def test_restore_of_a_backup_that_is_not_completed_is_a_conflict(gateway: Gateway) -> None:
    backup = await gateway.create("files")
    status, body = await gateway.call("POST", f"{API}/{backup['id']}/restore", {"confirm": backup["id"]})
    assert status == 409
    assert body["error"]["code"] == "backup_not_restorable"


async def test_delete_is_refused_while_the_backup_is_in_progress(gateway: Gateway) -> None:
    backup = await gateway.create("full")
    await gateway.rows("UPDATE backups SET status = 'running' WHERE id = %s", (backup["id"],))
    status, body = await gateway.call("DELETE", f"{API}/{backup['id']}")
    assert status == 409
    assert body["error"]["code"] == "backup_in_progress"


async def test_delete_of_a_finished_backup_answers_202_and_requests_the_deletion_again_when_repeated(
    gateway: Gateway,
) -> None:
    backup = await gateway.create("database")
    await gateway.fail(backup)
    status, body = await gateway.call("DELETE", f"{API}/{backup['id']}")
    assert status == 202
    assert body["backup"]["status"] == "deleting"
    again_status, _ = await gateway.call("DELETE", f"{API}/{backup['id']}")
    assert again_status == 202
    rows = await gateway.rows("SELECT payload FROM outbox WHERE routing_key = 'backup.delete.requested'")
    # The second asks again: a deletion that failed half-way is retried, and deleting is idempotent.
    assert len(rows) == 2
    assert all(isinstance(parse_event(row["payload"]), DeleteRequested) for row in rows)


async def test_stats_count_sizes_outcomes_and_storage(gateway: Gateway) -> None:
    full = await gateway.create("full")
    await gateway.complete(full)
    database = await gateway.create("database")
    await gateway.complete(database)
    await gateway.fail(await gateway.create("database"))
    await gateway.create("incremental")
    status, stats = await gateway.call("GET", f"{API}/stats")
    assert status == 200
    assert stats["total"] == 4
    assert stats["by_type"] == {"full": 1, "database": 2, "files": 0, "incremental": 1}
    assert stats["by_status"] == {"completed": 2, "failed": 1, "pending": 1}
    full_bytes = len(b"archive bytesdatabase") + len(b"archive bytesfiles")
    assert stats["bytes_by_type"]["full"] == full_bytes
    assert stats["bytes_total"] == full_bytes + len(b"archive bytesdatabase")
    assert stats["last_success"]["database"]["id"] == database["id"]
    assert stats["last_success"]["files"] is None
    assert stats["last_30_days"] == {"completed": 2, "failed": 1, "success_rate": round(2 / 3, 4)}
    assert stats["storage"]["used_bytes"] == stats["bytes_total"]
    assert stats["storage"]["filesystem_free_bytes"] > 0


@pytest.mark.parametrize("name", ["schedule", "settings"])
async def test_documents_start_from_the_defaults_and_a_valid_replacement_is_kept(gateway: Gateway, name: str) -> None:
    status, first = await gateway.call("GET", f"{API}/{name}")
    assert status == 200
    assert first["revision"] == 1
    assert first["updated_by"] == "defaults"
    document = first["document"]
    if name == "schedule":
        assert {entry["name"] for entry in document["schedules"]} >= {"daily", "weekly-full", "monthly-archive"}
        document["schedules"][0]["cron"] = "30 1 * * *"
    else:
        document["retention"]["keep_daily"] = 14
    status, saved = await gateway.call("PUT", f"{API}/{name}", document)
    assert status == 200, saved
    assert saved["revision"] == 2
    assert saved["updated_by"] == "alice"
    _, read = await gateway.call("GET", f"{API}/{name}")
    assert read["document"] == document


@pytest.mark.parametrize(
    ("name", "document", "field"),
    [
        ("schedule", {"schedules": [{"name": "n", "type": "full", "cron": "0 25 * * *"}]}, "schedules.0.cron"),
        ("schedule", {"schedules": [{"name": "n", "type": "hourly", "cron": "0 * * * *"}]}, "schedules.0.type"),
        ("schedule", {"timezone": "Mars/Olympus", "schedules": []}, "timezone"),
        ("settings", {"retention": {"keep_daily": -1}}, "retention.keep_daily"),
        ("settings", {"retension": {}}, "retension"),
    ],
)
async def test_an_invalid_document_is_refused_with_400_and_the_old_one_kept(
    gateway: Gateway, name: str, document: dict[str, Any], field: str
) -> None:
    _, before = await gateway.call("GET", f"{API}/{name}")
    status, body = await gateway.call("PUT", f"{API}/{name}", document)
    assert status == 400, body
    assert field in [detail["field"] for detail in body["error"]["details"]]
    _, after = await gateway.call("GET", f"{API}/{name}")
    assert after == before


async def test_health_readiness_metrics_and_openapi_are_public(gateway: Gateway) -> None:
    status, health = await gateway.call("GET", "/healthz", headers={})
    assert (status, health) == (200, {"status": "ok"})
    for _ in range(50):
        status, ready = await gateway.call("GET", "/readyz", headers={})
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200, ready
    assert ready["checks"] == {"mysql": "ok", "rabbitmq": "ok"}
    await gateway.call("GET", f"{API}/list")
    metrics = await (await gateway.client.get("/metrics")).text()
    assert 'backup_http_requests_total{method="GET",route="backup.list",status="200"}' in metrics
    assert "backup_outbox_pending_events" in metrics
    status, spec = await gateway.call("GET", "/api/openapi.json", headers={})
    assert status == 200
    assert spec["openapi"].startswith("3.")


async def test_readiness_reports_an_unreachable_broker(settings: Settings) -> None:
    async with running_gateway(settings, amqp_url="amqp://guest:guest@127.0.0.1:1/") as gateway:
        status, ready = await gateway.call("GET", "/readyz", headers={})
    assert status == 503
    assert ready["checks"] == {"mysql": "ok", "rabbitmq": "unavailable"}


async def bind_queue(channel: AbstractChannel, settings: Settings, name: str) -> aio_pika.abc.AbstractQueue:
    exchange = await channel.declare_exchange(settings.amqp_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(name, durable=True)
    await queue.bind(exchange, routing_key="backup.requested")
    return queue


async def collect(queue: aio_pika.abc.AbstractQueue, count: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    received: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with asyncio.timeout(15), queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            received.append(message)
            if len(received) == count:
                break
    return received


async def test_each_created_backup_publishes_one_backup_requested_event(
    gateway: Gateway, channel: AbstractChannel, declare_queue_name: Callable[[str], str]
) -> None:
    queue = await bind_queue(channel, gateway.settings, declare_queue_name("observer"))
    made = [await gateway.create(kind) for kind in ("full", "database", "files", "incremental")]
    messages = await collect(queue, 4)
    events = [parse_event(message.body) for message in messages]
    assert sorted(str(e.backup_id) for e in events) == sorted(b["id"] for b in made)
    for message, event in zip(messages, events, strict=True):
        assert message.message_id == str(event.event_id)
        assert message.correlation_id == str(event.backup_id)
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    # The relay marks rows sent after the broker confirmed them, which may be after delivery.
    async with asyncio.timeout(10):
        while True:
            if not await gateway.rows("SELECT id FROM outbox WHERE sent_at IS NULL"):
                break
            await asyncio.sleep(0.05)


async def test_a_backup_requested_while_rabbitmq_is_down_is_published_once_it_is_back(
    settings: Settings, channel: AbstractChannel, declare_queue_name: Callable[[str], str]
) -> None:
    queue = await bind_queue(channel, settings, declare_queue_name("late"))
    async with running_gateway(settings, amqp_url="amqp://guest:guest@127.0.0.1:1/") as down:
        backup = await down.create("full")
        await asyncio.sleep(0.5)
        unsent = await down.rows("SELECT event_id FROM outbox WHERE sent_at IS NULL")
        assert len(unsent) == 1
        # Same catalog, broker reachable again: the relay of a gateway that can reach it delivers the event.
        from backup_common.adapters.amqp.link import BrokerLink
        from backup_common.adapters.amqp.topology import Topology
        from backup_common.adapters.mysql.outbox import OutboxRelay

        link = BrokerLink(settings.amqp_url.get_secret_value(), Topology(settings))
        link.start()
        relay = OutboxRelay(down.pool, poll_seconds=0.1)
        task = asyncio.create_task(relay.run(link))
        try:
            messages = await collect(queue, 1)
        finally:
            task.cancel()
            await link.close()
        assert str(parse_event(messages[0].body).backup_id) == backup["id"]
        assert messages[0].message_id == unsent[0]["event_id"]


async def test_metrics_and_the_audit_log_record_an_error_with_its_own_status(gateway: Gateway) -> None:
    missing = str(uuid.uuid4())
    status, _ = await gateway.call("GET", f"{API}/{missing}")
    assert status == 404
    metrics = await (await gateway.client.get("/metrics")).text()
    assert 'backup_http_requests_total{method="GET",route="backup.read",status="404"} 1.0' in metrics
    rows = await gateway.rows("SELECT outcome, status_code FROM audit_log WHERE target = %s", (missing,))
    assert rows == [{"outcome": "failed", "status_code": 404}]
