-- Runners: registered agents that take stages, and the leases they hold.
-- Keep in step with ../postgres/0003_runners.sql.

CREATE TABLE runners (
    name            TEXT    PRIMARY KEY,
    -- SHA-256 (hex) of the runner's credential: the credential itself is never stored.
    credential_hash TEXT    NOT NULL UNIQUE,
    labels          TEXT    NOT NULL,
    capacity        INTEGER NOT NULL,
    executor        TEXT    NOT NULL,
    registered_at   INTEGER NOT NULL,
    last_seen       INTEGER,
    revoked         INTEGER NOT NULL DEFAULT 0
);

-- The runner holding a running stage's current attempt (`local` for the daemon's own), and
-- until when its lease holds without a heartbeat (NULL for the local runner, whose attempts
-- end with the daemon and are recovered at start).
ALTER TABLE stages ADD COLUMN runner TEXT;
ALTER TABLE stages ADD COLUMN lease_deadline INTEGER;
-- 1 once the runner has collected the lease.
ALTER TABLE stages ADD COLUMN lease_delivered INTEGER NOT NULL DEFAULT 0;
CREATE INDEX stages_by_runner ON stages (runner) WHERE status = 'running';
