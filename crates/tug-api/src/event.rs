//! The event schema: what the event log records of every change, as
//! `GET /v1/events` streams it, `tug watch` prints it and `GET
//! /v1/audit/export` exports it. It is a public contract: consumers outside
//! Tugboat (webhooks, chat, audit trails) read it, so a field is never
//! removed or changes meaning within one [`EVENT_SCHEMA_VERSION`]; new
//! kinds and new optional fields may appear, and readers ignore what they
//! do not know.
//!
//! An event is one JSON object: its log position (`id`), the schema
//! version, when, which service, who (`actor`), and the `kind` with the
//! fields that kind carries. Its canonical JSON (the object without `id`,
//! compact, fields in the order declared here) is what the log stores and
//! hash-chains.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tug_core::{BuildId, BuildSource, Digest, EnvName, Role, ServiceName, TokenName, Version};

/// The schema version this Tugboat writes.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The event's position in the log: ids grow by one per event, in the
    /// order the changes committed. Absent (0) before it is recorded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: i64,
    pub schema_version: u32,
    pub at: DateTime<Utc>,
    /// The service the change belongs to (`null`: none, as for a token not
    /// scoped to a service).
    pub service: Option<ServiceName>,
    /// The token that made the change; `null` when Tugboat made it by
    /// itself (auto-release, the expiry of a request, a rollout halted by
    /// failures, an automatic rollback, the first admin token).
    pub actor: Option<Actor>,
    /// Only in what a reader receives: the event concerns a build that
    /// reader may not see (an embargoed build), so every field naming or
    /// describing that build is `null` or absent.
    #[serde(default, skip_serializing_if = "is_false")]
    pub embargoed: bool,
    #[serde(flatten)]
    pub change: Change,
}

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The token's name.
    pub name: TokenName,
    pub role: Role,
}

/// A build as events name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBuild {
    pub id: BuildId,
    pub version: Version,
    /// The digest of its canonical manifest, once sealed.
    pub manifest_digest: Option<Digest>,
    pub source: EventSource,
    /// A security release, seen only by those the embargo allows (as the
    /// build was when the event was recorded).
    pub embargoed: bool,
}

/// Where a build's code came from (its commit message is left out: read
/// the build for it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSource {
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub tag: Option<String>,
    pub author: Option<String>,
}

impl From<&BuildSource> for EventSource {
    fn from(s: &BuildSource) -> EventSource {
        EventSource {
            repo: s.repo.clone(),
            branch: s.branch.clone(),
            commit: s.commit.clone(),
            tag: s.tag.clone(),
            author: s.author.clone(),
        }
    }
}

/// How a build came to be deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    /// A build someone named (`tug release`).
    Release,
    /// What runs upstream (`tug promote`).
    Promote,
    /// Back to a build that ran before (`tug rollback`).
    Rollback,
    /// The newest build of the environment's auto-release branch.
    AutoRelease,
    /// Back to the build before, because the rollout halted on failures.
    AutoRollback,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Release => "release",
            DeploymentKind::Promote => "promote",
            DeploymentKind::Rollback => "rollback",
            DeploymentKind::AutoRelease => "auto_release",
            DeploymentKind::AutoRollback => "auto_rollback",
        }
    }
}

impl std::fmt::Display for DeploymentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token as events name it (never its secret or its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventToken {
    pub id: String,
    pub name: TokenName,
    pub role: Role,
    pub service: Option<ServiceName>,
    pub environment: Option<EnvName>,
}

/// What changed: the event's `kind` and the fields it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Change {
    /// A service was created.
    #[serde(rename = "service.created")]
    ServiceCreated {},
    /// A draft build was created.
    #[serde(rename = "build.created")]
    BuildCreated { build: EventBuild },
    /// A build was sealed: its manifest digest is final.
    #[serde(rename = "build.sealed")]
    BuildSealed { build: EventBuild },
    /// A build was yanked: it never deploys again.
    #[serde(rename = "build.yanked")]
    BuildYanked { build: EventBuild, reason: Option<String> },
    /// A build's embargo was lifted: everyone may see it now.
    #[serde(rename = "build.unembargoed")]
    BuildUnembargoed { build: EventBuild },
    /// A build was marked critical: agents install it at once.
    #[serde(rename = "build.critical")]
    BuildCritical { build: EventBuild },
    /// A new revision of the service's pipeline was applied.
    #[serde(rename = "pipeline.applied")]
    PipelineApplied { revision: i64 },
    /// A build was deployed into an environment.
    #[serde(rename = "deployment")]
    Deployment(Deployed),
    /// A deployment waits for approvals.
    #[serde(rename = "approval.requested")]
    ApprovalRequested(Approval),
    /// An approver approved a waiting deployment.
    #[serde(rename = "approval.approved")]
    ApprovalApproved(Approval),
    /// An approver rejected a waiting deployment: it will not happen.
    #[serde(rename = "approval.rejected")]
    ApprovalRejected(Approval),
    /// A waiting deployment was not approved in time.
    #[serde(rename = "approval.expired")]
    ApprovalExpired(Approval),
    /// A newer auto-release request replaced a waiting one.
    #[serde(rename = "approval.superseded")]
    ApprovalSuperseded(Approval),
    /// A manual release or rollback holds the environment's auto-release.
    #[serde(rename = "auto_release.held")]
    AutoReleaseHeld { environment: EnvName },
    /// The environment's auto-release hold was lifted.
    #[serde(rename = "auto_release.resumed")]
    AutoReleaseResumed { environment: EnvName },
    /// An agent of a paced rollout became healthy on its build or gave up
    /// on it.
    #[serde(rename = "rollout.progress")]
    RolloutProgress {
        environment: EnvName,
        /// `null` when embargoed from the reader.
        build: Option<EventBuild>,
        /// The deployment's sequence number in the environment.
        seq: i64,
        agent: EventAgent,
    },
    /// A rollout was halted: no further agent takes the build.
    #[serde(rename = "rollout.halted")]
    RolloutHalted {
        environment: EnvName,
        build: Option<EventBuild>,
        seq: i64,
        /// Why (`null` when embargoed from the reader: it may name the build).
        reason: Option<String>,
    },
    /// A halted rollout goes on; failures so far no longer count.
    #[serde(rename = "rollout.resumed")]
    RolloutResumed {
        environment: EnvName,
        build: Option<EventBuild>,
        seq: i64,
    },
    /// A halted rollout could not roll back automatically.
    #[serde(rename = "rollout.rollback_failed")]
    RolloutRollbackFailed {
        environment: EnvName,
        build: Option<EventBuild>,
        /// Why (`null` when embargoed from the reader).
        error: Option<String>,
    },
    /// A token was created.
    #[serde(rename = "token.created")]
    TokenCreated { token: EventToken },
    /// A token was revoked.
    #[serde(rename = "token.revoked")]
    TokenRevoked { token: EventToken },
    /// A webhook was created: its events are sent from the next one on.
    #[serde(rename = "webhook.created")]
    WebhookCreated { webhook: EventWebhook },
    /// A webhook was deleted: nothing more is sent to it.
    #[serde(rename = "webhook.deleted")]
    WebhookDeleted { webhook: EventWebhook },
}

/// A webhook as events name it: never its secret, and its URL as
/// [`EventWebhook::url`] says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventWebhook {
    pub id: String,
    /// The endpoint without what may be a credential: its query string is
    /// shown as `?…`, and a Slack URL (whose path is the credential) as
    /// its origin and `/…`.
    pub url: String,
    pub kind: tug_core::webhook::WebhookKind,
    /// Only this service's events are sent (`null`: every service's).
    pub service: Option<ServiceName>,
    /// The event filter: kinds and patterns (`approval.*`).
    pub events: Vec<String>,
}

/// A deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployed {
    pub environment: EnvName,
    /// `null` when embargoed from the reader.
    pub build: Option<EventBuild>,
    pub deployment_kind: DeploymentKind,
    /// The environment's deployment sequence number it took.
    pub seq: i64,
    /// The build that ran before (`null`: none did, or it is embargoed
    /// from the reader, then with `replaced_embargoed`).
    pub replaced: Option<BuildId>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub replaced_embargoed: bool,
    /// Deployed through a freeze window by an admin's override.
    pub override_freeze: bool,
    /// Why, as given (`null` when embargoed from the reader: it may name
    /// the build).
    pub reason: Option<String>,
    /// Who asked for it, when it waited for approvals (the actor is then
    /// the approver whose approval carried it out).
    pub requested_by: Option<String>,
    /// The approvers of the request it carried out, oldest first.
    pub approved_by: Vec<String>,
}

/// A deployment that waits (or waited) for approvals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub environment: EnvName,
    pub build: EventBuild,
    /// The request's id (`null` only in events recorded before the log
    /// had this schema).
    pub request: Option<String>,
    /// The kind of deployment asked for.
    pub deployment_kind: DeploymentKind,
    pub requested_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub override_freeze: bool,
    pub reason: Option<String>,
}

/// An agent as rollout events name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAgent {
    pub id: String,
    pub hostname: String,
    /// Its state as it reported it (`healthy`, `failed`, …).
    pub state: tug_core::states::AgentState,
    /// Why it gave up on the build (`null` when embargoed from the reader).
    pub error: Option<String>,
}

impl Change {
    /// Every `kind` an event may have (what a webhook's event filter
    /// chooses from).
    pub const KINDS: [&'static str; 23] = [
        "service.created",
        "build.created",
        "build.sealed",
        "build.yanked",
        "build.unembargoed",
        "build.critical",
        "pipeline.applied",
        "deployment",
        "approval.requested",
        "approval.approved",
        "approval.rejected",
        "approval.expired",
        "approval.superseded",
        "auto_release.held",
        "auto_release.resumed",
        "rollout.progress",
        "rollout.halted",
        "rollout.resumed",
        "rollout.rollback_failed",
        "token.created",
        "token.revoked",
        "webhook.created",
        "webhook.deleted",
    ];

    /// The event's `kind`, as the JSON names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::ServiceCreated {} => "service.created",
            Change::BuildCreated { .. } => "build.created",
            Change::BuildSealed { .. } => "build.sealed",
            Change::BuildYanked { .. } => "build.yanked",
            Change::BuildUnembargoed { .. } => "build.unembargoed",
            Change::BuildCritical { .. } => "build.critical",
            Change::PipelineApplied { .. } => "pipeline.applied",
            Change::Deployment(_) => "deployment",
            Change::ApprovalRequested(_) => "approval.requested",
            Change::ApprovalApproved(_) => "approval.approved",
            Change::ApprovalRejected(_) => "approval.rejected",
            Change::ApprovalExpired(_) => "approval.expired",
            Change::ApprovalSuperseded(_) => "approval.superseded",
            Change::AutoReleaseHeld { .. } => "auto_release.held",
            Change::AutoReleaseResumed { .. } => "auto_release.resumed",
            Change::RolloutProgress { .. } => "rollout.progress",
            Change::RolloutHalted { .. } => "rollout.halted",
            Change::RolloutResumed { .. } => "rollout.resumed",
            Change::RolloutRollbackFailed { .. } => "rollout.rollback_failed",
            Change::TokenCreated { .. } => "token.created",
            Change::TokenRevoked { .. } => "token.revoked",
            Change::WebhookCreated { .. } => "webhook.created",
            Change::WebhookDeleted { .. } => "webhook.deleted",
        }
    }

    /// The build the change is about, if one.
    pub fn build(&self) -> Option<&EventBuild> {
        match self {
            Change::BuildCreated { build }
            | Change::BuildSealed { build }
            | Change::BuildYanked { build, .. }
            | Change::BuildUnembargoed { build }
            | Change::BuildCritical { build } => Some(build),
            Change::Deployment(d) => d.build.as_ref(),
            Change::ApprovalRequested(a)
            | Change::ApprovalApproved(a)
            | Change::ApprovalRejected(a)
            | Change::ApprovalExpired(a)
            | Change::ApprovalSuperseded(a) => Some(&a.build),
            Change::RolloutProgress { build, .. }
            | Change::RolloutHalted { build, .. }
            | Change::RolloutResumed { build, .. }
            | Change::RolloutRollbackFailed { build, .. } => build.as_ref(),
            Change::ServiceCreated {}
            | Change::PipelineApplied { .. }
            | Change::AutoReleaseHeld { .. }
            | Change::AutoReleaseResumed { .. }
            | Change::TokenCreated { .. }
            | Change::TokenRevoked { .. }
            | Change::WebhookCreated { .. }
            | Change::WebhookDeleted { .. } => None,
        }
    }

    /// The environment the change happened in, if one.
    pub fn environment(&self) -> Option<&EnvName> {
        match self {
            Change::Deployment(d) => Some(&d.environment),
            Change::ApprovalRequested(a)
            | Change::ApprovalApproved(a)
            | Change::ApprovalRejected(a)
            | Change::ApprovalExpired(a)
            | Change::ApprovalSuperseded(a) => Some(&a.environment),
            Change::AutoReleaseHeld { environment }
            | Change::AutoReleaseResumed { environment }
            | Change::RolloutProgress { environment, .. }
            | Change::RolloutHalted { environment, .. }
            | Change::RolloutResumed { environment, .. }
            | Change::RolloutRollbackFailed { environment, .. } => Some(environment),
            Change::ServiceCreated {}
            | Change::BuildCreated { .. }
            | Change::BuildSealed { .. }
            | Change::BuildYanked { .. }
            | Change::BuildUnembargoed { .. }
            | Change::BuildCritical { .. }
            | Change::PipelineApplied { .. }
            | Change::TokenCreated { .. }
            | Change::TokenRevoked { .. }
            | Change::WebhookCreated { .. }
            | Change::WebhookDeleted { .. } => None,
        }
    }

    /// Whether the change is about a build itself (its life, its
    /// approvals) rather than about an environment that runs it: the
    /// former vanishes for a reader who may not see the build, as the
    /// build does; the latter is shown with the build left out.
    pub fn is_about_the_build(&self) -> bool {
        matches!(
            self,
            Change::BuildCreated { .. }
                | Change::BuildSealed { .. }
                | Change::BuildYanked { .. }
                | Change::BuildUnembargoed { .. }
                | Change::BuildCritical { .. }
                | Change::ApprovalRequested(_)
                | Change::ApprovalApproved(_)
                | Change::ApprovalRejected(_)
                | Change::ApprovalExpired(_)
                | Change::ApprovalSuperseded(_)
        )
    }
}

impl Event {
    /// A new event (not yet recorded) of the current schema.
    pub fn new(at: DateTime<Utc>, service: Option<ServiceName>, actor: Option<Actor>, change: Change) -> Event {
        Event {
            id: 0,
            schema_version: EVENT_SCHEMA_VERSION,
            at,
            service,
            actor,
            embargoed: false,
            change,
        }
    }

    /// The event's `kind`.
    pub fn kind(&self) -> &'static str {
        self.change.kind()
    }

    /// The canonical JSON the log stores and hashes: compact, fields in
    /// their declared order, without the id (which the log assigns).
    pub fn canonical_json(&self) -> String {
        let unrecorded = Event {
            id: 0,
            embargoed: false,
            ..self.clone()
        };
        // A structure of strings, numbers and enums always serializes.
        serde_json::to_string(&unrecorded).unwrap_or_default()
    }
}

/// One line of `GET /v1/audit/export`: an event as recorded, whole, with
/// its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    #[serde(flatten)]
    pub event: Event,
    /// The hash of the event before it (`sha256:` and 64 zeros for the first).
    pub prev_hash: Digest,
    /// sha256 over `tugboat-event`, `prev_hash`, the id and the event's
    /// canonical JSON, separated by newlines.
    pub hash: Digest,
}

/// Query of `GET /v1/audit/export`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditExportQuery {
    /// Events after this id, or at or after this time (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Only this service's events.
    #[serde(default)]
    pub service: Option<String>,
}

/// The answer of `GET /v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerification {
    /// Whether every event hashes to its stored hash and follows the one
    /// before it, up to the log's head.
    pub ok: bool,
    /// Events checked.
    pub events: u64,
    /// The newest event's id and hash, as the log's head records them.
    pub head_id: i64,
    pub head_hash: Digest,
    /// The first event found wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<AuditBreak>,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBreak {
    /// The event named.
    pub id: i64,
    /// `hash_mismatch`, `predecessor_missing`, `unchained`, `unreadable`,
    /// `newest_missing` or `head_mismatch`.
    pub problem: String,
    pub message: String,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> EventBuild {
        EventBuild {
            id: BuildId::parse("0192b1c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d").unwrap(),
            version: Version::parse("1.4.0").unwrap(),
            manifest_digest: None,
            source: EventSource {
                branch: Some("master".into()),
                ..EventSource::default()
            },
            embargoed: false,
        }
    }

    fn deployment() -> Event {
        Event::new(
            "2026-11-22T03:14:05.123Z".parse().unwrap(),
            Some(ServiceName::parse("api").unwrap()),
            Some(Actor {
                name: TokenName::parse("alice").unwrap(),
                role: Role::Deployer,
            }),
            Change::Deployment(Deployed {
                environment: EnvName::parse("prod").unwrap(),
                build: Some(build()),
                deployment_kind: DeploymentKind::Promote,
                seq: 3,
                replaced: None,
                replaced_embargoed: false,
                override_freeze: false,
                reason: None,
                requested_by: None,
                approved_by: vec![],
            }),
        )
    }

    #[test]
    fn an_event_is_one_object_tagged_by_kind_and_reads_back() {
        let mut e = deployment();
        e.id = 42;
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["id"], 42);
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["kind"], "deployment");
        assert_eq!(json["environment"], "prod");
        assert_eq!(json["build"]["version"], "1.4.0");
        assert_eq!(json["deployment_kind"], "promote");
        assert_eq!(json["actor"]["role"], "deployer");
        assert!(json.get("embargoed").is_none());
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.kind(), "deployment");
    }

    #[test]
    fn the_canonical_json_leaves_the_id_out_and_keeps_its_field_order() {
        let mut e = deployment();
        let before = e.canonical_json();
        e.id = 7;
        assert_eq!(e.canonical_json(), before);
        assert!(before.starts_with(
            r#"{"schema_version":1,"at":"2026-11-22T03:14:05.123Z","service":"api","actor":{"name":"alice","role":"deployer"},"kind":"deployment","environment":"prod","build":{"id":"#
        ), "{before}");
        let back: Event = serde_json::from_str(&before).unwrap();
        assert_eq!(back.id, 0);
    }

    #[test]
    fn every_kind_names_itself_as_its_json_does() {
        let b = build();
        let env = EnvName::parse("prod").unwrap();
        let approval = Approval {
            environment: env.clone(),
            build: b.clone(),
            request: Some("r".into()),
            deployment_kind: DeploymentKind::Promote,
            requested_by: "bob".into(),
            expires_at: None,
            override_freeze: false,
            reason: None,
        };
        let token = EventToken {
            id: "t".into(),
            name: TokenName::parse("ci").unwrap(),
            role: Role::Ci,
            service: None,
            environment: None,
        };
        let agent = EventAgent {
            id: "a".into(),
            hostname: "h".into(),
            state: tug_core::states::AgentState::Healthy,
            error: None,
        };
        let changes = vec![
            Change::ServiceCreated {},
            Change::BuildCreated { build: b.clone() },
            Change::BuildSealed { build: b.clone() },
            Change::BuildYanked {
                build: b.clone(),
                reason: None,
            },
            Change::BuildUnembargoed { build: b.clone() },
            Change::BuildCritical { build: b.clone() },
            Change::PipelineApplied { revision: 2 },
            deployment().change,
            Change::ApprovalRequested(approval.clone()),
            Change::ApprovalApproved(approval.clone()),
            Change::ApprovalRejected(approval.clone()),
            Change::ApprovalExpired(approval.clone()),
            Change::ApprovalSuperseded(approval),
            Change::AutoReleaseHeld {
                environment: env.clone(),
            },
            Change::AutoReleaseResumed {
                environment: env.clone(),
            },
            Change::RolloutProgress {
                environment: env.clone(),
                build: Some(b.clone()),
                seq: 1,
                agent,
            },
            Change::RolloutHalted {
                environment: env.clone(),
                build: Some(b.clone()),
                seq: 1,
                reason: Some("r".into()),
            },
            Change::RolloutResumed {
                environment: env.clone(),
                build: Some(b.clone()),
                seq: 1,
            },
            Change::RolloutRollbackFailed {
                environment: env,
                build: Some(b),
                error: None,
            },
            Change::TokenCreated { token: token.clone() },
            Change::TokenRevoked { token },
            Change::WebhookCreated {
                webhook: EventWebhook {
                    id: "w".into(),
                    url: "https://example.com/hook?…".into(),
                    kind: tug_core::webhook::WebhookKind::Github,
                    service: None,
                    events: vec!["deployment".into()],
                },
            },
            Change::WebhookDeleted {
                webhook: EventWebhook {
                    id: "w".into(),
                    url: "https://hooks.slack.com/…".into(),
                    kind: tug_core::webhook::WebhookKind::Slack,
                    service: Some(ServiceName::parse("api").unwrap()),
                    events: vec!["*".into()],
                },
            },
        ];
        assert_eq!(changes.len(), Change::KINDS.len(), "every kind is listed once");
        for change in changes {
            assert!(Change::KINDS.contains(&change.kind()), "{} is listed", change.kind());
            let e = Event::new(Utc::now(), None, None, change);
            let json = serde_json::to_value(&e).unwrap();
            assert_eq!(json["kind"], e.kind());
            let back: Event = serde_json::from_value(json).unwrap();
            assert_eq!(back, e);
        }
    }
}
