//! The repository suite: every test runs once on SQLite (a temporary file
//! with the real migrations) and once on PostgreSQL (a fresh database on the
//! server the test command started).

mod builds;
mod consumers;
mod deployments;
mod events;
mod rollout_counts;
mod rollouts;
mod tokens;
mod unknown_states;
mod verify;

use tug_db::Db;

/// A database and whatever keeps it alive.
pub struct TestDb {
    pub db: Db,
    /// Where it is, for tests that write behind the repository's back.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/tug.db", dir.path().display());
    TestDb {
        db: Db::connect(&url).await.unwrap(),
        url,
        _dir: Some(dir),
    }
}

pub async fn postgres() -> TestDb {
    let url = tug_testkit::postgres_database().await;
    TestDb {
        db: Db::connect(&url).await.unwrap(),
        url,
        _dir: None,
    }
}

/// Runs one change (`$body`, using the transaction `$tx`) in its own
/// transaction, committed with no events when it succeeds.
#[macro_export]
macro_rules! in_tx {
    ($db:expr, |$tx:ident| $body:expr) => {{
        let mut $tx = $db.begin().await.unwrap();
        let out = $body;
        if out.is_ok() {
            $tx.commit(&[]).await.unwrap();
        }
        out
    }};
}

/// Defines `$name::sqlite` and `$name::postgres` running the same body.
#[macro_export]
macro_rules! db_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let t = $crate::sqlite().await;
                ($body)(t.db.clone()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let t = $crate::postgres().await;
                ($body)(t.db.clone()).await;
            }
        }
    };
}
