"""The file_backup service's composition root: its handlers, given the ports, the trees and the restore directory."""

from __future__ import annotations

import functools
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from backup_common.adapters.runtime.jobs import JobMetrics, PartWorker, sweep_leftovers
from backup_common.adapters.runtime.restores import RestoreWorker
from backup_common.adapters.runtime.service import Service, bind, job_worker_service, serve, worker_app
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupPart
from backup_common.domain.ports import Ports
from backup_files.handlers import HANDLERS, Dependencies, archive_part, restore_part

NAME = "file_backup"


def trees(settings: Settings) -> dict[str, Path]:
    return {"uploads": settings.uploads_dir, "configs": settings.configs_dir, "logs": settings.logs_dir}


def bootstrap(settings: Settings, ports: Ports, registry: CollectorRegistry) -> Service:
    roots = trees(settings)
    metrics = JobMetrics(registry, NAME)
    worker = PartWorker(BackupPart.FILES, functools.partial(archive_part, roots=roots), ports, metrics)
    restore = functools.partial(restore_part, roots=roots, restore_dir=settings.restore_dir)
    restorer = RestoreWorker(BackupPart.FILES, restore, ports, metrics)
    service = job_worker_service(NAME, bind(HANDLERS, Dependencies(ports, worker, restorer)), worker, restorer)

    # Temporary files of attempts killed mid-write (tens of MB each); once, at start.
    service.loops = (functools.partial(sweep_leftovers, ports, settings.storage_dir),)
    return service


def create_app(settings: Settings) -> web.Application:
    return worker_app(settings, NAME, bootstrap)


def main() -> None:
    serve(NAME, create_app, lambda settings: (settings.worker_host, settings.file_backup_port))
