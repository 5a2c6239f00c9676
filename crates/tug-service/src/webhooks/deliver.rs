//! Delivery: one durable consumer per webhook, run by [`WebhookFamily`].
//!
//! The consumer sends each event its webhook wants, in order, one at a
//! time (in order per endpoint means a later event waits behind a failing
//! one). A 2xx ends a delivery; the page's delivered rows are written in one
//! transaction before the cursor moves. Anything else is a failure: the
//! delivery is recorded pending, and the consumer returns a
//! [`ConsumerError`] that moves the cursor to the event before it and asks
//! to be offered the rest after a back-off (doubling, with jitter, up to a
//! cap), so nothing sleeps inside `handle` and the dispatcher keeps the
//! lease. After the retry period a delivery is dead-lettered and the
//! consumer goes on with the next event.
//!
//! Every request carries a timeout, and a page is sent within a third of
//! the lease: a slow endpoint delays only its own webhook, never a
//! deployment or another webhook (each has its own task).

use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tug_api::AuditRecord;
use tug_core::webhook::{backoff, DeliveryState, EventFilter};
use tug_db::{DeliveryRow, WebhookRow};

use super::{body_of, consumer_name, delivery_id, reader_of, record_attempt, signature_headers, Attempt};
use crate::consumers::{Consumer, ConsumerError, ConsumerFamily};
use crate::{Principal, Result, Tugboat};

/// The webhooks' consumers: one per webhook, named `webhook:<id>`.
pub struct WebhookFamily;

#[async_trait::async_trait]
impl ConsumerFamily for WebhookFamily {
    fn family(&self) -> &str {
        "webhooks"
    }

    async fn names(&self, tugboat: &Tugboat) -> Result<Vec<String>> {
        Ok(tugboat
            .db
            .webhook_ids()
            .await?
            .iter()
            .map(|id| consumer_name(id))
            .collect())
    }

    fn make(&self, tugboat: &Tugboat, name: &str) -> Box<dyn Consumer> {
        Box::new(WebhookConsumer {
            tugboat: tugboat.clone(),
            name: name.to_string(),
            id: name.strip_prefix("webhook:").unwrap_or(name).to_string(),
            open: None,
            pending: None,
        })
    }
}

/// A webhook as its consumer sends to it.
struct Open {
    webhook: WebhookRow,
    filter: EventFilter,
    reader: Principal,
}

struct WebhookConsumer {
    tugboat: Tugboat,
    name: String,
    id: String,
    open: Option<Open>,
    /// The delivery being retried, as last recorded.
    pending: Option<DeliveryRow>,
}

fn failed(message: impl Into<String>) -> ConsumerError {
    ConsumerError::new(message)
}

#[async_trait::async_trait]
impl Consumer for WebhookConsumer {
    fn name(&self) -> &str {
        &self.name
    }

    fn owned(&self) -> bool {
        true
    }

    async fn resume(&mut self) -> Result<(), ConsumerError> {
        let db = &self.tugboat.db;
        let Some(webhook) = db.webhook(&self.id).await.map_err(|e| failed(e.to_string()))? else {
            return Err(failed(format!("webhook {} was deleted", self.id)));
        };
        // A filter this server stored always parses; one that does not (a
        // row edited by hand) stops the webhook, with the reason in the
        // log, rather than send it events it did not ask for.
        let filter = EventFilter::parse(&webhook.events, &tug_api::Change::KINDS)
            .map_err(|e| failed(format!("webhook {}: its stored filter is not valid: {e}", webhook.id)))?;
        self.pending = db
            .deliveries(&webhook.id, 1)
            .await
            .map_err(|e| failed(e.to_string()))?
            .into_iter()
            .find(|d| d.state == DeliveryState::Pending);
        self.open = Some(Open {
            reader: reader_of(&webhook),
            filter,
            webhook,
        });
        Ok(())
    }

    async fn handle(&mut self, records: &[AuditRecord]) -> Result<(), ConsumerError> {
        let Some(open) = &self.open else {
            return Err(failed("the webhook is not open"));
        };
        let started = Instant::now();
        let settings = &self.tugboat.settings.webhooks;
        // Requests start only while one more fits in a third of the lease.
        let budget = (settings.lease / 3).saturating_sub(settings.timeout);
        let wanted: Vec<tug_api::Event> = records
            .iter()
            .filter(|r| open.webhook.service.is_none() || r.event.service == open.webhook.service)
            .filter(|r| open.filter.matches(r.event.kind()))
            .map(|r| r.event.clone())
            .collect();
        let shaped = self
            .tugboat
            .shape_events(&open.reader, wanted)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut written: Vec<DeliveryRow> = Vec::new();
        let mut sent = 0usize;
        let mut outcome = Ok(());
        for event in &shaped {
            let Some(body) = body_of(&open.webhook, event) else {
                continue;
            };
            let before = event.id - 1;
            let now = self.tugboat.now();
            let id = delivery_id(&open.webhook.id, event.id);
            let mut row = match self.pending.take() {
                Some(p) if p.event_id == event.id => p,
                _ => DeliveryRow {
                    id: id.clone(),
                    webhook_id: open.webhook.id.clone(),
                    event_id: event.id,
                    state: DeliveryState::Pending,
                    attempts: 0,
                    last_status: None,
                    last_error: None,
                    first_attempt_at: now,
                    last_attempt_at: now,
                    next_attempt_at: None,
                    delivered_at: None,
                },
            };
            if let Some(wait) = row.next_attempt_at.and_then(|at| (at - now).to_std().ok()) {
                if !wait.is_zero() {
                    self.pending = Some(row);
                    outcome = Err(failed("waiting to retry").handled_through(before).retry_after(wait));
                    break;
                }
            }
            if sent > 0 && started.elapsed() >= budget {
                // Offered again at once: the dispatcher renews the lease
                // between pages.
                self.pending = (row.attempts > 0).then_some(row);
                outcome = Err(failed("a page's time is up; continuing")
                    .handled_through(before)
                    .retry_after(Duration::ZERO));
                break;
            }
            sent += 1;
            let headers = signature_headers(
                open.webhook.kind,
                &open.webhook.secret,
                &id,
                Utc::now().timestamp(),
                event.kind(),
                &body,
            );
            let attempt = self
                .tugboat
                .sender
                .send(settings, &open.webhook.url, headers, body)
                .await;
            let now = self.tugboat.now();
            row.attempts = row.attempts.saturating_add(1);
            record_attempt(&mut row, &attempt, now);
            match &attempt {
                Attempt::Delivered(_) => {
                    row.state = DeliveryState::Delivered;
                    row.next_attempt_at = None;
                    written.push(row);
                }
                Attempt::Failed { error, .. } => {
                    self.tugboat.count_delivery_failure("webhook");
                    let trying_for = (now - row.first_attempt_at).to_std().unwrap_or_default();
                    if trying_for >= settings.retry_for {
                        tracing::warn!(webhook = %open.webhook.id, event = event.id, attempts = row.attempts, error = %error,
                            "webhook delivery dead-lettered after its retry period; going on with the next event");
                        row.state = DeliveryState::Dead;
                        row.next_attempt_at = None;
                        written.push(row);
                        continue;
                    }
                    let attempts = u32::try_from(row.attempts).unwrap_or(u32::MAX);
                    let wait = backoff(
                        attempts,
                        settings.backoff_initial,
                        settings.backoff_max,
                        rand::random::<f64>(),
                    );
                    row.next_attempt_at = chrono::Duration::from_std(wait)
                        .ok()
                        .and_then(|w| now.checked_add_signed(w));
                    tracing::info!(webhook = %open.webhook.id, event = event.id, attempts = row.attempts, error = %error,
                        retry_in_ms = wait.as_millis() as u64, "webhook delivery failed; retrying");
                    written.push(row.clone());
                    self.pending = Some(row);
                    outcome = Err(failed(format!("webhook delivery failed: {error}"))
                        .handled_through(before)
                        .retry_after(wait));
                    break;
                }
            }
        }
        if let Err(e) = self.tugboat.db.save_deliveries(&written).await {
            // Nothing is acknowledged: the page is offered (and sent) again.
            return Err(failed(format!("cannot record the webhook's deliveries: {e}")));
        }
        outcome
    }
}
