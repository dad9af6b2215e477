"""Automation's commands over AMQP, through a gateway of the test's own, with real MariaDB and RabbitMQ:
`command.backup.create` makes a backup with trigger `event` that the workers complete, once per
message_id; `command.backup.verify` verifies a completed backup again; what cannot be done goes to the
gateway's dead-letter queue with the reason; a BackupRequested for no backup of the catalog goes to the
workers' dead-letter queues."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pika  # type: ignore[import-untyped]
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from backup_common.adapters.amqp.topology import Topology, load_service_queues
from backup_common.adapters.mysql import db
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupPart, BackupRequested, BackupType
from tests.integration.gateway_support import (
    Gateway,
    make_source,
    running_gateway,
    running_workers,
    source_url,
    system_overrides,
    wait_finished,
)
from tests.integration.messaging_support import eventually, next_message

pytestmark = pytest.mark.integration

API = "/api/admin/backup"
CREATE = "command.backup.create"
VERIFY = "command.backup.verify"


async def publish(
    channel: AbstractChannel, gateway: Gateway, routing_key: str, body: Any, *, message_id: str | None
) -> None:
    """Publishes as automation does: on the exchange, persistent, mandatory (an unroutable command is an
    error, not a silent loss). The exchanges and the gateway's queue are declared first, as every
    process of the system declares them, so the command waits for the gateway's consumer."""
    topology = Topology(gateway.settings)
    await topology.declare_exchanges(channel)
    await topology.declare_service_queue(channel, "gateway", load_service_queues()["gateway"])
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    if message_id is None:
        # aio-pika (aiormq) gives every message it publishes a random id; pika sends none.
        await asyncio.to_thread(publish_without_id, gateway.settings, routing_key, raw)
        return
    exchange = await channel.get_exchange(topology.exchange)
    message = aio_pika.Message(
        raw,
        message_id=message_id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    await exchange.publish(message, routing_key=routing_key, mandatory=True)


def publish_without_id(settings: Settings, routing_key: str, body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url.get_secret_value()))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        channel.basic_publish(settings.amqp_exchange, routing_key, body, properties, mandatory=True)
    finally:
        connection.close()


async def backups(gateway: Gateway) -> list[dict[str, Any]]:
    status, page = await gateway.call("GET", f"{API}/list")
    assert status == 200, page
    return list(page["backups"])


async def first_backups(gateway: Gateway, count: int = 1) -> list[dict[str, Any]]:
    async def made() -> bool:
        return len(await backups(gateway)) >= count

    await eventually(made, f"{count} backup(s) are listed")
    return await backups(gateway)


async def dead_letter(channel: AbstractChannel, gateway: Gateway, service: str = "gateway") -> AbstractIncomingMessage:
    topology = Topology(gateway.settings)
    return await next_message(channel, topology.dead_letter_queue_name(topology.queue_name(service)))


async def audit_rows(gateway: Gateway, action: str) -> list[dict[str, Any]]:
    rows = await gateway.rows(
        "SELECT actor, action, target, outcome, status_code, source_address, detail FROM audit_log"
        " WHERE action = %s ORDER BY id",
        (action,),
    )
    return [{**row, "detail": json.loads(row["detail"]) if row["detail"] else {}} for row in rows]


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


async def test_a_create_command_makes_a_pending_backup_with_trigger_event_audited_with_its_message_id(
    gateway: Gateway, channel: AbstractChannel
) -> None:
    body = {"type": "database", "description": "before the 3.2 deploy", "requested_by": "deploy-pipeline"}

    await publish(channel, gateway, CREATE, body, message_id="deploy-3.2")

    [listed] = await first_backups(gateway)
    status, shown = await gateway.call("GET", f"{API}/{listed['id']}")
    assert status == 200
    backup = shown["backup"]
    assert (backup["type"], backup["status"], backup["trigger"]) == ("database", "pending", "event")
    assert (backup["description"], backup["requested_by"]) == ("before the 3.2 deploy", "deploy-pipeline")
    [audited] = await audit_rows(gateway, "backup.create")
    assert (audited["actor"], audited["target"], audited["outcome"], audited["source_address"]) == (
        "deploy-pipeline",
        backup["id"],
        "allowed",
        "amqp",
    )
    assert audited["detail"] == {"message_id": "deploy-3.2", "routing_key": CREATE, "trigger": "event"}
    assert await gateway.rows(
        "SELECT message_id FROM processed_messages WHERE consumer = 'gateway' AND message_id = 'deploy-3.2'"
    )


async def test_the_same_message_id_twice_or_after_a_crash_makes_one_backup(
    gateway: Gateway, channel: AbstractChannel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = {"type": "files", "requested_by": "cron"}

    # Delivered twice (a publisher that retried): the second is skipped as already processed.
    await publish(channel, gateway, CREATE, body, message_id="nightly-2026-03-01")
    await publish(channel, gateway, CREATE, body, message_id="nightly-2026-03-01")
    await eventually(lambda: logged(caplog, "nightly-2026-03-01, already processed"), "the copy is skipped")
    # Delivered again after a crash between the commit and remembering the id: the id is the
    # backup's idempotency key, so the backup it made is found.
    await gateway.rows("DELETE FROM processed_messages WHERE message_id = 'nightly-2026-03-01'")
    await publish(channel, gateway, CREATE, body, message_id="nightly-2026-03-01")
    await eventually(lambda: logged(caplog, "already made backup"), "the redelivery finds its backup")

    [backup] = await backups(gateway)
    assert backup["trigger"] == "event"
    assert len(await audit_rows(gateway, "backup.create")) == 1
    # Another message_id is another request.
    await publish(channel, gateway, CREATE, body, message_id="nightly-2026-03-02")
    assert len(await first_backups(gateway, 2)) == 2


@pytest.mark.parametrize(
    ("body", "message_id", "reason"),
    [
        pytest.param(
            {"requested_by": "ci"},
            "no-type",
            "it is not a valid command.backup.create command (type: missing, Field required)",
            id="missing type",
        ),
        pytest.param(
            {"type": "weekly", "requested_by": "ci"},
            "bad-type",
            "it is not a valid command.backup.create command (type: enum, Input should be 'full', 'database',"
            " 'files' or 'incremental')",
            id="bad type",
        ),
        pytest.param({"type": "full", "requested_by": "ci"}, None, "it has no message_id", id="no message_id"),
        pytest.param(
            b"{not json",
            "garbage",
            "it is not a valid command.backup.create command (body: json_invalid, Invalid JSON: key must be a"
            " string at line 1 column 2)",
            id="garbage JSON",
        ),
        pytest.param(
            {"type": "full", "requested_by": "ci", "parts": ["database"]},
            "unknown-field",
            "it is not a valid command.backup.create command (parts: extra_forbidden, Extra inputs are not permitted)",
            id="unknown field",
        ),
    ],
)
async def test_an_invalid_create_command_is_dead_lettered_with_the_reason_and_makes_no_backup(
    gateway: Gateway, channel: AbstractChannel, body: Any, message_id: str | None, reason: str
) -> None:
    await publish(channel, gateway, CREATE, body, message_id=message_id)

    dead = await dead_letter(channel, gateway)

    assert dead.headers["x-dead-letter-reason"] == reason
    assert dead.headers["x-routing-key"] == CREATE
    if message_id is not None:  # the dead letter of one without gets an id from the client library
        assert dead.message_id == message_id
    assert await backups(gateway) == []


async def test_verifying_an_unknown_or_unfinished_backup_by_command_is_dead_lettered_and_audited_as_failed(
    gateway: Gateway, channel: AbstractChannel
) -> None:
    missing = str(uuid.uuid4())
    pending = await gateway.create("database")

    await publish(channel, gateway, VERIFY, {"backup_id": missing, "requested_by": "ci"}, message_id="verify-a")
    first = await dead_letter(channel, gateway)
    await publish(channel, gateway, VERIFY, {"backup_id": pending["id"], "requested_by": "ci"}, message_id="verify-b")
    second = await dead_letter(channel, gateway)

    assert first.headers["x-dead-letter-reason"] == f"no backup with id {missing}"
    assert second.headers["x-dead-letter-reason"] == (
        f"backup {pending['id']} is pending; only a completed backup can be verified"
    )
    failed = [row for row in await audit_rows(gateway, "backup.verify") if row["outcome"] == "failed"]
    assert [(row["target"], row["detail"]["message_id"]) for row in failed] == [
        (missing, "verify-a"),
        (pending["id"], "verify-b"),
    ]
    # Rejected, not processed: once the cause is fixed, the dead letter may be published again.
    assert not await gateway.rows("SELECT 1 FROM processed_messages WHERE message_id IN ('verify-a', 'verify-b')")


@pytest.fixture
async def system(settings: Settings, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway with the database_backup and verification services, on a source database of its own."""
    url = source_url(settings)
    source = await make_source(url)
    async with running_gateway(settings, **system_overrides(url, tmp_path), lease_seconds=5) as gateway:
        try:
            async with running_workers(gateway, "database_backup", "verification"):
                yield gateway
        finally:
            await db.drop_database(source)


async def verification_after(system: Gateway, backup_id: str, after: str | None) -> dict[str, Any]:
    """The backup's verification once one ended after ``after`` (a checked_at)."""
    async with asyncio.timeout(60):
        while True:
            status, body = await system.call("GET", f"{API}/{backup_id}")
            assert status == 200, body
            found = body["backup"]["verification"]
            if found and found["status"] != "pending" and (after is None or (found["checked_at"] or "") > after):
                return dict(found)
            await asyncio.sleep(0.2)


async def test_a_commanded_backup_is_made_by_the_workers_and_verified_again_on_command(
    system: Gateway, channel: AbstractChannel
) -> None:
    body = {"type": "database", "description": "from automation", "requested_by": "deploy-pipeline"}
    await publish(channel, system, CREATE, body, message_id="deploy-4.0")
    [listed] = await first_backups(system)

    backup = await wait_finished(system, listed["id"])

    assert (backup["status"], backup["trigger"]) == ("completed", "event"), backup["error"]
    first = await verification_after(system, backup["id"], None)  # after the backup, by default
    assert first["status"] == "verified", first["error"]

    await publish(
        channel, system, VERIFY, {"backup_id": backup["id"], "requested_by": "weekly-check"}, message_id="check-1"
    )

    again = await verification_after(system, backup["id"], first["checked_at"])
    assert again["status"] == "verified", again["error"]
    [audited] = [row for row in await audit_rows(system, "backup.verify") if row["outcome"] == "allowed"]
    assert (audited["actor"], audited["target"], audited["detail"]["message_id"]) == (
        "weekly-check",
        backup["id"],
        "check-1",
    )


async def test_a_backup_request_for_no_backup_of_the_catalog_is_dead_lettered_by_the_workers(
    system: Gateway, channel: AbstractChannel
) -> None:
    """An outside BackupRequested used to be acknowledged and forgotten; commands are the way in."""
    stray = BackupRequested(
        backup_id=uuid.uuid4(), backup_type=BackupType.DATABASE, parts=(BackupPart.DATABASE,), requested_by="cron"
    )
    exchange = await channel.get_exchange(system.settings.amqp_exchange)
    await exchange.publish(
        aio_pika.Message(stray.to_json(), message_id=str(stray.event_id)), routing_key=stray.routing_key, mandatory=True
    )

    dead = await dead_letter(channel, system, "database_backup")

    assert dead.message_id == str(stray.event_id)
    reason = str(dead.headers["x-dead-letter-reason"])
    assert reason.startswith(f"backup {stray.backup_id} is not in the catalog")
    assert "command.backup.create" in reason
    assert await backups(system) == []
