//! Environments and deployments (docs/environments.md): what the controller
//! (`crate::environments`) records, and what the API and the status page read.
//!
//! Every write that moves a deployment is guarded by the status it expects
//! (`... WHERE status = $expected`), so the controller and an operator's action racing on the
//! same deployment cannot both win: the loser's write changes nothing and its next pass
//! re-reads.

use deploylite_model::RunId;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::runs::{insert_run, parse_json, parse_status, policy_from_row, PolicyColumns};
use super::{now_ms, DbContext, NewRun, Result, Store, StoreError};
use crate::status::{DeploymentAction, DeploymentStatus, Health, RunAction, RunStatus, Sync};

/// After this many redeploys for drift without an in-sync check in between, the environment
/// is reported degraded and drift is only reported.
pub const MAX_DRIFT_REDEPLOYS: i64 = 3;

#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    pub version: String,
    pub by: String,
    pub at: i64,
}

/// An environment as recorded: its definition (from the default branch) and where it stands.
#[derive(Debug, Clone)]
pub struct EnvironmentRecord {
    pub repo: String,
    pub name: String,
    pub definition: deploylite_pipeline::Environment,
    pub definition_commit: String,
    pub removed: bool,
    pub desired_version: Option<String>,
    pub desired_ref: Option<String>,
    pub current_version: Option<String>,
    pub current_deployment: Option<i64>,
    /// The last drift check's verdict (`in_sync`, `drifted`, `unknown`); none before any.
    pub drift: Option<Sync>,
    pub drift_redeploys: i64,
    pub check_run_id: Option<RunId>,
    pub last_check_at: Option<i64>,
    pub next_check_at: Option<i64>,
    pub hold: Option<Hold>,
    /// The status of the newest deployment that got past `waiting` (health follows it).
    pub latest_status: Option<DeploymentStatus>,
}

impl EnvironmentRecord {
    pub fn sync(&self) -> Sync {
        if self.drift == Some(Sync::Drifted) {
            return Sync::Drifted;
        }
        match (&self.current_version, &self.desired_version) {
            (None, _) => Sync::Unknown,
            (Some(current), Some(desired)) if current != desired => Sync::OutOfSync,
            _ => Sync::InSync,
        }
    }

    pub fn health(&self) -> Health {
        if self.drift == Some(Sync::Drifted) && self.drift_redeploys >= MAX_DRIFT_REDEPLOYS {
            return Health::Degraded;
        }
        match self.latest_status {
            Some(s) if s.is_active() || s == DeploymentStatus::RollingBack => Health::Progressing,
            Some(DeploymentStatus::Failed | DeploymentStatus::RolledBack) => Health::Degraded,
            _ if self.current_version.is_some() => Health::Healthy,
            _ => Health::Unknown,
        }
    }

    /// The API's summary shape: `{repo, name, current_version, desired_version, sync, health, hold}`.
    pub fn summary(&self) -> EnvironmentSummary {
        EnvironmentSummary {
            repo: self.repo.clone(),
            name: self.name.clone(),
            current_version: self.current_version.clone(),
            desired_version: self.desired_version.clone(),
            sync: self.sync(),
            health: self.health(),
            hold: self.hold.clone(),
            last_check_at: self.last_check_at,
            follows: match &self.definition.follows {
                deploylite_pipeline::Follows::Branch(b) => format!("branch {b}"),
                deploylite_pipeline::Follows::Tag(t) => format!("tag {t}"),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentSummary {
    pub repo: String,
    pub name: String,
    pub current_version: Option<String>,
    pub desired_version: Option<String>,
    pub sync: Sync,
    pub health: Health,
    pub hold: Option<Hold>,
    pub last_check_at: Option<i64>,
    pub follows: String,
}

/// A run that carries out a deployment.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentRun {
    pub id: RunId,
    pub pipeline: String,
    pub action: String,
    pub status: RunStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentRecord {
    pub id: i64,
    pub repo: String,
    pub environment: String,
    pub version: String,
    pub attempt: i64,
    pub git_ref: Option<String>,
    pub previous_version: Option<String>,
    pub action: DeploymentAction,
    pub status: DeploymentStatus,
    pub pending_reason: Option<String>,
    pub triggered_by: String,
    pub manual: bool,
    pub rollback_of: Option<i64>,
    pub policy: Option<deploylite_policy::Decision>,
    pub errors: Vec<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Filled by [`Store::deployment`] and [`Store::deployment_history`].
    pub runs: Vec<DeploymentRun>,
    pub approvals: Vec<String>,
}

/// A deployment to record: automation's (attempt 1 of a desired version) or a person's.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub repo: String,
    pub environment: String,
    pub version: String,
    /// `None`: the next attempt of this version (a person asked); `Some(1)`: automation.
    pub attempt: Option<i64>,
    pub git_ref: Option<String>,
    pub previous_version: Option<String>,
    pub action: DeploymentAction,
    pub status: DeploymentStatus,
    pub pending_reason: Option<String>,
    pub triggered_by: String,
    pub manual: bool,
    pub rollback_of: Option<i64>,
}

const DEPLOYMENT_COLUMNS: &str = "id, repo, environment, version, attempt, git_ref, previous_version, action, \
     status, pending_reason, triggered_by, manual, rollback_of, policy_deny, policy_warn, policy_revision, \
     policy_eval_us, errors, created_at, started_at, finished_at";

const ENVIRONMENT_COLUMNS: &str = "e.repo, e.name, e.definition, e.definition_commit, e.removed, \
     e.desired_version, e.desired_ref, e.current_version, e.current_deployment, e.drift, e.drift_redeploys, \
     e.check_run_id, e.last_check_at, e.next_check_at, e.hold_version, e.hold_by, e.hold_at, \
     (SELECT d.status FROM deployments d WHERE d.repo = e.repo AND d.environment = e.name \
        AND d.status NOT IN ('waiting', 'superseded', 'cancelled', 'rejected') \
      ORDER BY d.id DESC LIMIT 1) AS latest_status";

fn environment_from_row(r: &AnyRow) -> Result<EnvironmentRecord> {
    let c = "reading an environment";
    let definition: String = r.try_get("definition").ctx(c)?;
    let drift: Option<String> = r.try_get("drift").ctx(c)?;
    let latest: Option<String> = r.try_get("latest_status").ctx(c)?;
    let hold_version: Option<String> = r.try_get("hold_version").ctx(c)?;
    Ok(EnvironmentRecord {
        repo: r.try_get("repo").ctx(c)?,
        name: r.try_get("name").ctx(c)?,
        definition: parse_json(&definition)?,
        definition_commit: r.try_get("definition_commit").ctx(c)?,
        removed: r.try_get::<i64, _>("removed").ctx(c)? != 0,
        desired_version: r.try_get("desired_version").ctx(c)?,
        desired_ref: r.try_get("desired_ref").ctx(c)?,
        current_version: r.try_get("current_version").ctx(c)?,
        current_deployment: r.try_get("current_deployment").ctx(c)?,
        drift: drift.map(parse_status).transpose()?,
        drift_redeploys: r.try_get("drift_redeploys").ctx(c)?,
        check_run_id: r
            .try_get::<Option<i64>, _>("check_run_id")
            .ctx(c)?
            .map(RunId::from),
        last_check_at: r.try_get("last_check_at").ctx(c)?,
        next_check_at: r.try_get("next_check_at").ctx(c)?,
        hold: match hold_version {
            Some(version) => Some(Hold {
                version,
                by: r
                    .try_get::<Option<String>, _>("hold_by")
                    .ctx(c)?
                    .unwrap_or_default(),
                at: r
                    .try_get::<Option<i64>, _>("hold_at")
                    .ctx(c)?
                    .unwrap_or_default(),
            }),
            None => None,
        },
        latest_status: latest.map(parse_status).transpose()?,
    })
}

fn deployment_from_row(r: &AnyRow) -> Result<DeploymentRecord> {
    let c = "reading a deployment";
    let errors: Option<String> = r.try_get("errors").ctx(c)?;
    Ok(DeploymentRecord {
        id: r.try_get("id").ctx(c)?,
        repo: r.try_get("repo").ctx(c)?,
        environment: r.try_get("environment").ctx(c)?,
        version: r.try_get("version").ctx(c)?,
        attempt: r.try_get("attempt").ctx(c)?,
        git_ref: r.try_get("git_ref").ctx(c)?,
        previous_version: r.try_get("previous_version").ctx(c)?,
        action: parse_status(r.try_get::<String, _>("action").ctx(c)?)?,
        status: parse_status(r.try_get::<String, _>("status").ctx(c)?)?,
        pending_reason: r.try_get("pending_reason").ctx(c)?,
        triggered_by: r.try_get("triggered_by").ctx(c)?,
        manual: r.try_get::<i64, _>("manual").ctx(c)? != 0,
        rollback_of: r.try_get("rollback_of").ctx(c)?,
        policy: policy_from_row(r)?,
        errors: errors
            .as_deref()
            .map(parse_json)
            .transpose()?
            .unwrap_or_default(),
        created_at: r.try_get("created_at").ctx(c)?,
        started_at: r.try_get("started_at").ctx(c)?,
        finished_at: r.try_get("finished_at").ctx(c)?,
        runs: Vec::new(),
        approvals: Vec::new(),
    })
}

fn json_list(list: &[String]) -> Result<String> {
    serde_json::to_string(list).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Records the environment files read from the default branch at `commit`: new ones are
    /// added, changed ones updated, and those no longer there marked removed (their history
    /// stays). Returns whether anything changed.
    pub async fn record_environment_definitions(
        &self,
        repo: &str,
        commit: &str,
        definitions: &[deploylite_pipeline::Environment],
    ) -> Result<bool> {
        let now = now_ms();
        let mut tx = self
            .pool()
            .begin()
            .await
            .ctx("starting to record environments")?;
        let existing: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT name, definition, removed FROM environments WHERE repo = $1")
                .bind(repo)
                .fetch_all(&mut *tx)
                .await
                .ctx("reading environments")?;
        let mut changed = false;
        for def in definitions {
            let json =
                serde_json::to_string(def).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let same = existing
                .iter()
                .any(|(name, old, removed)| name == &def.name && old == &json && *removed == 0);
            if same {
                continue;
            }
            changed = true;
            sqlx::query(
                "INSERT INTO environments (repo, name, definition, definition_commit, updated_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (repo, name) DO UPDATE SET definition = excluded.definition,
                     definition_commit = excluded.definition_commit, removed = 0,
                     updated_at = excluded.updated_at",
            )
            .bind(repo)
            .bind(&def.name)
            .bind(&json)
            .bind(commit)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("recording an environment")?;
        }
        for (name, _, removed) in &existing {
            if *removed == 0 && !definitions.iter().any(|d| &d.name == name) {
                changed = true;
                sqlx::query(
                    "UPDATE environments SET removed = 1, updated_at = $3 WHERE repo = $1 AND name = $2",
                )
                .bind(repo)
                .bind(name)
                .bind(now)
                .execute(&mut *tx)
                .await
                .ctx("marking an environment removed")?;
                // A removed environment deploys nothing more.
                let cancelled: Vec<i64> = sqlx::query_scalar(
                    "UPDATE deployments SET status = 'cancelled', finished_at = $3,
                         pending_reason = NULL, errors = '[\"the environment file was removed\"]'
                     WHERE repo = $1 AND environment = $2 AND status = 'waiting'
                     RETURNING id",
                )
                .bind(repo)
                .bind(name)
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .ctx("cancelling a removed environment's deployments")?;
                for id in cancelled {
                    queue_deployment_report(&mut tx, id, now).await?;
                }
            }
        }
        tx.commit().await.ctx("committing environments")?;
        Ok(changed)
    }

    /// Environments, by repository then name; `repo` narrows to one repository. Removed
    /// environments are left out unless `with_removed`.
    pub async fn environments(
        &self,
        repo: Option<&str>,
        with_removed: bool,
    ) -> Result<Vec<EnvironmentRecord>> {
        let sql = format!(
            "SELECT {ENVIRONMENT_COLUMNS} FROM environments e
             WHERE ($1 IS NULL OR e.repo = $1) AND ($2 = 1 OR e.removed = 0)
             ORDER BY e.repo, e.name"
        );
        let rows = sqlx::query(&sql)
            .bind(repo)
            .bind(i64::from(with_removed))
            .fetch_all(self.reads())
            .await
            .ctx("listing environments")?;
        rows.iter().map(environment_from_row).collect()
    }

    pub async fn environment(&self, repo: &str, name: &str) -> Result<Option<EnvironmentRecord>> {
        let sql = format!(
            "SELECT {ENVIRONMENT_COLUMNS} FROM environments e WHERE e.repo = $1 AND e.name = $2"
        );
        let row = sqlx::query(&sql)
            .bind(repo)
            .bind(name)
            .fetch_optional(self.reads())
            .await
            .ctx("reading an environment")?;
        row.as_ref().map(environment_from_row).transpose()
    }

    /// One deployment with its runs and approvals.
    pub async fn deployment(&self, id: i64) -> Result<Option<DeploymentRecord>> {
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.reads())
            .await
            .ctx("reading a deployment")?;
        let Some(mut d) = row.as_ref().map(deployment_from_row).transpose()? else {
            return Ok(None);
        };
        self.fill_deployments(std::slice::from_mut(&mut d)).await?;
        Ok(Some(d))
    }

    /// An environment's deployments, newest first, at most `limit`, older than `before` if given.
    pub async fn deployment_history(
        &self,
        repo: &str,
        environment: &str,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<DeploymentRecord>> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments
             WHERE repo = $1 AND environment = $2 AND ($3 IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(repo)
            .bind(environment)
            .bind(before)
            .bind(limit)
            .fetch_all(self.reads())
            .await
            .ctx("reading deployments")?;
        let mut list = rows
            .iter()
            .map(deployment_from_row)
            .collect::<Result<Vec<_>>>()?;
        self.fill_deployments(&mut list).await?;
        Ok(list)
    }

    /// Deployments that are not final (the controller's working set), oldest first.
    pub async fn open_deployments(&self, repo: &str) -> Result<Vec<DeploymentRecord>> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments
             WHERE repo = $1 AND status IN ('waiting', 'queued', 'deploying', 'verifying', 'rolling_back')
             ORDER BY id"
        );
        let rows = sqlx::query(&sql)
            .bind(repo)
            .fetch_all(self.pool())
            .await
            .ctx("reading open deployments")?;
        let mut list = rows
            .iter()
            .map(deployment_from_row)
            .collect::<Result<Vec<_>>>()?;
        self.fill_deployments(&mut list).await?;
        Ok(list)
    }

    async fn fill_deployments(&self, list: &mut [DeploymentRecord]) -> Result<()> {
        for d in list.iter_mut() {
            let runs: Vec<(i64, String, Option<String>, String)> = sqlx::query_as(
                "SELECT id, pipeline, deployment_action, status FROM runs
                 WHERE deployment_id = $1 AND deployment_action <> 'check' ORDER BY id",
            )
            .bind(d.id)
            .fetch_all(self.reads())
            .await
            .ctx("reading a deployment's runs")?;
            d.runs = runs
                .into_iter()
                .map(|(id, pipeline, action, status)| {
                    Ok(DeploymentRun {
                        id: RunId::from(id),
                        pipeline,
                        action: action.unwrap_or_default(),
                        status: parse_status(status)?,
                    })
                })
                .collect::<Result<_>>()?;
            d.approvals = sqlx::query_scalar(
                "SELECT approver FROM deployment_approvals WHERE deployment_id = $1 ORDER BY created_at, approver",
            )
            .bind(d.id)
            .fetch_all(self.reads())
            .await
            .ctx("reading a deployment's approvals")?;
        }
        Ok(())
    }

    /// The versions an environment has deployed successfully, newest first (rollbacks
    /// included): what `promote_from` and rollbacks look at.
    pub async fn succeeded_versions(
        &self,
        repo: &str,
        environment: &str,
        limit: i64,
    ) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT version FROM deployments
             WHERE repo = $1 AND environment = $2 AND status = 'succeeded'
             ORDER BY finished_at DESC, id DESC LIMIT $3",
        )
        .bind(repo)
        .bind(environment)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .ctx("reading succeeded versions")
    }

    /// The status of the rollback deployment that undoes deployment `id`, if there is one.
    pub async fn rollback_status(&self, id: i64) -> Result<Option<DeploymentStatus>> {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM deployments WHERE rollback_of = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .ctx("reading a rollback's status")?;
        status.map(parse_status).transpose()
    }

    /// Whether attempt `attempt` of `version` exists for `environment`, in any status.
    pub async fn has_attempt(
        &self,
        repo: &str,
        environment: &str,
        version: &str,
        attempt: i64,
    ) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deployments
             WHERE repo = $1 AND environment = $2 AND version = $3 AND attempt = $4",
        )
        .bind(repo)
        .bind(environment)
        .bind(version)
        .bind(attempt)
        .fetch_one(self.pool())
        .await
        .ctx("reading a deployment's attempt")?;
        Ok(n > 0)
    }

    /// Whether `environment` has a succeeded deployment of `version`.
    pub async fn has_deployed(&self, repo: &str, environment: &str, version: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deployments
             WHERE repo = $1 AND environment = $2 AND version = $3 AND status = 'succeeded'",
        )
        .bind(repo)
        .bind(environment)
        .bind(version)
        .fetch_one(self.pool())
        .await
        .ctx("reading deployments of a version")?;
        Ok(n > 0)
    }

    /// The status of the newest non-deployment run of `pipeline` on `commit`, if any: what
    /// `requires:` waits for.
    pub async fn pipeline_status_at(
        &self,
        repo: &str,
        pipeline: &str,
        commit: &str,
    ) -> Result<Option<RunStatus>> {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM runs
             WHERE repo = $1 AND pipeline = $2 AND commit_sha = $3 AND deployment_id IS NULL
               AND status <> 'skipped'
             ORDER BY id DESC LIMIT 1",
        )
        .bind(repo)
        .bind(pipeline)
        .bind(commit)
        .fetch_optional(self.pool())
        .await
        .ctx("reading a required pipeline's run")?;
        status.map(parse_status).transpose()
    }

    /// A run's status and, for a failed run, whether a stage exited with `code` (a drift
    /// check's "drifted").
    pub async fn run_end(&self, run_id: RunId, code: i64) -> Result<Option<(RunStatus, bool)>> {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM runs WHERE id = $1")
            .bind(run_id.get())
            .fetch_optional(self.pool())
            .await
            .ctx("reading a run's end")?;
        let Some(status) = status.map(parse_status::<RunStatus>).transpose()? else {
            return Ok(None);
        };
        let with_code: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM stages WHERE run_id = $1 AND exit_code = $2")
                .bind(run_id.get())
                .bind(code)
                .fetch_one(self.pool())
                .await
                .ctx("reading a run's exit codes")?;
        Ok(Some((status, with_code > 0)))
    }

    /// Records an approval of a waiting deployment. `Ok(None)`: no such deployment;
    /// `Ok(Some(false))`: it is not waiting (nothing recorded).
    pub async fn approve_deployment(&self, id: i64, by: &str) -> Result<Option<bool>> {
        let mut tx = self.pool().begin().await.ctx("starting an approval")?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM deployments WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .ctx("reading a deployment to approve")?;
        let Some(status) = status else {
            return Ok(None);
        };
        if status != DeploymentStatus::Waiting.as_str() {
            return Ok(Some(false));
        }
        sqlx::query(
            "INSERT INTO deployment_approvals (deployment_id, approver, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (deployment_id, approver) DO NOTHING",
        )
        .bind(id)
        .bind(by)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .ctx("recording an approval")?;
        tx.commit().await.ctx("committing an approval")?;
        Ok(Some(true))
    }

    /// Approves the waiting deployments of `commit` in `repo` (a `/deploylite approve` comment
    /// on the commit or its pull request). Returns their ids.
    pub async fn approve_deployments_of_commit(
        &self,
        repo: &str,
        commit: &str,
        by: &str,
    ) -> Result<Vec<i64>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM deployments WHERE repo = $1 AND version = $2 AND status = 'waiting'",
        )
        .bind(repo)
        .bind(commit)
        .fetch_all(self.pool())
        .await
        .ctx("finding deployments to approve")?;
        for id in &ids {
            self.approve_deployment(*id, by).await?;
        }
        Ok(ids)
    }

    /// Who approved a deployment and when (epoch ms), oldest first.
    pub async fn deployment_approvals(&self, id: i64) -> Result<Vec<(String, i64)>> {
        sqlx::query_as(
            "SELECT approver, created_at FROM deployment_approvals WHERE deployment_id = $1
             ORDER BY created_at, approver",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await
        .ctx("reading a deployment's approvals")
    }

    /// Each pipeline's newest run on `commit` (deployments' own runs left out).
    pub async fn runs_at_commit(
        &self,
        repo: &str,
        commit: &str,
    ) -> Result<Vec<(String, RunStatus)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT pipeline, status FROM runs
             WHERE id IN (SELECT MAX(id) FROM runs WHERE repo = $1 AND commit_sha = $2
                            AND deployment_id IS NULL GROUP BY pipeline)
             ORDER BY pipeline",
        )
        .bind(repo)
        .bind(commit)
        .fetch_all(self.pool())
        .await
        .ctx("reading a commit's runs")?;
        rows.into_iter()
            .map(|(pipeline, status)| Ok((pipeline, parse_status(status)?)))
            .collect()
    }

    /// The newest commit recorded on `git_ref` by `not_after` (epoch ms): what a comment on a
    /// pull request written then was about.
    pub async fn newest_commit_of_ref(
        &self,
        repo: &str,
        git_ref: &str,
        not_after: i64,
    ) -> Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT commit_sha FROM runs WHERE repo = $1 AND git_ref = $2 AND created_at <= $3
             ORDER BY id DESC LIMIT 1",
        )
        .bind(repo)
        .bind(git_ref)
        .bind(not_after)
        .fetch_optional(self.pool())
        .await
        .ctx("reading a ref's newest commit")
    }

    /// Pins an environment at `version` (a hold, or a manual rollback).
    pub async fn hold_environment(
        &self,
        repo: &str,
        name: &str,
        version: &str,
        by: &str,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE environments SET hold_version = $3, hold_by = $4, hold_at = $5, updated_at = $5
             WHERE repo = $1 AND name = $2 AND removed = 0",
        )
        .bind(repo)
        .bind(name)
        .bind(version)
        .bind(by)
        .bind(now_ms())
        .execute(self.pool())
        .await
        .ctx("holding an environment")?
        .rows_affected();
        Ok(n > 0)
    }

    /// Lifts a hold. Returns whether the environment was held.
    pub async fn release_environment(&self, repo: &str, name: &str) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE environments SET hold_version = NULL, hold_by = NULL, hold_at = NULL, updated_at = $3
             WHERE repo = $1 AND name = $2 AND hold_version IS NOT NULL",
        )
        .bind(repo)
        .bind(name)
        .bind(now_ms())
        .execute(self.pool())
        .await
        .ctx("releasing an environment")?
        .rows_affected();
        Ok(n > 0)
    }

    /// Records a deployment a person asked for (the next attempt of its version). Returns its id.
    pub async fn request_deployment(&self, new: &NewDeployment) -> Result<i64> {
        let mut tx = self.pool().begin().await.ctx("starting a deployment")?;
        let id = insert_deployment(&mut tx, new).await?;
        tx.commit().await.ctx("committing a deployment")?;
        id.ok_or_else(|| StoreError::Corrupt("a deployment's next attempt already exists".into()))
    }

    /// Starts a transaction for the environment controller's writes.
    pub async fn begin_environments(&self) -> Result<EnvironmentTx> {
        Ok(EnvironmentTx {
            tx: self
                .pool()
                .begin()
                .await
                .ctx("starting an environment pass")?,
            now: now_ms(),
            woke_runs: false,
        })
    }
}

async fn insert_deployment(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    new: &NewDeployment,
) -> Result<Option<i64>> {
    let attempt = match new.attempt {
        Some(a) => a,
        None => {
            let max: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(attempt) FROM deployments WHERE repo = $1 AND environment = $2 AND version = $3",
            )
            .bind(&new.repo)
            .bind(&new.environment)
            .bind(&new.version)
            .fetch_one(&mut **tx)
            .await
            .ctx("numbering a deployment")?;
            max.unwrap_or(0) + 1
        }
    };
    let now = now_ms();
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO deployments (repo, environment, version, attempt, git_ref, previous_version, action,
             status, pending_reason, triggered_by, manual, rollback_of, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (repo, environment, version, attempt) DO NOTHING
         RETURNING id",
    )
    .bind(&new.repo)
    .bind(&new.environment)
    .bind(&new.version)
    .bind(attempt)
    .bind(new.git_ref.as_deref())
    .bind(new.previous_version.as_deref())
    .bind(new.action.as_str())
    .bind(new.status.as_str())
    .bind(new.pending_reason.as_deref())
    .bind(&new.triggered_by)
    .bind(i64::from(new.manual))
    .bind(new.rollback_of)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await
    .ctx("inserting a deployment")?;
    if let Some(id) = id {
        queue_deployment_report(tx, id, now).await?;
    }
    Ok(id)
}

/// Queues a forge report of deployment `id` (the forges mirror deployments; see
/// `deploylite_forge::report`), in the transaction that changes it, so the report and the
/// change commit together. As for runs, a change during a forge outage joins the pending retry
/// and keeps its count instead of restarting the backoff. Every deployment is queued: whether
/// its repository reports is the reporter's to know (it marks the row done at once if not).
pub(super) async fn queue_deployment_report(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: i64,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO deployment_outbox (deployment_id, next_attempt_at, created_at, attempts)
         SELECT $1,
                COALESCE((SELECT MAX(o.next_attempt_at) FROM deployment_outbox o
                          WHERE o.deployment_id = $1 AND o.state = 'pending'), $2),
                $2,
                COALESCE((SELECT MAX(o.attempts) FROM deployment_outbox o
                          WHERE o.deployment_id = $1 AND o.state = 'pending'), 0)",
    )
    .bind(id)
    .bind(now)
    .execute(&mut **tx)
    .await
    .ctx("queueing a deployment report")?;
    Ok(())
}

/// A value for [`EnvironmentTx::update_environment`].
enum Column<'a> {
    Text(&'a str),
    Int(i64),
    Null,
}

/// The controller's writes of one pass, committed together.
pub struct EnvironmentTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    now: i64,
    woke_runs: bool,
}

impl EnvironmentTx {
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Whether this pass recorded or cancelled runs (the scheduler must look).
    pub fn touched_runs(&self) -> bool {
        self.woke_runs
    }

    pub async fn set_desired(
        &mut self,
        repo: &str,
        name: &str,
        version: &str,
        git_ref: &str,
    ) -> Result<()> {
        use Column::Text;
        let columns = [
            ("desired_version", Text(version)),
            ("desired_ref", Text(git_ref)),
        ];
        self.update_environment(repo, name, &columns, "recording a desired version")
            .await
    }

    /// Records a deployment unless its identity exists. Returns its id when created.
    pub async fn insert_deployment(&mut self, new: &NewDeployment) -> Result<Option<i64>> {
        insert_deployment(&mut self.tx, new).await
    }

    /// Moves a deployment from `from` to `to` (a guarded write). Returns whether it moved.
    pub async fn transition(
        &mut self,
        id: i64,
        from: DeploymentStatus,
        to: DeploymentStatus,
        pending_reason: Option<&str>,
        errors: &[String],
    ) -> Result<bool> {
        if !from.can_become(to) {
            return Err(StoreError::Corrupt(format!(
                "deployment {id}: illegal transition {from} -> {to}"
            )));
        }
        let errors = if errors.is_empty() {
            None
        } else {
            Some(json_list(errors)?)
        };
        let started = matches!(to, DeploymentStatus::Deploying);
        let n = sqlx::query(
            "UPDATE deployments SET status = $3, pending_reason = $4,
                 errors = COALESCE($5, errors),
                 started_at = CASE WHEN $6 = 1 AND started_at IS NULL THEN $7 ELSE started_at END,
                 finished_at = CASE WHEN $8 = 1 THEN $7 ELSE finished_at END
             WHERE id = $1 AND status = $2",
        )
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(pending_reason)
        .bind(errors)
        .bind(i64::from(started))
        .bind(self.now)
        .bind(i64::from(to.is_final()))
        .execute(&mut *self.tx)
        .await
        .ctx("moving a deployment")?
        .rows_affected();
        if n > 0 {
            queue_deployment_report(&mut self.tx, id, self.now).await?;
        }
        Ok(n > 0)
    }

    /// Sets the reason a waiting deployment waits (only when it changed, to keep writes few).
    pub async fn set_pending(&mut self, id: i64, reason: &str) -> Result<()> {
        let n = sqlx::query(
            "UPDATE deployments SET pending_reason = $2
             WHERE id = $1 AND status = 'waiting' AND (pending_reason IS NULL OR pending_reason <> $2)",
        )
        .bind(id)
        .bind(reason)
        .execute(&mut *self.tx)
        .await
        .ctx("recording why a deployment waits")?
        .rows_affected();
        // The forges show why a deployment waits (the status description).
        if n > 0 {
            queue_deployment_report(&mut self.tx, id, self.now).await?;
        }
        Ok(())
    }

    /// Records the `deploylite.deploy` gate's decision with the deployment.
    pub async fn record_policy(
        &mut self,
        id: i64,
        decision: &deploylite_policy::Decision,
    ) -> Result<()> {
        let columns = PolicyColumns::of(decision)?;
        sqlx::query(
            "UPDATE deployments SET policy_deny = $2, policy_warn = $3, policy_revision = $4, policy_eval_us = $5
             WHERE id = $1",
        )
        .bind(id)
        .bind(&columns.deny)
        .bind(&columns.warn)
        .bind(&decision.revision_sha256)
        .bind(columns.eval_us)
        .execute(&mut *self.tx)
        .await
        .ctx("recording a deployment's policy decision")?;
        Ok(())
    }

    /// Records a run that carries out `deployment` (or checks an environment). `None`: a run
    /// with the same identity exists.
    pub async fn insert_run(
        &mut self,
        run: &NewRun,
        deployment: i64,
        action: RunAction,
    ) -> Result<Option<RunId>> {
        let Some(id) = insert_run(&mut self.tx, run, self.now).await? else {
            return Ok(None);
        };
        sqlx::query("UPDATE runs SET deployment_id = $2, deployment_action = $3 WHERE id = $1")
            .bind(id.get())
            .bind(deployment)
            .bind(action.as_str())
            .execute(&mut *self.tx)
            .await
            .ctx("linking a run to its deployment")?;
        self.woke_runs = true;
        Ok(Some(id))
    }

    /// The next `run_attempt` for a run of `pipeline` on `commit` with `trigger`.
    pub async fn next_run_attempt(
        &mut self,
        repo: &str,
        pipeline: &str,
        commit: &str,
        trigger: &str,
    ) -> Result<i64> {
        let max: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(run_attempt) FROM runs
             WHERE repo = $1 AND pipeline = $2 AND commit_sha = $3 AND trigger = $4",
        )
        .bind(repo)
        .bind(pipeline)
        .bind(commit)
        .bind(trigger)
        .fetch_one(&mut *self.tx)
        .await
        .ctx("numbering a run")?;
        Ok(max.unwrap_or(0) + 1)
    }

    /// Asks for the cancellation of the runs of a deployment that is superseded or cancelled.
    pub async fn cancel_runs_of(&mut self, deployment: i64, reason: &str) -> Result<()> {
        let n = sqlx::query(
            "UPDATE runs SET cancel_requested = 1, pending_reason = $2
             WHERE deployment_id = $1 AND status IN ('queued', 'running') AND cancel_requested = 0",
        )
        .bind(deployment)
        .bind(reason)
        .execute(&mut *self.tx)
        .await
        .ctx("cancelling a deployment's runs")?
        .rows_affected();
        self.woke_runs |= n > 0;
        Ok(())
    }

    /// The environment now runs `version`, put there by `deployment`.
    pub async fn set_current(
        &mut self,
        repo: &str,
        name: &str,
        version: &str,
        deployment: i64,
    ) -> Result<()> {
        use Column::{Int, Text};
        let columns = [
            ("current_version", Text(version)),
            ("current_deployment", Int(deployment)),
        ];
        self.update_environment(repo, name, &columns, "recording an environment's version")
            .await
    }

    /// A drift check run was started: the next one is due at `next_check_at`.
    pub async fn start_check(
        &mut self,
        repo: &str,
        name: &str,
        run_id: RunId,
        next_check_at: i64,
    ) -> Result<()> {
        use Column::Int;
        let columns = [
            ("check_run_id", Int(run_id.get())),
            ("next_check_at", Int(next_check_at)),
        ];
        self.update_environment(repo, name, &columns, "recording a drift check")
            .await
    }

    /// Records a drift check's verdict; `drift_redeploys` is the count after this verdict.
    pub async fn finish_check(
        &mut self,
        repo: &str,
        name: &str,
        drift: Sync,
        drift_redeploys: i64,
        next_check_at: i64,
    ) -> Result<()> {
        use Column::{Int, Null, Text};
        let columns = [
            ("check_run_id", Null),
            ("drift", Text(drift.as_str())),
            ("drift_redeploys", Int(drift_redeploys)),
            ("last_check_at", Int(self.now)),
            ("next_check_at", Int(next_check_at)),
        ];
        self.update_environment(repo, name, &columns, "recording a drift check's verdict")
            .await
    }

    /// Schedules the next drift check without running one now.
    pub async fn schedule_check(&mut self, repo: &str, name: &str, at: i64) -> Result<()> {
        let columns = [("next_check_at", Column::Int(at))];
        self.update_environment(repo, name, &columns, "scheduling a drift check")
            .await
    }

    /// One UPDATE of an environment's row: `columns` (names from this module, never from
    /// input) are set in order, then `updated_at`.
    async fn update_environment(
        &mut self,
        repo: &str,
        name: &str,
        columns: &[(&'static str, Column<'_>)],
        context: &'static str,
    ) -> Result<()> {
        let mut set = String::new();
        for (i, (column, _)) in columns.iter().enumerate() {
            set.push_str(&format!("{column} = ${}, ", i + 3));
        }
        let sql = format!(
            "UPDATE environments SET {set}updated_at = ${} WHERE repo = $1 AND name = $2",
            columns.len() + 3
        );
        let mut query = sqlx::query(&sql).bind(repo).bind(name);
        for (_, value) in columns {
            query = match value {
                Column::Text(text) => query.bind(*text),
                Column::Int(n) => query.bind(*n),
                Column::Null => query.bind(None::<i64>),
            };
        }
        query
            .bind(self.now)
            .execute(&mut *self.tx)
            .await
            .ctx(context)?;
        Ok(())
    }

    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await.ctx("committing an environment pass")
    }
}
