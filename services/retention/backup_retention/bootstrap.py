"""The retention service's composition root: its handlers, its scheduler and its rounds."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from aiohttp import web
from prometheus_client import CollectorRegistry

from backup_common.adapters.runtime.service import Service, bind, serve, worker_app
from backup_common.adapters.settings import Settings
from backup_common.domain.ports import Clock, Ports
from backup_retention import housekeeping, scheduler
from backup_retention.handlers import HANDLERS, Dependencies, RetentionMetrics
from backup_retention.housekeeping import Housekeeper, Windows
from backup_retention.scheduler import Scheduler

NAME = "retention"


def bootstrap(
    settings: Settings,
    ports: Ports,
    registry: CollectorRegistry,
    *,
    clock: Clock | None = None,
    tick_seconds: float | None = None,
    round_seconds: float | None = None,
) -> Service:
    """``clock`` replaces the ports' (tests run the schedule on a faster one), ``tick_seconds`` and
    ``round_seconds`` how often the scheduler and the housekeeping look."""
    if clock is not None:
        ports = dataclasses.replace(ports, clock=clock)
    metrics = RetentionMetrics(registry)
    schedule = Scheduler(
        ports,
        metrics,
        catch_up=timedelta(minutes=settings.schedule_catch_up_minutes),
        tick_seconds=tick_seconds or scheduler.TICK_SECONDS,
    )
    windows = Windows(
        pending_timeout=timedelta(minutes=settings.pending_timeout_minutes),
        deleting_retry=timedelta(minutes=settings.deleting_retry_minutes),
        keep=timedelta(days=settings.housekeeping_keep_days),
    )
    keeper = Housekeeper(ports, metrics, windows, round_seconds=round_seconds or housekeeping.ROUND_SECONDS)
    service = Service(NAME, bind(HANDLERS, Dependencies(ports, metrics)))
    service.loops = (schedule.run, keeper.run)
    return service


def create_app(settings: Settings) -> web.Application:
    return worker_app(settings, NAME, bootstrap)


def main() -> None:
    serve(NAME, create_app, lambda settings: (settings.worker_host, settings.retention_port))
