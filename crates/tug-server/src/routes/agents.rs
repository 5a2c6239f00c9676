//! Channels, agent reports and the fleet: `GET /v1/channels/{service}/{env}`
//! (ETag, long-poll), Teleport's plain-text updater endpoints,
//! `POST /v1/agents/report`, `GET /v1/agents`.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tug_api::{Agent, AgentReport, AgentState, Channel, ChannelArtifact};
use tug_core::{EnvName, Platform, ServiceName};
use tug_db::AgentRow;

use crate::error::ApiError;
use crate::extract::{Caller, Json};
use crate::AppState;

/// The longest a long-poll is held.
const MAX_WAIT: Duration = Duration::from_secs(120);

fn names(service: &str, env: &str) -> Result<(ServiceName, EnvName), ApiError> {
    let s = ServiceName::parse(service).map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    let e = EnvName::parse(env).map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    Ok((s, e))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelQuery {
    platform: String,
    /// How long to hold the request when nothing changed: `60s`, `2m`.
    wait: Option<String>,
    /// The asking agent (for rollout pacing).
    agent: Option<String>,
}

/// Names an answer: the environment's deployment seq, and whether the
/// build is critical (marking a build critical changes no deployment).
fn etag(seq: i64, critical: bool) -> String {
    format!("\"d{seq}{}\"", if critical { "c" } else { "" })
}

pub async fn channel(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path((service, env)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<Query<ChannelQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let (service, env) = names(&service, &env)?;
    let platform = Platform::parse(&q.platform).map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let wait = match q.wait.as_deref() {
        None => Duration::ZERO,
        Some(w) => tug_core::parse_duration(w).filter(|d| *d <= MAX_WAIT).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("wait {w:?} must be a duration up to 120s, e.g. 60s"),
            )
        })?,
    };
    let _ = q.agent;
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Checks access and that the environment exists before holding anything.
    let (mut tag, mut body) = answer(&state, &who, &service, &env, &platform).await?;
    if known.as_deref() == Some(tag.as_str()) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = state.changes.clone();
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(deadline).await;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let mut res = StatusCode::NOT_MODIFIED.into_response();
                    if let Ok(v) = HeaderValue::from_str(&tag) {
                        res.headers_mut().insert(header::ETAG, v);
                    }
                    return Ok(res);
                }
            }
            (tag, body) = answer(&state, &who, &service, &env, &platform).await?;
            if Some(tag.as_str()) != known.as_deref() {
                break;
            }
        }
    }
    let mut res = Response::new(axum::body::Body::from(body));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    Ok(res)
}

/// A channel's answer (its deployment seq and JSON body), from the cache
/// while no event happened since it was computed: when a release wakes
/// thousands of long-polls, one of them reads the database and the others
/// share its answer. The caller's right to follow is checked every time.
async fn answer(
    state: &AppState,
    who: &tug_service::Principal,
    service: &ServiceName,
    env: &EnvName,
    platform: &Platform,
) -> Result<(String, bytes::Bytes), ApiError> {
    state.tugboat.check(who, tug_core::Action::Follow)?;
    let key = format!("{service}/{env}/{platform}");
    let now = *state.changes.borrow();
    if let Ok(answers) = state.channel_answers.read() {
        if let Some((at, tag, body)) = answers.get(&key) {
            if *at == now {
                return Ok((tag.clone(), body.clone()));
            }
        }
    }
    // A change wakes every long-poll of the channel at once: one computes
    // the new answer, the others wait for it here and then share it.
    let _flight = state.channel_flights.hold(&key).await;
    if let Ok(answers) = state.channel_answers.read() {
        if let Some((at, tag, body)) = answers.get(&key) {
            if *at == now {
                return Ok((tag.clone(), body.clone()));
            }
        }
    }
    let view = state.tugboat.channel(who, service, env, platform).await?;
    let channel = Channel {
        service: service.clone(),
        environment: env.clone(),
        build: view.build.as_ref().map(|b| b.id.clone()),
        version: view.build.as_ref().map(|b| b.version.clone()),
        manifest_digest: view.build.as_ref().and_then(|b| b.manifest_digest),
        critical: view.build.as_ref().is_some_and(|b| b.critical),
        // Rollout pacing will make this per agent; the answer is shared
        // while it is not.
        may_update: true,
        artifacts: view
            .artifacts
            .into_iter()
            .map(|a| ChannelArtifact {
                url: format!("/v1/blobs/{}", a.digest),
                name: a.name,
                kind: a.kind,
                platform: a.platform,
                digest: a.digest,
                size: a.size,
            })
            .collect(),
    };
    let body = bytes::Bytes::from(
        serde_json::to_vec(&channel)
            .map_err(|e| ApiError::from(tug_service::Error::Invalid(format!("cannot encode the channel: {e}"))))?,
    );
    let tag = etag(view.seq, channel.critical);
    if let Ok(mut answers) = state.channel_answers.write() {
        answers.insert(key, (now, tag.clone(), body.clone()));
    }
    Ok((tag, body))
}

fn plain(text: String) -> Response {
    let mut res = text.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// Answers a public endpoint from the cache while no event happened since
/// it was computed (updaters poll these often; a change reaches them within
/// the change poller's interval).
async fn cached(
    state: &AppState,
    key: String,
    compute: impl std::future::Future<Output = Result<String, ApiError>>,
) -> Result<Response, ApiError> {
    let now = *state.changes.borrow();
    if let Ok(answers) = state.public_answers.read() {
        if let Some((at, text)) = answers.get(&key) {
            if *at == now {
                return Ok(plain(text.clone()));
            }
        }
    }
    let text = compute.await?;
    if let Ok(mut answers) = state.public_answers.write() {
        answers.insert(key, (now, text.clone()));
    }
    Ok(plain(text))
}

/// Teleport's updaters ask `…/version` without a token: the version of a
/// public environment, like `v14.3.1`, or `none`.
pub async fn teleport_version(
    State(state): State<AppState>,
    Path((service, env)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (service, env) = names(&service, &env)?;
    let key = format!("{service}/{env}/version");
    let compute = async {
        let build = state.tugboat.public_version(&service, &env).await?;
        Ok(build.map_or_else(|| "none".to_string(), |b| format!("v{}", b.version)))
    };
    cached(&state, key, compute).await
}

/// Teleport's `…/critical`: `yes` or `no`.
pub async fn teleport_critical(
    State(state): State<AppState>,
    Path((service, env)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (service, env) = names(&service, &env)?;
    let key = format!("{service}/{env}/critical");
    let compute = async {
        let build = state.tugboat.public_version(&service, &env).await?;
        Ok(if build.is_some_and(|b| b.critical) { "yes" } else { "no" }.to_string())
    };
    cached(&state, key, compute).await
}

fn state_name(s: AgentState) -> &'static str {
    match s {
        AgentState::Idle => "idle",
        AgentState::Downloading => "downloading",
        AgentState::Activating => "activating",
        AgentState::Healthy => "healthy",
        AgentState::Failed => "failed",
    }
}

fn parse_state(s: &str) -> AgentState {
    match s {
        "downloading" => AgentState::Downloading,
        "activating" => AgentState::Activating,
        "healthy" => AgentState::Healthy,
        "failed" => AgentState::Failed,
        _ => AgentState::Idle,
    }
}

pub async fn report(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(r): Json<AgentReport>,
) -> Result<StatusCode, ApiError> {
    let now = chrono::Utc::now();
    let row = AgentRow {
        agent_id: r.agent_id,
        service: r.service,
        environment: r.environment,
        hostname: r.hostname,
        platform: r.platform,
        agent_version: r.agent_version,
        build: r.build,
        state: state_name(r.state).to_string(),
        error: r.error,
        first_seen: now,
        last_seen: now,
    };
    state.tugboat.report(&who, row).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn agent(state: &AppState, a: AgentRow) -> Agent {
    Agent {
        stale: state.tugboat.is_stale(a.last_seen),
        last_seen: a.last_seen,
        report: AgentReport {
            agent_id: a.agent_id,
            hostname: a.hostname,
            platform: a.platform,
            agent_version: a.agent_version,
            service: a.service,
            environment: a.environment,
            build: a.build,
            state: parse_state(&a.state),
            error: a.error,
            failed_build: None,
        },
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsQuery {
    service: Option<String>,
    env: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    Caller(who): Caller,
    query: Result<Query<AgentsQuery>, QueryRejection>,
) -> Result<axum::Json<Vec<Agent>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let service = q
        .service
        .as_deref()
        .map(ServiceName::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let env = q
        .env
        .as_deref()
        .map(EnvName::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let rows = state.tugboat.agents(&who, service.as_ref(), env.as_ref()).await?;
    Ok(axum::Json(rows.into_iter().map(|a| agent(&state, a)).collect()))
}
