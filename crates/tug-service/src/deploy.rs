//! Pipelines and deployments: apply a pipeline, release a build into an
//! environment, promote what runs upstream, roll back, show status and
//! history, auto-release newly sealed builds. Every deployment is checked
//! against the environment's policies (`tug_core::policy`) and written with
//! the environment's compare-and-set, so concurrent deployments never both
//! win. A promotion is a metadata write: no byte of the build moves.
//!
//! One module per use case (`pipelines`, `deployments`, `approvals`,
//! `queries`); this one holds the types and rules they share.

use chrono::{DateTime, Utc};
use tug_api::{Change, Deployed, DeploymentKind};
use tug_core::pipeline_changes::PipelineChange;
use tug_core::records::{BuildFilter, BuildRecord, DeploymentRecord, DeploymentRequest, PipelineRecord};
use tug_core::short_id::IdPrefix;
use tug_core::states::{self, RequestState};
use tug_core::{
    bump, evaluate, next_cloud_version, Action, BuildFacts, BuildId, BuildRef, BuildState, DeployKind, EnvName,
    Environment, Part, Pipeline, Proposal, Role, ServerRule, ServiceName, Verdict, Version,
};
use tug_db::{CreatedRequest, EnvState, NewDeployment};

mod approvals;
mod deployments;
mod pipelines;
mod queries;

use crate::access::facts_of;
use crate::{AgentCounts, DeploymentView, Error, Principal, Result, Shown, Tugboat};

/// Which build a release names.
#[derive(Debug, Clone)]
pub enum BuildSelector {
    /// A build id or manifest digest.
    Reference(BuildRef),
    /// The newest sealed build of a branch.
    Branch(String),
    /// The newest sealed build with this version.
    Version(Version),
}

/// Options every deployment takes.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// Deploy through a freeze window (admin only, with a reason).
    pub override_freeze: bool,
    pub reason: Option<String>,
}

/// What a deployment request came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The deployment, with the build it put in place (so callers need
    /// not read it again).
    Deployed {
        deployment: DeploymentRecord,
        build: Box<BuildRecord>,
    },
    /// The environment needs approvals; the request waits for them.
    Pending { request: DeploymentRequest, need: u32 },
}

/// What a release, promotion or rollback came to, as its caller may see
/// it (the build it replaced may be embargoed from a deployer).
#[derive(Debug, Clone)]
pub enum Answer {
    Deployed(Box<DeploymentView>),
    Pending { request: Box<DeploymentRequest>, need: u32 },
}

/// What an approval or rejection came to.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The request as it stands after the decision: still pending,
    /// rejected, or deployed (by this approval or by one made at the same
    /// moment).
    pub request: DeploymentRequest,
    pub need: u32,
    /// Set, with the deployed build, when this approval carried the
    /// deployment out.
    pub deployment: Option<(DeploymentRecord, Box<BuildRecord>)>,
}

/// Who asks for a deployment and how it is checked.
pub(crate) struct Intent<'a> {
    pub(crate) service: &'a ServiceName,
    pub(crate) environment: &'a Environment,
    pub(crate) build: BuildRecord,
    pub(crate) kind: DeployKind,
    pub(crate) options: DeployOptions,
    pub(crate) requested_by: Option<String>,
    /// The token that makes the deployment happen (`None`: Tugboat by
    /// itself, as auto-release and auto-rollback do).
    pub(crate) actor: Option<tug_api::Actor>,
    pub(crate) admin: bool,
    /// Approvals from distinct approvers other than the requester.
    pub(crate) approvals: u32,
    /// The approved request this deployment carries out (closed in the
    /// deployment's transaction, so it deploys once).
    pub(crate) request: Option<String>,
    /// The environment's state the caller has already judged (auto-release
    /// compares builds with what runs): the deployment happens only if the
    /// environment is still there. Read afresh when `None`.
    pub(crate) state: Option<EnvState>,
}

/// What changed between two builds. When either side is embargoed from
/// the caller, nothing is compared: the changes are empty and the source
/// range names the visible side only.
#[derive(Debug, Clone)]
pub struct Diff {
    pub old: Shown<BuildRecord>,
    pub new: Shown<BuildRecord>,
    pub changes: Vec<tug_core::diff::ArtifactChange>,
    pub unchanged: u64,
    pub source: tug_core::diff::SourceRange,
}

/// One environment in `status`, as the caller may see it.
#[derive(Debug, Clone)]
pub struct EnvStatus {
    pub environment: Environment,
    pub auto_release_held: bool,
    /// What it runs.
    pub current: Option<DeploymentView>,
    /// Deployments into this environment waiting for approvals (of builds
    /// the caller may see).
    pub pending: Vec<DeploymentRequest>,
    /// Requests into this environment that expired since its current
    /// deployment (since ever, when it runs nothing), newest first.
    pub expired: Vec<DeploymentRequest>,
    /// The rollout of the current build to the environment's agents.
    pub rollout: crate::RolloutStatus,
    /// The agents following it.
    pub agents: AgentCounts,
    /// Its metric gate for the build it runs, when it has one.
    pub gate: Option<crate::GateView>,
}

/// A pipeline as stored, parsed.
#[derive(Debug, Clone)]
pub struct PipelineView {
    pub row: PipelineRecord,
    pub pipeline: Pipeline,
    /// The server-wide rules that apply to its environments.
    pub server_rules: Vec<ServerRule>,
    /// Whether the call that returned it stored a new revision (an apply
    /// identical to the current pipeline stores none).
    pub changed: bool,
}

/// One stored revision of a pipeline and what it changed from the one
/// before.
#[derive(Debug, Clone)]
pub struct PipelineRevision {
    pub row: PipelineRecord,
    pub changes: Vec<PipelineChange>,
}

/// How often an approval that completes a request, or a request made while
/// others are made, tries again after losing a race it need not lose.
const CONFLICT_ATTEMPTS: u32 = 20;

/// How many expired requests `status` shows per environment.
const EXPIRED_SHOWN: u32 = 10;

/// When a request made at `now` expires: refused (rather than overflowing)
/// when the timeout reaches past what a timestamp can hold.
fn expiry(now: DateTime<Utc>, timeout: std::time::Duration, env: &EnvName) -> Result<DateTime<Utc>> {
    chrono::Duration::from_std(timeout)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the approval_timeout of {env} ({}) is too long to compute an expiry; set a shorter one",
                tug_core::format_duration(timeout)
            ))
        })
}

/// How the event log names a deployment of `kind`: a rollback nobody asked
/// for (`by_someone` false) is the automatic one of a halted rollout.
pub(crate) fn deployment_kind(kind: DeployKind, by_someone: bool) -> DeploymentKind {
    match kind {
        DeployKind::Release => DeploymentKind::Release,
        DeployKind::Promote => DeploymentKind::Promote,
        DeployKind::Rollback if by_someone => DeploymentKind::Rollback,
        DeployKind::Rollback => DeploymentKind::AutoRollback,
        DeployKind::AutoRelease => DeploymentKind::AutoRelease,
    }
}

fn already_runs(service: &ServiceName, env: &EnvName, build: &BuildId) -> Error {
    Error::NothingToDeploy(format!("{env} of {service} already runs build {build}"))
}

/// The builds a deployment names: its own and the one it replaced.
fn deployment_builds(d: &DeploymentRecord) -> impl Iterator<Item = BuildId> + '_ {
    d.replaced.iter().chain([&d.build]).cloned()
}

/// Distinct approvals of a request (each approver decides once; the
/// requester cannot).
fn approvals(request: &DeploymentRequest) -> u32 {
    request
        .decisions
        .iter()
        .filter(|(who, d)| *d == states::Decision::Approve && *who != request.requested_by)
        .count() as u32
}

impl<'a> Intent<'a> {
    fn by(
        who: &Principal,
        service: &'a ServiceName,
        environment: &'a Environment,
        build: BuildRecord,
        kind: DeployKind,
        options: DeployOptions,
    ) -> Intent<'a> {
        Intent {
            service,
            environment,
            build,
            kind,
            options,
            requested_by: Some(who.name.to_string()),
            actor: Some(crate::events::actor(who)),
            admin: who.role == Role::Admin,
            approvals: 0,
            request: None,
            state: None,
        }
    }
}

pub(crate) fn environment<'p>(pipeline: &'p Pipeline, name: &EnvName) -> Result<&'p Environment> {
    pipeline.environment(name).ok_or_else(|| Error::EnvironmentNotFound {
        service: pipeline.service.clone(),
        environment: name.clone(),
        known: pipeline
            .environments
            .iter()
            .map(|e| e.name.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_approval_timeout_past_the_end_of_time_is_refused_not_a_panic() {
        let env = EnvName::parse("production").unwrap();
        let now = Utc::now();
        let day = Duration::from_secs(86_400);
        assert_eq!(expiry(now, day, &env).unwrap(), now + chrono::Duration::days(1));
        for timeout in [day * 99_999_999, Duration::MAX, Duration::from_secs(i64::MAX as u64)] {
            let err = expiry(now, timeout, &env).unwrap_err();
            assert!(
                matches!(err, Error::Invalid(ref m) if m.contains("approval_timeout")),
                "{err}"
            );
        }
        // The latest instant still works.
        let last = DateTime::<Utc>::MAX_UTC - chrono::Duration::seconds(1);
        assert!(expiry(last, Duration::from_secs(1), &env).is_ok());
        assert!(expiry(last, Duration::from_secs(2), &env).is_err());
    }
}
