"""Starting without MySQL or RabbitMQ: `backupctl migrate` and `backupctl run` (make run) stop with one
line naming the variable, not a traceback; a service process that cannot reach the catalog says so in
one line each time it is started, its supervision starts it again, and Ctrl-C stops it all."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

import pytest

from backup_common.adapters.mysql import db
from backup_common.adapters.settings import Settings
from backup_common.cli import main as backupctl
from backup_common.engine.database.target import MysqlTarget

pytestmark = pytest.mark.integration

CLOSED_MYSQL = "mysql://root@127.0.0.1:1/backup_catalog"  # nothing listens on port 1
CLOSED_AMQP = "amqp://guest:guest@127.0.0.1:1/"
BACKUPCTL = str(Path(sys.executable).parent / "backupctl")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(settings: Settings, **variables: str) -> dict[str, str]:
    """The run's servers, its secrets (so no local ones are made, and said so), ports of its own, no
    BACKUP_* of the outer shell, and ``variables``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BACKUP_")}
    assert settings.jwt_secret is not None
    env |= {
        "BACKUP_MYSQL_URL": settings.mysql_url.get_secret_value(),
        "BACKUP_AMQP_URL": settings.amqp_url.get_secret_value(),
        "BACKUP_AMQP_EXCHANGE": settings.amqp_exchange,
        "BACKUP_AMQP_QUEUE_PREFIX": settings.amqp_queue_prefix,
        "BACKUP_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "BACKUP_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "BACKUP_NOTIFICATION_SECRET": secrets.token_urlsafe(48),
        "BACKUP_GATEWAY_PORT": str(free_port()),
        "BACKUP_DATABASE_BACKUP_PORT": str(free_port()),
        "BACKUP_FILE_BACKUP_PORT": str(free_port()),
        "BACKUP_VERIFICATION_PORT": str(free_port()),
        "BACKUP_RETENTION_PORT": str(free_port()),
    }
    return env | variables


async def run_to_end(env: dict[str, str], cwd: Path, *argv: str) -> tuple[int, list[str]]:
    """Runs a process until it exits on its own; its exit status and stderr lines."""
    child = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(90):  # only against a hang: it stops on its own at once
        _, errors = await child.communicate()
    assert child.returncode is not None
    return child.returncode, errors.decode().splitlines()


async def test_migrate_without_mysql_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKUP_MYSQL_URL", CLOSED_MYSQL)

    code = await asyncio.to_thread(backupctl, ["migrate"])

    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "backupctl migrate: cannot reach MySQL at 127.0.0.1:1 (BACKUP_MYSQL_URL): Connection refused\n"
    )


async def test_migrate_refused_by_mysql_gives_the_servers_reason_and_never_the_password(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = settings.catalog
    password = secrets.token_hex(8)
    monkeypatch.setenv(
        "BACKUP_MYSQL_URL", f"mysql://nobody_{secrets.token_hex(3)}:{password}@{catalog.host}:{catalog.port}/x"
    )

    code = await asyncio.to_thread(backupctl, ["migrate"])

    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"backupctl migrate: cannot use MySQL at {catalog.host}:{catalog.port} (BACKUP_MYSQL_URL):")
    assert "Access denied" in err
    assert password not in err


async def test_run_without_mysql_stops_at_once_with_one_line_naming_the_variable(
    settings: Settings, tmp_path: Path
) -> None:
    code, lines = await run_to_end(environment(settings, BACKUP_MYSQL_URL=CLOSED_MYSQL), tmp_path, BACKUPCTL, "run")

    assert code == 1
    assert lines == ["backupctl run: cannot reach MySQL at 127.0.0.1:1 (BACKUP_MYSQL_URL): Connection refused"]


async def test_run_without_rabbitmq_stops_at_once_with_one_line_naming_the_variable(
    settings: Settings, tmp_path: Path
) -> None:
    catalog = MysqlTarget(
        settings.mysql_url.get_secret_value().rsplit("/", 1)[0] + f"/backup_run_{secrets.token_hex(4)}"
    )
    env = environment(settings, BACKUP_MYSQL_URL=f"mysql://root@{catalog.host}:{catalog.port}/{catalog.database}")
    try:
        code, lines = await run_to_end(env | {"BACKUP_AMQP_URL": CLOSED_AMQP}, tmp_path, BACKUPCTL, "run")
    finally:
        await db.drop_database(catalog)

    assert code == 1
    assert lines == ["backupctl run: cannot reach RabbitMQ at 127.0.0.1:1 (BACKUP_AMQP_URL): Connection refused"]


async def test_run_without_either_names_both(settings: Settings, tmp_path: Path) -> None:
    env = environment(settings, BACKUP_MYSQL_URL=CLOSED_MYSQL, BACKUP_AMQP_URL=CLOSED_AMQP)

    code, lines = await run_to_end(env, tmp_path, BACKUPCTL, "run")

    assert code == 1
    assert sorted(lines) == [
        "backupctl run: cannot reach MySQL at 127.0.0.1:1 (BACKUP_MYSQL_URL): Connection refused",
        "backupctl run: cannot reach RabbitMQ at 127.0.0.1:1 (BACKUP_AMQP_URL): Connection refused",
    ]


@pytest.mark.parametrize("package", ["backup_gateway", "backup_retention"])
async def test_a_service_without_its_catalog_exits_1_with_one_line_naming_the_variable(
    settings: Settings, tmp_path: Path, package: str
) -> None:
    env = environment(settings, BACKUP_MYSQL_URL=CLOSED_MYSQL)

    code, lines = await run_to_end(env, tmp_path, sys.executable, "-m", package)

    assert code == 1
    failures = [line for line in lines if "BACKUP_MYSQL_URL" in line]
    assert len(failures) == 1, lines
    assert failures[0].endswith(
        "cannot start: cannot reach MySQL at 127.0.0.1:1 (BACKUP_MYSQL_URL): Connection refused"
    )
    assert not any("Traceback" in line for line in lines)


# `backupctl run`'s supervision of one service, as `run` starts it once the catalog answered.
SUPERVISE = """
import asyncio, os, sys
from backup_common.cli.supervise import run_services
sys.exit(asyncio.run(run_services({"retention": "backup_retention"}, dict(os.environ))))
"""


async def test_a_supervised_service_that_cannot_reach_mysql_logs_one_line_per_start_and_ctrl_c_stops_all(
    settings: Settings, tmp_path: Path
) -> None:
    env = environment(settings, BACKUP_MYSQL_URL=CLOSED_MYSQL)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUPERVISE, cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert child.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(90):  # only against a hang: two starts take a few seconds
            while sum("retention exited with status 1" in line for line in lines) < 2:
                line = await child.stderr.readline()
                assert line, f"the supervisor ended: {lines}"
                lines.append(line.decode().rstrip("\n"))
    finally:
        child.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            _, rest = await child.communicate()
    lines += rest.decode().splitlines() if rest else []

    assert child.returncode == 0, lines
    assert not any("Traceback" in line for line in lines), lines
    starts = [line for line in lines if "BACKUP_MYSQL_URL" in line]
    restarts = [line for line in lines if line.startswith("backupctl run: retention exited with status 1")]
    assert len(starts) >= 2
    assert len(starts) in (len(restarts), len(restarts) + 1)
    assert all(
        line.endswith(
            "retention cannot start: cannot reach MySQL at 127.0.0.1:1 (BACKUP_MYSQL_URL): Connection refused"
        )
        for line in starts
    )
    assert set(lines) <= set(starts) | set(restarts), "nothing else: one line per start, one per restart"
