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
use tug_store::{Blob, BlobInfo, BlobStore, ByteStream};

mod access;
mod agents;
mod audit;
mod deploy;
mod error;
mod events;
mod grants;
mod reconcile;
mod rollouts;
mod unchained;

pub use access::{AgentView, DeploymentView, Shown};
pub use agents::{AgentCounts, ChannelStamp, ChannelStamps, ChannelView, STALE_AFTER};
pub use audit::{ExportPage, Since};
pub use deploy::{
    Answer, BuildSelector, Decision, DeployOptions, Diff, EnvStatus, Outcome, PipelineRevision, PipelineView,
};
pub use error::{Cause, Error, ErrorKind};
pub use events::{recordable, EventPage};
pub use grants::Place;
pub use reconcile::SWEEP_EVERY;
pub use rollouts::{Grant, Pacing, RolloutStatus};

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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_blob_size: 64 << 30,
            draft_max_age: Duration::from_secs(7 * 24 * 3600),
            gc_grace: Duration::from_secs(3600),
            server_rules: Vec::new(),
            approval_timeout: Duration::from_secs(24 * 3600),
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
    /// Woken when this instance makes an approval request, so the sweeper
    /// learns when it expires (see [`Tugboat::sweeper`]).
    requests: Arc<tokio::sync::Notify>,
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
            requests: Arc::default(),
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

    pub(crate) fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    // ---- authentication and tokens ----

    /// Finds the token a request presented. Unknown and revoked tokens are
    /// refused; the lookup goes to the database every time, so a revocation
    /// takes effect at once on every server.
    pub async fn authenticate(&self, secret: &str) -> Result<Principal> {
        let Some(row) = self.db.token_by_hash(&hash_secret(secret)).await? else {
            return Err(Error::InvalidToken);
        };
        if row.revoked_at.is_some() {
            return Err(Error::TokenRevoked(row.name));
        }
        Ok(Principal {
            token_id: row.id,
            name: row.name,
            role: row.role,
            service: row.service,
            environment: row.environment,
        })
    }

    pub(crate) fn require(&self, who: &Principal, action: Action) -> Result<()> {
        if who.role.allows(action) {
            Ok(())
        } else {
            Err(Error::Forbidden { role: who.role, action })
        }
    }

    /// Creates the first admin token if the database has none (a new
    /// installation). Returns its secret when one was made.
    pub async fn bootstrap_admin(&self) -> Result<Option<String>> {
        if self.db.count_active_admin_tokens().await? > 0 {
            return Ok(None);
        }
        let name = TokenName::parse("admin").map_err(|e| Error::Invalid(e.to_string()))?;
        match self.insert_token(name, Role::Admin, Scope::default(), None).await {
            Ok(created) => Ok(Some(created.secret)),
            // Another server sharing the database won the race.
            Err(Error::TokenNameTaken(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a token; `created_by` is `None` for the first admin token,
    /// which the server makes by itself.
    async fn insert_token(
        &self,
        name: TokenName,
        role: Role,
        scope: Scope,
        created_by: Option<&Principal>,
    ) -> Result<CreatedToken> {
        tug_core::access::check_scope(role, scope.service.as_ref(), scope.environment.as_ref())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let secret = format!("{TOKEN_PREFIX}{}", hex::encode(raw));
        let token = NewToken {
            id: uuid::Uuid::now_v7().to_string(),
            name,
            role,
            service: scope.service,
            environment: scope.environment,
            secret_hash: hash_secret(&secret),
            created_at: self.now(),
            created_by: created_by.as_ref().map(|who| who.name.to_string()),
        };
        let mut tx = self.db.begin().await?;
        tx.insert_token(&token).await?;
        let row = TokenRecord {
            id: token.id,
            name: token.name,
            role: token.role,
            service: token.service,
            environment: token.environment,
            created_at: token.created_at,
            created_by: token.created_by,
            revoked_at: None,
        };
        let event = self.event(
            row.service.as_ref(),
            created_by.map(events::actor),
            Change::TokenCreated {
                token: events::event_token(&row),
            },
        );
        self.commit(tx, &[event]).await?;
        Ok(CreatedToken { token: row, secret })
    }

    pub async fn create_token(
        &self,
        who: &Principal,
        name: TokenName,
        role: Role,
        scope: Scope,
    ) -> Result<CreatedToken> {
        self.require(who, Action::ManageTokens)?;
        if let (Some(service), Some(env)) = (&scope.service, &scope.environment) {
            // The environment must exist now; a later pipeline may drop
            // it, and the token then follows nothing.
            let view = self.pipeline_view(service).await?;
            deploy::environment(&view.pipeline, env)?;
        }
        self.insert_token(name, role, scope, Some(who)).await
    }

    pub async fn list_tokens(&self, who: &Principal) -> Result<Vec<TokenRecord>> {
        self.require(who, Action::ManageTokens)?;
        Ok(self.db.list_tokens().await?)
    }

    /// Revokes a token by id, or the active token of a name (names are
    /// unique among active tokens; a revoked name may be reused, and the
    /// name then means the new token). The last active admin token cannot
    /// be revoked: nobody could create another. That check and the
    /// revocation are one atomic step in the database, so two admins
    /// revoking each other at once leave one of them.
    pub async fn revoke_token(&self, who: &Principal, name_or_id: &str) -> Result<TokenRecord> {
        self.require(who, Action::ManageTokens)?;
        let shown = || name_or_id.chars().take(80).collect::<String>();
        let tokens = self.db.list_tokens().await?;
        let target = match find_token(&tokens, name_or_id) {
            Ok(t) => t,
            Err(Error::TokenNotFound(_)) => {
                // Not active under that name or id: say so when it was.
                let revoked = tokens
                    .iter()
                    .rev()
                    .find(|t| t.revoked_at.is_some() && (t.id == name_or_id || t.name.as_str() == name_or_id));
                return Err(match revoked {
                    Some(t) => Error::TokenAlreadyRevoked {
                        name: t.name.clone(),
                        at: t.revoked_at.map(rfc3339).unwrap_or_default(),
                    },
                    None => Error::TokenNotFound(shown()),
                });
            }
            Err(e) => return Err(e),
        };
        let mut tx = self.db.begin().await?;
        match tx.revoke_token(&target.id, self.now()).await? {
            Revocation::Revoked(t) => {
                let event = self.event(
                    t.service.as_ref(),
                    Some(events::actor(who)),
                    Change::TokenRevoked {
                        token: events::event_token(&t),
                    },
                );
                // Requests of the token that are still open learn of it
                // from this server's change watcher at once (which the
                // commit wakes).
                self.commit(tx, &[event]).await?;
                Ok(t)
            }
            Revocation::AlreadyRevoked(t) => Err(Error::TokenAlreadyRevoked {
                name: t.name,
                at: t.revoked_at.map(rfc3339).unwrap_or_default(),
            }),
            Revocation::LastAdmin => Err(Error::LastAdmin),
            Revocation::NotFound => Err(Error::TokenNotFound(shown())),
        }
    }

    // ---- services ----

    /// Creates a service; `false` if it existed already.
    pub async fn create_service(&self, who: &Principal, name: &ServiceName) -> Result<bool> {
        self.require(who, Action::ManageServices)?;
        let mut tx = self.db.begin().await?;
        if !tx.create_service(name, self.now()).await? {
            return Ok(false);
        }
        let event = self.event(Some(name), Some(events::actor(who)), Change::ServiceCreated {});
        self.commit(tx, &[event]).await?;
        Ok(true)
    }

    /// Every service the caller's scope covers.
    pub async fn list_services(&self, who: &Principal) -> Result<Vec<(ServiceName, DateTime<Utc>)>> {
        self.require(who, Action::Read)?;
        let mut services = self.db.list_services().await?;
        services.retain(|(s, _)| who.reader().in_scope(s));
        Ok(services)
    }

    // ---- blobs ----

    /// Which of `digests` the store lacks. Those it has are claimed, so gc
    /// leaves them alone while the client registers them.
    pub async fn missing_blobs(&self, who: &Principal, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.require(who, Action::WriteBuilds)?;
        let mut missing = Vec::new();
        let mut present = Vec::new();
        let mut seen = HashSet::new();
        let unique: Vec<Digest> = digests.iter().filter(|d| seen.insert(**d)).copied().collect();
        for (d, stat) in self.stat_all(unique).await {
            match stat? {
                Some(_) => present.push(d),
                None => missing.push(d),
            }
        }
        self.db.claim_blobs(&present, self.now()).await?;
        Ok(missing)
    }

    /// Stores a blob from a stream. When the store already has it the body
    /// is not read at all (an `Expect: 100-continue` client then sends
    /// nothing). `declared_size` is the request's Content-Length, checked
    /// against the limit before a byte is read.
    pub async fn put_blob(
        &self,
        who: &Principal,
        digest: &Digest,
        declared_size: Option<u64>,
        body: ByteStream,
    ) -> Result<Stored> {
        self.require(who, Action::WriteBuilds)?;
        let limit = self.settings.max_blob_size;
        if let Some(size) = declared_size {
            if size > limit {
                return Err(Error::TooLarge { limit });
            }
        }
        if let Some(size) = self.store.stat(digest).await? {
            self.db.claim_blobs(&[*digest], self.now()).await?;
            return Ok(Stored { size, created: false });
        }
        let size = self.store.put(digest, body, limit).await?;
        self.db.claim_blobs(&[*digest], self.now()).await?;
        Ok(Stored { size, created: true })
    }

    /// Stats many blobs, a few at a time, in order.
    async fn stat_all(&self, digests: Vec<Digest>) -> Vec<(Digest, tug_store::Result<Option<u64>>)> {
        let store = self.store.clone();
        futures::stream::iter(digests)
            .map(move |d| {
                let store = store.clone();
                async move { (d, store.stat(&d).await) }
            })
            .buffered(16)
            .collect()
            .await
    }

    /// The size of a blob the caller may read (see
    /// [`Tugboat::get_blob`]); `None` when it is not stored or not the
    /// caller's to read.
    pub async fn stat_blob(&self, who: &Principal, digest: &Digest) -> Result<Option<u64>> {
        self.require(who, Action::Follow)?;
        if !self.may_read_blob(who, digest).await? {
            return Ok(None);
        }
        Ok(self.store.stat(digest).await?)
    }

    /// A blob's bytes. The caller must be able to see a build that refers
    /// to it (a blob only embargoed builds or other services' builds refer
    /// to is not found); a blob no build refers to yet is readable by those
    /// who may upload.
    pub async fn get_blob(&self, who: &Principal, digest: &Digest, start: u64, end: Option<u64>) -> Result<Blob> {
        self.require(who, Action::Follow)?;
        if !self.may_read_blob(who, digest).await? {
            return Err(Error::BlobNotFound(*digest));
        }
        self.store
            .get(digest, start, end)
            .await?
            .ok_or(Error::BlobNotFound(*digest))
    }

    // ---- builds ----

    pub async fn create_build(&self, who: &Principal, draft: BuildDraft) -> Result<BuildRecord> {
        let BuildDraft {
            service,
            version,
            source,
            ci,
            expected,
            embargoed,
        } = draft;
        self.require_in(who, Action::WriteBuilds, &service)?;
        if let Some(commit) = &source.commit {
            tug_core::CommitId::parse(commit).map_err(|e| Error::Invalid(format!("source.{e}")))?;
        }
        check_text("source.branch", source.branch.as_deref(), 255)?;
        check_text("source.tag", source.tag.as_deref(), 255)?;
        check_text("source.repo", source.repo.as_deref(), 2048)?;
        check_text("source.author", source.author.as_deref(), 512)?;
        check_text("ci.url", ci.url.as_deref(), 2048)?;
        if source.message.as_ref().is_some_and(|m| m.len() > 64 * 1024) {
            return Err(Error::Invalid(
                "source.message is longer than 64 KiB; shorten it".into(),
            ));
        }
        let mut unique = HashSet::new();
        if let Some(dup) = expected.iter().find(|e| !unique.insert(*e)) {
            return Err(Error::Invalid(format!(
                "expected artifact {dup} is listed twice; list each name once"
            )));
        }
        let id = BuildId::parse(&uuid::Uuid::now_v7().to_string()).map_err(|e| Error::Invalid(e.to_string()))?;
        let now = self.now();
        let build = NewBuild {
            id: id.clone(),
            service,
            version,
            source,
            ci,
            expected,
            created_at: now,
            created_by: Some(who.name.to_string()),
            created_by_token: Some(who.token_id.clone()),
            embargoed,
        };
        let event = self.event(
            Some(&build.service),
            Some(events::actor(who)),
            Change::BuildCreated {
                build: tug_api::EventBuild {
                    id: build.id.clone(),
                    version: build.version.clone(),
                    manifest_digest: None,
                    source: tug_api::EventSource::from(&build.source),
                    embargoed: build.embargoed,
                },
            },
        );
        let mut tx = self.db.begin().await?;
        tx.insert_build(&build).await?;
        self.commit(tx, &[event]).await?;
        self.db.build(&id).await?.ok_or(Error::BuildNotFound(id.to_string()))
    }

    /// What a build reference names (its id, a prefix of its id, or its
    /// manifest digest), before anyone's sight is applied. Every place that
    /// reads a build reference comes through here by
    /// [`Tugboat::resolve_visible`], so a short id works wherever an id
    /// does.
    pub(crate) async fn named(&self, reference: &BuildRef) -> Result<Named> {
        Ok(match reference.target() {
            BuildTarget::Id(id) => Named::One(self.db.build(id).await?.map(Box::new)),
            BuildTarget::Manifest(d) => Named::One(self.db.build_by_manifest(d).await?.map(Box::new)),
            BuildTarget::Prefix(prefix) => {
                let prefix = prefix.clone();
                let mut matches = self.db.builds_by_id_prefix(&prefix, PREFIX_MATCHES + 1).await?;
                let more = matches.len() > PREFIX_MATCHES as usize;
                matches.truncate(PREFIX_MATCHES as usize);
                Named::Prefix { prefix, matches, more }
            }
        })
    }

    /// The short id of each of `ids` (unique among every build now).
    pub async fn short_build_ids(&self, who: &Principal, ids: &[BuildId]) -> Result<HashMap<BuildId, String>> {
        self.require(who, Action::Read)?;
        Ok(self.db.short_build_ids(ids).await?)
    }

    /// Yanks a sealed build: it never deploys again.
    pub async fn yank_build(&self, who: &Principal, reference: &BuildRef, reason: Option<&str>) -> Result<BuildRecord> {
        self.require(who, Action::Deploy)?;
        let build = self.resolve_visible(who, reference).await?;
        if build.state != BuildState::Sealed {
            return Err(Error::Invalid(format!(
                "build {} is {}; only sealed builds can be yanked",
                build.id, build.state
            )));
        }
        let mut tx = self.db.begin().await?;
        if tx.yank_build(&build.id, self.now(), who.name.as_str(), reason).await? {
            let reason = reason.map(str::to_string);
            let event = self.build_event(who, &build, |build| Change::BuildYanked { build, reason });
            self.commit(tx, &[event]).await?;
        }
        self.build_again(&build.id).await
    }

    /// Marks a sealed build critical: agents install it at once, and
    /// Teleport's updaters hear `critical: yes`.
    pub async fn mark_critical(&self, who: &Principal, reference: &BuildRef) -> Result<BuildRecord> {
        self.require(who, Action::Deploy)?;
        let build = self.resolve_visible(who, reference).await?;
        let mut tx = self.db.begin().await?;
        if !tx.mark_critical(&build.id).await? {
            return Err(Error::Invalid(format!(
                "build {} is {}; only sealed builds can be marked critical",
                build.id, build.state
            )));
        }
        let event = self.build_event(who, &build, |build| Change::BuildCritical { build });
        self.commit(tx, &[event]).await?;
        self.build_again(&build.id).await
    }

    /// Lifts a build's embargo (admin only): it becomes visible to everyone
    /// and may go to any environment, and so do its deployments and events.
    pub async fn unembargo_build(&self, who: &Principal, reference: &BuildRef) -> Result<BuildRecord> {
        self.require(who, Action::ManagePipelines)?;
        let build = self.resolve_visible(who, reference).await?;
        let mut tx = self.db.begin().await?;
        if tx.unembargo_build(&build.id).await? {
            let lifted = BuildRecord {
                embargoed: false,
                ..build.clone()
            };
            let event = self.build_event(who, &lifted, |build| Change::BuildUnembargoed { build });
            self.commit(tx, &[event]).await?;
        }
        self.build_again(&build.id).await
    }

    /// A build read again after a change to it.
    async fn build_again(&self, id: &BuildId) -> Result<BuildRecord> {
        self.db.build(id).await?.ok_or(Error::BuildNotFound(id.to_string()))
    }

    /// A build by id or manifest digest, with its artifacts.
    pub async fn show_build(&self, who: &Principal, reference: &BuildRef) -> Result<BuildView> {
        self.require(who, Action::Read)?;
        let build = self.resolve_visible(who, reference).await?;
        let artifacts = self.db.artifacts(&build.id).await?;
        Ok(BuildView {
            build,
            artifacts: Some(artifacts),
        })
    }

    /// The canonical manifest bytes of a sealed build.
    pub async fn manifest(&self, who: &Principal, reference: &BuildRef) -> Result<(Digest, String)> {
        self.require(who, Action::Read)?;
        let build = self.resolve_visible(who, reference).await?;
        match (build.manifest_digest, build.manifest) {
            (Some(d), Some(m)) => Ok((d, m)),
            _ => Err(Error::NotSealed(build.id)),
        }
    }

    /// Builds matching `filter` that the caller may see: of its service
    /// when scoped, and no embargoed build but its own unless it sees them
    /// all.
    pub async fn list_builds(&self, who: &Principal, mut filter: BuildFilter) -> Result<Vec<BuildRecord>> {
        filter.service = self.listing_scope(who, Action::Read, filter.service.as_ref())?;
        filter.hide_embargoed = !who.reader().sees_every_embargoed_build();
        filter.unless_created_by_token = Some(who.token_id.clone());
        if let Some(s) = &filter.service {
            if !self.db.service_exists(s).await? {
                return Err(Error::ServiceNotFound(s.clone()));
            }
        }
        let builds = self.db.list_builds(&filter).await?;
        // The query left out what the rule hides; the rule has the last word.
        let sights = self.sights(who, builds.iter().map(|b| b.id.clone()).collect()).await?;
        Ok(builds.into_iter().filter(|b| sights.full(&b.id)).collect())
    }

    /// Registers artifacts whose blobs are already stored. All or nothing.
    pub async fn register_artifacts(
        &self,
        who: &Principal,
        reference: &BuildRef,
        specs: Vec<ArtifactSpec>,
    ) -> Result<u64> {
        self.require(who, Action::WriteBuilds)?;
        let build = self.resolve_visible(who, reference).await?;
        if specs.is_empty() {
            return Err(Error::Invalid("no artifacts given; send at least one".into()));
        }
        let mut names = HashSet::new();
        if let Some(dup) = specs.iter().find(|s| !names.insert(&s.name)) {
            return Err(Error::Invalid(format!(
                "artifact name {} appears twice in this request; each name may appear once per build",
                dup.name
            )));
        }
        // Every blob must be stored, with the size the artifact claims.
        let stats = self.stat_all(specs.iter().map(|s| s.digest).collect()).await;
        for (spec, (_, stat)) in specs.iter().zip(stats) {
            match stat? {
                None => {
                    return Err(Error::BlobMissing {
                        name: spec.name.clone(),
                        digest: spec.digest,
                    })
                }
                Some(size) if size != spec.size => {
                    return Err(Error::SizeMismatch {
                        name: spec.name.clone(),
                        claimed: spec.size,
                        stored: size,
                    })
                }
                Some(_) => {}
            }
        }
        Ok(self.db.add_artifacts(&build.id, &specs, self.now()).await?)
    }

    /// Seals a draft: checks the expected artifacts and derivations, stores
    /// the canonical manifest. Sealing a sealed build returns it unchanged.
    /// Either way, the environments that auto-release the build's branch
    /// are reconciled before the answer (so sealing again repairs a release
    /// a crash lost right after the seal).
    pub async fn seal_build(&self, who: &Principal, reference: &BuildRef) -> Result<BuildRecord> {
        self.require(who, Action::WriteBuilds)?;
        let build = self.resolve_visible(who, reference).await?;
        let mut tx = self.db.begin().await?;
        let sealed = tx
            .seal_build(&build.id, self.now(), |b, artifacts| {
                BuildManifest::seal(Draft {
                    id: &b.id,
                    service: &b.service,
                    version: &b.version,
                    source: &b.source,
                    ci: &b.ci,
                    created_at: &rfc3339(b.created_at),
                    expected: &b.expected,
                    artifacts,
                })
            })
            .await;
        match sealed {
            Ok(Ok(row)) => {
                let event = self.build_event(who, &row, |build| Change::BuildSealed { build });
                self.commit(tx, &[event]).await?;
                let row = self.build_again(&row.id).await?;
                self.reconcile_after_seal(&row).await;
                Ok(row)
            }
            Ok(Err(e)) => Err(Error::Seal(e)),
            Err(tug_db::Error::NotDraft {
                state: BuildState::Sealed,
                ..
            }) => {
                // Nothing changed: the transaction (and SQLite's write lock)
                // ends before the reconciliation writes.
                drop(tx);
                let row = self.build_again(&build.id).await?;
                self.reconcile_after_seal(&row).await;
                Ok(row)
            }
            Err(e) => Err(e.into()),
        }
    }

    // ---- maintenance ----

    /// Re-hashes every stored blob and lists those whose bytes no longer
    /// match their name, and digests builds refer to that are gone, with
    /// the builds that need each.
    pub async fn fsck(&self, who: &Principal) -> Result<FsckReport> {
        self.check_store(who, Fsck::Report).await
    }

    /// `fsck`, and moves every corrupt blob aside (see
    /// [`BlobStore::quarantine`]): it then counts as missing, and the next
    /// upload of its digest (`tug push` of the right file) stores it again,
    /// where before it was answered "already stored" and the bytes stayed
    /// wrong for good.
    pub async fn fsck_repair(&self, who: &Principal) -> Result<FsckReport> {
        self.check_store(who, Fsck::Repair).await
    }

    async fn check_store(&self, who: &Principal, mode: Fsck) -> Result<FsckReport> {
        self.require(who, Action::Maintain)?;
        let mut report = FsckReport {
            repaired: mode == Fsck::Repair,
            ..FsckReport::default()
        };
        let blobs = self.store.list().await?;
        let mut present: HashSet<Digest> = blobs.iter().map(|b| b.digest).collect();
        for BlobInfo { digest, .. } in blobs {
            let Some(mut blob) = self.store.get(&digest, 0, None).await? else {
                continue; // deleted since it was listed
            };
            let mut hasher = Hasher::new();
            while let Some(chunk) = blob.body.next().await {
                hasher.update(&chunk.map_err(Error::internal)?);
            }
            let size = hasher.len();
            let actual = hasher.finish();
            report.checked += 1;
            report.bytes += size;
            if actual == digest {
                continue;
            }
            tracing::error!(%digest, %actual, size, "stored blob does not match its digest");
            let moved_to = match mode {
                Fsck::Report => None,
                Fsck::Repair => {
                    let moved = self.store.quarantine(&digest).await?;
                    if let Some(to) = &moved {
                        tracing::warn!(%digest, to, "moved a corrupt blob aside; upload it again");
                        present.remove(&digest);
                    }
                    moved
                }
            };
            report.corrupt.push(CorruptBlob {
                digest,
                actual,
                size,
                moved_to,
            });
        }
        let mut missing: Vec<Digest> = self
            .db
            .referenced_digests()
            .await?
            .into_iter()
            .filter(|d| !present.contains(d))
            .collect();
        missing.sort();
        let damaged: std::collections::BTreeSet<Digest> = report
            .corrupt
            .iter()
            .map(|c| c.digest)
            .chain(missing.iter().copied())
            .collect();
        report.needed_by = self.db.blob_users(&damaged.into_iter().collect::<Vec<_>>()).await?;
        report.missing = missing;
        Ok(report)
    }

    /// Abandons stale drafts, then deletes blobs no build refers to. A blob
    /// of a sealed build is never deleted; blobs younger than the grace
    /// period, or claimed by a push within it, are kept. A dry run changes
    /// nothing and reports what the same run would do: the drafts it would
    /// abandon and the blobs that abandoning them would free.
    pub async fn gc(&self, who: &Principal, options: GcOptions) -> Result<GcReport> {
        self.require(who, Action::Maintain)?;
        let now = self.now();
        let draft_cutoff = gc_cutoff(
            now,
            options.draft_max_age,
            "draft_max_age_secs",
            self.settings.draft_max_age,
            "the server's draft_max_age_secs",
        )?;
        let blob_cutoff = gc_cutoff(
            now,
            options.grace,
            "grace_secs",
            self.settings.gc_grace,
            "the server's gc_grace_secs",
        )?;
        let mut report = GcReport {
            abandoned_drafts: if options.dry_run {
                self.db.stale_drafts(draft_cutoff).await?
            } else {
                self.db.abandon_stale_drafts(draft_cutoff).await?
            },
            ..GcReport::default()
        };
        report.abandoned_drafts.sort();
        let referenced = self.db.digests_kept_after_abandoning(draft_cutoff).await?;
        let claimed = self.db.claimed_since(blob_cutoff).await?;
        for blob in self.store.list().await? {
            let young = blob.modified > blob_cutoff;
            if referenced.contains(&blob.digest) || claimed.contains(&blob.digest) || young {
                report.kept += 1;
                continue;
            }
            if options.dry_run {
                report.deleted.push(blob.digest);
                report.freed_bytes += blob.size;
                continue;
            }
            // A registration may have landed since the set was read.
            if self.db.is_referenced(&blob.digest).await? {
                report.kept += 1;
                continue;
            }
            if self.store.delete(&blob.digest).await? {
                self.db.forget_claim(&blob.digest).await?;
                report.deleted.push(blob.digest);
                report.freed_bytes += blob.size;
            }
        }
        Ok(report)
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
