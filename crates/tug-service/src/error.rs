//! The errors of the use cases: each carries the facts a caller needs to
//! act (which build, which digest, which role), and converts from the store's
//! and the database's errors without losing them.

use tug_core::{Action, ArtifactName, BuildId, Digest, Role, SealError, ServiceName, TokenName};

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
    #[error(transparent)]
    Store(tug_store::Error),
    #[error(transparent)]
    Db(tug_db::Error),
}

impl From<tug_store::Error> for Error {
    fn from(e: tug_store::Error) -> Self {
        Error::Store(e)
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
            other => Error::Db(other),
        }
    }
}
