"""`python -m backup_database`: the database_backup worker, until SIGINT or SIGTERM."""

from __future__ import annotations

from aiohttp import web

from backup_common.logs import configure_logging
from backup_common.runtime import create_worker_app
from backup_common.settings import load_settings
from backup_database.service import DatabaseBackupWorker

SERVICE = "database_backup"


def main() -> None:
    settings = load_settings()
    configure_logging(settings, SERVICE)
    app = create_worker_app(settings, SERVICE, DatabaseBackupWorker)
    web.run_app(app, host=settings.worker_host, port=settings.database_backup_port, print=None, access_log=None)


if __name__ == "__main__":
    main()
