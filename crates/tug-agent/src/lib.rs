//! The Tugboat deploy agent: follows one environment's channel on the
//! server, fetches the blobs it lacks into a local content-addressed cache,
//! assembles each release in its own directory (unpacking tarballs), switches `current` to it
//! with an atomic rename, activates it (a hook and/or a supervised
//! process), checks its health, rolls back on failure and reports its state.
//!
//! The directory layout under [`AgentConfig::dir`]:
//!
//! ```text
//! agent-id                 the agent's stable id (a UUID v7)
//! agent.lock               held while an agent runs on this directory
//! state.json               what the agent was doing (see `state`)
//! supervised.pid           the `--exec` process group (see `supervisor`)
//! cache/sha256/<hex>       verified blobs, shared by all releases
//! manifests/<build>.json   the artifacts of each assembled release
//! releases/<build>/        complete releases (`<build>.tmp/` while assembling)
//! current -> releases/<build>
//! ```
//!
//! This crate talks to the server only through `tug-client` and knows
//! nothing of the CLI: the binary builds an [`AgentConfig`] and calls
//! [`run`].

mod agent;
mod cache;
mod config;
mod error;
mod health;
mod release;
mod state;
mod supervisor;
mod unpack;

pub use agent::run;
pub use config::{default_platform, AgentConfig};
pub use error::Error;
