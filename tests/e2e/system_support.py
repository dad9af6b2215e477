"""The whole system as an administrator starts it, `make run`, on a catalog, exchange, queues and
source database of its own, and the helpers the end-to-end tests share to drive it from outside."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from backup_common.adapters.mysql import db
from backup_common.adapters.settings import Settings
from backup_common.adapters.tokens import issue_token
from backup_common.engine.database.target import MysqlTarget
from tests.integration.gateway_support import make_source, register_service_queues
from tests.services import ServiceEndpoints

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

    def token(self, *roles: str, ttl_seconds: int = 600) -> str:
        return issue_token(self.settings, subject="e2e", roles=list(roles), ttl_seconds=ttl_seconds)

    async def wait_finished(self, backup_id: str, token: str, seconds: float = 90) -> dict[str, Any]:
        """The backup once it is completed or failed."""
        async with asyncio.timeout(seconds):
            while True:
                status, body = await self.request("GET", f"{API}/{backup_id}", token=token)
                assert status == 200, f"{body}\n{self.log_tail()}"
                if body["backup"]["status"] in ("completed", "failed"):
                    return dict(body["backup"])
                await asyncio.sleep(0.25)


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
    os.killpg(process.pid, signal.SIGKILL)
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
            "BACKUP_VERIFICATION_PORT": str(free_port()),
            "BACKUP_RETENTION_PORT": str(free_port()),
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


@asynccontextmanager
async def running_system(
    settings: Settings, servers: ServiceEndpoints, jwt_secret: str, **extra: str
) -> AsyncIterator[RunningSystem]:
    """`make run` with BACKUP_JWT_SECRET set, the catalog database absent and a source database of its
    own (``extra`` overrides any BACKUP_ variable); at the end every service is stopped, as by Ctrl-C,
    and both databases are dropped, whatever happened in between."""
    port = free_port()
    source = await make_source(servers.mysql_url(f"backup_e2e_app_{secrets.token_hex(4)}"))
    env, run_settings = system_env(
        settings,
        servers,
        port,
        BACKUP_JWT_SECRET=jwt_secret,
        BACKUP_MASTER_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
        BACKUP_SOURCE_MYSQL_URL=servers.mysql_url(source.database),
        **extra,
    )
    try:
        assert not await catalog_exists(run_settings.catalog)
        process, output = await asyncio.to_thread(start, ["make", "--no-print-directory", "run"], env, REPO, port)
        try:
            yield RunningSystem(
                process, output, f"http://127.0.0.1:{port}", run_settings, servers.mysql_url(source.database)
            )
        finally:
            code = await asyncio.to_thread(stop, process)
    finally:
        await db.drop_database(run_settings.catalog)
        await db.drop_database(source)
    # make itself dies of the SIGINT it forwards (as at a terminal); what matters is that every
    # service it started has stopped.
    assert code in (0, -signal.SIGINT), f"make run exited with {code} on Ctrl-C"
    assert not port_answers(port), "a service still listens after Ctrl-C"
