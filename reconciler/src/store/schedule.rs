//! The scheduler's side of the store: read the active runs, write a tick's decisions in one
//! transaction, record attempt results, recover after a crash.

use deploylite_model::RunId;
use sqlx::Row;

use super::runners::requeue_in;
use super::runs::{parse_concurrency, parse_json, parse_status, queue_reports};
use super::{now_ms, DbContext, Result, RowExt, Store, StoreError};
use crate::model::{
    ActiveRun, ActiveStage, AttemptResult, Dispatch, Interrupted, TickWrites, LOCAL_RUNNER,
};

pub const INTERRUPTED_NOTE: &str = "interrupted: the daemon stopped while this attempt ran";

impl Store {
    /// Every run that is not final yet, with its stages, oldest first.
    pub async fn load_active(&self) -> Result<Vec<ActiveRun>> {
        let run_rows = sqlx::query(
            "SELECT id, repo, pipeline, git_ref, commit_sha, trigger, status, pending_reason, concurrency,
                    cancel_requested, workspace, workspace_ready, untrusted, awaiting_approval
             FROM runs WHERE status IN ('queued', 'running') ORDER BY id",
        )
        .fetch_all(self.pool())
        .await
        .ctx("loading active runs")?;
        let mut runs = Vec::with_capacity(run_rows.len());
        for r in &run_rows {
            runs.push(ActiveRun {
                id: r.run_id("id", "reading an active run")?,
                repo: r.text("repo", "reading an active run")?,
                pipeline: r.try_get("pipeline").ctx("reading an active run")?,
                git_ref: r.try_get("git_ref").ctx("reading an active run")?,
                commit: r.text("commit_sha", "reading an active run")?,
                trigger: r.try_get("trigger").ctx("reading an active run")?,
                status: parse_status(
                    r.try_get::<String, _>("status")
                        .ctx("reading an active run")?,
                )?,
                pending_reason: r.try_get("pending_reason").ctx("reading an active run")?,
                concurrency: parse_concurrency(
                    &r.try_get::<String, _>("concurrency")
                        .ctx("reading an active run")?,
                )?,
                cancel_requested: r
                    .try_get::<i64, _>("cancel_requested")
                    .ctx("reading an active run")?
                    != 0,
                workspace: r.try_get("workspace").ctx("reading an active run")?,
                workspace_ready: r
                    .try_get::<i64, _>("workspace_ready")
                    .ctx("reading an active run")?
                    != 0,
                untrusted: r
                    .try_get::<i64, _>("untrusted")
                    .ctx("reading an active run")?
                    != 0,
                awaiting_approval: r
                    .try_get::<i64, _>("awaiting_approval")
                    .ctx("reading an active run")?
                    != 0,
                stages: Vec::new(),
            });
        }
        let stage_rows = sqlx::query(
            "SELECT s.run_id, s.name, s.position, s.status, s.attempt, s.failures, s.needs, s.pending_reason, s.not_before,
                    s.runner, s.lease_deadline
             FROM stages s JOIN runs r ON r.id = s.run_id
             WHERE r.status IN ('queued', 'running') ORDER BY s.run_id, s.position",
        )
        .fetch_all(self.pool())
        .await
        .ctx("loading active stages")?;
        let mut index = 0;
        for r in &stage_rows {
            let run_id = r.run_id("run_id", "reading an active stage")?;
            while index < runs.len() && runs[index].id < run_id {
                index += 1;
            }
            let Some(run) = runs.get_mut(index).filter(|run| run.id == run_id) else {
                continue; // the run became final between the two reads
            };
            run.stages.push(ActiveStage {
                name: r.text("name", "reading an active stage")?,
                position: r.try_get("position").ctx("reading an active stage")?,
                status: parse_status(
                    r.try_get::<String, _>("status")
                        .ctx("reading an active stage")?,
                )?,
                attempt: r.attempt("attempt", "reading an active stage")?,
                failures: r.count("failures", "reading an active stage")?,
                needs: parse_json(
                    &r.try_get::<String, _>("needs")
                        .ctx("reading an active stage")?,
                )?,
                pending_reason: r.try_get("pending_reason").ctx("reading an active stage")?,
                not_before: r.try_get("not_before").ctx("reading an active stage")?,
                runner: r.try_get("runner").ctx("reading an active stage")?,
                lease_deadline: r.try_get("lease_deadline").ctx("reading an active stage")?,
            });
        }
        Ok(runs)
    }

    /// The pipeline a run was created from.
    pub async fn run_spec(&self, run_id: RunId) -> Result<deploylite_pipeline::Pipeline> {
        let spec: Option<String> = sqlx::query_scalar("SELECT spec FROM runs WHERE id = $1")
            .bind(run_id.get())
            .fetch_optional(self.pool())
            .await
            .ctx("reading a run's pipeline")?
            .flatten();
        let spec =
            spec.ok_or_else(|| StoreError::Corrupt(format!("run {run_id} has no pipeline")))?;
        parse_json(&spec)
    }

    /// Writes one tick's decisions atomically. Every UPDATE is guarded by the status it
    /// expects, so a decision made on a stale read changes nothing.
    pub async fn apply_tick(&self, writes: &TickWrites) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_tick().await?;
        tx.apply(writes).await?;
        tx.commit().await
    }

    /// Records how an attempt ended. Returns false, changing nothing, when that attempt is no
    /// longer the stage's running one (a late or duplicate report).
    pub async fn finish_attempt(&self, result: &AttemptResult) -> Result<bool> {
        let mut tx = self.begin_tick().await?;
        let applied = tx.finish_attempt(result).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// One transaction for everything a scheduler tick writes: the attempt ends and workspaces
    /// it collected since the last tick, and its own decisions (group commit: one durable
    /// commit for all of them).
    pub async fn begin_tick(&self) -> Result<TickTx<'static>> {
        Ok(TickTx {
            tx: self.pool().begin().await.ctx("starting a scheduler tick")?,
            now: now_ms(),
            touched: Vec::new(),
        })
    }

    /// After a crash: every attempt the local runner still had marked running was cut short.
    /// It is closed with a note, and its stage is queued again for a new attempt that does not
    /// count as a retry. Remote runners' leases are left alone: those runners outlive us.
    pub async fn recover_interrupted(&self) -> Result<Vec<Interrupted>> {
        let mut tx = self.pool().begin().await.ctx("starting recovery")?;
        let rows = sqlx::query("SELECT run_id, stage, attempt FROM stage_attempts WHERE status = 'running' AND executor = $1")
            .bind(LOCAL_RUNNER)
            .fetch_all(&mut *tx)
            .await
            .ctx("finding interrupted attempts")?;
        let mut interrupted = Vec::with_capacity(rows.len());
        for r in &rows {
            interrupted.push(Interrupted {
                run_id: r.run_id("run_id", "reading an interrupted attempt")?,
                stage: r.text("stage", "reading an interrupted attempt")?,
                attempt: r.attempt("attempt", "reading an interrupted attempt")?,
            });
        }
        for i in &interrupted {
            let reason = format!(
                "restart: attempt {} was interrupted when the daemon stopped",
                i.attempt
            );
            requeue_in(
                &mut tx,
                i.run_id,
                &i.stage,
                i.attempt,
                INTERRUPTED_NOTE,
                &reason,
            )
            .await?;
        }
        tx.commit().await.ctx("committing recovery")?;
        Ok(interrupted)
    }

    pub async fn mark_workspace_ready(&self, run_id: RunId, path: &str) -> Result<()> {
        let mut tx = self.begin_tick().await?;
        tx.mark_workspace_ready(run_id, path).await?;
        tx.commit().await
    }

    /// Finished runs whose workspace the janitor may delete.
    pub async fn workspaces_to_clean(&self, finished_before: i64) -> Result<Vec<(RunId, String)>> {
        let rows = sqlx::query(
            "SELECT id, workspace FROM runs
             WHERE workspace IS NOT NULL AND workspace_cleaned = 0 AND finished_at IS NOT NULL AND finished_at < $1
             ORDER BY id LIMIT 500",
        )
        .bind(finished_before)
        .fetch_all(self.pool())
        .await
        .ctx("finding workspaces to clean")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.run_id("id", "reading a workspace")?,
                    r.try_get("workspace").ctx("reading a workspace")?,
                ))
            })
            .collect()
    }

    pub async fn mark_workspace_cleaned(&self, run_id: RunId) -> Result<()> {
        sqlx::query("UPDATE runs SET workspace_cleaned = 1 WHERE id = $1")
            .bind(run_id.get())
            .execute(self.pool())
            .await
            .ctx("recording a cleaned workspace")?;
        Ok(())
    }

    /// Finished runs whose logs retention may delete.
    pub async fn logs_to_clean(&self, finished_before: i64) -> Result<Vec<RunId>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE logs_cleaned = 0 AND finished_at IS NOT NULL AND finished_at < $1
             ORDER BY id LIMIT 500",
        )
        .bind(finished_before)
        .fetch_all(self.pool())
        .await
        .ctx("finding logs to clean")?;
        Ok(ids.into_iter().map(RunId::from).collect())
    }

    pub async fn mark_logs_cleaned(&self, run_id: RunId) -> Result<()> {
        sqlx::query("UPDATE runs SET logs_cleaned = 1 WHERE id = $1")
            .bind(run_id.get())
            .execute(self.pool())
            .await
            .ctx("recording cleaned logs")?;
        Ok(())
    }
}

impl Store {
    /// Ends a run that cannot proceed (its workspace cannot be made): the stages not started are
    /// skipped, and the run fails with `message` as its error.
    pub async fn fail_run(&self, run_id: RunId, message: &str) -> Result<()> {
        let mut tx = self.begin_tick().await?;
        tx.fail_run(run_id, message).await?;
        tx.commit().await
    }
}

/// An open scheduler transaction. Nothing is visible to others until [`TickTx::commit`];
/// dropping it rolls everything back.
pub struct TickTx<'c> {
    tx: sqlx::Transaction<'c, sqlx::Any>,
    now: i64,
    /// Runs whose forge report must be refreshed; one outbox row each, written at commit.
    touched: Vec<RunId>,
}

impl TickTx<'_> {
    fn touch(&mut self, run_id: RunId) {
        if !self.touched.contains(&run_id) {
            self.touched.push(run_id);
        }
    }

    /// Writes a tick's decisions. Returns whether every guarded statement changed the rows
    /// the decisions expected: false means they were made on a stale copy of the store.
    pub async fn apply(&mut self, writes: &TickWrites) -> Result<bool> {
        let now = self.now;
        let tx = &mut self.tx;
        let mut as_expected = true;
        let one = |done: sqlx::any::AnyQueryResult| done.rows_affected() == 1;
        for run_id in &writes.start_runs {
            as_expected &= one(sqlx::query(
                "UPDATE runs SET status = 'running', started_at = $2, pending_reason = NULL
                     WHERE id = $1 AND status = 'queued'",
            )
            .bind(run_id.get())
            .bind(now)
            .execute(&mut **tx)
            .await
            .ctx("starting a run")?);
        }
        for (run_id, reason) in &writes.run_pending {
            as_expected &= one(sqlx::query(
                "UPDATE runs SET pending_reason = $2 WHERE id = $1 AND status = 'queued'",
            )
            .bind(run_id.get())
            .bind(reason.as_deref())
            .execute(&mut **tx)
            .await
            .ctx("updating a run's pending reason")?);
        }
        for skip in &writes.skip {
            as_expected &= one(sqlx::query(
                "UPDATE stages SET status = $3, pending_reason = $4, finished_at = $5
                     WHERE run_id = $1 AND name = $2 AND status = 'queued'",
            )
            .bind(skip.run_id.get())
            .bind(skip.stage.as_str())
            .bind(skip.status.as_str())
            .bind(&skip.reason)
            .bind(now)
            .execute(&mut **tx)
            .await
            .ctx("skipping a stage")?);
        }
        for (run_id, stage, reason) in &writes.stage_pending {
            as_expected &= one(sqlx::query(
                "UPDATE stages SET pending_reason = $3
                     WHERE run_id = $1 AND name = $2 AND status = 'queued'",
            )
            .bind(run_id.get())
            .bind(stage.as_str())
            .bind(reason.as_deref())
            .execute(&mut **tx)
            .await
            .ctx("updating a stage's pending reason")?);
        }
        for e in &writes.expire {
            // A runner that let a lease lapse is dead or cut off: it gets no new stage until it
            // is heard from again (its next poll or heartbeat). Unless it was heard from since
            // the lease's last renewal: then it is a restarted runner of the same name, already
            // polling, that must not wait for its next poll to get work.
            sqlx::query(
                "UPDATE runners SET last_seen = NULL
                 WHERE name = $1 AND (last_seen IS NULL OR last_seen <= $2)",
            )
            .bind(&e.runner)
            .bind(e.last_renewed)
            .execute(&mut **tx)
            .await
            .ctx("marking a runner offline")?;
            as_expected &= requeue_in(
                tx,
                e.run_id,
                &e.stage,
                e.attempt,
                &format!(
                    "interrupted: lease expired, runner `{}` stopped renewing it",
                    e.runner
                ),
                &format!(
                    "restart: attempt {} was lost with runner `{}`",
                    e.attempt, e.runner
                ),
            )
            .await?;
        }
        as_expected &= dispatch_batch(tx, &writes.dispatch, now).await? == writes.dispatch.len();
        for finish in &writes.finish {
            as_expected &= one(sqlx::query(
                "UPDATE runs SET status = $2, finished_at = $3,
                         started_at = COALESCE(started_at, $3)
                     WHERE id = $1 AND status IN ('queued', 'running')",
            )
            .bind(finish.run_id.get())
            .bind(finish.status.as_str())
            .bind(now)
            .execute(&mut **tx)
            .await
            .ctx("finishing a run")?);
        }
        for run_id in writes.touched_runs() {
            self.touch(run_id);
        }
        Ok(as_expected)
    }

    /// Records how an attempt ended. Returns false, changing nothing, when that attempt is no
    /// longer the stage's running one (a late or duplicate report).
    pub async fn finish_attempt(&mut self, result: &AttemptResult) -> Result<bool> {
        let now = self.now;
        // The stage row decides: it names the attempt that is current.
        let finished_at = result.stage_status.is_final().then_some(now);
        let stage = sqlx::query(
            "UPDATE stages SET status = $4, exit_code = $5, finished_at = $6, failures = failures + $7,
                 not_before = $8, pending_reason = $9
             WHERE run_id = $1 AND name = $2 AND attempt = $3 AND status = 'running'",
        )
        .bind(result.run_id.get())
        .bind(result.stage.as_str())
        .bind(i64::from(result.attempt))
        .bind(result.stage_status.as_str())
        .bind(result.exit_code)
        .bind(finished_at)
        .bind(i64::from(result.counts_as_failure))
        .bind(result.not_before)
        .bind(result.pending_reason.as_deref())
        .execute(&mut *self.tx)
        .await
        .ctx("recording a stage's state")?;
        if stage.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE stage_attempts SET status = $4, exit_code = $5, note = $6, finished_at = $7
             WHERE run_id = $1 AND stage = $2 AND attempt = $3 AND status = 'running'",
        )
        .bind(result.run_id.get())
        .bind(result.stage.as_str())
        .bind(i64::from(result.attempt))
        .bind(result.attempt_status.as_str())
        .bind(result.exit_code)
        .bind(result.note.as_deref())
        .bind(now)
        .execute(&mut *self.tx)
        .await
        .ctx("recording an attempt's end")?;
        self.touch(result.run_id);
        Ok(true)
    }

    pub async fn mark_workspace_ready(&mut self, run_id: RunId, path: &str) -> Result<()> {
        sqlx::query("UPDATE runs SET workspace = $2, workspace_ready = 1 WHERE id = $1")
            .bind(run_id.get())
            .bind(path)
            .execute(&mut *self.tx)
            .await
            .ctx("recording a workspace")?;
        Ok(())
    }

    /// Ends a run that cannot proceed: the stages not started are skipped, and the run fails
    /// with `message` as its error.
    pub async fn fail_run(&mut self, run_id: RunId, message: &str) -> Result<()> {
        let now = self.now;
        let errors = serde_json::json!([{ "message": message }]).to_string();
        sqlx::query(
            "UPDATE stages SET status = 'skipped', pending_reason = $2, finished_at = $3
             WHERE run_id = $1 AND status = 'queued'",
        )
        .bind(run_id.get())
        .bind(message)
        .bind(now)
        .execute(&mut *self.tx)
        .await
        .ctx("skipping the stages of a failed run")?;
        sqlx::query(
            "UPDATE runs SET status = 'failed', errors = $2, finished_at = $3, started_at = COALESCE(started_at, $3)
             WHERE id = $1 AND status IN ('queued', 'running')",
        )
        .bind(run_id.get())
        .bind(errors)
        .bind(now)
        .execute(&mut *self.tx)
        .await
        .ctx("failing a run")?;
        self.touch(run_id);
        Ok(())
    }

    /// Queues the forge reports of the runs this transaction changed, then commits.
    pub async fn commit(mut self) -> Result<()> {
        let touched = std::mem::take(&mut self.touched);
        queue_reports(&mut self.tx, &touched, self.now).await?;
        self.tx.commit().await.ctx("committing a scheduler tick")
    }
}

/// Stages per multi-row statement: well under SQLite's and PostgreSQL's parameter limits.
const DISPATCH_CHUNK: usize = 200;

/// Starts the dispatched attempts with a few multi-row statements instead of two statements per
/// stage: one UPDATE per runner and chunk (guarded by `status = 'queued'`; the attempt number is
/// the stored one plus one), and one INSERT of the attempt rows it returns.
/// Returns how many stages it started.
async fn dispatch_batch(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    dispatch: &[Dispatch],
    now: i64,
) -> Result<usize> {
    let mut started_count = 0;
    let mut by_runner: Vec<(&str, Option<i64>, Vec<&Dispatch>)> = Vec::new();
    for d in dispatch {
        match by_runner
            .iter_mut()
            .find(|(r, deadline, _)| *r == d.runner && *deadline == d.lease_deadline)
        {
            Some((_, _, group)) => group.push(d),
            None => by_runner.push((&d.runner, d.lease_deadline, vec![d])),
        }
    }
    for (runner, deadline, group) in by_runner {
        for chunk in group.chunks(DISPATCH_CHUNK) {
            let pairs: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${})", 4 + 2 * i, 5 + 2 * i))
                .collect();
            let sql = format!(
                "UPDATE stages SET status = 'running', attempt = attempt + 1, started_at = $1, finished_at = NULL,
                     exit_code = NULL, pending_reason = NULL, not_before = NULL,
                     runner = $2, lease_deadline = $3, lease_delivered = 0
                 WHERE status = 'queued' AND (run_id, name) IN (VALUES {})
                 RETURNING run_id, name, attempt",
                pairs.join(", ")
            );
            let mut update = sqlx::query(&sql).bind(now).bind(runner).bind(deadline);
            for d in chunk {
                update = update.bind(d.run_id.get()).bind(d.stage.as_str());
            }
            let started = update
                .fetch_all(&mut **tx)
                .await
                .ctx("dispatching stages")?;
            if started.is_empty() {
                continue;
            }
            started_count += started.len();
            let rows: Vec<String> = (0..started.len())
                .map(|i| {
                    format!(
                        "(${}, ${}, ${}, 'running', $1, $2)",
                        3 + 3 * i,
                        4 + 3 * i,
                        5 + 3 * i
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO stage_attempts (run_id, stage, attempt, status, executor, started_at) VALUES {}",
                rows.join(", ")
            );
            let mut insert = sqlx::query(&sql).bind(runner).bind(now);
            for row in &started {
                insert = insert
                    .bind(
                        row.try_get::<i64, _>("run_id")
                            .ctx("reading a dispatched stage")?,
                    )
                    .bind(
                        row.try_get::<String, _>("name")
                            .ctx("reading a dispatched stage")?,
                    )
                    .bind(
                        row.try_get::<i64, _>("attempt")
                            .ctx("reading a dispatched stage")?,
                    );
            }
            insert.execute(&mut **tx).await.ctx("recording attempts")?;
        }
    }
    Ok(started_count)
}
