"""The database_backup service's composition root: its handlers, given the ports and the source database."""

from __future__ import annotations

import functools

from aiohttp import web
from prometheus_client import CollectorRegistry

from backup_common.adapters.mysql.source import AsyncmySqlServer
from backup_common.adapters.runtime.jobs import JobMetrics, PartWorker
from backup_common.adapters.runtime.service import Service, bind, part_worker_service, serve, worker_app
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupPart
from backup_common.domain.ports import Ports
from backup_common.engine.database.dump import dump_database
from backup_common.engine.database.sql import SqlServer
from backup_database.handlers import HANDLERS, Dependencies, Dump, dump_part

NAME = "database_backup"


def bootstrap(
    settings: Settings,
    ports: Ports,
    registry: CollectorRegistry,
    *,
    source: SqlServer | None = None,
    dump: Dump = dump_database,
) -> Service:
    """``source`` and ``dump`` default to the configured database and the engine's dump."""
    produce = functools.partial(dump_part, source=source or AsyncmySqlServer(settings.source), dump=dump)
    worker = PartWorker(BackupPart.DATABASE, produce, ports, JobMetrics(registry, NAME))
    return part_worker_service(NAME, bind(HANDLERS, Dependencies(ports, worker)), worker)


def create_app(settings: Settings) -> web.Application:
    return worker_app(settings, NAME, bootstrap)


def main() -> None:
    serve(NAME, create_app, lambda settings: (settings.worker_host, settings.database_backup_port))
