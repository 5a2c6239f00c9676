//! Webhooks and their deliveries. A webhook's row holds its endpoint, its
//! filters and the secret that signs what is sent; its durable consumer
//! (`tug_db::consumers`) is created and deleted in the same transaction as
//! the row, by the service. A delivery row records what became of one event
//! sent to one webhook: written once per page of events sent (delivered),
//! and at each failed attempt (pending, dead).

use sqlx::any::AnyRow;
use sqlx::Row;
use tug_core::webhook::{DeliveryState, WebhookKind};
use tug_core::ServiceName;

use crate::{millis, opt_millis, opt_parse, state, Db, Result, Tx};

pub use tug_core::webhook::{DeliveryRecord as DeliveryRow, WebhookRecord as WebhookRow};

const WEBHOOK_COLUMNS: &str = "id, url, kind, service, events, secret, created_at, created_by";
const DELIVERY_COLUMNS: &str = "id, webhook_id, event_id, state, attempts, last_status, last_error, \
     first_attempt_at, last_attempt_at, next_attempt_at, delivered_at";

fn webhook_from_row(r: &AnyRow) -> Result<WebhookRow> {
    Ok(WebhookRow {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        kind: state(&r.try_get::<String, _>("kind")?, "webhook kind", WebhookKind::parse)?,
        service: opt_parse(r.try_get("service")?, ServiceName::parse)?,
        events: r.try_get("events")?,
        secret: r.try_get("secret")?,
        created_at: millis(r.try_get("created_at")?)?,
        created_by: r.try_get("created_by")?,
    })
}

fn delivery_from_row(r: &AnyRow) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.try_get("id")?,
        webhook_id: r.try_get("webhook_id")?,
        event_id: r.try_get("event_id")?,
        state: state(
            &r.try_get::<String, _>("state")?,
            "delivery state",
            DeliveryState::parse,
        )?,
        attempts: r.try_get("attempts")?,
        last_status: r.try_get("last_status")?,
        last_error: r.try_get("last_error")?,
        first_attempt_at: millis(r.try_get("first_attempt_at")?)?,
        last_attempt_at: millis(r.try_get("last_attempt_at")?)?,
        next_attempt_at: opt_millis(r.try_get("next_attempt_at")?)?,
        delivered_at: opt_millis(r.try_get("delivered_at")?)?,
    })
}

impl Db {
    /// Every webhook, oldest first.
    pub async fn webhooks(&self) -> Result<Vec<WebhookRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(webhook_from_row).collect()
    }

    /// The ids of every webhook (what the delivery consumers are named
    /// after), read often: a narrow query.
    pub async fn webhook_ids(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM webhooks ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    pub async fn webhook(&self, id: &str) -> Result<Option<WebhookRow>> {
        let row = sqlx::query(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(webhook_from_row).transpose()
    }

    /// A webhook's deliveries, newest event first, at most `limit`.
    pub async fn deliveries(&self, webhook: &str, limit: u32) -> Result<Vec<DeliveryRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 \
             ORDER BY event_id DESC LIMIT $2"
        ))
        .bind(webhook)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    pub async fn delivery(&self, id: &str) -> Result<Option<DeliveryRow>> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    /// Writes `rows` in one transaction (a new row, or the row of the same
    /// id replaced): a page of deliveries costs one write.
    pub async fn save_deliveries(&self, rows: &[DeliveryRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in rows.chunks(50) {
            let mut sql = format!("INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                let b = i * 11;
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8,
                    b + 9,
                    b + 10,
                    b + 11
                ));
            }
            sql.push_str(
                " ON CONFLICT (id) DO UPDATE SET state = excluded.state, attempts = excluded.attempts, \
                 last_status = excluded.last_status, last_error = excluded.last_error, \
                 last_attempt_at = excluded.last_attempt_at, next_attempt_at = excluded.next_attempt_at, \
                 delivered_at = excluded.delivered_at",
            );
            let mut q = sqlx::query(&sql);
            for d in chunk {
                q = q
                    .bind(&d.id)
                    .bind(&d.webhook_id)
                    .bind(d.event_id)
                    .bind(d.state.as_str())
                    .bind(d.attempts)
                    .bind(d.last_status)
                    .bind(&d.last_error)
                    .bind(d.first_attempt_at.timestamp_millis())
                    .bind(d.last_attempt_at.timestamp_millis())
                    .bind(d.next_attempt_at.map(|t| t.timestamp_millis()))
                    .bind(d.delivered_at.map(|t| t.timestamp_millis()));
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Tx {
    /// Stores a new webhook.
    pub async fn insert_webhook(&mut self, w: &WebhookRow) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&w.id)
        .bind(&w.url)
        .bind(w.kind.as_str())
        .bind(w.service.as_ref().map(ServiceName::as_str))
        .bind(&w.events)
        .bind(&w.secret)
        .bind(w.created_at.timestamp_millis())
        .bind(&w.created_by)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Removes a webhook and its deliveries; `false` when it did not exist.
    pub async fn delete_webhook(&mut self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
