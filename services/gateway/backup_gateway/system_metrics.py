"""The gateway's /metrics: the whole system as the catalog, the broker and the storage tell it.

Every replica of every service writes to the catalog, so the catalog is the truth about backups, not
the counters of one process: on a scrape the gateway reads it (a few aggregate queries, see
``backup_common.adapters.mysql.catalog_metrics``), asks RabbitMQ how deep each service's queue is
(passive declarations on its own connection) and measures the storage's filesystem, then renders
that snapshot with its own HTTP metrics. A snapshot serves every scrape for ``CACHE_SECONDS``, so
several Prometheus servers do not multiply the queries.

Each source is bounded in time and fails on its own: a catalog that does not answer gives
``backup_catalog_up 0`` and none of the catalog's figures (never stale ones, never a 500); a broker
that does not answer gives no queue depths (never zeros); the filesystem's figures stand apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backup_common.adapters.amqp.depths import QueueDepth, queue_depths
from backup_common.adapters.amqp.topology import Topology, load_service_queues
from backup_common.adapters.mysql.catalog_metrics import CatalogFigures, read_catalog_figures
from backup_common.adapters.mysql.documents import default_document
from backup_common.adapters.runtime.health import ServiceMetrics
from backup_common.adapters.runtime.service import RUNNING, Running
from backup_common.domain.documents import ScheduleDocument
from backup_common.domain.events import BackupType
from backup_common.domain.model import BackupStatus, RestoreStatus
from backup_common.domain.schedule import fire_times

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0
CATALOG_SECONDS = 3.0  # each source's bound: well inside Prometheus's default 10 s scrape timeout
BROKER_SECONDS = 2.0
STORAGE_SECONDS = 2.0

# The fire times looked at to find a type's longest gap: a year (a time zone's daylight saving time
# changes, a monthly or yearly entry), or fewer for a dense entry (every minute: its first ones).
INTERVAL_HORIZON = timedelta(days=366)
MAX_FIRE_TIMES = 4000
INTERVALS_KEPT = timedelta(days=1)  # intervals are worked out again at least this often

VERIFICATION_STATES = ("verified", "failed", "pending", "never")


@dataclass(frozen=True)
class Family:
    name: str
    documentation: str
    labels: tuple[str, ...] = ()


FAMILIES = {
    family.name: family
    for family in (
        Family(
            "backup_catalog_up",
            "1 when the catalog answered the queries of this scrape; 0 when it did not (its figures are left out).",
        ),
        Family(
            "backup_last_success_timestamp_seconds",
            "When the newest completed backup of the type completed (Unix time); absent for a type with none.",
            ("type",),
        ),
        Family(
            "backup_last_failure_timestamp_seconds",
            "When the latest failed backup of the type failed (Unix time); absent for a type with none.",
            ("type",),
        ),
        Family(
            "backup_duration_seconds",
            "How long the newest completed backup of the type took, from its first part starting to its completion.",
            ("type",),
        ),
        Family("backup_size_bytes", "Size of the archives of the newest completed backup of the type.", ("type",)),
        Family("backup_catalog_backups", "Backups in the catalog, by type and status.", ("type", "status")),
        Family(
            "backup_storage_used_bytes",
            "Bytes of the type's completed backups and of those being deleted, as the catalog records them.",
            ("type",),
        ),
        Family(
            "backup_catalog_verifications",
            "Completed backups by the outcome of their latest verification: verified, failed, pending (asked for or"
            " running) or never.",
            ("type", "state"),
        ),
        Family(
            "backup_last_verification_failure_timestamp_seconds",
            "When a completed backup of the type last failed verification (Unix time); absent when none did.",
            ("type",),
        ),
        Family("backup_catalog_restores", "Restores in the catalog, by status.", ("status",)),
        Family(
            "backup_outbox_pending_events",
            "Events written to the outbox and not yet confirmed by the broker (parked ones excluded).",
        ),
        Family(
            "backup_outbox_parked_events",
            "Events the broker refused too many times, kept with their reason until `backupctl outbox retry`.",
        ),
        Family(
            "backup_outbox_lag_seconds",
            "Age of the oldest event waiting in the outbox to be sent (parked ones excluded); 0 when none waits.",
        ),
        Family(
            "backup_schedule_expected_interval_seconds",
            "Longest gap between consecutive fire times of the enabled schedule entries of the type (over the"
            " coming year); absent for a type no entry makes.",
            ("type",),
        ),
        Family(
            "backup_schedule_updated_timestamp_seconds",
            "When the schedule document was last written, or first seeded from its default (Unix time).",
        ),
        Family(
            "backup_storage_filesystem_size_bytes",
            "Size of the filesystem the backup storage (BACKUP_STORAGE_DIR) is on.",
        ),
        Family(
            "backup_storage_filesystem_free_bytes",
            "Bytes free for the services on the filesystem the backup storage is on.",
        ),
        Family(
            "backup_queue_messages",
            "Messages ready for delivery in the queue; absent while RabbitMQ does not answer.",
            ("queue",),
        ),
        Family("backup_queue_consumers", "Consumers of the queue; absent while RabbitMQ does not answer.", ("queue",)),
    )
}


def expected_intervals(document: ScheduleDocument, now: datetime) -> dict[str, float]:
    """For each backup type an enabled entry makes, the longest gap in seconds between consecutive
    fire times of those entries over the coming year (so including daylight saving time changes),
    from ``domain.schedule``'s fire times. A dense entry is followed for MAX_FIRE_TIMES fire times
    only, and the gaps are measured up to where every entry of the type was followed."""
    horizon = now + INTERVAL_HORIZON
    by_type: dict[str, list[list[datetime]]] = {}
    for entry in document.schedules:
        if not entry.enabled:
            continue
        times: list[datetime] = []
        for fire_at in fire_times(entry.cron, document.timezone, now):
            times.append(fire_at)
            # One past the horizon, and two at least, so that a yearly entry (or a 29 February) shows its gap.
            if (fire_at > horizon and len(times) >= 2) or len(times) >= MAX_FIRE_TIMES:
                break
        by_type.setdefault(entry.type.value, []).append(times)
    intervals: dict[str, float] = {}
    for backup_type, entries in by_type.items():
        known_until = min(times[-1] for times in entries)
        merged = sorted({fire_at for times in entries for fire_at in times if fire_at <= known_until})
        gaps = [(later - earlier).total_seconds() for earlier, later in pairwise(merged)]
        if gaps:
            intervals[backup_type] = max(gaps)
    return intervals


@dataclass(frozen=True)
class Snapshot:
    catalog: CatalogFigures | None  # None: the catalog did not answer
    intervals: dict[str, float] = field(default_factory=dict)
    storage: tuple[int, int] | None = None  # filesystem total and free bytes
    queues: dict[str, QueueDepth] | None = None  # None: the broker did not answer


@dataclass(frozen=True)
class Sources:
    """Where a snapshot's figures come from: the running process's adapters, or fakes in unit tests."""

    catalog: Callable[[], Awaitable[CatalogFigures]]
    storage: Callable[[], Awaitable[tuple[int, int] | None]]
    queues: Callable[[], Awaitable[dict[str, QueueDepth] | None]]  # None: not connected
    default_schedule: Callable[[], Awaitable[ScheduleDocument]]
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


class SystemMetrics(Collector):
    """A collector, in the gateway's registry, of the latest snapshot; ``refresh`` takes a new one when
    the latest is older than ``cache_seconds``."""

    def __init__(
        self,
        service_metrics: ServiceMetrics,
        *,
        cache_seconds: float | None = None,  # CACHE_SECONDS
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache_seconds = CACHE_SECONDS if cache_seconds is None else cache_seconds
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._snapshot: Snapshot | None = None
        self._taken_at = 0.0
        self._intervals_key: tuple[Any, ...] | None = None
        self._intervals: dict[str, float] = {}
        self._intervals_at: datetime | None = None
        # ServiceMetrics' outbox gauges move here, so that they go (rather than go stale) with the catalog.
        registry = service_metrics.registry
        registry.unregister(service_metrics.outbox_pending)
        registry.unregister(service_metrics.outbox_parked)
        registry.register(self)

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    async def refresh(self, sources: Sources) -> Snapshot:
        """The snapshot to render: the cached one while fresh, else a new one. Never raises."""
        async with self._lock:  # concurrent scrapes wait for one reading rather than each making their own
            if self._snapshot is not None and self._monotonic() - self._taken_at < self._cache_seconds:
                return self._snapshot
            self._snapshot = await self._take(sources)
            self._taken_at = self._monotonic()
            return self._snapshot

    async def _take(self, sources: Sources) -> Snapshot:
        catalog, storage, queues = await asyncio.gather(
            _bounded("the catalog", sources.catalog, CATALOG_SECONDS),
            _bounded("the storage's filesystem", sources.storage, STORAGE_SECONDS),
            _bounded("RabbitMQ", sources.queues, BROKER_SECONDS),
        )
        intervals: dict[str, float] = {}
        if catalog is not None:
            intervals = await self._expected_intervals(catalog, sources)
        return Snapshot(catalog=catalog, intervals=intervals, storage=storage, queues=queues)

    async def _expected_intervals(self, catalog: CatalogFigures, sources: Sources) -> dict[str, float]:
        """The schedule's intervals, worked out again when the document changed or a day passed."""
        now = sources.clock()
        stored = catalog.schedule
        key = (stored.revision, stored.updated_at) if stored is not None else ("default",)
        fresh = self._intervals_at is not None and now - self._intervals_at < INTERVALS_KEPT
        if key == self._intervals_key and fresh:
            return self._intervals
        try:
            # Until a service first reads the schedule, the default is what the retention service will run.
            document = stored.document if stored is not None else await sources.default_schedule()
            self._intervals = await asyncio.to_thread(expected_intervals, document, now)
        except Exception:
            log.exception("metrics: cannot work out the schedule's intervals")
            self._intervals = {}
        self._intervals_key, self._intervals_at = key, now
        return self._intervals

    def describe(self) -> Iterable[Metric]:
        return [
            GaugeMetricFamily(family.name, family.documentation, labels=family.labels) for family in FAMILIES.values()
        ]

    def collect(self) -> Iterable[Metric]:
        snapshot = self._snapshot
        if snapshot is None:
            return []
        return list(_families(snapshot))


T = TypeVar("T")


async def _bounded(what: str, source: Callable[[], Awaitable[T]], seconds: float) -> T | None:
    """What ``source`` gives, or None when it failed or took longer than ``seconds`` (logged)."""
    try:
        async with asyncio.timeout(seconds):
            return await source()
    except Exception as exc:
        log.warning("metrics: %s did not answer (%s: %s)", what, type(exc).__name__, exc)
        return None


class _Families:
    def __init__(self) -> None:
        self.made: dict[str, GaugeMetricFamily] = {}

    def add(self, name: str, value: float, *labels: str) -> None:
        family = FAMILIES[name]
        if name not in self.made:
            self.made[name] = GaugeMetricFamily(name, family.documentation, labels=family.labels)
        self.made[name].add_metric(list(labels), value)


def _families(snapshot: Snapshot) -> Iterator[Metric]:
    out = _Families()
    catalog = snapshot.catalog
    out.add("backup_catalog_up", 1 if catalog is not None else 0)
    if catalog is not None:
        _catalog_families(out, catalog, snapshot.intervals)
    if snapshot.storage is not None:
        total, free = snapshot.storage
        out.add("backup_storage_filesystem_size_bytes", total)
        out.add("backup_storage_filesystem_free_bytes", free)
    for queue, depth in sorted((snapshot.queues or {}).items()):
        out.add("backup_queue_messages", depth.messages, queue)
        out.add("backup_queue_consumers", depth.consumers, queue)
    yield from out.made.values()


def _catalog_families(out: _Families, catalog: CatalogFigures, intervals: dict[str, float]) -> None:
    types = [backup_type.value for backup_type in BackupType]
    for backup_type in types:
        latest = catalog.last_success.get(backup_type)
        if latest is not None:
            out.add("backup_last_success_timestamp_seconds", latest.completed_at.timestamp(), backup_type)
            out.add("backup_duration_seconds", latest.duration_seconds, backup_type)
            out.add("backup_size_bytes", latest.size_bytes, backup_type)
        failed_at = catalog.last_failure.get(backup_type)
        if failed_at is not None:
            out.add("backup_last_failure_timestamp_seconds", failed_at.timestamp(), backup_type)
    for backup_type in types:
        for status in BackupStatus:
            count = catalog.backups.get((backup_type, status.value), 0)
            out.add("backup_catalog_backups", count, backup_type, status.value)
    for backup_type in types:
        out.add("backup_storage_used_bytes", catalog.stored_bytes.get(backup_type, 0), backup_type)
    for backup_type in types:
        for state in VERIFICATION_STATES:
            out.add(
                "backup_catalog_verifications", catalog.verifications.get((backup_type, state), 0), backup_type, state
            )
        verification_failed_at = catalog.last_verification_failure.get(backup_type)
        if verification_failed_at is not None:
            out.add(
                "backup_last_verification_failure_timestamp_seconds", verification_failed_at.timestamp(), backup_type
            )
    for restore_status in RestoreStatus:
        out.add("backup_catalog_restores", catalog.restores.get(restore_status.value, 0), restore_status.value)
    out.add("backup_outbox_pending_events", catalog.outbox.pending)
    out.add("backup_outbox_parked_events", catalog.outbox.parked)
    out.add("backup_outbox_lag_seconds", catalog.outbox.lag_seconds)
    for backup_type in types:
        if backup_type in intervals:
            out.add("backup_schedule_expected_interval_seconds", intervals[backup_type], backup_type)
    if catalog.schedule is not None:
        out.add("backup_schedule_updated_timestamp_seconds", catalog.schedule.updated_at.timestamp())


def running_sources(running: Running, queues: Callable[[], Awaitable[list[str]]]) -> Sources:
    """The sources of a running gateway: its catalog pool, its storage and its broker connection."""

    async def depths() -> dict[str, QueueDepth] | None:
        connection = running.broker.connection
        if connection is None or not running.broker.connected:
            return None
        return await queue_depths(connection, await queues())

    async def default_schedule() -> ScheduleDocument:
        document = await asyncio.to_thread(default_document, "schedule")
        assert isinstance(document, ScheduleDocument)
        return document

    return Sources(
        catalog=lambda: read_catalog_figures(running.pool),
        storage=running.ports.storage.usage,
        queues=depths,
        default_schedule=default_schedule,
        clock=running.ports.clock,
    )


class _ServiceQueues:
    """Every service's queue and its dead-letter queue, as every process declares them (read once)."""

    def __init__(self) -> None:
        self._names: list[str] | None = None

    async def names(self, topology: Topology) -> list[str]:
        if self._names is None:
            services = await asyncio.to_thread(load_service_queues)
            queues = [topology.queue_name(service) for service in sorted(services)]
            self._names = [name for queue in queues for name in (queue, topology.dead_letter_queue_name(queue))]
        return self._names


@dataclass
class GatewayMetrics:
    system: SystemMetrics
    queues: _ServiceQueues = field(default_factory=_ServiceQueues)


GATEWAY_METRICS = web.AppKey("gateway_metrics", GatewayMetrics)


async def metrics_view(request: web.Request) -> web.Response:
    """Prometheus metrics: the process's own (HTTP, broker link) and the whole system's."""
    running = request.app[RUNNING]
    metrics = request.app[GATEWAY_METRICS]
    running.metrics.broker_connected.set(1 if running.broker.connected else 0)
    topology = Topology(running.settings)
    await metrics.system.refresh(running_sources(running, lambda: metrics.queues.names(topology)))
    return web.Response(body=generate_latest(running.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_system_metrics(app: web.Application, service_metrics: ServiceMetrics) -> None:
    """Serves /metrics with the whole system's figures besides ``service_metrics`` (the gateway's registry)."""
    app[GATEWAY_METRICS] = GatewayMetrics(SystemMetrics(service_metrics))
    app.router.add_get("/metrics", metrics_view, name="metrics")
