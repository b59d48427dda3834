//! Recording desired state (runs created from commits) and reading runs back for the API.

use sqlx::any::AnyRow;
use sqlx::Row;

use deploylite_model::RunId;

use super::{now_ms, DbContext, Result, RowExt, Store, StoreError};
use crate::model::{
    NewRun, PullRequestInfo, RecordCommit, RunFilter, RunRecord, StageAttemptRecord, StageRecord,
};
use crate::status::RunStatus;

const RUN_COLUMNS: &str = "id, repo, pipeline, pipeline_file, commit_sha, git_ref, trigger, run_attempt, status, \
     pending_reason, errors, cancel_requested, created_at, started_at, finished_at, pr_number, head_repo, untrusted, \
     awaiting_approval, approved_by, policy_deny, policy_warn, policy_revision, policy_eval_us, deployment_id, \
     deployment_action";

impl Store {
    /// Records a reconciled commit. Returns the ids of the runs actually created (runs that
    /// already existed are left alone) and of older runs this one cancels.
    pub async fn record_commit(&self, record: &RecordCommit) -> Result<(Vec<RunId>, Vec<RunId>)> {
        let now = now_ms();
        let mut tx = self
            .pool()
            .begin()
            .await
            .ctx("starting to record a commit")?;
        let mut created = Vec::new();
        let mut cancelled = Vec::new();
        for run in &record.runs {
            let Some(id) = insert_run(&mut tx, run, now).await? else {
                continue;
            };
            created.push(id);
            if run.status == RunStatus::Queued
                && run.concurrency == deploylite_pipeline::Concurrency::CancelInProgress
            {
                let older: Vec<i64> = sqlx::query_scalar(
                    "UPDATE runs SET cancel_requested = 1,
                         pending_reason = 'cancelled: superseded by run #' || $5
                     WHERE repo = $1 AND pipeline = $2 AND git_ref = $3 AND id < $4
                       AND status IN ('queued', 'running') AND cancel_requested = 0
                     RETURNING id",
                )
                .bind(run.repo.as_str())
                .bind(&run.pipeline)
                .bind(&run.git_ref)
                .bind(id.get())
                .bind(id.to_string())
                .fetch_all(&mut *tx)
                .await
                .ctx("cancelling superseded runs")?;
                cancelled.extend(older.into_iter().map(RunId::from));
            }
        }
        if record.update_ref {
            sqlx::query(
                "INSERT INTO watched_refs (repo, git_ref, commit_sha, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repo, git_ref) DO UPDATE SET commit_sha = excluded.commit_sha, updated_at = excluded.updated_at",
            )
            .bind(record.repo.as_str())
            .bind(&record.git_ref)
            .bind(record.commit.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("recording a ref")?;
        }
        tx.commit().await.ctx("committing a recorded commit")?;
        Ok((created, cancelled))
    }

    /// The last reconciled commit of every watched ref of `repo`.
    pub async fn watched_refs(&self, repo: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT git_ref, commit_sha FROM watched_refs WHERE repo = $1")
            .bind(repo)
            .fetch_all(self.pool())
            .await
            .ctx("reading watched refs")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("git_ref").ctx("reading git_ref")?,
                    r.try_get("commit_sha").ctx("reading commit_sha")?,
                ))
            })
            .collect()
    }

    /// Forgets a deleted ref, so that re-creating it counts as new.
    pub async fn forget_ref(&self, repo: &str, git_ref: &str) -> Result<()> {
        sqlx::query("DELETE FROM watched_refs WHERE repo = $1 AND git_ref = $2")
            .bind(repo)
            .bind(git_ref)
            .execute(self.pool())
            .await
            .ctx("forgetting a ref")?;
        Ok(())
    }

    /// Runs, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE ($1 IS NULL OR repo = $1) AND ($2 IS NULL OR pipeline = $2) AND ($3 IS NULL OR status = $3)
               AND ($4 IS NULL OR git_ref = $4) AND ($5 IS NULL OR trigger = $5) AND ($6 IS NULL OR id < $6)
             ORDER BY id DESC LIMIT $7"
        );
        let rows = sqlx::query(&sql)
            .bind(filter.repo.as_deref())
            .bind(filter.pipeline.as_deref())
            .bind(filter.status.map(|s| s.as_str()))
            .bind(filter.git_ref.as_deref())
            .bind(filter.trigger.as_deref())
            .bind(filter.before)
            .bind(if filter.limit > 0 { filter.limit } else { 50 })
            .fetch_all(self.reads())
            .await
            .ctx("listing runs")?;
        rows.iter().map(run_from_row).collect()
    }

    /// The latest run of each (repository, pipeline, ref), by repository, pipeline and ref: what
    /// the status page's front page shows. At most `limit` rows.
    pub async fn latest_runs(&self, limit: i64) -> Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE id IN (SELECT MAX(id) FROM runs GROUP BY repo, pipeline, git_ref)
             ORDER BY repo, pipeline, git_ref LIMIT $1"
        );
        let rows = sqlx::query(&sql)
            .bind(limit)
            .fetch_all(self.reads())
            .await
            .ctx("listing the latest runs")?;
        rows.iter().map(run_from_row).collect()
    }

    /// The latest run of `pipeline` in `repo`, on `git_ref` when given: what a badge shows.
    pub async fn latest_run(
        &self,
        repo: &str,
        pipeline: &str,
        git_ref: Option<&str>,
    ) -> Result<Option<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE repo = $1 AND pipeline = $2 AND ($3 IS NULL OR git_ref = $3)
             ORDER BY id DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(repo)
            .bind(pipeline)
            .bind(git_ref)
            .fetch_optional(self.reads())
            .await
            .ctx("reading the latest run")?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// A run without its stages.
    pub async fn run(&self, id: RunId) -> Result<Option<RunRecord>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.get())
            .fetch_optional(self.reads())
            .await
            .ctx("reading a run")?;
        row.as_ref().map(run_from_row).transpose()
    }

    pub async fn get_run(&self, id: RunId) -> Result<Option<(RunRecord, Vec<StageRecord>)>> {
        let Some(run) = self.run(id).await? else {
            return Ok(None);
        };
        let stage_rows = sqlx::query(
            "SELECT name, position, status, attempt, needs, pending_reason, started_at, finished_at, exit_code
             FROM stages WHERE run_id = $1 ORDER BY position",
        )
        .bind(id.get())
        .fetch_all(self.reads())
        .await
        .ctx("reading stages")?;
        let stages = stage_rows
            .iter()
            .map(|r| {
                Ok(StageRecord {
                    name: r.text("name", "reading a stage")?,
                    position: r.try_get("position").ctx("reading a stage")?,
                    status: parse_status(r.try_get::<String, _>("status").ctx("reading a stage")?)?,
                    attempt: r.attempt("attempt", "reading a stage")?,
                    needs: parse_json(&r.try_get::<String, _>("needs").ctx("reading a stage")?)?,
                    pending_reason: r.try_get("pending_reason").ctx("reading a stage")?,
                    started_at: r.try_get("started_at").ctx("reading a stage")?,
                    finished_at: r.try_get("finished_at").ctx("reading a stage")?,
                    exit_code: r.try_get("exit_code").ctx("reading a stage")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((run, stages)))
    }

    pub async fn stage_attempts(
        &self,
        run_id: RunId,
        stage: &str,
    ) -> Result<Vec<StageAttemptRecord>> {
        let rows = sqlx::query(
            "SELECT attempt, status, exit_code, note, executor, started_at, finished_at
             FROM stage_attempts WHERE run_id = $1 AND stage = $2 ORDER BY attempt",
        )
        .bind(run_id.get())
        .bind(stage)
        .fetch_all(self.reads())
        .await
        .ctx("reading stage attempts")?;
        rows.iter()
            .map(|r| {
                Ok(StageAttemptRecord {
                    attempt: r.attempt("attempt", "reading an attempt")?,
                    status: parse_status(
                        r.try_get::<String, _>("status").ctx("reading an attempt")?,
                    )?,
                    exit_code: r.try_get("exit_code").ctx("reading an attempt")?,
                    note: r.try_get("note").ctx("reading an attempt")?,
                    executor: r.try_get("executor").ctx("reading an attempt")?,
                    started_at: r.try_get("started_at").ctx("reading an attempt")?,
                    finished_at: r.try_get("finished_at").ctx("reading an attempt")?,
                })
            })
            .collect()
    }

    /// Asks for a run to be cancelled; the scheduler stops its running stages and skips the
    /// rest. Returns the run's status, or None when there is no such run.
    pub async fn request_cancel(&self, run_id: RunId, reason: &str) -> Result<Option<RunStatus>> {
        sqlx::query(
            "UPDATE runs SET cancel_requested = 1, pending_reason = $2
             WHERE id = $1 AND status IN ('queued', 'running') AND cancel_requested = 0",
        )
        .bind(run_id.get())
        .bind(reason)
        .execute(self.pool())
        .await
        .ctx("requesting a cancellation")?;
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM runs WHERE id = $1")
            .bind(run_id.get())
            .fetch_optional(self.pool())
            .await
            .ctx("reading a run's status")?;
        status.map(parse_status).transpose()
    }
}

/// Inserts one run and its stages, and queues its first report, unless a run with the same
/// identity exists (`None`).
pub(super) async fn insert_run(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run: &NewRun,
    now: i64,
) -> Result<Option<RunId>> {
    let finished_at = run.status.is_final().then_some(now);
    let policy = run.policy.as_ref().map(PolicyColumns::of).transpose()?;
    let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO runs (repo, pipeline, pipeline_file, commit_sha, git_ref, trigger, run_attempt, \
                     status, concurrency, spec, errors, workspace, workspace_ready, created_at, finished_at, pending_reason,
                     report, pr_number, head_repo, untrusted, awaiting_approval,
                     policy_deny, policy_warn, policy_revision, policy_eval_us)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
                     $22, $23, $24, $25)
                 ON CONFLICT (repo, pipeline, commit_sha, trigger, run_attempt) DO NOTHING
                 RETURNING id",
            )
            .bind(run.repo.as_str())
            .bind(&run.pipeline)
            .bind(&run.pipeline_file)
            .bind(run.commit.as_str())
            .bind(&run.git_ref)
            .bind(&run.trigger)
            .bind(run.run_attempt)
            .bind(run.status.as_str())
            .bind(concurrency_str(run.concurrency))
            .bind(run.spec.as_deref())
            .bind(run.errors.as_deref())
            .bind(run.workspace.as_deref())
            .bind(i64::from(run.workspace.is_some()))
            .bind(now)
            .bind(finished_at)
            .bind(run.pending_reason.as_deref())
            .bind(i64::from(run.report))
            .bind(run.pull_request.as_ref().map(|p| p.number))
            .bind(run.pull_request.as_ref().map(|p| p.head_repo.as_str()))
            .bind(i64::from(run.pull_request.as_ref().is_some_and(|p| p.untrusted)))
            .bind(i64::from(run.awaiting_approval))
            .bind(policy.as_ref().map(|p| p.deny.as_str()))
            .bind(policy.as_ref().map(|p| p.warn.as_str()))
            .bind(run.policy.as_ref().map(|d| d.revision_sha256.as_str()))
            .bind(policy.as_ref().map(|p| p.eval_us))
            .fetch_optional(&mut **tx)
            .await
            .ctx("inserting a run")?;
    let Some(id) = id.map(RunId::from) else {
        return Ok(None);
    };
    queue_report(tx, id, now).await?;
    for (position, stage) in run.stages.iter().enumerate() {
        let needs =
            serde_json::to_string(&stage.needs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
                    "INSERT INTO stages (run_id, name, position, status, needs, pending_reason, finished_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(id.get())
                .bind(stage.name.as_str())
                .bind(position as i64)
                .bind(stage.status.as_str())
                .bind(needs)
                .bind(stage.pending_reason.as_deref())
                .bind(stage.status.is_final().then_some(now))
                .execute(&mut **tx)
                .await
                .ctx("inserting a stage")?;
    }
    Ok(Some(id))
}

pub(super) fn concurrency_str(c: deploylite_pipeline::Concurrency) -> &'static str {
    match c {
        deploylite_pipeline::Concurrency::Parallel => "parallel",
        deploylite_pipeline::Concurrency::Queue => "queue",
        deploylite_pipeline::Concurrency::CancelInProgress => "cancel-in-progress",
    }
}

pub(super) fn parse_concurrency(s: &str) -> Result<deploylite_pipeline::Concurrency> {
    match s {
        "parallel" => Ok(deploylite_pipeline::Concurrency::Parallel),
        "queue" => Ok(deploylite_pipeline::Concurrency::Queue),
        "cancel-in-progress" => Ok(deploylite_pipeline::Concurrency::CancelInProgress),
        other => Err(StoreError::Corrupt(format!("concurrency `{other}`"))),
    }
}

pub(super) fn parse_status<T: std::str::FromStr<Err = crate::status::UnknownStatus>>(
    s: String,
) -> Result<T> {
    s.parse()
        .map_err(|e: crate::status::UnknownStatus| StoreError::Corrupt(e.to_string()))
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("JSON column: {e}")))
}

/// A decision as its columns: the message lists as JSON text.
pub(super) struct PolicyColumns {
    pub(super) deny: String,
    pub(super) warn: String,
    pub(super) eval_us: i64,
}

impl PolicyColumns {
    pub(super) fn of(decision: &deploylite_policy::Decision) -> Result<PolicyColumns> {
        let json = |list: &Vec<String>| {
            serde_json::to_string(list).map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        Ok(PolicyColumns {
            deny: json(&decision.deny)?,
            warn: json(&decision.warn)?,
            eval_us: i64::try_from(decision.eval_time.as_micros()).unwrap_or(i64::MAX),
        })
    }
}

pub(super) fn policy_from_row(r: &AnyRow) -> Result<Option<deploylite_policy::Decision>> {
    let Some(revision) = r
        .try_get::<Option<String>, _>("policy_revision")
        .ctx("reading a run's policy")?
    else {
        return Ok(None);
    };
    let list = |column: &str| -> Result<Vec<String>> {
        let text: Option<String> = r.try_get(column).ctx("reading a run's policy")?;
        text.as_deref().map(parse_json).unwrap_or(Ok(Vec::new()))
    };
    let eval_us: Option<i64> = r.try_get("policy_eval_us").ctx("reading a run's policy")?;
    Ok(Some(deploylite_policy::Decision {
        deny: list("policy_deny")?,
        warn: list("policy_warn")?,
        revision_sha256: revision,
        eval_time: std::time::Duration::from_micros(
            eval_us.and_then(|us| u64::try_from(us).ok()).unwrap_or(0),
        ),
    }))
}

fn run_from_row(r: &AnyRow) -> Result<RunRecord> {
    let errors: Option<String> = r.try_get("errors").ctx("reading a run")?;
    Ok(RunRecord {
        id: r.run_id("id", "reading a run")?,
        repo: r.text("repo", "reading a run")?,
        pipeline: r.try_get("pipeline").ctx("reading a run")?,
        pipeline_file: r.try_get("pipeline_file").ctx("reading a run")?,
        commit: r.text("commit_sha", "reading a run")?,
        git_ref: r.try_get("git_ref").ctx("reading a run")?,
        trigger: r.try_get("trigger").ctx("reading a run")?,
        run_attempt: r.try_get("run_attempt").ctx("reading a run")?,
        status: parse_status(r.try_get::<String, _>("status").ctx("reading a run")?)?,
        pending_reason: r.try_get("pending_reason").ctx("reading a run")?,
        errors: errors.as_deref().map(parse_json).transpose()?,
        cancel_requested: r
            .try_get::<i64, _>("cancel_requested")
            .ctx("reading a run")?
            != 0,
        created_at: r.try_get("created_at").ctx("reading a run")?,
        started_at: r.try_get("started_at").ctx("reading a run")?,
        finished_at: r.try_get("finished_at").ctx("reading a run")?,
        pull_request: match r
            .try_get::<Option<i64>, _>("pr_number")
            .ctx("reading a run")?
        {
            Some(number) => Some(PullRequestInfo {
                number,
                head_repo: r
                    .try_get::<Option<String>, _>("head_repo")
                    .ctx("reading a run")?
                    .unwrap_or_default(),
                untrusted: r.try_get::<i64, _>("untrusted").ctx("reading a run")? != 0,
            }),
            None => None,
        },
        awaiting_approval: r
            .try_get::<i64, _>("awaiting_approval")
            .ctx("reading a run")?
            != 0,
        approved_by: r.try_get("approved_by").ctx("reading a run")?,
        policy: policy_from_row(r)?,
        deployment_id: r.try_get("deployment_id").ctx("reading a run")?,
        deployment_action: r.try_get("deployment_action").ctx("reading a run")?,
    })
}

/// Queues a report of run `run_id` if its repository reports to a forge. Called inside the
/// transaction that changes the run, so the report and the change commit together.
pub(super) async fn queue_report(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run_id: RunId,
    now: i64,
) -> Result<()> {
    queue_reports(tx, &[run_id], now).await
}

/// Queues a forge report for each run that reports, in one statement (a scheduler tick
/// touches many runs). A change during a forge outage waits for the run's pending retry and
/// keeps its count, instead of making the run due again at once and restarting its backoff.
pub(super) async fn queue_reports(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run_ids: &[RunId],
    now: i64,
) -> Result<()> {
    for chunk in run_ids.chunks(500) {
        let ids: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "INSERT INTO outbox (run_id, next_attempt_at, created_at, attempts)
             SELECT r.id,
                    COALESCE((SELECT MAX(o.next_attempt_at) FROM outbox o WHERE o.run_id = r.id AND o.state = 'pending'), $1),
                    $1,
                    COALESCE((SELECT MAX(o.attempts) FROM outbox o WHERE o.run_id = r.id AND o.state = 'pending'), 0)
             FROM runs r WHERE r.id IN ({}) AND r.report = 1",
            ids.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(now);
        for id in chunk {
            query = query.bind(id.get());
        }
        query.execute(&mut **tx).await.ctx("queueing reports")?;
    }
    Ok(())
}
