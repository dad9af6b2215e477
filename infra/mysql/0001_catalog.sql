-- The catalog: an index of what storage holds, plus the coordination state of the services.
-- Times are UTC (every session sets time_zone = '+00:00'); ids are UUID strings.

CREATE TABLE IF NOT EXISTS backups (
    id              CHAR(36)     NOT NULL,
    type            ENUM('full', 'database', 'files', 'incremental') NOT NULL,
    status          ENUM('pending', 'running', 'completed', 'failed', 'deleting', 'deleted') NOT NULL,
    description     VARCHAR(500) NOT NULL DEFAULT '',
    requested_by    VARCHAR(255) NOT NULL,
    trigger_source  ENUM('api', 'schedule', 'cli') NOT NULL DEFAULT 'api',
    parent_id       CHAR(36)     NULL,
    storage_path    VARCHAR(255) NOT NULL,
    size_bytes      BIGINT UNSIGNED NOT NULL DEFAULT 0,
    error           TEXT         NULL,
    idempotency_key VARCHAR(255) NULL,
    request_hash    CHAR(64)     NULL,
    created_at      DATETIME(6)  NOT NULL,
    started_at      DATETIME(6)  NULL,
    completed_at    DATETIME(6)  NULL,
    updated_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY backups_idempotency (requested_by, idempotency_key),
    KEY backups_created (created_at),
    KEY backups_type_status (type, status, created_at),
    KEY backups_status (status, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS backup_parts (
    backup_id       CHAR(36)     NOT NULL,
    part            ENUM('database', 'files') NOT NULL,
    status          ENUM('pending', 'running', 'completed', 'failed') NOT NULL,
    file_name       VARCHAR(255) NULL,
    size_bytes      BIGINT UNSIGNED NOT NULL DEFAULT 0,
    sha256          CHAR(64)     NULL,
    item_count      BIGINT UNSIGNED NOT NULL DEFAULT 0,
    progress        JSON         NULL,
    error           TEXT         NULL,
    attempts        INT UNSIGNED NOT NULL DEFAULT 0,
    started_at      DATETIME(6)  NULL,
    completed_at    DATETIME(6)  NULL,
    updated_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (backup_id, part),
    CONSTRAINT backup_parts_backup FOREIGN KEY (backup_id) REFERENCES backups (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS restores (
    id              CHAR(36)     NOT NULL,
    backup_id       CHAR(36)     NOT NULL,
    status          ENUM('pending', 'running', 'completed', 'failed') NOT NULL,
    parts           JSON         NOT NULL,
    requested_by    VARCHAR(255) NOT NULL,
    error           TEXT         NULL,
    created_at      DATETIME(6)  NOT NULL,
    completed_at    DATETIME(6)  NULL,
    updated_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    KEY restores_backup (backup_id, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Validated JSON documents edited through the API (the schedule and the settings).
CREATE TABLE IF NOT EXISTS settings (
    name            VARCHAR(64)  NOT NULL,
    document        JSON         NOT NULL,
    revision        INT UNSIGNED NOT NULL DEFAULT 1,
    updated_by      VARCHAR(255) NOT NULL,
    updated_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- When each schedule entry last fired and is next due; kept by the retention service.
CREATE TABLE IF NOT EXISTS schedules (
    name            VARCHAR(64)  NOT NULL,
    last_run_at     DATETIME(6)  NULL,
    next_run_at     DATETIME(6)  NULL,
    last_backup_id  CHAR(36)     NULL,
    updated_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS audit_log (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    occurred_at     DATETIME(6)  NOT NULL,
    actor           VARCHAR(255) NOT NULL,
    action          VARCHAR(64)  NOT NULL,
    target          VARCHAR(255) NOT NULL DEFAULT '',
    outcome         ENUM('allowed', 'denied', 'failed') NOT NULL,
    status_code     SMALLINT UNSIGNED NULL,
    source_address  VARCHAR(64)  NOT NULL DEFAULT '',
    request_id      CHAR(36)     NULL,
    detail          JSON         NULL,
    PRIMARY KEY (id),
    KEY audit_log_time (occurred_at),
    KEY audit_log_actor (actor, occurred_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The audit log is append-only: the server itself refuses to change or remove a row.
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'audit_log is append-only';

CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'audit_log is append-only';

CREATE TABLE IF NOT EXISTS outbox (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    event_id        CHAR(36)     NOT NULL,
    event_type      VARCHAR(64)  NOT NULL,
    routing_key     VARCHAR(255) NOT NULL,
    correlation_id  CHAR(36)     NOT NULL,
    payload         LONGBLOB     NOT NULL,
    created_at      DATETIME(6)  NOT NULL,
    sent_at         DATETIME(6)  NULL,
    attempts        INT UNSIGNED NOT NULL DEFAULT 0,
    last_error      TEXT         NULL,
    PRIMARY KEY (id),
    UNIQUE KEY outbox_event (event_id),
    KEY outbox_unsent (sent_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS processed_messages (
    consumer        VARCHAR(128) NOT NULL,
    message_id      VARCHAR(128) NOT NULL,
    processed_at    DATETIME(6)  NOT NULL,
    PRIMARY KEY (consumer, message_id),
    KEY processed_messages_time (processed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- A lease on a long job (one backup part, one restore part). `version` grows on every claim, so a
-- holder whose lease was taken over is fenced out of every write that checks it.
CREATE TABLE IF NOT EXISTS job_leases (
    job_key         VARCHAR(128) NOT NULL,
    holder          VARCHAR(255) NULL,
    version         BIGINT UNSIGNED NOT NULL DEFAULT 0,
    state           ENUM('held', 'released', 'done', 'failed') NOT NULL,
    attempts        INT UNSIGNED NOT NULL DEFAULT 0,
    payload         JSON         NULL,
    claimed_at      DATETIME(6)  NULL,
    heartbeat_at    DATETIME(6)  NULL,
    expires_at      DATETIME(6)  NULL,
    last_error      TEXT         NULL,
    updated_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (job_key),
    KEY job_leases_expiry (state, expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Each backup's data key, wrapped by the master key named by key_id. Deleting the row crypto-erases.
CREATE TABLE IF NOT EXISTS data_keys (
    backup_id       CHAR(36)     NOT NULL,
    key_id          VARCHAR(64)  NOT NULL,
    wrapped_key     VARBINARY(512) NOT NULL,
    created_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (backup_id),
    KEY data_keys_key_id (key_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
