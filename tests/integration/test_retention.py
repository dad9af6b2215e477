"""The retention service with real MariaDB, RabbitMQ and files: schedules fire exactly once with two
replicas, a missed firing runs once within the catch-up window and never later, the policy deletes
what it lets go (files, then key) and keeps every chain whole, a deletion interrupted half-way is
finished, and housekeeping fails unclaimed work and erases old failures."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.keys import MysqlKeyStore
from backup_common.adapters.runtime.service import service_ports, worker_app
from backup_common.adapters.settings import Settings
from backup_common.cli import main as backupctl
from backup_retention import bootstrap as retention
from backup_retention.handlers import RetentionMetrics
from backup_retention.scheduler import Scheduler
from tests.integration.gateway_support import (
    Gateway,
    make_source,
    running_apps,
    running_gateway,
    running_workers,
    source_url,
    system_overrides,
    wait_finished,
)

pytestmark = pytest.mark.integration

API = "/api/admin/backup"
TICK = 0.1  # how often the test's schedulers and housekeepers look, in real seconds


class FastClock:
    """Real time from ``start``, ``speed`` times as fast: a schedule minute every 60 / speed seconds."""

    def __init__(self, start: datetime, speed: float) -> None:
        self._start = start
        self._began = time.monotonic()
        self._speed = speed

    def __call__(self) -> datetime:
        return self._start + timedelta(seconds=(time.monotonic() - self._began) * self._speed)


@dataclass
class System:
    gateway: Gateway
    app: Path


@pytest.fixture
async def system(settings: Settings, tmp_path: Path) -> AsyncIterator[System]:
    url = source_url(settings)
    source = await make_source(url)
    app = tmp_path / "app"
    (app / "uploads").mkdir(parents=True)
    (app / "uploads" / "cat.txt").write_text("meow\n")
    (app / "configs").mkdir()
    (app / "configs" / "app.ini").write_text("[db]\n")
    try:
        async with running_gateway(settings, **system_overrides(url, tmp_path)) as gateway:
            yield System(gateway, app)
    finally:
        await db.drop_database(source)


@asynccontextmanager
async def running_retention(gateway: Gateway, replicas: int = 1, **options: Any) -> AsyncIterator[None]:
    """Retention replicas on the gateway's catalog; ``options`` go to its bootstrap (clock, ticks)."""
    options = {"tick_seconds": TICK, "round_seconds": TICK} | options
    bootstrap = partial(retention.bootstrap, **options)
    apps = [(retention.NAME, worker_app(gateway.settings, retention.NAME, bootstrap)) for _ in range(replicas)]
    async with running_apps(apps):
        yield


async def until(check: Callable[[], Any], *, seconds: float = 60) -> Any:
    """The first truthy result of ``check`` (a coroutine function), polled."""
    async with asyncio.timeout(seconds):
        while True:
            if result := await check():
                return result
            await asyncio.sleep(0.1)


async def patch_settings(gateway: Gateway, patch: dict[str, Any]) -> None:
    status, body = await gateway.call("PATCH", f"{API}/settings", patch)
    assert status == 200, body


ONLY_LAST = {"keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0, "keep_yearly": 0}


async def completed(gateway: Gateway, backup_type: str) -> dict[str, Any]:
    made = await wait_finished(gateway, (await gateway.create(backup_type))["id"])
    assert made["status"] == "completed", made["error"]
    return made


async def status_of(gateway: Gateway, backup_id: str) -> str:
    status, body = await gateway.call("GET", f"{API}/{backup_id}")
    assert status == 200, body
    return str(body["backup"]["status"])


async def has_key(gateway: Gateway, backup_id: str) -> bool:
    return bool(await gateway.rows("SELECT backup_id FROM data_keys WHERE backup_id = %s", (backup_id,)))


def directory_of(gateway: Gateway, backup: dict[str, Any]) -> Path:
    return gateway.settings.storage_dir / str(backup["storage_path"])


# --- schedules -----------------------------------------------------------------------------------


async def test_an_every_minute_entry_fires_once_per_minute_with_two_replicas_and_follows_changes(
    system: System,
) -> None:
    gateway = system.gateway
    await patch_settings(gateway, {"retention": {"keep_last": 1000}})
    entry = {"name": "every-minute", "type": "database", "cron": "* * * * *", "enabled": True, "archive": True,
             "description": "the test's"}  # fmt: skip
    status, body = await gateway.call("PUT", f"{API}/schedule", {"timezone": "UTC", "schedules": [entry]})
    assert status == 200, body
    now = datetime.now(UTC)
    clock = FastClock(now.replace(second=50, microsecond=0), speed=12)  # a schedule minute every 5 s

    async def fired() -> list[dict[str, Any]]:
        return await gateway.rows("SELECT fire_at, outcome, backup_id, reason FROM schedule_firings ORDER BY fire_at")

    async with running_workers(gateway, "database_backup"), running_retention(gateway, 2, clock=clock):
        await until(lambda: _at_least(fired, 3), seconds=90)
        entry["enabled"] = False
        status, body = await gateway.call("PATCH", f"{API}/schedule", {"schedules": [entry]})
        assert status == 200, body
        disabled_at = clock()
        # Two more schedule minutes pass with the entry off.
        await until(lambda: _later(clock, disabled_at + timedelta(minutes=2)), seconds=60)
    firings = await fired()

    minutes = [row["fire_at"] for row in firings]
    assert len(minutes) == len(set(minutes)) >= 3
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(minutes))
    assert all(minute.second == 0 for minute in minutes)
    # Off from the next minute on: nothing fired after the change took effect.
    assert max(minutes).replace(tzinfo=UTC) <= disabled_at + timedelta(minutes=1)
    made = await gateway.rows(
        "SELECT id, schedule_name, trigger_source, archive FROM backups WHERE schedule_name IS NOT NULL"
    )
    fired_ids = [row["backup_id"] for row in firings if row["outcome"] == "fired"]
    assert fired_ids, firings
    assert sorted(row["id"] for row in made) == sorted(fired_ids)  # one backup per firing, no more
    assert all(row["reason"] for row in firings if row["outcome"] == "skipped")
    status, body = await gateway.call("GET", f"{API}/{fired_ids[0]}")
    assert (body["backup"]["schedule"], body["backup"]["trigger"], body["backup"]["archive"]) == (
        "every-minute",
        "schedule",
        True,
    )


async def _at_least(rows: Callable[[], Any], count: int) -> bool:
    return len(await rows()) >= count


async def _later(clock: FastClock, moment: datetime) -> bool:
    return clock() >= moment


async def test_two_schedulers_passing_at_the_same_instant_fire_each_minute_once(system: System) -> None:
    """Both replicas see the same fire time due at once: the firing's primary key lets one through."""
    gateway = system.gateway
    entry = {"name": "every-minute", "type": "database", "cron": "* * * * *"}
    status, body = await gateway.call("PUT", f"{API}/schedule", {"timezone": "UTC", "schedules": [entry]})
    assert status == 200, body
    pools = [await db.create_pool(gateway.settings.catalog) for _ in range(2)]
    try:
        schedulers = [
            Scheduler(
                service_ports(gateway.settings, pool, f"retention-{index}", lambda: None),
                RetentionMetrics(CollectorRegistry()),
                catch_up=timedelta(hours=1),
            )
            for index, pool in enumerate(pools)
        ]
        start = datetime.now(UTC).replace(second=30, microsecond=0)
        for minute in range(6):
            await asyncio.gather(*(scheduler.run_due(start + timedelta(minutes=minute)) for scheduler in schedulers))
            # Done at once, so that the next minute is not skipped for a backup still running.
            await gateway.rows("UPDATE backups SET status = 'completed' WHERE status = 'pending'")
    finally:
        for pool in pools:
            await db.close_pool(pool)

    firings = await gateway.rows("SELECT fire_at, outcome, backup_id, recorded_by FROM schedule_firings")
    assert sorted(row["fire_at"] for row in firings) == [
        (start + timedelta(minutes=minute)).replace(second=0, tzinfo=None) for minute in range(1, 6)
    ]
    assert {row["outcome"] for row in firings} == {"fired"}
    made = await gateway.rows("SELECT id FROM backups")
    assert sorted(row["id"] for row in made) == sorted(row["backup_id"] for row in firings)


async def test_a_missed_firing_within_the_catch_up_window_runs_once_and_an_older_one_is_recorded_missed(
    system: System,
) -> None:
    gateway = system.gateway
    now = datetime.now(UTC).replace(microsecond=0)
    recent, old = now - timedelta(minutes=30), now - timedelta(hours=2)
    schedule = {
        "timezone": "UTC",
        "schedules": [
            {"name": "recent", "type": "database", "cron": f"{recent.minute} {recent.hour} * * *"},
            {"name": "old", "type": "database", "cron": f"{old.minute} {old.hour} * * *"},
        ],
    }
    status, body = await gateway.call("PUT", f"{API}/schedule", schedule)
    assert status == 200, body
    # Both entries were last looked at three hours ago: the scheduler was down since.
    for name in ("recent", "old"):
        await gateway.rows(
            "INSERT INTO schedules (name, checked_until, updated_at) VALUES (%s, %s, %s)",
            (name, (now - timedelta(hours=3)).replace(tzinfo=None), now.replace(tzinfo=None)),
        )

    async def firings() -> list[dict[str, Any]]:
        return await gateway.rows("SELECT schedule_name, fire_at, outcome, backup_id, reason FROM schedule_firings")

    for _ in range(2):  # a second start finds nothing left to do
        async with running_retention(gateway, clock=lambda: now):
            await until(lambda: _at_least(firings, 2))
            await asyncio.sleep(10 * TICK)

    rows = {row["schedule_name"]: row for row in await firings()}
    assert len(await firings()) == 2
    assert rows["recent"]["outcome"] == "fired"
    assert rows["recent"]["fire_at"] == recent.replace(second=0, tzinfo=None)
    assert rows["old"]["outcome"] == "missed"
    assert rows["old"]["backup_id"] is None
    assert "no scheduler ran" in rows["old"]["reason"]
    made = await gateway.rows("SELECT id, schedule_name, trigger_source FROM backups")
    assert made == [{"id": rows["recent"]["backup_id"], "schedule_name": "recent", "trigger_source": "schedule"}]


# --- the policy and deletion ----------------------------------------------------------------------


async def test_keep_last_two_over_four_database_backups_deletes_the_two_oldest_files_and_keys(
    system: System, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = system.gateway
    await patch_settings(gateway, {"retention": {"keep_last": 2, **ONLY_LAST}})
    async with running_workers(gateway, "database_backup"):
        made = [await completed(gateway, "database") for _ in range(4)]
    oldest, newest = made[:2], made[2:]

    status, plan = await gateway.call("GET", f"{API}/retention")
    assert status == 200, plan
    assert plan == {
        "keep": [{"id": backup["id"], "reasons": ["last"]} for backup in reversed(newest)],
        "delete": [{"id": backup["id"], "reason": "not kept by any rule"} for backup in reversed(oldest)],
    }

    async with running_retention(gateway):
        for backup_id in (backup["id"] for backup in oldest):
            await until(partial(_deleted, gateway, backup_id))

    for backup in oldest:
        assert not directory_of(gateway, backup).exists()
        assert not await has_key(gateway, backup["id"])
        _, body = await gateway.call("GET", f"{API}/{backup['id']}")
        assert body["backup"]["erased_at"] is not None  # the row stays, for the audit trail
    for backup in newest:
        assert await status_of(gateway, backup["id"]) == "completed"
        assert (directory_of(gateway, backup) / "database.zip").is_file()
        assert await has_key(gateway, backup["id"])
    deleted_events = await gateway.rows("SELECT correlation_id FROM outbox WHERE event_type = 'BackupDeleted'")
    assert sorted(row["correlation_id"] for row in deleted_events) == sorted(b["id"] for b in oldest)

    settings = gateway.settings
    monkeypatch.setenv("BACKUP_MYSQL_URL", settings.mysql_url.get_secret_value())
    monkeypatch.setenv("BACKUP_STORAGE_DIR", str(settings.storage_dir))
    assert settings.master_key is not None
    monkeypatch.setenv("BACKUP_MASTER_KEY", settings.master_key.get_secret_value())
    assert await asyncio.to_thread(backupctl, ["key", oldest[0]["id"]]) == 1
    error = capsys.readouterr().err
    assert f"backup {oldest[0]['id']} was deleted on " in error
    assert "its data key destroyed (crypto-erase)" in error


async def _deleted(gateway: Gateway, backup_id: str) -> bool:
    return await status_of(gateway, backup_id) == "deleted"


async def test_a_chain_is_kept_whole_and_deleting_a_backup_an_incremental_needs_is_refused(system: System) -> None:
    gateway = system.gateway
    await patch_settings(gateway, {"retention": {"keep_last": 1, **ONLY_LAST}})
    async with running_workers(gateway, "database_backup", "file_backup"):
        base = await completed(gateway, "full")
        (system.app / "uploads" / "dog.txt").write_text("woof\n")
        first = await completed(gateway, "incremental")
        (system.app / "uploads" / "bird.txt").write_text("tweet\n")
        second = await completed(gateway, "incremental")
        later_full = await completed(gateway, "full")
    assert (first["parent_id"], second["parent_id"]) == (base["id"], first["id"])

    status, plan = await gateway.call("GET", f"{API}/retention")
    assert status == 200, plan
    kept = {entry["id"]: entry["reasons"] for entry in plan["keep"]}
    assert kept == {
        later_full["id"]: ["last"],
        second["id"]: ["last"],
        first["id"]: [f"needed by incremental {second['id']}"],
        base["id"]: [f"needed by incremental {second['id']}"],
    }
    assert plan["delete"] == []

    status, body = await gateway.call("DELETE", f"{API}/{base['id']}")
    assert status == 409, body
    assert body["error"]["code"] == "backup_has_dependents"
    assert first["id"] in body["error"]["message"]
    assert second["id"] in body["error"]["message"]
    status, body = await gateway.call("DELETE", f"{API}/{first['id']}")
    assert status == 409, body
    assert second["id"] in body["error"]["message"]
    assert await status_of(gateway, base["id"]) == "completed"
    status, body = await gateway.call("DELETE", f"{API}/{second['id']}")
    assert status == 202, body


async def test_a_deletion_that_stopped_after_removing_the_files_is_finished_on_retry(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = system.gateway
    async with running_workers(gateway, "database_backup"):
        backup = await completed(gateway, "database")
    directory = directory_of(gateway, backup)
    seen: list[tuple[bool, bool]] = []
    destroy = MysqlKeyStore.destroy

    async def crash_the_first_time(self: MysqlKeyStore, backup_id: str) -> bool:
        seen.append((directory.exists(), await has_key(gateway, backup_id)))
        if len(seen) == 1:
            raise ConnectionResetError("the catalog went away between the files and the key")
        return await destroy(self, backup_id)

    monkeypatch.setattr(MysqlKeyStore, "destroy", crash_the_first_time)
    async with running_retention(gateway):
        status, body = await gateway.call("DELETE", f"{API}/{backup['id']}")
        assert status == 202, body
        await until(lambda: _deleted(gateway, backup["id"]))

    assert seen[0] == (False, True)  # the crash left the files gone and the key in place
    assert len(seen) == 2
    assert not directory.exists()
    assert not await has_key(gateway, backup["id"])


# --- housekeeping ----------------------------------------------------------------------------------


async def test_housekeeping_fails_unclaimed_backups_erases_old_failures_and_purges_old_bookkeeping(
    system: System,
) -> None:
    gateway = system.gateway
    unclaimed = await gateway.create("database")
    failed = await gateway.create("files")
    await gateway.fail(failed, "disk full")
    leftover = directory_of(gateway, failed)
    leftover.mkdir(parents=True)
    (leftover / "files.zip").write_bytes(b"half an archive")
    await gateway.rows(
        "INSERT INTO data_keys (backup_id, key_id, wrapped_key, created_at) VALUES (%s, 'k', 'x', NOW(6))",
        (failed["id"],),
    )
    await gateway.rows("UPDATE backups SET updated_at = NOW(6) - INTERVAL 2 HOUR WHERE id = %s", (unclaimed["id"],))
    await gateway.rows("UPDATE backups SET updated_at = NOW(6) - INTERVAL 2 DAY WHERE id = %s", (failed["id"],))
    await gateway.rows(
        "INSERT INTO processed_messages (consumer, message_id, processed_at) VALUES"
        " ('retention', 'old', NOW(6) - INTERVAL 30 DAY), ('retention', 'new', NOW(6))"
    )
    await until(lambda: gateway.rows("SELECT id FROM outbox WHERE sent_at IS NOT NULL"))
    await gateway.rows("UPDATE outbox SET sent_at = NOW(6) - INTERVAL 30 DAY")

    async with running_retention(gateway):
        await until(lambda: _erased(gateway, failed["id"]))
        await until(lambda: _is(gateway, unclaimed["id"], "failed"))

    _, body = await gateway.call("GET", f"{API}/{unclaimed['id']}")
    assert "no worker took it within 60 minutes" in body["backup"]["error"]
    _, body = await gateway.call("GET", f"{API}/{failed['id']}")
    assert (body["backup"]["status"], body["backup"]["error"]) == ("failed", "disk full")
    assert not leftover.exists()
    assert not await has_key(gateway, failed["id"])
    processed = await gateway.rows("SELECT message_id FROM processed_messages WHERE consumer = 'retention'")
    assert [row["message_id"] for row in processed] == ["new"]
    assert not await gateway.rows("SELECT id FROM outbox WHERE sent_at < NOW(6) - INTERVAL 7 DAY")


async def _erased(gateway: Gateway, backup_id: str) -> bool:
    _, body = await gateway.call("GET", f"{API}/{backup_id}")
    return body["backup"]["erased_at"] is not None


async def _is(gateway: Gateway, backup_id: str, status: str) -> bool:
    return await status_of(gateway, backup_id) == status


# --- one service alone ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_backupctl_run_retention_starts_that_service_alone(system: System, tmp_path: Path) -> None:
    settings = system.gateway.settings
    retention_port, gateway_port = free_port(), free_port()
    env = os.environ | {
        "BACKUP_MYSQL_URL": settings.mysql_url.get_secret_value(),
        "BACKUP_AMQP_URL": settings.amqp_url.get_secret_value(),
        "BACKUP_AMQP_EXCHANGE": settings.amqp_exchange,
        "BACKUP_AMQP_QUEUE_PREFIX": settings.amqp_queue_prefix,
        "BACKUP_STORAGE_DIR": str(settings.storage_dir),
        "BACKUP_WORKER_HOST": "127.0.0.1",
        "BACKUP_RETENTION_PORT": str(retention_port),
        "BACKUP_GATEWAY_PORT": str(gateway_port),
    }
    child = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "backupctl", "run", "retention", cwd=tmp_path, env=env, stderr=subprocess.PIPE
    )
    try:
        async with aiohttp.ClientSession() as client:

            async def ready() -> bool:
                try:
                    async with client.get(f"http://127.0.0.1:{retention_port}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await until(ready)
            with pytest.raises(aiohttp.ClientConnectionError):
                await client.get(f"http://127.0.0.1:{gateway_port}/healthz")
    finally:
        child.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            _, errors = await child.communicate()
    assert child.returncode == 0, errors.decode()
