//! The events recorded before the event log was typed and hash-chained.
//! The migration that introduced the chain noted up to which id they go;
//! when the server starts ([`Tugboat::chain_old_events`]) it rewrites each
//! of them once in the event schema and chains them in id order, in one
//! transaction that holds the log's head, so nothing new is appended before
//! them. Afterwards the whole log is one chain that `tug audit verify`
//! checks from its first event.
//!
//! An old event recorded less than the schema asks for: what it lacks is
//! looked up (a build's version, digest and source from the build; an
//! actor's role from the token of that name created last before the event)
//! or left empty where nothing records it (the request of an approval
//! event, the approvers of a deployment, an agent's hostname). An old
//! event of a kind Tugboat never wrote is chained as it is, and `tug audit
//! verify` names it.

use std::collections::HashMap;

use serde_json::Value;
use tug_api::{Actor, Approval, Change, Deployed, DeploymentKind, Event, EventAgent, EventBuild, EventSource};
use tug_core::records::{BuildRecord, TokenRecord};
use tug_core::states::AgentState;
use tug_core::{BuildId, EnvName, Version};
use tug_db::{EventRow, NewEvent};

use crate::events::{event_build, recordable};
use crate::{Result, Tugboat};

/// Old events rewritten per round.
const PAGE: u32 = 500;

impl Tugboat {
    /// Rewrites and chains the events recorded before the log had a hash
    /// chain, if any wait; returns how many. Appends on any server sharing
    /// the database wait until it is done.
    pub async fn chain_old_events(&self) -> Result<u64> {
        let Some(mut chaining) = self.db.begin_chaining().await? else {
            return Ok(0);
        };
        let tokens = chaining.tokens().await?;
        let mut done = 0;
        loop {
            let rows = chaining.next(PAGE).await?;
            if rows.is_empty() {
                break;
            }
            let named: Vec<BuildId> = rows.iter().flat_map(old_builds).collect();
            let builds: HashMap<BuildId, BuildRecord> = chaining
                .builds(&named)
                .await?
                .into_iter()
                .map(|b| (b.id.clone(), b))
                .collect();
            for row in &rows {
                let new = match rewrite(row, &builds, &tokens) {
                    Some(event) => recordable(&event),
                    None => {
                        tracing::error!(id = row.id, kind = %row.kind, "an old event of an unknown kind is chained as it is");
                        NewEvent {
                            at: row.at,
                            kind: row.kind.clone(),
                            service: row.service.clone(),
                            build: row.build.clone(),
                            actor: row.actor.clone(),
                            payload: row.payload.clone(),
                        }
                    }
                };
                chaining.rewrite(row.id, &new).await?;
                done += 1;
            }
        }
        chaining.finish().await?;
        if done > 0 {
            tracing::info!(
                events = done,
                "chained the events recorded before the log had a hash chain"
            );
        }
        Ok(done)
    }
}

/// The builds an old event names.
fn old_builds(row: &EventRow) -> Vec<BuildId> {
    let payload: Value = serde_json::from_str(&row.payload).unwrap_or(Value::Null);
    ["build", "replaced"]
        .iter()
        .filter_map(|k| payload.get(*k).and_then(Value::as_str))
        .filter_map(|b| BuildId::parse(b).ok())
        .chain(row.build.clone())
        .collect()
}

/// An old event in the event schema, or `None` for a kind Tugboat never
/// wrote (or a payload it did not).
fn rewrite(row: &EventRow, builds: &HashMap<BuildId, BuildRecord>, tokens: &[TokenRecord]) -> Option<Event> {
    let p: Value = serde_json::from_str(&row.payload).ok()?;
    let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
    let int = |k: &str| p.get(k).and_then(Value::as_i64);
    let environment = || text("environment").and_then(|e| EnvName::parse(&e).ok());
    let build = || {
        let id = text("build")
            .and_then(|b| BuildId::parse(&b).ok())
            .or(row.build.clone())?;
        Some(match builds.get(&id) {
            Some(b) => event_build(b),
            // Builds are never deleted; should one be gone, what the old
            // event said of it stands.
            None => EventBuild {
                id,
                version: text("version")
                    .and_then(|v| Version::parse(&v).ok())
                    .unwrap_or_else(|| Version::from(semver::Version::new(0, 0, 0))),
                manifest_digest: text("manifest_digest").and_then(|d| d.parse().ok()),
                source: EventSource {
                    branch: text("branch"),
                    commit: text("commit"),
                    ..EventSource::default()
                },
                embargoed: false,
            },
        })
    };
    let kind = text("kind").unwrap_or_default();
    let deployment_kind = || {
        Some(match kind.as_str() {
            "release" => DeploymentKind::Release,
            "promote" => DeploymentKind::Promote,
            "rollback" if row.actor.as_deref() == Some("auto-rollback") => DeploymentKind::AutoRollback,
            "rollback" => DeploymentKind::Rollback,
            "auto_release" => DeploymentKind::AutoRelease,
            _ => return None,
        })
    };
    let approval = || {
        Some(Approval {
            environment: environment()?,
            build: build()?,
            request: None,
            deployment_kind: deployment_kind()?,
            requested_by: text("requested_by").unwrap_or_default(),
            expires_at: None,
            override_freeze: false,
            reason: None,
        })
    };
    let change = match row.kind.as_str() {
        "build.created" => Change::BuildCreated { build: build()? },
        "build.sealed" => Change::BuildSealed { build: build()? },
        "build.yanked" => Change::BuildYanked {
            reason: builds.get(&build()?.id).and_then(|b| b.yank_reason.clone()),
            build: build()?,
        },
        "build.unembargoed" => Change::BuildUnembargoed { build: build()? },
        "build.critical" => Change::BuildCritical { build: build()? },
        "pipeline.applied" => Change::PipelineApplied {
            revision: int("revision")?,
        },
        "deployment" => Change::Deployment(Deployed {
            environment: environment()?,
            build: Some(build()?),
            deployment_kind: deployment_kind()?,
            seq: int("seq")?,
            replaced: text("replaced").and_then(|b| BuildId::parse(&b).ok()),
            replaced_embargoed: false,
            override_freeze: p.get("override_freeze").and_then(Value::as_bool).unwrap_or(false),
            reason: text("reason"),
            requested_by: row.actor.clone(),
            approved_by: Vec::new(),
        }),
        "approval.requested" => Change::ApprovalRequested(approval()?),
        "approval.approved" => Change::ApprovalApproved(approval()?),
        "approval.rejected" => Change::ApprovalRejected(approval()?),
        "approval.expired" => Change::ApprovalExpired(approval()?),
        "approval.superseded" => Change::ApprovalSuperseded(approval()?),
        "auto_release.resumed" => Change::AutoReleaseResumed {
            environment: environment()?,
        },
        "rollout.progress" => Change::RolloutProgress {
            environment: environment()?,
            build: build(),
            seq: int("seq")?,
            agent: EventAgent {
                id: text("agent")?,
                hostname: String::new(),
                state: AgentState::parse(p.get("state").and_then(Value::as_str)?)?,
                error: text("error"),
            },
        },
        "rollout.halted" => Change::RolloutHalted {
            environment: environment()?,
            build: build(),
            seq: int("seq")?,
            reason: text("reason"),
        },
        "rollout.resumed" => Change::RolloutResumed {
            environment: environment()?,
            build: build(),
            seq: int("seq")?,
        },
        "rollout.rollback_failed" => Change::RolloutRollbackFailed {
            environment: environment()?,
            build: build(),
            error: text("error"),
        },
        _ => return None,
    };
    Some(Event::new(row.at, row.service.clone(), actor(row, tokens), change))
}

/// The token that acted in an old event: the newest token of that name
/// created before the event. Tugboat's own names for itself (`auto-release`,
/// `auto-rollback`, `rollout`) are no token.
fn actor(row: &EventRow, tokens: &[TokenRecord]) -> Option<Actor> {
    let name = row.actor.as_deref()?;
    tokens
        .iter()
        .filter(|t| t.name.as_str() == name && t.created_at <= row.at)
        .max_by_key(|t| t.created_at)
        .map(|t| Actor {
            name: t.name.clone(),
            role: t.role,
        })
}
