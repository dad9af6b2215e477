-- The latest verification of each backup: the checks it ran and whether they all passed. A backup
-- without a row was never verified.
CREATE TABLE IF NOT EXISTS backup_verifications (
    backup_id       CHAR(36)     NOT NULL,
    status          ENUM('pending', 'verified', 'failed') NOT NULL,
    checks          JSON         NULL,
    error           TEXT         NULL,
    requested_at    DATETIME(6)  NULL,
    checked_at      DATETIME(6)  NULL,
    updated_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (backup_id),
    KEY backup_verifications_status (status, checked_at),
    CONSTRAINT backup_verifications_backup FOREIGN KEY (backup_id) REFERENCES backups (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
