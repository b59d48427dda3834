//! What the metrics read from the store: the gauges of a scrape (waiting stages by kind,
//! running stages by runner, runners, the forge outbox), and the timings of one run or stage
//! attempt when its event is recorded. Each is a handful of indexed queries; the scrape's stay
//! within milliseconds with 1,000 pipelines (benches/metrics.rs).

use deploylite_model::{Attempt, RunId};
use sqlx::Row;

use super::runs::parse_json;
use super::{DbContext, Result, RowExt, Store};

/// Waiting stages, classified by why they wait. The kinds are `pending_reason`'s prefixes as
/// `scheduler::plan` writes them (and a queued run's own reason for the stages of a run that
/// has not started); see `WAIT_KINDS` in the telemetry crate.
const WAITING_BY_KIND: &str = "
SELECT CASE
         WHEN r.status = 'queued' AND r.awaiting_approval = 1 THEN 'approval'
         WHEN r.status = 'queued' AND r.pending_reason LIKE 'concurrency:%' THEN 'concurrency'
         WHEN r.status = 'queued' THEN 'run_start'
         WHEN s.pending_reason LIKE 'needs%' THEN 'needs'
         WHEN s.pending_reason = 'preparing workspace' THEN 'workspace'
         WHEN s.pending_reason LIKE 'backoff%' THEN 'backoff'
         WHEN s.pending_reason LIKE 'capacity:%' THEN 'capacity'
         WHEN s.pending_reason LIKE 'no %runner%' THEN 'no_runner'
         WHEN s.pending_reason LIKE 'restart:%' THEN 'restart'
         ELSE 'other'
       END AS kind,
       COUNT(*) AS n
FROM runs r JOIN stages s ON s.run_id = r.id
WHERE r.status IN ('queued', 'running') AND s.status = 'queued'
GROUP BY kind";

/// The store's side of a scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulingGauges {
    /// Waiting stages by kind.
    pub waiting: Vec<(String, i64)>,
    /// Running stages by runner (`local` for the daemon's own).
    pub running_by_runner: Vec<(String, i64)>,
    /// Registered remote runners that are not revoked.
    pub remote_runners: Vec<RemoteRunnerGauge>,
    pub outbox_pending: i64,
    /// Pending reports whose last send failed.
    pub outbox_retrying: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RemoteRunnerGauge {
    pub name: String,
    pub capacity: i64,
    pub last_seen: Option<i64>,
}

/// A run's times (epoch ms), for its duration once it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunTiming {
    pub repo: String,
    pub pipeline: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A stage attempt's times (epoch ms).
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptTiming {
    pub repo: String,
    pub pipeline: String,
    pub run_created_at: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// When the stage became runnable: its run started, its needs ended, its previous attempt
    /// was given back (a restart, a lost lease). None after a failed attempt: a retry waits out
    /// a backoff that the store does not keep once the retry starts.
    pub runnable_at: Option<i64>,
    /// The run's first attempt to start (what a webhook → start latency measures).
    pub first_of_run: bool,
}

impl Store {
    /// The gauges a `/metrics` scrape shows.
    pub async fn scheduling_gauges(&self) -> Result<SchedulingGauges> {
        let ctx = "reading the scheduling gauges";
        let waiting = sqlx::query(WAITING_BY_KIND)
            .fetch_all(self.pool())
            .await
            .ctx(ctx)?
            .iter()
            .map(|r| Ok((r.try_get("kind").ctx(ctx)?, r.try_get("n").ctx(ctx)?)))
            .collect::<Result<Vec<_>>>()?;
        let running_by_runner = sqlx::query(
            "SELECT runner, COUNT(*) AS n FROM stages WHERE status = 'running' GROUP BY runner",
        )
        .fetch_all(self.pool())
        .await
        .ctx(ctx)?
        .iter()
        .map(|r| {
            let runner: Option<String> = r.try_get("runner").ctx(ctx)?;
            Ok((
                runner.unwrap_or_else(|| super::LOCAL_RUNNER.to_string()),
                r.try_get("n").ctx(ctx)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        let remote_runners = sqlx::query(
            "SELECT name, capacity, last_seen FROM runners WHERE revoked = 0 ORDER BY name",
        )
        .fetch_all(self.pool())
        .await
        .ctx(ctx)?
        .iter()
        .map(|r| {
            Ok(RemoteRunnerGauge {
                name: r.try_get("name").ctx(ctx)?,
                capacity: r.try_get("capacity").ctx(ctx)?,
                last_seen: r.try_get("last_seen").ctx(ctx)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let outbox = sqlx::query(
            "SELECT COUNT(*) AS pending, COUNT(CASE WHEN attempts > 0 THEN 1 END) AS retrying
             FROM outbox WHERE state = 'pending'",
        )
        .fetch_one(self.pool())
        .await
        .ctx(ctx)?;
        Ok(SchedulingGauges {
            waiting,
            running_by_runner,
            remote_runners,
            outbox_pending: outbox.try_get("pending").ctx(ctx)?,
            outbox_retrying: outbox.try_get("retrying").ctx(ctx)?,
        })
    }

    /// Deployments counted by repository, environment and status (one grouped query).
    pub async fn deployment_counts(&self) -> Result<Vec<(String, String, String, i64)>> {
        sqlx::query_as(
            "SELECT repo, environment, status, COUNT(*) FROM deployments
             GROUP BY repo, environment, status ORDER BY repo, environment, status",
        )
        .fetch_all(self.pool())
        .await
        .ctx("counting deployments")
    }

    pub async fn run_timing(&self, run_id: RunId) -> Result<Option<RunTiming>> {
        let ctx = "reading a run's times";
        let Some(r) = sqlx::query(
            "SELECT repo, pipeline, created_at, started_at, finished_at FROM runs WHERE id = $1",
        )
        .bind(run_id.get())
        .fetch_optional(self.pool())
        .await
        .ctx(ctx)?
        else {
            return Ok(None);
        };
        Ok(Some(RunTiming {
            repo: r.try_get("repo").ctx(ctx)?,
            pipeline: r.try_get("pipeline").ctx(ctx)?,
            created_at: r.try_get("created_at").ctx(ctx)?,
            started_at: r.try_get("started_at").ctx(ctx)?,
            finished_at: r.try_get("finished_at").ctx(ctx)?,
        }))
    }

    pub async fn attempt_timing(
        &self,
        run_id: RunId,
        stage: &str,
        attempt: Attempt,
    ) -> Result<Option<AttemptTiming>> {
        let ctx = "reading a stage attempt's times";
        let Some(run) = sqlx::query(
            "SELECT r.repo, r.pipeline, r.created_at, r.started_at, s.needs
             FROM runs r JOIN stages s ON s.run_id = r.id WHERE r.id = $1 AND s.name = $2",
        )
        .bind(run_id.get())
        .bind(stage)
        .fetch_optional(self.pool())
        .await
        .ctx(ctx)?
        else {
            return Ok(None);
        };
        let needs: Vec<String> = parse_json(&run.try_get::<String, _>("needs").ctx(ctx)?)?;
        let created_at: i64 = run.try_get("created_at").ctx(ctx)?;
        let run_started: Option<i64> = run.try_get("started_at").ctx(ctx)?;
        let stage_ends = sqlx::query("SELECT name, finished_at FROM stages WHERE run_id = $1")
            .bind(run_id.get())
            .fetch_all(self.pool())
            .await
            .ctx(ctx)?;
        let mut needs_done = Vec::with_capacity(needs.len());
        for row in &stage_ends {
            let name: String = row.try_get("name").ctx(ctx)?;
            if needs.contains(&name) {
                needs_done.push(row.try_get::<Option<i64>, _>("finished_at").ctx(ctx)?);
            }
        }
        let attempts = sqlx::query(
            "SELECT stage, attempt, status, started_at, finished_at FROM stage_attempts
             WHERE run_id = $1 ORDER BY started_at, stage, attempt",
        )
        .bind(run_id.get())
        .fetch_all(self.pool())
        .await
        .ctx(ctx)?;
        let mut this = None;
        let mut previous = None;
        let mut first = None;
        for row in &attempts {
            let name: String = row.try_get("stage").ctx(ctx)?;
            let number = row.attempt("attempt", ctx)?;
            first.get_or_insert_with(|| (name.clone(), number));
            if name != stage {
                continue;
            }
            let times = (
                row.try_get::<i64, _>("started_at").ctx(ctx)?,
                row.try_get::<Option<i64>, _>("finished_at").ctx(ctx)?,
                row.try_get::<String, _>("status").ctx(ctx)?,
            );
            if number == attempt {
                this = Some(times);
            } else if number.next() == attempt {
                previous = Some(times);
            }
        }
        let Some((started_at, finished_at, _)) = this else {
            return Ok(None);
        };
        let runnable_at = match &previous {
            Some((_, _, status)) if status == "failed" => None,
            _ => {
                let mut at = run_started.unwrap_or(created_at);
                for done in needs_done.iter().flatten() {
                    at = at.max(*done);
                }
                if let Some((_, Some(given_back), _)) = previous {
                    at = at.max(given_back);
                }
                Some(at.min(started_at))
            }
        };
        Ok(Some(AttemptTiming {
            repo: run.try_get("repo").ctx(ctx)?,
            pipeline: run.try_get("pipeline").ctx(ctx)?,
            run_created_at: created_at,
            started_at,
            finished_at,
            runnable_at,
            first_of_run: attempt == Attempt::FIRST && first == Some((stage.to_string(), attempt)),
        }))
    }
}
