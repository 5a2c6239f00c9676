//! The event log: an append-only, hash-chained table of changes, written in
//! the same transaction as the change each event describes, and read by id
//! so watchers and consumers on any server see every event once and in
//! order.
//!
//! Every change goes through a [`Tx`]; [`Tx::commit`] appends the events
//! that describe it as the transaction's last statements and commits, so a
//! change and its events commit together or not at all.
//!
//! Ids and hashes are assigned in commit order. The `event_log_head` row
//! holds the newest id and hash; appending begins by bumping its id
//! (`UPDATE … SET id = id + n … RETURNING`), which takes that row's lock
//! (PostgreSQL) or the database's write lock (SQLite) until the commit. So
//! a transaction that appends after another one gets the higher ids and
//! commits after it, and on PostgreSQL the first is visible before the lock
//! passes to the second: a reader asking for "everything after id N" can
//! never see an id while a lower one is still to come, and ids have no
//! gaps. Appending is the last thing a transaction does, so the lock is
//! held for a few statements.
//!
//! Each row names the build it is about (if any) in its own column, so that
//! reading can decide what each reader may see without parsing the event.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;
use tug_core::{audit, BuildId, Digest, ServiceName};

use crate::{millis, opt_parse, Db, Dialect, Error, Result};

/// An event to append: its canonical JSON and the columns readers filter on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub at: DateTime<Utc>,
    /// `build.created`, `deployment`, `approval.requested`, …
    pub kind: String,
    pub service: Option<ServiceName>,
    /// The build the event is about.
    pub build: Option<BuildId>,
    /// The name of the token that made the change.
    pub actor: Option<String>,
    /// The event's canonical JSON: what the chain hashes.
    pub payload: String,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub service: Option<ServiceName>,
    /// The build the event is about.
    pub build: Option<BuildId>,
    pub actor: Option<String>,
    /// The event's canonical JSON.
    pub payload: String,
    /// The hash of the event before it (`None`: never chained).
    pub prev_hash: Option<Digest>,
    pub hash: Option<Digest>,
}

impl EventRow {
    /// The row as the chain sees it.
    pub fn chained(&self) -> audit::Stored<'_> {
        audit::Stored {
            id: self.id,
            prev: self.prev_hash,
            hash: self.hash,
            body: &self.payload,
        }
    }
}

/// The log's head: the newest event and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub id: i64,
    /// `None` while events recorded before the chain existed wait to be
    /// chained (see [`Db::unchained_events`]).
    pub hash: Option<Digest>,
    /// Events up to this id were recorded before the log was chained.
    pub unchained_until: i64,
}

const COLUMNS: &str = "id, at, kind, service, build_id, actor, payload, prev_hash, hash";

/// Rows per multi-row INSERT (9 parameters each): well under both
/// dialects' limits.
const INSERT_CHUNK: usize = 100;

fn event_from_row(r: &AnyRow) -> Result<EventRow> {
    Ok(EventRow {
        id: r.try_get("id")?,
        at: millis(r.try_get("at")?)?,
        kind: r.try_get("kind")?,
        service: opt_parse(r.try_get("service")?, ServiceName::parse)?,
        build: opt_parse(r.try_get("build_id")?, BuildId::parse)?,
        actor: r.try_get("actor")?,
        payload: r.try_get("payload")?,
        prev_hash: opt_parse(r.try_get("prev_hash")?, Digest::parse)?,
        hash: opt_parse(r.try_get("hash")?, Digest::parse)?,
    })
}

/// A write transaction: the changes made through it commit together with
/// the events that describe them ([`Tx::commit`]). Dropped without a
/// commit, it rolls back.
///
/// Every method that changes something starts with a write, so that SQLite
/// takes its write lock at the transaction's first statement instead of
/// failing to upgrade a read lock later.
pub struct Tx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    pub(crate) dialect: Dialect,
}

impl Db {
    /// Begins a write transaction.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(Tx {
            tx: self.pool.begin().await?,
            dialect: self.dialect,
        })
    }

    /// Records events that describe no other change (a rollback that could
    /// not be made, say). Returns the id of the last.
    pub async fn record(&self, events: &[NewEvent]) -> Result<Option<i64>> {
        self.begin().await?.commit(events).await
    }
}

impl Tx {
    /// The transaction's connection.
    pub(crate) fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }

    /// Appends `events` (in order) as the transaction's last statements,
    /// then commits: the changes and their events are stored together or
    /// not at all. Returns the id of the last event appended.
    pub async fn commit(mut self, events: &[NewEvent]) -> Result<Option<i64>> {
        let last = append(self.conn(), events).await?;
        self.tx.commit().await?;
        Ok(last)
    }
}

/// Appends events under the head's lock; see the module's documentation.
async fn append(conn: &mut sqlx::AnyConnection, events: &[NewEvent]) -> Result<Option<i64>> {
    if events.is_empty() {
        return Ok(None);
    }
    let n = i64::try_from(events.len()).map_err(|e| Error::Corrupt(e.to_string()))?;
    let head = sqlx::query("UPDATE event_log_head SET id = id + $1 WHERE one = 1 RETURNING id, hash")
        .bind(n)
        .fetch_one(&mut *conn)
        .await?;
    let last: i64 = head.try_get("id")?;
    let Some(mut prev) = opt_parse(head.try_get("hash")?, Digest::parse)? else {
        return Err(Error::Conflict(
            "the event log is being upgraded (the events recorded before its hash chain are being chained); try again in a moment"
                .into(),
        ));
    };
    let first = last - n + 1;
    for (c, chunk) in events.chunks(INSERT_CHUNK).enumerate() {
        let mut sql = format!("INSERT INTO events ({COLUMNS}) VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            let marks: Vec<String> = (1..=9).map(|k| format!("${}", i * 9 + k)).collect();
            sql.push_str(&format!("({})", marks.join(", ")));
        }
        let mut q = sqlx::query(&sql);
        for (i, e) in chunk.iter().enumerate() {
            let id = first + i64::try_from(c * INSERT_CHUNK + i).map_err(|e| Error::Corrupt(e.to_string()))?;
            let hash = audit::link(&prev, id, &e.payload);
            q = q
                .bind(id)
                .bind(e.at.timestamp_millis())
                .bind(e.kind.clone())
                .bind(e.service.as_ref().map(|s| s.to_string()))
                .bind(e.build.as_ref().map(|b| b.to_string()))
                .bind(e.actor.clone())
                .bind(e.payload.clone())
                .bind(prev.to_string())
                .bind(hash.to_string());
            prev = hash;
        }
        q.execute(&mut *conn).await?;
    }
    sqlx::query("UPDATE event_log_head SET hash = $1 WHERE one = 1")
        .bind(prev.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(Some(last))
}

impl Db {
    /// Events after `after`, oldest first, at most `limit`: every event
    /// committed after `after`, none skipped (see the module's
    /// documentation), so a reader that asks again after the last id it
    /// got misses nothing.
    pub async fn events_after(&self, after: i64, service: Option<&ServiceName>, limit: u32) -> Result<Vec<EventRow>> {
        self.events_where(after, None, service, limit).await
    }

    /// Events after `after` recorded at or after `since` (when given), of
    /// `service` (when given), oldest first, at most `limit`.
    pub async fn events_where(
        &self,
        after: i64,
        since: Option<DateTime<Utc>>,
        service: Option<&ServiceName>,
        limit: u32,
    ) -> Result<Vec<EventRow>> {
        let mut sql = format!("SELECT {COLUMNS} FROM events WHERE id > $1");
        let mut n = 1;
        if since.is_some() {
            n += 1;
            sql.push_str(&format!(" AND at >= ${n}"));
        }
        if service.is_some() {
            n += 1;
            sql.push_str(&format!(" AND service = ${n}"));
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {}", limit.max(1)));
        let mut q = sqlx::query(&sql).bind(after);
        if let Some(t) = since {
            q = q.bind(t.timestamp_millis());
        }
        if let Some(s) = service {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The id of the newest event (0 when there is none).
    pub async fn last_event_id(&self) -> Result<i64> {
        Ok(self.event_head().await?.id)
    }

    /// The log's head.
    pub async fn event_head(&self) -> Result<Head> {
        let row = sqlx::query("SELECT id, hash, unchained_until FROM event_log_head WHERE one = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(Head {
            id: row.try_get("id")?,
            hash: opt_parse(row.try_get("hash")?, Digest::parse)?,
            unchained_until: row.try_get("unchained_until")?,
        })
    }
}

/// Chaining the events recorded before the log had a hash chain (the
/// migration that introduced it recorded up to which id they go): each is
/// rewritten once, in the log's current schema, and given its hashes.
impl Db {
    /// Begins chaining the old events: takes the head's lock (appends wait
    /// until [`Chaining::finish`] commits) and says whether anything is
    /// left to chain (`None`: nothing, the lock is released).
    pub async fn begin_chaining(&self) -> Result<Option<Chaining>> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "UPDATE event_log_head SET unchained_until = unchained_until WHERE one = 1 \
             RETURNING id, hash, unchained_until",
        )
        .fetch_one(tx.conn())
        .await?;
        let hash: Option<String> = row.try_get("hash")?;
        if hash.is_some() {
            return Ok(None);
        }
        Ok(Some(Chaining {
            tx,
            until: row.try_get("unchained_until")?,
            last: 0,
            prev: audit::genesis(),
        }))
    }
}

/// The chaining of old events under way (see [`Db::begin_chaining`]).
pub struct Chaining {
    tx: Tx,
    until: i64,
    /// The last event chained.
    last: i64,
    prev: Digest,
}

impl Chaining {
    /// The next old events to chain, oldest first, at most `limit`.
    pub async fn next(&mut self, limit: u32) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE id > $1 AND id <= $2 ORDER BY id LIMIT {}",
            limit.max(1)
        ))
        .bind(self.last)
        .bind(self.until)
        .fetch_all(self.tx.conn())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Replaces old event `id` by `event` (its rewrite in the current
    /// schema) and chains it after the last one.
    pub async fn rewrite(&mut self, id: i64, event: &NewEvent) -> Result<()> {
        let hash = audit::link(&self.prev, id, &event.payload);
        sqlx::query(
            "UPDATE events SET at = $1, kind = $2, service = $3, build_id = $4, actor = $5, payload = $6, \
             prev_hash = $7, hash = $8 WHERE id = $9",
        )
        .bind(event.at.timestamp_millis())
        .bind(event.kind.clone())
        .bind(event.service.as_ref().map(|s| s.to_string()))
        .bind(event.build.as_ref().map(|b| b.to_string()))
        .bind(event.actor.clone())
        .bind(event.payload.clone())
        .bind(self.prev.to_string())
        .bind(hash.to_string())
        .bind(id)
        .execute(self.tx.conn())
        .await?;
        self.last = id;
        self.prev = hash;
        Ok(())
    }

    /// The builds named by id, for rewriting events that name them.
    pub async fn builds(&mut self, ids: &[BuildId]) -> Result<Vec<crate::BuildRow>> {
        crate::builds::builds_by_id(self.tx.conn(), ids).await
    }

    /// Every token, for naming the actors of old events.
    pub async fn tokens(&mut self) -> Result<Vec<crate::TokenRow>> {
        crate::tokens::all_tokens(self.tx.conn()).await
    }

    /// Makes the last event chained the head and commits: appends may go on.
    pub async fn finish(mut self) -> Result<()> {
        sqlx::query("UPDATE event_log_head SET hash = $1 WHERE one = 1")
            .bind(self.prev.to_string())
            .execute(self.tx.conn())
            .await?;
        self.tx.commit(&[]).await?;
        Ok(())
    }
}
