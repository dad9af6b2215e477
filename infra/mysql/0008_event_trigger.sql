-- Backups that automation asks for over AMQP (command.backup.create) have a trigger of their own.
ALTER TABLE backups
    MODIFY COLUMN trigger_source ENUM('api', 'schedule', 'cli', 'pre-restore', 'event') NOT NULL DEFAULT 'api';
