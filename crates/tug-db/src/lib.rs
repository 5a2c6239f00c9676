//! Tugboat's metadata repository: services, tokens, builds and artifacts in
//! SQLite or PostgreSQL.
//!
//! One implementation serves both dialects through sqlx's `Any` driver: the
//! queries use `$n` placeholders and types both databases share (text and
//! 64-bit integers), and each dialect has its own migration directory. State
//! changes that must not race (adding artifacts to a draft while it is
//! sealed) begin by updating the build's row, which takes the row lock in
//! PostgreSQL and the write lock in SQLite, so they serialize in the
//! database and hold across several server processes. Changes that events
//! describe are made through a [`Tx`], which commits them with their events:
//! the event log is written in the same transaction as the change.
//!
//! This crate knows nothing about HTTP or blob storage.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use tug_core::{
    ArtifactKind, ArtifactName, ArtifactSpec, BuildId, BuildState, DerivedFrom, Digest, Platform, ReferenceUri,
    ServiceName, TokenName,
};

mod agents;
mod builds;
mod catalog;
mod channels;
mod consumers;
mod debs;
mod deployments;
mod events;
mod gitops;
mod observed;
mod oci;
mod rollouts;
mod tokens;
mod verify;
mod webhooks;

pub use agents::{AgentRow, ExitRow};
pub use builds::{BuildAccessRow, BuildFilter, BuildRow, NewBuild};
pub use catalog::{PublishedRow, CHANGELOG_ROWS};
pub use channels::ChannelStampRow;
pub use consumers::{ConsumerLease, ConsumerRow};
pub use debs::{DebArtifact, DebRow};
pub use deployments::{CreatedRequest, DeploymentRow, EnvState, NewDeployment, PipelineRow, RequestRow};
pub use events::{Chaining, EventRow, Head, NewEvent, Tx};
pub use gitops::{GitDeliveryOutcome, GitDeliveryRow, NewGitDelivery};
pub use observed::{AgentTally, RolloutTally};
pub use oci::{BuildImage, ManifestPlacement, OciManifestRow};
pub use rollouts::{RolloutCounts, RolloutLock, RolloutRow, SoakClock};
pub use tokens::{NewToken, Revocation, TokenRow};
pub use verify::{GateRow, GateSample};
pub use webhooks::{DeliveryRow, WebhookRow};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("build {0} does not exist")]
    BuildNotFound(BuildId),
    #[error("build {id} is {state}, not a draft")]
    NotDraft { id: BuildId, state: BuildState },
    #[error("build {id} already has an artifact named {name} with other content ({existing})")]
    DuplicateArtifact {
        id: BuildId,
        name: ArtifactName,
        existing: Digest,
    },
    #[error("an active token named {0} already exists")]
    TokenNameTaken(TokenName),
    #[error("service {0} does not exist")]
    ServiceNotFound(ServiceName),
    #[error("{0}")]
    Conflict(String),
    #[error("deployment request {0} is no longer pending")]
    RequestNotPending(String),
    #[error("stored row is not valid: {0}")]
    Corrupt(String),
}

impl Error {
    /// Whether the database could not be reached (no connection to be had
    /// in time, the pool closed, the connection broke) rather than refused
    /// or failed the statement: a retry later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Sqlx(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_))
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Creates the file of a new SQLite database readable and writable by its
/// owner only (mode 0600), before SQLite opens it: SQLite would create it
/// with mode 0644 less the umask, and it gives the `-wal` and `-shm` files
/// it creates beside the database the database file's mode. An existing
/// file is left as it is; an in-memory database, or one SQLite must not
/// create (`mode=ro`, `mode=rw`), is not touched.
fn create_private_sqlite_file(url: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let path = options.get_filename();
    let creates = url.contains("mode=rwc");
    if !creates || path.as_os_str().is_empty() || path.to_string_lossy().starts_with("file:sqlx-in-memory") {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // A missing directory and the like: SQLite says it in its own words.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(sqlx::Error::Io(e).into()),
    }
}

/// The repository. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    dialect: Dialect,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Db {
    /// Connects and brings the schema up to date. `sqlite://PATH` creates
    /// the file if needed; `postgres://…` must name an existing database.
    /// Migrations take a database lock, so several servers may start at once.
    pub async fn connect(url: &str) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            return Err(Error::UnsupportedUrl(redact(url)));
        };
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        let pool = match dialect {
            Dialect::Sqlite => {
                let url = if url.contains('?') {
                    url.to_string()
                } else {
                    format!("{url}?mode=rwc")
                };
                create_private_sqlite_file(&url)?;
                options
                    .max_connections(8)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets readers run beside the one writer; a
                            // writer waits for the lock instead of failing.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout = 15000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Dialect::Postgres => options.max_connections(16).connect(url).await?,
        };
        match dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Db { pool, dialect })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- services ----

    pub async fn service_exists(&self, name: &ServiceName) -> Result<bool> {
        let row = sqlx::query("SELECT name FROM services WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Every service with its creation time, by name.
    pub async fn list_services(&self) -> Result<Vec<(ServiceName, DateTime<Utc>)>> {
        let rows = sqlx::query("SELECT name, created_at FROM services ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse(&r.try_get::<String, _>("name")?, ServiceName::parse)?,
                    millis(r.try_get("created_at")?)?,
                ))
            })
            .collect()
    }
}

impl Tx {
    /// Creates a service; `false` if it already existed.
    pub async fn create_service(&mut self, name: &ServiceName, now: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query("INSERT INTO services (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name.as_str())
            .bind(now.timestamp_millis())
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.chars().take(100).collect(),
    }
}

pub(crate) fn millis(ms: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| Error::Corrupt(format!("timestamp {ms} out of range")))
}

pub(crate) fn opt_millis(ms: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    ms.map(millis).transpose()
}

/// Parses a stored value with the type's own validation; a failure means
/// the row was written by something other than Tugboat.
pub(crate) fn parse<T, E: std::fmt::Display>(s: &str, f: impl FnOnce(&str) -> Result<T, E>) -> Result<T> {
    f(s).map_err(|e| Error::Corrupt(e.to_string()))
}

/// A state read from the database in its one text form; any other text was
/// not written by this server and is an error, never a default.
pub(crate) fn state<T>(s: &str, what: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    parse(s).ok_or_else(|| Error::Corrupt(format!("unknown {what} {s:?}")))
}

pub(crate) fn opt_parse<T, E: std::fmt::Display>(
    s: Option<String>,
    f: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>> {
    s.map(|s| parse(&s, f)).transpose()
}

/// The columns `artifact_from_row` reads.
pub(crate) const ARTIFACT_COLUMNS: &str = "name, kind, platform, size, digest, derived_from, executable, uri";

/// The condition (on the `artifacts` table) of an artifact with a blob in
/// the store: every artifact but a `reference`, whose digest names
/// something elsewhere. gc, fsck and blob reads look only at these.
pub(crate) const HAS_BLOB: &str = "uri IS NULL";

pub(crate) fn artifact_from_row(r: &AnyRow) -> Result<ArtifactSpec> {
    let derived: Vec<String> =
        serde_json::from_str(&r.try_get::<String, _>("derived_from")?).map_err(|e| Error::Corrupt(e.to_string()))?;
    Ok(ArtifactSpec {
        name: parse(&r.try_get::<String, _>("name")?, ArtifactName::parse)?,
        kind: parse(&r.try_get::<String, _>("kind")?, ArtifactKind::from_str)?,
        platform: opt_parse(r.try_get("platform")?, Platform::parse)?,
        size: u64::try_from(r.try_get::<i64, _>("size")?).map_err(|e| Error::Corrupt(e.to_string()))?,
        digest: parse(&r.try_get::<String, _>("digest")?, Digest::parse)?,
        derived_from: derived
            .iter()
            .map(|d| parse(d, DerivedFrom::parse))
            .collect::<Result<_>>()?,
        executable: r.try_get::<i64, _>("executable")? != 0,
        uri: opt_parse(r.try_get("uri")?, ReferenceUri::parse)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_timeout_is_unavailable_a_failed_statement_is_not() {
        assert!(Error::Sqlx(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!Error::Sqlx(sqlx::Error::RowNotFound).is_unavailable());
        assert!(!Error::Corrupt("x".into()).is_unavailable());
    }
}
