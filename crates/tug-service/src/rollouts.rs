//! Paced rollouts: which agent may take an environment's build now
//! (maintenance windows, strategies, halts), what agents' reports change
//! (failures halt a rollout and may roll it back; healthy time feeds the
//! health-aware soak), and the rollout's status for people.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tug_api::{Change, EventAgent};
use tug_core::grant::RolloutCounts;
use tug_core::records::AgentRecord;
use tug_core::states::{AgentState, RolloutPhase, RolloutState};
use tug_core::{Action, BuildId, DeployKind, EnvName, Environment, Pipeline, ServiceName, Version};
use tug_db::{EnvState, RolloutRow, SoakClock};

use crate::access::Sights;
use crate::agents::STALE_AFTER;
use crate::deploy::Intent;
use crate::{DeployOptions, Error, Principal, Result, Tugboat};

/// What an agent's report did to a paced rollout: it became healthy on the
/// build or gave up on it (`failed`), and the event that says so.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) build: BuildId,
    pub(crate) failed: bool,
    pub(crate) event: tug_api::Event,
}

/// What decides whether agents may take an environment's build: the same
/// for every agent asking at one moment, so channel answers can share it.
#[derive(Debug, Clone)]
pub struct Pacing {
    pub service: ServiceName,
    pub environment: Environment,
    /// The environment's deployment sequence number.
    pub seq: i64,
    pub build: Option<BuildId>,
    /// How the build got there (a rollback is never paced).
    pub kind: Option<DeployKind>,
    pub critical: bool,
    /// The build the deployment replaced (what an auto-rollback restores).
    pub replaced: Option<BuildId>,
}

impl Pacing {
    /// The pacing of an environment in `state`, whose build is `critical`.
    pub(crate) fn of(service: &ServiceName, environment: &Environment, state: &EnvState, critical: bool) -> Pacing {
        Pacing {
            service: service.clone(),
            environment: environment.clone(),
            seq: state.seq,
            build: state.current.as_ref().map(|d| d.build.clone()),
            kind: state.current.as_ref().map(|d| d.kind),
            critical,
            replaced: state.current.as_ref().and_then(|d| d.replaced.clone()),
        }
    }

    /// Whether answers depend on the asking agent (and need the database).
    pub fn per_agent(&self) -> bool {
        self.build.is_some() && self.environment.rollout.is_some() && self.kind != Some(DeployKind::Rollback)
    }

    /// Whether answers may change with the clock alone (a maintenance
    /// window opening or closing).
    pub fn timed(&self) -> bool {
        self.build.is_some() && !self.critical && !self.environment.maintenance.is_empty()
    }
}

/// Whether an agent may update now, and if not, why.
#[derive(Debug)]
pub struct Grant {
    pub may_update: bool,
    pub waiting: Option<String>,
    /// The agent's place among those waiting for a paced rollout: it
    /// resolves when the agent may go. Held while the agent's request
    /// waits (a held long-poll), dropped with it.
    pub place: Option<crate::Place>,
}

impl Grant {
    pub(crate) fn yes() -> Grant {
        Grant {
            may_update: true,
            waiting: None,
            place: None,
        }
    }

    fn wait(why: impl Into<String>) -> Grant {
        Grant {
            may_update: false,
            waiting: Some(why.into()),
            place: None,
        }
    }

    pub(crate) fn wait_in(why: impl Into<String>, place: crate::Place) -> Grant {
        Grant {
            place: Some(place),
            ..Grant::wait(why)
        }
    }
}

/// A rollout as `tug rollout status` shows it.
#[derive(Debug, Clone)]
pub struct RolloutStatus {
    pub service: ServiceName,
    pub environment: EnvName,
    pub build: Option<BuildId>,
    pub seq: i64,
    /// The strategy as written (`canary of 2, then rolling, 25% at a
    /// time`); `None` when the environment does not pace rollouts.
    pub strategy: Option<String>,
    pub state: RolloutPhase,
    pub reason: Option<String>,
    pub changed_by: Option<String>,
    pub changed_at: Option<DateTime<Utc>>,
    pub counts: RolloutCounts,
    /// Failures that count towards halting (those before a resume do not).
    pub failures: i64,
    pub halt_after_failures: Option<u32>,
    pub auto_rollback: bool,
    /// Inside a maintenance window now (or the environment has none).
    pub in_maintenance: bool,
    /// The build is embargoed from the caller: `build` and `reason` (which
    /// may name it) are left out.
    pub embargoed: bool,
}

/// A rollout's status as the caller may see it.
pub(crate) fn shown(mut status: RolloutStatus, sights: &Sights) -> RolloutStatus {
    if status.build.as_ref().is_some_and(|b| !sights.full(b)) {
        status.build = None;
        status.reason = None;
        status.embargoed = true;
    }
    status
}

impl Tugboat {
    /// Whether `agent` may take what `pacing` names now. Maintenance
    /// windows hold every non-critical build; a paced rollout grants agents
    /// by its strategy, under the rollout's lock in the database, and
    /// grants nobody once halted.
    pub async fn may_update(&self, pacing: &Pacing, agent: Option<&str>) -> Result<Grant> {
        let Some(build) = &pacing.build else {
            return Ok(Grant::yes());
        };
        let env = &pacing.environment;
        if !pacing.critical && !env.in_maintenance(self.now()) {
            return Ok(Grant::wait(format!(
                "{} updates only inside its maintenance windows ({})",
                env.name,
                env.maintenance
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let Some(rollout) = env.rollout.as_ref().filter(|_| pacing.per_agent()) else {
            return Ok(Grant::yes());
        };
        let agent = agent.ok_or_else(|| {
            Error::Invalid(format!(
                "{} paces its rollouts: ask with agent=<agent id> (the id the agent reports with)",
                env.name
            ))
        })?;
        self.grant_place(pacing, build, &rollout.strategy, agent).await
    }

    async fn rollout_counts(&self, pacing: &Pacing, build: &BuildId) -> Result<RolloutCounts> {
        let since = self.now() - STALE_AFTER;
        Ok(self
            .db
            .rollout_counts(&pacing.service, &pacing.environment.name, pacing.seq, build, since)
            .await?)
    }

    /// What an environment's channel decides on, for [`Tugboat::may_update`].
    pub(crate) async fn pacing(&self, service: &ServiceName, environment: &Environment) -> Result<Pacing> {
        let state = self.db.env_state(service, &environment.name).await?;
        let critical = match &state.current {
            Some(d) => self.db.build_summary(&d.build).await?.is_some_and(|b| b.critical),
            None => false,
        };
        Ok(Pacing::of(service, environment, &state, critical))
    }

    /// The rollout of an environment's current build.
    pub async fn rollout_status(&self, who: &Principal, service: &ServiceName, env: &EnvName) -> Result<RolloutStatus> {
        self.require_in(who, Action::Read, service)?;
        let environment = &self.environment_of(service, env).await?;
        let pacing = self.pacing(service, environment).await?;
        let status = self.status_of(&pacing).await?;
        self.rollout_seen_by(who, status).await
    }

    async fn rollout_seen_by(&self, who: &Principal, status: RolloutStatus) -> Result<RolloutStatus> {
        let sights = self.sights(who, status.build.iter().cloned().collect()).await?;
        Ok(shown(status, &sights))
    }

    pub(crate) async fn status_of(&self, pacing: &Pacing) -> Result<RolloutStatus> {
        let env = &pacing.environment;
        let mut status = RolloutStatus {
            service: pacing.service.clone(),
            environment: env.name.clone(),
            build: pacing.build.clone(),
            seq: pacing.seq,
            strategy: env.rollout.as_ref().map(|r| r.strategy.to_string()),
            state: RolloutPhase::Idle,
            reason: None,
            changed_by: None,
            changed_at: None,
            counts: RolloutCounts::default(),
            failures: 0,
            halt_after_failures: env.rollout.as_ref().map(|r| r.halt_after_failures),
            auto_rollback: env.rollout.as_ref().is_some_and(|r| r.auto_rollback),
            in_maintenance: env.in_maintenance(self.now()),
            embargoed: false,
        };
        let Some(build) = &pacing.build else {
            return Ok(status);
        };
        status.counts = self.rollout_counts(pacing, build).await?;
        status.failures = status.counts.failed;
        if !pacing.per_agent() {
            status.state = RolloutPhase::Unpaced;
            return Ok(status);
        }
        // Reading the status records nothing: a rollout no agent asked
        // about yet is rolling with no failures discounted.
        let row = self.db.rollout(&pacing.service, &env.name, pacing.seq).await?;
        let baseline = row.as_ref().map_or(0, |r| r.failures_baseline);
        status.failures = (status.counts.failed - baseline).max(0);
        let halted = row.as_ref().is_some_and(|r| r.state == RolloutState::Halted);
        status.state = if halted {
            RolloutPhase::Halted
        } else if status.counts.agents > 0 && status.counts.healthy == status.counts.agents {
            RolloutPhase::Done
        } else {
            RolloutPhase::Rolling
        };
        if let Some(row) = row {
            status.reason = row.reason;
            status.changed_by = row.changed_by;
            status.changed_at = Some(row.changed_at);
        }
        Ok(status)
    }

    /// Stops an environment's rollout: no further agent may take the build.
    pub async fn halt_rollout(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        reason: &str,
    ) -> Result<RolloutStatus> {
        self.require_in(who, Action::Deploy, service)?;
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > 1000 {
            return Err(Error::Invalid(
                "a halt needs a reason of 1 to 1000 characters: pass --reason \"…\"".into(),
            ));
        }
        let (pacing, row) = self.paced_rollout(service, env).await?;
        if row.state == RolloutState::Halted {
            return Err(Error::Conflict(format!(
                "the rollout of build {} to {env} is already halted: {}",
                row.build,
                row.reason.as_deref().unwrap_or("")
            )));
        }
        self.set_state(&pacing, &row, RolloutState::Halted, reason, None, Some(who))
            .await?;
        let status = self.status_of(&pacing).await?;
        self.rollout_seen_by(who, status).await
    }

    /// Lets a halted rollout go on; failures so far no longer count.
    pub async fn resume_rollout(&self, who: &Principal, service: &ServiceName, env: &EnvName) -> Result<RolloutStatus> {
        self.require_in(who, Action::Deploy, service)?;
        let (pacing, row) = self.paced_rollout(service, env).await?;
        if row.state != RolloutState::Halted {
            return Err(Error::Conflict(format!(
                "the rollout of build {} to {env} is not halted",
                row.build
            )));
        }
        let counts = self.rollout_counts(&pacing, &row.build).await?;
        self.set_state(
            &pacing,
            &row,
            RolloutState::Rolling,
            "resumed",
            Some(counts.failed),
            Some(who),
        )
        .await?;
        self.place_may_have_freed(&pacing);
        let status = self.status_of(&pacing).await?;
        self.rollout_seen_by(who, status).await
    }

    async fn paced_rollout(&self, service: &ServiceName, env: &EnvName) -> Result<(Pacing, RolloutRow)> {
        let environment = &self.environment_of(service, env).await?;
        let pacing = self.pacing(service, environment).await?;
        let Some(build) = pacing.build.clone().filter(|_| pacing.per_agent()) else {
            return Err(Error::Invalid(format!(
                "{env} of {service} has no paced rollout under way: it {}",
                if pacing.build.is_none() {
                    "runs nothing yet"
                } else if environment.rollout.is_none() {
                    "sets no rollout in its pipeline"
                } else {
                    "runs a rollback, which is never paced"
                }
            )));
        };
        let row = self
            .db
            .ensure_rollout(service, env, pacing.seq, &build, self.now())
            .await?;
        Ok((pacing, row))
    }

    async fn set_state(
        &self,
        pacing: &Pacing,
        row: &RolloutRow,
        to: RolloutState,
        reason: &str,
        baseline: Option<i64>,
        by: Option<&Principal>,
    ) -> Result<()> {
        let build = self.db.build_summary(&row.build).await?;
        let mut tx = self.db.begin().await?;
        let moved = tx
            .set_rollout_state(
                &pacing.service,
                &pacing.environment.name,
                pacing.seq,
                row.state,
                to,
                Some(reason),
                baseline,
                Some(by.map_or("rollout", |w| w.name.as_str())),
                self.now(),
            )
            .await?;
        if !moved {
            return Err(Error::Conflict(format!(
                "the rollout of build {} to {} changed meanwhile; look again (tug rollout status)",
                row.build, pacing.environment.name
            )));
        }
        let environment = pacing.environment.name.clone();
        let build = build.as_ref().map(crate::events::event_build);
        let change = if to == RolloutState::Halted {
            Change::RolloutHalted {
                environment,
                build,
                seq: pacing.seq,
                reason: Some(reason.to_string()),
            }
        } else {
            Change::RolloutResumed {
                environment,
                build,
                seq: pacing.seq,
            }
        };
        let event = self.event(Some(&pacing.service), by.map(crate::events::actor), change);
        self.commit(tx, &[event]).await
    }

    /// The `rollout.progress` event an agent's report makes, if it makes
    /// one: in a paced rollout, the agent became healthy on the build or
    /// gave up on it. Decided before the report is stored, so that the
    /// report and its event commit together.
    pub(crate) async fn progress(
        &self,
        pacing: &Pacing,
        before: Option<&AgentRecord>,
        now: &AgentRecord,
    ) -> Result<Option<Progress>> {
        let Some(build) = pacing.build.clone().filter(|_| pacing.per_agent()) else {
            return Ok(None);
        };
        let healthy = |a: &AgentRecord| a.build.as_ref() == Some(&build) && a.state == AgentState::Healthy;
        let failed = |a: &AgentRecord| a.failed_build.as_ref() == Some(&build);
        let became_healthy = healthy(now) && !before.is_some_and(healthy);
        let became_failed = failed(now) && !before.is_some_and(failed);
        if !(became_healthy || became_failed) {
            return Ok(None);
        }
        let summary = self.db.build_summary(&build).await?;
        let event = self.event(
            Some(&now.service),
            None,
            Change::RolloutProgress {
                environment: now.environment.clone(),
                build: summary.as_ref().map(crate::events::event_build),
                seq: pacing.seq,
                agent: EventAgent {
                    id: now.agent_id.clone(),
                    hostname: now.hostname.clone(),
                    state: now.state,
                    error: now.error.clone(),
                },
            },
        );
        Ok(Some(Progress {
            build,
            failed: became_failed,
            event,
        }))
    }

    /// What an agent's report changes beyond the fleet view, once it is
    /// stored: a failure that halts a paced rollout (and may roll it back),
    /// and health-aware soak clocks. Errors are logged: the report itself
    /// was stored.
    pub(crate) async fn after_report(
        &self,
        pipeline: &Pipeline,
        pacing: &Pacing,
        progress: Option<&Progress>,
        now: &AgentRecord,
    ) {
        let result = async {
            if let Some(build) = &pacing.build {
                self.sample_soak_clocks(pipeline, pacing, build).await?;
            }
            match progress {
                Some(p) if p.failed => self.halt_on_failures(pacing, &p.build, now).await,
                _ => Ok(()),
            }
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(agent = %now.agent_id, error = %e, "could not account for an agent's report");
        }
        if progress.is_some() {
            // The agent no longer holds a place in flight.
            self.place_may_have_freed(pacing);
        }
    }

    /// Halts a rollout whose failures reached its threshold, and rolls the
    /// environment back when the pipeline says so.
    async fn halt_on_failures(&self, pacing: &Pacing, build: &BuildId, agent: &AgentRecord) -> Result<()> {
        let Some(rollout) = &pacing.environment.rollout else {
            return Ok(());
        };
        let row = self
            .db
            .ensure_rollout(&pacing.service, &pacing.environment.name, pacing.seq, build, self.now())
            .await?;
        let counts = self.rollout_counts(pacing, build).await?;
        let failures = counts.failed - row.failures_baseline;
        if row.state == RolloutState::Halted || failures < i64::from(rollout.halt_after_failures) {
            return Ok(());
        }
        let reason = format!(
            "{failures} agent(s) failed build {build} (threshold {}); last: {} on {}: {}",
            rollout.halt_after_failures,
            agent.agent_id,
            agent.hostname,
            agent.error.as_deref().unwrap_or("no error given")
        );
        self.halt(pacing, &row, build, &reason).await
    }

    /// Halts a rolling rollout on the rollout's own authority (no person
    /// asked), recording `reason`, and rolls the environment back when the
    /// pipeline says so. Another server or report halting it first is not
    /// an error.
    async fn halt(&self, pacing: &Pacing, row: &RolloutRow, build: &BuildId, reason: &str) -> Result<()> {
        match self
            .set_state(pacing, row, RolloutState::Halted, reason, None, None)
            .await
        {
            Ok(()) => {}
            Err(Error::Conflict(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        tracing::warn!(service = %pacing.service, environment = %pacing.environment.name, %reason, "rollout halted");
        if pacing.environment.rollout.as_ref().is_some_and(|r| r.auto_rollback) {
            self.auto_rollback(pacing, build, reason).await;
        }
        Ok(())
    }

    /// Halts the environment's paced rollout of `build` (and rolls back
    /// when the pipeline says so) because its metric gate read a value out
    /// of bounds; nothing when no paced rollout of that build is rolling.
    pub(crate) async fn halt_on_gate(&self, pacing: &Pacing, build: &BuildId, reason: &str) -> Result<()> {
        if !pacing.per_agent() || pacing.build.as_ref() != Some(build) {
            return Ok(());
        }
        let row = self
            .db
            .ensure_rollout(&pacing.service, &pacing.environment.name, pacing.seq, build, self.now())
            .await?;
        if row.state == RolloutState::Halted {
            return Ok(());
        }
        self.halt(pacing, &row, build, reason).await
    }

    async fn auto_rollback(&self, pacing: &Pacing, build: &BuildId, reason: &str) {
        let result = async {
            let previous = pacing.replaced.clone().ok_or_else(|| {
                Error::NothingToDeploy(format!(
                    "{} ran nothing before build {build}; nothing to roll back to",
                    pacing.environment.name
                ))
            })?;
            let target = self
                .db
                .build(&previous)
                .await?
                .ok_or_else(|| Error::BuildNotFound(previous.to_string()))?;
            let intent = Intent {
                service: &pacing.service,
                environment: &pacing.environment,
                build: target,
                kind: DeployKind::Rollback,
                // Putting the last good build back must not wait for a
                // freeze window to end.
                options: DeployOptions {
                    override_freeze: true,
                    reason: Some(format!("auto-rollback: {reason}")),
                },
                requested_by: Some("auto-rollback".into()),
                actor: None,
                admin: true,
                approvals: 0,
                request: None,
                state: None,
            };
            self.carry_out(intent).await
        }
        .await;
        match result {
            Ok(_) => {
                tracing::warn!(service = %pacing.service, environment = %pacing.environment.name, "rolled back automatically")
            }
            Err(e) => {
                tracing::error!(service = %pacing.service, environment = %pacing.environment.name, error = %e, "auto-rollback failed");
                let recorded = async {
                    let summary = self.db.build_summary(build).await?;
                    let event = self.event(
                        Some(&pacing.service),
                        None,
                        Change::RolloutRollbackFailed {
                            environment: pacing.environment.name.clone(),
                            build: summary.as_ref().map(crate::events::event_build),
                            error: Some(e.to_string()),
                        },
                    );
                    self.record(&[event]).await
                }
                .await;
                if let Err(e) = recorded {
                    tracing::error!(error = %e, "could not record that the auto-rollback failed");
                }
            }
        }
    }

    /// Advances the health-aware soak clocks of this environment's current
    /// deployment, one per share the downstream environments ask for.
    async fn sample_soak_clocks(&self, pipeline: &Pipeline, pacing: &Pacing, build: &BuildId) -> Result<()> {
        let shares: Vec<u8> = pipeline
            .downstream_of(&pacing.environment.name)
            .filter_map(|e| e.soak_healthy)
            .collect();
        if shares.is_empty() {
            return Ok(());
        }
        let counts = self.rollout_counts(pacing, build).await?;
        let now = self.now();
        for share in shares {
            let healthy_now = counts.agents > 0 && counts.healthy * 100 >= i64::from(share) * counts.agents;
            let before = self
                .db
                .soak_clock(&pacing.service, &pacing.environment.name, pacing.seq, share)
                .await?;
            if let Some(b) = &before {
                // Thousands of heartbeats need not each write the clock.
                if b.healthy_now == healthy_now && now - b.last_sample < chrono::Duration::seconds(1) {
                    continue;
                }
            }
            let clock = SoakClock {
                healthy_ms: before
                    .as_ref()
                    .map_or(0, |b| b.healthy_ms + healthy_since_sample(b, now)),
                last_sample: now,
                healthy_now,
            };
            // Losing the race to another report is fine: it sampled the
            // same moment.
            self.db
                .save_soak_clock(
                    &pacing.service,
                    &pacing.environment.name,
                    pacing.seq,
                    share,
                    before.as_ref(),
                    &clock,
                )
                .await?;
        }
        Ok(())
    }

    /// How long `build` has run in `upstream` while at least `share`
    /// percent of its agents reported healthy on it; `None` when it is not
    /// what runs there now.
    pub(crate) async fn upstream_healthy_for(
        &self,
        service: &ServiceName,
        upstream: &EnvName,
        build: &BuildId,
        share: u8,
    ) -> Result<Option<Duration>> {
        let state = self.db.env_state(service, upstream).await?;
        if state.current.as_ref().map(|d| &d.build) != Some(build) {
            return Ok(None);
        }
        let Some(clock) = self.db.soak_clock(service, upstream, state.seq, share).await? else {
            return Ok(Some(Duration::ZERO));
        };
        let ms = clock.healthy_ms + healthy_since_sample(&clock, self.now());
        Ok(Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
    }

    /// The oldest version among the agents of the environment's
    /// `compatible_with` service reporting in it.
    pub(crate) async fn oldest_compatible(&self, environment: &Environment) -> Result<Option<Version>> {
        let Some(compat) = &environment.compatible_with else {
            return Ok(None);
        };
        let since = self.now() - STALE_AFTER;
        let versions = self
            .db
            .agent_versions(&compat.service, &environment.name, since)
            .await?;
        Ok(versions
            .iter()
            .filter_map(|v| Version::parse(v.strip_prefix('v').unwrap_or(v)).ok())
            .min())
    }
}

/// Healthy time since the clock's last sample, if it was healthy then; an
/// environment silent for longer than the stale limit counts only up to it.
fn healthy_since_sample(clock: &SoakClock, now: DateTime<Utc>) -> i64 {
    if !clock.healthy_now {
        return 0;
    }
    (now - clock.last_sample)
        .num_milliseconds()
        .clamp(0, STALE_AFTER.num_milliseconds())
}
