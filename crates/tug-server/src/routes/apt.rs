//! `/apt/<service>/`: an APT repository per service, one suite per
//! environment. `dists/<env>/{InRelease,Release,Release.gpg}`, the
//! `Packages` indexes (plain, gz, xz, and by their sha256 under `by-hash`),
//! the packages under `pool/<env>/<build>/<file>`, and the public key
//! (`key.asc`, `key.gpg`).
//!
//! Callers without credentials see public environments only. apt sends a
//! Tugboat token as the password of Basic credentials (its `auth.conf`);
//! a bearer token works too. What a caller may see is decided by
//! `Tugboat::apt_generations`; this module only caches the signed indexes
//! of each generation (they depend on nothing else) and serves them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use tug_core::{ArtifactName, BuildId, EnvName, ServiceName};
use tug_service::{AptIndexes, Generation, Principal};

use crate::error::ApiError;
use crate::AppState;

/// How many generations' indexes a server keeps in memory (every suite's
/// few recent ones).
const CACHED: usize = 256;

/// Signed indexes by generation key, oldest first out.
#[derive(Clone, Default)]
pub struct Cache(Arc<Mutex<Cached>>);

/// The indexes, and their keys in the order they were made.
type Cached = (HashMap<String, Arc<AptIndexes>>, VecDeque<String>);

impl Cache {
    fn get(&self, key: &str) -> Option<Arc<AptIndexes>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .get(key)
            .cloned()
    }

    fn put(&self, key: String, value: Arc<AptIndexes>) {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, order) = &mut *guard;
        if map.insert(key.clone(), value).is_none() {
            order.push_back(key);
        }
        while order.len() > CACHED {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
}

/// The routes, merged into the server's router.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/apt/{service}/key.asc", get(key_asc))
        .route("/apt/{service}/key.gpg", get(key_gpg))
        .route("/apt/{service}/dists/{env}/{*file}", get(dists))
        .route("/apt/{service}/pool/{env}/{build}/{*name}", get(pool))
}

/// The caller, if it sent credentials: apt's Basic credentials carry a
/// token as the password (any user name), other clients may send a bearer
/// token.
pub struct AptCaller(Option<Principal>);

impl FromRequestParts<AppState> for AptCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<AptCaller, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Ok(AptCaller(None));
        };
        let invalid = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the Authorization header must be Basic credentials with a Tugboat token as the password (apt's auth.conf), or \"Bearer <token>\"",
            )
        };
        let value = value.to_str().map_err(|_| invalid())?;
        let secret = if let Some(b) = value.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|_| invalid())?;
            let text = String::from_utf8(decoded).map_err(|_| invalid())?;
            let (_, password) = text.split_once(':').ok_or_else(invalid)?;
            password.to_string()
        } else if let Some(b) = value.strip_prefix("Bearer ") {
            b.trim().to_string()
        } else {
            return Err(invalid());
        };
        if secret.is_empty() {
            return Err(invalid());
        }
        Ok(AptCaller(Some(state.tugboat.authenticate(&secret).await?)))
    }
}

fn service(segment: &str) -> Result<ServiceName, ApiError> {
    ServiceName::parse(segment).map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("this repository has no {what}; see dists/<env>/InRelease for what it lists"),
    )
}

/// A suite's environment from the path; a name that cannot be one is not
/// found, as an unknown environment is.
fn environment(segment: &str) -> Result<EnvName, ApiError> {
    EnvName::parse(segment).map_err(|_| not_found("such suite"))
}

fn body(content_type: &'static str, cache: &'static str, bytes: impl Into<axum::body::Body>) -> Response {
    let mut res = Response::new(bytes.into());
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    res
}

/// What changes on promotion is read anew each time.
const FRESH: &str = "no-cache";
/// What is named by its content (by-hash indexes, packages) never changes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

async fn key_asc(State(state): State<AppState>, Path(segment): Path<String>) -> Result<Response, ApiError> {
    service(&segment)?;
    let key = state.tugboat.apt_key().await?;
    Ok(body("application/pgp-keys", FRESH, key.public_armored().to_string()))
}

async fn key_gpg(State(state): State<AppState>, Path(segment): Path<String>) -> Result<Response, ApiError> {
    service(&segment)?;
    let key = state.tugboat.apt_key().await?;
    Ok(body("application/pgp-keys", FRESH, key.public_binary().to_vec()))
}

/// The signed indexes of `g`, made once per generation: requests for the
/// same generation at once wait for the first to make them.
async fn indexes(state: &AppState, g: &Generation) -> Result<Arc<AptIndexes>, ApiError> {
    let key = g.key();
    if let Some(found) = state.apt.get(&key) {
        return Ok(found);
    }
    let _flight = state.channel_flights.hold(&format!("apt {key}")).await;
    if let Some(found) = state.apt.get(&key) {
        return Ok(found);
    }
    let made = Arc::new(state.tugboat.apt_indexes(g).await?);
    state.apt.put(key, made.clone());
    Ok(made)
}

async fn dists(
    State(state): State<AppState>,
    AptCaller(who): AptCaller,
    Path((service_segment, env_segment, file)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let service = service(&service_segment)?;
    let env = environment(&env_segment)?;
    let generations = state.tugboat.apt_generations(who.as_ref(), &service, &env).await?;
    let Some(now) = generations.first() else {
        return Err(not_found("such suite"));
    };
    match file.as_str() {
        "InRelease" => Ok(body(
            "text/plain; charset=utf-8",
            FRESH,
            indexes(&state, now).await?.in_release.clone(),
        )),
        "Release" => Ok(body(
            "text/plain; charset=utf-8",
            FRESH,
            indexes(&state, now).await?.release.clone(),
        )),
        "Release.gpg" => Ok(body(
            "application/pgp-signature",
            FRESH,
            indexes(&state, now).await?.release_gpg.clone(),
        )),
        _ => {
            let (dir, name) = file.rsplit_once('/').ok_or_else(|| not_found("such file"))?;
            if let Some(dir) = dir.strip_suffix("/by-hash/SHA256") {
                // Any recent generation the caller may see: a client that
                // read InRelease just before a promotion gets the indexes
                // it names, never a mix.
                for g in &generations {
                    let idx = indexes(&state, g).await?;
                    if let Some(path) = idx.by_hash.get(name) {
                        if path.rsplit_once('/').is_some_and(|(d, _)| d == dir) {
                            if let Some(bytes) = idx.files.get(path) {
                                return Ok(body("application/octet-stream", IMMUTABLE, bytes.clone()));
                            }
                        }
                    }
                }
                return Err(not_found("index with that hash"));
            }
            let idx = indexes(&state, now).await?;
            match idx.files.get(&file) {
                Some(bytes) => Ok(body("application/octet-stream", FRESH, bytes.clone())),
                None => Err(not_found("such file")),
            }
        }
    }
}

async fn pool(
    State(state): State<AppState>,
    AptCaller(who): AptCaller,
    Path((service_segment, env_segment, build, name)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let service = service(&service_segment)?;
    let env = environment(&env_segment)?;
    let (Ok(build), Ok(name)) = (BuildId::parse(&build), ArtifactName::parse(&name)) else {
        return Err(not_found("such package"));
    };
    let file = state
        .tugboat
        .apt_pool_file(who.as_ref(), &service, &env, &build, &name)
        .await?;
    let tugboat = &state.tugboat;
    let digest = file.digest();
    let mut res = super::blobs::ranged(
        &headers,
        &digest,
        async || Ok(file.size),
        async |start, end| tugboat.apt_pool_read(&file, start, end).await,
    )
    .await?;
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    Ok(res.into_response())
}
