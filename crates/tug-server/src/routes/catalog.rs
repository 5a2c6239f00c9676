//! The public release catalog, for anyone without a token:
//!
//! - `GET /v1/releases/{service}[?env=E&limit=N&cursor=C]`: the published
//!   versions as JSON ([`tug_api::Catalog`]);
//! - `GET|HEAD /dl/{service}/{version}/{artifact}` and
//!   `GET|HEAD /dl/{service}/{env}/latest/{artifact}`: stable download
//!   links, ranged, with the digest as `ETag`, cacheable for good when
//!   versioned and for a minute when they follow an environment;
//! - `GET /releases/{service}`: the same catalog as an HTML page.
//!
//! A token, if sent, is not read: these answers are the public view and
//! show the same to everyone. What is public is decided in
//! `tug_service::access`; these handlers only translate.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tug_api::{Catalog, CatalogQuery};
use tug_core::{ArtifactName, ArtifactSpec, EnvName, ServiceName, Version};

use crate::error::ApiError;
use crate::AppState;

mod page;

/// Versioned links never change what they serve.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `latest` links and the catalog move with deployments.
const SHORT: &str = "public, max-age=60";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/releases/{service}", get(releases))
        .route("/releases/{service}", get(page::releases_page))
        // Artifact names may hold '/', so the rest of the path is one
        // wildcard; a version always has dots and an environment never
        // does, which tells the two link forms apart.
        .route("/dl/{service}/{first}/{*rest}", get(download))
}

fn service(text: &str) -> Result<ServiceName, ApiError> {
    ServiceName::parse(text).map_err(|e| ApiError::bad_request("invalid_path", e.to_string()))
}

/// The catalog a query asks for.
pub(crate) async fn catalog_of(
    state: &AppState,
    service_text: &str,
    q: &CatalogQuery,
) -> Result<Arc<Catalog>, ApiError> {
    let service = service(service_text)?;
    let env = super::env_param(q.env.as_deref())?;
    Ok(state
        .tugboat
        .catalog(&service, env.as_ref(), q.limit, q.cursor.as_deref())
        .await?)
}

async fn releases(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Query(q): Query<CatalogQuery>,
) -> Result<Response, ApiError> {
    let catalog = catalog_of(&state, &service, &q).await?;
    let mut res = axum::Json(&*catalog).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(SHORT));
    Ok(res)
}

async fn download(
    State(state): State<AppState>,
    Path((service_text, first, rest)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let service = service(&service_text)?;
    let name = |text: &str| ArtifactName::parse(text).map_err(|e| ApiError::bad_request("invalid_path", e.to_string()));
    let (artifact, cache) = if let Ok(version) = Version::parse(&first) {
        let name = name(&rest)?;
        (
            state.tugboat.published_artifact(&service, &version, &name).await?,
            IMMUTABLE,
        )
    } else {
        let env = EnvName::parse(&first).map_err(|e| ApiError::bad_request("invalid_path", e.to_string()))?;
        let Some(rest) = rest.strip_prefix("latest/") else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("download links are /dl/{service}/VERSION/ARTIFACT or /dl/{service}/ENV/latest/ARTIFACT"),
            ));
        };
        let name = name(rest)?;
        (state.tugboat.latest_artifact(&service, &env, &name).await?, SHORT)
    };
    let fixed = file_headers(&artifact, cache);
    if not_modified(&headers, &artifact) {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        res.headers_mut().extend(fixed);
        return Ok(res);
    }
    let mut res = if method == Method::HEAD {
        // A HEAD is answered from the artifact's row, without opening the
        // blob (on S3, that would be a request).
        let mut res = StatusCode::OK.into_response();
        let h = res.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(artifact.size));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Some(v) = super::blobs::etag(&artifact.digest) {
            h.insert(header::ETAG, v);
        }
        res
    } else {
        let tugboat = &state.tugboat;
        super::blobs::ranged(
            &headers,
            &artifact.digest,
            async || Ok(artifact.size),
            async |start, end| tugboat.published_blob(&artifact, start, end).await,
        )
        .await?
    };
    res.headers_mut().extend(fixed);
    Ok(res)
}

/// Whether `If-None-Match` names the artifact's digest (or `*`).
fn not_modified(headers: &HeaderMap, artifact: &ArtifactSpec) -> bool {
    let quoted = format!("\"{}\"", artifact.digest);
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == quoted)
}

/// The headers every answer for a file carries, 304s included.
fn file_headers(artifact: &ArtifactSpec, cache: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Some(v) = super::blobs::etag(&artifact.digest) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&artifact.name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h
}

/// `attachment` with the artifact's file name (its last path segment): a
/// quoted ASCII fallback in which anything that could end or bend the
/// quoted string is replaced, and the exact name percent-encoded as RFC
/// 6266 and RFC 8187 describe.
fn content_disposition(name: &ArtifactName) -> String {
    let file = name.as_str().rsplit('/').next().unwrap_or(name.as_str());
    let fallback: String = file
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let exact = percent_encoding::utf8_percent_encode(file, percent_encoding::NON_ALPHANUMERIC);
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_quoted_safely() {
        let n = ArtifactName::parse("linux/amd64/app \"x\" ü.tar.gz").unwrap();
        assert_eq!(
            content_disposition(&n),
            "attachment; filename=\"app _x_ _.tar.gz\"; filename*=UTF-8''app%20%22x%22%20%C3%BC%2Etar%2Egz"
        );
        assert_eq!(
            content_disposition(&ArtifactName::parse("app.deb").unwrap()),
            "attachment; filename=\"app.deb\"; filename*=UTF-8''app%2Edeb"
        );
    }
}
