//! `/v1/services/{service}/…`: pipelines, release, promote, rollback,
//! approve, reject, status, history, auto-release resume.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use tug_api::{
    ApplyPipeline, BuildSummary, Decide, Decided, DeployResult, DeployStatus, Deployment, EnvironmentStatus, History,
    PendingDeployment, PipelineView, Promote, Release, Rollback, ServerRuleView, Status,
};
use tug_core::records::{BuildRecord, DeploymentRequest};
use tug_core::states::Decision;
use tug_core::{BuildId, EnvName, ServiceName};
use tug_service::{Answer, BuildSelector, DeployOptions, DeploymentView, Principal, Shown};

use crate::error::ApiError;
use crate::extract::{Caller, Json};
use crate::AppState;

fn service(segment: &str) -> Result<ServiceName, ApiError> {
    ServiceName::parse(segment).map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))
}

fn env(segment: &str) -> Result<EnvName, ApiError> {
    EnvName::parse(segment).map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))
}

fn summary(b: &BuildRecord) -> BuildSummary {
    BuildSummary {
        id: b.id.clone(),
        short_id: b.short_id.clone(),
        yanked: b.yanked_at.is_some(),
        version: b.version.clone(),
        manifest_digest: b.manifest_digest,
        source: b.source.clone(),
    }
}

/// The wire form of a deployment the service shaped for its caller.
pub fn deployment(d: DeploymentView) -> Deployment {
    let replaced_embargoed = d.replaced.as_ref().is_some_and(Shown::is_embargoed);
    Deployment {
        id: d.id,
        service: d.service,
        environment: d.environment,
        seq: d.seq,
        kind: d.kind,
        embargoed: d.build.is_embargoed(),
        build: d.build.visible().cloned(),
        summary: d.summary.as_ref().map(summary),
        requested_by: d.requested_by,
        deployed_at: d.deployed_at,
        replaced: d.replaced.as_ref().and_then(|r| r.visible().cloned()),
        replaced_short_id: None,
        replaced_embargoed,
        reason: d.reason,
        override_freeze: d.override_freeze,
        approved_by: d.approved_by,
        deliveries: d
            .deliveries
            .into_iter()
            .map(|g| tug_api::GitDelivery {
                target: g.target,
                repo: g.repo,
                state: g.state,
                commit: g.commit,
                attempts: g.attempts,
                error: g.error,
                next_attempt: g.next_attempt,
                updated_at: g.updated_at,
            })
            .collect(),
    }
}

/// The wire form of a pipeline; `changed` is set in answers to an apply.
fn view(v: tug_service::PipelineView, changed: Option<bool>) -> PipelineView {
    PipelineView {
        service: v.row.service,
        revision: v.row.revision,
        changed_at: v.row.changed_at,
        changed_by: v.row.changed_by,
        spec: v.row.spec,
        pipeline: v.pipeline,
        server_rules: v
            .server_rules
            .into_iter()
            .map(|r| ServerRuleView {
                environment: r.environment,
                branch_restriction: r.restriction.to_string(),
            })
            .collect(),
        changed,
    }
}

/// Fills in the short ids of builds an answer names by id alone (the
/// build a deployment replaced, the build a request waits to deploy). They
/// are a convenience: when they cannot be read the answer goes without
/// them (the CLI then shows whole ids) rather than hide a deployment that
/// was made.
async fn fill_short_ids<'a>(
    state: &AppState,
    who: &Principal,
    deployments: impl IntoIterator<Item = &'a mut Deployment>,
    pending: impl IntoIterator<Item = &'a mut PendingDeployment>,
) {
    let mut deployments: Vec<&mut Deployment> = deployments.into_iter().collect();
    let mut pending: Vec<&mut PendingDeployment> = pending.into_iter().collect();
    let ids: Vec<BuildId> = deployments
        .iter()
        .filter_map(|d| d.replaced.clone())
        .chain(pending.iter().map(|p| p.build.clone()))
        .collect();
    if ids.is_empty() {
        return;
    }
    let short = match state.tugboat.short_build_ids(who, &ids).await {
        Ok(short) => short,
        Err(e) => {
            tracing::warn!(error = %e, "answering without short build ids");
            return;
        }
    };
    for d in &mut deployments {
        d.replaced_short_id = d.replaced.as_ref().and_then(|r| short.get(r).cloned());
    }
    for p in &mut pending {
        p.build_short_id = short.get(&p.build).cloned().unwrap_or_default();
    }
}

fn options(flags: tug_api::DeployFlags) -> DeployOptions {
    DeployOptions {
        override_freeze: flags.override_freeze,
        reason: flags.reason,
    }
}

pub async fn apply_pipeline(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
    Json(req): Json<ApplyPipeline>,
) -> Result<axum::Json<PipelineView>, ApiError> {
    let v = state
        .tugboat
        .apply_pipeline(&who, &service(&segment)?, &req.spec, req.base_revision)
        .await?;
    let changed = v.changed;
    Ok(axum::Json(view(v, Some(changed))))
}

pub async fn show_pipeline(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
) -> Result<axum::Json<PipelineView>, ApiError> {
    Ok(axum::Json(view(
        state.tugboat.show_pipeline(&who, &service(&segment)?).await?,
        None,
    )))
}

pub fn pending(r: DeploymentRequest, need: u32) -> PendingDeployment {
    let approved_by = r
        .decisions
        .iter()
        .filter(|(who, d)| *d == Decision::Approve && *who != r.requested_by)
        .map(|(who, _)| who.clone())
        .collect();
    PendingDeployment {
        id: r.id,
        environment: r.environment,
        kind: r.kind,
        build: r.build,
        build_short_id: String::new(),
        state: r.state,
        requested_by: r.requested_by,
        requested_at: r.requested_at,
        expires_at: r.expires_at,
        approved_by,
        need,
    }
}

/// 201 with the deployment, or 202 with the request that waits.
async fn answer(state: &AppState, who: &Principal, outcome: Answer) -> (StatusCode, axum::Json<DeployResult>) {
    let status = match outcome {
        Answer::Deployed(_) => StatusCode::CREATED,
        Answer::Pending { .. } => StatusCode::ACCEPTED,
    };
    let mut result = deploy_result(outcome);
    fill_short_ids(state, who, result.deployment.as_mut(), result.pending.as_mut()).await;
    (status, axum::Json(result))
}

fn deploy_result(outcome: Answer) -> DeployResult {
    match outcome {
        Answer::Deployed(d) => DeployResult {
            status: DeployStatus::Deployed,
            deployment: Some(deployment(*d)),
            pending: None,
        },
        Answer::Pending { request, need } => DeployResult {
            status: DeployStatus::PendingApproval,
            deployment: None,
            pending: Some(pending(*request, need)),
        },
    }
}

pub async fn release(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
    Json(req): Json<Release>,
) -> Result<(StatusCode, axum::Json<DeployResult>), ApiError> {
    let selector = match (req.build, req.branch, req.version) {
        (Some(b), None, None) => BuildSelector::Reference(super::build_ref(&b)?),
        (None, Some(b), None) => BuildSelector::Branch(b),
        (None, None, Some(v)) => BuildSelector::Version(v),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "name the build with exactly one of build, branch or version",
            ))
        }
    };
    let d = state
        .tugboat
        .release(
            &who,
            &service(&segment)?,
            &req.environment,
            selector,
            options(req.flags),
        )
        .await?;
    Ok(answer(&state, &who, d).await)
}

pub async fn promote(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
    Json(req): Json<Promote>,
) -> Result<(StatusCode, axum::Json<DeployResult>), ApiError> {
    let d = state
        .tugboat
        .promote(&who, &service(&segment)?, &req.to, options(req.flags))
        .await?;
    Ok(answer(&state, &who, d).await)
}

pub async fn rollback(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
    Json(req): Json<Rollback>,
) -> Result<(StatusCode, axum::Json<DeployResult>), ApiError> {
    let service = service(&segment)?;
    let to = req.to.as_deref().map(super::build_ref).transpose()?;
    let d = state
        .tugboat
        .rollback(&who, &service, &req.environment, to, options(req.flags))
        .await?;
    Ok(answer(&state, &who, d).await)
}

pub async fn status(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
) -> Result<axum::Json<Status>, ApiError> {
    let service = service(&segment)?;
    let (view, envs) = state.tugboat.status(&who, &service).await?;
    let mut status = Status {
        service: view.row.service,
        pipeline_revision: view.row.revision,
        environments: envs
            .into_iter()
            .map(|s| EnvironmentStatus {
                environment: s.environment.name.clone(),
                upstream: s.environment.upstream.clone(),
                auto_release: s.environment.auto_release.clone(),
                auto_release_held: s.auto_release_held,
                approvals: s.environment.approvals,
                private: s.environment.private,
                agents: tug_api::AgentCounts {
                    total: s.agents.total,
                    on_current: s.agents.on_current,
                    healthy: s.agents.healthy,
                    failed: s.agents.failed,
                    stale: s.agents.stale,
                    by_build: s.agents.by_build,
                },
                rollout: Some(super::agents::rollout(s.rollout)),
                gate: s.gate.map(|g| tug_api::Gate {
                    verify: g.verify.to_string(),
                    for_secs: g.verify.hold.as_secs(),
                    within_since: g.within_since,
                    last_sample: g.last_sample,
                    last_value: g.last_value,
                    blocked: g.blocked,
                }),
                current: s.current.map(deployment),
                pending: s
                    .pending
                    .into_iter()
                    .map(|r| pending(r, s.environment.approvals))
                    .collect(),
                expired: s
                    .expired
                    .into_iter()
                    .map(|r| pending(r, s.environment.approvals))
                    .collect(),
            })
            .collect(),
    };
    let mut current = Vec::new();
    let mut waiting = Vec::new();
    for e in &mut status.environments {
        current.extend(e.current.as_mut());
        waiting.extend(e.pending.iter_mut());
        waiting.extend(e.expired.iter_mut());
    }
    fill_short_ids(&state, &who, current, waiting).await;
    Ok(axum::Json(status))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<u32>,
}

pub async fn history(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path((segment, environment)): Path<(String, String)>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<History>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 10000",
        ));
    }
    let rows = state
        .tugboat
        .history(&who, &service(&segment)?, &env(&environment)?, limit)
        .await?;
    let mut deployments: Vec<Deployment> = rows.into_iter().map(deployment).collect();
    fill_short_ids(&state, &who, deployments.iter_mut(), []).await;
    Ok(axum::Json(History { deployments }))
}

/// Lifts the hold and says what catching up came to.
pub async fn resume(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path((segment, environment)): Path<(String, String)>,
) -> Result<axum::Json<tug_api::Resumed>, ApiError> {
    let (service, environment) = (service(&segment)?, env(&environment)?);
    let caught_up = state.tugboat.resume_auto_release(&who, &service, &environment).await?;
    let (mut result, refused) = match caught_up {
        Ok(outcome) => (outcome.map(deploy_result), None),
        Err(e) => {
            let e = ApiError::from(e);
            let body = tug_api::ErrorBody {
                code: e.code.to_string(),
                message: e.message,
            };
            (None, Some(body))
        }
    };
    if let Some(r) = result.as_mut() {
        fill_short_ids(&state, &who, r.deployment.as_mut(), r.pending.as_mut()).await;
    }
    Ok(axum::Json(tug_api::Resumed {
        service,
        environment,
        auto_release_held: false,
        result,
        refused,
    }))
}

/// The answer to an approval or a rejection.
async fn decided(
    state: AppState,
    who: tug_service::Principal,
    d: tug_service::Decision,
) -> Result<axum::Json<Decided>, ApiError> {
    let mut decided = Decided {
        pending: pending(d.request, d.need),
        // Only approvers and admins decide, and they see every build of
        // their service.
        deployment: d
            .deployment
            .map(|(dep, build)| deployment(DeploymentView::whole(dep, Some(*build)))),
    };
    fill_short_ids(&state, &who, decided.deployment.as_mut(), [&mut decided.pending]).await;
    Ok(axum::Json(decided))
}

pub async fn approve(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
    Json(req): Json<Decide>,
) -> Result<axum::Json<Decided>, ApiError> {
    let service = service(&segment)?;
    let build = super::build_ref(&req.build)?;
    let d = state.tugboat.approve(&who, &service, &req.environment, &build).await?;
    decided(state, who, d).await
}

pub async fn reject(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
    Json(req): Json<Decide>,
) -> Result<axum::Json<Decided>, ApiError> {
    let service = service(&segment)?;
    let build = super::build_ref(&req.build)?;
    let d = state.tugboat.reject(&who, &service, &req.environment, &build).await?;
    decided(state, who, d).await
}

pub async fn next_version(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
    query: Result<Query<tug_api::NextVersionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<tug_api::NextVersion>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let part = match q.bump.as_str() {
        "cloud" => None,
        "major" => Some(tug_core::Part::Major),
        "minor" => Some(tug_core::Part::Minor),
        "patch" => Some(tug_core::Part::Patch),
        other => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("unknown bump {other:?}: use cloud, major, minor or patch"),
            ))
        }
    };
    if part.is_none() && q.commit.is_none() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "a cloud version needs the commit: add commit=<sha>",
        ));
    }
    let commit = if part.is_none() { q.commit.as_deref() } else { None };
    let version = state
        .tugboat
        .next_version(&who, &service(&segment)?, part, commit)
        .await?;
    Ok(axum::Json(tug_api::NextVersion {
        tag: format!("v{version}"),
        version,
    }))
}

pub async fn diff(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
    query: Result<Query<tug_api::DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<tug_api::DiffResult>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let d = state.tugboat.diff(&who, &service(&segment)?, &q.from, &q.to).await?;
    Ok(axum::Json(tug_api::DiffResult {
        from: d.old.visible().map(summary),
        from_embargoed: d.old.is_embargoed(),
        to: d.new.visible().map(summary),
        to_embargoed: d.new.is_embargoed(),
        changes: d.changes,
        unchanged: d.unchanged,
        source: d.source,
    }))
}

pub async fn pipeline_history(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
) -> Result<axum::Json<Vec<tug_api::PipelineRevision>>, ApiError> {
    let revisions = state.tugboat.pipeline_history(&who, &service(&segment)?).await?;
    Ok(axum::Json(
        revisions
            .into_iter()
            .map(|r| tug_api::PipelineRevision {
                revision: r.row.revision,
                changed_at: r.row.changed_at,
                changed_by: r.row.changed_by,
                spec: r.row.spec,
                changes: r.changes,
            })
            .collect(),
    ))
}
