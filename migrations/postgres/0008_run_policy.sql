-- The policy decision of a run's `deploylite.run` gate (docs/policy.md): the messages of the
-- `deny` and `warn` rules that held (JSON arrays of strings), the sha256 of the policy
-- revision that decided, and how long the evaluation took. NULL revision: no policy applied
-- (none configured, or the run was created final before the gate).
-- Keep in step with ../sqlite/0008_run_policy.sql.
ALTER TABLE runs ADD COLUMN policy_deny TEXT;
ALTER TABLE runs ADD COLUMN policy_warn TEXT;
ALTER TABLE runs ADD COLUMN policy_revision TEXT;
ALTER TABLE runs ADD COLUMN policy_eval_us BIGINT;
