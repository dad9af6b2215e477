"""`make run` as an administrator starts it: the issue's acceptance, driven over HTTP."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection

from backup_common.adapters.mysql import db
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupRequested, parse_event
from backup_common.engine.database.target import MysqlTarget
from backup_gateway.routes import ROUTES, openapi_path
from tests.e2e.system_support import API, RunningSystem, free_port, running_system, start, stop, system_env
from tests.services import ServiceEndpoints

pytestmark = pytest.mark.e2e


@pytest.fixture
async def make_run(settings: Settings, servers: ServiceEndpoints, jwt_secret: str) -> AsyncIterator[RunningSystem]:
    """`make run` with BACKUP_JWT_SECRET set and the catalog database absent."""
    async with running_system(settings, servers, jwt_secret) as system:
        yield system


async def test_make_run_serves_the_api_with_auth_and_sends_one_event_per_backup(
    make_run: RunningSystem, amqp_connection: AbstractRobustConnection, declare_queue_name: Any
) -> None:
    system = make_run
    observer = declare_queue_name("e2e-observer")

    async def bind() -> None:
        channel = await amqp_connection.channel()
        exchange = await channel.declare_exchange(
            system.settings.amqp_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(observer, durable=True)
        await queue.bind(exchange, routing_key=BackupRequested.routing_key)
        await channel.close()

    await bind()
    some_id = "00000000-0000-4000-8000-000000000000"
    admin_routes = [route for route in ROUTES if not route.public]
    for route in admin_routes:
        path = openapi_path(route.path).replace("{backup_id}", some_id)
        status, body = await system.request(route.method, path, {})
        assert status == 401, (route.method, path, body)
        status, body = await system.request(route.method, path, {}, token=system.token("viewer"))
        assert status == 403, (route.method, path, body)

    admin = system.token("admin")
    created = []
    for backup_type in ("full", "database", "files", "incremental"):
        status, body = await system.request("POST", f"{API}/create", {"type": backup_type}, token=admin)
        assert status == 202, f"{body}\n{system.log_tail()}"
        assert body["backup"]["status"] == "pending"
        created.append(body["backup"]["id"])
    status, body = await system.request("POST", f"{API}/create", {"type": "weekly"}, token=admin)
    assert status == 400
    assert "full, database, files, incremental" in body["error"]["message"]

    status, listing = await system.request("GET", f"{API}/list", token=admin)
    assert status == 200
    assert [backup["id"] for backup in listing["backups"]] == created[::-1]
    status, stats = await system.request("GET", f"{API}/stats", token=admin)
    assert status == 200
    assert stats["total"] == 4
    assert stats["by_type"] == {"full": 1, "database": 1, "files": 1, "incremental": 1}
    # The workers may already have started some of them.
    assert sum(stats["by_status"].values()) == 4

    async def received() -> list[str]:
        channel = await amqp_connection.channel()
        queue = await channel.declare_queue(observer, durable=True, passive=True)
        ids: list[str] = []
        async with asyncio.timeout(20), queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                ids.append(str(parse_event(message.body).backup_id))
                if len(ids) == len(created):
                    break
        await channel.close()
        return ids

    assert sorted(await received()) == sorted(created)

    # The workers make run started complete all four: full, database, files, incremental.
    finished = {}
    async with asyncio.timeout(90):
        for backup_id in created:
            while True:
                status, body = await system.request("GET", f"{API}/{backup_id}", token=admin)
                if body["backup"]["status"] in ("completed", "failed"):
                    finished[backup_id] = body["backup"]
                    break
                await asyncio.sleep(0.25)
    assert [b["status"] for b in finished.values()] == ["completed"] * 4, [b["error"] for b in finished.values()]
    database_id = created[1]
    body = {"backup": finished[database_id]}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{system.base_url}{API}/{database_id}/download", headers={"Authorization": f"Bearer {admin}"}
        ) as response,
    ):
        archive = await response.read()
    assert response.status == 200
    assert len(archive) == body["backup"]["parts"][0]["size_bytes"]
    assert archive[:4] == b"PK\x03\x04"

    # A restore in place of the full backup after rows were lost: safety backup first, then both parts.
    source = MysqlTarget(system.source_url)
    pool = await db.create_pool(source, maxsize=1)
    try:
        async with db.transaction(pool) as conn:
            await db.execute(conn, "DELETE FROM accounts WHERE id > 1")
        full_id = created[0]
        status, body = await system.request("POST", f"{API}/{full_id}/restore", {"confirm": full_id}, token=admin)
        assert status == 202, f"{body}\n{system.log_tail()}"
        restore_id = body["restore"]["id"]
        async with asyncio.timeout(90):
            while True:
                status, body = await system.request("GET", f"{API}/restores/{restore_id}", token=admin)
                if body["restore"]["status"] in ("completed", "failed"):
                    break
                await asyncio.sleep(0.25)
        assert body["restore"]["status"] == "completed", f"{body}\n{system.log_tail()}"
        assert body["restore"]["safety_backup_id"] is not None
        async with db.transaction(pool) as conn:
            assert [row["id"] for row in await db.fetch_all(conn, "SELECT id FROM accounts ORDER BY id")] == [1, 2, 3]
    finally:
        await db.close_pool(pool)


async def test_make_run_without_secrets_creates_local_ones_and_prints_a_working_admin_token(
    settings: Settings, servers: ServiceEndpoints, tmp_path: Path
) -> None:
    port = free_port()
    env, run_settings = system_env(settings, servers, port)
    backupctl = str(Path(sys.executable).parent / "backupctl")
    process, output = await asyncio.to_thread(start, [backupctl, "run"], env, tmp_path, port)
    try:
        text = "".join(output)
        token = next(line for line in text.splitlines() if line.startswith("ey"))
        secret = (tmp_path / "var" / "secrets" / "jwt-secret").read_text().strip()
        assert (tmp_path / "var" / "secrets" / "master.key").stat().st_mode & 0o077 == 0
        assert secret not in text
        system = RunningSystem(process, output, f"http://127.0.0.1:{port}", run_settings)
        status, body = await system.request("GET", f"{API}/stats", token=token)
        assert status == 200, body
    finally:
        await asyncio.to_thread(stop, process)
        await db.drop_database(run_settings.catalog)
