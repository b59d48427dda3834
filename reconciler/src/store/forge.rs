//! The store's side of forge integration: webhook delivery de-duplication, the outbox of
//! reports, ids of objects created on the forge, and the run operations webhooks ask for
//! (cancel a ref's queued runs, re-run a commit).

use deploylite_model::RunId;
use sqlx::Row;

use super::runs::queue_report;
use super::{now_ms, run_ids, DbContext, Result, Store};
use crate::model::RunRecord;

/// A due report: "run `id` changed; tell the forge" (or, from
/// [`Store::due_deployment_reports`], deployment `id`). Rows up to `up_to_id` are covered.
#[derive(Debug, Clone, PartialEq)]
pub struct DueReport {
    /// The run's id, or the deployment's.
    pub id: i64,
    pub up_to_id: i64,
    pub attempts: i64,
}

impl DueReport {
    /// The run of a run's report (from [`Store::due_reports`]).
    pub fn run_id(&self) -> RunId {
        RunId::from(self.id)
    }
}

impl Store {
    /// Records a webhook delivery. False when it was seen before (a replay).
    pub async fn record_delivery(
        &self,
        forge: &str,
        delivery_id: &str,
        event: &str,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO webhook_deliveries (forge, delivery_id, event, received_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (forge, delivery_id) DO NOTHING",
        )
        .bind(forge)
        .bind(delivery_id)
        .bind(event)
        .bind(now_ms())
        .execute(self.pool())
        .await
        .ctx("recording a webhook delivery")?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Whether a re-run request (see [`Store::rerun`]) was already carried out.
    pub async fn rerun_requested(&self, request_key: &str) -> Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM rerun_requests WHERE request_key = $1")
                .bind(request_key)
                .fetch_optional(self.pool())
                .await
                .ctx("looking up a re-run request")?;
        Ok(found.is_some())
    }

    /// Deletes the records of deliveries received before `before` (epoch ms); how many. A
    /// forge redelivers within hours, so a retention of days still recognises every redelivery.
    /// Re-run requests are kept: one row per click, and a replay must stay a replay.
    pub async fn prune_deliveries(&self, before: i64) -> Result<u64> {
        let deleted = sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
            .bind(before)
            .execute(self.pool())
            .await
            .ctx("pruning webhook deliveries")?;
        Ok(deleted.rows_affected())
    }

    /// Forgets a delivery whose event could not be applied, so that its redelivery is not a replay.
    pub async fn forget_delivery(&self, forge: &str, delivery_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM webhook_deliveries WHERE forge = $1 AND delivery_id = $2")
            .bind(forge)
            .bind(delivery_id)
            .execute(self.pool())
            .await
            .ctx("forgetting a webhook delivery")?;
        Ok(())
    }

    /// Runs with pending reports due by `now`, one entry per run (its rows coalesce), oldest first.
    pub async fn due_reports(&self, now: i64, limit: i64) -> Result<Vec<DueReport>> {
        let rows = sqlx::query(
            "SELECT run_id, MAX(id) AS up_to_id, MAX(attempts) AS attempts FROM outbox
             WHERE state = 'pending' AND next_attempt_at <= $1
             GROUP BY run_id ORDER BY MIN(id) LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .ctx("reading due reports")?;
        rows.iter()
            .map(|r| {
                Ok(DueReport {
                    id: r.try_get("run_id").ctx("reading a report")?,
                    up_to_id: r.try_get("up_to_id").ctx("reading a report")?,
                    attempts: r.try_get("attempts").ctx("reading a report")?,
                })
            })
            .collect()
    }

    /// When the next pending report (of a run or a deployment) falls due, if any.
    pub async fn next_report_due(&self) -> Result<Option<i64>> {
        let runs: Option<i64> =
            sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'")
                .fetch_one(self.pool())
                .await
                .ctx("reading the next report time")?;
        let deployments: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM deployment_outbox WHERE state = 'pending'",
        )
        .fetch_one(self.pool())
        .await
        .ctx("reading the next deployment report time")?;
        Ok(match (runs, deployments) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Deployments with pending reports due by `now`, one entry per deployment (its rows
    /// coalesce), oldest first. `DueReport::id` holds the deployment id.
    pub async fn due_deployment_reports(&self, now: i64, limit: i64) -> Result<Vec<DueReport>> {
        let rows = sqlx::query(
            "SELECT deployment_id, MAX(id) AS up_to_id, MAX(attempts) AS attempts FROM deployment_outbox
             WHERE state = 'pending' AND next_attempt_at <= $1
             GROUP BY deployment_id ORDER BY MIN(id) LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .ctx("reading due deployment reports")?;
        rows.iter()
            .map(|r| {
                Ok(DueReport {
                    id: r.try_get("deployment_id").ctx("reading a report")?,
                    up_to_id: r.try_get("up_to_id").ctx("reading a report")?,
                    attempts: r.try_get("attempts").ctx("reading a report")?,
                })
            })
            .collect()
    }

    /// Marks a deployment's report rows up to `up_to_id` as sent. Rows added since stay pending.
    pub async fn deployment_report_sent(&self, deployment_id: i64, up_to_id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE deployment_outbox SET state = 'sent', sent_at = $3
             WHERE deployment_id = $1 AND id <= $2 AND state = 'pending'",
        )
        .bind(deployment_id)
        .bind(up_to_id)
        .bind(now_ms())
        .execute(self.pool())
        .await
        .ctx("marking a deployment report sent")?;
        Ok(())
    }

    /// Postpones a deployment's pending reports after a failed delivery.
    pub async fn deployment_report_failed(
        &self,
        deployment_id: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deployment_outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3
             WHERE deployment_id = $1 AND state = 'pending'",
        )
        .bind(deployment_id)
        .bind(next_attempt_at)
        .bind(error)
        .execute(self.pool())
        .await
        .ctx("postponing a deployment report")?;
        Ok(())
    }

    /// Pending deployment report rows (for tests and the status page).
    pub async fn pending_deployment_report_count(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM deployment_outbox WHERE state = 'pending'")
            .fetch_one(self.pool())
            .await
            .ctx("counting pending deployment reports")
    }

    /// Marks a run's report rows up to `up_to_id` as sent. Rows added since stay pending.
    pub async fn report_sent(&self, run_id: RunId, up_to_id: i64) -> Result<()> {
        sqlx::query("UPDATE outbox SET state = 'sent', sent_at = $3 WHERE run_id = $1 AND id <= $2 AND state = 'pending'")
            .bind(run_id.get())
            .bind(up_to_id)
            .bind(now_ms())
            .execute(self.pool())
            .await
            .ctx("marking a report sent")?;
        Ok(())
    }

    /// Postpones a run's pending reports after a failed delivery.
    pub async fn report_failed(
        &self,
        run_id: RunId,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3
             WHERE run_id = $1 AND state = 'pending'",
        )
        .bind(run_id.get())
        .bind(next_attempt_at)
        .bind(error)
        .execute(self.pool())
        .await
        .ctx("postponing a report")?;
        Ok(())
    }

    /// Pending report rows (for tests and the status page).
    pub async fn pending_report_count(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
            .fetch_one(self.pool())
            .await
            .ctx("counting pending reports")
    }

    pub async fn forge_object(&self, repo: &str, kind: &str, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT external_id FROM forge_objects WHERE repo = $1 AND kind = $2 AND key = $3",
        )
        .bind(repo)
        .bind(kind)
        .bind(key)
        .fetch_optional(self.pool())
        .await
        .ctx("reading a forge object id")
    }

    pub async fn set_forge_object(
        &self,
        repo: &str,
        kind: &str,
        key: &str,
        external_id: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO forge_objects (repo, kind, key, external_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT (repo, kind, key) DO UPDATE SET external_id = excluded.external_id",
        )
        .bind(repo)
        .bind(kind)
        .bind(key)
        .bind(external_id)
        .execute(self.pool())
        .await
        .ctx("recording a forge object id")?;
        Ok(())
    }

    /// The runs of a pull request's latest head commit (the commit of its newest run).
    pub async fn pull_request_runs(&self, repo: &str, pr_number: i64) -> Result<Vec<RunRecord>> {
        let latest: Option<String> = sqlx::query_scalar(
            // The newest commit pushed to the PR; a re-run of an older commit is not a new head.
            "SELECT commit_sha FROM runs WHERE repo = $1 AND pr_number = $2 AND run_attempt = 1 ORDER BY id DESC LIMIT 1",
        )
        .bind(repo)
        .bind(pr_number)
        .fetch_optional(self.pool())
        .await
        .ctx("finding a pull request's head")?;
        let Some(commit) = latest else {
            return Ok(Vec::new());
        };
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT MAX(id) FROM runs WHERE repo = $1 AND pr_number = $2 AND commit_sha = $3
             GROUP BY pipeline ORDER BY pipeline",
        )
        .bind(repo)
        .bind(pr_number)
        .bind(&commit)
        .fetch_all(self.pool())
        .await
        .ctx("listing a pull request's runs")?;
        let mut runs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((run, _)) = self.get_run(RunId::from(id)).await? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// Cancels the queued runs of a ref (a deleted branch, a closed pull request): runs none of
    /// whose stages has started yet, whether or not the run itself has begun preparing its
    /// workspace. Returns their ids.
    pub async fn cancel_queued_runs(
        &self,
        repo: &str,
        git_ref: &str,
        reason: &str,
    ) -> Result<Vec<RunId>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE runs SET cancel_requested = 1, pending_reason = $3
             WHERE repo = $1 AND git_ref = $2 AND cancel_requested = 0
               AND (status = 'queued'
                    OR (status = 'running'
                        AND NOT EXISTS (SELECT 1 FROM stages s WHERE s.run_id = runs.id AND s.attempt > 0)))
             RETURNING id",
        )
        .bind(repo)
        .bind(git_ref)
        .bind(reason)
        .fetch_all(self.pool())
        .await
        .ctx("cancelling queued runs")?;
        Ok(run_ids(ids))
    }

    /// Runs a commit's pipelines again as new runs (`run_attempt` + 1), from the pipeline each
    /// latest run recorded. `pipeline: None` re-runs every pipeline of the commit. Runs that
    /// never validated (`error`) are not re-run: their pipeline is still invalid at that commit.
    ///
    /// `request` is the identity of the forge's re-run request: it is recorded in the same
    /// transaction as the new runs, and a request already recorded re-runs nothing (a replay).
    pub async fn rerun(
        &self,
        repo: &str,
        commit: &str,
        pipeline: Option<&str>,
        request: Option<&str>,
    ) -> Result<Vec<RunId>> {
        let now = now_ms();
        let mut tx = self.pool().begin().await.ctx("starting a re-run")?;
        if let Some(key) = request {
            let recorded = sqlx::query(
                "INSERT INTO rerun_requests (request_key, repo, received_at) VALUES ($1, $2, $3)
                 ON CONFLICT (request_key) DO NOTHING",
            )
            .bind(key)
            .bind(repo)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("recording a re-run request")?;
            if recorded.rows_affected() == 0 {
                return Ok(Vec::new());
            }
        }
        let latest: Vec<i64> = sqlx::query_scalar(
            "SELECT r.id FROM runs r
             WHERE r.repo = $1 AND r.commit_sha = $2 AND ($3 IS NULL OR r.pipeline = $3) AND r.spec IS NOT NULL
               AND r.run_attempt = (SELECT MAX(o.run_attempt) FROM runs o
                                    WHERE o.repo = r.repo AND o.pipeline = r.pipeline
                                      AND o.commit_sha = r.commit_sha AND o.trigger = r.trigger)",
        )
        .bind(repo)
        .bind(commit)
        .bind(pipeline)
        .fetch_all(&mut *tx)
        .await
        .ctx("finding runs to re-run")?;
        let created = rerun_in(&mut tx, &run_ids(latest), now).await?;
        tx.commit().await.ctx("committing a re-run")?;
        Ok(created)
    }

    /// Whether a later attempt of the same run (same repository, pipeline, commit and trigger)
    /// exists: it owns whatever the forge shows per pipeline and commit (a commit status).
    pub async fn superseded(&self, run_id: RunId) -> Result<bool> {
        let newer: Option<i64> = sqlx::query_scalar(
            "SELECT o.id FROM runs r JOIN runs o
               ON o.repo = r.repo AND o.pipeline = r.pipeline AND o.commit_sha = r.commit_sha
                  AND o.trigger = r.trigger AND o.run_attempt > r.run_attempt
             WHERE r.id = $1 LIMIT 1",
        )
        .bind(run_id.get())
        .fetch_optional(self.pool())
        .await
        .ctx("looking for a later attempt of a run")?;
        Ok(newer.is_some())
    }

    /// Runs again, as new attempts, the runs of `commit` on `git_ref` whose latest attempt was
    /// cancelled or is being cancelled; finished, running and invalid runs are left alone.
    /// This is what a pull request reopened at the head it was closed at needs: closing
    /// cancelled the head's queued runs, and run identity makes recording the head again a
    /// no-op, so without a new attempt the pull request would keep a cancelled check.
    pub async fn rerun_cancelled(
        &self,
        repo: &str,
        git_ref: &str,
        commit: &str,
    ) -> Result<Vec<RunId>> {
        let now = now_ms();
        let mut tx = self
            .pool()
            .begin()
            .await
            .ctx("starting a re-run of cancelled runs")?;
        let cancelled: Vec<i64> = sqlx::query_scalar(
            // A cancel that is requested but not applied yet (the scheduler has not stopped the
            // run, or a reopen follows the close within a tick) counts as cancelled: that run
            // will end `cancelled` and never report a result for this head.
            "SELECT r.id FROM runs r
             WHERE r.repo = $1 AND r.git_ref = $2 AND r.commit_sha = $3 AND r.spec IS NOT NULL
               AND (r.status = 'cancelled'
                    OR (r.cancel_requested = 1 AND r.status IN ('queued', 'running')))
               AND r.run_attempt = (SELECT MAX(o.run_attempt) FROM runs o
                                    WHERE o.repo = r.repo AND o.pipeline = r.pipeline
                                      AND o.commit_sha = r.commit_sha AND o.trigger = r.trigger)",
        )
        .bind(repo)
        .bind(git_ref)
        .bind(commit)
        .fetch_all(&mut *tx)
        .await
        .ctx("finding cancelled runs to re-run")?;
        let created = rerun_in(&mut tx, &run_ids(cancelled), now).await?;
        tx.commit()
            .await
            .ctx("committing a re-run of cancelled runs")?;
        Ok(created)
    }
}

/// Creates the next attempt of each run in `runs`, with fresh stages and a report row.
/// An attempt that already exists is skipped: two overlapping re-runs (a double click, two
/// deliveries at once) read the same latest attempt, and the second must neither fail nor copy
/// stages into the first one's run.
async fn rerun_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    runs: &[RunId],
    now: i64,
) -> Result<Vec<RunId>> {
    let mut created = Vec::with_capacity(runs.len());
    for &old in runs {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO runs (repo, pipeline, pipeline_file, commit_sha, git_ref, trigger, run_attempt, status,
                 concurrency, spec, workspace_ready, created_at, report, pr_number, head_repo, untrusted,
                 awaiting_approval, approved_by, pending_reason)
             SELECT repo, pipeline, pipeline_file, commit_sha, git_ref, trigger, run_attempt + 1, 'queued',
                 concurrency, spec, 0, $2, report, pr_number, head_repo, untrusted,
                 -- An approval covers the commit, so a re-run of an approved run needs none.
                 awaiting_approval, approved_by,
                 CASE WHEN awaiting_approval = 1 THEN pending_reason ELSE NULL END
             FROM runs WHERE id = $1
             ON CONFLICT (repo, pipeline, commit_sha, trigger, run_attempt) DO NOTHING
             RETURNING id",
        )
        .bind(old.get())
        .bind(now)
        .fetch_optional(&mut **tx)
        .await
        .ctx("creating a re-run")?;
        let Some(id) = id.map(RunId::from) else {
            continue;
        };
        // Stages start again as they were created: queued, or skipped by their `if:`.
        sqlx::query(
            "INSERT INTO stages (run_id, name, position, status, needs, pending_reason, finished_at)
             SELECT $2, name, position,
                 CASE WHEN pending_reason LIKE 'skipped: `if:%' THEN 'skipped' ELSE 'queued' END,
                 needs,
                 CASE WHEN pending_reason LIKE 'skipped: `if:%' THEN pending_reason ELSE NULL END,
                 CASE WHEN pending_reason LIKE 'skipped: `if:%' THEN $3 ELSE NULL END
             FROM stages WHERE run_id = $1",
        )
        .bind(old.get())
        .bind(id.get())
        .bind(now)
        .execute(&mut **tx)
        .await
        .ctx("copying stages for a re-run")?;
        queue_report(tx, id, now).await?;
        created.push(id);
    }
    Ok(created)
}
