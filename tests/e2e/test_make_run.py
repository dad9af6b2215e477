"""`make run` as an administrator starts it: the issue's acceptance, driven over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection

from backup_common.adapters.mysql import db
from backup_common.adapters.settings import Settings
from backup_common.adapters.tokens import issue_token
from backup_common.domain.events import BackupRequested, parse_event
from backup_common.engine.database.target import MysqlTarget
from backup_gateway.routes import ROUTES, openapi_path
from tests.integration.gateway_support import make_source, register_service_queues
from tests.services import ServiceEndpoints

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
API = "/api/admin/backup"


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RunningSystem:
    def __init__(
        self, process: subprocess.Popen[str], output: list[str], base_url: str, settings: Settings, source_url: str = ""
    ) -> None:
        self.process = process
        self.output = output  # what `make run` printed so far
        self.base_url = base_url
        self.settings = settings
        self.source_url = source_url  # the application database the services back up

    def log_tail(self, lines: int = 60) -> str:
        return "".join(self.output[-lines:])

    async def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        """An HTTP request from outside the process, as curl would send it."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = json.dumps(body) if body is not None else None
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.base_url + path, data=data, headers=headers) as response,
        ):
            text = await response.text()
            return response.status, json.loads(text) if text else None

    def token(self, *roles: str) -> str:
        return issue_token(self.settings, subject="e2e", roles=list(roles), ttl_seconds=600)


def start(command: list[str], env: dict[str, str], cwd: Path, port: int) -> tuple[subprocess.Popen[str], list[str]]:
    """Starts the command in its own process group; returns once the port answers, and its output so far."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    output: list[str] = []

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{command} exited with {process.returncode}:\n{''.join(output)}")
        if port_answers(port):
            return process, output
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"{command} did not answer on port {port}:\n{''.join(output)}")


def stop(process: subprocess.Popen[str]) -> int:
    os.killpg(process.pid, signal.SIGINT)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise


def system_env(
    settings: Settings, servers: ServiceEndpoints, port: int, **extra: str
) -> tuple[dict[str, str], Settings]:
    catalog = f"backup_e2e_{secrets.token_hex(4)}"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("BACKUP_") or key.startswith("BACKUP_TEST")
    }
    env.update(
        {
            "BACKUP_MYSQL_URL": servers.mysql_url(catalog),
            "BACKUP_AMQP_URL": servers.amqp_url,
            "BACKUP_AMQP_EXCHANGE": settings.amqp_exchange,
            "BACKUP_AMQP_QUEUE_PREFIX": settings.amqp_queue_prefix,
            "BACKUP_GATEWAY_PORT": str(port),
            "BACKUP_STORAGE_DIR": str(settings.storage_dir),
            "BACKUP_DATABASE_BACKUP_PORT": str(free_port()),
            "BACKUP_FILE_BACKUP_PORT": str(free_port()),
            "BACKUP_UPLOADS_DIR": str(settings.uploads_dir),
            "BACKUP_CONFIGS_DIR": str(settings.configs_dir),
            "BACKUP_LOGS_DIR": str(settings.logs_dir),
            "BACKUP_RESTORE_DIR": str(settings.restore_dir),
            **extra,
        }
    )
    run_settings = Settings.model_validate(
        settings.model_dump() | {"mysql_url": env["BACKUP_MYSQL_URL"], "gateway_port": port}
        | ({"jwt_secret": extra["BACKUP_JWT_SECRET"]} if "BACKUP_JWT_SECRET" in extra else {})
    )  # fmt: skip
    register_service_queues(run_settings)
    return env, run_settings


async def catalog_exists(target: MysqlTarget) -> bool:
    server = MysqlTarget(f"mysql://{target.user}:{target.password}@{target.host}:{target.port}/mysql")
    pool = await db.create_pool(server, maxsize=1)
    try:
        async with db.transaction(pool) as conn:
            rows = await db.fetch_all(conn, "SHOW DATABASES LIKE %s", (target.database,))
    finally:
        await db.close_pool(pool)
    return bool(rows)


@pytest.fixture
async def make_run(settings: Settings, servers: ServiceEndpoints, jwt_secret: str) -> AsyncIterator[RunningSystem]:
    """`make run` with BACKUP_JWT_SECRET set and the catalog database absent."""
    port = free_port()
    source = await make_source(servers.mysql_url(f"backup_e2e_app_{secrets.token_hex(4)}"))
    env, run_settings = system_env(
        settings,
        servers,
        port,
        BACKUP_JWT_SECRET=jwt_secret,
        BACKUP_MASTER_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
        BACKUP_SOURCE_MYSQL_URL=servers.mysql_url(source.database),
    )
    assert not await catalog_exists(run_settings.catalog)
    process, output = await asyncio.to_thread(start, ["make", "--no-print-directory", "run"], env, REPO, port)
    try:
        yield RunningSystem(
            process, output, f"http://127.0.0.1:{port}", run_settings, servers.mysql_url(source.database)
        )
    finally:
        code = await asyncio.to_thread(stop, process)
        await db.drop_database(run_settings.catalog)
        await db.drop_database(source)
    # make itself dies of the SIGINT it forwards (as at a terminal); what matters is that every
    # service it started has stopped.
    assert code in (0, -signal.SIGINT), f"make run exited with {code} on Ctrl-C"
    assert not port_answers(port), "a service still listens after Ctrl-C"


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
