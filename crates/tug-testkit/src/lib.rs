//! Test fixtures for Tugboat: a fresh PostgreSQL database per test on the
//! server the test command started, a fresh S3 prefix per test on the
//! SeaweedFS it started, temporary directories, a connection to a
//! server's database behind its back, and a git server over HTTP (`git
//! http-backend`) that checks a token.
//!
//! The test command (`scripts/test`) starts PostgreSQL and SeaweedFS and
//! exports where they are in `TUG_TEST_*` variables. A test that needs one
//! and finds no variable fails with a message saying how to run the suite:
//! a missing component is never a silent skip.

use std::env;

mod git_http;
pub use git_http::GitHttpServer;

/// Panics with a clear message when the test command did not set `var`.
pub fn required_env(var: &str) -> String {
    env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run the suite with scripts/test, which starts PostgreSQL and SeaweedFS and exports TUG_TEST_* variables"
        )
    })
}

/// A short random lowercase suffix for database names and prefixes.
pub fn unique_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..12).map(|_| (b'a' + rng.gen_range(0..26)) as char).collect()
}

/// Where the test command's S3-compatible server is, with a fresh prefix
/// for this test so tests never see each other's blobs.
#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub prefix: String,
}

impl S3Env {
    /// The `--blob-store` address for this bucket and prefix.
    pub fn address(&self) -> String {
        format!(
            "s3://{}/{}?endpoint={}&region={}",
            self.bucket, self.prefix, self.endpoint, self.region
        )
    }
}

/// The S3 server the test command started (`TUG_TEST_S3_*`), with a new
/// prefix.
pub fn s3_env() -> S3Env {
    S3Env {
        endpoint: required_env("TUG_TEST_S3_ENDPOINT"),
        bucket: required_env("TUG_TEST_S3_BUCKET"),
        region: env::var("TUG_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
        access_key_id: required_env("TUG_TEST_S3_ACCESS_KEY"),
        secret_access_key: required_env("TUG_TEST_S3_SECRET_KEY"),
        prefix: format!("t-{}", unique_suffix()),
    }
}

/// Creates a fresh, empty database on the PostgreSQL server the test command
/// started (`TUG_TEST_POSTGRES_URL`) and returns its URL.
pub async fn postgres_database() -> String {
    use sqlx::Connection;
    let admin_url = required_env("TUG_TEST_POSTGRES_URL");
    let name = format!("tug_{}", unique_suffix());
    let mut conn = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to TUG_TEST_POSTGRES_URL {admin_url}: {e}"));
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    let mut url = url::Url::parse(&admin_url).expect("TUG_TEST_POSTGRES_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A connection to a server's database behind the server's back, for tests
/// that change rows without it (a lost event, a broken table) or watch
/// what it wrote (grants and reports) at single moments: each query is one
/// statement, so it reads one consistent state of the database.
pub struct BehindTheBack(sqlx::AnyConnection);

impl BehindTheBack {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`).
    pub async fn connect(url: &str) -> BehindTheBack {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let conn = sqlx::AnyConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        BehindTheBack(conn)
    }

    /// Whether this is PostgreSQL (else SQLite).
    pub fn is_postgres(&self) -> bool {
        self.0.backend_name().eq_ignore_ascii_case("postgresql")
    }

    /// Runs `sql`, one or more statements.
    pub async fn execute(&mut self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&mut self.0)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The integer columns of the one row `sql` returns.
    pub async fn integers(&mut self, sql: &str) -> Vec<i64> {
        use sqlx::Row;
        let row = sqlx::query(sql)
            .fetch_one(&mut self.0)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        (0..row.len())
            .map(|i| {
                row.try_get::<i64, _>(i)
                    .unwrap_or_else(|e| panic!("{sql}: column {i}: {e}"))
            })
            .collect()
    }

    /// The first column, text, of every row `sql` returns.
    pub async fn texts(&mut self, sql: &str) -> Vec<String> {
        use sqlx::Row;
        sqlx::query(sql)
            .fetch_all(&mut self.0)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.try_get::<String, _>(0).unwrap_or_else(|e| panic!("{sql}: {e}")))
            .collect()
    }
}
