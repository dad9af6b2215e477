-- The outbox relay retries an event the broker refuses with growing delays and, after a bounded
-- number of attempts, parks it with its reason, so failing rows never hold back newer events.
ALTER TABLE outbox
    ADD COLUMN next_attempt_at DATETIME(6) NOT NULL DEFAULT '2000-01-01 00:00:00',
    ADD COLUMN parked_at DATETIME(6) NULL,
    ADD KEY outbox_due (sent_at, parked_at, next_attempt_at, id);
