//! Tag baselines: the tags a repository already had when its tags were first watched are
//! recorded as its watched refs without runs, once.

use super::{now_ms, DbContext, Result, Store};

impl Store {
    /// Whether `repo`'s existing tags were recorded already.
    pub async fn tags_baselined(&self, repo: &str) -> Result<bool> {
        let row = sqlx::query("SELECT repo FROM tag_baselines WHERE repo = $1")
            .bind(repo)
            .fetch_optional(self.pool())
            .await
            .ctx("reading a tag baseline")?;
        Ok(row.is_some())
    }

    /// Records `tags` (full ref, commit) as `repo`'s watched refs without creating runs, and
    /// that the baseline was taken, in one transaction. Refs recorded already keep their commit.
    pub async fn baseline_tags(&self, repo: &str, tags: &[(String, String)]) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool().begin().await.ctx("starting a tag baseline")?;
        for (git_ref, commit) in tags {
            sqlx::query(
                "INSERT INTO watched_refs (repo, git_ref, commit_sha, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repo, git_ref) DO NOTHING",
            )
            .bind(repo)
            .bind(git_ref)
            .bind(commit)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("recording an existing tag")?;
        }
        sqlx::query(
            "INSERT INTO tag_baselines (repo, recorded_at, tags) VALUES ($1, $2, $3)
             ON CONFLICT (repo) DO NOTHING",
        )
        .bind(repo)
        .bind(now)
        .bind(i64::try_from(tags.len()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .ctx("recording a tag baseline")?;
        tx.commit().await.ctx("committing a tag baseline")?;
        Ok(())
    }
}
