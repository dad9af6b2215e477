-- Off-site copies: one row per backup the copier has taken up. A completed backup without a row is
-- still to be copied (so enabling off-site storage copies the backups made before it). A failed
-- copy is tried again at next_attempt_at; a removal Object Lock refused, after retain_until.
CREATE TABLE IF NOT EXISTS offsite_copies (
    backup_id        CHAR(36)     NOT NULL,
    status           ENUM('pending', 'copied', 'failed', 'removed', 'locked') NOT NULL,
    attempts         INT UNSIGNED NOT NULL DEFAULT 0,
    bytes_copied     BIGINT UNSIGNED NOT NULL DEFAULT 0,
    location         VARCHAR(1024) NULL,
    error            TEXT         NULL,
    next_attempt_at  DATETIME(6)  NULL,
    copied_at        DATETIME(6)  NULL,
    retain_until     DATETIME(6)  NULL,
    local_removed_at DATETIME(6)  NULL,
    updated_at       DATETIME(6)  NOT NULL,
    PRIMARY KEY (backup_id),
    KEY offsite_copies_due (status, next_attempt_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
