//! Tugboat's use cases over the blob store and the metadata database:
//! authenticate a token, manage tokens and services, store and read blobs,
//! create, fill and seal builds, check and collect the store.
//!
//! Every use case takes the caller's [`Principal`] and checks its role here,
//! so no transport can forget to. This crate knows nothing about HTTP: the
//! server maps [`Error`] to status codes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use rand::RngCore;
use tug_api::Change;
use tug_core::records::{BuildFilter, BuildRecord, TokenRecord};
use tug_core::short_id::IdPrefix;
use tug_core::{
    Action, ArtifactName, ArtifactSpec, BuildId, BuildManifest, BuildRef, BuildSource, BuildState, BuildTarget, CiRun,
    Digest, Draft, EnvName, Hasher, Role, ServiceName, TokenName, Version,
};
use tug_db::{Db, NewBuild, NewToken, Revocation};
use tug_store::{BlobInfo, BlobStore, ByteStream};

mod access;
mod agents;
mod apt;
mod audit;
mod blobs;
mod builds;
mod catalog;
mod consumers;
mod deploy;
mod error;
mod event_sink;
mod events;
mod git;
mod gitops;
mod grants;
mod maintenance;
mod metrics;
pub mod oci;
mod reconcile;
mod rollouts;
mod services;
mod tokens;
mod unchained;
mod verify;
mod webhooks;

pub use access::{AgentView, DeploymentView, Shown};
pub use agents::{AgentCounts, ChannelStamp, ChannelStamps, ChannelView, STALE_AFTER};
pub use apt::{AptIndexes, AptKey, AptSettings, Generation, PoolFile, GENERATIONS};
pub use audit::{ExportPage, Since};
pub use catalog::{download_path, DEFAULT_CATALOG_PAGE, MAX_CATALOG_PAGE};
pub use consumers::{Consumer, ConsumerError, ConsumerFamily, LeaseOptions};
pub use deploy::{
    Answer, BuildSelector, Decision, DeployOptions, Diff, EnvStatus, Outcome, PipelineRevision, PipelineView,
};
pub use error::{Cause, Error, ErrorKind};
pub use event_sink::EventSink;
pub use events::{recordable, EventPage};
pub use git::{GitCredential, GitSecret, GitSettings};
pub use gitops::{Delivery, GitWriters};
pub use grants::Place;
pub use metrics::{Metrics, METRICS_CONTENT_TYPE};
pub use reconcile::SWEEP_EVERY;
pub use rollouts::{Grant, Pacing, RolloutStatus};
/// A blob's bytes as read from the store, named for the server's answers.
pub use tug_store::Blob;
pub use verify::GateView;
pub use webhooks::{delivery_id, shown_url, slack, CreatedWebhook, NewWebhook, WebhookFamily, WebhookSettings};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Limits and ages the use cases enforce.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The largest blob accepted, in bytes.
    pub max_blob_size: u64,
    /// Drafts not touched for this long are abandoned by gc.
    pub draft_max_age: Duration,
    /// Blobs younger than this (or claimed this recently) are never
    /// collected, so a push racing a gc keeps its blobs.
    pub gc_grace: Duration,
    /// Server-wide branch restrictions no pipeline can override
    /// (`production=^master$`).
    pub server_rules: Vec<tug_core::ServerRule>,
    /// How long a deployment waits for approvals when its environment sets
    /// no `approval_timeout`.
    pub approval_timeout: Duration,
    /// How webhooks are sent and retried.
    pub webhooks: WebhookSettings,
    /// Where the registry stages the chunks of blob upload sessions.
    pub upload_dir: std::path::PathBuf,
    /// Upload sessions older than this are removed by gc.
    pub upload_max_age: Duration,
    /// The APT repositories' signing key and retention.
    pub apt: AptSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_blob_size: 64 << 30,
            draft_max_age: Duration::from_secs(7 * 24 * 3600),
            gc_grace: Duration::from_secs(3600),
            server_rules: Vec::new(),
            approval_timeout: Duration::from_secs(24 * 3600),
            webhooks: WebhookSettings::default(),
            upload_dir: std::env::temp_dir().join("tug-uploads"),
            upload_max_age: Duration::from_secs(24 * 3600),
            apt: AptSettings::default(),
        }
    }
}

/// Who is calling: the token that authenticated the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub name: TokenName,
    pub role: Role,
    /// A token scoped to one service sees and acts on that service only.
    pub service: Option<ServiceName>,
    /// An agent token scoped to one environment of its service follows
    /// only that environment.
    pub environment: Option<EnvName>,
}

/// The source of the current time, injectable for tests.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// A build and, when shown alone, its artifacts.
#[derive(Debug, Clone)]
pub struct BuildView {
    pub build: BuildRecord,
    pub artifacts: Option<Vec<ArtifactSpec>>,
}

/// What a new draft build says about itself.
#[derive(Debug, Clone)]
pub struct BuildDraft {
    pub service: ServiceName,
    pub version: Version,
    pub source: BuildSource,
    pub ci: CiRun,
    /// Artifacts that must be present before the build may be sealed.
    pub expected: Vec<ArtifactName>,
    /// A security release, hidden and held to private environments.
    pub embargoed: bool,
}

/// The outcome of a blob upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    /// `false` when the blob was already there and no body was read.
    pub created: bool,
}

/// What `fsck` found (and, repairing, did).
#[derive(Debug, Clone, Default)]
pub struct FsckReport {
    pub checked: u64,
    pub bytes: u64,
    pub corrupt: Vec<CorruptBlob>,
    /// Digests builds refer to that the store lacks, after any repair (so
    /// a blob moved aside is listed here too until it is uploaded again).
    pub missing: Vec<Digest>,
    /// The artifacts that need a corrupt or missing blob, by digest.
    pub needed_by: Vec<tug_core::BlobUse>,
    /// Whether corrupt blobs were moved aside.
    pub repaired: bool,
}

/// A stored blob whose bytes no longer hash to its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptBlob {
    pub digest: Digest,
    /// What the stored bytes hash to now.
    pub actual: Digest,
    pub size: u64,
    /// Where a repair moved the bytes.
    pub moved_to: Option<String>,
}

/// Whether fsck only reports or also repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fsck {
    Report,
    Repair,
}

/// What `gc` did (or would do, in a dry run).
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub abandoned_drafts: Vec<BuildId>,
    pub deleted: Vec<Digest>,
    pub freed_bytes: u64,
    pub kept: u64,
}

/// Options of one gc run; `None` takes the server's setting.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    pub dry_run: bool,
    pub draft_max_age: Option<Duration>,
    pub grace: Option<Duration>,
}

/// A new token and its secret (shown once).
#[derive(Debug, Clone)]
pub struct CreatedToken {
    pub token: TokenRecord,
    pub secret: String,
}

/// What a new token is limited to; empty: everything its role allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub service: Option<ServiceName>,
    /// Agent tokens only, with `service`.
    pub environment: Option<EnvName>,
}

/// The prefix of every token secret, so a leaked one is easy to recognise.
pub const TOKEN_PREFIX: &str = "tug_";

/// The use cases. Cheap to clone.
#[derive(Clone)]
pub struct Tugboat {
    db: Db,
    store: Arc<dyn BlobStore>,
    settings: Settings,
    clock: Clock,
    /// The agents waiting for a place in paced rollouts, and what this
    /// server knows of their rollouts (see [`Tugboat::may_update`]).
    rooms: Arc<grants::Rooms>,
    /// Woken after every event recorded here (see [`Tugboat::recorded`]).
    recorded: Arc<tokio::sync::Notify>,
    /// The id of the newest event recorded here, for this server's
    /// consumers to wake on (see [`consumers`]).
    appended: Arc<tokio::sync::watch::Sender<i64>>,
    /// Bumped when a consumer family's set of consumers may have changed
    /// (see [`Tugboat::consumers_changed`]).
    consumers_changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Woken when this instance makes an approval request, so the sweeper
    /// learns when it expires (see [`Tugboat::sweeper`]).
    requests: Arc<tokio::sync::Notify>,
    /// What this server counts for `/metrics`.
    metrics: Arc<Metrics>,
    /// The HTTP client the metric gates query Prometheus with.
    prometheus: reqwest::Client,
    /// The HTTP client webhooks are sent with.
    sender: webhooks::SharedSender,
    /// The running hash of each registry upload session this server
    /// received chunks of.
    uploads: Arc<std::sync::Mutex<HashMap<String, Hasher>>>,
    /// The registry's token signing key, once read from the database (it
    /// never changes).
    registry_key: Arc<tokio::sync::OnceCell<Vec<u8>>>,
    /// Release catalog answers, each with the stamp it was computed at.
    catalogs: Arc<catalog::Answers>,
    /// The APT repositories' signing key, read or created on first use.
    apt_key: Arc<tokio::sync::OnceCell<Arc<AptKey>>>,
}

/// How many builds an ambiguous prefix names at most in its error.
const AMBIGUOUS_SHOWN: usize = 10;

/// How many builds a prefix lookup reads before it calls the prefix
/// ambiguous without looking further.
const PREFIX_MATCHES: u32 = 50;

fn hash_secret(secret: &str) -> String {
    Digest::of(secret.as_bytes()).hex()
}

pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Tugboat {
    pub fn new(db: Db, store: Arc<dyn BlobStore>, settings: Settings) -> Tugboat {
        Tugboat {
            db,
            store,
            settings,
            clock: Arc::new(Utc::now),
            rooms: Arc::default(),
            recorded: Arc::default(),
            appended: Arc::new(tokio::sync::watch::channel(0).0),
            consumers_changed: Arc::new(tokio::sync::watch::channel(0).0),
            requests: Arc::default(),
            metrics: Arc::default(),
            prometheus: verify::client(),
            sender: Arc::default(),
            uploads: Arc::default(),
            registry_key: Arc::default(),
            catalogs: Arc::default(),
            apt_key: Arc::default(),
        }
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Tugboat {
        self.clock = clock;
        self
    }

    /// Notified after each event this instance records, so a server's
    /// change watcher sees its own changes at once rather than at its next
    /// poll of the database.
    pub fn recorded(&self) -> Arc<tokio::sync::Notify> {
        self.recorded.clone()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Where the blobs are stored, for the server's banner.
    pub fn store_description(&self) -> String {
        self.store.describe()
    }

    /// How many tokens were ever revoked: it grows with every revocation, on
    /// any server sharing the database, so a server that reads it now and
    /// then learns that some token was revoked and checks its open streams.
    pub async fn revocation_count(&self) -> Result<i64> {
        Ok(self.db.revocation_count().await?)
    }

    /// Closes the database's connections, once the server stopped serving.
    pub async fn close(&self) {
        self.db.close().await;
    }

    /// The time by this instance's clock: what every record it writes is
    /// stamped with, so a test that sets the clock sees every rule at the
    /// time it set.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }
}

/// The longest age gc accepts (100 years): far beyond any sensible grace
/// period or draft age, and far within the range of the clock's arithmetic.
pub const MAX_GC_AGE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now - age`, where `age` is the caller's `option` (named `name` on the
/// wire) or else the server's `setting`: an age beyond [`MAX_GC_AGE`] is
/// refused, naming the limit, instead of overflowing the clock.
fn gc_cutoff(
    now: DateTime<Utc>,
    option: Option<Duration>,
    name: &str,
    setting: Duration,
    setting_name: &str,
) -> Result<DateTime<Utc>> {
    let (age, what) = match option {
        Some(age) => (age, name.to_string()),
        None => (setting, setting_name.to_string()),
    };
    let too_long = || {
        Error::Invalid(format!(
            "{what} is {} seconds; it must be at most {} (100 years)",
            age.as_secs(),
            MAX_GC_AGE.as_secs()
        ))
    };
    if age > MAX_GC_AGE {
        return Err(too_long());
    }
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
        .ok_or_else(too_long)
}

/// What a build reference names: one build (or none), or the builds an
/// id prefix starts.
pub(crate) enum Named {
    One(Option<Box<BuildRecord>>),
    Prefix {
        prefix: IdPrefix,
        matches: Vec<BuildRecord>,
        /// More builds start with the prefix than `matches` holds.
        more: bool,
    },
}

/// The one build among a prefix's `matches`, or why there is none: not
/// found, or ambiguous naming the candidates (the caller passes only
/// builds it may name).
pub(crate) fn pick(
    reference: &BuildRef,
    prefix: &IdPrefix,
    mut matches: Vec<BuildRecord>,
    more: bool,
) -> Result<BuildRecord> {
    match (matches.len(), more) {
        (0, false) => Err(Error::BuildNotFound(reference.shown())),
        (1, false) => Ok(matches.remove(0)),
        _ => Err(Error::AmbiguousId {
            prefix: prefix.to_string(),
            candidates: matches
                .iter()
                .take(AMBIGUOUS_SHOWN)
                .map(|b| format!("{} ({} {})", b.id, b.service, b.version))
                .collect(),
        }),
    }
}

/// The active token named `name_or_id`, or with that id, or whose id
/// starts with it (a short id as `tug token list` shows it).
fn find_token(tokens: &[TokenRecord], name_or_id: &str) -> Result<TokenRecord> {
    let mut active: Vec<TokenRecord> = tokens.iter().filter(|t| t.revoked_at.is_none()).cloned().collect();
    if let Some(i) = active
        .iter()
        .position(|t| t.name.as_str() == name_or_id || t.id == name_or_id)
    {
        return Ok(active.swap_remove(i));
    }
    let prefix = IdPrefix::parse(name_or_id);
    active.retain(|t| prefix.as_ref().is_some_and(|p| p.matches(&t.id)));
    match active.len() {
        1 => Ok(active.swap_remove(0)),
        0 => Err(Error::TokenNotFound(name_or_id.chars().take(80).collect())),
        _ => Err(Error::AmbiguousId {
            prefix: name_or_id.to_string(),
            candidates: active.iter().map(|t| format!("{} ({})", t.id, t.name)).collect(),
        }),
    }
}

/// Refuses over-long or control-character-laden metadata fields.
fn check_text(field: &str, value: Option<&str>, max: usize) -> Result<()> {
    let Some(v) = value else { return Ok(()) };
    if v.len() > max {
        return Err(Error::Invalid(format!(
            "{field} is longer than {max} bytes; shorten it"
        )));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(Error::Invalid(format!(
            "{field} contains a control character; remove it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_cutoff_refuses_ages_beyond_the_limit_instead_of_overflowing() {
        let now = Utc::now();
        let day = Duration::from_secs(86_400);
        assert_eq!(
            gc_cutoff(now, Some(day), "grace_secs", Duration::ZERO, "setting").unwrap(),
            now - chrono::Duration::days(1)
        );
        assert_eq!(
            gc_cutoff(now, None, "grace_secs", day, "setting").unwrap(),
            now - chrono::Duration::days(1)
        );
        assert_eq!(
            gc_cutoff(now, Some(MAX_GC_AGE), "x", day, "s").unwrap(),
            now - chrono::Duration::days(36_500)
        );
        for huge in [
            MAX_GC_AGE + Duration::from_secs(1),
            Duration::from_secs(9_000_000_000_000),
            Duration::MAX,
        ] {
            let Err(Error::Invalid(message)) = gc_cutoff(now, Some(huge), "grace_secs", day, "setting") else {
                panic!("{huge:?} should be refused");
            };
            assert!(message.starts_with("grace_secs is "), "{message}");
            assert!(message.contains("at most 3153600000 (100 years)"), "{message}");
        }
        let Err(Error::Invalid(message)) =
            gc_cutoff(now, None, "grace_secs", Duration::MAX, "the server's gc_grace_secs")
        else {
            panic!("an out-of-range setting should be refused");
        };
        assert!(message.starts_with("the server's gc_grace_secs is"), "{message}");
    }
}
