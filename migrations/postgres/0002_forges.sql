-- Forges: webhook deliveries, pull-request metadata on runs, and the outbox of reports.
-- Keep in step with ../sqlite/0002_forges.sql.

-- 1 when the run's repository reports to a forge: state changes then queue an outbox row.
ALTER TABLE runs ADD COLUMN report BIGINT  NOT NULL DEFAULT 0;
-- Pull/merge request number for runs with trigger `pull_request`.
ALTER TABLE runs ADD COLUMN pr_number BIGINT;
-- The repository the pull request's head comes from (owner/name or group/project).
ALTER TABLE runs ADD COLUMN head_repo TEXT;
-- 1 for a pull request from a fork: secrets and policy must not trust it.
ALTER TABLE runs ADD COLUMN untrusted BIGINT  NOT NULL DEFAULT 0;
CREATE INDEX runs_by_pr ON runs (repo, pr_number) WHERE pr_number IS NOT NULL;

-- Every webhook delivery we accepted, so that a replayed delivery is recognised.
CREATE TABLE webhook_deliveries (
    forge       TEXT    NOT NULL,
    delivery_id TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    received_at BIGINT  NOT NULL,
    PRIMARY KEY (forge, delivery_id)
);

-- Reports to send. A row says "run N changed": the sender renders the run's state at send time,
-- so a report can never carry an older state than one already sent.
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    run_id          BIGINT  NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    state           TEXT    NOT NULL DEFAULT 'pending',
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    sent_at         BIGINT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';

-- What we created on the forge and must update later (a check run id, a PR comment id).
CREATE TABLE forge_objects (
    repo        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    external_id TEXT NOT NULL,
    PRIMARY KEY (repo, kind, key)
);
