-- The retention service: backups made by a schedule entry (and the archives among them), each
-- entry's firings claimed exactly once, and when a backup's files and data key were erased.
ALTER TABLE backups
    ADD COLUMN schedule_name VARCHAR(64) NULL AFTER trigger_source,
    ADD COLUMN archive       TINYINT(1)  NOT NULL DEFAULT 0 AFTER schedule_name,
    ADD COLUMN erased_at     DATETIME(6) NULL,
    ADD KEY backups_schedule (schedule_name, created_at);

-- One row per schedule entry and fire time. The primary key is the claim: of any number of
-- replicas, one inserts the row (and the backup in the same transaction); the others collide.
CREATE TABLE IF NOT EXISTS schedule_firings (
    schedule_name   VARCHAR(64)  NOT NULL,
    fire_at         DATETIME(6)  NOT NULL,
    outcome         ENUM('fired', 'skipped', 'missed') NOT NULL,
    backup_id       CHAR(36)     NULL,
    reason          VARCHAR(500) NULL,
    recorded_by     VARCHAR(255) NOT NULL,
    recorded_at     DATETIME(6)  NOT NULL,
    PRIMARY KEY (schedule_name, fire_at),
    KEY schedule_firings_time (recorded_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- How far each entry's fire times have been looked at: firings after it are due or missed.
ALTER TABLE schedules
    ADD COLUMN checked_until DATETIME(6) NULL AFTER name;
