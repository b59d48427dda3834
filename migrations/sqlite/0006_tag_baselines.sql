-- Repositories whose existing tags were recorded (in watched_refs, without runs) when their tags
-- were first watched: from then on only tags pushed later start runs.
-- Keep in step with ../postgres/0006_tag_baselines.sql.

CREATE TABLE tag_baselines (
    repo        TEXT    PRIMARY KEY,
    recorded_at INTEGER NOT NULL,
    -- How many tags were recorded without runs.
    tags        INTEGER NOT NULL
);
