//! Embedded migrations, applied in order, each in its own transaction. We keep our own small
//! ledger instead of sqlx's `migrate!` so that the binary needs no build-time database and the
//! two dialects carry separate SQL under one version number.

use sqlx::Executor;

use super::{now_ms, DbContext, Dialect, Result, Store, StoreError};

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "core",
        sqlite: include_str!("../../../migrations/sqlite/0001_core.sql"),
        postgres: include_str!("../../../migrations/postgres/0001_core.sql"),
    },
    Migration {
        version: 2,
        name: "forges",
        sqlite: include_str!("../../../migrations/sqlite/0002_forges.sql"),
        postgres: include_str!("../../../migrations/postgres/0002_forges.sql"),
    },
    Migration {
        version: 3,
        name: "runners",
        sqlite: include_str!("../../../migrations/sqlite/0003_runners.sql"),
        postgres: include_str!("../../../migrations/postgres/0003_runners.sql"),
    },
    Migration {
        version: 4,
        name: "replay",
        sqlite: include_str!("../../../migrations/sqlite/0004_replay.sql"),
        postgres: include_str!("../../../migrations/postgres/0004_replay.sql"),
    },
    Migration {
        version: 5,
        name: "auth",
        sqlite: include_str!("../../../migrations/sqlite/0005_auth.sql"),
        postgres: include_str!("../../../migrations/postgres/0005_auth.sql"),
    },
    Migration {
        version: 6,
        name: "tag_baselines",
        sqlite: include_str!("../../../migrations/sqlite/0006_tag_baselines.sql"),
        postgres: include_str!("../../../migrations/postgres/0006_tag_baselines.sql"),
    },
    Migration {
        version: 7,
        name: "run_errors",
        sqlite: include_str!("../../../migrations/sqlite/0007_run_errors.sql"),
        postgres: include_str!("../../../migrations/postgres/0007_run_errors.sql"),
    },
    Migration {
        version: 8,
        name: "run_policy",
        sqlite: include_str!("../../../migrations/sqlite/0008_run_policy.sql"),
        postgres: include_str!("../../../migrations/postgres/0008_run_policy.sql"),
    },
    Migration {
        version: 9,
        name: "environments",
        sqlite: include_str!("../../../migrations/sqlite/0009_environments.sql"),
        postgres: include_str!("../../../migrations/postgres/0009_environments.sql"),
    },
    Migration {
        version: 10,
        name: "deployment_reports",
        sqlite: include_str!("../../../migrations/sqlite/0010_deployment_reports.sql"),
        postgres: include_str!("../../../migrations/postgres/0010_deployment_reports.sql"),
    },
    Migration {
        version: 11,
        name: "secrets",
        sqlite: include_str!("../../../migrations/sqlite/0011_secrets.sql"),
        postgres: include_str!("../../../migrations/postgres/0011_secrets.sql"),
    },
];

pub(super) async fn run(store: &Store) -> Result<()> {
    store
        .pool()
        .execute(
            "CREATE TABLE IF NOT EXISTS deploylite_migrations (
                 version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .await
        .ctx("creating the migrations ledger")?;
    for migration in MIGRATIONS {
        let mut tx = store.pool().begin().await.ctx("starting a migration")?;
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT version FROM deploylite_migrations WHERE version = $1")
                .bind(migration.version)
                .fetch_optional(&mut *tx)
                .await
                .ctx("reading the migrations ledger")?;
        if applied.is_some() {
            continue;
        }
        let sql = match store.dialect() {
            Dialect::Sqlite => migration.sqlite,
            Dialect::Postgres => migration.postgres,
        };
        let failed = |source| StoreError::Migration {
            version: migration.version,
            name: migration.name,
            source,
        };
        sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(failed)?;
        sqlx::query(
            "INSERT INTO deploylite_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(migration.version)
        .bind(migration.name)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
    }
    Ok(())
}
