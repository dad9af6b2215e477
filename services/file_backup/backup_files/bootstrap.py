"""The file_backup service's composition root: its handlers, given the ports and the trees to back up."""

from __future__ import annotations

import functools
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from backup_common.adapters.runtime.jobs import JobMetrics, PartWorker
from backup_common.adapters.runtime.service import Service, bind, part_worker_service, serve, worker_app
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupPart
from backup_common.domain.ports import Ports
from backup_files.handlers import HANDLERS, Dependencies, archive_part

NAME = "file_backup"


def trees(settings: Settings) -> dict[str, Path]:
    return {"uploads": settings.uploads_dir, "configs": settings.configs_dir, "logs": settings.logs_dir}


def bootstrap(settings: Settings, ports: Ports, registry: CollectorRegistry) -> Service:
    produce = functools.partial(archive_part, roots=trees(settings))
    worker = PartWorker(BackupPart.FILES, produce, ports, JobMetrics(registry, NAME))
    return part_worker_service(NAME, bind(HANDLERS, Dependencies(ports, worker)), worker)


def create_app(settings: Settings) -> web.Application:
    return worker_app(settings, NAME, bootstrap)


def main() -> None:
    serve(NAME, create_app, lambda settings: (settings.worker_host, settings.file_backup_port))
