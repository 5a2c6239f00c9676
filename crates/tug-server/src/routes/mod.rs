//! One module per resource. Handlers only translate between HTTP and the
//! use cases.

pub mod admin;
pub mod agents;
pub mod apt;
pub mod audit;
pub mod blobs;
pub mod builds;
pub mod catalog;
pub mod deploy;
pub mod events;
pub mod metrics;
pub mod oci;
pub mod services;
pub mod tokens;
pub mod webhooks;

use axum::http::{StatusCode, Uri};

use crate::error::ApiError;

/// `GET /healthz`: answers without a token once the server is serving.
pub async fn health() -> &'static str {
    "ok\n"
}

/// A `service` query parameter, checked.
pub(crate) fn service_param(service: Option<&str>) -> Result<Option<tug_core::ServiceName>, ApiError> {
    name_param(service, tug_core::ServiceName::parse)
}

/// An `env` query parameter, checked.
pub(crate) fn env_param(env: Option<&str>) -> Result<Option<tug_core::EnvName>, ApiError> {
    name_param(env, tug_core::EnvName::parse)
}

fn name_param<T>(text: Option<&str>, parse: fn(&str) -> Result<T, tug_core::NameError>) -> Result<Option<T>, ApiError> {
    text.map(parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))
}

/// A build reference from a path or a body, parsed once here; a text that
/// names no build is a 400 saying what would.
pub(crate) fn build_ref(text: &str) -> Result<tug_core::BuildRef, ApiError> {
    tug_core::BuildRef::parse(text).map_err(|e| ApiError::from(tug_service::Error::Invalid(e.to_string())))
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}; the API lives under /v1", uri.path()),
    )
}
