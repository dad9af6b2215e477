-- Restores that run: where each goes, what it selects, the safety backup it waits for, and the
-- progress of each part, kept like a backup's.
ALTER TABLE restores
    ADD COLUMN target JSON NULL,
    ADD COLUMN selected_tables JSON NULL,
    ADD COLUMN selected_paths JSON NULL,
    ADD COLUMN safety_backup BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN safety_backup_id CHAR(36) NULL,
    ADD COLUMN started_at DATETIME(6) NULL,
    ADD KEY restores_created (created_at),
    ADD KEY restores_status (status, created_at),
    ADD KEY restores_safety_backup (safety_backup_id);

CREATE TABLE IF NOT EXISTS restore_parts (
    restore_id      CHAR(36)     NOT NULL,
    part            ENUM('database', 'files') NOT NULL,
    status          ENUM('pending', 'running', 'completed', 'failed') NOT NULL,
    progress        JSON         NULL,
    error           TEXT         NULL,
    attempts        INT UNSIGNED NOT NULL DEFAULT 0,
    started_at      DATETIME(6)  NULL,
    completed_at    DATETIME(6)  NULL,
    updated_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (restore_id, part),
    CONSTRAINT restore_parts_restore FOREIGN KEY (restore_id) REFERENCES restores (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The targets of unfinished restores, one row each: the primary key is what refuses a second restore
-- of a target while one runs, whatever the race between two requests.
CREATE TABLE IF NOT EXISTS restore_targets (
    target_key      VARCHAR(255) NOT NULL,
    restore_id      CHAR(36)     NOT NULL,
    PRIMARY KEY (target_key),
    KEY restore_targets_restore (restore_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

ALTER TABLE backups
    MODIFY COLUMN trigger_source ENUM('api', 'schedule', 'cli', 'pre-restore') NOT NULL DEFAULT 'api';
