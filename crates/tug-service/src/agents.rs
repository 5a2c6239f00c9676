//! Channels and agents: what an environment wants its agents to run (for
//! one platform), the agents' reports, and the fleet view.

use std::collections::{BTreeMap, HashMap};

use tug_core::records::{AgentRecord, BuildRecord};
use tug_core::states::AgentState;
use tug_core::{Action, ArtifactSpec, BuildId, EnvName, Environment, Platform, ServiceName};

use crate::access::{AgentView, Sights};
use crate::{Error, Principal, Result, Tugboat};

/// An environment's channel for one platform, whole: what it shows a
/// caller is decided by [`Tugboat::channel_sight`], so one view can be
/// shared by many callers.
#[derive(Debug, Clone)]
pub struct ChannelView {
    pub environment: Environment,
    /// The environment's deployment sequence number: it changes exactly
    /// when what the channel names changes, so it makes the ETag.
    pub seq: i64,
    pub build: Option<BuildRecord>,
    /// The build's artifacts for the platform, and those without one;
    /// never a `reference`, which has no blob.
    pub artifacts: Vec<ArtifactSpec>,
    /// What decides which agent may take the build now.
    pub pacing: crate::Pacing,
}

/// What every answer about one environment's channel is computed from,
/// besides what never changes (a sealed build's version, digest and
/// artifacts): the service's pipeline revision (the environment's
/// definition: privacy, rollout, maintenance windows), the environment's
/// deployment sequence number (what it runs), and the critical and embargo
/// flags of the build it runs. Two answers computed at equal stamps are
/// equal, so a server keeps an answer while the stamp it was computed at
/// stands, whatever else did or did not tell it of a change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ChannelStamp {
    pub revision: i64,
    pub seq: i64,
    pub critical: bool,
    pub embargoed: bool,
}

/// The stamp of every environment, as one read of the database found them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStamps(HashMap<ServiceName, ServiceStamps>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServiceStamps {
    revision: i64,
    environments: HashMap<EnvName, ChannelStamp>,
}

impl ChannelStamps {
    /// The stamp of `env` of `service`: an environment nothing was deployed
    /// to yet has its service's revision and sequence number 0.
    pub fn of(&self, service: &ServiceName, env: &EnvName) -> ChannelStamp {
        match self.0.get(service) {
            None => ChannelStamp::default(),
            Some(s) => s.environments.get(env).copied().unwrap_or(ChannelStamp {
                revision: s.revision,
                ..ChannelStamp::default()
            }),
        }
    }
}

/// How many agents of an environment run what, and how they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentCounts {
    pub total: u64,
    /// Agents running the environment's current build.
    pub on_current: u64,
    pub healthy: u64,
    pub failed: u64,
    pub stale: u64,
    /// Agents per build they run (`none`, or `embargoed` for builds the
    /// caller may not see).
    pub by_build: BTreeMap<String, u64>,
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
        self.require_follow(who, Action::Follow, service, env)?;
        self.channel_of(service, env, platform).await
    }

    async fn channel_of(&self, service: &ServiceName, env: &EnvName, platform: &Platform) -> Result<ChannelView> {
        let environment = self.environment_of(service, env).await?;
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
                // A reference names something outside the store: an agent
                // has nothing to download for it.
                .filter(|a| a.has_blob() && a.platform.as_ref().is_none_or(|p| p == platform))
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

    /// The stamp of every environment (one query), for a server's change
    /// watcher: answers computed at a stamp stay valid while it stands.
    pub async fn channel_stamps(&self) -> Result<ChannelStamps> {
        let mut stamps = ChannelStamps::default();
        for row in self.db.channel_stamps().await? {
            let service = stamps.0.entry(row.service).or_default();
            service.revision = row.revision;
            if let Some(env) = row.environment {
                service.environments.insert(
                    env,
                    ChannelStamp {
                        revision: row.revision,
                        seq: row.seq,
                        critical: row.critical,
                        embargoed: row.embargoed,
                    },
                );
            }
        }
        Ok(stamps)
    }

    /// The version a public (non-private) environment runs, for updaters
    /// that ask without a token (Teleport's `…/version` endpoint): `None`
    /// while it runs nothing, or runs an embargoed build (which a public
    /// environment cannot receive, but may still run if it was made public
    /// after). A private environment does not exist here.
    pub async fn public_version(&self, service: &ServiceName, env: &EnvName) -> Result<Option<BuildRecord>> {
        let platform = Platform::parse("linux/amd64").map_err(|e| Error::Invalid(e.to_string()))?;
        let channel = self.channel_of(service, env, &platform).await?;
        if channel.environment.private {
            return Err(Error::EnvironmentNotFound {
                service: service.clone(),
                environment: env.clone(),
                known: "the public ones".into(),
            });
        }
        Ok(channel.build.filter(Tugboat::publicly_visible))
    }

    /// Stores an agent's report. The environment must exist in the
    /// service's pipeline and the builds it names must exist; nothing is
    /// stored otherwise.
    pub async fn report(&self, who: &Principal, mut report: AgentRecord) -> Result<()> {
        self.require_follow(who, Action::Report, &report.service, &report.environment)?;
        let view = self.pipeline_view(&report.service).await?;
        let environment = crate::deploy::environment(&view.pipeline, &report.environment)?;
        for b in crate::access::agent_builds(&report) {
            match self.db.build_summary(b).await? {
                Some(row) => {
                    self.require_visible(who, row, b.as_str()).await?;
                }
                None => return Err(Error::BuildNotFound(b.to_string())),
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
        let pacing = match paced || soaked {
            true => Some(self.pacing(&report.service, environment).await?),
            false => None,
        };
        let progress = match &pacing {
            Some(p) => self.progress(p, before.as_ref(), &report).await?,
            None => None,
        };
        match &progress {
            Some(p) => {
                let mut tx = self.db.begin().await?;
                tx.upsert_agent(&report).await?;
                // The change watcher wakes once a failure has halted the
                // rollout, below, not before; consumers wake now.
                self.commit_unannounced(tx, std::slice::from_ref(&p.event)).await?;
            }
            None => self.db.upsert_agent(&report).await?,
        }
        if let Some(pacing) = &pacing {
            self.after_report(&view.pipeline, pacing, progress.as_ref(), &report)
                .await;
        }
        if progress.is_some() {
            self.recorded.notify_one();
        }
        Ok(())
    }

    /// Agents, optionally of one service and environment: of the caller's
    /// service when it is scoped, without the builds it may not see.
    pub async fn agents(
        &self,
        who: &Principal,
        service: Option<&ServiceName>,
        env: Option<&EnvName>,
    ) -> Result<Vec<AgentView>> {
        let service = self.listing_scope(who, Action::Read, service)?;
        let rows = self.db.agents(service.as_ref(), env).await?;
        let sights = self.agent_sights(who, &rows).await?;
        Ok(rows.into_iter().map(|a| sights.agent(a)).collect())
    }

    async fn agent_sights(&self, who: &Principal, rows: &[AgentRecord]) -> Result<Sights> {
        let ids = rows.iter().flat_map(crate::access::agent_builds).cloned().collect();
        self.sights(who, ids).await
    }

    /// Counts the agents of each environment of a service (reported in
    /// `status`): `current` is what each environment runs.
    pub(crate) async fn agent_counts(
        &self,
        who: &Principal,
        service: &ServiceName,
        current: &[(EnvName, Option<BuildId>)],
    ) -> Result<Vec<AgentCounts>> {
        let rows = self.db.agents(Some(service), None).await?;
        let sights = self.agent_sights(who, &rows).await?;
        Ok(current
            .iter()
            .map(|(env, build)| {
                let mut c = AgentCounts::default();
                for a in rows.iter().filter(|a| &a.environment == env) {
                    c.total += 1;
                    if self.is_stale(a.last_seen) {
                        c.stale += 1;
                    } else if a.state == AgentState::Healthy {
                        c.healthy += 1;
                    } else if a.state == AgentState::Failed {
                        c.failed += 1;
                    }
                    if a.build.is_some() && a.build.as_ref() == build.as_ref() {
                        c.on_current += 1;
                    }
                    let key = match &a.build {
                        None => "none".to_string(),
                        Some(b) if sights.full(b) => b.to_string(),
                        Some(_) => "embargoed".to_string(),
                    };
                    *c.by_build.entry(key).or_default() += 1;
                }
                c
            })
            .collect())
    }

    /// The short form of every agent's id, unique among all agents (not
    /// only those one list shows).
    pub async fn short_agent_ids(&self, who: &Principal) -> Result<std::collections::HashMap<String, String>> {
        self.require(who, Action::Read)?;
        let ids = self.db.agent_ids().await?;
        Ok(tug_core::short_id::short_ids(ids.iter().map(String::as_str)))
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
