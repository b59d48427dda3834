-- An invalid pipeline's run (status `error`) keeps its problems in `errors` only: its
-- `pending_reason` used to repeat the first one, and `deploylite status` printed it twice.
-- Keep in step with ../sqlite/0007_run_errors.sql.
UPDATE runs SET pending_reason = NULL WHERE status = 'error';
