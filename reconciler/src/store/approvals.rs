//! Approving untrusted runs. An approval covers one head commit: the runs of that commit and
//! ref that wait for it. A later push records new runs, which wait for an approval of their own.

use deploylite_model::RunId;

use super::runs::queue_reports;
use super::{now_ms, run_ids, DbContext, Result, Store};

impl Store {
    /// Approves the head commit of run `id`: that run and the other runs of the same commit and
    /// ref waiting for approval. `None` when there is no run `id`; an empty list when it waits
    /// for no approval.
    pub async fn approve_run(&self, id: RunId, by: &str) -> Result<Option<Vec<RunId>>> {
        let mut tx = self.pool().begin().await.ctx("starting an approval")?;
        let run: Option<(String, String, String)> =
            sqlx::query_as("SELECT repo, git_ref, commit_sha FROM runs WHERE id = $1")
                .bind(id.get())
                .fetch_optional(&mut *tx)
                .await
                .ctx("reading a run to approve")?;
        let Some((repo, git_ref, commit)) = run else {
            return Ok(None);
        };
        let approved = approve_in(&mut tx, &repo, &git_ref, &commit, by).await?;
        tx.commit().await.ctx("committing an approval")?;
        Ok(Some(approved))
    }

    /// Approves, for a pull request comment written at `not_after` (epoch ms), the newest head
    /// commit of `git_ref` whose runs were recorded by then. A commit pushed after the comment
    /// is not covered: its author could not have been reviewed by it.
    pub async fn approve_pull_request(
        &self,
        repo: &str,
        git_ref: &str,
        not_after: i64,
        by: &str,
    ) -> Result<Vec<RunId>> {
        let mut tx = self.pool().begin().await.ctx("starting an approval")?;
        let commit: Option<String> = sqlx::query_scalar(
            "SELECT commit_sha FROM runs
             WHERE repo = $1 AND git_ref = $2 AND awaiting_approval = 1 AND status = 'queued'
               AND created_at <= $3
             ORDER BY id DESC LIMIT 1",
        )
        .bind(repo)
        .bind(git_ref)
        .bind(not_after)
        .fetch_optional(&mut *tx)
        .await
        .ctx("finding the runs a comment approves")?;
        let Some(commit) = commit else {
            return Ok(Vec::new());
        };
        let approved = approve_in(&mut tx, repo, git_ref, &commit, by).await?;
        tx.commit().await.ctx("committing an approval")?;
        Ok(approved)
    }
}

async fn approve_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    repo: &str,
    git_ref: &str,
    commit: &str,
    by: &str,
) -> Result<Vec<RunId>> {
    let approved: Vec<i64> = sqlx::query_scalar(
        "UPDATE runs SET awaiting_approval = 0, approved_by = $4, pending_reason = NULL
         WHERE repo = $1 AND git_ref = $2 AND commit_sha = $3
           AND awaiting_approval = 1 AND status = 'queued' AND cancel_requested = 0
         RETURNING id",
    )
    .bind(repo)
    .bind(git_ref)
    .bind(commit)
    .bind(by)
    .fetch_all(&mut **tx)
    .await
    .ctx("approving runs")?;
    let approved = run_ids(approved);
    queue_reports(tx, &approved, now_ms()).await?;
    Ok(approved)
}

impl Store {
    /// Approves one head commit of `git_ref` (a forge said which commit a comment approves).
    pub async fn approve_commit(
        &self,
        repo: &str,
        git_ref: &str,
        commit: &str,
        by: &str,
    ) -> Result<Vec<RunId>> {
        let mut tx = self.pool().begin().await.ctx("starting an approval")?;
        let approved = approve_in(&mut tx, repo, git_ref, commit, by).await?;
        tx.commit().await.ctx("committing an approval")?;
        Ok(approved)
    }
}
