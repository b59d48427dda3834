-- Environments and their deployments (docs/environments.md). Keep in step with
-- ../sqlite/0009_environments.sql: the store runs the same queries on both.

-- The recorded side of each environment: what the default branch's environment file says
-- (`definition`, JSON) and where the environment stands.
CREATE TABLE environments (
    repo               TEXT    NOT NULL,
    name               TEXT    NOT NULL,
    definition         TEXT    NOT NULL,
    -- The default branch commit the definition was read from.
    definition_commit  TEXT    NOT NULL,
    -- The environment file is gone from the default branch: kept for its history, never deployed.
    removed            BIGINT  NOT NULL DEFAULT 0,
    desired_version    TEXT,
    desired_ref        TEXT,
    current_version    TEXT,
    current_deployment BIGINT,
    -- Set by the last drift check: `in_sync`, `drifted` or `unknown`; NULL before any check.
    drift              TEXT,
    -- Redeploys since the last in-sync check (bounded; then the environment is degraded).
    drift_redeploys    BIGINT  NOT NULL DEFAULT 0,
    check_run_id       BIGINT,
    last_check_at      BIGINT,
    next_check_at      BIGINT,
    -- A hold pins the environment: automation records desired versions but deploys none.
    hold_version       TEXT,
    hold_by            TEXT,
    hold_at            BIGINT,
    updated_at         BIGINT  NOT NULL,
    PRIMARY KEY (repo, name)
);

-- One row per deployment. Its identity is (repo, environment, version, attempt): automation
-- only ever asks for attempt 1 of a desired version (INSERT ... ON CONFLICT DO NOTHING), so
-- polls, webhooks and restarts never duplicate one, and a version that failed is not retried
-- until someone asks (the next attempt).
CREATE TABLE deployments (
    id               BIGSERIAL PRIMARY KEY,
    repo             TEXT    NOT NULL,
    environment      TEXT    NOT NULL,
    version          TEXT    NOT NULL,
    attempt          BIGINT  NOT NULL,
    git_ref          TEXT,
    previous_version TEXT,
    -- `deploy` or `rollback`.
    action           TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    pending_reason   TEXT,
    -- Who or what asked: `follows refs/heads/main`, `token:alice`, `rollback of deployment 7`.
    triggered_by     TEXT    NOT NULL,
    -- Asked by a person (CLI/API): not subject to a hold, not superseded by automation.
    manual           BIGINT  NOT NULL DEFAULT 0,
    -- The failed deployment an automatic rollback undoes.
    rollback_of      BIGINT,
    -- The `deploylite.deploy` gate's decision (as the runs' policy_* columns).
    policy_deny      TEXT,
    policy_warn      TEXT,
    policy_revision  TEXT,
    policy_eval_us   BIGINT,
    -- Why a deployment failed, was rejected or cancelled (JSON list of messages).
    errors           TEXT,
    created_at       BIGINT  NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    UNIQUE (repo, environment, version, attempt)
);
CREATE INDEX deployments_open ON deployments (status)
    WHERE status IN ('waiting', 'queued', 'deploying', 'verifying', 'rolling_back');
CREATE INDEX deployments_by_environment ON deployments (repo, environment, id);

CREATE TABLE deployment_approvals (
    deployment_id BIGINT  NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    approver      TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    PRIMARY KEY (deployment_id, approver)
);

-- The runs that carry out a deployment (deploy, verify, rollback) or an environment's drift
-- check: `deployment_action` is `deploy`, `rollback`, `verify` or `check`.
ALTER TABLE runs ADD COLUMN deployment_id BIGINT;
ALTER TABLE runs ADD COLUMN deployment_action TEXT;
CREATE INDEX runs_by_deployment ON runs (deployment_id) WHERE deployment_id IS NOT NULL;
