//! One module per group of subcommands.

pub mod admin;
pub mod agent;
pub mod build;
pub mod deploy;
pub mod server;
pub mod transfer;
pub mod webhooks;
