//! `/v1/builds`: create drafts, register artifacts, seal, show and list.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tug_api::{ArtifactsRegistered, Build, BuildList, BuildQuery, CreateBuild, RegisterArtifacts};
use tug_core::records::{BuildFilter, BuildRecord};
use tug_core::{BuildState, ServiceName, Version};

use crate::error::ApiError;
use crate::extract::{Caller, Json};
use crate::AppState;

/// The most builds one list returns.
const MAX_LIST: u32 = 1000;

pub fn build(row: BuildRecord, artifacts: Option<Vec<tug_core::ArtifactSpec>>) -> Build {
    Build {
        short_id: row.short_id,
        id: row.id,
        service: row.service,
        version: row.version,
        state: row.state,
        source: row.source,
        ci: row.ci,
        expected: row.expected,
        created_at: row.created_at,
        updated_at: row.updated_at,
        created_by: row.created_by,
        sealed_at: row.sealed_at,
        manifest_digest: row.manifest_digest,
        artifact_count: row.artifact_count,
        embargoed: row.embargoed,
        yanked_at: row.yanked_at,
        yanked_by: row.yanked_by,
        yank_reason: row.yank_reason,
        critical: row.critical,
        artifacts,
    }
}

pub async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(req): Json<CreateBuild>,
) -> Result<(StatusCode, axum::Json<Build>), ApiError> {
    let row = state
        .tugboat
        .create_build(
            &who,
            tug_service::BuildDraft {
                service: req.service,
                version: req.version,
                source: req.source,
                ci: req.ci,
                expected: req.expected,
                embargoed: req.embargoed,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(build(row, Some(Vec::new())))))
}

pub async fn list(
    State(state): State<AppState>,
    Caller(who): Caller,
    query: Result<Query<BuildQuery>, QueryRejection>,
) -> Result<axum::Json<BuildList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let bad = |e: tug_core::NameError| ApiError::bad_request("invalid_query", e.to_string());
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_LIST {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_LIST}"),
        ));
    }
    let filter = BuildFilter {
        service: q.service.as_deref().map(ServiceName::parse).transpose().map_err(bad)?,
        branch: q.branch,
        version: q.version.as_deref().map(Version::parse).transpose().map_err(bad)?,
        state: q
            .state
            .as_deref()
            .map(|s| {
                BuildState::parse(s).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("unknown state {s:?}: use draft, sealed or abandoned"),
                    )
                })
            })
            .transpose()?,
        limit,
        // The service decides what the caller may see.
        hide_embargoed: true,
        unless_created_by_token: None,
        by_version: match q.sort.as_deref() {
            None | Some("created") => false,
            Some("version") => true,
            Some(other) => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown sort {other:?}: use created or version"),
                ))
            }
        },
    };
    let rows = state.tugboat.list_builds(&who, filter).await?;
    Ok(axum::Json(BuildList {
        builds: rows.into_iter().map(|r| build(r, None)).collect(),
    }))
}

pub async fn show(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
) -> Result<axum::Json<Build>, ApiError> {
    let reference = super::build_ref(&reference)?;
    let view = state.tugboat.show_build(&who, &reference).await?;
    Ok(axum::Json(build(view.build, view.artifacts)))
}

/// The canonical manifest bytes, exactly as hashed.
pub async fn manifest(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let reference = super::build_ref(&reference)?;
    let (digest, text) = state.tugboat.manifest(&who, &reference).await?;
    let mut res = text.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        res.headers_mut().insert(header::ETAG, v);
    }
    Ok(res)
}

pub async fn register(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
    Json(req): Json<RegisterArtifacts>,
) -> Result<(StatusCode, axum::Json<ArtifactsRegistered>), ApiError> {
    let reference = super::build_ref(&reference)?;
    let added = state
        .tugboat
        .register_artifacts(&who, &reference, req.artifacts)
        .await?;
    let status = if added > 0 { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(ArtifactsRegistered { added })))
}

pub async fn seal(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
) -> Result<axum::Json<Build>, ApiError> {
    let reference = super::build_ref(&reference)?;
    let row = state.tugboat.seal_build(&who, &reference).await?;
    Ok(axum::Json(build(row, None)))
}

pub async fn yank(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
    Json(req): Json<tug_api::Yank>,
) -> Result<axum::Json<Build>, ApiError> {
    let reference = super::build_ref(&reference)?;
    let row = state
        .tugboat
        .yank_build(&who, &reference, req.reason.as_deref())
        .await?;
    Ok(axum::Json(build(row, None)))
}

pub async fn unembargo(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
) -> Result<axum::Json<Build>, ApiError> {
    let reference = super::build_ref(&reference)?;
    let row = state.tugboat.unembargo_build(&who, &reference).await?;
    Ok(axum::Json(build(row, None)))
}

pub async fn mark_critical(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(reference): Path<String>,
) -> Result<axum::Json<Build>, ApiError> {
    let reference = super::build_ref(&reference)?;
    let row = state.tugboat.mark_critical(&who, &reference).await?;
    Ok(axum::Json(build(row, None)))
}
