//! Test databases: every test gets its own. SQLite is a file in a
//! temporary directory; PostgreSQL is a fresh database (random name) on the
//! server at `SLIPWAY_TEST_POSTGRES_URL`, dropped when the [`TestDb`] is.
//!
//! Without that variable the PostgreSQL variants skip with a message,
//! unless `SLIPWAY_LAB_TESTS=1` (the test command), where they fail.
//! `SLIPWAY_TEST_API_DB=postgres` makes the route tests' `app()` use
//! PostgreSQL too (the default stays SQLite so the suite's time does not
//! double).

use std::str::FromStr;

use sqlx::{ConnectOptions, Connection};

/// A database for one test. Holds what must outlive the store: the SQLite
/// file's directory, or the PostgreSQL database to drop.
pub struct TestDb {
    url: String,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

pub const POSTGRES_URL_VAR: &str = "SLIPWAY_TEST_POSTGRES_URL";

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        TestDb { url, _dir: Some(dir), postgres: None }
    }

    /// A fresh PostgreSQL database, or `None` (skip) when no server is
    /// configured outside the test command.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let Ok(admin) = std::env::var(POSTGRES_URL_VAR) else {
            if std::env::var("SLIPWAY_LAB_TESTS").as_deref() == Ok("1") {
                panic!("{test}: {POSTGRES_URL_VAR} is not set (scripts/test.sh starts a PostgreSQL and sets it)");
            }
            eprintln!("{test}: skipped, {POSTGRES_URL_VAR} is not set");
            return None;
        };
        let name = format!("slipway_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connecting to the test PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("CREATE DATABASE");
        conn.close().await.ok();
        let url = sqlx::postgres::PgConnectOptions::from_str(&admin)
            .expect("a PostgreSQL URL")
            .database(&name)
            .to_url_lossy()
            .to_string();
        Some(TestDb { url, _dir: None, postgres: Some((admin, name)) })
    }

    /// A database of the kind `SLIPWAY_TEST_API_DB` names (`postgres` or,
    /// by default, `sqlite`).
    pub async fn from_env(test: &str) -> TestDb {
        if std::env::var("SLIPWAY_TEST_API_DB").as_deref() == Ok("postgres") {
            return TestDb::postgres(test).await.unwrap_or_else(|| panic!("{test}: {POSTGRES_URL_VAR} is not set"));
        }
        TestDb::sqlite()
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else { return };
        // Drop runs inside the test's runtime: drop the database from a
        // thread with its own. FORCE ends the store's pooled connections.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await.ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: a test database was not dropped");
        }
    }
}

/// Runs each named `async fn NAME(store: Store)` twice: `NAME::sqlite` on
/// a fresh SQLite file and `NAME::postgres` on a fresh PostgreSQL database.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use $crate::test_db::TestDb;
            use $crate::Store;

            #[tokio::test]
            async fn sqlite() {
                let db = TestDb::sqlite();
                super::$name(Store::connect(db.url()).await.expect("opening SQLite")).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(db) = TestDb::postgres(concat!(stringify!($name), "::postgres")).await else { return };
                super::$name(Store::connect(db.url()).await.expect("opening PostgreSQL")).await;
            }
        }
    )*};
}
pub use crate::on_both_databases;
