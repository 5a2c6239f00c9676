//! `tug agent`: runs the deploy agent of `tug-agent` until SIGTERM/SIGINT.

use std::time::Duration;

use anyhow::Context;
use tug_core::{EnvName, Platform, ServiceName};

use crate::cli::{AgentArgs, Global};

pub async fn run(global: &Global, a: AgentArgs) -> anyhow::Result<()> {
    crate::init_logs("info");
    let token = global
        .token
        .clone()
        .context("tug agent needs a token with the agent role: pass --token or set TUG_TOKEN")?;
    let mut config = tug_agent::AgentConfig::new(
        global.server.clone(),
        token,
        ServiceName::parse(&a.service)?,
        EnvName::parse(&a.env)?,
        a.dir,
    );
    if let Some(p) = a.platform {
        config.platform = Platform::parse(&p)?;
    }
    config.exec = a.exec;
    config.health_cmd = a.health_cmd;
    config.health_url = a.health_url;
    config.on_activate = a.on_activate;
    config.health_timeout = Duration::from_secs(a.health_timeout.max(1));
    config.heartbeat = Duration::from_secs(a.heartbeat.max(1));
    tug_agent::run(config, tug_server::shutdown_signal()).await?;
    Ok(())
}
