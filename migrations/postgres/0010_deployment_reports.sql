-- Deployments mirrored to the forges (docs/environments.md, "Forges"). Keep in step with
-- ../sqlite/0010_deployment_reports.sql.

-- Reports to send about deployments, as `outbox` is for runs: a row says "deployment N
-- changed"; the sender renders the deployment's state at send time, so a late send never puts
-- an older state over a newer one. Written in the transaction that changes the deployment.
CREATE TABLE deployment_outbox (
    id              BIGSERIAL PRIMARY KEY,
    deployment_id   BIGINT  NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    state           TEXT    NOT NULL DEFAULT 'pending',
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    sent_at         BIGINT
);
CREATE INDEX deployment_outbox_due ON deployment_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deployment_outbox_by_deployment ON deployment_outbox (deployment_id) WHERE state = 'pending';
