-- What a part left out and why (a socket, a FIFO, a file that vanished or became unreadable as it
-- was read), shown on the backup: the first warnings of the part, and how many there were in all.
ALTER TABLE backup_parts
    ADD COLUMN warnings      JSON         NULL AFTER progress,
    ADD COLUMN warning_count INT UNSIGNED NOT NULL DEFAULT 0 AFTER warnings;
