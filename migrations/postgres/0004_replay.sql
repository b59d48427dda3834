-- Webhook replays: re-run requests by identity, and pruning of delivery records by age.
-- Keep in step with ../sqlite/0004_replay.sql.

-- Every re-run a forge asked for, by the request's identity rather than its delivery (GitHub:
-- the check run or suite id and when it was re-requested), so that a captured, signed request
-- replayed under a fresh delivery id creates no second attempt. Written in the re-run's
-- transaction.
CREATE TABLE rerun_requests (
    request_key TEXT    NOT NULL PRIMARY KEY,
    repo        TEXT    NOT NULL,
    received_at BIGINT  NOT NULL
);

-- The janitor deletes delivery records past their retention.
CREATE INDEX webhook_deliveries_by_age ON webhook_deliveries (received_at);
