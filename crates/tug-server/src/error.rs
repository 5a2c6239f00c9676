//! `ApiError`: the one error type of the HTTP layer. Every use-case error
//! maps to a status and a stable `code` through one exhaustive `match`, so a
//! new error cannot reach a client unmapped. 5xx bodies are generic; the
//! cause is logged once, here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tug_api::ErrorBody;
use tug_core::SealError;
use tug_service::{Error, ErrorKind};

/// The message of every 5xx answer: the cause is logged, never sent.
pub(crate) const INTERNAL_MESSAGE: &str =
    "the server failed to handle the request; the cause is in its log; retry later";

/// The message of a 503 answer: the database could not be reached in time.
pub(crate) const UNAVAILABLE_MESSAGE: &str =
    "the server cannot reach its database right now; the cause is in its log; retry later";

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

/// The status of each kind of service error; a few errors refine it
/// (see [`ApiError::from`]).
fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict | ErrorKind::Policy => StatusCode::CONFLICT,
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    /// The status comes from the error's kind; the code and the message
    /// from the error itself, with what the user can do about it. Internal
    /// and unavailable errors say nothing of their cause, which is logged.
    fn from(e: Error) -> ApiError {
        use StatusCode as S;
        let status = status_of(e.kind());
        // Variants whose status is more precise than their kind's.
        let refine = |s: StatusCode, code: &'static str, message: String| ApiError::new(s, code, message);
        let plain = |code: &'static str, message: String| ApiError::new(status, code, message);
        match e {
            Error::InvalidToken => plain(
                "invalid_token",
                "the bearer token is not valid; check TUG_TOKEN or --token".into(),
            ),
            Error::TokenRevoked(name) => plain(
                "token_revoked",
                format!("token {name} was revoked; ask an admin for a new one (tug token create)"),
            ),
            Error::Forbidden { role, action } => plain(
                "forbidden",
                format!("role {role} may not {}; use a token with a role that may", describe(action)),
            ),
            e @ Error::AdminOnly(_) => plain("forbidden", format!("{e}; use an admin token, or ask an admin")),
            e @ Error::OutOfScope { .. } => plain("out_of_scope", e.to_string()),
            Error::TokenNotFound(name) => plain(
                "token_not_found",
                format!("no active token is named {name:?}; see tug token list"),
            ),
            e @ Error::TokenAlreadyRevoked { .. } => plain("token_already_revoked", format!("{e}; see tug token list")),
            Error::TokenNameTaken(name) => plain(
                "token_exists",
                format!("an active token named {name} already exists; pick another name or revoke it first"),
            ),
            e @ Error::LastAdmin => plain("last_admin", e.to_string()),
            Error::Invalid(message) => plain("invalid_request", message),
            Error::ServiceNotFound(s) => plain(
                "service_not_found",
                format!("service {s} does not exist; an admin creates it with tug service create {s}"),
            ),
            Error::BuildNotFound(b) => plain(
                "build_not_found",
                format!("build {b} does not exist; see tug build list --service <service>"),
            ),
            Error::AmbiguousId { prefix, candidates } => plain(
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
            Error::HiddenBuild(message) => plain("build_not_found", message),
            Error::NotPublished(message) => plain("not_published", message),
            e @ Error::WebhookNotFound(_) => plain("webhook_not_found", format!("{e}; see tug webhook list")),
            e @ Error::DeliveryNotFound(_) => plain(
                "delivery_not_found",
                format!("{e}; see tug webhook deliveries WEBHOOK"),
            ),
            Error::NotSealed(b) => plain(
                "build_not_sealed",
                format!("build {b} is a draft and has no manifest yet; seal it with tug build seal {b}"),
            ),
            Error::BlobNotFound(d) => plain("blob_not_found", format!("blob {d} is not stored; push it first")),
            Error::BlobMissing { name, digest } => refine(
                S::UNPROCESSABLE_ENTITY,
                "blob_missing",
                format!("artifact {name}: blob {digest} is not stored; upload it (PUT /v1/blobs/{digest}, as tug push does) before registering the artifact"),
            ),
            e @ Error::NotDebianPackage { .. } => refine(
                S::UNPROCESSABLE_ENTITY,
                "not_a_debian_package",
                format!("{e}; push a package built by dpkg-deb, or give the artifact another --kind"),
            ),
            e @ Error::PackageNotFound(_) => plain("package_not_found", format!("{e}; run apt-get update")),
            e @ Error::SizeMismatch { .. } => refine(
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
                plain(code, e.to_string())
            }
            Error::Pipeline(e @ tug_core::PipelineError::TooLarge { .. }) => refine(
                S::PAYLOAD_TOO_LARGE,
                "pipeline_too_large",
                format!("{e}; a pipeline that large is almost certainly generated by mistake"),
            ),
            Error::Pipeline(e) => plain("invalid_pipeline", format!("{e}; fix the pipeline file and apply it again")),
            Error::NoPipeline(s) => plain(
                "pipeline_not_found",
                format!("service {s} has no pipeline yet; apply one with tug pipeline apply -f pipeline.toml"),
            ),
            Error::EnvironmentNotFound { service, environment, known } => plain(
                "environment_not_found",
                format!("service {service} has no environment {environment}; its environments are {known}"),
            ),
            Error::Policy(violations) => plain(
                "policy_violation",
                violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; "),
            ),
            Error::SelfApproval { token } => plain(
                "self_approval",
                format!("token {token} asked for this deployment; another approver must approve it"),
            ),
            Error::NothingToDeploy(m) => plain("nothing_to_deploy", m),
            Error::Conflict(m) => plain("conflict", m),
            Error::RequestClosed(id) => plain(
                "request_closed",
                format!("deployment request {id} is no longer pending; see tug status"),
            ),
            Error::BuildNotDraft { id, state } => plain(
                "build_not_draft",
                format!("build {id} is {state} and can no longer change; create a new build"),
            ),
            Error::DuplicateArtifact { id, name, existing } => plain(
                "duplicate_artifact",
                format!("build {id} already has an artifact named {name} with other content ({existing}); use another name"),
            ),
            e @ Error::DigestMismatch { .. } => {
                plain("digest_mismatch", format!("{e}; upload the bytes under their real digest"))
            }
            Error::TooLarge { limit } => refine(
                S::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than this server's max_blob_size of {limit} bytes; nothing was stored"),
            ),
            e @ Error::UploadInterrupted { .. } => plain("upload_interrupted", format!("{e}; upload the blob again")),
            e @ Error::RangeNotSatisfiable { .. } => {
                refine(S::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", e.to_string())
            }
            // Registry errors are answered by the registry's routes in the
            // specification's form; elsewhere they keep their message.
            Error::Oci(e) => plain("registry_error", e.message),
            Error::Unavailable(cause) => {
                tracing::error!(error = %cause, source = ?std::error::Error::source(&cause), "request failed: unavailable");
                plain("unavailable", UNAVAILABLE_MESSAGE.into())
            }
            Error::Internal(cause) => ApiError::internal(&cause),
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
        Action::ReadMetrics => "read the metrics (a metrics or admin token)",
        Action::ManageWebhooks => "manage webhooks",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let e = ApiError::from(Error::internal("secret detail"));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.code, "internal");
        assert!(!e.message.contains("secret detail"));
    }

    #[test]
    fn statuses_follow_the_kind_unless_refined() {
        let service = tug_core::ServiceName::parse("api").unwrap();
        let e = ApiError::from(Error::ServiceNotFound(service));
        assert_eq!((e.status, e.code), (StatusCode::NOT_FOUND, "service_not_found"));
        let e = ApiError::from(Error::Unavailable(tug_service::Cause::new("pool timed out")));
        assert_eq!((e.status, e.code), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
        assert!(!e.message.contains("pool"));
        let e = ApiError::from(Error::RangeNotSatisfiable { start: 9, size: 3 });
        assert_eq!(e.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(e.message, "range starts at 9, past the end of the 3-byte blob");
    }
}
