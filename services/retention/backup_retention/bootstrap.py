"""The retention service's composition root: its handlers, its scheduler, its rounds and its webhook
notifications."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from aiohttp import web
from prometheus_client import CollectorRegistry

from backup_common.adapters.runtime.service import Service, bind, serve, worker_app
from backup_common.adapters.settings import Settings
from backup_common.adapters.webhooks import AiohttpWebhooks
from backup_common.domain.notifications import RetryPolicy
from backup_common.domain.ports import Clock, Ports, WebhookSender
from backup_retention import housekeeping, notifications, offsite, scheduler
from backup_retention.handlers import HANDLERS, Dependencies, RetentionMetrics
from backup_retention.housekeeping import Housekeeper, Windows
from backup_retention.notifications import NotificationMetrics, Notifier
from backup_retention.offsite import Copier, OffsiteMetrics, OffsitePolicy
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
    webhooks: WebhookSender | None = None,
    notify_seconds: float | None = None,
    offsite_seconds: float | None = None,
) -> Service:
    """``clock`` replaces the ports' (tests run the schedule on a faster one), ``tick_seconds`` and
    ``round_seconds`` how often the scheduler and the housekeeping (and the look for missing backups)
    run, ``webhooks`` what POSTs notifications (aiohttp's client by default), ``notify_seconds`` how
    often due deliveries are looked for, ``offsite_seconds`` how often off-site copies due again are."""
    if clock is not None:
        ports = dataclasses.replace(ports, clock=clock)
    metrics = RetentionMetrics(registry)
    sender = webhooks or AiohttpWebhooks(settings.notification_timeout_seconds)
    secret = settings.notification_secret
    notifier = Notifier(
        ports,
        NotificationMetrics(registry),
        sender,
        secret.get_secret_value().encode() if secret is not None else None,
        retry=RetryPolicy(
            max_attempts=settings.notification_max_attempts,
            first_delay=settings.notification_retry_seconds,
        ),
        poll_seconds=notify_seconds or notifications.POLL_SECONDS,
        watch_seconds=round_seconds or notifications.WATCH_SECONDS,
    )
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
    copier = None
    if ports.offsite is not None:
        policy = OffsitePolicy(
            retry=timedelta(seconds=settings.offsite_retry_seconds),
            lock_days=settings.offsite_lock_days,
            local_keep=timedelta(days=settings.local_keep_days) if settings.local_keep_days else None,
        )
        copier = Copier(
            ports,
            ports.offsite,
            OffsiteMetrics(registry),
            policy,
            poll_seconds=offsite_seconds or min(offsite.POLL_SECONDS, settings.offsite_retry_seconds),
        )
    service = Service(NAME, bind(HANDLERS, Dependencies(ports, metrics, notifier, copier)))
    service.loops = (schedule.run, keeper.run, notifier.run, notifier.watch)
    if copier is not None:
        service.loops += (copier.run,)
    if isinstance(sender, AiohttpWebhooks):
        service.stop = sender.close  # after the loops: no delivery is in flight
    return service


def create_app(settings: Settings) -> web.Application:
    return worker_app(settings, NAME, bootstrap)


def main() -> None:
    serve(NAME, create_app, lambda settings: (settings.worker_host, settings.retention_port))
