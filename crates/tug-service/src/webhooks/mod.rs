//! Webhooks: endpoints outside Tugboat that receive its events as signed
//! HTTP requests, and Slack channels that receive messages about them.
//!
//! Each webhook is delivered by its own durable consumer of the event log
//! (`webhook:<id>`, see [`deliver`]): at least once, in order, one sender
//! across servers, resuming at its cursor. What is sent is the public event
//! as a reader limited to the webhook's service and without embargo rights
//! sees it (the one access rule of [`crate::access`] decides), so an
//! embargoed build reaches no endpoint.
//!
//! Requests are signed after the Standard Webhooks specification: the
//! headers `webhook-id` (`msg_<webhook>_<event>`, the same on every attempt
//! and redelivery, so a receiver de-duplicates by it), `webhook-timestamp`
//! (seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, keyed by the bytes the secret
//! `whsec_<base64>` encodes. A `github` webhook also carries GitHub's
//! `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, keyed (as
//! GitHub does) by the secret's text as shown, `whsec_` included.
//!
//! Secrets are stored (they sign every request) and shown once, when the
//! webhook is created: never in listings, events, logs or errors.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tug_api::{Change, Event, EventWebhook};
use tug_core::short_id::IdPrefix;
use tug_core::webhook::{DeliveryState, EventFilter, WebhookKind};
use tug_core::{Action, Role, ServiceName, TokenName};
use tug_db::{DeliveryRow, WebhookRow};

use crate::{events, Error, Principal, Result, Tugboat};

pub(crate) mod deliver;
pub mod slack;

pub use deliver::WebhookFamily;

/// How webhooks are sent and retried.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The longest one request may take, answer included.
    pub timeout: Duration,
    /// The longest a connection may take to open.
    pub connect_timeout: Duration,
    /// How long a failing delivery is retried before it is dead-lettered
    /// and the webhook moves on to the next event.
    pub retry_for: Duration,
    /// The wait after the first failure, doubled after each one…
    pub backoff_initial: Duration,
    /// …up to this.
    pub backoff_max: Duration,
    /// The consumers' lease: a page of deliveries is sent within a third
    /// of it.
    pub lease: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            retry_for: Duration::from_secs(24 * 3600),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
            lease: Duration::from_secs(10),
        }
    }
}

/// The one HTTP client every webhook is sent with (connections are kept
/// and reused), made at first use.
#[derive(Default)]
pub(crate) struct Sender {
    client: OnceLock<reqwest::Client>,
}

/// The prefix of every webhook secret, as the Standard Webhooks libraries
/// expect it.
pub const SECRET_PREFIX: &str = "whsec_";

/// How much of an endpoint's answer is read at most: enough to keep a
/// connection with a short answer for reuse, never a large one.
const MAX_ANSWER: usize = 4096;

/// The most a URL may be, in bytes.
const MAX_URL: usize = 2048;

/// How many deliveries `deliveries` lists at most.
const DELIVERIES_SHOWN: u32 = 200;

/// The event kinds a Slack webhook is sent when it names none: those it
/// has a message for.
const SLACK_EVENTS: &str = "deployment,approval.requested,rollout.halted,rollout.rollback_failed";

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    Delivered(u16),
    Failed { status: Option<u16>, error: String },
}

/// A new webhook and its secret (shown once).
#[derive(Debug, Clone)]
pub struct CreatedWebhook {
    pub webhook: WebhookRow,
    pub secret: String,
}

/// What `create_webhook` is asked for, unchecked.
#[derive(Debug, Clone, Default)]
pub struct NewWebhook {
    pub url: String,
    pub kind: Option<WebhookKind>,
    pub service: Option<String>,
    pub events: Option<String>,
}

/// The `webhook-id` of the delivery of event `event` to webhook `webhook`:
/// derived from both, so every attempt (after any crash) carries the same.
pub fn delivery_id(webhook: &str, event: i64) -> String {
    format!("msg_{webhook}_{event}")
}

/// The consumer that delivers webhook `id`.
pub(crate) fn consumer_name(id: &str) -> String {
    format!("webhook:{id}")
}

/// `url` without what may be a credential: its query as `?…`, and for a
/// Slack webhook (whose path is the credential) its path as `/…`.
pub fn shown_url(url: &str, kind: WebhookKind) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return "(not a URL)".into();
    };
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let query = u.query().is_some();
    u.set_query(None);
    u.set_fragment(None);
    if kind == WebhookKind::Slack && u.path() != "/" {
        u.set_path("/…");
    }
    let mut shown = u.to_string().replace("%E2%80%A6", "…");
    if query {
        shown.push_str("?…");
    }
    shown
}

/// Checks a webhook URL: http or https, a host, no credentials.
fn check_url(text: &str) -> Result<url::Url> {
    use tug_core::http_url::{http_url, HttpUrlError};
    let invalid = |why: String| Error::Invalid(format!("url: {why}"));
    http_url(text.trim(), MAX_URL).map_err(|e| {
        invalid(match e {
            HttpUrlError::TooLong(max) => format!("it is longer than {max} bytes"),
            HttpUrlError::NotAUrl(e) => format!("it is not a URL ({e})"),
            HttpUrlError::Scheme(scheme) => {
                format!("the scheme {scheme} is not supported; use http:// or https://")
            }
            HttpUrlError::NoHost => "it names no host".into(),
            HttpUrlError::Credentials => {
                "it carries credentials (user:password@); remove them: requests are signed with the webhook's secret"
                    .into()
            }
        })
    })
}

/// A new secret: `whsec_` and the base64 of 32 random bytes.
fn new_secret() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The headers that sign `body`, sent as delivery `id` at `timestamp`
/// (seconds) by a webhook of `kind` with `secret`.
pub(crate) fn signature_headers(
    kind: WebhookKind,
    secret: &str,
    id: &str,
    timestamp: i64,
    event_kind: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    // A secret this server made always decodes; one that does not (a
    // row edited by hand) signs with its text, and the receiver refuses.
    let key = secret
        .strip_prefix(SECRET_PREFIX)
        .and_then(|k| b64.decode(k).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let ts = timestamp.to_string();
    let signature = hmac_sha256(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    let mut headers = vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", ts),
        ("webhook-signature", format!("v1,{}", b64.encode(signature))),
    ];
    if kind == WebhookKind::Github {
        headers.push((
            "x-hub-signature-256",
            format!("sha256={}", hex::encode(hmac_sha256(secret.as_bytes(), &[body]))),
        ));
        headers.push(("x-github-event", event_kind.to_string()));
        headers.push(("x-github-delivery", id.to_string()));
    }
    headers
}

impl Sender {
    fn client(&self, settings: &WebhookSettings) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(settings.timeout)
                .connect_timeout(settings.connect_timeout)
                // A redirect is a failure: following one could send the
                // event (and its signature) to another host.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("Tugboat-Webhook/", env!("CARGO_PKG_VERSION")))
                .pool_max_idle_per_host(4)
                .build()
                .unwrap_or_else(|e| unreachable!("the webhook HTTP client builds with its fixed options: {e}"))
        })
    }

    /// Sends `body` to `url` once.
    pub(crate) async fn send(
        &self,
        settings: &WebhookSettings,
        url: &str,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    ) -> Attempt {
        let mut req = self
            .client(settings)
            .post(url)
            .header("content-type", "application/json");
        for (name, value) in headers {
            req = req.header(name, value);
        }
        match req.body(body).send().await {
            Ok(mut answer) => {
                let status = answer.status();
                let mut read = 0;
                while read < MAX_ANSWER {
                    match answer.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        _ => break,
                    }
                }
                if status.is_success() {
                    Attempt::Delivered(status.as_u16())
                } else {
                    let error = if status.is_redirection() {
                        format!("HTTP {status}: redirects are not followed; give the final URL")
                    } else {
                        format!("HTTP {status}")
                    };
                    Attempt::Failed {
                        status: Some(status.as_u16()),
                        error,
                    }
                }
            }
            Err(e) => Attempt::Failed {
                status: None,
                error: describe(&e),
            },
        }
    }
}

/// Why a request failed, never with its URL (a Slack URL is a credential).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut why = if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "the request failed".to_string()
    };
    // The innermost cause says what happened (connection refused, reset);
    // the layers above repeat the URL.
    let mut source = e.source();
    let mut innermost = None;
    while let Some(s) = source {
        innermost = Some(s.to_string());
        source = s.source();
    }
    if let Some(cause) = innermost {
        why.push_str(": ");
        why.push_str(&cause.chars().take(200).collect::<String>());
    }
    why
}

/// A webhook as events name it.
pub(crate) fn event_webhook(w: &WebhookRow) -> EventWebhook {
    EventWebhook {
        id: w.id.clone(),
        url: shown_url(&w.url, w.kind),
        kind: w.kind,
        service: w.service.clone(),
        events: w.events.split(',').map(str::to_string).collect(),
    }
}

/// The reader a webhook's events are shaped for: its service, no embargo
/// rights.
pub(crate) fn reader_of(w: &WebhookRow) -> Principal {
    Principal {
        token_id: consumer_name(&w.id),
        // A fixed valid name: the reader is never shown.
        name: TokenName::parse("webhook").unwrap_or_else(|_| unreachable!("webhook is a valid token name")),
        role: Role::Viewer,
        service: w.service.clone(),
        environment: None,
    }
}

impl Tugboat {
    /// Creates a webhook: checks every field (naming the one refused),
    /// stores it with its delivery consumer (at the log's head: the events
    /// from its creation on are sent), records `webhook.created`, and
    /// returns its secret, shown this once.
    pub async fn create_webhook(&self, who: &Principal, new: NewWebhook) -> Result<CreatedWebhook> {
        self.require(who, Action::ManageWebhooks)?;
        let url = check_url(&new.url)?;
        let kind = new.kind.unwrap_or(WebhookKind::Standard);
        let service = match new.service.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) => {
                let name = ServiceName::parse(s).map_err(|e| Error::Invalid(format!("service: {e}")))?;
                if !self.db.service_exists(&name).await? {
                    return Err(Error::Invalid(format!(
                        "service: {name} does not exist; see tug service list"
                    )));
                }
                Some(name)
            }
            None => None,
        };
        let events = match (new.events.as_deref(), kind) {
            (Some(text), _) => EventFilter::parse(text, &Change::KINDS),
            (None, WebhookKind::Slack) => EventFilter::parse(SLACK_EVENTS, &Change::KINDS),
            (None, _) => Ok(EventFilter::all()),
        }
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let secret = new_secret();
        let row = WebhookRow {
            id: uuid::Uuid::now_v7().to_string(),
            url: url.to_string(),
            kind,
            service,
            events: events.to_string(),
            secret: secret.clone(),
            created_at: self.now(),
            created_by: Some(who.name.to_string()),
        };
        let mut tx = self.db.begin().await?;
        tx.insert_webhook(&row).await?;
        tx.create_consumer(&consumer_name(&row.id)).await?;
        let event = self.event(
            row.service.as_ref(),
            Some(events::actor(who)),
            Change::WebhookCreated {
                webhook: event_webhook(&row),
            },
        );
        self.commit(tx, &[event]).await?;
        self.consumers_changed();
        Ok(CreatedWebhook { webhook: row, secret })
    }

    /// Every webhook (their secrets are for the delivery only: the caller
    /// shows none).
    pub async fn list_webhooks(&self, who: &Principal) -> Result<Vec<WebhookRow>> {
        self.require(who, Action::ManageWebhooks)?;
        Ok(self.db.webhooks().await?)
    }

    /// The webhook whose id is `id` or starts with it.
    async fn find_webhook(&self, id: &str) -> Result<WebhookRow> {
        let mut all = self.db.webhooks().await?;
        if let Some(i) = all.iter().position(|w| w.id == id) {
            return Ok(all.swap_remove(i));
        }
        let prefix = IdPrefix::parse(id);
        all.retain(|w| prefix.as_ref().is_some_and(|p| p.matches(&w.id)));
        match all.len() {
            1 => Ok(all.swap_remove(0)),
            0 => Err(Error::WebhookNotFound(id.chars().take(80).collect())),
            _ => Err(Error::AmbiguousId {
                prefix: id.to_string(),
                candidates: all.iter().map(|w| w.id.clone()).collect(),
            }),
        }
    }

    /// Deletes a webhook, its deliveries and its consumer (a server
    /// sending to it stops at its next step), and records
    /// `webhook.deleted`.
    pub async fn delete_webhook(&self, who: &Principal, id: &str) -> Result<WebhookRow> {
        self.require(who, Action::ManageWebhooks)?;
        let w = self.find_webhook(id).await?;
        let mut tx = self.db.begin().await?;
        if !tx.delete_webhook(&w.id).await? {
            return Err(Error::WebhookNotFound(w.id));
        }
        tx.delete_consumer(&consumer_name(&w.id)).await?;
        let event = self.event(
            w.service.as_ref(),
            Some(events::actor(who)),
            Change::WebhookDeleted {
                webhook: event_webhook(&w),
            },
        );
        self.commit(tx, &[event]).await?;
        self.consumers_changed();
        Ok(w)
    }

    /// A webhook's deliveries, newest event first.
    pub async fn webhook_deliveries(&self, who: &Principal, id: &str) -> Result<(WebhookRow, Vec<DeliveryRow>)> {
        self.require(who, Action::ManageWebhooks)?;
        let w = self.find_webhook(id).await?;
        let rows = self.db.deliveries(&w.id, DELIVERIES_SHOWN).await?;
        Ok((w, rows))
    }

    /// Sends a recorded delivery again now, with the same `webhook-id`,
    /// beside the webhook's consumer (which goes on in its own order), and
    /// records the attempt: a success marks it delivered.
    pub async fn redeliver(&self, who: &Principal, delivery: &str) -> Result<DeliveryRow> {
        self.require(who, Action::ManageWebhooks)?;
        let not_found = || Error::DeliveryNotFound(delivery.chars().take(120).collect());
        let mut row = self.db.delivery(delivery).await?.ok_or_else(not_found)?;
        let w = self.db.webhook(&row.webhook_id).await?.ok_or_else(not_found)?;
        let Some(raw) = self
            .db
            .events_after(row.event_id - 1, None, 1)
            .await?
            .into_iter()
            .next()
        else {
            return Err(not_found());
        };
        let event = events::read_row(&raw)?;
        let shaped = self.shape_events(&reader_of(&w), vec![event]).await?;
        let Some(body) = shaped.first().and_then(|e| body_of(&w, e)) else {
            return Err(Error::Conflict(format!(
                "event {} is no longer sent to webhook {}",
                row.event_id, w.id
            )));
        };
        let now = self.now();
        let kind = shaped.first().map_or("", |e| e.kind());
        let headers = signature_headers(w.kind, &w.secret, &row.id, now.timestamp(), kind, &body);
        let attempt = self.sender.send(&self.settings.webhooks, &w.url, headers, body).await;
        row.attempts = row.attempts.saturating_add(1);
        record_attempt(&mut row, &attempt, now);
        if matches!(attempt, Attempt::Delivered(_)) {
            row.state = DeliveryState::Delivered;
            row.next_attempt_at = None;
        }
        self.db.save_deliveries(std::slice::from_ref(&row)).await?;
        Ok(row)
    }
}

/// Sets the outcome of an attempt made at `now` on `row`.
pub(crate) fn record_attempt(row: &mut DeliveryRow, attempt: &Attempt, now: DateTime<Utc>) {
    row.last_attempt_at = now;
    match attempt {
        Attempt::Delivered(status) => {
            row.last_status = Some(i64::from(*status));
            row.last_error = None;
            row.delivered_at = Some(now);
        }
        Attempt::Failed { status, error } => {
            row.last_status = status.map(i64::from);
            row.last_error = Some(error.clone());
        }
    }
}

/// What webhook `w` is sent for event `e` (as it may see it): the event's
/// JSON, or a Slack message; `None` when a Slack webhook has no message
/// for its kind.
pub(crate) fn body_of(w: &WebhookRow, e: &Event) -> Option<Vec<u8>> {
    match w.kind {
        WebhookKind::Standard | WebhookKind::Github => serde_json::to_vec(e).ok(),
        WebhookKind::Slack => slack::message(e).and_then(|m| serde_json::to_vec(&m).ok()),
    }
}

/// Shared by the use cases and the consumers.
pub(crate) type SharedSender = Arc<Sender>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_http_a_host_and_no_credentials() {
        assert!(check_url("https://example.com/hook").is_ok());
        assert!(check_url("http://127.0.0.1:8080/").is_ok());
        for (bad, why) in [
            ("ftp://example.com/", "scheme ftp"),
            ("https://user:pw@example.com/", "credentials"),
            ("https://user@example.com/", "credentials"),
            ("not a url", "not a URL"),
            ("file:///etc/passwd", "scheme file"),
        ] {
            let e = check_url(bad).unwrap_err().to_string();
            assert!(e.starts_with("url: ") && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn shown_urls_hide_queries_and_slack_paths() {
        assert_eq!(
            shown_url("https://example.com/hook?token=abc", WebhookKind::Standard),
            "https://example.com/hook?…"
        );
        assert_eq!(
            shown_url("https://hooks.slack.com/services/T0/B0/XYZ", WebhookKind::Slack),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            shown_url("http://127.0.0.1:9/x", WebhookKind::Github),
            "http://127.0.0.1:9/x"
        );
    }

    #[test]
    fn the_standard_signature_matches_the_specification_example() {
        // The example of the Standard Webhooks specification's reference
        // libraries (their test vectors).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let headers = signature_headers(WebhookKind::Standard, secret, id, 1614265330, "deployment", body);
        assert_eq!(
            headers[2],
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_string()
            )
        );
        assert_eq!(headers.len(), 3);
    }

    #[test]
    fn a_github_webhook_signs_the_body_with_the_secret_text_too() {
        let headers = signature_headers(WebhookKind::Github, "whsec_c2VjcmV0", "msg_1", 1, "deployment", b"{}");
        let hub = headers.iter().find(|(n, _)| *n == "x-hub-signature-256").unwrap();
        let expected = hex::encode(hmac_sha256(b"whsec_c2VjcmV0", &[b"{}"]));
        assert_eq!(hub.1, format!("sha256={expected}"));
        assert!(headers.iter().any(|(n, v)| *n == "x-github-event" && v == "deployment"));
    }

    #[test]
    fn secrets_decode_to_32_bytes() {
        let s = new_secret();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.strip_prefix(SECRET_PREFIX).unwrap())
            .unwrap();
        assert_eq!(raw.len(), 32);
        assert_ne!(s, new_secret());
    }
}
