//! The agent's loop: follow the channel, install what it names, activate,
//! check health, roll back on failure, and report, surviving the server's
//! absence and its own crashes.
//!
//! Network errors never end [`run`]: the supervised process keeps running
//! the current release while the agent backs off and retries. Only an
//! agent that cannot use its own directory stops with an error.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::watch;
use tug_api::{AgentReport, AgentState, Channel, ProcessExit};
use tug_client::Client;
use tug_core::{BuildId, Version};

use crate::cache::Cache;
use crate::config::AgentConfig;
use crate::error::{io, Error, Result};
use crate::health::HealthCheck;
use crate::release::Releases;
use crate::state::{self, FailedBuild, State};
use crate::supervisor::{self, Launch, Supervisor};

/// The first delay after an error; it doubles up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The shortest long-poll the agent asks for: the server takes whole
/// seconds, and a shorter wait would be sent as `0s`, answered at once and
/// asked again at once.
const MIN_POLL_WAIT: Duration = Duration::from_secs(1);

/// Follows the configured channel until `shutdown` completes, then stops
/// the supervised process and returns. Returns early only when the agent
/// directory cannot be used (or another agent holds it).
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut agent = Agent::open(config)?;
    let reporter = tokio::spawn(report_loop(
        agent.client.clone(),
        agent.base_report(),
        agent.config.heartbeat,
        agent.status.subscribe(),
        agent.supervisor.as_ref().map(Supervisor::exits),
    ));
    let result = tokio::select! {
        () = shutdown => Ok(()),
        r = agent.follow() => r,
    };
    if let Some(s) = &agent.supervisor {
        s.stop().await;
    }
    reporter.abort();
    result
}

/// What the agent tells the server about itself, besides its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    build: Option<BuildId>,
    state: AgentState,
    error: Option<String>,
    /// The build the agent gave up on (`state.failed`), while the channel
    /// still names it.
    failed_build: Option<BuildId>,
    /// Why it waits, when `waiting`.
    waiting: Option<String>,
}

/// The report that carries `status` and the supervised process's last
/// exit.
fn report(base: &AgentReport, status: Status, exit: Option<ProcessExit>) -> AgentReport {
    AgentReport {
        build: status.build,
        state: status.state,
        error: status.error,
        failed_build: status.failed_build,
        waiting: status.waiting,
        exit,
        ..base.clone()
    }
}

/// Why the channel holds the agent back, in its words (or ours, from a
/// server that gave none).
fn waiting_reason(channel: &Channel) -> String {
    channel
        .waiting
        .clone()
        .unwrap_or_else(|| "the server does not let this agent update yet".to_string())
}

/// Whether the answer that led to a deployment attempt is settled (wait
/// for the channel to change) or must be asked for again after a back-off.
enum Outcome {
    Settled,
    Retry,
}

struct Agent {
    config: AgentConfig,
    /// The agent directory, absolute (release paths handed to processes
    /// must not depend on their working directory).
    dir: PathBuf,
    client: Client,
    cache: Cache,
    releases: Releases,
    state: State,
    agent_id: String,
    hostname: String,
    health: HealthCheck,
    supervisor: Option<Supervisor>,
    status: watch::Sender<Status>,
    /// While the channel holds the agent back: the status it had before,
    /// to go back to when the channel no longer names another build.
    before_waiting: Option<Status>,
    backoff: Duration,
    /// Held for the agent's life: one agent per directory, so what looks
    /// half-done at start is a leftover, not another agent's work.
    _lock: Flock<std::fs::File>,
}

impl Agent {
    fn open(config: AgentConfig) -> Result<Agent> {
        std::fs::create_dir_all(&config.dir).map_err(io(&config.dir))?;
        let dir = std::fs::canonicalize(&config.dir).map_err(io(&config.dir))?;
        let lock_path = dir.join("agent.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| Error::Locked(dir.clone()))?;
        let cache = Cache::open(&dir)?;
        let releases = Releases::open(&dir)?;
        // Crash leftovers: half-assembled releases are never pointed at and
        // are rebuilt from the cache; partial downloads of an earlier
        // process are dropped (a younger one may belong to this process).
        let tmp = releases.clean_tmp()?;
        let parts = cache.clean_parts(state::process_start())?;
        if tmp + parts > 0 {
            tracing::info!(
                releases = tmp,
                downloads = parts,
                "removed leftovers of an interrupted run"
            );
        }
        let state = State::load(&dir.join("state.json"))?;
        let agent_id = state::agent_id(&dir)?;
        let client = Client::new(&config.server, Some(config.token.clone()))?;
        let pid_file = dir.join(supervisor::PID_FILE);
        let supervisor = config
            .exec
            .clone()
            .map(|cmd| Supervisor::new(cmd, config.max_backoff, pid_file));
        let status = watch::Sender::new(Status {
            build: releases.current()?,
            state: AgentState::Idle,
            error: None,
            failed_build: state.failed.as_ref().map(|f| f.build.clone()),
            waiting: None,
        });
        Ok(Agent {
            health: HealthCheck {
                cmd: config.health_cmd.clone(),
                url: config.health_url.clone(),
            },
            backoff: FIRST_BACKOFF.min(config.max_backoff),
            config,
            dir,
            client,
            cache,
            releases,
            state,
            agent_id,
            hostname: state::hostname(),
            supervisor,
            status,
            before_waiting: None,
            _lock: lock,
        })
    }

    fn base_report(&self) -> AgentReport {
        AgentReport {
            agent_id: self.agent_id.clone(),
            hostname: self.hostname.clone(),
            platform: self.config.platform.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            service: self.config.service.clone(),
            environment: self.config.environment.clone(),
            build: None,
            state: AgentState::Idle,
            error: None,
            failed_build: None,
            waiting: None,
            exit: None,
        }
    }

    fn set_status(&self, build: Option<BuildId>, state: AgentState, error: Option<String>) {
        self.status.send_replace(Status {
            build,
            state,
            error,
            failed_build: self.state.failed.as_ref().map(|f| f.build.clone()),
            waiting: None,
        });
    }

    /// The channel names `build` but does not let this agent take it yet
    /// (a maintenance window, a paced rollout): reported as `waiting`, with
    /// the channel's reason, and logged once per reason. What runs keeps
    /// running.
    fn wait(&mut self, build: &BuildId, reason: String) {
        let status = self.status.borrow().clone();
        if status.state == AgentState::Waiting && status.waiting.as_ref() == Some(&reason) {
            return;
        }
        tracing::info!(%build, %reason, "waiting before installing");
        if status.state != AgentState::Waiting {
            self.before_waiting = Some(status.clone());
        }
        self.status.send_replace(Status {
            state: AgentState::Waiting,
            error: None,
            waiting: Some(reason),
            ..status
        });
    }

    /// The channel no longer holds the agent back: back to the status it
    /// had before it waited (the build it names may be the one running).
    fn stop_waiting(&mut self) {
        if let Some(before) = self.before_waiting.take() {
            if self.status.borrow().state == AgentState::Waiting {
                tracing::info!("no longer waiting");
                self.status.send_replace(Status {
                    failed_build: self.state.failed.as_ref().map(|f| f.build.clone()),
                    ..before
                });
            }
        }
    }

    /// Forgets the build given up on once the channel names another one:
    /// it is no longer what the agent declines to run, and naming it again
    /// later is a new request to try it.
    fn forget_failed(&mut self, named: Option<&BuildId>) {
        if self.state.failed.as_ref().is_none_or(|f| Some(&f.build) == named) {
            return;
        }
        self.state.failed = None;
        if let Err(e) = self.save_state() {
            // Only the record on disk is stale: a restart forgets the build
            // again on the first answer that names another.
            tracing::warn!(error = %e, "cannot save the agent state");
        }
        self.status.send_modify(|s| s.failed_build = None);
    }

    /// The long-poll wait to ask for.
    fn poll_wait(&self) -> Duration {
        self.config.poll_wait.max(MIN_POLL_WAIT)
    }

    fn save_state(&self) -> Result<()> {
        self.state.save(&self.dir.join("state.json"))
    }

    async fn follow(&mut self) -> Result<()> {
        self.stop_stale().await;
        self.recover().await?;
        let mut etag: Option<String> = None;
        loop {
            let answer = self
                .client
                .channel(
                    &self.config.service,
                    &self.config.environment,
                    &self.config.platform,
                    Some(&self.agent_id),
                    etag.as_deref(),
                    Some(self.poll_wait()),
                )
                .await;
            match answer {
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the channel; retrying");
                    self.back_off().await;
                }
                Ok(None) => self.backoff = FIRST_BACKOFF.min(self.config.max_backoff),
                Ok(Some((channel, tag))) => match self.apply(&channel).await {
                    Outcome::Settled => {
                        self.backoff = FIRST_BACKOFF.min(self.config.max_backoff);
                        if tag.is_empty() {
                            // Without an ETag the server cannot hold the
                            // request, so pace the polling here.
                            etag = None;
                            tokio::time::sleep(self.config.heartbeat).await;
                        } else {
                            etag = Some(tag);
                        }
                    }
                    Outcome::Retry => {
                        etag = None;
                        self.back_off().await;
                    }
                },
            }
        }
    }

    async fn back_off(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(self.config.max_backoff);
    }

    /// At start: stops the supervised process group an agent killed with
    /// `kill -9` left running, so that only one runs. A failure is logged:
    /// the agent's own process is started regardless.
    async fn stop_stale(&self) {
        let pid_file = self.dir.join(supervisor::PID_FILE);
        match supervisor::stop_stale(&pid_file, &self.dir.join("releases")).await {
            Ok(Some(pgid)) => tracing::info!(pgid, "stopped the process an earlier agent left running"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot stop the process an earlier agent left running"),
        }
    }

    /// At start: finish what a crash interrupted, and run what `current`
    /// names (the supervised process of an earlier agent was stopped by
    /// `stop_stale`, died with it, or was never started).
    async fn recover(&mut self) -> Result<()> {
        let current = self.releases.current()?;
        if let Some(pending) = self.state.activating.clone() {
            if current.as_ref() == Some(&pending) {
                // Switched but never confirmed healthy: activate again, and
                // roll back if it still fails.
                tracing::info!(build = %pending, "resuming an interrupted activation");
                let previous = self.state.previous.clone();
                self.activate_checked(&pending, previous).await?;
                return Ok(());
            }
            // The crash came before the switch: `current` is still the old
            // release, which is started below.
            self.state.activating = None;
            self.save_state()?;
        }
        match current {
            Some(build) => {
                self.set_status(Some(build.clone()), AgentState::Activating, None);
                match self.activate(&build).await {
                    Ok(()) => self.set_status(Some(build), AgentState::Healthy, None),
                    Err(e) => self.set_status(Some(build), AgentState::Failed, Some(e)),
                }
            }
            None => self.set_status(None, AgentState::Idle, None),
        }
        Ok(())
    }

    /// Acts on one channel answer.
    async fn apply(&mut self, channel: &Channel) -> Outcome {
        self.forget_failed(channel.build.as_ref());
        let Some(build) = channel.build.clone() else {
            // The environment runs nothing: keep what runs here.
            self.stop_waiting();
            return Outcome::Settled;
        };
        let current = match self.releases.current() {
            Ok(c) => c,
            Err(e) => return self.failed_attempt(None, e),
        };
        if current.as_ref() == Some(&build) && self.state.activating.is_none() {
            self.stop_waiting();
            // The channel names what runs here again (say, the environment
            // was rolled back to it): a failure of another build, already
            // undone, is no longer this agent's state.
            if self.status.borrow().state == AgentState::Failed && self.state.failed.is_none() {
                self.set_status(Some(build), AgentState::Healthy, None);
            }
            return Outcome::Settled;
        }
        if self.state.failed.as_ref().is_some_and(|f| f.build == build) {
            // Failed before: wait until the channel names another build.
            self.stop_waiting();
            return Outcome::Settled;
        }
        if !channel.may_update {
            self.wait(&build, waiting_reason(channel));
            return Outcome::Settled;
        }
        // Going ahead: the statuses of the update replace the waiting one.
        self.before_waiting = None;
        match self.deploy(channel, &build, current.clone()).await {
            Ok(()) => Outcome::Settled,
            Err(e @ Error::Archive { .. }) => self.give_up(current, &build, e),
            Err(e) => self.failed_attempt(current, e),
        }
    }

    /// The build itself is broken (an archive it may not unpack): nothing
    /// was switched, and trying again would fail the same way. It is
    /// given up like a build that failed its health check, so a paced
    /// rollout hears of it, and not tried again while the channel names it.
    fn give_up(&mut self, current: Option<BuildId>, build: &BuildId, e: Error) -> Outcome {
        let error = e.to_string();
        tracing::warn!(%build, %error, "giving up on the build");
        self.state.failed = Some(FailedBuild {
            build: build.clone(),
            error: error.clone(),
        });
        if let Err(e) = self.save_state() {
            tracing::warn!(error = %e, "cannot save the agent state");
        }
        self.set_status(current, AgentState::Failed, Some(error));
        Outcome::Settled
    }

    /// Reports an attempt that failed before anything was switched; it is
    /// tried again after a back-off.
    fn failed_attempt(&self, current: Option<BuildId>, e: Error) -> Outcome {
        tracing::warn!(error = %e, "deployment attempt failed; retrying later");
        self.set_status(current, AgentState::Failed, Some(e.to_string()));
        Outcome::Retry
    }

    /// Fetches, assembles, switches and activates `build`. An error means
    /// nothing was switched (or the switch itself failed); a failed
    /// activation is handled here, by rolling back.
    async fn deploy(&mut self, channel: &Channel, build: &BuildId, current: Option<BuildId>) -> Result<()> {
        tracing::info!(%build, "installing");
        self.set_status(current.clone(), AgentState::Downloading, None);
        self.check_space(build, &channel.artifacts)?;
        for a in &channel.artifacts {
            self.cache.ensure(&self.client, &a.digest, a.size).await?;
        }
        let (releases, cache) = (self.releases.clone(), self.cache.clone());
        let (b, version, artifacts) = (build.clone(), channel.version.clone(), channel.artifacts.clone());
        tokio::task::spawn_blocking(move || releases.assemble(&b, version.as_ref(), &artifacts, &cache))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        // Record the intent before the switch: a crash after it resumes the
        // activation instead of trusting an unchecked release.
        self.state.activating = Some(build.clone());
        if current.as_ref() != Some(build) {
            self.state.previous = current;
        }
        self.state.record_install(build);
        self.save_state()?;
        self.releases.switch(Some(build))?;
        let previous = self.state.previous.clone();
        self.activate_checked(build, previous).await
    }

    /// Refuses to download a build that cannot fit: a download that fills
    /// the disk would fail anyway, and would do so again at every retry
    /// while starving the running release of space.
    fn check_space(&self, build: &BuildId, artifacts: &[tug_api::ChannelArtifact]) -> Result<()> {
        let needed = self.cache.missing_bytes(artifacts);
        if needed == 0 {
            return Ok(());
        }
        let available = self.cache.available_bytes()?;
        if needed > available {
            return Err(Error::NoSpace {
                dir: self.dir.clone(),
                build: build.clone(),
                needed,
                available,
            });
        }
        Ok(())
    }

    /// Activates the build `current` points at and checks it; on failure,
    /// rolls back to `previous`. Either way the agent's state is settled.
    async fn activate_checked(&mut self, build: &BuildId, previous: Option<BuildId>) -> Result<()> {
        self.set_status(Some(build.clone()), AgentState::Activating, None);
        match self.activate(build).await {
            Ok(()) => {
                self.state.activating = None;
                self.state.failed = None;
                self.save_state()?;
                tracing::info!(%build, "healthy");
                self.set_status(Some(build.clone()), AgentState::Healthy, None);
            }
            Err(reason) => self.roll_back(build, previous, reason).await?,
        }
        self.prune().await;
        Ok(())
    }

    async fn roll_back(&mut self, failed: &BuildId, previous: Option<BuildId>, reason: String) -> Result<()> {
        tracing::warn!(build = %failed, %reason, "activation failed; rolling back");
        let error = Error::Unhealthy {
            build: failed.clone(),
            reason,
        }
        .to_string();
        // Remembered first, so a crash during the rollback does not retry
        // the failed build.
        self.state.failed = Some(FailedBuild {
            build: failed.clone(),
            error: error.clone(),
        });
        self.save_state()?;
        let target = previous.filter(|p| p != failed && self.releases.exists(p));
        match &target {
            Some(p) => {
                self.releases.switch(Some(p))?;
                self.state.activating = None;
                self.save_state()?;
                if let Err(e) = self.activate(p).await {
                    // Nothing older to go to: report both failures.
                    let error = format!("{error}; the previous build {p} failed too: {e}");
                    self.set_status(Some(p.clone()), AgentState::Failed, Some(error));
                    return Ok(());
                }
            }
            None => {
                // The first build failed: run nothing rather than a release
                // known to be broken.
                if let Some(s) = &self.supervisor {
                    s.stop().await;
                }
                self.releases.switch(None)?;
                self.state.activating = None;
                self.save_state()?;
            }
        }
        self.set_status(target, AgentState::Failed, Some(error));
        Ok(())
    }

    /// Runs the activation hook, (re)starts the supervised process and
    /// waits for health. The error is the reason, for the report.
    async fn activate(&self, build: &BuildId) -> Result<(), String> {
        let version: Option<Version> = self.releases.version(build);
        let launch = Launch {
            build: Some(build.clone()),
            cwd: self.releases.current_link(),
            env: vec![
                (
                    "TUG_RELEASE_DIR".to_string(),
                    self.releases.dir(build).display().to_string(),
                ),
                ("TUG_BUILD".to_string(), build.to_string()),
                (
                    "TUG_VERSION".to_string(),
                    version.map(|v| v.to_string()).unwrap_or_default(),
                ),
            ],
        };
        if let Some(hook) = &self.config.on_activate {
            let run = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(hook)
                .current_dir(&launch.cwd)
                .envs(launch.env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .status();
            let status = tokio::time::timeout(self.config.health_timeout, run)
                .await
                .map_err(|_| {
                    format!(
                        "the activation hook did not finish within {:?}",
                        self.config.health_timeout
                    )
                })?
                .map_err(|e| format!("cannot run the activation hook: {e}"))?;
            if !status.success() {
                return Err(format!("the activation hook {}", supervisor::describe(status)));
            }
        }
        let Some(s) = &self.supervisor else {
            return self.health.wait(&launch, self.config.health_timeout).await;
        };
        let mut exits = s.exits();
        exits.borrow_and_update();
        s.start(launch.clone()).await.map_err(|e| e.to_string())?;
        self.health
            .wait(&launch, self.config.health_timeout)
            .await
            .map_err(|reason| match exits.has_changed() {
                // The process ended while the release was checked: that,
                // more than a timeout, is why it is not healthy.
                Ok(true) => match exits.borrow().as_ref() {
                    Some(exit) => format!("{reason}; --exec {}{}", exit, stderr_hint(&exit.stderr)),
                    None => reason,
                },
                _ => reason,
            })
    }

    /// Deletes old releases and the blobs only they used. A failure here
    /// costs disk space, not correctness, so it is logged and not fatal.
    async fn prune(&self) {
        let (releases, cache, state, keep) = (
            self.releases.clone(),
            self.cache.clone(),
            self.state.clone(),
            self.config.keep_releases,
        );
        let done = tokio::task::spawn_blocking(move || -> Result<(usize, usize)> {
            let current = releases.current()?;
            let removed = releases.prune(keep, &state, current.as_ref())?;
            let blobs = cache.gc(&releases.used_digests()?)?;
            Ok((removed.len(), blobs))
        })
        .await;
        match done {
            Ok(Ok((0, 0))) => {}
            Ok(Ok((releases, blobs))) => tracing::info!(releases, blobs, "pruned old releases"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune old releases"),
            Err(e) => tracing::warn!(error = %e, "pruning task failed"),
        }
    }
}

/// `: <the last line it wrote>` for an error message, or nothing.
fn stderr_hint(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default()
}

/// Sends the agent's status at once when it (or the supervised process's
/// last exit) changes, and every `heartbeat` otherwise. A failed report is
/// only logged: the next one carries the same facts.
async fn report_loop(
    client: Client,
    base: AgentReport,
    heartbeat: Duration,
    mut status: watch::Receiver<Status>,
    mut exits: Option<watch::Receiver<Option<ProcessExit>>>,
) {
    let mut exit = None;
    loop {
        if let Some(e) = exits.as_mut() {
            exit = e.borrow_and_update().clone();
        }
        let report = report(&base, status.borrow_and_update().clone(), exit.clone());
        if let Err(e) = client.report(&report).await {
            tracing::debug!(error = %e, "cannot report to the server");
        }
        let exited = async {
            match exits.as_mut() {
                Some(e) => e.changed().await,
                None => std::future::pending().await,
            }
        };
        let mut supervisor_gone = false;
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            changed = exited => supervisor_gone = changed.is_err(),
            () = tokio::time::sleep(heartbeat) => {}
        }
        if supervisor_gone {
            // Its last exit stays what it was; there will be no other.
            exits = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_core::{EnvName, ServiceName};

    fn id(n: u8) -> BuildId {
        BuildId::parse(&format!("0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f{n:02x}")).unwrap()
    }

    fn channel(build: Option<BuildId>) -> Channel {
        Channel {
            service: ServiceName::parse("web").unwrap(),
            environment: EnvName::parse("prod").unwrap(),
            build,
            version: None,
            manifest_digest: None,
            critical: false,
            // Pacing holds the agent back: nothing is fetched, so no
            // server is needed.
            may_update: false,
            waiting: None,
            artifacts: Vec::new(),
            embargoed: false,
        }
    }

    fn agent(dir: &std::path::Path) -> Agent {
        let mut config = AgentConfig::new(
            "http://127.0.0.1:9",
            "t",
            ServiceName::parse("web").unwrap(),
            EnvName::parse("prod").unwrap(),
            dir,
        );
        config.poll_wait = Duration::from_millis(200);
        Agent::open(config).unwrap()
    }

    fn sent(agent: &Agent) -> AgentReport {
        report(&agent.base_report(), agent.status.borrow().clone(), None)
    }

    /// The report names the build given up on for as long as the channel
    /// names it, next to the build that runs instead, and after a restart.
    #[tokio::test]
    async fn the_report_names_the_failed_build_until_the_channel_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let (good, bad, next) = (id(1), id(2), id(3));
        let mut a = agent(dir.path());
        assert_eq!(sent(&a).failed_build, None);
        a.state.failed = Some(FailedBuild {
            build: bad.clone(),
            error: "unhealthy".into(),
        });
        a.save_state().unwrap();
        a.set_status(Some(good.clone()), AgentState::Failed, Some("unhealthy".into()));
        let r = sent(&a);
        assert_eq!(
            (r.build, r.state, r.failed_build),
            (Some(good.clone()), AgentState::Failed, Some(bad.clone()))
        );
        assert!(matches!(a.apply(&channel(Some(bad.clone()))).await, Outcome::Settled));
        assert_eq!(sent(&a).failed_build, Some(bad.clone()));
        drop(a);

        // A restarted agent still reports it.
        let mut a = agent(dir.path());
        assert_eq!(sent(&a).failed_build, Some(bad.clone()));
        // The channel names another build: forgotten, on disk too.
        a.apply(&channel(Some(next))).await;
        assert_eq!(sent(&a).failed_build, None);
        assert_eq!(State::load(&dir.path().join("state.json")).unwrap().failed, None);
        drop(a);

        // An environment that runs nothing no longer names it either.
        let mut a = agent(dir.path());
        a.state.failed = Some(FailedBuild {
            build: bad,
            error: "unhealthy".into(),
        });
        a.apply(&channel(None)).await;
        assert_eq!(sent(&a).failed_build, None);
    }

    /// A channel that names another build but holds the agent back makes
    /// it `waiting`, with the channel's reason; when the channel names what
    /// runs again (or nothing), the agent is back to how it was.
    #[tokio::test]
    async fn waiting_is_reported_with_its_reason_and_left_when_the_channel_moves() {
        let dir = tempfile::tempdir().unwrap();
        let (running, next) = (id(1), id(2));
        let mut a = agent(dir.path());
        a.set_status(Some(running.clone()), AgentState::Healthy, None);
        let held = |reason: Option<&str>| Channel {
            waiting: reason.map(str::to_string),
            ..channel(Some(next.clone()))
        };
        assert!(matches!(
            a.apply(&held(Some("outside the maintenance windows"))).await,
            Outcome::Settled
        ));
        let r = sent(&a);
        assert_eq!((r.state, r.build.as_ref()), (AgentState::Waiting, Some(&running)));
        assert_eq!(r.waiting.as_deref(), Some("outside the maintenance windows"));
        // Another reason replaces the first; what it waited from stays.
        a.apply(&held(None)).await;
        let r = sent(&a);
        assert_eq!(r.state, AgentState::Waiting);
        assert_eq!(
            r.waiting.as_deref(),
            Some("the server does not let this agent update yet")
        );
        // Released back to what runs here: healthy on it, as before.
        let mut back = channel(Some(running.clone()));
        back.may_update = true;
        std::fs::create_dir_all(dir.path().join("releases").join(running.as_str())).unwrap();
        a.releases.switch(Some(&running)).unwrap();
        a.apply(&back).await;
        let r = sent(&a);
        assert_eq!((r.state, r.waiting), (AgentState::Healthy, None));
        // And when the environment runs nothing, a waiting agent stops too.
        a.apply(&held(Some("rollout paced"))).await;
        assert_eq!(sent(&a).state, AgentState::Waiting);
        a.apply(&channel(None)).await;
        assert_eq!(sent(&a).state, AgentState::Healthy);
    }

    #[tokio::test]
    async fn the_poll_wait_is_never_below_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = agent(dir.path());
        assert_eq!(a.poll_wait(), Duration::from_secs(1));
        a.config.poll_wait = Duration::from_secs(60);
        assert_eq!(a.poll_wait(), Duration::from_secs(60));
    }
}
