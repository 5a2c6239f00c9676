//! The errors of the use cases: each carries the facts a caller needs to
//! act (which build, which digest, which role) and a [`ErrorKind`] that says
//! what sort of failure it is. The store's and the database's errors are
//! converted here, once: what a caller can act on becomes a variant of its
//! own, everything else one opaque [`Error::Internal`] (or
//! [`Error::Unavailable`] when the database cannot be reached), so no layer
//! above the service ever sees a database or storage error.

use tug_core::{Action, ArtifactName, BuildId, BuildState, Digest, Role, SealError, ServiceName, TokenName};

/// What sort of failure an [`Error`] is: the server maps kinds to statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's credentials are missing, not valid or revoked.
    Unauthenticated,
    /// The caller is known but may not do this.
    Forbidden,
    /// What the request names does not exist (or the caller may not see it).
    NotFound,
    /// The request is valid but the current state does not allow it.
    Conflict,
    /// A deployment policy refuses the request.
    Policy,
    /// The request itself is not valid.
    Invalid,
    /// A dependency (the database) cannot be reached right now; retrying
    /// may succeed.
    Unavailable,
    /// The server failed; the cause is for its log, not for the client.
    Internal,
}

/// The cause of an internal or unavailable failure: displayed and logged,
/// never matched on, so nothing above the service depends on which lower
/// layer failed or how.
#[derive(Debug)]
pub struct Cause(Box<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Cause {
        Cause(cause.into())
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the token is not valid")]
    InvalidToken,
    #[error("token {0} was revoked")]
    TokenRevoked(TokenName),
    #[error("role {role} may not {action:?}")]
    Forbidden { role: Role, action: Action },
    /// Something only an admin token may do, whatever the role allows
    /// otherwise (e.g. "override a freeze window").
    #[error("only an admin token may {0}")]
    AdminOnly(&'static str),
    #[error("token {token} is scoped to {scope} and cannot act on {asked}; use a token for {asked}")]
    OutOfScope {
        token: TokenName,
        /// `api`, or `api/sec` for an agent token scoped to an environment.
        scope: String,
        asked: String,
    },
    #[error("no active token is named {0}")]
    TokenNotFound(String),
    #[error("token {name} was already revoked at {at}")]
    TokenAlreadyRevoked { name: TokenName, at: String },
    #[error("an active token named {0} already exists")]
    TokenNameTaken(TokenName),
    #[error("this is the last active admin token; create another admin token before revoking it")]
    LastAdmin,
    #[error("{0}")]
    Invalid(String),
    #[error("service {0} does not exist")]
    ServiceNotFound(ServiceName),
    #[error("build {0} does not exist")]
    BuildNotFound(String),
    /// A prefix that starts more than one id; `candidates` names those the
    /// caller may know of.
    #[error("{prefix} starts more than one id")]
    AmbiguousId { prefix: String, candidates: Vec<String> },
    /// An action would take a build the caller may not see (an
    /// environment runs an embargoed build); the message says where.
    #[error("{0}")]
    HiddenBuild(String),
    /// Nothing public answers a link of the release catalog (an unknown
    /// version, one never published, an artifact it lacks); the message
    /// says what to look for, and is worded alike whatever the reason.
    #[error("{0}")]
    NotPublished(String),
    #[error("build {0} is not sealed")]
    NotSealed(BuildId),
    #[error("blob {0} is not stored")]
    BlobNotFound(Digest),
    #[error("artifact {name}: blob {digest} is not stored")]
    BlobMissing { name: ArtifactName, digest: Digest },
    #[error("artifact {name} claims {claimed} bytes but its blob has {stored}")]
    SizeMismatch {
        name: ArtifactName,
        claimed: u64,
        stored: u64,
    },
    #[error(transparent)]
    Seal(SealError),
    #[error(transparent)]
    Pipeline(tug_core::PipelineError),
    #[error("service {0} has no pipeline yet")]
    NoPipeline(ServiceName),
    #[error("service {service} has no environment {environment}")]
    EnvironmentNotFound {
        service: ServiceName,
        environment: tug_core::EnvName,
        known: String,
    },
    #[error("{}", .0.iter().map(|v| v.message.as_str()).collect::<Vec<_>>().join("; "))]
    Policy(Vec<tug_core::Violation>),
    #[error("{0}")]
    NothingToDeploy(String),
    #[error("token {token} asked for this deployment and cannot approve it")]
    SelfApproval { token: TokenName },
    #[error("{0}")]
    Conflict(String),
    #[error("deployment request {0} is no longer pending")]
    RequestClosed(String),
    #[error("build {id} is {state}, not a draft")]
    BuildNotDraft { id: BuildId, state: BuildState },
    #[error("build {id} already has an artifact named {name} with other content ({existing})")]
    DuplicateArtifact {
        id: BuildId,
        name: ArtifactName,
        existing: Digest,
    },
    #[error("the content hashes to {actual} ({size} bytes), not {expected}; nothing was stored")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("the body is larger than the {limit}-byte limit; nothing was stored")]
    TooLarge { limit: u64 },
    #[error("the upload was cut short after {received} bytes: {source}; nothing was stored")]
    UploadInterrupted { received: u64, source: std::io::Error },
    #[error("artifact {name} is not a Debian package: {why}")]
    NotDebianPackage { name: ArtifactName, why: String },
    #[error("no package {0} in this repository")]
    PackageNotFound(String),
    #[error("range starts at {start}, past the end of the {size}-byte blob")]
    RangeNotSatisfiable { start: u64, size: u64 },
    #[error("no webhook has the id {0}")]
    WebhookNotFound(String),
    #[error("no delivery has the id {0}")]
    DeliveryNotFound(String),
    /// A registry request the OCI Distribution Specification names an
    /// error code for.
    #[error(transparent)]
    Oci(tug_core::oci::OciError),
    #[error("unavailable: {0}")]
    Unavailable(Cause),
    #[error(transparent)]
    Internal(Cause),
}

impl Error {
    /// An internal failure with this cause (a stored value the server did
    /// not write, a failed lower layer).
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Internal(Cause::new(cause))
    }

    /// A stored row that is not valid: the database holds something this
    /// server did not write.
    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Error {
        Error::internal(format!("stored row is not valid: {what}"))
    }

    pub fn kind(&self) -> ErrorKind {
        use ErrorKind as K;
        match self {
            Error::InvalidToken | Error::TokenRevoked(_) => K::Unauthenticated,
            Error::Forbidden { .. } | Error::AdminOnly(_) | Error::OutOfScope { .. } | Error::SelfApproval { .. } => {
                K::Forbidden
            }
            Error::TokenNotFound(_)
            | Error::ServiceNotFound(_)
            | Error::BuildNotFound(_)
            | Error::HiddenBuild(_)
            | Error::NotPublished(_)
            | Error::BlobNotFound(_)
            | Error::NoPipeline(_)
            | Error::EnvironmentNotFound { .. }
            | Error::WebhookNotFound(_)
            | Error::PackageNotFound(_)
            | Error::DeliveryNotFound(_) => K::NotFound,
            Error::TokenAlreadyRevoked { .. }
            | Error::TokenNameTaken(_)
            | Error::LastAdmin
            | Error::NotSealed(_)
            | Error::Seal(_)
            | Error::NothingToDeploy(_)
            | Error::Conflict(_)
            | Error::RequestClosed(_)
            | Error::BuildNotDraft { .. }
            | Error::DuplicateArtifact { .. } => K::Conflict,
            Error::Policy(_) => K::Policy,
            Error::Invalid(_)
            | Error::AmbiguousId { .. }
            | Error::Pipeline(_)
            | Error::BlobMissing { .. }
            | Error::SizeMismatch { .. }
            | Error::DigestMismatch { .. }
            | Error::TooLarge { .. }
            | Error::UploadInterrupted { .. }
            | Error::NotDebianPackage { .. }
            | Error::RangeNotSatisfiable { .. } => K::Invalid,
            Error::Oci(e) => match e.code.status() {
                401 => K::Unauthenticated,
                403 => K::Forbidden,
                404 => K::NotFound,
                _ => K::Invalid,
            },
            Error::Unavailable(_) => K::Unavailable,
            Error::Internal(_) => K::Internal,
        }
    }
}

impl From<tug_store::Error> for Error {
    fn from(e: tug_store::Error) -> Self {
        use tug_store::Error as S;
        match e {
            S::DigestMismatch { expected, actual, size } => Error::DigestMismatch { expected, actual, size },
            S::TooLarge { limit } => Error::TooLarge { limit },
            S::Interrupted { received, source } => Error::UploadInterrupted { received, source },
            S::RangeNotSatisfiable { start, size } => Error::RangeNotSatisfiable { start, size },
            e @ (S::Config { .. } | S::Io(_) | S::ObjectStore(_)) => Error::internal(e),
        }
    }
}

impl From<tug_db::Error> for Error {
    fn from(e: tug_db::Error) -> Self {
        match e {
            tug_db::Error::TokenNameTaken(n) => Error::TokenNameTaken(n),
            tug_db::Error::ServiceNotFound(s) => Error::ServiceNotFound(s),
            tug_db::Error::BuildNotFound(id) => Error::BuildNotFound(id.to_string()),
            tug_db::Error::Conflict(m) => Error::Conflict(m),
            tug_db::Error::RequestNotPending(id) => Error::RequestClosed(id),
            tug_db::Error::NotDraft { id, state } => Error::BuildNotDraft { id, state },
            tug_db::Error::DuplicateArtifact { id, name, existing } => Error::DuplicateArtifact { id, name, existing },
            e if e.is_unavailable() => Error::Unavailable(Cause::new(e)),
            e @ (tug_db::Error::Sqlx(_)
            | tug_db::Error::Migrate(_)
            | tug_db::Error::UnsupportedUrl(_)
            | tug_db::Error::Corrupt(_)) => Error::internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_errors_become_the_service_ones() {
        let service = ServiceName::parse("api").unwrap();
        let e = Error::from(tug_db::Error::ServiceNotFound(service.clone()));
        assert!(matches!(&e, Error::ServiceNotFound(s) if *s == service), "{e:?}");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = Error::from(tug_db::Error::Corrupt("secret detail".into()));
        assert_eq!(e.kind(), ErrorKind::Internal);
    }

    #[test]
    fn store_errors_keep_their_message() {
        let e = Error::from(tug_store::Error::RangeNotSatisfiable { start: 9, size: 3 });
        assert_eq!(e.to_string(), "range starts at 9, past the end of the 3-byte blob");
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = Error::from(tug_store::Error::Io(std::io::Error::other("disk")));
        assert_eq!(e.kind(), ErrorKind::Internal);
    }
}
