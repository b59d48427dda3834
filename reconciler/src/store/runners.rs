//! Runners and their leases. A lease is a running stage attempt assigned to a runner; remote
//! runners collect it, keep it alive with heartbeats, and report its end. The scheduler assigns
//! (see `plan_tick`); this module only records.

use deploylite_model::{Attempt, RunId};
use serde::Serialize;
use sqlx::Row;

use super::runs::{parse_json, queue_report};
use super::{now_ms, DbContext, Result, RowExt, Store, StoreError};
use crate::model::{Lease, LOCAL_RUNNER};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunnerRecord {
    pub name: String,
    pub labels: Vec<String>,
    pub capacity: i64,
    pub executor: String,
    pub registered_at: i64,
    pub last_seen: Option<i64>,
    pub revoked: bool,
    /// Stages it is running now.
    pub running: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    New,
    /// A runner of that name re-registered with takeover allowed: it gets the new credential
    /// (the old one stops working) and keeps the name's leases.
    Replaced,
    /// The name was revoked; it cannot register again.
    Revoked,
    /// The name belongs to a live runner and takeover was not allowed: nothing changed.
    Taken,
}

const RUNNER_COLUMNS: &str =
    "r.name, r.labels, r.capacity, r.executor, r.registered_at, r.last_seen, r.revoked,
     (SELECT COUNT(*) FROM stages s WHERE s.runner = r.name AND s.status = 'running') AS running";

fn runner_from_row(r: &sqlx::any::AnyRow) -> Result<RunnerRecord> {
    Ok(RunnerRecord {
        name: r.try_get("name").ctx("reading a runner")?,
        labels: parse_json(&r.try_get::<String, _>("labels").ctx("reading a runner")?)?,
        capacity: r.try_get("capacity").ctx("reading a runner")?,
        executor: r.try_get("executor").ctx("reading a runner")?,
        registered_at: r.try_get("registered_at").ctx("reading a runner")?,
        last_seen: r.try_get("last_seen").ctx("reading a runner")?,
        revoked: r.try_get::<i64, _>("revoked").ctx("reading a runner")? != 0,
        running: r.try_get("running").ctx("reading a runner")?,
    })
}

fn labels_json(labels: &[String]) -> Result<String> {
    serde_json::to_string(labels).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Registers runner `name`. When a live runner holds the name, it is replaced only with
    /// `allow_takeover` (the caller proved the right to it); otherwise nothing changes and the
    /// answer is `Taken`. The check and the write are one statement, so two registrations racing
    /// for a new name cannot both win.
    pub async fn register_runner(
        &self,
        name: &str,
        credential_hash: &str,
        labels: &[String],
        capacity: i64,
        executor: &str,
        allow_takeover: bool,
    ) -> Result<Registration> {
        let existed: Option<i64> =
            sqlx::query_scalar("SELECT revoked FROM runners WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await
                .ctx("looking up a runner")?;
        if existed == Some(1) {
            return Ok(Registration::Revoked);
        }
        let on_conflict = if allow_takeover {
            "ON CONFLICT (name) DO UPDATE SET credential_hash = excluded.credential_hash, labels = excluded.labels,
                 capacity = excluded.capacity, executor = excluded.executor, registered_at = excluded.registered_at,
                 last_seen = excluded.last_seen
             WHERE runners.revoked = 0"
        } else {
            "ON CONFLICT (name) DO NOTHING"
        };
        let sql = format!(
            "INSERT INTO runners (name, credential_hash, labels, capacity, executor, registered_at, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $6) {on_conflict}"
        );
        let written = sqlx::query(&sql)
            .bind(name)
            .bind(credential_hash)
            .bind(labels_json(labels)?)
            .bind(capacity)
            .bind(executor)
            .bind(now_ms())
            .execute(self.pool())
            .await
            .ctx("registering a runner")?;
        if written.rows_affected() == 0 {
            // Someone else holds the name (or revoked it) since the look-up above.
            let revoked: Option<i64> =
                sqlx::query_scalar("SELECT revoked FROM runners WHERE name = $1")
                    .bind(name)
                    .fetch_optional(self.pool())
                    .await
                    .ctx("looking up a runner")?;
            return Ok(if revoked == Some(1) {
                Registration::Revoked
            } else {
                Registration::Taken
            });
        }
        Ok(if existed.is_some() {
            Registration::Replaced
        } else {
            Registration::New
        })
    }

    /// The runner a credential belongs to, unless revoked.
    pub async fn authenticate_runner(&self, credential_hash: &str) -> Result<Option<RunnerRecord>> {
        let sql = format!(
            "SELECT {RUNNER_COLUMNS} FROM runners r WHERE r.credential_hash = $1 AND r.revoked = 0"
        );
        sqlx::query(&sql)
            .bind(credential_hash)
            .fetch_optional(self.pool())
            .await
            .ctx("authenticating a runner")?
            .as_ref()
            .map(runner_from_row)
            .transpose()
    }

    /// A runner said it is alive, with the capacity it offers now. Its labels are not the
    /// runner's to change: they are fixed at registration (see [`Store::set_runner_labels`]).
    pub async fn touch_runner(&self, name: &str, capacity: i64) -> Result<()> {
        sqlx::query("UPDATE runners SET last_seen = $2, capacity = $3 WHERE name = $1")
            .bind(name)
            .bind(now_ms())
            .bind(capacity)
            .execute(self.pool())
            .await
            .ctx("recording a runner's heartbeat")?;
        Ok(())
    }

    /// Changes a runner's labels (an admin's decision: runners cannot change their own). False
    /// when there is no such runner. The caller wakes the scheduler so that placement follows.
    pub async fn set_runner_labels(&self, name: &str, labels: &[String]) -> Result<bool> {
        let updated = sqlx::query("UPDATE runners SET labels = $2 WHERE name = $1")
            .bind(name)
            .bind(labels_json(labels)?)
            .execute(self.pool())
            .await
            .ctx("changing a runner's labels")?;
        Ok(updated.rows_affected() == 1)
    }

    pub async fn list_runners(&self) -> Result<Vec<RunnerRecord>> {
        let sql = format!("SELECT {RUNNER_COLUMNS} FROM runners r ORDER BY r.name");
        let rows = sqlx::query(&sql)
            .fetch_all(self.pool())
            .await
            .ctx("listing runners")?;
        rows.iter().map(runner_from_row).collect()
    }

    /// How many stages run on `runner` now (the local runner is not in `runners`).
    pub async fn running_on(&self, runner: &str) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM stages WHERE runner = $1 AND status = 'running'")
            .bind(runner)
            .fetch_one(self.pool())
            .await
            .ctx("counting a runner's stages")
    }

    /// What the scheduler needs of the remote runners heard from since `seen_since` (not revoked):
    /// name, labels and capacity. Read on every tick, so it skips what `list_runners` counts.
    pub async fn online_runners(&self, seen_since: i64) -> Result<Vec<(String, Vec<String>, i64)>> {
        let rows = sqlx::query(
            "SELECT name, labels, capacity FROM runners
             WHERE revoked = 0 AND last_seen >= $1 AND name <> $2 ORDER BY name",
        )
        .bind(seen_since)
        .bind(LOCAL_RUNNER)
        .fetch_all(self.pool())
        .await
        .ctx("listing online runners")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("name").ctx("reading a runner")?,
                    parse_json(&r.try_get::<String, _>("labels").ctx("reading a runner")?)?,
                    r.try_get("capacity").ctx("reading a runner")?,
                ))
            })
            .collect()
    }

    /// Revokes a runner: its credential stops working at once. Its running leases expire and
    /// their stages go to another runner. False when there is no such runner.
    pub async fn revoke_runner(&self, name: &str) -> Result<bool> {
        let updated = sqlx::query("UPDATE runners SET revoked = 1 WHERE name = $1")
            .bind(name)
            .execute(self.pool())
            .await
            .ctx("revoking a runner")?;
        Ok(updated.rows_affected() == 1)
    }

    /// Leases assigned to `runner` that it has not collected yet; they are marked collected.
    pub async fn collect_leases(&self, runner: &str, limit: i64) -> Result<Vec<Lease>> {
        let rows = sqlx::query(
            "UPDATE stages SET lease_delivered = 1
             WHERE status = 'running' AND runner = $1 AND lease_delivered = 0
               AND (run_id, name) IN (SELECT run_id, name FROM stages
                                      WHERE status = 'running' AND runner = $1 AND lease_delivered = 0
                                      ORDER BY run_id, position LIMIT $2)
             RETURNING run_id, name, attempt, failures",
        )
        .bind(runner)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .ctx("collecting leases")?;
        rows.iter()
            .map(|r| {
                Ok(Lease {
                    run_id: r.run_id("run_id", "reading a lease")?,
                    stage: r.text("name", "reading a lease")?,
                    attempt: r.attempt("attempt", "reading a lease")?,
                    failures: r.count("failures", "reading a lease")?,
                })
            })
            .collect()
    }

    /// Extends a lease (and marks the runner seen). `None` when the lease is no longer this
    /// runner's (expired and reassigned, or the stage ended); otherwise whether the run was
    /// cancelled.
    pub async fn renew_lease(
        &self,
        runner: &str,
        run_id: RunId,
        stage: &str,
        attempt: Attempt,
        deadline: i64,
    ) -> Result<Option<bool>> {
        sqlx::query("UPDATE runners SET last_seen = $2 WHERE name = $1")
            .bind(runner)
            .bind(now_ms())
            .execute(self.pool())
            .await
            .ctx("recording a runner's heartbeat")?;
        let updated = sqlx::query(
            "UPDATE stages SET lease_deadline = $5
             WHERE run_id = $1 AND name = $2 AND attempt = $3 AND runner = $4 AND status = 'running'",
        )
        .bind(run_id.get())
        .bind(stage)
        .bind(i64::from(attempt))
        .bind(runner)
        .bind(deadline)
        .execute(self.pool())
        .await
        .ctx("renewing a lease")?;
        if updated.rows_affected() != 1 {
            return Ok(None);
        }
        let cancel: i64 = sqlx::query_scalar("SELECT cancel_requested FROM runs WHERE id = $1")
            .bind(run_id.get())
            .fetch_one(self.pool())
            .await
            .ctx("reading a run's cancellation")?;
        Ok(Some(cancel != 0))
    }

    /// When `runner` holds attempt `attempt` of the stage right now: the stage's failures so far
    /// and whether its run is being cancelled. None when it does not (a late or foreign report).
    pub async fn held_lease(
        &self,
        runner: &str,
        run_id: RunId,
        stage: &str,
        attempt: Attempt,
    ) -> Result<Option<(u32, bool)>> {
        let row = sqlx::query(
            "SELECT s.failures, r.cancel_requested FROM stages s JOIN runs r ON r.id = s.run_id
             WHERE s.run_id = $1 AND s.name = $2 AND s.attempt = $3 AND s.runner = $4 AND s.status = 'running'",
        )
        .bind(run_id.get())
        .bind(stage)
        .bind(i64::from(attempt))
        .bind(runner)
        .fetch_optional(self.pool())
        .await
        .ctx("checking a lease")?;
        row.map(|r| {
            Ok((
                r.count("failures", "reading a lease")?,
                r.try_get::<i64, _>("cancel_requested")
                    .ctx("reading a lease")?
                    != 0,
            ))
        })
        .transpose()
    }

    /// Ends an attempt that did not fail on its own (lease expired, runner handed it back,
    /// daemon restarted): the attempt is closed with `note`, and the stage queued for a new
    /// attempt that does not count against `retry.max`, waiting with `reason`. False when that
    /// attempt was not running any more.
    pub async fn requeue_attempt(
        &self,
        run_id: RunId,
        stage: &str,
        attempt: Attempt,
        note: &str,
        reason: &str,
    ) -> Result<bool> {
        let mut tx = self
            .pool()
            .begin()
            .await
            .ctx("starting to requeue an attempt")?;
        let done = requeue_in(&mut tx, run_id, stage, attempt, note, reason).await?;
        tx.commit().await.ctx("committing a requeued attempt")?;
        Ok(done)
    }
}

pub(super) async fn requeue_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run_id: RunId,
    stage: &str,
    attempt: Attempt,
    note: &str,
    reason: &str,
) -> Result<bool> {
    let now = now_ms();
    let updated = sqlx::query(
        "UPDATE stages SET status = 'queued', runner = NULL, lease_deadline = NULL, lease_delivered = 0,
             not_before = NULL, pending_reason = $4
         WHERE run_id = $1 AND name = $2 AND attempt = $3 AND status = 'running'",
    )
    .bind(run_id.get())
    .bind(stage)
    .bind(i64::from(attempt))
    .bind(reason)
    .execute(&mut **tx)
    .await
    .ctx("requeueing a stage")?;
    if updated.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE stage_attempts SET status = 'failed', note = $4, finished_at = $5
         WHERE run_id = $1 AND stage = $2 AND attempt = $3 AND status = 'running'",
    )
    .bind(run_id.get())
    .bind(stage)
    .bind(i64::from(attempt))
    .bind(note)
    .bind(now)
    .execute(&mut **tx)
    .await
    .ctx("closing a requeued attempt")?;
    queue_report(tx, run_id, now).await?;
    Ok(true)
}
