"""The gateway's /metrics on a real catalog and broker: the whole system's figures, and a catalog that
does not answer."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from backup_common.adapters.amqp.topology import Topology, load_service_queues
from backup_common.adapters.mysql import db
from backup_common.adapters.runtime.service import RUNNING, Running
from backup_common.adapters.settings import Settings
from backup_common.engine.database.target import MysqlTarget
from backup_gateway import system_metrics
from tests.integration.gateway_support import (
    Gateway,
    make_source,
    running_gateway,
    running_workers,
    source_url,
    system_overrides,
    wait_finished,
)

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def every_scrape_reads_the_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    """No snapshot is reused, so each scrape shows what the test just did."""
    monkeypatch.setattr(system_metrics, "CACHE_SECONDS", 0.0)


@pytest.fixture
async def system(settings: Settings, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway and a database_backup worker (no file_backup: a files backup waits in its queue)."""
    url = source_url(settings)
    source = await make_source(url)
    try:
        async with (
            running_gateway(settings, **system_overrides(url, tmp_path)) as gateway,
            running_workers(gateway, "database_backup"),
        ):
            yield gateway
    finally:
        await db.drop_database(source)


async def scrape(gateway: Gateway) -> Samples:
    response = await gateway.client.get("/metrics")
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def running(gateway: Gateway) -> Running:
    app = gateway.client.app
    assert isinstance(app, web.Application)
    return app[RUNNING]


async def scrape_once_sent(gateway: Gateway) -> Samples:
    """A scrape once the outbox relay sent every event the test's requests wrote."""
    async with asyncio.timeout(60):
        while True:
            samples = await scrape(gateway)
            if value(samples, "backup_outbox_pending_events") == 0:
                return samples
            await asyncio.sleep(0.2)


async def test_after_a_completed_and_a_failed_backup_metrics_show_their_times_size_counts_outbox_and_queues(
    system: Gateway,
) -> None:
    completed = await wait_finished(system, (await system.create("database"))["id"])
    assert completed["status"] == "completed", completed["error"]
    # No file_backup worker runs: the request waits in its queue until the backup is failed, as
    # housekeeping fails one no worker took.
    waiting = await system.create("files")
    await system.fail(waiting, "no worker took it")
    [failed] = await system.rows("SELECT updated_at FROM backups WHERE id = %s", (waiting["id"],))

    samples = await scrape_once_sent(system)

    assert value(samples, "backup_catalog_up") == 1
    assert value(samples, "backup_last_success_timestamp_seconds", type="database") == pytest.approx(
        timestamp(completed["completed_at"]), abs=1e-3
    )
    assert value(samples, "backup_size_bytes", type="database") == completed["size_bytes"] > 0
    duration = value(samples, "backup_duration_seconds", type="database")
    assert duration is not None
    assert duration >= 0
    assert value(samples, "backup_last_failure_timestamp_seconds", type="files") == pytest.approx(
        db.utc(failed["updated_at"]).timestamp(), abs=1e-3
    )
    assert value(samples, "backup_last_success_timestamp_seconds", type="files") is None
    assert value(samples, "backup_last_failure_timestamp_seconds", type="database") is None
    assert value(samples, "backup_catalog_backups", type="database", status="completed") == 1
    assert value(samples, "backup_catalog_backups", type="files", status="failed") == 1
    assert value(samples, "backup_catalog_backups", type="full", status="completed") == 0
    assert value(samples, "backup_storage_used_bytes", type="database") == completed["size_bytes"]
    assert value(samples, "backup_outbox_pending_events") == 0
    assert value(samples, "backup_outbox_parked_events") == 0
    assert value(samples, "backup_outbox_lag_seconds") == 0
    # Nobody read the schedule yet: the shipped one (incremental and database Monday to Saturday).
    assert value(samples, "backup_schedule_expected_interval_seconds", type="incremental") == 2 * 86400
    filesystem = value(samples, "backup_storage_filesystem_size_bytes")
    assert filesystem is not None
    assert filesystem > 0

    topology = Topology(system.settings)
    queues = [topology.queue_name(service) for service in load_service_queues()]
    for queue in queues:
        assert value(samples, "backup_queue_messages", queue=queue) is not None, queue
        assert value(samples, "backup_queue_messages", queue=topology.dead_letter_queue_name(queue)) == 0, queue
    file_queue, database_queue = topology.queue_name("file_backup"), topology.queue_name("database_backup")
    # Every BackupRequested reaches both workers' queues: with no file_backup worker, both requests wait
    # in its queue, while the database worker consumes its own.
    assert value(samples, "backup_queue_messages", queue=file_queue) == 2
    assert value(samples, "backup_queue_consumers", queue=file_queue) == 0
    assert value(samples, "backup_queue_consumers", queue=database_queue) == 1


async def test_a_verification_failure_and_a_written_schedule_show_in_the_metrics(system: Gateway) -> None:
    completed = await wait_finished(system, (await system.create("database"))["id"])
    async with db.transaction(system.pool) as conn:
        await db.execute(
            conn,
            "INSERT INTO backup_verifications (backup_id, status, error, checked_at, updated_at)"
            " VALUES (%s, 'failed', 'database.archive_digest', NOW(6), NOW(6))",
            (completed["id"],),
        )
    status, _ = await system.call(
        "PUT",
        "/api/admin/backup/schedule",
        {"timezone": "UTC", "schedules": [{"name": "hourly", "type": "database", "cron": "0 * * * *"}]},
    )
    assert status == 200
    [written] = await system.rows("SELECT updated_at FROM settings WHERE name = 'schedule'")

    samples = await scrape(system)

    assert value(samples, "backup_catalog_verifications", type="database", state="failed") == 1
    assert value(samples, "backup_catalog_verifications", type="database", state="verified") == 0
    assert value(samples, "backup_last_verification_failure_timestamp_seconds", type="database") is not None
    assert value(samples, "backup_schedule_expected_interval_seconds", type="database") == 3600
    assert value(samples, "backup_schedule_expected_interval_seconds", type="incremental") is None
    assert value(samples, "backup_schedule_updated_timestamp_seconds") == pytest.approx(
        db.utc(written["updated_at"]).timestamp(), abs=1e-3
    )


async def test_with_the_catalog_pool_closed_metrics_answer_200_with_catalog_up_0_and_no_catalog_figures(
    gateway: Gateway,
) -> None:
    before = await scrape(gateway)
    assert value(before, "backup_catalog_up") == 1

    await db.close_pool(running(gateway).pool)
    samples = await scrape(gateway)

    assert value(samples, "backup_catalog_up") == 0
    assert not names(samples) & {
        "backup_catalog_backups",
        "backup_outbox_pending_events",
        "backup_outbox_lag_seconds",
        "backup_schedule_expected_interval_seconds",
    }
    # The process's own metrics are still served.
    assert "backup_broker_connected" in names(samples)


async def test_with_the_catalog_unreachable_metrics_answer_200_with_catalog_up_0(gateway: Gateway) -> None:
    process = running(gateway)
    # A port nothing listens on: every connection is refused.
    unreachable = MysqlTarget(f"mysql://root@127.0.0.1:1/backup_gw_{secrets.token_hex(4)}")
    pool: Any = await db.create_pool(unreachable, minsize=0)
    original, process.pool = process.pool, pool
    try:
        samples = await scrape(gateway)
    finally:
        process.pool = original
        await db.close_pool(pool)

    assert value(samples, "backup_catalog_up") == 0
    assert "backup_last_success_timestamp_seconds" not in names(samples)
    assert "backup_catalog_backups" not in names(samples)
    # Once it answers again, so do the figures.
    assert value(await scrape(gateway), "backup_catalog_up") == 1
