-- API identities, the audit log, and approval of untrusted (fork) runs.
-- Keep in step with ../postgres/0005_auth.sql.

CREATE TABLE api_tokens (
    name        TEXT    PRIMARY KEY,
    -- SHA-256 (hex) of the token: the token itself is shown once, at creation, and never stored.
    token_hash  TEXT    NOT NULL UNIQUE,
    -- viewer, operator or admin.
    role        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);

-- Every state-changing API call, allowed or refused.
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    -- `token:<name>`, `runner-registration`, or `anonymous`.
    actor   TEXT    NOT NULL,
    -- The route: `POST /api/v1/runs/{id}/cancel`.
    action  TEXT    NOT NULL,
    -- What it was applied to: the request path.
    target  TEXT    NOT NULL,
    -- The HTTP status answered.
    result  INTEGER NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (at);

-- An untrusted run waits, queued, until someone approves its head commit.
ALTER TABLE runs ADD COLUMN awaiting_approval INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN approved_by TEXT;
CREATE INDEX runs_awaiting_approval ON runs (repo, git_ref) WHERE awaiting_approval = 1;
