//! The store suites' harness: each test runs once on a fresh SQLite file and once on a fresh
//! PostgreSQL database (mandatory under CI, skipped with a message elsewhere).

use deploylite_reconciler::store::{SqliteSync, Store};

/// A fresh store, its URL, and the directory holding it when it is SQLite.
// Each suite reads what it needs of it: the store suite also reopens the URL.
#[allow(dead_code)]
pub struct Db {
    pub store: Store,
    pub url: String,
    dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> Option<Db> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Store::connect(&url, SqliteSync::Normal)
        .await
        .expect("sqlite store");
    Some(Db {
        store,
        url,
        dir: Some(dir),
    })
}

/// `suite` names the tests in the message shown when no PostgreSQL server can be had.
pub async fn postgres(suite: &str) -> Option<Db> {
    let url = deploylite_testkit::postgres_database(suite).await?;
    let store = Store::connect(&url, SqliteSync::Normal)
        .await
        .expect("postgres store");
    Some(Db {
        store,
        url,
        dir: None,
    })
}

/// `conformance!("the … suite"; test_a, test_b)` makes `on_sqlite::test_a`,
/// `on_postgres::test_a`, … calling `test_a(&store)`; with `with_url;` before the names, the
/// tests get `(&store, &url)`.
#[macro_export]
macro_rules! conformance {
    ($suite:literal; with_url; $($name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[tokio::test] async fn $name() { if let Some(db) = $crate::support::sqlite().await { super::$name(&db.store, &db.url).await } } )*
        }
        mod on_postgres {
            $( #[tokio::test] async fn $name() { if let Some(db) = $crate::support::postgres($suite).await { super::$name(&db.store, &db.url).await } } )*
        }
    };
    ($suite:literal; $($name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[tokio::test] async fn $name() { if let Some(db) = $crate::support::sqlite().await { super::$name(&db.store).await } } )*
        }
        mod on_postgres {
            $( #[tokio::test] async fn $name() { if let Some(db) = $crate::support::postgres($suite).await { super::$name(&db.store).await } } )*
        }
    };
}
