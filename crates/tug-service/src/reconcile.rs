//! Auto-release as a reconciliation, and the expiry of approval requests.
//!
//! An environment that auto-releases a branch should run the newest sealed
//! build of that branch (by seal time) that may still be deployed: not
//! yanked, not embargoed unless the environment is private. Rather than
//! deploying once when a build is sealed (a crash between the seal's commit
//! and the release would lose the release for good), [`Tugboat::reconcile`]
//! compares what the environment runs with what it should run and closes the
//! gap. It is idempotent, so it runs after every seal (a build sealed again
//! too), after a pipeline is applied, when a hold is lifted, at server start
//! and periodically ([`Tugboat::sweeper`]); any number of servers may run it
//! at once on one database.
//!
//! It never moves an environment backwards (to a build sealed before the one
//! it runs), does nothing while the environment's auto-release is held (a
//! manual release or rollback holds it), and does not ask again for a build
//! whose auto-release request approvers rejected or let expire. Where the
//! environment needs approvals it finds or makes the one pending request.
//!
//! This module does not decide policy: every deployment still goes through
//! `carry_out` and `tug_core::policy::evaluate`.

use std::time::Duration;

use rand::Rng;
use tug_core::records::{BuildRecord, DeploymentRequest};
use tug_core::states::RequestState;
use tug_core::{DeployKind, Environment, ServiceName};

use crate::deploy::{DeployOptions, Intent, Outcome};
use crate::{Error, Result, Tugboat};

/// How often one reconciliation tries again when another deployment into
/// the environment lands between its read and its write. Each conflict
/// means some deployment succeeded, and auto-release only moves forward, so
/// a few attempts suffice; the periodic sweep covers the rest.
const ATTEMPTS: u32 = 20;

/// The shortest pause between two rounds of the sweeper.
const MIN_PAUSE: Duration = Duration::from_millis(50);

/// The sweeper's period: a full reconciliation of every auto-releasing
/// environment, as a backstop for crashes and for servers that went away.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Where an environment's seal order puts a build: later seals first, ids
/// (time-ordered) breaking ties between seals in the same millisecond.
fn seal_order(b: &BuildRecord) -> (Option<chrono::DateTime<chrono::Utc>>, &str) {
    (b.sealed_at, b.id.as_str())
}

/// A short random pause before trying again, so that the writers that
/// collided do not collide again in lockstep.
pub(crate) async fn jitter(attempt: u32) {
    let ms = rand::thread_rng().gen_range(1..=5 * u64::from(attempt.clamp(1, 10)));
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

impl Tugboat {
    /// Makes an auto-releasing environment run the newest eligible build of
    /// its branch. `Ok(None)`: nothing to do (no auto-release, held, nothing
    /// newer than what runs, or approvers declined that build). Otherwise
    /// the deployment made or the request that waits for approvals; a
    /// policy refusal (a freeze window, say) is an error and is tried again
    /// by the next sweep.
    pub(crate) async fn reconcile(&self, service: &ServiceName, environment: &Environment) -> Result<Option<Outcome>> {
        let Some(branch) = environment.auto_release.as_deref() else {
            return Ok(None);
        };
        let mut attempt = 0;
        loop {
            // The environment first, then the candidate: a build sealed in
            // between is newer than what the state says runs, never older.
            let state = self.db.env_state(service, &environment.name).await?;
            if state.auto_release_held {
                return Ok(None);
            }
            let Some(candidate) = self.db.newest_releasable(service, branch, environment.private).await? else {
                return Ok(None);
            };
            if let Some(current) = &state.current {
                if current.build == candidate.id {
                    return Ok(None);
                }
                let running = self.db.build_summary(&current.build).await?;
                if running.is_some_and(|r| seal_order(&r) >= seal_order(&candidate)) {
                    return Ok(None);
                }
            }
            let declined = self
                .db
                .last_request(service, &environment.name, &candidate.id, Some(DeployKind::AutoRelease))
                .await?
                .is_some_and(|r| matches!(r.state, RequestState::Rejected | RequestState::Expired));
            if declined {
                return Ok(None);
            }
            let intent = Intent {
                service,
                environment,
                build: candidate,
                kind: DeployKind::AutoRelease,
                options: DeployOptions::default(),
                requested_by: None,
                actor: None,
                admin: false,
                approvals: 0,
                request: None,
                state: Some(state),
            };
            match self.carry_out(intent).await {
                Err(Error::Conflict(_)) if attempt < ATTEMPTS => {
                    attempt += 1;
                    jitter(attempt).await;
                }
                other => return other.map(Some),
            }
        }
    }

    /// Reconciles every environment of the build's service that
    /// auto-releases the build's branch. Refusals are logged, not returned:
    /// the seal itself succeeded.
    pub(crate) async fn reconcile_after_seal(&self, build: &BuildRecord) {
        let Some(branch) = build.source.branch.as_deref() else {
            return;
        };
        let Ok(view) = self.pipeline_view(&build.service).await else {
            return;
        };
        for environment in view
            .pipeline
            .environments
            .iter()
            .filter(|e| e.auto_release.as_deref() == Some(branch))
        {
            if let Err(e) = self.reconcile(&build.service, environment).await {
                tracing::info!(build = %build.id, env = %environment.name, error = %e, "no auto-release");
            }
        }
    }

    /// Reconciles every auto-releasing environment of a service.
    pub(crate) async fn reconcile_service(&self, service: &ServiceName) {
        let Ok(view) = self.pipeline_view(service).await else {
            return;
        };
        for environment in view.pipeline.environments.iter().filter(|e| e.auto_release.is_some()) {
            match self.reconcile(service, environment).await {
                Ok(Some(Outcome::Deployed { deployment, .. })) => {
                    tracing::info!(%service, env = %environment.name, build = %deployment.build, "auto-released")
                }
                Ok(_) => {}
                // Repeated every sweep while it lasts (a freeze window, say).
                Err(e) => tracing::debug!(%service, env = %environment.name, error = %e, "no auto-release"),
            }
        }
    }

    /// Expires the requests that are due and reconciles every
    /// auto-releasing environment of every service. Safe to run on several
    /// servers at once.
    pub async fn sweep(&self) -> Result<()> {
        let began = std::time::Instant::now();
        self.expire_due_requests().await?;
        let services = self.db.list_services().await?;
        for (service, _) in &services {
            self.reconcile_service(service).await;
        }
        tracing::debug!(services = services.len(), took = ?began.elapsed(), "swept");
        Ok(())
    }

    /// Marks the pending requests past their expiry as expired, recording
    /// an `approval.expired` event for each (once, whichever server sweeps).
    pub(crate) async fn expire_due_requests(&self) -> Result<Vec<DeploymentRequest>> {
        let mut tx = self.db.begin().await?;
        let expired = tx.expire_due_requests(self.now()).await?;
        let mut events = Vec::with_capacity(expired.len());
        for r in &expired {
            // Builds are never deleted; a request names one that exists.
            if let Some(build) = self.db.build_summary(&r.build).await? {
                let change = tug_api::Change::ApprovalExpired(crate::events::approval(r, &build));
                events.push(self.event(Some(&r.service), None, change));
            }
        }
        self.commit(tx, &events).await?;
        Ok(expired)
    }

    /// Runs until dropped: a full [`Tugboat::sweep`] at once and every
    /// `every`, and the expiry of each request as soon as it is due (this
    /// server's new requests wake it; other servers' requests are expired
    /// by their own sweeper, or by this one's next full sweep).
    pub async fn sweeper(self, every: Duration) {
        let mut next_full = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            let done = if now >= next_full {
                next_full = now + every;
                self.sweep().await
            } else {
                self.expire_due_requests().await.map(|_| ())
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "sweep failed; trying again later");
            }
            let until_expiry = match self.db.next_expiry().await {
                Ok(Some(at)) => (at - self.now()).to_std().unwrap_or(Duration::ZERO),
                Ok(None) => every,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the next request expiry");
                    every
                }
            };
            // At least a moment between rounds, so a request the database
            // keeps calling due (a clock behind another server's) cannot
            // make this loop spin.
            let pause = until_expiry.clamp(MIN_PAUSE, every);
            let wake = tokio::time::Instant::now()
                .checked_add(pause)
                .map_or(next_full, |t| t.min(next_full));
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = self.requests.notified() => {}
            }
        }
    }
}
