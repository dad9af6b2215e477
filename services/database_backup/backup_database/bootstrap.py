"""The database_backup service's composition root: its handlers, given the ports and the source server."""

from __future__ import annotations

import functools

from aiohttp import web
from prometheus_client import CollectorRegistry

from backup_common.adapters.mysql.source import AsyncmySqlServer
from backup_common.adapters.runtime.jobs import JobMetrics, PartWorker, sweep_leftovers
from backup_common.adapters.runtime.restores import RestoreWorker
from backup_common.adapters.runtime.service import Service, bind, job_worker_service, serve, worker_app
from backup_common.adapters.settings import Settings
from backup_common.domain.events import BackupPart
from backup_common.domain.ports import Ports
from backup_common.engine.database.dump import dump_database
from backup_common.engine.database.restore import restore_database
from backup_common.engine.database.sql import SqlServer
from backup_database.handlers import HANDLERS, Dependencies, Dump, RestoreDatabase, dump_part, restore_part

NAME = "database_backup"


def bootstrap(
    settings: Settings,
    ports: Ports,
    registry: CollectorRegistry,
    *,
    source: SqlServer | None = None,
    dump: Dump = dump_database,
    restore: RestoreDatabase = restore_database,
) -> Service:
    """``source``, ``dump`` and ``restore`` default to the configured server and the engine's own."""
    server = source or AsyncmySqlServer(settings.source)
    metrics = JobMetrics(registry, NAME)
    worker = PartWorker(BackupPart.DATABASE, functools.partial(dump_part, source=server, dump=dump), ports, metrics)
    restorer = RestoreWorker(
        BackupPart.DATABASE, functools.partial(restore_part, server=server, restore=restore), ports, metrics
    )
    service = job_worker_service(NAME, bind(HANDLERS, Dependencies(ports, worker, restorer)), worker, restorer)

    # Temporary files of attempts killed mid-write (tens of MB each); once, at start.
    service.loops = (functools.partial(sweep_leftovers, ports, settings.storage_dir),)
    return service


def create_app(settings: Settings) -> web.Application:
    return worker_app(settings, NAME, bootstrap)


def main() -> None:
    serve(NAME, create_app, lambda settings: (settings.worker_host, settings.database_backup_port))
