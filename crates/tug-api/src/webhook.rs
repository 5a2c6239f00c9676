//! Wire types of `/v1/webhooks`: creating, listing and deleting webhooks,
//! and their deliveries. A webhook's secret appears in one answer only,
//! the one that created it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tug_core::webhook::{DeliveryState, WebhookKind};
use tug_core::ServiceName;

/// Body of `POST /v1/webhooks`. Fields are checked by the server, which
/// names the one it refuses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are POSTed: http or https, with a host and no
    /// credentials.
    pub url: String,
    /// `standard` when absent.
    #[serde(default)]
    pub kind: Option<WebhookKind>,
    /// Only this service's events.
    #[serde(default)]
    pub service: Option<String>,
    /// Event kinds and patterns, comma-separated (`deployment,approval.*`);
    /// absent: every event (for `slack`: those it has a message for).
    #[serde(default)]
    pub events: Option<String>,
}

/// A webhook, never with its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    /// The shortest prefix of `id` no other webhook shares.
    #[serde(default)]
    pub short_id: String,
    /// The endpoint without what may be a credential (a query string is
    /// shown as `?…`, a Slack URL's path as `/…`).
    pub url: String,
    pub kind: WebhookKind,
    pub service: Option<ServiceName>,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
}

/// A new webhook with the secret that signs its requests, shown only in
/// this answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedWebhook {
    pub webhook: Webhook,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// What became of one event sent to a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The `webhook-id` header, the same on every attempt.
    pub id: String,
    pub webhook: String,
    pub event_id: i64,
    pub state: DeliveryState,
    pub attempts: i64,
    /// The last answer's HTTP status.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    pub first_attempt_at: DateTime<Utc>,
    pub last_attempt_at: DateTime<Utc>,
    /// When a pending delivery is tried again.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
}
