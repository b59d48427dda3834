//! One daemon per database. Until several replicas can share one database, a daemon on
//! PostgreSQL holds a session-level advisory lock on a connection of its own for its whole
//! life, so that a second daemon (another machine, another data dir, the same database) refuses
//! to start instead of running every stage a second time. SQLite needs none: its file lives in
//! the data dir, whose `flock` the binary takes.

use sqlx::{AnyConnection, Connection, Row};

use super::{redact, DbContext, Result, StoreError};

/// The advisory lock's key, in the two-int4 form (pg_locks shows it as classid, objid with
/// objsubid 2). Advisory locks are per database, so other databases on the server are unaffected.
const LOCK_SQL: &str = "SELECT CASE WHEN pg_try_advisory_lock(1145852997, 1) THEN 1 ELSE 0 END";
const HOLDER_SQL: &str = "SELECT a.pid::BIGINT AS pid, COALESCE(a.application_name, '') AS app, \
        COALESCE(host(a.client_addr), '') AS client \
     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted \
       AND l.classid = 1145852997 AND l.objid = 1 AND l.objsubid = 2 \
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// The database lock of a daemon on PostgreSQL, held while this value lives.
pub struct DatabaseLock {
    url: String,
    application_name: String,
    connection: AnyConnection,
}

impl std::fmt::Debug for DatabaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseLock")
            .field("url", &redact(&self.url))
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl DatabaseLock {
    /// Takes the lock without waiting when `url` is a PostgreSQL database (None for SQLite).
    /// `application_name` names this daemon to whoever finds the lock taken (host and PID).
    /// Err([`StoreError::DatabaseLocked`]) names the holder as far as PostgreSQL can tell.
    pub async fn acquire(url: &str, application_name: &str) -> Result<Option<DatabaseLock>> {
        if !(url.starts_with("postgres:") || url.starts_with("postgresql:")) {
            return Ok(None);
        }
        let connection = take(url, application_name).await?;
        Ok(Some(DatabaseLock {
            url: url.to_string(),
            application_name: application_name.to_string(),
            connection,
        }))
    }

    /// Checks that the lock's session is alive. When the connection was lost (the server
    /// restarted, the network cut), PostgreSQL released the lock: it is taken again, and if
    /// another daemon took it meanwhile the answer is [`StoreError::DatabaseLocked`].
    pub async fn check(&mut self) -> Result<()> {
        if self.connection.ping().await.is_ok() {
            return Ok(());
        }
        tracing::warn!(database = %redact(&self.url), "the database lock's connection was lost: taking the lock again");
        self.connection = take(&self.url, &self.application_name).await?;
        Ok(())
    }

    /// Releases the lock (closing the session releases it too).
    pub async fn release(self) {
        let _ = self.connection.close().await;
    }
}

async fn take(url: &str, application_name: &str) -> Result<AnyConnection> {
    sqlx::any::install_default_drivers();
    let mut connection =
        AnyConnection::connect(url)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact(url),
                source,
            })?;
    sqlx::query("SELECT set_config('application_name', $1, false)")
        .bind(application_name)
        .fetch_one(&mut connection)
        .await
        .ctx("naming the database lock's session")?;
    let got: i32 = sqlx::query(LOCK_SQL)
        .fetch_one(&mut connection)
        .await
        .ctx("taking the database lock")?
        .try_get(0)
        .ctx("reading the database lock's answer")?;
    if got == 1 {
        return Ok(connection);
    }
    let holder = holder(&mut connection).await;
    let _ = connection.close().await;
    Err(StoreError::DatabaseLocked {
        url: redact(url),
        holder,
    })
}

/// Who holds the lock, from pg_stat_activity: what its session calls itself, where it connects
/// from, its backend PID. Best effort: a role without pg_read_all_stats sees less.
async fn holder(connection: &mut AnyConnection) -> String {
    let row = match sqlx::query(HOLDER_SQL)
        .fetch_optional(&mut *connection)
        .await
    {
        Ok(Some(row)) => row,
        Ok(None) => return "a session that has just ended".to_string(),
        Err(error) => return format!("unknown: cannot read pg_stat_activity ({error})"),
    };
    let pid: i64 = row.try_get("pid").unwrap_or_default();
    let app: String = row.try_get("app").unwrap_or_default();
    let client: String = row.try_get("client").unwrap_or_default();
    let mut parts = Vec::new();
    if !app.is_empty() {
        parts.push(app);
    }
    parts.push(if client.is_empty() {
        "connected through a local socket".to_string()
    } else {
        format!("connected from {client}")
    });
    parts.push(format!("backend PID {pid}"));
    parts.join(", ")
}
