//! The agent's configuration, built by the binary from its flags (the
//! library reads no environment) or by tests in code.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tug_core::{EnvName, Platform, ServiceName};

/// What one agent follows and how it runs what it installs.
#[derive(Clone)]
pub struct AgentConfig {
    /// The server's base URL (`http://127.0.0.1:7700`).
    pub server: String,
    /// A token with the `agent` role.
    pub token: String,
    pub service: ServiceName,
    pub environment: EnvName,
    /// The agent's own directory: cache, releases, `current`, state.
    pub dir: PathBuf,
    /// The platform whose artifacts to install.
    pub platform: Platform,
    /// A long-running command to supervise (`sh -c`, cwd `current`).
    pub exec: Option<String>,
    /// Healthy when this command (`sh -c`, cwd `current`) exits 0.
    pub health_cmd: Option<String>,
    /// Healthy when this URL answers 2xx.
    pub health_url: Option<String>,
    /// Run (`sh -c`, cwd `current`) on each activation, before `exec`
    /// starts; a non-zero exit fails the activation.
    pub on_activate: Option<String>,
    /// How long a new release has to become healthy.
    pub health_timeout: Duration,
    /// How long the server may hold a channel request open (the agent
    /// asks for at least a second).
    pub poll_wait: Duration,
    /// How often the agent reports even when nothing changed.
    pub heartbeat: Duration,
    /// The cap of the exponential back-off after errors.
    pub max_backoff: Duration,
    /// How many releases to keep on disk (the current and the previous one
    /// are always kept).
    pub keep_releases: usize,
}

impl AgentConfig {
    /// A configuration with the defaults: this machine's platform, no
    /// process or health check, 30 s health timeout, 60 s long-poll, 10 s
    /// heartbeat, 10 s back-off cap, 3 releases kept.
    pub fn new(
        server: impl Into<String>,
        token: impl Into<String>,
        service: ServiceName,
        environment: EnvName,
        dir: impl Into<PathBuf>,
    ) -> AgentConfig {
        AgentConfig {
            server: server.into(),
            token: token.into(),
            service,
            environment,
            dir: dir.into(),
            platform: default_platform(),
            exec: None,
            health_cmd: None,
            health_url: None,
            on_activate: None,
            health_timeout: Duration::from_secs(30),
            poll_wait: Duration::from_secs(60),
            heartbeat: Duration::from_secs(10),
            max_backoff: Duration::from_secs(10),
            keep_releases: 3,
        }
    }
}

/// `linux/amd64`, `linux/arm64`, … for the machine this runs on, with the
/// architecture spelled as OCI platforms spell it.
pub fn default_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    };
    let os = std::env::consts::OS;
    Platform::parse(&format!("{os}/{arch}"))
        .or_else(|_| Platform::parse("linux/amd64"))
        .unwrap_or_else(|_| unreachable!("linux/amd64 is a valid platform"))
}

// The token is a secret: it never appears in Debug output or logs.
impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("service", &self.service)
            .field("environment", &self.environment)
            .field("dir", &self.dir)
            .field("platform", &self.platform)
            .field("exec", &self.exec)
            .field("health_cmd", &self.health_cmd)
            .field("health_url", &self.health_url)
            .field("on_activate", &self.on_activate)
            .field("health_timeout", &self.health_timeout)
            .field("poll_wait", &self.poll_wait)
            .field("heartbeat", &self.heartbeat)
            .field("max_backoff", &self.max_backoff)
            .field("keep_releases", &self.keep_releases)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let c = AgentConfig::new(
            "http://127.0.0.1:1",
            "s3cret",
            ServiceName::parse("web").unwrap(),
            EnvName::parse("prod").unwrap(),
            "/tmp/x",
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(c.platform.as_str().starts_with("linux/") || !cfg!(target_os = "linux"));
    }
}
