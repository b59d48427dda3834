-- Secrets (docs/secrets.md). Keep in step with ../postgres/0011_secrets.sql.

-- Values sealed with AES-256-GCM (reconciler/src/secrets.rs): the key is in a file, never here.
-- `environment` is '' for a secret of the whole repository. `key_id` names the key that sealed
-- the row, so that a key rotation can stop and resume anywhere.
CREATE TABLE secrets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repo        TEXT    NOT NULL,
    environment TEXT    NOT NULL DEFAULT '',
    name        TEXT    NOT NULL,
    key_id      TEXT    NOT NULL,
    nonce       TEXT    NOT NULL,
    ciphertext  TEXT    NOT NULL,
    set_by      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (repo, environment, name)
);
CREATE INDEX secrets_by_key ON secrets (key_id);

-- Each secret handed to a stage attempt: the name and scope, never the value.
CREATE TABLE secret_uses (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    stage       TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    repo        TEXT    NOT NULL,
    environment TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    used_at     INTEGER NOT NULL
);
CREATE INDEX secret_uses_by_run ON secret_uses (run_id);
