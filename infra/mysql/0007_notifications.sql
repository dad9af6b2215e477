-- Webhook notifications (backup failed, verification failed, backup missing): one row per
-- notification and webhook, retried with growing delays until a 2xx answer or given up.
-- The unique key makes recording the same notification twice a no-op (a redelivered event);
-- the due scan reads (delivered_at, given_up_at, next_attempt_at) with FOR UPDATE SKIP LOCKED.
CREATE TABLE IF NOT EXISTS notification_deliveries (
    id              CHAR(36)      NOT NULL,
    webhook_url     VARCHAR(2000) NOT NULL,
    url_sha256      CHAR(64)      NOT NULL,
    event_kind      ENUM('backup_failed', 'verification_failed', 'backup_missing') NOT NULL,
    dedupe_key      VARCHAR(191)  NOT NULL,
    payload         JSON          NOT NULL,
    attempts        INT UNSIGNED  NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6)   NOT NULL,
    delivered_at    DATETIME(6)   NULL,
    given_up_at     DATETIME(6)   NULL,
    last_error      TEXT          NULL,
    created_at      DATETIME(6)   NOT NULL,
    updated_at      DATETIME(6)   NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY notification_deliveries_once (dedupe_key, url_sha256),
    KEY notification_deliveries_due (delivered_at, given_up_at, next_attempt_at),
    KEY notification_deliveries_age (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- A scheduled backup reported missing is reported once per fire time, whatever the replicas: the
-- firing row remembers it.
ALTER TABLE schedule_firings
    ADD COLUMN missing_reported_at DATETIME(6) NULL;
