//! The event log: an append-only table of changes, read by id so watchers
//! on any server see every event once and in order. Each row names the
//! build it is about (if any) in its own column, so that reading can decide
//! what each reader may see without parsing the payload.

use chrono::{DateTime, Utc};
use sqlx::Row;
use tug_core::{BuildId, ServiceName};

use crate::{millis, opt_parse, Db, Result};

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent<'a> {
    pub at: DateTime<Utc>,
    /// `build.created`, `build.sealed`, `deployment`, `approval.requested`, …
    pub kind: &'a str,
    pub service: Option<&'a ServiceName>,
    /// The build the event is about.
    pub build: Option<&'a BuildId>,
    pub actor: Option<&'a str>,
    /// JSON describing the change.
    pub payload: &'a str,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `build.created`, `build.sealed`, `deployment`, `approval.requested`, …
    pub kind: String,
    pub service: Option<ServiceName>,
    /// The build the event is about.
    pub build: Option<BuildId>,
    pub actor: Option<String>,
    /// JSON describing the change.
    pub payload: String,
}

const COLUMNS: &str = "id, at, kind, service, build_id, actor, payload";

impl Db {
    pub async fn append_event(&self, e: &NewEvent<'_>) -> Result<()> {
        sqlx::query("INSERT INTO events (at, kind, service, build_id, actor, payload) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(e.at.timestamp_millis())
            .bind(e.kind)
            .bind(e.service.map(|s| s.to_string()))
            .bind(e.build.map(|b| b.to_string()))
            .bind(e.actor.map(str::to_string))
            .bind(e.payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Events after `after`, oldest first, at most `limit`.
    pub async fn events_after(&self, after: i64, service: Option<&ServiceName>, limit: u32) -> Result<Vec<EventRow>> {
        let sql = match service {
            Some(_) => format!(
                "SELECT {COLUMNS} FROM events WHERE id > $1 AND service = $2 ORDER BY id LIMIT {}",
                limit.max(1)
            ),
            None => format!(
                "SELECT {COLUMNS} FROM events WHERE id > $1 ORDER BY id LIMIT {}",
                limit.max(1)
            ),
        };
        let mut q = sqlx::query(&sql).bind(after);
        if let Some(s) = service {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    id: r.try_get("id")?,
                    at: millis(r.try_get("at")?)?,
                    kind: r.try_get("kind")?,
                    service: opt_parse(r.try_get("service")?, ServiceName::parse)?,
                    build: opt_parse(r.try_get("build_id")?, BuildId::parse)?,
                    actor: r.try_get("actor")?,
                    payload: r.try_get("payload")?,
                })
            })
            .collect()
    }

    /// The id of the newest event (0 when there is none).
    pub async fn last_event_id(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("id")?)
    }
}
