//! The wire types of Tugboat's HTTP API, shared by the server and the
//! client so both sides agree by construction. Requests refuse unknown
//! fields; every error is an [`ErrorBody`].
//!
//! Routes (all under `/v1` need `Authorization: Bearer <token>`):
//! - `GET /healthz`
//! - `GET|POST /v1/services`
//! - `GET|POST /v1/tokens`, `DELETE /v1/tokens/{name-or-id}`
//! - `POST /v1/blobs/missing`, `HEAD|GET|PUT /v1/blobs/{digest}`
//! - `GET|POST /v1/builds`, `GET /v1/builds/{id-or-digest}`,
//!   `GET /v1/builds/{id}/manifest`, `POST /v1/builds/{id}/artifacts`,
//!   `POST /v1/builds/{id}/seal`
//! - `POST /v1/admin/fsck[?repair=true]`, `POST /v1/admin/gc`
//! - `GET /v1/events` (Server-Sent Events of [`Event`])
//! - `GET /v1/audit/verify`, `GET /v1/audit/export` (JSON lines of
//!   [`AuditRecord`])
//! - `GET|POST /v1/webhooks`, `DELETE /v1/webhooks/{id}`,
//!   `GET /v1/webhooks/{id}/deliveries`,
//!   `POST /v1/webhooks/deliveries/{delivery}/redeliver`
//!
//! Public routes (no token; only what public environments published):
//! - `GET /v1/releases/{service}[?env=E&limit=N&cursor=C]` ([`Catalog`])
//! - `GET|HEAD /dl/{service}/{version}/{artifact}`,
//!   `GET|HEAD /dl/{service}/{env}/latest/{artifact}`
//! - `GET /releases/{service}` (the same catalog as an HTML page)

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod catalog;
mod event;
mod webhook;

pub use catalog::{
    Catalog, CatalogQuery, Changelog, ChangelogEntry, CurrentRelease, PublicEnvironment, PublishedVersion,
    ReleaseArtifact, ReleaseEnvironment, ReleaseSource,
};

pub use event::{
    Actor, Approval, AuditBreak, AuditExportQuery, AuditRecord, AuditVerification, Change, Deployed, DeploymentKind,
    Event, EventAgent, EventBuild, EventSource, EventToken, EventWebhook, EVENT_SCHEMA_VERSION,
};
use tug_core::{
    ArtifactName, ArtifactSpec, BuildId, BuildSource, BuildState, CiRun, Digest, EnvName, Role, ServiceName, TokenName,
    Version,
};
pub use webhook::{CreateWebhook, CreatedWebhook, Delivery, DeliveryList, Webhook, WebhookList};

/// The body of every 4xx and 5xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Stable, machine-readable: `build_not_found`, `digest_mismatch`, …
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateService {
    pub name: ServiceName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: ServiceName,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceList {
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: TokenName,
    pub role: Role,
    /// Limits the token to one service: it sees and acts on nothing else,
    /// whatever its role (not for admin tokens).
    #[serde(default)]
    pub service: Option<ServiceName>,
    /// Limits an agent token to one environment of `service`: it follows
    /// (channel, blobs, reports) only that environment. The agents of a
    /// private environment need such a token to see the embargoed builds
    /// deployed there.
    #[serde(default, alias = "env", skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    /// The shortest prefix of `id` no other token shares; `tug token
    /// revoke` takes it.
    #[serde(default)]
    pub short_id: String,
    pub name: TokenName,
    pub role: Role,
    pub service: Option<ServiceName>,
    /// The one environment of `service` an agent token follows.
    #[serde(default)]
    pub environment: Option<EnvName>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new token with its secret, shown only in this response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: Token,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<Token>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingBlobs {
    pub digests: Vec<Digest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingBlobsResponse {
    /// The asked-for digests the store does not have, in the order asked.
    pub missing: Vec<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStored {
    pub digest: Digest,
    pub size: u64,
    /// `false` when the blob was already stored and no body was read.
    pub created: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBuild {
    pub service: ServiceName,
    pub version: Version,
    #[serde(default)]
    pub source: BuildSource,
    #[serde(default)]
    pub ci: CiRun,
    /// Artifacts that must be present before the build may be sealed.
    #[serde(default)]
    pub expected: Vec<ArtifactName>,
    /// A security release: visible to admins and approvers only, deployable
    /// to private environments only, until unembargoed.
    #[serde(default)]
    pub embargoed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub id: BuildId,
    /// The shortest prefix of `id` no other build shares (as git shortens
    /// commits); every route that reads a build id takes it.
    #[serde(default)]
    pub short_id: String,
    pub service: ServiceName,
    pub version: Version,
    pub state: BuildState,
    pub source: BuildSource,
    pub ci: CiRun,
    pub expected: Vec<ArtifactName>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub sealed_at: Option<DateTime<Utc>>,
    /// The digest of the canonical manifest, once sealed.
    pub manifest_digest: Option<Digest>,
    pub artifact_count: u64,
    pub embargoed: bool,
    /// Set once the build is yanked: it never deploys again.
    pub yanked_at: Option<DateTime<Utc>>,
    pub yanked_by: Option<String>,
    pub yank_reason: Option<String>,
    /// Agents install it at once, outside maintenance windows.
    #[serde(default)]
    pub critical: bool,
    /// Present when one build is shown, absent in lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<ArtifactSpec>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildList {
    pub builds: Vec<Build>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterArtifacts {
    pub artifacts: Vec<ArtifactSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactsRegistered {
    /// How many were new (a retried push re-registers nothing).
    pub added: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptBlob {
    pub digest: Digest,
    /// What the stored bytes hash to now.
    pub actual: Digest,
    pub size: u64,
    /// Where `repair` moved the bytes (outside the blobs, kept for
    /// inspection); the digest is then missing until uploaded again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
}

/// Query of `POST /v1/admin/fsck`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsckQuery {
    /// Move corrupt blobs aside so the next upload stores them again.
    #[serde(default)]
    pub repair: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FsckReport {
    pub checked: u64,
    pub bytes: u64,
    pub corrupt: Vec<CorruptBlob>,
    /// Digests that builds refer to but the store lacks (after a repair,
    /// including those it moved aside).
    pub missing: Vec<Digest>,
    /// The artifacts that need a corrupt or missing blob, by digest.
    #[serde(default)]
    pub needed_by: Vec<tug_core::BlobUse>,
    /// Whether corrupt blobs were moved aside.
    #[serde(default)]
    pub repaired: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// Report what would be removed, remove nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Overrides the server's `draft_max_age` (seconds, at most 100 years).
    #[serde(default)]
    pub draft_max_age_secs: Option<u64>,
    /// Overrides the server's `gc_grace` (seconds, at most 100 years).
    #[serde(default)]
    pub grace_secs: Option<u64>,
}

/// What gc did, or in a dry run exactly what it would do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Drafts abandoned (or that would be), by id.
    pub abandoned_drafts: Vec<BuildId>,
    /// Blobs deleted (or that would be), by digest.
    pub deleted: Vec<Digest>,
    pub freed_bytes: u64,
    pub kept: u64,
}

/// Query of `GET /v1/builds`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildQuery {
    pub service: Option<String>,
    pub branch: Option<String>,
    pub version: Option<String>,
    pub state: Option<String>,
    pub limit: Option<u32>,
    /// `created` (newest first, the default) or `version` (highest
    /// semantic-version precedence first).
    pub sort: Option<String>,
}

/// Body of `PUT /v1/services/{service}/pipeline`: the pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyPipeline {
    /// The pipeline as TOML (the format of `pipeline.toml`).
    pub spec: String,
    /// Apply only if the stored pipeline is still at this revision (a
    /// read-modify-write, as `tug policy apply` does); absent: apply over
    /// whatever is there.
    #[serde(default)]
    pub base_revision: Option<i64>,
}

/// A service's pipeline as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineView {
    pub service: ServiceName,
    pub revision: i64,
    pub changed_at: DateTime<Utc>,
    pub changed_by: Option<String>,
    /// The pipeline as canonical TOML.
    pub spec: String,
    pub pipeline: tug_core::Pipeline,
    /// The server-wide rules that apply to the pipeline's environments on
    /// top of its own policies; no pipeline can change them.
    #[serde(default)]
    pub server_rules: Vec<ServerRuleView>,
    /// In the answer to an apply: whether it stored a new revision
    /// (`false` when the pipeline was already exactly this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
}

/// A server-wide branch restriction (`--server-rule production=^master$`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRuleView {
    pub environment: tug_core::EnvName,
    /// A regex every build's branch must match to enter the environment.
    pub branch_restriction: String,
}

/// Options shared by release, promote and rollback.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployFlags {
    /// Deploy through a freeze window (admin only; needs a reason).
    #[serde(default)]
    pub override_freeze: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Body of `POST /v1/services/{service}/release`: exactly one of build,
/// branch or version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub environment: tug_core::EnvName,
    #[serde(default)]
    pub build: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub version: Option<Version>,
    #[serde(default, flatten)]
    pub flags: DeployFlags,
}

/// Body of `POST /v1/services/{service}/promote`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    pub to: tug_core::EnvName,
    #[serde(default, flatten)]
    pub flags: DeployFlags,
}

/// Body of `POST /v1/services/{service}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    pub environment: tug_core::EnvName,
    /// An earlier build of the environment (default: the previous one).
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default, flatten)]
    pub flags: DeployFlags,
}

/// What a build is, in one line of status or history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSummary {
    pub id: BuildId,
    /// See [`Build::short_id`].
    #[serde(default)]
    pub short_id: String,
    /// The build was yanked: it runs where it was deployed but never
    /// deploys again.
    #[serde(default)]
    pub yanked: bool,
    pub version: Version,
    pub manifest_digest: Option<Digest>,
    pub source: BuildSource,
}

/// One recorded deployment. When its build is embargoed from the token
/// asking, `build`, `summary` and `reason` are absent and `embargoed` is
/// set: the environment runs "an embargoed build". Likewise `replaced` and
/// `replaced_embargoed` for the build it replaced (the reason is then
/// absent too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub service: ServiceName,
    pub environment: tug_core::EnvName,
    pub seq: i64,
    pub kind: tug_core::DeployKind,
    #[serde(default)]
    pub build: Option<BuildId>,
    #[serde(default)]
    pub embargoed: bool,
    /// The build's version and source, when it is known.
    pub summary: Option<BuildSummary>,
    pub requested_by: Option<String>,
    pub deployed_at: DateTime<Utc>,
    /// The build that ran before.
    pub replaced: Option<BuildId>,
    /// The short id of `replaced`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_short_id: Option<String>,
    /// The build that ran before is one the caller may not see: `replaced`
    /// is then empty.
    #[serde(default)]
    pub replaced_embargoed: bool,
    pub reason: Option<String>,
    pub override_freeze: bool,
    /// Who approved the request this deployment carried out (none when the
    /// environment needed no approvals).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
    /// What was written into git repositories for it (a GitOps commit, a
    /// source-repository tag), shown with the build: none when the build is
    /// embargoed from the caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<GitDelivery>,
}

/// One write of a deployment into a git repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitDelivery {
    /// `gitops` (a commit into the environment's GitOps repository) or
    /// `source_tag` (the service's source-repository environment tag).
    pub target: tug_core::pipeline::gitops::DeliveryTarget,
    pub repo: String,
    /// `pending`, `failed` (retried at `next_attempt`), `pushed` or
    /// `skipped`.
    pub state: tug_core::pipeline::gitops::DeliveryState,
    /// The commit pushed (the GitOps commit, or the commit the tag names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub attempts: i64,
    /// Why the last try failed, or why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When a failed delivery is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// One environment in `GET /v1/services/{service}/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvironmentStatus {
    pub environment: tug_core::EnvName,
    pub upstream: Option<tug_core::EnvName>,
    pub auto_release: Option<String>,
    pub auto_release_held: bool,
    pub approvals: u32,
    pub private: bool,
    pub current: Option<Deployment>,
    /// Deployments into this environment waiting for approvals.
    pub pending: Vec<PendingDeployment>,
    /// Requests into this environment that expired (nobody approved them
    /// in time) since its current deployment, newest first.
    #[serde(default)]
    pub expired: Vec<PendingDeployment>,
    /// The agents following this environment.
    pub agents: AgentCounts,
    /// The rollout of the current build to those agents.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// Its metric gate (`verify`) for the build it runs, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

/// An environment's metric gate for the build it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// The gate as `tug policy list` shows it.
    pub verify: String,
    /// How long the query must stay within bounds, in seconds.
    pub for_secs: u64,
    /// Since when it has stayed within bounds; `None` when it is not
    /// within bounds now.
    pub within_since: Option<DateTime<Utc>>,
    pub last_sample: Option<DateTime<Utc>>,
    pub last_value: Option<f64>,
    /// Why the gate blocks promotions out of the environment now.
    pub blocked: Option<String>,
}

/// The rollout of an environment's current build to its agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub service: ServiceName,
    pub environment: tug_core::EnvName,
    pub build: Option<BuildId>,
    /// The deployment's sequence number in the environment.
    pub seq: i64,
    /// As the pipeline sets it: `canary of 2, then rolling, 25% at a time`;
    /// `None` when the environment does not pace rollouts.
    pub strategy: Option<String>,
    /// `rolling`, `halted`, `done`, `unpaced` or `idle`.
    pub state: tug_core::states::RolloutPhase,
    pub reason: Option<String>,
    pub changed_by: Option<String>,
    pub changed_at: Option<DateTime<Utc>>,
    /// Live agents (heard from within the stale limit).
    pub agents: i64,
    /// Agents allowed to take the build.
    pub granted: i64,
    /// Agents healthy on the build.
    pub updated: i64,
    /// Granted agents neither healthy on the build nor given up on it.
    pub in_flight: i64,
    /// Agents that gave up on the build (activation or health check).
    pub failed: i64,
    /// Failures that count towards halting (those before a resume do not).
    pub failures: i64,
    pub halt_after_failures: Option<u32>,
    pub auto_rollback: bool,
    /// Inside a maintenance window now (or there is none).
    pub in_maintenance: bool,
    /// The build is embargoed from the token asking: `build` and `reason`
    /// are absent.
    #[serde(default)]
    pub embargoed: bool,
}

/// `POST …/rollout/halt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltRequest {
    pub environment: tug_core::EnvName,
    pub reason: String,
}

/// `POST …/rollout/resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    pub environment: tug_core::EnvName,
}

/// How many agents of an environment run what, and how they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCounts {
    pub total: u64,
    /// Agents running the environment's current build.
    pub on_current: u64,
    pub healthy: u64,
    pub failed: u64,
    /// No heartbeat for a minute.
    pub stale: u64,
    /// Agents per build they run (`none`; `embargoed` for the builds the
    /// token asking may not see).
    pub by_build: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub service: ServiceName,
    pub pipeline_revision: i64,
    pub environments: Vec<EnvironmentStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    pub deployments: Vec<Deployment>,
}

/// A deployment waiting for approvals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDeployment {
    pub id: String,
    pub environment: tug_core::EnvName,
    pub kind: tug_core::DeployKind,
    pub build: BuildId,
    /// The short id of `build` (empty where the server did not fill it).
    #[serde(default)]
    pub build_short_id: String,
    /// pending, deployed, rejected, expired or superseded.
    pub state: tug_core::states::RequestState,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Who approved so far.
    pub approved_by: Vec<String>,
    /// How many approvals the environment needs.
    pub need: u32,
}

/// The answer to release, promote and rollback: deployed (201), or waiting
/// for approvals (202).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployResult {
    pub status: DeployStatus,
    pub deployment: Option<Deployment>,
    pub pending: Option<PendingDeployment>,
}

/// What became of a release, promote or rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// The build is deployed (`deployment` says how).
    Deployed,
    /// The deployment waits for approvals (`pending` says for which).
    PendingApproval,
}

impl DeployStatus {
    /// Its text on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Deployed => "deployed",
            DeployStatus::PendingApproval => "pending_approval",
        }
    }
}

impl std::fmt::Display for DeployStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to `POST /v1/services/{service}/environments/{env}/resume`:
/// the hold is lifted and auto-release caught up at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resumed {
    pub service: ServiceName,
    pub environment: tug_core::EnvName,
    pub auto_release_held: bool,
    /// The newest eligible build of the branch deployed (or waiting for
    /// approvals); `None` when the environment already runs it or there is
    /// none.
    #[serde(default)]
    pub result: Option<DeployResult>,
    /// Why the newest build could not go in yet (a freeze window, say);
    /// auto-release tries again periodically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<ErrorBody>,
}

/// Body of `POST /v1/services/{service}/approve` and `/reject`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    pub environment: tug_core::EnvName,
    /// The build whose deployment waits (id or manifest digest).
    pub build: String,
}

/// What an approval or rejection came to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decided {
    pub pending: PendingDeployment,
    /// Set when this approval was the last one needed.
    pub deployment: Option<Deployment>,
}

/// Body of `POST /v1/builds/{build}/yank`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Yank {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Query of `GET /v1/services/{service}/next-version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextVersionQuery {
    /// `cloud` (needs `commit`), `major`, `minor` or `patch`.
    pub bump: String,
    #[serde(default)]
    pub commit: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NextVersion {
    /// The semantic version, as builds carry it.
    pub version: Version,
    /// The same with a leading `v`, as git tags and RFD 134 write it.
    pub tag: String,
}

/// Query of `GET /v1/services/{service}/diff`: each side is an environment
/// name or a build id / manifest digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    pub from: String,
    pub to: String,
}

/// A side the token asking may not see is absent, with `from_embargoed`
/// or `to_embargoed` set; nothing is compared then (no changes, and the
/// source range names the visible side only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffResult {
    #[serde(default)]
    pub from: Option<BuildSummary>,
    #[serde(default)]
    pub from_embargoed: bool,
    #[serde(default)]
    pub to: Option<BuildSummary>,
    #[serde(default)]
    pub to_embargoed: bool,
    pub changes: Vec<tug_core::diff::ArtifactChange>,
    pub unchanged: u64,
    pub source: tug_core::diff::SourceRange,
}

/// Query of `GET /v1/events`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only this service's events.
    #[serde(default)]
    pub service: Option<String>,
    /// Replay events after this id (default: only new events; the
    /// `Last-Event-ID` header does the same for reconnecting clients).
    #[serde(default)]
    pub since: Option<i64>,
}

/// One revision in `GET /v1/services/{service}/pipeline/history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineRevision {
    pub revision: i64,
    pub changed_at: DateTime<Utc>,
    pub changed_by: Option<String>,
    /// The pipeline of this revision, as canonical TOML.
    pub spec: String,
    /// What it changed from the revision before (for the first revision:
    /// every environment and policy it added).
    #[serde(default)]
    pub changes: Vec<tug_core::pipeline_changes::PipelineChange>,
}

/// One file an agent fetches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelArtifact {
    pub name: ArtifactName,
    pub kind: tug_core::ArtifactKind,
    pub platform: Option<tug_core::Platform>,
    pub digest: Digest,
    pub size: u64,
    /// Where to GET the bytes, relative to the server (`/v1/blobs/<digest>`).
    pub url: String,
    /// Install it with its executable bits (omitted when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
}

/// `GET /v1/channels/{service}/{env}?platform=…[&wait=60s]`: what the
/// environment wants agents of that platform to run. The `ETag` names the
/// answer; with `If-None-Match` and `wait`, the request is held until the
/// answer changes or the wait ends (then `304 Not Modified`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub service: ServiceName,
    pub environment: tug_core::EnvName,
    /// `None` while the environment runs nothing.
    pub build: Option<BuildId>,
    pub version: Option<Version>,
    pub manifest_digest: Option<Digest>,
    /// Install even outside maintenance windows.
    pub critical: bool,
    /// The environment runs a build embargoed from the token asking: no
    /// build, version, digest or artifact is named (an agent keeps what it
    /// runs). The agents of a private environment follow it with an agent
    /// token scoped to it (`--service S --env E`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub embargoed: bool,
    /// Whether the asking agent may update now (maintenance windows and
    /// rollout pacing).
    pub may_update: bool,
    /// Why it may not, when it may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The artifacts for the asked platform (and those without one).
    pub artifacts: Vec<ChannelArtifact>,
}

/// An agent's state: defined in `tug-core` with its one text form.
pub use tug_core::states::AgentState;

/// How the process an agent supervises (`--exec`) last ended on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessExit {
    /// The build it ran.
    #[serde(default)]
    pub build: Option<BuildId>,
    /// Its exit code, when it exited.
    #[serde(default)]
    pub code: Option<i32>,
    /// The signal that killed it (`SIGKILL`), when one did.
    #[serde(default)]
    pub signal: Option<String>,
    pub at: DateTime<Utc>,
    /// The last lines it wrote to stderr (at most 20 lines, 4 KiB).
    #[serde(default)]
    pub stderr: String,
}

impl std::fmt::Display for ProcessExit {
    /// `exited with code 126`, `killed by signal SIGKILL`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, &self.signal) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => f.write_str("exited"),
        }
    }
}

/// `POST /v1/agents/report`: an agent's heartbeat and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    /// Stable across restarts (kept in the agent's directory).
    pub agent_id: String,
    pub hostname: String,
    pub platform: tug_core::Platform,
    pub agent_version: String,
    pub service: ServiceName,
    pub environment: tug_core::EnvName,
    /// The build `current` points at.
    pub build: Option<BuildId>,
    pub state: AgentState,
    /// Why, when `failed`.
    #[serde(default)]
    pub error: Option<String>,
    /// The build this agent tried and gave up on (its activation or health
    /// check failed and it went back): what halts a paced rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_build: Option<BuildId>,
    /// Why, when `waiting`: what the channel said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// How the supervised process last ended on its own, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ProcessExit>,
}

/// An agent as the fleet view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    #[serde(flatten)]
    pub report: AgentReport,
    /// The shortest prefix of `agent_id` no other agent shares.
    #[serde(default)]
    pub short_id: String,
    /// The short id of the build the agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_short_id: Option<String>,
    pub last_seen: DateTime<Utc>,
    /// No heartbeat for longer than the server's stale limit.
    pub stale: bool,
    /// The agent runs (or gave up on) a build embargoed from the token
    /// asking: `build`, `failed_build` and `error` are absent.
    #[serde(default)]
    pub embargoed: bool,
}

#[cfg(test)]
mod tests {
    use super::DeployStatus;

    #[test]
    fn deploy_status_text_is_its_json() {
        for s in [DeployStatus::Deployed, DeployStatus::PendingApproval] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<DeployStatus>(&format!("\"{s}\"")).unwrap(), s);
        }
    }
}
