//! Channels, agent reports and the fleet: `GET /v1/channels/{service}/{env}`
//! (ETag, long-poll), Teleport's plain-text updater endpoints,
//! `POST /v1/agents/report`, `GET /v1/agents`.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tug_api::{Agent, AgentReport, Channel, ChannelArtifact, ProcessExit};
use tug_core::records::{AgentRecord, ExitRecord};
use tug_core::{EnvName, Platform, ServiceName};
use tug_service::ChannelStamp;

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
    /// The asking agent's id: needed where rollouts are paced.
    agent: Option<String>,
}

/// Names an answer: the environment's deployment seq, whether the build is
/// critical (marking a build critical changes no deployment), and whether
/// the asking agent must wait (so its long-poll ends when it may update).
fn etag(seq: i64, critical: bool, may_update: bool) -> String {
    format!(
        "\"d{seq}{}{}\"",
        if critical { "c" } else { "" },
        if may_update { "" } else { "w" }
    )
}

/// How often a long-poll told to wait looks again without an event (a
/// maintenance window opening, agents going stale).
const RECHECK_WAITING: Duration = Duration::from_secs(5);

/// Names a redacted answer: the environment runs a build embargoed from
/// the caller. It differs from the whole answer's tag, so a long-poll
/// holding it ends when the embargo is lifted.
fn etag_embargoed(seq: i64) -> String {
    format!("\"d{seq}e\"")
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
    if q.agent.as_ref().is_some_and(|a| a.is_empty() || a.len() > 100) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "agent must be 1 to 100 characters",
        ));
    }
    let agent = q.agent.as_deref();
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Checks access and that the environment exists before holding anything.
    let (mut tag, mut body, mut place) = Box::pin(answer(&state, &who, &service, &env, &platform, agent)).await?;
    if known.as_deref() == Some(tag.as_str()) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = state.channels.clone();
        // Revocations before now were checked when the request was
        // authenticated.
        let mut revocations = state.revocations.clone();
        revocations.mark_unchanged();
        tracing::debug!(%service, %env, token = %who.name, "holding a channel long-poll");
        loop {
            let waiting = tag.ends_with("w\"");
            let recheck = if waiting {
                deadline.min(tokio::time::Instant::now() + RECHECK_WAITING)
            } else {
                deadline
            };
            let changed = tokio::select! {
                changed = changes.changed() => match changed {
                    Ok(()) => true,
                    Err(_) => {
                        // The change poller is gone (the server is
                        // stopping): only the clock wakes this request.
                        tokio::time::sleep_until(recheck).await;
                        false
                    }
                },
                Ok(()) = revocations.changed() => {
                    // Some token was revoked: if it was this one, the
                    // request ends here (401 token_revoked).
                    state.tugboat.recheck(&who).await?;
                    continue;
                }
                // A paced rollout admitted this agent.
                () = cleared(&mut place) => true,
                _ = tokio::time::sleep_until(recheck) => false,
            };
            if !changed {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    let mut res = StatusCode::NOT_MODIFIED.into_response();
                    if let Ok(v) = HeaderValue::from_str(&tag) {
                        res.headers_mut().insert(header::ETAG, v);
                    }
                    return Ok(res);
                }
            }
            (tag, body, place) = Box::pin(answer(&state, &who, &service, &env, &platform, agent)).await?;
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

/// A channel's answer for every caller at one event, in each shape a
/// caller may be given: the channel and its JSON body for callers who may
/// see its build, the redacted body for those it is embargoed from, and
/// the service's view, which decides who gets which and who may update.
#[derive(Debug)]
pub struct Answer {
    channel: Channel,
    body: bytes::Bytes,
    embargoed: bytes::Bytes,
    view: tug_service::ChannelView,
}

/// Resolves when the agent holding `place` may go; never without a place.
async fn cleared(place: &mut Option<tug_service::Place>) {
    match place {
        Some(p) => p.cleared().await,
        None => std::future::pending().await,
    }
}

/// A channel's answer (its ETag and JSON body) for one agent, and the
/// agent's place among those waiting for a paced rollout when it must
/// wait. The part all agents share comes from the cache while the
/// environment's stamp stands: when a release wakes thousands of
/// long-polls, one of them reads the database and the others share its
/// answer. The caller's right to follow is checked every time; whether
/// this agent may update is asked only when maintenance windows or a paced
/// rollout make it depend on the time or the agent.
async fn answer(
    state: &AppState,
    who: &tug_service::Principal,
    service: &ServiceName,
    env: &EnvName,
    platform: &Platform,
    agent: Option<&str>,
) -> Result<(String, bytes::Bytes, Option<tug_service::Place>), ApiError> {
    state.tugboat.check_follow(who, service, env)?;
    let shared = shared_answer(state, who, service, env, platform).await?;
    let pacing = &shared.view.pacing;
    let seq = pacing.seq;
    // Whose answer this is, decided per caller: the cache holds every shape.
    if !state.tugboat.channel_sight(who, &shared.view)?.is_full() {
        return Ok((etag_embargoed(seq), shared.embargoed.clone(), None));
    }
    let critical = shared.channel.critical;
    if !(pacing.per_agent() || pacing.timed()) {
        return Ok((etag(seq, critical, true), shared.body.clone(), None));
    }
    let grant = state.tugboat.may_update(pacing, agent).await?;
    if grant.may_update {
        return Ok((etag(seq, critical, true), shared.body.clone(), None));
    }
    let channel = Channel {
        may_update: false,
        waiting: grant.waiting,
        ..shared.channel.clone()
    };
    Ok((etag(seq, critical, false), encode(&channel)?, grant.place))
}

fn encode(channel: &Channel) -> Result<bytes::Bytes, ApiError> {
    serde_json::to_vec(channel)
        .map(bytes::Bytes::from)
        .map_err(|e| ApiError::from(tug_service::Error::Invalid(format!("cannot encode the channel: {e}"))))
}

/// The cached answer for `key` if it was computed at the stamp `now`.
fn cached_answer(state: &AppState, key: &str, now: ChannelStamp) -> Option<std::sync::Arc<Answer>> {
    let answers = state.channel_answers.read().ok()?;
    answers.get(key).filter(|(at, _)| *at == now).map(|(_, a)| a.clone())
}

/// The stamp the change poller last read for `env` of `service`.
fn stamp(state: &AppState, service: &ServiceName, env: &EnvName) -> ChannelStamp {
    state.channels.borrow().of(service, env)
}

async fn shared_answer(
    state: &AppState,
    who: &tug_service::Principal,
    service: &ServiceName,
    env: &EnvName,
    platform: &Platform,
) -> Result<std::sync::Arc<Answer>, ApiError> {
    let key = format!("{service}/{env}/{platform}");
    // An answer computed after the stamp was read is at least as new as
    // the stamp: it stays valid until the poller reads another.
    let now = stamp(state, service, env);
    if let Some(answer) = cached_answer(state, &key, now) {
        return Ok(answer);
    }
    // A change wakes every long-poll of the channel at once: one computes
    // the new answer, the others wait for it here and then share it.
    let _flight = state.channel_flights.hold(&key).await;
    if let Some(answer) = cached_answer(state, &key, now) {
        return Ok(answer);
    }
    let view = state.tugboat.channel(who, service, env, platform).await?;
    let channel = Channel {
        service: service.clone(),
        environment: env.clone(),
        build: view.build.as_ref().map(|b| b.id.clone()),
        version: view.build.as_ref().map(|b| b.version.clone()),
        manifest_digest: view.build.as_ref().and_then(|b| b.manifest_digest),
        critical: view.build.as_ref().is_some_and(|b| b.critical),
        may_update: true,
        waiting: None,
        embargoed: false,
        artifacts: view
            .artifacts
            .iter()
            .cloned()
            .map(|a| ChannelArtifact {
                url: format!("/v1/blobs/{}", a.digest),
                name: a.name,
                kind: a.kind,
                platform: a.platform,
                digest: a.digest,
                size: a.size,
                executable: a.executable,
            })
            .collect(),
    };
    let embargoed = Channel {
        service: service.clone(),
        environment: env.clone(),
        build: None,
        version: None,
        manifest_digest: None,
        critical: false,
        may_update: false,
        waiting: Some(format!(
            "{env} runs an embargoed build this token may not see; its agents follow it with an agent token scoped to it (tug token create --role agent --service {service} --env {env})"
        )),
        artifacts: Vec::new(),
        embargoed: true,
    };
    let answer = std::sync::Arc::new(Answer {
        body: encode(&channel)?,
        embargoed: encode(&embargoed)?,
        channel,
        view,
    });
    if let Ok(mut answers) = state.channel_answers.write() {
        answers.insert(key, (now, answer.clone()));
    }
    Ok(answer)
}

fn plain(text: String) -> Response {
    let mut res = text.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// Answers a public endpoint from the cache while the environment's stamp
/// stands (updaters poll these often; a change reaches them within the
/// change poller's interval).
async fn cached(
    state: &AppState,
    (service, env): (&ServiceName, &EnvName),
    key: String,
    compute: impl std::future::Future<Output = Result<String, ApiError>>,
) -> Result<Response, ApiError> {
    let now = stamp(state, service, env);
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
    cached(&state, (&service, &env), key, compute).await
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
    cached(&state, (&service, &env), key, compute).await
}

pub async fn report(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(r): Json<AgentReport>,
) -> Result<StatusCode, ApiError> {
    // The service's clock, as for every other record: the report's time is
    // compared with it when agents are counted.
    let now = state.tugboat.now();
    let row = AgentRecord {
        agent_id: r.agent_id,
        service: r.service,
        environment: r.environment,
        hostname: r.hostname,
        platform: r.platform,
        agent_version: r.agent_version,
        build: r.build,
        state: r.state,
        error: r.error,
        failed_build: r.failed_build,
        waiting: r.waiting,
        exit: r.exit.map(|e| ExitRecord {
            build: e.build,
            code: e.code,
            signal: e.signal,
            at: e.at,
            stderr: e.stderr,
        }),
        first_seen: now,
        last_seen: now,
    };
    state.tugboat.report(&who, row).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The fleet view of a stored report, as the caller may see it. (A state
/// the server does not know is refused when the report is read from the
/// database.)
pub fn agent(state: &AppState, view: tug_service::AgentView) -> Result<Agent, ApiError> {
    let a = view.agent;
    let agent_state = a.state;
    Ok(Agent {
        short_id: String::new(),
        build_short_id: None,
        embargoed: view.embargoed,
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
            state: agent_state,
            error: a.error,
            failed_build: a.failed_build,
            waiting: a.waiting,
            exit: a.exit.map(|e| ProcessExit {
                build: e.build,
                code: e.code,
                signal: e.signal,
                at: e.at,
                stderr: e.stderr,
            }),
        },
    })
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
    let service = super::service_param(q.service.as_deref())?;
    let env = super::env_param(q.env.as_deref())?;
    let rows = state.tugboat.agents(&who, service.as_ref(), env.as_ref()).await?;
    // Short ids are unique among every agent and build, not only among
    // those this list shows.
    let short_agents = state.tugboat.short_agent_ids(&who).await?;
    let builds: Vec<tug_core::BuildId> = rows
        .iter()
        .filter(|a| !a.embargoed)
        .filter_map(|a| a.agent.build.clone())
        .collect();
    let short_builds = state.tugboat.short_build_ids(&who, &builds).await?;
    let mut agents: Vec<Agent> = rows.into_iter().map(|a| agent(&state, a)).collect::<Result<_, _>>()?;
    for a in &mut agents {
        a.short_id = short_agents.get(&a.report.agent_id).cloned().unwrap_or_default();
        a.build_short_id = a.report.build.as_ref().and_then(|b| short_builds.get(b).cloned());
    }
    Ok(axum::Json(agents))
}

/// The wire form of a rollout's status.
pub fn rollout(s: tug_service::RolloutStatus) -> tug_api::Rollout {
    tug_api::Rollout {
        service: s.service,
        environment: s.environment,
        build: s.build,
        seq: s.seq,
        strategy: s.strategy,
        state: s.state,
        reason: s.reason,
        changed_by: s.changed_by,
        changed_at: s.changed_at,
        agents: s.counts.agents,
        granted: s.counts.granted,
        updated: s.counts.healthy,
        in_flight: s.counts.in_flight,
        failed: s.counts.failed,
        failures: s.failures,
        halt_after_failures: s.halt_after_failures,
        auto_rollback: s.auto_rollback,
        in_maintenance: s.in_maintenance,
        embargoed: s.embargoed,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutQuery {
    env: String,
}

fn service_name(segment: &str) -> Result<ServiceName, ApiError> {
    ServiceName::parse(segment).map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))
}

pub async fn rollout_status(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(service): Path<String>,
    query: Result<Query<RolloutQuery>, QueryRejection>,
) -> Result<axum::Json<tug_api::Rollout>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let (service, env) = names(&service, &q.env)?;
    let status = state.tugboat.rollout_status(&who, &service, &env).await?;
    Ok(axum::Json(rollout(status)))
}

pub async fn halt(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(service): Path<String>,
    Json(r): Json<tug_api::HaltRequest>,
) -> Result<axum::Json<tug_api::Rollout>, ApiError> {
    let service = service_name(&service)?;
    let status = state
        .tugboat
        .halt_rollout(&who, &service, &r.environment, &r.reason)
        .await?;
    Ok(axum::Json(rollout(status)))
}

pub async fn resume(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(service): Path<String>,
    Json(r): Json<tug_api::ResumeRequest>,
) -> Result<axum::Json<tug_api::Rollout>, ApiError> {
    let service = service_name(&service)?;
    let status = state.tugboat.resume_rollout(&who, &service, &r.environment).await?;
    Ok(axum::Json(rollout(status)))
}
