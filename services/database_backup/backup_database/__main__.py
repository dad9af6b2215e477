"""`python -m backup_database`: the database_backup worker."""

from backup_common.adapters.runtime.worker import run_worker
from backup_database.service import DatabaseBackupWorker

if __name__ == "__main__":
    run_worker("database_backup", DatabaseBackupWorker, lambda settings: settings.database_backup_port)
