//! The store: every piece of scheduling state, behind one type that speaks SQLite (default,
//! embedded) and PostgreSQL through sqlx's `Any` driver. Only this module knows SQL.
//!
//! The queries are written once for both databases: `$n` parameters (SQLite accepts them too),
//! `ON CONFLICT` and `RETURNING` (SQLite >= 3.35), BIGINT/INTEGER columns only, times as epoch
//! milliseconds, flags as 0/1.

mod approvals;
mod auth;
mod daemon_lock;
mod environments;
mod forge;
mod migrate;
mod pulls;
mod runners;
mod runs;
mod schedule;
mod secrets;
mod tags;
mod telemetry;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use deploylite_model::{Attempt, RunId};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, ConnectOptions, Executor, Row};

pub use auth::{AuditEntry, AuditRecord, Role, TokenIdentity, TokenRecord};
pub use daemon_lock::DatabaseLock;
pub use environments::{
    DeploymentRecord, DeploymentRun, EnvironmentRecord, EnvironmentSummary, EnvironmentTx, Hold,
    NewDeployment, MAX_DRIFT_REDEPLOYS,
};
pub use forge::DueReport;
// The run domain model, re-exported where the store's callers have always found it.
pub use crate::model::{
    ActiveRun, ActiveStage, AttemptResult, Dispatch, ExpiredLease, Interrupted, Lease, NewRun,
    NewStage, PullRequestInfo, RecordCommit, RunFilter, RunFinish, RunRecord, StageAttemptRecord,
    StageRecord, StageSkip, TickWrites, LOCAL_RUNNER,
};
pub use runners::{Registration, RunnerRecord};
pub use schedule::{TickTx, INTERRUPTED_NOTE};
pub use secrets::{SealedSecret, SecretInfo};
pub use telemetry::{AttemptTiming, RemoteRunnerGauge, RunTiming, SchedulingGauges};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error while {context}: {source}")]
    Db {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot open database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the scheduler is stopping: try again after the daemon restarts")]
    Stopping,
    #[error("the database holds a value this version cannot read ({0})")]
    Corrupt(String),
    #[error("the database holds a value this version cannot read ({0})")]
    OutOfRange(#[from] deploylite_model::OutOfRange),
    #[error(
        "another deploylite serve holds the database {url} ({holder}); one daemon per database \
         until replicas are supported: stop it first"
    )]
    DatabaseLocked { url: String, holder: String },
    #[error("unsupported database URL `{0}`: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The typed ids, read from a row: the columns are BIGINT, the domain's types narrower.
pub(crate) trait RowExt {
    fn run_id(&self, column: &str, context: &'static str) -> Result<RunId>;
    /// An attempt number outside `u32` is [`StoreError::OutOfRange`], never clamped.
    fn attempt(&self, column: &str, context: &'static str) -> Result<Attempt>;
    /// A count (a stage's failures) outside `u32`: [`StoreError::OutOfRange`].
    fn count(&self, column: &str, context: &'static str) -> Result<u32>;
    /// A text column as a string id (`RepoName`, `CommitSha`, `StageName`).
    fn text<T: From<String>>(&self, column: &str, context: &'static str) -> Result<T>;
}

impl RowExt for AnyRow {
    fn run_id(&self, column: &str, context: &'static str) -> Result<RunId> {
        self.try_get::<i64, _>(column).ctx(context).map(RunId::from)
    }

    fn attempt(&self, column: &str, context: &'static str) -> Result<Attempt> {
        Ok(Attempt::try_from(
            self.try_get::<i64, _>(column).ctx(context)?,
        )?)
    }

    fn count(&self, column: &str, context: &'static str) -> Result<u32> {
        let value: i64 = self.try_get(column).ctx(context)?;
        u32::try_from(value).map_err(|_| {
            StoreError::OutOfRange(deploylite_model::OutOfRange {
                what: "count",
                value,
            })
        })
    }

    fn text<T: From<String>>(&self, column: &str, context: &'static str) -> Result<T> {
        self.try_get::<String, _>(column).ctx(context).map(T::from)
    }
}

/// Ids a query returned (`RETURNING id`, `SELECT id`) as runs' ids.
pub(crate) fn run_ids(ids: Vec<i64>) -> Vec<RunId> {
    ids.into_iter().map(RunId::from).collect()
}

pub(crate) trait DbContext<T> {
    fn ctx(self, context: &'static str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, sqlx::Error> {
    fn ctx(self, context: &'static str) -> Result<T> {
        self.map_err(|source| StoreError::Db { context, source })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// How hard SQLite works to keep a commit: `Full` survives power loss, `Normal` (WAL) survives
/// a crash or `kill -9` of the daemon but may lose the last commits on power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    #[default]
    Full,
    Normal,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// Read-only connections for what the API and the status page read. On SQLite the
    /// writer's one connection would otherwise serialise every page view behind the others
    /// and behind the scheduler's ticks (WAL lets readers run beside the writer, each on the
    /// last committed state); on PostgreSQL (and in-memory SQLite) it is the same pool.
    reads: AnyPool,
    dialect: Dialect,
}

impl Store {
    /// Opens (creating if needed) the database at `url` and applies pending migrations.
    pub async fn connect(url: &str, sqlite_sync: SqliteSync) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let connect_error = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        let mut options = AnyConnectOptions::from_str(url).map_err(connect_error)?;
        options = options.disable_statement_logging();
        let pool = match dialect {
            Dialect::Sqlite => {
                if let Some(parent) =
                    sqlite_path(url).and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
                {
                    if !parent.as_os_str().is_empty() {
                        let _ = tokio::fs::create_dir_all(&parent).await;
                    }
                }
                let sync = match sqlite_sync {
                    SqliteSync::Full => "FULL",
                    SqliteSync::Normal => "NORMAL",
                };
                // One connection: SQLite has one writer anyway, and a single connection can
                // never hit SQLITE_BUSY on a read-to-write upgrade between our own tasks.
                AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                format!(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; \
                                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;"
                                )
                                .as_str(),
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(with_create_mode(options, url).map_err(connect_error)?)
                    .await
                    .map_err(connect_error)?
            }
            Dialect::Postgres => AnyPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .map_err(connect_error)?,
        };
        let mut store = Store {
            reads: pool.clone(),
            pool,
            dialect,
        };
        migrate::run(&store).await?;
        if let (Dialect::Sqlite, Some(path)) = (dialect, sqlite_path(url)) {
            let read_only = AnyConnectOptions::from_str(&format!("sqlite://{path}?mode=ro"))
                .map_err(connect_error)?
                .disable_statement_logging();
            // Two: the machine this is measured on has two cores, and every connection keeps
            // its own page cache (1 MiB here) in the daemon's memory.
            store.reads = AnyPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA busy_timeout = 10000; PRAGMA query_only = ON; \
                             PRAGMA cache_size = -1024;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect_with(read_only)
                .await
                .map_err(connect_error)?;
        }
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// For reads that only show state (the API, the status page): never inside a write.
    pub(crate) fn reads(&self) -> &AnyPool {
        &self.reads
    }

    pub async fn close(&self) {
        self.reads.close().await;
        self.pool.close().await;
    }
}

/// `sqlite://PATH` without `?mode=` would refuse to create a missing file.
fn with_create_mode(
    options: AnyConnectOptions,
    url: &str,
) -> std::result::Result<AnyConnectOptions, sqlx::Error> {
    if url.contains("mode=") || url.contains(":memory:") {
        return Ok(options);
    }
    let joined = if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    };
    AnyConnectOptions::from_str(&joined).map(|o| o.disable_statement_logging())
}

fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// The URL without its password, for error messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
