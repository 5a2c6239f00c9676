//! Pipelines and deployments: apply a pipeline, release a build into an
//! environment, promote what runs upstream, roll back, show status and
//! history, auto-release newly sealed builds. Every deployment is checked
//! against the environment's policies (`tug_core::policy`) and written with
//! the environment's compare-and-set, so concurrent deployments never both
//! win. A promotion is a metadata write: no byte of the build moves.

use chrono::{DateTime, Utc};
use tug_api::{Change, Deployed, DeploymentKind};
use tug_core::pipeline_changes::PipelineChange;
use tug_core::records::{BuildFilter, BuildRecord, DeploymentRecord, DeploymentRequest, PipelineRecord};
use tug_core::short_id::IdPrefix;
use tug_core::states::{self, RequestState};
use tug_core::{
    bump, evaluate, next_cloud_version, Action, BuildFacts, BuildId, BuildRef, BuildState, DeployKind, EnvName,
    Environment, Part, Pipeline, Proposal, Role, ServerRule, ServiceName, Verdict, Version,
};
use tug_db::{CreatedRequest, EnvState, NewDeployment};

use crate::access::facts_of;
use crate::{AgentCounts, DeploymentView, Error, Principal, Result, Shown, Tugboat};

/// Which build a release names.
#[derive(Debug, Clone)]
pub enum BuildSelector {
    /// A build id or manifest digest.
    Reference(BuildRef),
    /// The newest sealed build of a branch.
    Branch(String),
    /// The newest sealed build with this version.
    Version(Version),
}

/// Options every deployment takes.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// Deploy through a freeze window (admin only, with a reason).
    pub override_freeze: bool,
    pub reason: Option<String>,
}

/// What a deployment request came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The deployment, with the build it put in place (so callers need
    /// not read it again).
    Deployed {
        deployment: DeploymentRecord,
        build: Box<BuildRecord>,
    },
    /// The environment needs approvals; the request waits for them.
    Pending { request: DeploymentRequest, need: u32 },
}

/// What a release, promotion or rollback came to, as its caller may see
/// it (the build it replaced may be embargoed from a deployer).
#[derive(Debug, Clone)]
pub enum Answer {
    Deployed(Box<DeploymentView>),
    Pending { request: Box<DeploymentRequest>, need: u32 },
}

/// What an approval or rejection came to.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The request as it stands after the decision: still pending,
    /// rejected, or deployed (by this approval or by one made at the same
    /// moment).
    pub request: DeploymentRequest,
    pub need: u32,
    /// Set, with the deployed build, when this approval carried the
    /// deployment out.
    pub deployment: Option<(DeploymentRecord, Box<BuildRecord>)>,
}

/// Who asks for a deployment and how it is checked.
pub(crate) struct Intent<'a> {
    pub(crate) service: &'a ServiceName,
    pub(crate) environment: &'a Environment,
    pub(crate) build: BuildRecord,
    pub(crate) kind: DeployKind,
    pub(crate) options: DeployOptions,
    pub(crate) requested_by: Option<String>,
    /// The token that makes the deployment happen (`None`: Tugboat by
    /// itself, as auto-release and auto-rollback do).
    pub(crate) actor: Option<tug_api::Actor>,
    pub(crate) admin: bool,
    /// Approvals from distinct approvers other than the requester.
    pub(crate) approvals: u32,
    /// The approved request this deployment carries out (closed in the
    /// deployment's transaction, so it deploys once).
    pub(crate) request: Option<String>,
    /// The environment's state the caller has already judged (auto-release
    /// compares builds with what runs): the deployment happens only if the
    /// environment is still there. Read afresh when `None`.
    pub(crate) state: Option<EnvState>,
}

/// What changed between two builds. When either side is embargoed from
/// the caller, nothing is compared: the changes are empty and the source
/// range names the visible side only.
#[derive(Debug, Clone)]
pub struct Diff {
    pub old: Shown<BuildRecord>,
    pub new: Shown<BuildRecord>,
    pub changes: Vec<tug_core::diff::ArtifactChange>,
    pub unchanged: u64,
    pub source: tug_core::diff::SourceRange,
}

/// One environment in `status`, as the caller may see it.
#[derive(Debug, Clone)]
pub struct EnvStatus {
    pub environment: Environment,
    pub auto_release_held: bool,
    /// What it runs.
    pub current: Option<DeploymentView>,
    /// Deployments into this environment waiting for approvals (of builds
    /// the caller may see).
    pub pending: Vec<DeploymentRequest>,
    /// Requests into this environment that expired since its current
    /// deployment (since ever, when it runs nothing), newest first.
    pub expired: Vec<DeploymentRequest>,
    /// The rollout of the current build to the environment's agents.
    pub rollout: crate::RolloutStatus,
    /// The agents following it.
    pub agents: AgentCounts,
}

/// A pipeline as stored, parsed.
#[derive(Debug, Clone)]
pub struct PipelineView {
    pub row: PipelineRecord,
    pub pipeline: Pipeline,
    /// The server-wide rules that apply to its environments.
    pub server_rules: Vec<ServerRule>,
    /// Whether the call that returned it stored a new revision (an apply
    /// identical to the current pipeline stores none).
    pub changed: bool,
}

/// One stored revision of a pipeline and what it changed from the one
/// before.
#[derive(Debug, Clone)]
pub struct PipelineRevision {
    pub row: PipelineRecord,
    pub changes: Vec<PipelineChange>,
}

impl Tugboat {
    /// Validates and stores a service's pipeline (a TOML document).
    pub async fn apply_pipeline(
        &self,
        who: &Principal,
        service: &ServiceName,
        text: &str,
        base_revision: Option<i64>,
    ) -> Result<PipelineView> {
        self.require(who, Action::ManagePipelines)?;
        let pipeline = Pipeline::parse_submitted(text).map_err(Error::Pipeline)?;
        if &pipeline.service != service {
            return Err(Error::Invalid(format!(
                "the pipeline is for service {}, not {service}; fix `service` in the file",
                pipeline.service
            )));
        }
        pipeline
            .check_server_rules(&self.settings.server_rules)
            .map_err(Error::Pipeline)?;
        if let Some(twice) = tug_core::pipeline_changes::duplicate_window(&pipeline) {
            return Err(Error::Invalid(twice));
        }
        if !self.db.service_exists(service).await? {
            return Err(Error::ServiceNotFound(service.clone()));
        }
        let current = self.db.pipeline(service).await?;
        if let Some(base) = base_revision {
            let at = current.as_ref().map_or(0, |p| p.revision);
            if at != base {
                return Err(Error::Conflict(format!(
                    "the pipeline of {service} is at revision {at}, not {base}: it changed meanwhile; read it again and reapply"
                )));
            }
        }
        // A revision that changes nothing is not stored: applying the same
        // file again (as CI does on every run) leaves the history as it is.
        if let Some(row) = &current {
            if Pipeline::parse(&row.spec).is_ok_and(|p| p == pipeline) {
                return Ok(self.view(row.clone(), pipeline, false));
            }
        }
        let revision = current.as_ref().map_or(0, |p| p.revision) + 1;
        let mut tx = self.db.begin().await?;
        let row = tx
            .save_pipeline(
                service,
                revision,
                &pipeline.to_toml(),
                self.now(),
                Some(who.name.to_string()),
            )
            .await?;
        let event = self.event(
            Some(service),
            Some(crate::events::actor(who)),
            Change::PipelineApplied { revision },
        );
        self.commit(tx, &[event]).await?;
        // An environment may have just gained its auto-release.
        self.reconcile_service(service).await;
        Ok(self.view(row, pipeline, true))
    }

    fn view(&self, row: PipelineRecord, pipeline: Pipeline, changed: bool) -> PipelineView {
        let server_rules = self
            .settings
            .server_rules
            .iter()
            .filter(|r| pipeline.environment(&r.environment).is_some())
            .cloned()
            .collect();
        PipelineView {
            row,
            pipeline,
            server_rules,
            changed,
        }
    }

    /// The current pipeline of a service.
    pub async fn show_pipeline(&self, who: &Principal, service: &ServiceName) -> Result<PipelineView> {
        self.require_in(who, Action::Read, service)?;
        self.pipeline_of(service).await
    }

    /// Every revision of a service's pipeline, newest first, with who
    /// applied it, when, and what it changed.
    pub async fn pipeline_history(&self, who: &Principal, service: &ServiceName) -> Result<Vec<PipelineRevision>> {
        self.require_in(who, Action::Read, service)?;
        self.pipeline_of(service).await?;
        let rows = self.db.pipeline_history(service).await?;
        let parsed: Vec<Option<Pipeline>> = rows.iter().map(|r| Pipeline::parse(&r.spec).ok()).collect();
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, row)| {
                let changes = match (&parsed[i], parsed.get(i + 1)) {
                    (Some(new), None) => tug_core::pipeline_changes::changes(None, new),
                    (Some(new), Some(Some(old))) => tug_core::pipeline_changes::changes(Some(old), new),
                    _ => Vec::new(),
                };
                PipelineRevision { row, changes }
            })
            .collect())
    }

    pub(crate) async fn pipeline_view(&self, service: &ServiceName) -> Result<PipelineView> {
        self.pipeline_of(service).await
    }

    async fn pipeline_of(&self, service: &ServiceName) -> Result<PipelineView> {
        let Some(row) = self.db.pipeline(service).await? else {
            if !self.db.service_exists(service).await? {
                return Err(Error::ServiceNotFound(service.clone()));
            }
            return Err(Error::NoPipeline(service.clone()));
        };
        let pipeline = Pipeline::parse(&row.spec).map_err(|e| Error::corrupt(e.to_string()))?;
        Ok(self.view(row, pipeline, false))
    }

    /// Puts a named build into an environment.
    pub async fn release(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        selector: BuildSelector,
        options: DeployOptions,
    ) -> Result<Answer> {
        self.require_in(who, Action::Deploy, service)?;
        let view = self.pipeline_of(service).await?;
        let environment = environment(&view.pipeline, env)?;
        let build = match selector {
            BuildSelector::Reference(r) => self.resolve_visible(who, &r).await?,
            BuildSelector::Branch(b) => self
                .newest_sealed_seen_by(Some(who), service, Some(b.clone()), None)
                .await?
                .ok_or_else(|| {
                    Error::NothingToDeploy(format!("service {service} has no sealed build of branch {b}"))
                })?,
            BuildSelector::Version(v) => self
                .newest_sealed_seen_by(Some(who), service, None, Some(v.clone()))
                .await?
                .ok_or_else(|| {
                    Error::NothingToDeploy(format!("service {service} has no sealed build with version {v}"))
                })?,
        };
        if &build.service != service {
            return Err(Error::Invalid(format!(
                "build {} belongs to service {}, not {service}",
                build.id, build.service
            )));
        }
        // Deploying what already runs would only add a deployment that
        // replaces itself.
        self.refuse_if_running(service, env, &build.id).await?;
        self.deploy_as(who, service, environment, build, DeployKind::Release, options)
            .await
    }

    /// Refuses to deploy `build` into an environment that runs it already.
    async fn refuse_if_running(&self, service: &ServiceName, env: &EnvName, build: &BuildId) -> Result<()> {
        let current = self.db.env_state(service, env).await?.current;
        if current.is_some_and(|c| &c.build == build) {
            return Err(already_runs(service, env, build));
        }
        Ok(())
    }

    /// Takes the build running in the environment's upstream (for the first
    /// environment: the newest sealed build of the branch it auto-releases
    /// from) into the environment.
    pub async fn promote(
        &self,
        who: &Principal,
        service: &ServiceName,
        to: &EnvName,
        options: DeployOptions,
    ) -> Result<Answer> {
        self.require_in(who, Action::Deploy, service)?;
        let view = self.pipeline_of(service).await?;
        let environment = environment(&view.pipeline, to)?;
        let build_id = match (&environment.upstream, &environment.auto_release) {
            (Some(up), _) => {
                let state = self.db.env_state(service, up).await?;
                state
                    .current
                    .ok_or_else(|| {
                        Error::NothingToDeploy(format!(
                            "{up} of {service} runs nothing yet; nothing to promote into {to}"
                        ))
                    })?
                    .build
            }
            (None, Some(branch)) => {
                self.db
                    .newest_releasable(service, branch, environment.private)
                    .await?
                    .ok_or_else(|| {
                        Error::NothingToDeploy(format!(
                            "service {service} has no sealed build of branch {branch} that may go into {to}"
                        ))
                    })?
                    .id
            }
            (None, None) => {
                return Err(Error::NothingToDeploy(format!(
                    "{to} has no upstream and no auto-release branch; use tug release {service} --env {to} --build ID"
                )))
            }
        };
        let build = self
            .db
            .build(&build_id)
            .await?
            .ok_or_else(|| Error::BuildNotFound(build_id.to_string()))?;
        let upstream = environment.upstream.as_ref().map_or("its branch", |u| u.as_str());
        let build = self.require_seen(who, build, || {
            format!("{upstream} of {service} runs an embargoed build this token may not see; an admin or an approver may promote it")
        })
        .await?;
        self.refuse_if_running(service, to, &build_id).await?;
        self.deploy_as(who, service, environment, build, DeployKind::Promote, options)
            .await
    }

    /// Puts the previous build (or `to`, which must have run there before)
    /// back into an environment, as a new deployment.
    pub async fn rollback(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        to: Option<BuildRef>,
        options: DeployOptions,
    ) -> Result<Answer> {
        self.require_in(who, Action::Deploy, service)?;
        let view = self.pipeline_of(service).await?;
        let environment = environment(&view.pipeline, env)?;
        let current = self.db.env_state(service, env).await?.current.ok_or_else(|| {
            Error::NothingToDeploy(format!("{env} of {service} runs nothing yet; nothing to roll back"))
        })?;
        let target = match to {
            Some(r) => {
                let b = self.resolve_visible(who, &r).await?;
                if self.db.last_deployed_at(service, env, &b.id).await?.is_none() {
                    return Err(Error::NothingToDeploy(format!(
                        "build {} never ran in {env} of {service}; roll back only to a build that did (see tug history)",
                        b.id
                    )));
                }
                b
            }
            None => {
                let previous = current.replaced.clone().ok_or_else(|| {
                    Error::NothingToDeploy(format!(
                        "{env} of {service} ran nothing before build {}; nothing to roll back to",
                        current.build
                    ))
                })?;
                let b = self
                    .db
                    .build(&previous)
                    .await?
                    .ok_or_else(|| Error::BuildNotFound(previous.to_string()))?;
                self.require_seen(who, b, || {
                    format!("{env} of {service} ran an embargoed build before this one, which this token may not see; an admin or an approver may roll back to it")
                })
                .await?
            }
        };
        if target.id == current.build {
            return Err(already_runs(service, env, &target.id));
        }
        self.deploy_as(who, service, environment, target, DeployKind::Rollback, options)
            .await
    }

    /// `build` if the caller may see it; otherwise refused as a build that
    /// does not exist, with `why` saying where it is.
    async fn require_seen(
        &self,
        who: &Principal,
        build: BuildRecord,
        why: impl FnOnce() -> String,
    ) -> Result<BuildRecord> {
        if self.sight(who, &facts_of(&build)).await?.is_full() {
            Ok(build)
        } else {
            Err(Error::HiddenBuild(why()))
        }
    }

    /// Carries out a deployment `who` asked for and answers as `who` may
    /// see it.
    async fn deploy_as(
        &self,
        who: &Principal,
        service: &ServiceName,
        environment: &Environment,
        build: BuildRecord,
        kind: DeployKind,
        options: DeployOptions,
    ) -> Result<Answer> {
        let outcome = self
            .carry_out(Intent::by(who, service, environment, build, kind, options))
            .await?;
        let answer = self.answer_as(who, outcome).await?;
        // The caller named the build, so it may see the request for it.
        answer.ok_or_else(|| Error::Conflict("the deployment cannot be shown to its caller".into()))
    }

    /// What a deployment came to, as `who` may see it: `None` for a
    /// request to deploy a build `who` may not see (auto-release caught up
    /// with an embargoed build in a private environment, say).
    async fn answer_as(&self, who: &Principal, outcome: Outcome) -> Result<Option<Answer>> {
        Ok(match outcome {
            Outcome::Deployed { deployment, build } => {
                let sights = self.sights(who, deployment_builds(&deployment).collect()).await?;
                Some(Answer::Deployed(Box::new(sights.deployment(deployment, Some(*build)))))
            }
            Outcome::Pending { request, need } => {
                let sights = self.sights(who, vec![request.build.clone()]).await?;
                sights.full(&request.build).then(|| Answer::Pending {
                    request: Box::new(request),
                    need,
                })
            }
        })
    }

    /// The next version of a service: a cloud version (`<major>.0.0-cloud.
    /// <UTC timestamp>.<commit>`, major = newest stable major + 1) when
    /// `commit` is given with `part` None, else the newest stable version
    /// bumped.
    pub async fn next_version(
        &self,
        who: &Principal,
        service: &ServiceName,
        part: Option<Part>,
        commit: Option<&str>,
    ) -> Result<Version> {
        self.require_in(who, Action::Read, service)?;
        if !self.db.service_exists(service).await? {
            return Err(Error::ServiceNotFound(service.clone()));
        }
        // Versions of builds the caller may not see count as if those
        // builds did not exist: an embargoed 2.0.1 must not show through
        // a next patch version of 2.0.2.
        let versions = self.db.build_versions(service).await?;
        let mut stable = Vec::with_capacity(versions.len());
        for (v, facts) in versions {
            if v.semver().pre.is_empty() && self.sight(who, &facts).await?.is_full() {
                stable.push(v);
            }
        }
        let newest = stable.iter().max().cloned();
        match (part, commit) {
            (None, Some(commit)) => next_cloud_version(newest.map(|v| v.semver().major), self.now(), commit)
                .map_err(|e| Error::Invalid(e.to_string())),
            (Some(part), None) => Ok(bump(
                &newest.unwrap_or_else(|| Version::from(semver::Version::new(0, 0, 0))),
                part,
            )),
            _ => Err(Error::Invalid(
                "ask for either a cloud version (with a commit) or a bump (major, minor or patch)".into(),
            )),
        }
    }

    /// Resolves one side of a diff: an environment of the service (what it
    /// runs now) or a build id or manifest digest.
    async fn diff_side(
        &self,
        who: &Principal,
        service: &ServiceName,
        side: &str,
    ) -> Result<(Shown<BuildRecord>, Vec<tug_core::ArtifactSpec>)> {
        let is_build = side.starts_with(tug_core::digest::PREFIX)
            || BuildId::parse(side).is_ok()
            || (IdPrefix::parse(side).is_some() && !self.names_environment(service, side).await);
        let build = if is_build {
            let reference = BuildRef::parse(side).map_err(|e| Error::Invalid(e.to_string()))?;
            self.resolve_visible(who, &reference).await?
        } else {
            let env = EnvName::parse(side).map_err(|e| Error::Invalid(e.to_string()))?;
            let view = self.pipeline_of(service).await?;
            environment(&view.pipeline, &env)?;
            let current = self.db.env_state(service, &env).await?.current.ok_or_else(|| {
                Error::NothingToDeploy(format!(
                    "{env} of {service} runs nothing yet; there is nothing to compare"
                ))
            })?;
            self.db
                .build(&current.build)
                .await?
                .ok_or_else(|| Error::BuildNotFound(current.build.to_string()))?
        };
        if &build.service != service {
            return Err(Error::Invalid(format!(
                "build {} belongs to service {}, not {service}",
                build.id, build.service
            )));
        }
        if !self.sight(who, &facts_of(&build)).await?.is_full() {
            return Ok((Shown::Embargoed, Vec::new()));
        }
        let artifacts = self.db.artifacts(&build.id).await?;
        Ok((Shown::Visible(build), artifacts))
    }

    /// Whether `name` is an environment of the service's pipeline: `cafe`
    /// could also be the start of a build id, and the environment wins.
    async fn names_environment(&self, service: &ServiceName, name: &str) -> bool {
        let Ok(env) = EnvName::parse(name) else { return false };
        self.pipeline_of(service)
            .await
            .is_ok_and(|v| v.pipeline.environment(&env).is_some())
    }

    /// What changed from one environment or build to another.
    pub async fn diff(&self, who: &Principal, service: &ServiceName, from: &str, to: &str) -> Result<Diff> {
        self.require_in(who, Action::Read, service)?;
        let (old, old_artifacts) = self.diff_side(who, service, from).await?;
        let (new, new_artifacts) = self.diff_side(who, service, to).await?;
        let (changes, unchanged) = if old.is_embargoed() || new.is_embargoed() {
            (Vec::new(), 0)
        } else {
            tug_core::diff::artifacts(&old_artifacts, &new_artifacts)
        };
        let unseen = tug_core::BuildSource::default();
        let source = tug_core::diff::source_range(
            old.visible().map_or(&unseen, |b| &b.source),
            new.visible().map_or(&unseen, |b| &b.source),
        );
        Ok(Diff {
            old,
            new,
            changes,
            unchanged,
            source,
        })
    }

    /// Clears an environment's auto-release hold and catches up at once:
    /// the newest eligible build of its branch is released (or waits for
    /// approvals) unless it runs already. The outer result is the resume's;
    /// the inner one says what catching up came to (`None`: nothing to
    /// release), as the caller may see it. When catching up is refused (a
    /// freeze window, say) the hold stays lifted and the periodic sweep
    /// releases the build once the policies allow it.
    pub async fn resume_auto_release(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
    ) -> Result<Result<Option<Answer>>> {
        self.require_in(who, Action::Deploy, service)?;
        let view = self.pipeline_of(service).await?;
        let environment = environment(&view.pipeline, env)?;
        let mut tx = self.db.begin().await?;
        tx.set_auto_release_hold(service, env, false).await?;
        let event = self.event(
            Some(service),
            Some(crate::events::actor(who)),
            Change::AutoReleaseResumed {
                environment: env.clone(),
            },
        );
        self.commit(tx, &[event]).await?;
        Ok(match self.reconcile(service, environment).await {
            Ok(Some(outcome)) => self.answer_as(who, outcome).await,
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        })
    }

    /// Every environment of the service in pipeline order with what it
    /// runs, as the caller may see it.
    pub async fn status(&self, who: &Principal, service: &ServiceName) -> Result<(PipelineView, Vec<EnvStatus>)> {
        self.require_in(who, Action::Read, service)?;
        let view = self.pipeline_of(service).await?;
        let now = self.now();
        let mut states = Vec::with_capacity(view.pipeline.environments.len());
        for environment in &view.pipeline.environments {
            let state = self.db.env_state(service, &environment.name).await?;
            let build = match &state.current {
                Some(d) => self.db.build_summary(&d.build).await?,
                None => None,
            };
            states.push((environment, state, build));
        }
        let pending = self.db.pending_requests(service, now).await?;
        let mut expired = Vec::with_capacity(states.len());
        for (environment, state, _) in &states {
            let since = state
                .current
                .as_ref()
                .map_or(DateTime::<Utc>::MIN_UTC, |d| d.deployed_at);
            expired.push(
                self.db
                    .expired_requests(service, &environment.name, since, now, EXPIRED_SHOWN)
                    .await?,
            );
        }
        let sights = self
            .sights(
                who,
                states
                    .iter()
                    .flat_map(|(_, s, _)| s.current.iter().flat_map(deployment_builds))
                    .chain(pending.iter().map(|r| r.build.clone()))
                    .chain(expired.iter().flatten().map(|r| r.build.clone()))
                    .collect(),
            )
            .await?;
        let current: Vec<(EnvName, Option<BuildId>)> = states
            .iter()
            .map(|(e, s, _)| (e.name.clone(), s.current.as_ref().map(|d| d.build.clone())))
            .collect();
        let mut counts = self.agent_counts(who, service, &current).await?.into_iter();
        let mut out = Vec::with_capacity(states.len());
        for ((environment, state, build), expired) in states.into_iter().zip(expired) {
            let pacing = crate::Pacing::of(service, environment, &state, build.as_ref().is_some_and(|b| b.critical));
            let rollout = self.status_of(&pacing).await?;
            out.push(EnvStatus {
                environment: environment.clone(),
                auto_release_held: state.auto_release_held,
                rollout: crate::rollouts::shown(rollout, &sights),
                current: state.current.map(|d| sights.deployment(d, build)),
                pending: pending
                    .iter()
                    .filter(|r| r.environment == environment.name && sights.full(&r.build))
                    .cloned()
                    .collect(),
                // A request for a build the caller may not see is left out
                // altogether, as a pending one is.
                expired: expired.into_iter().filter(|r| sights.full(&r.build)).collect(),
                agents: counts.next().unwrap_or_default(),
            });
        }
        Ok((view, out))
    }

    /// An environment's deployments, newest first, as the caller may see
    /// them.
    pub async fn history(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        limit: u32,
    ) -> Result<Vec<DeploymentView>> {
        self.require_in(who, Action::Read, service)?;
        let view = self.pipeline_of(service).await?;
        environment(&view.pipeline, env)?;
        let deployments = self.db.history(service, env, limit).await?;
        let sights = self
            .sights(who, deployments.iter().flat_map(deployment_builds).collect())
            .await?;
        let mut out = Vec::with_capacity(deployments.len());
        for d in deployments {
            let b = match sights.full(&d.build) {
                true => self.db.build_summary(&d.build).await?,
                false => None,
            };
            out.push(sights.deployment(d, b));
        }
        Ok(out)
    }

    /// The newest sealed build of a branch or version; with `who`, the
    /// newest that caller may see (a deployer's `--branch master` passes
    /// over an embargoed build it cannot see).
    async fn newest_sealed_seen_by(
        &self,
        who: Option<&Principal>,
        service: &ServiceName,
        branch: Option<String>,
        version: Option<Version>,
    ) -> Result<Option<BuildRecord>> {
        let filter = BuildFilter {
            service: Some(service.clone()),
            branch,
            version,
            state: Some(BuildState::Sealed),
            limit: 1,
            hide_embargoed: who.is_some_and(|w| !w.reader().sees_every_embargoed_build()),
            unless_created_by_token: who.map(|w| w.token_id.clone()),
            by_version: false,
        };
        Ok(self.db.list_builds(&filter).await?.into_iter().next())
    }

    /// Approves the pending deployment of `build` into `env`. The requester
    /// never approves their own deployment; each approver decides once; the
    /// last approval needed carries the deployment out (the policies are
    /// checked again then). Of several approvals that complete a request at
    /// the same moment exactly one deploys; the others are recorded and
    /// answered with the request as deployed.
    pub async fn approve(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        build: &BuildRef,
    ) -> Result<Decision> {
        let (view, request, build) = self
            .record_decision(who, service, env, build, states::Decision::Approve)
            .await?;
        let environment = environment(&view.pipeline, env)?;
        self.carry_out_request(who, environment, build, &request.id, environment.approvals)
            .await
    }

    /// Rejects the pending deployment of `build` into `env`, which ends the
    /// request (unless a concurrent approval carried it out first).
    pub async fn reject(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        build: &BuildRef,
    ) -> Result<Decision> {
        let (view, request, _) = self
            .record_decision(who, service, env, build, states::Decision::Reject)
            .await?;
        let need = environment(&view.pipeline, env)?.approvals;
        // Whatever it came to (rejected now, or deployed by an approval
        // that got there first).
        let request = self.db.request(&request.id).await?.unwrap_or(request);
        Ok(Decision {
            request,
            need,
            deployment: None,
        })
    }

    /// Records one approver's decision on the pending request for `build`
    /// in `env` with its event, in one transaction; a rejection closes the
    /// request in the same transaction.
    async fn record_decision(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        build: &BuildRef,
        decision: states::Decision,
    ) -> Result<(PipelineView, DeploymentRequest, BuildRecord)> {
        self.require_in(who, Action::Approve, service)?;
        let view = self.pipeline_of(service).await?;
        environment(&view.pipeline, env)?;
        let build = self.resolve_visible(who, build).await?;
        let now = self.now();
        let Some(request) = self.db.pending_request(service, env, &build.id, now).await? else {
            return Err(self.nothing_waits(service, env, &build.id, now).await);
        };
        if request.requested_by == who.name.as_str() {
            return Err(Error::SelfApproval {
                token: who.name.clone(),
            });
        }
        let mut tx = self.db.begin().await?;
        tx.decide(&request.id, who.name.as_str(), decision, now).await?;
        let approval = crate::events::approval(&request, &build);
        let change = match decision {
            states::Decision::Approve => Change::ApprovalApproved(approval),
            states::Decision::Reject => {
                tx.close_request(&request.id, RequestState::Rejected).await?;
                Change::ApprovalRejected(approval)
            }
        };
        let event = self.event(Some(service), Some(crate::events::actor(who)), change);
        self.commit(tx, &[event]).await?;
        Ok((view, request, build))
    }

    /// Why no request for `build` into `env` waits for approval: it expired
    /// (say so, and expire it if no sweep has yet), or there is none.
    async fn nothing_waits(&self, service: &ServiceName, env: &EnvName, build: &BuildId, now: DateTime<Utc>) -> Error {
        let last = match self.db.last_request(service, env, build, None).await {
            Ok(last) => last,
            Err(e) => return e.into(),
        };
        match last {
            Some(r) if r.state == RequestState::Expired || (r.state == RequestState::Pending && r.is_due(now)) => {
                if let Err(e) = self.expire_due_requests().await {
                    tracing::warn!(error = %e, "cannot expire due requests");
                }
                Error::NothingToDeploy(format!(
                    "the request to deploy build {build} into {env} expired{}; ask for the deployment again",
                    r.expires_at
                        .map(|t| format!(" at {}", crate::rfc3339(t)))
                        .unwrap_or_default()
                ))
            }
            _ => Error::NothingToDeploy(format!(
                "no deployment of build {build} into {env} of {service} waits for approval"
            )),
        }
    }

    /// Carries out an approved request if it has the approvals it needs.
    /// Another deployment into the environment landing first is not the
    /// approver's problem: it is tried again. The request being closed
    /// meanwhile (deployed by a concurrent approval, rejected, expired) is
    /// answered with the request as it stands.
    async fn carry_out_request(
        &self,
        who: &Principal,
        environment: &Environment,
        build: BuildRecord,
        request_id: &str,
        need: u32,
    ) -> Result<Decision> {
        let mut attempt = 0;
        loop {
            let request = self
                .db
                .request(request_id)
                .await?
                .ok_or_else(|| Error::NothingToDeploy(format!("deployment request {request_id} is gone")))?;
            let now = self.now();
            match request.state {
                RequestState::Pending if !request.is_due(now) => {}
                RequestState::Deployed => {
                    return Ok(Decision {
                        request,
                        need,
                        deployment: None,
                    })
                }
                _ => {
                    return Err(self
                        .nothing_waits(&request.service, &environment.name, &build.id, now)
                        .await)
                }
            }
            let approvals = approvals(&request);
            if approvals < need {
                return Ok(Decision {
                    request,
                    need,
                    deployment: None,
                });
            }
            let intent = Intent {
                service: &request.service,
                environment,
                build: build.clone(),
                kind: request.kind,
                options: DeployOptions {
                    override_freeze: request.override_freeze,
                    reason: request.reason.clone(),
                },
                requested_by: Some(request.requested_by.clone()),
                // The approval that completes the request carries it out.
                actor: Some(crate::events::actor(who)),
                // The override was checked when the request was made.
                admin: request.override_freeze,
                approvals,
                request: Some(request.id.clone()),
                state: None,
            };
            match self.carry_out(intent).await {
                Ok(Outcome::Deployed { deployment, build }) => {
                    let request = DeploymentRequest {
                        state: RequestState::Deployed,
                        ..request
                    };
                    return Ok(Decision {
                        request,
                        need,
                        deployment: Some((deployment, build)),
                    });
                }
                Ok(Outcome::Pending { request, need }) => {
                    return Ok(Decision {
                        request,
                        need,
                        deployment: None,
                    })
                }
                Err(Error::RequestClosed(_)) => {}
                Err(Error::Conflict(_)) if attempt < CONFLICT_ATTEMPTS => {
                    attempt += 1;
                    crate::reconcile::jitter(attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Checks the policies, then writes the deployment or, where the
    /// environment needs approvals, a request that waits for them.
    pub(crate) async fn carry_out(&self, intent: Intent<'_>) -> Result<Outcome> {
        let Intent {
            service,
            environment,
            build,
            kind,
            options,
            requested_by,
            actor,
            admin,
            approvals,
            request,
            state,
        } = intent;
        if options.override_freeze {
            if !admin {
                return Err(Error::AdminOnly("override a freeze window"));
            }
            if options.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                return Err(Error::Invalid("an override needs a reason: pass --reason \"…\"".into()));
            }
        }
        let state = match state {
            Some(s) => s,
            None => self.db.env_state(service, &environment.name).await?,
        };
        let (passed_upstream, in_upstream_since) = match &environment.upstream {
            Some(up) => {
                let at = self.db.last_deployed_at(service, up, &build.id).await?;
                (at.is_some(), at)
            }
            None => (true, None),
        };
        // Only a promotion is held to the soak (see `evaluate`).
        let upstream_healthy_for = match (&environment.upstream, environment.soak_healthy) {
            (Some(up), Some(share)) if kind == DeployKind::Promote => {
                self.upstream_healthy_for(service, up, &build.id, share).await?
            }
            _ => None,
        };
        let oldest_compatible = self.oldest_compatible(environment).await?;
        let now = self.now();
        let proposal = Proposal {
            kind,
            environment,
            build: BuildFacts {
                branch: build.source.branch.as_deref(),
                sealed: build.state == BuildState::Sealed,
                yanked: build.yanked_at.is_some(),
                embargoed: build.embargoed,
                major: build.version.semver().major,
            },
            now,
            in_upstream_since,
            passed_upstream,
            server_rules: &self.settings.server_rules,
            override_freeze: options.override_freeze,
            approvals,
            auto_release_held: state.auto_release_held,
            upstream_healthy_for,
            oldest_compatible: oldest_compatible.as_ref(),
        };
        match evaluate(&proposal) {
            Verdict::Allowed => {}
            Verdict::Refused(violations) => return Err(Error::Policy(violations)),
            Verdict::NeedsApproval { need, .. } => {
                let request = self
                    .request_approvals(environment, &build, kind, options, requested_by, actor)
                    .await?;
                return Ok(Outcome::Pending { request, need });
            }
        }
        // A manual release or rollback into an auto-releasing environment
        // holds its auto-release until `tug policy resume`: otherwise the
        // next reconciliation would replace the build someone chose (or
        // bring back the one they rolled back from).
        let manual = matches!(kind, DeployKind::Release | DeployKind::Rollback);
        let hold = (manual && environment.auto_release.is_some()).then_some(true);
        let deployment = NewDeployment {
            id: uuid::Uuid::now_v7().to_string(),
            service: service.clone(),
            environment: environment.name.clone(),
            build: build.id.clone(),
            kind,
            requested_by,
            reason: options.reason,
            override_freeze: options.override_freeze,
            at: now,
            request,
        };
        let mut tx = self.db.begin().await?;
        let done = tx.deploy(&deployment, state.seq, hold).await?;
        let mut events = vec![self.event(
            Some(service),
            actor.clone(),
            Change::Deployment(Deployed {
                environment: done.environment.clone(),
                build: Some(crate::events::event_build(&build)),
                deployment_kind: deployment_kind(kind, actor.is_some()),
                seq: done.seq,
                replaced: done.replaced.clone(),
                replaced_embargoed: false,
                override_freeze: done.override_freeze,
                reason: done.reason.clone(),
                requested_by: done.requested_by.clone(),
                approved_by: done.approved_by.clone(),
            }),
        )];
        if hold.is_some() && !state.auto_release_held {
            events.push(self.event(
                Some(service),
                actor,
                Change::AutoReleaseHeld {
                    environment: environment.name.clone(),
                },
            ));
        }
        self.commit(tx, &events).await?;
        Ok(Outcome::Deployed {
            deployment: done,
            build: Box::new(build),
        })
    }

    /// Finds the pending request to deploy `build` into the environment (of
    /// the build's service), or makes it: never a second one, however many
    /// ask at once.
    async fn request_approvals(
        &self,
        environment: &Environment,
        build: &BuildRecord,
        kind: DeployKind,
        options: DeployOptions,
        requested_by: Option<String>,
        actor: Option<tug_api::Actor>,
    ) -> Result<DeploymentRequest> {
        let service = &build.service;
        let timeout = environment.approval_timeout.unwrap_or(self.settings.approval_timeout);
        for _ in 0..CONFLICT_ATTEMPTS {
            let now = self.now();
            if let Some(request) = self
                .db
                .pending_request(service, &environment.name, &build.id, now)
                .await?
            {
                return Ok(request);
            }
            let request = DeploymentRequest {
                id: uuid::Uuid::now_v7().to_string(),
                service: service.clone(),
                environment: environment.name.clone(),
                build: build.id.clone(),
                kind,
                state: RequestState::Pending,
                requested_by: requested_by.clone().unwrap_or_else(|| "auto-release".into()),
                requested_at: now,
                expires_at: Some(expiry(now, timeout, &environment.name)?),
                reason: options.reason.clone(),
                override_freeze: options.override_freeze,
                decisions: Vec::new(),
            };
            let supersede = kind == DeployKind::AutoRelease;
            let mut tx = self.db.begin().await?;
            match tx.create_request(&request, supersede).await? {
                CreatedRequest::Created { superseded } => {
                    let mut events = vec![self.event(
                        Some(service),
                        actor.clone(),
                        Change::ApprovalRequested(crate::events::approval(&request, build)),
                    )];
                    for old in &superseded {
                        let old_build = self.db.build_summary(&old.build).await?;
                        if let Some(b) = old_build {
                            events.push(self.event(
                                Some(service),
                                None,
                                Change::ApprovalSuperseded(crate::events::approval(old, &b)),
                            ));
                        }
                    }
                    self.commit(tx, &events).await?;
                    self.requests.notify_one();
                    return Ok(request);
                }
                // Made by someone else at the same moment (read it next
                // round), or one past its expiry that no sweep has marked
                // yet keeps the place (mark it, then make ours).
                CreatedRequest::AlreadyPending => {
                    drop(tx);
                    self.expire_due_requests().await?;
                }
            }
        }
        Err(Error::Conflict(format!(
            "could not record the request to deploy build {} into {}; try again",
            build.id, environment.name
        )))
    }
}

/// How often an approval that completes a request, or a request made while
/// others are made, tries again after losing a race it need not lose.
const CONFLICT_ATTEMPTS: u32 = 20;

/// How many expired requests `status` shows per environment.
const EXPIRED_SHOWN: u32 = 10;

/// When a request made at `now` expires: refused (rather than overflowing)
/// when the timeout reaches past what a timestamp can hold.
fn expiry(now: DateTime<Utc>, timeout: std::time::Duration, env: &EnvName) -> Result<DateTime<Utc>> {
    chrono::Duration::from_std(timeout)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the approval_timeout of {env} ({}) is too long to compute an expiry; set a shorter one",
                tug_core::format_duration(timeout)
            ))
        })
}

/// How the event log names a deployment of `kind`: a rollback nobody asked
/// for (`by_someone` false) is the automatic one of a halted rollout.
pub(crate) fn deployment_kind(kind: DeployKind, by_someone: bool) -> DeploymentKind {
    match kind {
        DeployKind::Release => DeploymentKind::Release,
        DeployKind::Promote => DeploymentKind::Promote,
        DeployKind::Rollback if by_someone => DeploymentKind::Rollback,
        DeployKind::Rollback => DeploymentKind::AutoRollback,
        DeployKind::AutoRelease => DeploymentKind::AutoRelease,
    }
}

fn already_runs(service: &ServiceName, env: &EnvName, build: &BuildId) -> Error {
    Error::NothingToDeploy(format!("{env} of {service} already runs build {build}"))
}

/// The builds a deployment names: its own and the one it replaced.
fn deployment_builds(d: &DeploymentRecord) -> impl Iterator<Item = BuildId> + '_ {
    d.replaced.iter().chain([&d.build]).cloned()
}

/// Distinct approvals of a request (each approver decides once; the
/// requester cannot).
fn approvals(request: &DeploymentRequest) -> u32 {
    request
        .decisions
        .iter()
        .filter(|(who, d)| *d == states::Decision::Approve && *who != request.requested_by)
        .count() as u32
}

impl<'a> Intent<'a> {
    fn by(
        who: &Principal,
        service: &'a ServiceName,
        environment: &'a Environment,
        build: BuildRecord,
        kind: DeployKind,
        options: DeployOptions,
    ) -> Intent<'a> {
        Intent {
            service,
            environment,
            build,
            kind,
            options,
            requested_by: Some(who.name.to_string()),
            actor: Some(crate::events::actor(who)),
            admin: who.role == Role::Admin,
            approvals: 0,
            request: None,
            state: None,
        }
    }
}

pub(crate) fn environment<'p>(pipeline: &'p Pipeline, name: &EnvName) -> Result<&'p Environment> {
    pipeline.environment(name).ok_or_else(|| Error::EnvironmentNotFound {
        service: pipeline.service.clone(),
        environment: name.clone(),
        known: pipeline
            .environments
            .iter()
            .map(|e| e.name.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_approval_timeout_past_the_end_of_time_is_refused_not_a_panic() {
        let env = EnvName::parse("production").unwrap();
        let now = Utc::now();
        let day = Duration::from_secs(86_400);
        assert_eq!(expiry(now, day, &env).unwrap(), now + chrono::Duration::days(1));
        for timeout in [day * 99_999_999, Duration::MAX, Duration::from_secs(i64::MAX as u64)] {
            let err = expiry(now, timeout, &env).unwrap_err();
            assert!(
                matches!(err, Error::Invalid(ref m) if m.contains("approval_timeout")),
                "{err}"
            );
        }
        // The latest instant still works.
        let last = DateTime::<Utc>::MAX_UTC - chrono::Duration::seconds(1);
        assert!(expiry(last, Duration::from_secs(1), &env).is_ok());
        assert!(expiry(last, Duration::from_secs(2), &env).is_err());
    }
}
