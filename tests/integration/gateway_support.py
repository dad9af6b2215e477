"""A gateway on its own catalog database, served in-process, and the helpers its tests share."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from backup_common.adapters.amqp.topology import Topology, load_service_queues
from backup_common.adapters.mysql import db
from backup_common.adapters.settings import Settings
from backup_common.adapters.tokens import issue_token
from backup_common.engine.database.target import MysqlTarget
from backup_database import bootstrap as database_backup
from backup_files import bootstrap as file_backup
from backup_gateway.bootstrap import create_app
from backup_retention import bootstrap as retention
from backup_verification import bootstrap as verification
from tests.conftest import DECLARED_EXCHANGES, DECLARED_QUEUES

# The services that consume a queue, by name, and how each builds its application.
SERVICES: dict[str, Callable[[Settings], web.Application]] = {
    database_backup.NAME: database_backup.create_app,
    file_backup.NAME: file_backup.create_app,
    verification.NAME: verification.create_app,
    retention.NAME: retention.create_app,
}


def service_topology(settings: Settings) -> tuple[list[str], list[str]]:
    """The exchanges and the service queues (each with its dead-letter queue) every process declares."""
    topology = Topology(settings)
    queues = [topology.queue_name(service) for service in load_service_queues()]
    return [topology.exchange, topology.dead_letter_exchange], [
        name for queue in queues for name in (queue, topology.dead_letter_queue_name(queue))
    ]


def register_service_queues(settings: Settings) -> None:
    """Leaves the processes' exchanges and queues to the run, which deletes them at its end."""
    exchanges, queues = service_topology(settings)
    DECLARED_EXCHANGES.extend(name for name in exchanges if name not in DECLARED_EXCHANGES)
    DECLARED_QUEUES.extend(name for name in queues if name not in DECLARED_QUEUES)


async def delete_service_topology(amqp_url: str, settings: Settings) -> None:
    exchanges, queues = service_topology(settings)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


# What Gateway.complete describes each part as holding: one table, one config file.
PART_MANIFESTS: dict[str, dict[str, Any]] = {
    "database": {"part": "database", "tables": [{"name": "accounts", "rows": 3, "sql_bytes": 10, "members": []}]},
    "files": {
        "part": "files",
        "trees": {"configs": "/srv/app/configs"},
        "entries": [],
        "deleted": [],
        "state": [
            {"path": "configs/app.ini", "kind": "file", "mode": 384, "mtime_ns": 0, "size": 3, "sha256": "0" * 64}
        ],
    },
}


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    settings: Settings
    pool: db.Pool

    def token(self, *, roles: tuple[str, ...] = ("admin",), subject: str = "alice") -> str:
        return issue_token(self.settings, subject=subject, roles=list(roles), ttl_seconds=600)

    def auth(self, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(**kwargs)}"}

    async def call(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body) if body is not None else None
        response = await self.client.request(
            method, path, data=data, headers=self.auth() if headers is None else headers
        )
        text = await response.text()
        return response.status, (json.loads(text) if text else None)

    async def create(self, backup_type: str = "full", **extra: Any) -> dict[str, Any]:
        status, body = await self.call("POST", "/api/admin/backup/create", {"type": backup_type, **extra})
        assert status == 202, body
        backup: dict[str, Any] = body["backup"]
        return backup

    async def rows(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        async with db.transaction(self.pool) as conn:
            return await db.fetch_all(conn, sql, args)

    async def complete(self, backup: dict[str, Any], *, content: bytes = b"archive bytes") -> Path:
        """Does what the workers do: writes each part's archive, its part manifest and the manifest, and
        marks it completed (the archives hold nothing a restore could read)."""
        directory: Path = self.settings.storage_dir / backup["storage_path"]
        directory.mkdir(parents=True, exist_ok=True)
        total = 0
        parts = []
        for part in backup["parts"]:
            data = content + part["part"].encode()
            (directory / f"{part['part']}.zip").write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            parts.append({"part": part["part"], "file": f"{part['part']}.zip", "sha256": digest})
            described = PART_MANIFESTS[part["part"]] | {"file": f"{part['part']}.zip", "sha256": digest}
            (directory / f"{part['part']}.json").write_text(json.dumps(described))
            total += len(data)
            async with db.transaction(self.pool) as conn:
                await db.execute(
                    conn,
                    "UPDATE backup_parts SET status = 'completed', file_name = %s, size_bytes = %s, sha256 = %s,"
                    " completed_at = NOW(6), updated_at = NOW(6) WHERE backup_id = %s AND part = %s",
                    (f"{part['part']}.zip", len(data), digest, backup["id"], part["part"]),
                )
        (directory / "manifest.json").write_text(json.dumps({"id": backup["id"], "parts": parts}))
        async with db.transaction(self.pool) as conn:
            await db.execute(
                conn,
                "UPDATE backups SET status = 'completed', size_bytes = %s, started_at = NOW(6),"
                " completed_at = NOW(6), updated_at = NOW(6) WHERE id = %s",
                (total, backup["id"]),
            )
        return directory

    async def fail(self, backup: dict[str, Any], reason: str = "disk full") -> None:
        async with db.transaction(self.pool) as conn:
            await db.execute(
                conn,
                "UPDATE backups SET status = 'failed', error = %s, updated_at = NOW(6) WHERE id = %s",
                (reason, backup["id"]),
            )


@asynccontextmanager
async def running_gateway(base: Settings, **overrides: Any) -> AsyncIterator[Gateway]:
    """A gateway on a catalog database, an exchange and queues of its own: counts and lists see only
    this test's backups, and a test that hung with its workers connected cannot take another's jobs."""
    own = secrets.token_hex(4)
    isolated = {
        "mysql_url": base.mysql_url.get_secret_value().rsplit("/", 1)[0] + f"/backup_gw_{own}",
        "amqp_exchange": f"{base.amqp_exchange}.{own}",
        "amqp_queue_prefix": f"{base.amqp_queue_prefix}.{own}",
    }
    settings = Settings.model_validate(base.model_dump() | isolated | overrides)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    pool = await db.create_pool(settings.catalog)
    try:
        yield Gateway(client, settings, pool)
    finally:
        try:
            await db.close_pool(pool)
            async with stopping_within("the gateway"):
                await client.close()
        finally:
            await db.drop_database(settings.catalog)
            await delete_service_topology(base.amqp_url.get_secret_value(), settings)


def source_url(base: Settings) -> str:
    """A new database name for a test's own source database, on the run's server."""
    return base.mysql_url.get_secret_value().rsplit("/", 1)[0] + f"/backup_src_{secrets.token_hex(4)}"


def system_overrides(source: str, root: Path) -> dict[str, Any]:
    """A test system's settings: its source database, a master key of its own, and its storage and
    the application's three trees (``root/app/uploads``, ``configs``, ``logs``) below ``root``."""
    app = root / "app"
    return {
        "source_mysql_url": source,
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "storage_dir": root / "storage",
        "uploads_dir": app / "uploads",
        "configs_dir": app / "configs",
        "logs_dir": app / "logs",
    }


async def make_source(url: str) -> MysqlTarget:
    """A small application database to back up: one table, three rows, quotes and unicode."""
    target = MysqlTarget(url)
    await db.drop_database(target)
    await db.ensure_database(target)
    pool = await db.create_pool(target, maxsize=1)
    try:
        async with db.transaction(pool) as conn:
            await db.execute(
                conn, "CREATE TABLE accounts (id INT PRIMARY KEY, owner VARCHAR(50), balance DECIMAL(12,2))"
            )
            await db.execute(
                conn, "INSERT INTO accounts VALUES (1, 'zoë', 10.50), (2, 'o''brien', 20.00), (3, NULL, 0)"
            )
    finally:
        await db.close_pool(pool)
    return target


# A service stops in well under a second; one that takes this long waits on something that never comes.
STOP_SECONDS = 30


@asynccontextmanager
async def stopping_within(what: str) -> AsyncIterator[None]:
    """Fails a stop that hangs, with the stack of every task still waiting (pytest-timeout shows only
    the threads, where an event loop waiting on a lost future looks idle)."""
    try:
        async with asyncio.timeout(STOP_SECONDS):
            yield
    except TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            print(f"--- {task.get_name()}", file=stacks)
            task.print_stack(file=stacks)
        raise AssertionError(f"{what} did not stop within {STOP_SECONDS} s; its tasks:\n{stacks.getvalue()}") from None


@asynccontextmanager
async def running_workers(gateway: Gateway, *services: str) -> AsyncIterator[None]:
    """The named services, in-process, sharing the gateway's catalog, broker and storage."""
    async with running_apps([(name, SERVICES[name](gateway.settings)) for name in services]):
        yield


@asynccontextmanager
async def running_apps(apps: Sequence[tuple[str, web.Application]]) -> AsyncIterator[None]:
    """Service applications (name, application), served in-process until the block ends."""
    servers = [(name, TestServer(app)) for name, app in apps]
    try:
        for _, server in servers:
            await server.start_server()
        yield
    finally:
        for name, server in servers:
            async with stopping_within(name):
                await server.close()


async def wait_finished(gateway: Gateway, backup_id: str) -> dict[str, Any]:
    """The backup as the API shows it once it is completed or failed."""
    async with asyncio.timeout(60):
        while True:
            status, body = await gateway.call("GET", f"/api/admin/backup/{backup_id}")
            assert status == 200, body
            if body["backup"]["status"] in ("completed", "failed"):
                return dict(body["backup"])
            await asyncio.sleep(0.2)
