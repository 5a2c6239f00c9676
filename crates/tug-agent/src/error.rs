//! The agent's error type. Network errors never end the agent (it backs
//! off and retries); the errors that reach the caller of `run` are those
//! that make the agent unable to work at all (its directory, its lock).

use std::path::PathBuf;

use tug_core::{ArtifactName, BuildId, Digest};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("another agent is already running on {0}; one agent per directory")]
    Locked(PathBuf),
    #[error(transparent)]
    Client(#[from] tug_client::Error),
    #[error("cannot fetch blob {digest}: {source}")]
    Fetch { digest: Digest, source: tug_client::Error },
    #[error("no space left on {dir} for build {build}: {needed} bytes to download, {available} available")]
    NoSpace {
        dir: PathBuf,
        build: BuildId,
        needed: u64,
        available: u64,
    },
    #[error("{path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("cannot unpack {artifact}: {why}")]
    Archive { artifact: ArtifactName, why: String },
    #[error("build {build} did not become healthy: {reason}")]
    Unhealthy { build: BuildId, reason: String },
    #[error("cannot start the supervised process: {0}")]
    Spawn(std::io::Error),
    #[error("the agent's background task stopped: {0}")]
    Task(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with the path it concerns.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
