//! Channels and agents: what an environment wants its agents to run (for
//! one platform), the agents' reports, and the fleet view.

use tug_core::{Action, ArtifactSpec, EnvName, Environment, Platform, ServiceName};
use tug_db::{AgentRow, BuildRow};

use crate::{Error, Principal, Result, Tugboat};

/// An environment's channel for one platform.
#[derive(Debug, Clone)]
pub struct ChannelView {
    pub environment: Environment,
    /// The environment's deployment sequence number: it changes exactly
    /// when what the channel names changes, so it makes the ETag.
    pub seq: i64,
    pub build: Option<BuildRow>,
    /// The build's artifacts for the platform, and those without one.
    pub artifacts: Vec<ArtifactSpec>,
    /// What decides which agent may take the build now.
    pub pacing: crate::Pacing,
}

/// The most of a supervised process's stderr an agent's report keeps.
pub const MAX_STDERR: usize = 4096;

/// Cuts `text` to at most `max` bytes at a character boundary, keeping
/// the end: what a process wrote last says most about why it stopped.
fn keep_tail(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = text.len() - max;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
}

/// How long without a heartbeat makes an agent stale.
pub const STALE_AFTER: chrono::Duration = chrono::Duration::seconds(60);

impl Tugboat {
    /// The channel of `env` for `platform`.
    pub async fn channel(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        platform: &Platform,
    ) -> Result<ChannelView> {
        self.require(who, Action::Follow)?;
        self.channel_of(service, env, platform).await
    }

    async fn channel_of(&self, service: &ServiceName, env: &EnvName, platform: &Platform) -> Result<ChannelView> {
        let view = self.pipeline_view(service).await?;
        let environment = crate::deploy::environment(&view.pipeline, env)?.clone();
        let state = self.db.env_state(service, env).await?;
        let build = match &state.current {
            Some(d) => self.db.build_summary(&d.build).await?,
            None => None,
        };
        let artifacts = match &build {
            Some(b) => self
                .db
                .artifacts(&b.id)
                .await?
                .into_iter()
                .filter(|a| a.platform.as_ref().is_none_or(|p| p == platform))
                .collect(),
            None => Vec::new(),
        };
        let pacing = crate::Pacing::of(
            service,
            &environment,
            &state,
            build.as_ref().is_some_and(|b| b.critical),
        );
        Ok(ChannelView {
            environment,
            seq: state.seq,
            build,
            artifacts,
            pacing,
        })
    }

    /// The version a public (non-private) environment runs, for updaters
    /// that ask without a token (Teleport's `…/version` endpoint): `None`
    /// while it runs nothing. A private environment does not exist here.
    pub async fn public_version(&self, service: &ServiceName, env: &EnvName) -> Result<Option<BuildRow>> {
        let platform = Platform::parse("linux/amd64").map_err(|e| Error::Invalid(e.to_string()))?;
        let channel = self.channel_of(service, env, &platform).await?;
        if channel.environment.private {
            return Err(Error::EnvironmentNotFound {
                service: service.clone(),
                environment: env.clone(),
                known: "the public ones".into(),
            });
        }
        Ok(channel.build)
    }

    /// Stores an agent's report. The environment must exist in the
    /// service's pipeline and the builds it names must exist; nothing is
    /// stored otherwise.
    pub async fn report(&self, who: &Principal, mut report: AgentRow) -> Result<()> {
        self.require(who, Action::Report)?;
        let view = self.pipeline_view(&report.service).await?;
        let environment = crate::deploy::environment(&view.pipeline, &report.environment)?;
        for b in report.build.iter().chain(&report.failed_build) {
            if self.db.build_summary(b).await?.is_none() {
                return Err(Error::BuildNotFound(b.to_string()));
            }
        }
        for (field, value, max) in [
            ("agent_id", report.agent_id.as_str(), 100),
            ("hostname", report.hostname.as_str(), 255),
            ("agent_version", report.agent_version.as_str(), 100),
        ] {
            if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
                return Err(Error::Invalid(format!(
                    "{field} must be 1 to {max} printable characters"
                )));
            }
        }
        for text in [&mut report.error, &mut report.waiting].into_iter().flatten() {
            if text.len() > 4096 {
                *text = text.chars().take(4096).collect();
            }
        }
        if let Some(exit) = &mut report.exit {
            if exit
                .signal
                .as_ref()
                .is_some_and(|s| s.is_empty() || s.len() > 32 || s.chars().any(char::is_control))
            {
                return Err(Error::Invalid("exit.signal must be a signal name like SIGKILL".into()));
            }
            keep_tail(&mut exit.stderr, MAX_STDERR);
        }
        report.last_seen = self.now();
        report.first_seen = report.last_seen;
        // Most heartbeats change nothing but the fleet view: only a paced
        // rollout needs the report before this one, and only a paced
        // rollout or a health-aware soak downstream needs accounting.
        let paced = environment.rollout.is_some();
        let soaked = view
            .pipeline
            .downstream_of(&report.environment)
            .any(|e| e.soak_healthy.is_some());
        let before = match paced {
            true => self.db.agent(&report.agent_id).await?,
            false => None,
        };
        self.db.upsert_agent(&report).await?;
        if paced || soaked {
            self.after_report(&view.pipeline, before.as_ref(), &report).await;
        }
        Ok(())
    }

    /// Agents, optionally of one service and environment.
    pub async fn agents(
        &self,
        who: &Principal,
        service: Option<&ServiceName>,
        env: Option<&EnvName>,
    ) -> Result<Vec<AgentRow>> {
        self.require(who, Action::Read)?;
        Ok(self.db.agents(service, env).await?)
    }

    /// Whether an agent last seen at `at` is stale now.
    pub fn is_stale(&self, at: chrono::DateTime<chrono::Utc>) -> bool {
        self.now() - at > STALE_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_tail_keeps_the_last_bytes_at_a_character_boundary() {
        let mut t = "ab€cd".to_string(); // € is 3 bytes
        keep_tail(&mut t, 4);
        assert_eq!(t, "cd");
        let mut t = "ab€cd".to_string();
        keep_tail(&mut t, 5);
        assert_eq!(t, "€cd");
        let mut t = "short".to_string();
        keep_tail(&mut t, 4096);
        assert_eq!(t, "short");
    }
}
