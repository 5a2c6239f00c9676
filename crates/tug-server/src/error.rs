//! `ApiError`: the one error type of the HTTP layer. Every use-case error
//! maps to a status and a stable `code` through one exhaustive `match`, so a
//! new error cannot reach a client unmapped. 5xx bodies are generic; the
//! cause is logged once, here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tug_api::ErrorBody;
use tug_core::SealError;
use tug_service::Error;

/// The message of every 5xx answer: the cause is logged, never sent.
pub(crate) const INTERNAL_MESSAGE: &str =
    "the server failed to handle the request; the cause is in its log; retry later";

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn internal(cause: &dyn std::error::Error) -> ApiError {
        tracing::error!(error = %cause, source = ?cause.source(), "request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", INTERNAL_MESSAGE)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        use StatusCode as S;
        match e {
            Error::InvalidToken => ApiError::new(
                S::UNAUTHORIZED,
                "invalid_token",
                "the bearer token is not valid; check TUG_TOKEN or --token",
            ),
            Error::TokenRevoked(name) => ApiError::new(
                S::UNAUTHORIZED,
                "token_revoked",
                format!("token {name} was revoked; ask an admin for a new one (tug token create)"),
            ),
            Error::Forbidden { role, action } => ApiError::new(
                S::FORBIDDEN,
                "forbidden",
                format!("role {role} may not {}; use a token with a role that may", describe(action)),
            ),
            e @ Error::AdminOnly(_) => ApiError::new(
                S::FORBIDDEN,
                "forbidden",
                format!("{e}; use an admin token, or ask an admin"),
            ),
            e @ Error::OutOfScope { .. } => ApiError::new(S::FORBIDDEN, "out_of_scope", e.to_string()),
            Error::TokenNotFound(name) => ApiError::new(
                S::NOT_FOUND,
                "token_not_found",
                format!("no active token is named {name:?}; see tug token list"),
            ),
            e @ Error::TokenAlreadyRevoked { .. } => ApiError::new(
                S::CONFLICT,
                "token_already_revoked",
                format!("{e}; see tug token list"),
            ),
            Error::TokenNameTaken(name) => ApiError::new(
                S::CONFLICT,
                "token_exists",
                format!("an active token named {name} already exists; pick another name or revoke it first"),
            ),
            e @ Error::LastAdmin => ApiError::new(S::CONFLICT, "last_admin", e.to_string()),
            Error::Invalid(message) => ApiError::bad_request("invalid_request", message),
            Error::ServiceNotFound(s) => ApiError::new(
                S::NOT_FOUND,
                "service_not_found",
                format!("service {s} does not exist; an admin creates it with tug service create {s}"),
            ),
            Error::BuildNotFound(b) => ApiError::new(
                S::NOT_FOUND,
                "build_not_found",
                format!("build {b} does not exist; see tug build list --service <service>"),
            ),
            Error::AmbiguousId { prefix, candidates } => ApiError::bad_request(
                "ambiguous_id",
                if candidates.is_empty() {
                    format!("{prefix} starts more than one id; give more of the id")
                } else {
                    format!(
                        "{prefix} starts more than one id: {}; give more of the id",
                        candidates.join(", ")
                    )
                },
            ),
            Error::HiddenBuild(message) => ApiError::new(S::NOT_FOUND, "build_not_found", message),
            Error::NotSealed(b) => ApiError::new(
                S::CONFLICT,
                "build_not_sealed",
                format!("build {b} is a draft and has no manifest yet; seal it with tug build seal {b}"),
            ),
            Error::BlobNotFound(d) => ApiError::new(
                S::NOT_FOUND,
                "blob_not_found",
                format!("blob {d} is not stored; push it first"),
            ),
            Error::BlobMissing { name, digest } => ApiError::new(
                S::UNPROCESSABLE_ENTITY,
                "blob_missing",
                format!("artifact {name}: blob {digest} is not stored; upload it (PUT /v1/blobs/{digest}, as tug push does) before registering the artifact"),
            ),
            e @ Error::SizeMismatch { .. } => ApiError::new(
                S::UNPROCESSABLE_ENTITY,
                "size_mismatch",
                format!("{e}; register the size of the stored blob"),
            ),
            Error::Seal(e) => {
                let code = match e {
                    SealError::MissingExpected(_) => "missing_artifacts",
                    SealError::UnknownDerivation { .. } => "unknown_derivation",
                    SealError::Empty => "empty_build",
                };
                ApiError::new(S::CONFLICT, code, e.to_string())
            }
            Error::Pipeline(e @ tug_core::PipelineError::TooLarge { .. }) => ApiError::new(
                S::PAYLOAD_TOO_LARGE,
                "pipeline_too_large",
                format!("{e}; a pipeline that large is almost certainly generated by mistake"),
            ),
            Error::Pipeline(e) => ApiError::bad_request("invalid_pipeline", format!("{e}; fix the pipeline file and apply it again")),
            Error::NoPipeline(s) => ApiError::new(
                S::NOT_FOUND,
                "pipeline_not_found",
                format!("service {s} has no pipeline yet; apply one with tug pipeline apply -f pipeline.toml"),
            ),
            Error::EnvironmentNotFound { service, environment, known } => ApiError::new(
                S::NOT_FOUND,
                "environment_not_found",
                format!("service {service} has no environment {environment}; its environments are {known}"),
            ),
            Error::Policy(violations) => ApiError::new(
                S::CONFLICT,
                "policy_violation",
                violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; "),
            ),
            Error::SelfApproval { token } => ApiError::new(
                S::FORBIDDEN,
                "self_approval",
                format!("token {token} asked for this deployment; another approver must approve it"),
            ),
            Error::NothingToDeploy(m) => ApiError::new(S::CONFLICT, "nothing_to_deploy", m),
            Error::Conflict(m) => ApiError::new(S::CONFLICT, "conflict", m),
            Error::RequestClosed(id) => ApiError::new(
                S::CONFLICT,
                "request_closed",
                format!("deployment request {id} is no longer pending; see tug status"),
            ),
            Error::Store(e) => match e {
                e @ tug_store::Error::DigestMismatch { .. } => {
                    ApiError::bad_request("digest_mismatch", format!("{e}; upload the bytes under their real digest"))
                }
                tug_store::Error::TooLarge { limit } => ApiError::new(
                    S::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the body is larger than this server's max_blob_size of {limit} bytes; nothing was stored"),
                ),
                e @ tug_store::Error::Interrupted { .. } => {
                    ApiError::bad_request("upload_interrupted", format!("{e}; upload the blob again"))
                }
                e @ tug_store::Error::RangeNotSatisfiable { .. } => {
                    ApiError::new(S::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", e.to_string())
                }
                e @ (tug_store::Error::Config { .. } | tug_store::Error::Io(_) | tug_store::Error::ObjectStore(_)) => {
                    ApiError::internal(&e)
                }
            },
            Error::Db(e) => match e {
                tug_db::Error::NotDraft { id, state } => ApiError::new(
                    S::CONFLICT,
                    "build_not_draft",
                    format!("build {id} is {state} and can no longer change; create a new build"),
                ),
                tug_db::Error::DuplicateArtifact { id, name, existing } => ApiError::new(
                    S::CONFLICT,
                    "duplicate_artifact",
                    format!("build {id} already has an artifact named {name} with other content ({existing}); use another name"),
                ),
                // The service turns these into its own variants; map them
                // the same way if one arrives wrapped.
                e @ (tug_db::Error::BuildNotFound(_)
                | tug_db::Error::ServiceNotFound(_)
                | tug_db::Error::TokenNameTaken(_)
                | tug_db::Error::Conflict(_)
                | tug_db::Error::RequestNotPending(_)) => ApiError::from(Error::from(e)),
                e @ (tug_db::Error::Sqlx(_)
                | tug_db::Error::Migrate(_)
                | tug_db::Error::UnsupportedUrl(_)
                | tug_db::Error::Corrupt(_)) => ApiError::internal(&e),
            },
        }
    }
}

fn describe(action: tug_core::Action) -> &'static str {
    use tug_core::Action;
    match action {
        Action::Read => "read",
        Action::WriteBuilds => "create or change builds and upload blobs",
        Action::ManageServices => "manage services",
        Action::ManageTokens => "manage tokens",
        Action::Maintain => "run store maintenance (fsck, gc)",
        Action::Audit => "verify or export the audit log",
        Action::ManagePipelines => "change pipelines or policies",
        Action::Deploy => "release, promote or roll back builds",
        Action::Approve => "approve or reject deployments",
        Action::Follow => "follow a channel",
        Action::Report => "report as an agent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_database_errors_map_like_the_service_ones() {
        let service = tug_core::ServiceName::parse("api").unwrap();
        let wrapped = ApiError::from(Error::Db(tug_db::Error::ServiceNotFound(service.clone())));
        let direct = ApiError::from(Error::ServiceNotFound(service));
        assert_eq!(
            (wrapped.status, wrapped.code, &wrapped.message),
            (direct.status, direct.code, &direct.message)
        );
        assert_eq!(wrapped.status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let e = ApiError::from(Error::Db(tug_db::Error::Corrupt("secret detail".into())));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("secret detail"));
    }
}
