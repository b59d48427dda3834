-- DeployLite core schema (SQLite). Times are milliseconds since the Unix epoch; flags are 0/1.
-- Keep in step with ../postgres/0001_core.sql: the store runs the same queries on both.

CREATE TABLE runs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    repo             TEXT    NOT NULL,
    pipeline         TEXT    NOT NULL,
    pipeline_file    TEXT    NOT NULL,
    commit_sha       TEXT    NOT NULL,
    git_ref          TEXT    NOT NULL,
    trigger          TEXT    NOT NULL,
    -- 1 for the run a commit triggers; a re-run of the same commit gets the next number.
    run_attempt      INTEGER NOT NULL DEFAULT 1,
    status           TEXT    NOT NULL,
    pending_reason   TEXT,
    concurrency      TEXT    NOT NULL,
    -- The pipeline as parsed at that commit (JSON); NULL for runs in status `error`.
    spec             TEXT,
    -- Diagnostics (JSON list) for runs in status `error`, and the reason of a `skipped` run.
    errors           TEXT,
    -- Where the commit is checked out; set by `deploylite run` up front, else by the scheduler.
    workspace        TEXT,
    workspace_ready  INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    -- Set by the janitor once retention has deleted them.
    workspace_cleaned INTEGER NOT NULL DEFAULT 0,
    logs_cleaned     INTEGER NOT NULL DEFAULT 0,
    UNIQUE (repo, pipeline, commit_sha, trigger, run_attempt)
);
CREATE INDEX runs_active ON runs (status) WHERE status IN ('queued', 'running');
CREATE INDEX runs_by_ref ON runs (repo, pipeline, git_ref, id);

CREATE TABLE stages (
    run_id         INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name           TEXT    NOT NULL,
    position       INTEGER NOT NULL,
    status         TEXT    NOT NULL,
    -- Attempts started so far (0 while the first one has not started).
    attempt        INTEGER NOT NULL DEFAULT 0,
    -- Failed attempts so far: what `retry.max` counts. An attempt cut short by a daemon
    -- restart is not the stage's failure and does not count.
    failures       INTEGER NOT NULL DEFAULT 0,
    needs          TEXT    NOT NULL,
    pending_reason TEXT,
    not_before     INTEGER,
    exit_code      INTEGER,
    started_at     INTEGER,
    finished_at    INTEGER,
    PRIMARY KEY (run_id, name)
);

CREATE TABLE stage_attempts (
    run_id      INTEGER NOT NULL,
    stage       TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    exit_code   INTEGER,
    -- Why this attempt exists or ended the way it did (retry, restart, timeout...).
    note        TEXT,
    executor    TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    PRIMARY KEY (run_id, stage, attempt),
    FOREIGN KEY (run_id, stage) REFERENCES stages (run_id, name) ON DELETE CASCADE
);

-- The last commit we reconciled for each watched ref: the "recorded" side of desired vs recorded.
CREATE TABLE watched_refs (
    repo       TEXT    NOT NULL,
    git_ref    TEXT    NOT NULL,
    commit_sha TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (repo, git_ref)
);
