"""Hostile and unlucky requests to the admin API: each is answered with a 4xx or 503 JSON error and
audited, never a 500; a damaged archive is never served as a whole one."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import jwt
import pytest
from asyncmy.errors import OperationalError

from backup_common.adapters.runtime.service import RUNNING
from tests.integration.gateway_support import Gateway

pytestmark = pytest.mark.integration

API = "/api/admin/backup"


async def send(gateway: Gateway, method: str, path: str, data: str, headers: dict[str, str]) -> tuple[int, Any]:
    response = await gateway.client.request(method, path, data=data, headers=headers)
    return response.status, await response.json()


async def audit_rows(gateway: Gateway, action: str) -> list[tuple[str, str, int]]:
    rows = await gateway.rows("SELECT actor, outcome, status_code FROM audit_log WHERE action = %s", (action,))
    return [(row["actor"], row["outcome"], row["status_code"]) for row in rows]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param('{"type": "full", "description": ' + "1" * 5000 + "}", "more than 4300 digits", id="long-number"),
        pytest.param("[" * 100_000 + "]" * 100_000, "nests arrays or objects", id="deep-nesting"),
    ],
)
async def test_a_body_json_cannot_safely_read_is_refused_with_400_and_audited(
    gateway: Gateway, body: str, message: str
) -> None:
    status, answer = await send(gateway, "POST", f"{API}/create", body, gateway.auth())

    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    assert message in answer["error"]["message"]
    assert await audit_rows(gateway, "backup.create") == [("alice", "failed", 400)]


async def test_a_patch_nested_deeper_than_any_document_is_refused_with_400_and_audited(gateway: Gateway) -> None:
    patch = '{"retention": ' * 900 + "1" + "}" * 900

    status, answer = await send(gateway, "PATCH", f"{API}/settings", patch, gateway.auth())

    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    assert "nests arrays or objects more than 32 deep" in answer["error"]["message"]
    assert await audit_rows(gateway, "settings.patch") == [("alice", "failed", 400)]


@pytest.mark.parametrize(
    "query",
    [
        "list?offset=18446744073709551616",
        "list?limit=18446744073709551616",
        "list?offset=1000000001",
        pytest.param("list?limit=" + "9" * 5000, id="list?limit=5000-digits"),
        "restores?offset=18446744073709551616",
    ],
)
async def test_a_page_beyond_the_ranges_is_refused_with_400_and_audited(gateway: Gateway, query: str) -> None:
    status, answer = await gateway.call("GET", f"{API}/{query}")

    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    action = "backup.list" if query.startswith("list") else "restore.list"
    assert await audit_rows(gateway, action) == [("alice", "failed", 400)]


async def test_a_token_whose_subject_is_300_characters_is_refused_with_401_and_audited(gateway: Gateway) -> None:
    status, answer = await gateway.call(
        "POST", f"{API}/create", {"type": "full"}, headers=gateway.auth(subject="s" * 300)
    )

    assert (status, answer["error"]["code"]) == (401, "unauthorized")
    assert answer["error"]["message"] == "the token's sub claim is too long (at most 255 characters)"
    assert await audit_rows(gateway, "backup.create") == [("anonymous", "denied", 401)]
    assert await gateway.rows("SELECT id FROM backups") == []


async def test_a_token_whose_exp_is_a_string_is_refused_with_401(gateway: Gateway) -> None:
    secret = gateway.settings.jwt_secret
    assert secret is not None
    token = jwt.encode({"sub": "alice", "role": "admin", "exp": "99999999999"}, secret.get_secret_value())

    status, answer = await gateway.call("GET", f"{API}/list", headers={"Authorization": f"Bearer {token}"})

    assert (status, answer["error"]["code"]) == (401, "unauthorized")
    assert "'exp' claim must be a number" in answer["error"]["message"]


async def test_a_100_kb_authorization_header_answers_431_in_json_is_audited_and_never_logged(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "Bearer " + "q" * 100_000

    status, answer = await send(gateway, "GET", f"{API}/list", "", {"Authorization": secret})

    assert (status, answer["error"]["code"]) == (431, "headers_too_large")
    assert "Authorization" in answer["error"]["message"]
    assert await audit_rows(gateway, "backup.list") == [("anonymous", "denied", 431)]
    assert "q" * 32 not in caplog.text


async def test_a_header_beyond_what_the_parser_reads_is_refused_without_being_logged(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    response = await gateway.client.get(f"{API}/list", headers={"Authorization": "Bearer " + "q" * 300_000})

    assert 400 <= response.status < 500
    assert "q" * 32 not in caplog.text


class _Refused:
    """What a pool's acquire() gives when the server refuses the connection."""

    async def __aenter__(self) -> Any:
        raise OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connection refused)")

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        return None


async def test_an_unreachable_catalog_answers_503_unavailable_and_the_attempt_is_audited(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = gateway.client.app[RUNNING].pool
    acquire = pool.acquire
    refusals = [_Refused()]  # the request's own connection fails; the audit record's is made again

    monkeypatch.setattr(pool, "acquire", lambda: refusals.pop() if refusals else acquire())
    status, answer = await gateway.call("GET", f"{API}/list")

    assert (status, answer["error"]["code"]) == (503, "unavailable")
    assert "catalog" in answer["error"]["message"]
    assert await audit_rows(gateway, "backup.list") == [("alice", "failed", 503)]


@pytest.mark.parametrize(
    ("name", "patch", "field"),
    [
        ("settings", {"encryption": {"enabled": "no"}}, "encryption.enabled"),
        ("settings", {"retention": {"keep_last": True}}, "retention.keep_last"),
        ("settings", {"compression": {"level": "3"}}, "compression.level"),
        ("schedule", {"schedules": [{"name": "n", "type": "full", "cron": "0 2 * * *", "enabled": "no"}]},
         "schedules.0.enabled"),
    ],
)  # fmt: skip
async def test_a_loosely_typed_document_value_is_refused_with_400_naming_the_field(
    gateway: Gateway, name: str, patch: dict[str, Any], field: str
) -> None:
    _, before = await gateway.call("GET", f"{API}/{name}")

    status, answer = await gateway.call("PATCH", f"{API}/{name}", patch)

    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    assert field in [detail["field"] for detail in answer["error"]["details"]]
    _, after = await gateway.call("GET", f"{API}/{name}")
    assert after["revision"] == before["revision"]


async def test_a_restore_naming_a_part_twice_is_refused_with_400(gateway: Gateway) -> None:
    backup = await gateway.create("database")
    await gateway.complete(backup)

    status, answer = await gateway.call(
        "POST", f"{API}/{backup['id']}/restore", {"confirm": backup["id"], "parts": ["database", "database"]}
    )

    assert (status, answer["error"]["code"]) == (400, "invalid_request")
    assert "repeated: database" in answer["error"]["message"]
    assert await gateway.rows("SELECT id FROM restores") == []


async def integrity_failures(gateway: Gateway) -> float:
    response = await gateway.client.get("/metrics")
    for line in (await response.text()).splitlines():
        if line.startswith("backup_download_integrity_failures_total "):
            return float(line.split()[1])
    raise AssertionError("backup_download_integrity_failures is not exposed")


def flip_a_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


async def download_fails(gateway: Gateway, backup_id: str) -> bytes:
    """What the client received before the transfer failed (it must fail)."""
    response = await gateway.client.get(f"{API}/{backup_id}/download", headers=gateway.auth())
    assert response.status == 200
    received = bytearray()

    async def read_all() -> None:
        async for chunk in response.content.iter_any():
            received.extend(chunk)

    with pytest.raises(aiohttp.ClientPayloadError):
        await read_all()
    assert response.content_length is not None
    assert len(received) < response.content_length
    return bytes(received)


async def test_an_intact_archive_downloads_with_its_repr_digest(gateway: Gateway) -> None:
    backup = await gateway.create("database")
    directory = await gateway.complete(backup, content=os.urandom(3 << 20))
    data = (directory / "database.zip").read_bytes()

    response = await gateway.client.get(f"{API}/{backup['id']}/download", headers=gateway.auth())

    assert response.status == 200
    assert await response.read() == data
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert response.headers["Repr-Digest"] == f"sha-256=:{digest}:"
    assert await integrity_failures(gateway) == 0


@pytest.mark.parametrize("damage", ["bit-flip", "truncated", "extended"])
async def test_a_damaged_archive_is_cut_short_counted_and_audited_as_failed(
    gateway: Gateway, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    backup = await gateway.create("database")
    directory = await gateway.complete(backup, content=os.urandom(3 << 20))
    archive = directory / "database.zip"
    if damage == "bit-flip":
        flip_a_bit(archive, (3 << 20) - 10)  # in the last chunk, so that most of the file went out before
    elif damage == "truncated":
        archive.write_bytes(archive.read_bytes()[:-1])
    else:
        archive.write_bytes(archive.read_bytes() + b"\0")

    received = await download_fails(gateway, backup["id"])

    assert received == archive.read_bytes()[: len(received)]
    assert await integrity_failures(gateway) == 1
    assert f"download of backup {backup['id']} aborted" in caplog.text
    assert await audit_rows(gateway, "backup.download") == [("alice", "failed", 200)]


async def test_a_damaged_part_of_a_full_backup_cuts_its_zip_short(gateway: Gateway) -> None:
    backup = await gateway.create("full")
    directory = await gateway.complete(backup, content=os.urandom(2 << 20))
    flip_a_bit(directory / "files.zip", 5)

    await download_fails(gateway, backup["id"])

    assert await integrity_failures(gateway) == 1
