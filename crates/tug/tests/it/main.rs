//! End-to-end tests: the real `tug` binary as server and CLI, on the
//! embedded defaults (SQLite and a local directory) and on PostgreSQL with
//! an S3 store (SeaweedFS), both started by the test command.

// First: its macros serve the modules after it.
#[macro_use]
mod support;

mod access;
mod agent_reports;
mod agents;
mod apt;
mod auth;
mod bad_input;
mod catalog;
mod cli;
mod concurrency;
mod config;
mod consumers;
mod crash;
mod deploy;
mod event_log;
mod executables;
mod flow;
mod fresh_answers;
mod gitops;
mod grants;
mod maintenance;
mod metrics;
mod oci;
mod policies;
mod prometheus;
mod readme;
mod repair;
mod robust;
mod rollouts;
mod shared;
mod unknown_states;
mod verify;
mod webhooks;
