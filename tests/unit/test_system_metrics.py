"""The gateway's /metrics figures of the whole system, from fakes of the catalog, storage and broker."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backup_common.adapters.amqp.depths import QueueDepth
from backup_common.adapters.mysql.catalog_metrics import (
    CatalogFigures,
    LatestBackup,
    OutboxFigures,
    StoredSchedule,
)
from backup_common.adapters.mysql.documents import default_document
from backup_common.adapters.runtime.health import ServiceMetrics
from backup_common.domain.documents import ScheduleDocument
from backup_gateway.system_metrics import FAMILIES, Sources, SystemMetrics, expected_intervals

NOW = datetime(2025, 3, 12, 9, 30, tzinfo=UTC)
HOUR = 3600.0
DAY = 24 * HOUR

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def schedule(*entries: dict[str, object], timezone: str = "UTC") -> ScheduleDocument:
    return ScheduleDocument.model_validate({"timezone": timezone, "schedules": list(entries)})


def entry(name: str, backup_type: str, cron: str, **extra: object) -> dict[str, object]:
    return {"name": name, "type": backup_type, "cron": cron, **extra}


def test_the_shipped_schedule_expects_a_database_and_an_incremental_backup_within_two_days_and_a_full_one_weekly() -> (
    None
):
    document = default_document("schedule")
    assert isinstance(document, ScheduleDocument)

    # Monday to Saturday at 02:00: the longest gap is Saturday to Monday. Sundays plus the 1st: a week.
    assert expected_intervals(document, NOW) == {"incremental": 2 * DAY, "database": 2 * DAY, "full": 7 * DAY}


def test_an_interval_counts_the_hour_daylight_saving_time_adds_to_a_day() -> None:
    document = schedule(entry("nightly", "database", "0 2 * * *"), timezone="Europe/Paris")

    assert expected_intervals(document, NOW) == {"database": 25 * HOUR}


def test_a_type_made_by_several_entries_is_expected_at_the_longest_gap_between_all_their_fire_times() -> None:
    document = schedule(
        entry("mornings", "files", "0 6 * * *"),
        entry("evenings", "files", "0 18 * * *"),
        entry("sundays", "full", "0 3 * * 0"),
    )

    assert expected_intervals(document, NOW) == {"files": 12 * HOUR, "full": 7 * DAY}


def test_disabled_entries_expect_nothing_and_a_yearly_one_expects_a_year() -> None:
    document = schedule(
        entry("off", "database", "0 * * * *", enabled=False),
        entry("yearly", "full", "0 0 1 1 *"),
        entry("leap", "files", "0 0 29 2 *"),
    )

    intervals = expected_intervals(document, NOW)

    assert set(intervals) == {"full", "files"}
    assert intervals["full"] in (365 * DAY, 366 * DAY)
    assert intervals["files"] == (datetime(2032, 2, 29, tzinfo=UTC) - datetime(2028, 2, 29, tzinfo=UTC)).total_seconds()


def test_a_dense_entry_is_followed_for_a_bounded_number_of_fire_times_and_sets_its_type_s_interval() -> None:
    document = schedule(entry("minutely", "incremental", "* * * * *"), entry("monthly", "incremental", "0 3 1 * *"))

    assert expected_intervals(document, NOW) == {"incremental": 60.0}


def figures(**changes: object) -> CatalogFigures:
    base = CatalogFigures(
        backups={("full", "completed"): 2, ("full", "failed"): 1, ("database", "deleted"): 4},
        stored_bytes={"full": 3000},
        last_success={
            "full": LatestBackup(
                "b2", datetime(2025, 3, 12, 2, 40, tzinfo=UTC), duration_seconds=2400.0, size_bytes=1800
            )
        },
        last_failure={"full": datetime(2025, 3, 11, 2, 5, tzinfo=UTC)},
        verifications={("full", "verified"): 1, ("full", "failed"): 1},
        last_verification_failure={"full": datetime(2025, 3, 11, 4, 0, tzinfo=UTC)},
        restores={"completed": 1},
        outbox=OutboxFigures(pending=3, parked=1, lag_seconds=42.5),
        schedule=StoredSchedule(
            schedule(entry("weekly", "full", "0 2 * * 0")), revision=4, updated_at=datetime(2025, 1, 1, tzinfo=UTC)
        ),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class FakeSources:
    """Counts the catalog's readings; each source answers, fails or hangs as a test sets it."""

    def __init__(self, catalog: CatalogFigures | BaseException | None = None) -> None:
        self.catalog_answer: CatalogFigures | BaseException = catalog if catalog is not None else figures()
        self.storage_answer: tuple[int, int] | BaseException | None = (1000 * 2**30, 400 * 2**30)
        self.queues_answer: dict[str, QueueDepth] | None = {
            "backup.file_backup": QueueDepth(messages=2, consumers=1),
            "backup.file_backup.dead": QueueDepth(messages=0, consumers=0),
        }
        self.catalog_readings = 0
        self.hold_catalog: asyncio.Event | None = None

    async def catalog(self) -> CatalogFigures:
        self.catalog_readings += 1
        if self.hold_catalog is not None:
            await self.hold_catalog.wait()
        if isinstance(self.catalog_answer, BaseException):
            raise self.catalog_answer
        return self.catalog_answer

    async def storage(self) -> tuple[int, int] | None:
        if isinstance(self.storage_answer, BaseException):
            raise self.storage_answer
        return self.storage_answer

    async def queues(self) -> dict[str, QueueDepth] | None:
        return self.queues_answer

    async def default_schedule(self) -> ScheduleDocument:
        document = default_document("schedule")
        assert isinstance(document, ScheduleDocument)
        return document

    def sources(self) -> Sources:
        return Sources(self.catalog, self.storage, self.queues, self.default_schedule, clock=lambda: NOW)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scrape(metrics: ServiceMetrics) -> Samples:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture
def service_metrics() -> ServiceMetrics:
    return ServiceMetrics()


async def test_a_scrape_shows_the_catalog_s_last_outcomes_counts_storage_outbox_schedule_and_queues(
    service_metrics: ServiceMetrics,
) -> None:
    system = SystemMetrics(service_metrics)

    await system.refresh(FakeSources().sources())
    samples = scrape(service_metrics)

    assert value(samples, "backup_catalog_up") == 1
    assert (
        value(samples, "backup_last_success_timestamp_seconds", type="full")
        == datetime(2025, 3, 12, 2, 40, tzinfo=UTC).timestamp()
    )
    assert (
        value(samples, "backup_last_failure_timestamp_seconds", type="full")
        == datetime(2025, 3, 11, 2, 5, tzinfo=UTC).timestamp()
    )
    assert value(samples, "backup_duration_seconds", type="full") == 2400
    assert value(samples, "backup_size_bytes", type="full") == 1800
    assert value(samples, "backup_catalog_backups", type="full", status="completed") == 2
    assert value(samples, "backup_catalog_backups", type="full", status="failed") == 1
    assert value(samples, "backup_catalog_backups", type="incremental", status="running") == 0
    assert value(samples, "backup_storage_used_bytes", type="full") == 3000
    assert value(samples, "backup_storage_used_bytes", type="files") == 0
    assert value(samples, "backup_catalog_verifications", type="full", state="failed") == 1
    assert value(samples, "backup_catalog_verifications", type="database", state="never") == 0
    assert (
        value(samples, "backup_last_verification_failure_timestamp_seconds", type="full")
        == datetime(2025, 3, 11, 4, 0, tzinfo=UTC).timestamp()
    )
    assert value(samples, "backup_catalog_restores", status="completed") == 1
    assert value(samples, "backup_catalog_restores", status="failed") == 0
    assert value(samples, "backup_outbox_pending_events") == 3
    assert value(samples, "backup_outbox_parked_events") == 1
    assert value(samples, "backup_outbox_lag_seconds") == 42.5
    assert value(samples, "backup_schedule_expected_interval_seconds", type="full") == 7 * DAY
    assert value(samples, "backup_schedule_updated_timestamp_seconds") == datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    assert value(samples, "backup_storage_filesystem_size_bytes") == 1000 * 2**30
    assert value(samples, "backup_storage_filesystem_free_bytes") == 400 * 2**30
    assert value(samples, "backup_queue_messages", queue="backup.file_backup") == 2
    assert value(samples, "backup_queue_consumers", queue="backup.file_backup") == 1
    assert value(samples, "backup_queue_messages", queue="backup.file_backup.dead") == 0
    # The process's own metrics are still there.
    assert value(samples, "backup_broker_connected") == 0


async def test_a_type_without_a_success_or_a_failure_or_a_schedule_has_no_timestamp_rather_than_zero(
    service_metrics: ServiceMetrics,
) -> None:
    system = SystemMetrics(service_metrics)

    await system.refresh(FakeSources().sources())
    samples = scrape(service_metrics)

    for name in (
        "backup_last_success_timestamp_seconds",
        "backup_last_failure_timestamp_seconds",
        "backup_duration_seconds",
        "backup_size_bytes",
        "backup_schedule_expected_interval_seconds",
    ):
        assert value(samples, name, type="database") is None, name


async def test_an_unread_schedule_is_expected_as_shipped_and_has_no_update_time(
    service_metrics: ServiceMetrics,
) -> None:
    system = SystemMetrics(service_metrics)

    await system.refresh(FakeSources(figures(schedule=None)).sources())
    samples = scrape(service_metrics)

    assert value(samples, "backup_schedule_expected_interval_seconds", type="incremental") == 2 * DAY
    assert "backup_schedule_updated_timestamp_seconds" not in names(samples)


async def test_a_catalog_that_fails_gives_catalog_up_0_and_none_of_its_figures_not_stale_ones(
    service_metrics: ServiceMetrics,
) -> None:
    clock = Clock()
    system = SystemMetrics(service_metrics, monotonic=clock)
    sources = FakeSources()
    await system.refresh(sources.sources())

    sources.catalog_answer = ConnectionRefusedError(111, "Connection refused")
    clock.now += 60
    await system.refresh(sources.sources())
    samples = scrape(service_metrics)

    assert value(samples, "backup_catalog_up") == 0
    catalog_names = set(FAMILIES) - {
        "backup_catalog_up",
        "backup_storage_filesystem_size_bytes",
        "backup_storage_filesystem_free_bytes",
        "backup_queue_messages",
        "backup_queue_consumers",
    }
    assert not names(samples) & catalog_names
    # The sources that answered still tell.
    assert value(samples, "backup_queue_messages", queue="backup.file_backup") == 2
    assert value(samples, "backup_storage_filesystem_free_bytes") == 400 * 2**30


async def test_a_catalog_that_does_not_answer_in_time_counts_as_down(
    service_metrics: ServiceMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("backup_gateway.system_metrics.CATALOG_SECONDS", 0.05)
    system = SystemMetrics(service_metrics)
    sources = FakeSources()
    sources.hold_catalog = asyncio.Event()  # never set

    await system.refresh(sources.sources())

    assert value(scrape(service_metrics), "backup_catalog_up") == 0


async def test_a_broker_that_is_not_connected_gives_no_queue_depths_rather_than_zeros(
    service_metrics: ServiceMetrics,
) -> None:
    system = SystemMetrics(service_metrics)
    sources = FakeSources()
    sources.queues_answer = None

    await system.refresh(sources.sources())
    samples = scrape(service_metrics)

    assert not names(samples) & {"backup_queue_messages", "backup_queue_consumers"}
    assert value(samples, "backup_catalog_up") == 1


async def test_a_storage_that_cannot_be_measured_leaves_out_its_figures_only(service_metrics: ServiceMetrics) -> None:
    system = SystemMetrics(service_metrics)
    sources = FakeSources()
    sources.storage_answer = PermissionError("denied")

    await system.refresh(sources.sources())
    samples = scrape(service_metrics)

    assert "backup_storage_filesystem_free_bytes" not in names(samples)
    assert value(samples, "backup_catalog_up") == 1


async def test_scrapes_within_the_cache_time_share_one_reading_of_the_catalog(service_metrics: ServiceMetrics) -> None:
    clock = Clock()
    system = SystemMetrics(service_metrics, cache_seconds=5, monotonic=clock)
    sources = FakeSources()

    await system.refresh(sources.sources())
    clock.now += 4.9
    await system.refresh(sources.sources())
    assert sources.catalog_readings == 1

    clock.now += 0.2
    await system.refresh(sources.sources())
    assert sources.catalog_readings == 2


async def test_concurrent_scrapes_wait_for_one_reading_rather_than_each_making_their_own(
    service_metrics: ServiceMetrics,
) -> None:
    system = SystemMetrics(service_metrics)
    sources = FakeSources()
    sources.hold_catalog = asyncio.Event()

    scrapes = [asyncio.create_task(system.refresh(sources.sources())) for _ in range(5)]
    await asyncio.sleep(0.01)
    sources.hold_catalog.set()
    snapshots = await asyncio.gather(*scrapes)

    assert sources.catalog_readings == 1
    assert all(snapshot is snapshots[0] for snapshot in snapshots)


async def test_a_failed_reading_is_cached_too_so_a_down_catalog_is_not_asked_on_every_scrape(
    service_metrics: ServiceMetrics,
) -> None:
    clock = Clock()
    system = SystemMetrics(service_metrics, monotonic=clock)
    sources = FakeSources(ConnectionRefusedError(111, "Connection refused"))

    await system.refresh(sources.sources())
    clock.now += 1
    await system.refresh(sources.sources())

    assert sources.catalog_readings == 1


def test_before_its_first_scrape_the_registry_renders_without_the_system_s_figures_or_duplicates(
    service_metrics: ServiceMetrics,
) -> None:
    SystemMetrics(service_metrics)

    samples = scrape(service_metrics)

    assert "backup_catalog_up" not in names(samples)
    # ServiceMetrics' outbox gauges were handed over, not left beside the catalog's.
    assert "backup_outbox_pending_events" not in names(samples)


def test_metric_names_follow_prometheus_conventions() -> None:
    for name in FAMILIES:
        assert name.startswith("backup_"), name
        assert not name.endswith("_total"), f"{name}: gauges never end in _total"
        if "timestamp" in name or "duration" in name or "interval" in name or "lag" in name:
            assert name.endswith("_seconds"), name
        if "size" in name or "bytes" in name:
            assert name.endswith("_bytes"), name


async def test_the_interval_of_a_schedule_is_worked_out_again_once_it_changes(service_metrics: ServiceMetrics) -> None:
    clock = Clock()
    system = SystemMetrics(service_metrics, monotonic=clock)
    sources = FakeSources()
    await system.refresh(sources.sources())
    assert value(scrape(service_metrics), "backup_schedule_expected_interval_seconds", type="full") == 7 * DAY

    sources.catalog_answer = figures(
        schedule=StoredSchedule(
            schedule(entry("daily", "full", "0 2 * * *")), revision=5, updated_at=NOW - timedelta(minutes=1)
        )
    )
    clock.now += 10
    await system.refresh(sources.sources())

    assert value(scrape(service_metrics), "backup_schedule_expected_interval_seconds", type="full") == DAY


@pytest.fixture
async def rendered(service_metrics: ServiceMetrics) -> str:
    system = SystemMetrics(service_metrics)
    await system.refresh(FakeSources().sources())
    return generate_latest(service_metrics.registry).decode()


def test_the_rendered_metrics_pass_promtool_s_lint(rendered: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `apt-get install -y --no-install-recommends prometheus` provides it")

    result = subprocess.run(
        [promtool, "check", "metrics"], input=rendered, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
