//! The records the database stores and the service hands out: builds,
//! tokens, deployments, deployment requests, pipeline revisions and agent
//! reports, as plain data. They are defined here, not in the database
//! layer, so that the service and the server speak of them without knowing
//! how they are stored.

use chrono::{DateTime, Utc};

use crate::states::{AgentState, Decision, RequestState};
use crate::{
    ArtifactName, BuildId, BuildSource, BuildState, CiRun, DeployKind, Digest, EnvName, Platform, Role, ServiceName,
    TokenName, Version,
};

/// An agent's newest report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub agent_id: String,
    pub service: ServiceName,
    pub environment: EnvName,
    pub hostname: String,
    pub platform: Platform,
    pub agent_version: String,
    pub build: Option<BuildId>,
    pub state: AgentState,
    pub error: Option<String>,
    /// The build the agent tried and gave up on.
    pub failed_build: Option<BuildId>,
    /// Why it waits, when `waiting`.
    pub waiting: Option<String>,
    /// How its supervised process last ended on its own.
    pub exit: Option<ExitRecord>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// How an agent's supervised process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    pub build: Option<BuildId>,
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub at: DateTime<Utc>,
    pub stderr: String,
}

/// A stored build, without its artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    pub id: BuildId,
    /// The shortest prefix of the id no other build shares (see
    /// `tug_core::short_id`), as of this read.
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
    /// The id of the token that created it.
    pub created_by_token: Option<String>,
    pub sealed_at: Option<DateTime<Utc>>,
    pub manifest_digest: Option<Digest>,
    /// The canonical manifest bytes, as text, once sealed.
    pub manifest: Option<String>,
    pub artifact_count: u64,
    pub yanked_at: Option<DateTime<Utc>>,
    pub yanked_by: Option<String>,
    pub yank_reason: Option<String>,
    pub embargoed: bool,
    /// Agents install it at once, outside maintenance windows.
    pub critical: bool,
}

/// Which builds to list. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    pub service: Option<ServiceName>,
    pub branch: Option<String>,
    pub version: Option<Version>,
    pub state: Option<BuildState>,
    pub limit: u32,
    /// Leave embargoed builds out (for callers who may not see them)…
    pub hide_embargoed: bool,
    /// …except those created by the token with this id.
    pub unless_created_by_token: Option<String>,
    /// Newest by semantic-version precedence instead of by creation.
    pub by_version: bool,
}

/// One revision of a service's pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineRecord {
    pub service: ServiceName,
    pub revision: i64,
    /// The pipeline as canonical TOML.
    pub spec: String,
    pub changed_at: DateTime<Utc>,
    pub changed_by: Option<String>,
}

/// A recorded deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRecord {
    pub id: String,
    pub service: ServiceName,
    pub environment: EnvName,
    pub seq: i64,
    pub build: BuildId,
    pub kind: DeployKind,
    pub requested_by: Option<String>,
    pub deployed_at: DateTime<Utc>,
    /// What ran in the environment before.
    pub replaced: Option<BuildId>,
    pub reason: Option<String>,
    pub override_freeze: bool,
    /// The request it carried out, when the environment needed approvals.
    pub request: Option<String>,
    /// Who approved that request, oldest approval first.
    pub approved_by: Vec<String>,
}

/// A deployment waiting for approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRequest {
    pub id: String,
    pub service: ServiceName,
    pub environment: EnvName,
    pub build: BuildId,
    pub kind: DeployKind,
    pub state: RequestState,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub override_freeze: bool,
    /// (approver, decision) pairs, oldest first.
    pub decisions: Vec<(String, Decision)>,
}

impl DeploymentRequest {
    /// Whether the request's time ran out by `now` (whatever its state says:
    /// a pending request past its expiry is expired, swept or not).
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// A stored token (without its secret, which is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub name: TokenName,
    pub role: Role,
    pub service: Option<ServiceName>,
    pub environment: Option<EnvName>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
}
