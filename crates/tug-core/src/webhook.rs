//! Webhooks as rules: what kind of endpoint one is, which events it wants
//! (its event filter), what became of one delivery, and how long to wait
//! before the next attempt at a failing one. No I/O: the service sends,
//! the database stores.

use std::fmt;
use std::time::Duration;

/// How a webhook's requests are shaped and signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookKind {
    /// The public event as JSON, signed after the Standard Webhooks
    /// specification (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`).
    Standard,
    /// As `standard`, with GitHub's `X-Hub-Signature-256` as well, so
    /// receivers written for GitHub's webhooks verify it.
    Github,
    /// A Slack incoming webhook: Block Kit messages for the events people
    /// act on (deployments, approvals needed, halted rollouts, freeze
    /// overrides); other events are not sent.
    Slack,
}

impl WebhookKind {
    pub const ALL: [WebhookKind; 3] = [WebhookKind::Standard, WebhookKind::Github, WebhookKind::Slack];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookKind::Standard => "standard",
            WebhookKind::Github => "github",
            WebhookKind::Slack => "slack",
        }
    }

    pub fn parse(s: &str) -> Option<WebhookKind> {
        WebhookKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for WebhookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of one event sent to one webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// It failed and is being retried; later events wait behind it.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// It kept failing for the whole retry period and was given up on.
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        [DeliveryState::Pending, DeliveryState::Delivered, DeliveryState::Dead]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A webhook as stored, its secret included: only the service reads this.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    pub kind: WebhookKind,
    pub service: Option<crate::ServiceName>,
    /// The event filter as given (`deployment,approval.*`).
    pub events: String,
    pub secret: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub created_by: Option<String>,
}

/// Everything but the secret, so a row in a log or a panic shows none.
impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("service", &self.service)
            .field("events", &self.events)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// One delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The `webhook-id` header sent.
    pub id: String,
    pub webhook_id: String,
    pub event_id: i64,
    pub state: DeliveryState,
    pub attempts: i64,
    /// The last answer's HTTP status, when there was one.
    pub last_status: Option<i64>,
    /// Why the last attempt failed, when it did.
    pub last_error: Option<String>,
    pub first_attempt_at: chrono::DateTime<chrono::Utc>,
    pub last_attempt_at: chrono::DateTime<chrono::Utc>,
    pub next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    pub delivered_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Which event kinds a webhook wants: a list of kinds (`deployment`) and
/// patterns where `*` stands for any run of characters (`approval.*`,
/// `*`). Only `*` is special, so a filter reads the same to everyone; a
/// pattern must match at least one kind Tugboat records, so a typing
/// mistake is refused instead of silently matching nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter(Vec<String>);

/// Why an event filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("events is empty; name event kinds (deployment,approval.*) or leave it out for every event")]
    Empty,
    #[error("events: {0:?} is not a kind or pattern: use lowercase letters, digits, '.', '_' and '*'")]
    BadPattern(String),
    #[error("events: {pattern:?} matches no event kind; the kinds are {known}")]
    Unknown { pattern: String, known: String },
}

/// The longest filter accepted, in bytes.
const MAX_FILTER: usize = 1000;

impl EventFilter {
    /// Every event.
    pub fn all() -> EventFilter {
        EventFilter(vec!["*".into()])
    }

    /// Parses a comma-separated filter against the `known` event kinds.
    pub fn parse(text: &str, known: &[&str]) -> Result<EventFilter, FilterError> {
        if text.len() > MAX_FILTER {
            return Err(FilterError::BadPattern(text.chars().take(40).collect::<String>() + "…"));
        }
        let mut patterns = Vec::new();
        for p in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let valid = p
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '*'));
            if !valid {
                return Err(FilterError::BadPattern(p.chars().take(80).collect()));
            }
            if !known.iter().any(|k| glob(p, k)) {
                return Err(FilterError::Unknown {
                    pattern: p.to_string(),
                    known: known.join(", "),
                });
            }
            if !patterns.iter().any(|q| q == p) {
                patterns.push(p.to_string());
            }
        }
        if patterns.is_empty() {
            return Err(FilterError::Empty);
        }
        Ok(EventFilter(patterns))
    }

    /// Whether an event of `kind` passes.
    pub fn matches(&self, kind: &str) -> bool {
        self.0.iter().any(|p| glob(p, kind))
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for EventFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of
/// characters (none included) and everything else for itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole text must be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// How long to wait after the `attempt`-th failed attempt (1 for the
/// first): `initial` doubled per attempt up to `max`, then a random part of
/// its last quarter taken off (`jitter` in 0..=1), so endpoints that failed
/// together do not all retry at the same moment.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32);
    let full = initial.saturating_mul(1u32 << doublings.min(31)).min(max);
    let off = full.mul_f64(jitter.clamp(0.0, 1.0) / 4.0);
    full.saturating_sub(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: &[&str] = &[
        "deployment",
        "approval.requested",
        "approval.approved",
        "rollout.halted",
    ];

    #[test]
    fn globs_match_runs_of_characters() {
        assert!(glob("*", ""));
        assert!(glob("*", "deployment"));
        assert!(glob("approval.*", "approval.requested"));
        assert!(!glob("approval.*", "approval"));
        assert!(glob("*.halted", "rollout.halted"));
        assert!(glob("a*p*d", "approval.approved"));
        assert!(!glob("deployment", "deployments"));
        assert!(!glob("*ab*ab", "ab"));
        assert!(glob("*ab*ab", "abab"));
    }

    #[test]
    fn a_filter_takes_kinds_and_patterns_and_refuses_what_matches_nothing() {
        let f = EventFilter::parse("deployment, approval.*,rollout.halted", KINDS).unwrap();
        assert!(f.matches("deployment") && f.matches("approval.approved") && f.matches("rollout.halted"));
        assert!(!f.matches("rollout.progress"));
        assert_eq!(f.to_string(), "deployment,approval.*,rollout.halted");
        assert_eq!(
            EventFilter::parse("deploy", KINDS),
            Err(FilterError::Unknown {
                pattern: "deploy".into(),
                known: KINDS.join(", ")
            })
        );
        assert!(matches!(
            EventFilter::parse("approval.[a]", KINDS),
            Err(FilterError::BadPattern(_))
        ));
        assert!(matches!(
            EventFilter::parse("Deployment", KINDS),
            Err(FilterError::BadPattern(_))
        ));
        assert_eq!(EventFilter::parse(" , ", KINDS), Err(FilterError::Empty));
        assert!(EventFilter::parse(&"*,".repeat(600), KINDS).is_err());
        for e in [
            EventFilter::parse("nope", KINDS).unwrap_err(),
            EventFilter::parse("x y", KINDS).unwrap_err(),
            EventFilter::parse("", KINDS).unwrap_err(),
        ] {
            assert!(e.to_string().starts_with("events"), "{e}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitter_only_shortens_it() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(1), s(3600), 0.0), s(1));
        assert_eq!(backoff(2, s(1), s(3600), 0.0), s(2));
        assert_eq!(backoff(11, s(1), s(3600), 0.0), s(1024));
        assert_eq!(backoff(13, s(1), s(3600), 0.0), s(3600));
        assert_eq!(backoff(u32::MAX, s(1), s(3600), 0.0), s(3600));
        assert_eq!(backoff(3, s(1), s(3600), 1.0), s(3));
        assert_eq!(backoff(0, s(1), s(3600), 0.0), s(1));
        assert_eq!(backoff(40, Duration::MAX, Duration::MAX, 0.0), Duration::MAX);
    }
}
