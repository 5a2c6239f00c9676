//! Request extractors that turn every malformed input into an `ApiError`
//! with a clear message: the caller's token, JSON bodies (syntax errors,
//! unknown fields and oversized bodies are told apart), digests in paths.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tug_core::Digest;
use tug_service::Principal;

use crate::error::ApiError;
use crate::AppState;

/// The authenticated caller.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this request needs a token: send Authorization: Bearer <token> (tug reads TUG_TOKEN, --token, or ./tug-data/admin.token)",
            ));
        };
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "the Authorization header must be \"Bearer <token>\"",
                )
            })?;
        Ok(Caller(state.tugboat.authenticate(secret).await?))
    }
}

/// A JSON body, parsed with the type's `deny_unknown_fields`.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Json<T>, ApiError> {
        let limit = state.max_json_body;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the JSON body is larger than {limit} bytes; send fewer items per request"),
            )
        };
        // A declared length over the limit is refused before any of the
        // body is read.
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::bad_request("invalid_body", format!("the request body could not be read: {e}"))
            }
        })?;
        serde_json::from_slice(&bytes).map(Json).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
                    "malformed_json",
                    format!("the body is not valid JSON ({e}); send a JSON object"),
                ),
                Category::Data => {
                    ApiError::bad_request("invalid_request", format!("the JSON body is not acceptable: {e}"))
                }
            }
        })
    }
}

/// Parses a digest from a URL path segment.
pub fn digest(segment: &str) -> Result<Digest, ApiError> {
    Digest::parse(segment).map_err(|e| ApiError::bad_request("invalid_digest", e.to_string()))
}
