//! Durable consumers of the event log: each has a cursor (the id of the
//! last event it handled durably) and a lease (which server runs it, and
//! until when), in one row of the `consumers` table.
//!
//! A server runs a consumer only while it holds the lease. Taking it
//! ([`Db::take_consumer_lease`]) succeeds when the row has no holder, its
//! lease has expired, or the taker already holds it, and bumps the row's
//! epoch: the pair (holder, epoch) names one tenure. Renewing the lease and
//! moving the cursor both check that pair, so a server whose lease was
//! taken over (it stalled past its expiry, say) can never move the cursor
//! again: that check is the fence that keeps one writer per consumer.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{Db, Result};

/// A lease a server holds on a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerLease {
    pub name: String,
    pub holder: String,
    /// Bumped at every taking: with the holder, names this tenure.
    pub epoch: i64,
    /// The id of the last event the consumer handled durably.
    pub cursor: i64,
}

/// A consumer as stored, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRow {
    pub name: String,
    pub cursor: i64,
    pub holder: Option<String>,
    pub lease_until: DateTime<Utc>,
    pub epoch: i64,
}

impl Db {
    /// Takes the lease of consumer `name` for `holder` until `until` when
    /// nobody holds it, its lease expired before `now`, or `holder` holds
    /// it already; with `create`, creates the consumer (cursor 0) on first
    /// use. `None`: another holder's lease still runs, or (without
    /// `create`) the consumer does not exist.
    pub async fn take_consumer_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        create: bool,
    ) -> Result<Option<ConsumerLease>> {
        if create {
            sqlx::query("INSERT INTO consumers (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .execute(&self.pool)
                .await?;
        }
        let row = sqlx::query(
            "UPDATE consumers SET holder = $1, lease_until = $2, epoch = epoch + 1 \
             WHERE name = $3 AND (holder IS NULL OR holder = $1 OR lease_until < $4) \
             RETURNING epoch, cursor",
        )
        .bind(holder)
        .bind(until.timestamp_millis())
        .bind(name)
        .bind(now.timestamp_millis())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ConsumerLease {
                name: name.to_string(),
                holder: holder.to_string(),
                epoch: r.try_get("epoch")?,
                cursor: r.try_get("cursor")?,
            })
        })
        .transpose()
    }

    /// Extends `lease` until `until`, and moves its consumer's cursor to
    /// `cursor` when given, if the lease is still this tenure's. `false`:
    /// the lease was taken over, and its holder must stop.
    pub async fn renew_consumer_lease(
        &self,
        lease: &ConsumerLease,
        cursor: Option<i64>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE consumers SET lease_until = $1, cursor = COALESCE($2, cursor) \
             WHERE name = $3 AND holder = $4 AND epoch = $5",
        )
        .bind(until.timestamp_millis())
        .bind(cursor)
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(lease.epoch)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives `lease` up (a server stopping), so another may take it at once.
    pub async fn release_consumer_lease(&self, lease: &ConsumerLease) -> Result<()> {
        sqlx::query(
            "UPDATE consumers SET holder = NULL, lease_until = 0 WHERE name = $1 AND holder = $2 AND epoch = $3",
        )
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(lease.epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether consumer `name` exists.
    pub async fn consumer_exists(&self, name: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 AS one FROM consumers WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The names of the consumers whose name starts with `prefix` (a
    /// family's owned consumers).
    pub async fn consumer_names(&self, prefix: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM consumers WHERE substr(name, 1, length($1)) = $1 ORDER BY name")
            .bind(prefix)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("name")?)).collect()
    }

    /// Every consumer, by name.
    pub async fn consumers(&self) -> Result<Vec<ConsumerRow>> {
        let rows = sqlx::query("SELECT name, cursor, holder, lease_until, epoch FROM consumers ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ConsumerRow {
                    name: r.try_get("name")?,
                    cursor: r.try_get("cursor")?,
                    holder: r.try_get("holder")?,
                    lease_until: crate::millis(r.try_get("lease_until")?)?,
                    epoch: r.try_get("epoch")?,
                })
            })
            .collect()
    }
}

impl crate::Tx {
    /// Creates consumer `name` with its cursor at the log's head, so it is
    /// fed the events committed from now on (this transaction's own
    /// included), unless it exists already. For consumers that something
    /// configured creates (a webhook, say), in the same transaction.
    pub async fn create_consumer(&mut self, name: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO consumers (name, cursor) SELECT $1, id FROM event_log_head WHERE one = 1 \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Removes consumer `name` (its owner was deleted): a server running
    /// it stops at its next renewal and never takes it again.
    pub async fn delete_consumer(&mut self, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM consumers WHERE name = $1")
            .bind(name)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}
