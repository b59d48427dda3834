//! What the pull request reconcile (`crate::pulls`) reads: which heads have runs, and which
//! pull requests still have runs that closing would cancel.

use super::{DbContext, Result, Store};

impl Store {
    /// Whether the pull request head `commit` on `git_ref` has been recorded (has runs).
    pub async fn pull_request_head_recorded(
        &self,
        repo: &str,
        git_ref: &str,
        commit: &str,
    ) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM runs
             WHERE repo = $1 AND git_ref = $2 AND commit_sha = $3 AND trigger = 'pull_request'
             LIMIT 1",
        )
        .bind(repo)
        .bind(git_ref)
        .bind(commit)
        .fetch_optional(self.pool())
        .await
        .ctx("looking up a pull request head")?;
        Ok(found.is_some())
    }

    /// The pull request refs of `repo` with runs that closing the pull request would cancel
    /// (the same runs as [`Store::cancel_queued_runs`]), each with when its newest such run was
    /// recorded (epoch ms).
    pub async fn cancellable_pull_request_refs(&self, repo: &str) -> Result<Vec<(String, i64)>> {
        sqlx::query_as(
            "SELECT git_ref, MAX(created_at) FROM runs
             WHERE repo = $1 AND trigger = 'pull_request' AND cancel_requested = 0
               AND (status = 'queued'
                    OR (status = 'running'
                        AND NOT EXISTS (SELECT 1 FROM stages s WHERE s.run_id = runs.id AND s.attempt > 0)))
             GROUP BY git_ref",
        )
        .bind(repo)
        .fetch_all(self.pool())
        .await
        .ctx("listing pull requests with queued runs")
    }
}
