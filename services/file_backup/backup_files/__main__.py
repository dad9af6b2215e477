"""`python -m backup_files`: the file_backup worker."""

from backup_common.adapters.runtime.worker import run_worker
from backup_files.service import FileBackupWorker

if __name__ == "__main__":
    run_worker("file_backup", FileBackupWorker, lambda settings: settings.file_backup_port)
