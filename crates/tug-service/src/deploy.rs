//! Pipelines and deployments: apply a pipeline, release a build into an
//! environment, promote what runs upstream, roll back, show status and
//! history, auto-release newly sealed builds. Every deployment is checked
//! against the environment's policies (`tug_core::policy`) and written with
//! the environment's compare-and-set, so concurrent deployments never both
//! win. A promotion is a metadata write: no byte of the build moves.

use tug_core::{
    bump, evaluate, next_cloud_version, Action, BuildFacts, BuildId, BuildState, DeployKind, EnvName, Environment,
    Part, Pipeline, Proposal, Role, ServiceName, Verdict, Version,
};
use tug_db::{BuildFilter, BuildRow, DeploymentRow, NewDeployment, PipelineRow, RequestRow};

use crate::access::facts_of;
use crate::{AgentCounts, DeploymentView, Error, Principal, Result, Shown, Tugboat};

/// Which build a release names.
#[derive(Debug, Clone)]
pub enum BuildSelector {
    /// A build id or manifest digest.
    Reference(String),
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
        deployment: DeploymentRow,
        build: Box<BuildRow>,
    },
    /// The environment needs approvals; the request waits for them.
    Pending { request: RequestRow, need: u32 },
}

/// What a release, promotion or rollback came to, as its caller may see
/// it (the build it replaced may be embargoed from a deployer).
#[derive(Debug, Clone)]
pub enum Answer {
    Deployed(Box<DeploymentView>),
    Pending { request: Box<RequestRow>, need: u32 },
}

/// What an approval or rejection came to.
#[derive(Debug, Clone)]
pub struct Decision {
    pub request: RequestRow,
    pub need: u32,
    /// Set, with the deployed build, when this approval was the last one
    /// needed.
    pub deployment: Option<(DeploymentRow, Box<BuildRow>)>,
}

/// Who asks for a deployment and how it is checked.
pub(crate) struct Intent<'a> {
    pub(crate) service: &'a ServiceName,
    pub(crate) environment: &'a Environment,
    pub(crate) build: BuildRow,
    pub(crate) kind: DeployKind,
    pub(crate) options: DeployOptions,
    pub(crate) requested_by: Option<String>,
    pub(crate) admin: bool,
    /// Approvals from distinct approvers other than the requester.
    pub(crate) approvals: u32,
}

/// What changed between two builds. When either side is embargoed from
/// the caller, nothing is compared: the changes are empty and the source
/// range names the visible side only.
#[derive(Debug, Clone)]
pub struct Diff {
    pub old: Shown<BuildRow>,
    pub new: Shown<BuildRow>,
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
    pub pending: Vec<RequestRow>,
    /// The rollout of the current build to the environment's agents.
    pub rollout: crate::RolloutStatus,
    /// The agents following it.
    pub agents: AgentCounts,
}

/// A pipeline as stored, parsed.
#[derive(Debug, Clone)]
pub struct PipelineView {
    pub row: PipelineRow,
    pub pipeline: Pipeline,
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
        let pipeline = Pipeline::parse(text).map_err(Error::Pipeline)?;
        if &pipeline.service != service {
            return Err(Error::Invalid(format!(
                "the pipeline is for service {}, not {service}; fix `service` in the file",
                pipeline.service
            )));
        }
        pipeline
            .check_server_rules(&self.settings.server_rules)
            .map_err(Error::Pipeline)?;
        if !self.db.service_exists(service).await? {
            return Err(Error::ServiceNotFound(service.clone()));
        }
        if let Some(base) = base_revision {
            let current = self.db.pipeline(service).await?.map_or(0, |p| p.revision);
            if current != base {
                return Err(Error::Conflict(format!(
                    "the pipeline of {service} is at revision {current}, not {base}: it changed meanwhile; read it again and reapply"
                )));
            }
        }
        let row = self
            .db
            .save_pipeline(service, &pipeline.to_toml(), self.now(), Some(who.name.to_string()))
            .await?;
        self.emit(
            "pipeline.applied",
            Some(service),
            Some(who.name.as_str()),
            serde_json::json!({"revision": row.revision}),
        )
        .await;
        Ok(PipelineView { row, pipeline })
    }

    /// The current pipeline of a service.
    pub async fn show_pipeline(&self, who: &Principal, service: &ServiceName) -> Result<PipelineView> {
        self.require_in(who, Action::Read, service)?;
        self.pipeline_of(service).await
    }

    /// Every revision of a service's pipeline, newest first, with who
    /// applied it and when.
    pub async fn pipeline_history(&self, who: &Principal, service: &ServiceName) -> Result<Vec<PipelineRow>> {
        self.require_in(who, Action::Read, service)?;
        self.pipeline_of(service).await?;
        Ok(self.db.pipeline_history(service).await?)
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
        let pipeline = Pipeline::parse(&row.spec).map_err(|e| Error::Db(tug_db::Error::Corrupt(e.to_string())))?;
        Ok(PipelineView { row, pipeline })
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
        self.deploy_as(who, service, environment, build, DeployKind::Release, options)
            .await
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
                self.newest_sealed_seen_by(Some(who), service, Some(branch.clone()), None)
                    .await?
                    .ok_or_else(|| {
                        Error::NothingToDeploy(format!("service {service} has no sealed build of branch {branch}"))
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
        let current = self.db.env_state(service, to).await?.current;
        if current.as_ref().is_some_and(|c| c.build == build_id) {
            return Err(Error::NothingToDeploy(format!(
                "{to} of {service} already runs build {build_id}"
            )));
        }
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
        to: Option<String>,
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
            return Err(Error::NothingToDeploy(format!(
                "{env} of {service} already runs build {}",
                target.id
            )));
        }
        self.deploy_as(who, service, environment, target, DeployKind::Rollback, options)
            .await
    }

    /// `build` if the caller may see it; otherwise refused as a build that
    /// does not exist, with `why` saying where it is.
    async fn require_seen(&self, who: &Principal, build: BuildRow, why: impl FnOnce() -> String) -> Result<BuildRow> {
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
        build: BuildRow,
        kind: DeployKind,
        options: DeployOptions,
    ) -> Result<Answer> {
        let outcome = self
            .carry_out(Intent::by(who, service, environment, build, kind, options))
            .await?;
        Ok(match outcome {
            Outcome::Deployed { deployment, build } => {
                let sights = self.sights(who, deployment_builds(&deployment).collect()).await?;
                Answer::Deployed(Box::new(sights.deployment(deployment, Some(*build))))
            }
            Outcome::Pending { request, need } => Answer::Pending {
                request: Box::new(request),
                need,
            },
        })
    }

    /// Releases a newly sealed build into every environment that
    /// auto-releases its branch. Refusals are logged, not returned: the
    /// seal itself succeeded.
    pub(crate) async fn auto_release(&self, build: &BuildRow) -> Vec<Outcome> {
        let Some(branch) = build.source.branch.clone() else {
            return Vec::new();
        };
        let view = match self.pipeline_of(&build.service).await {
            Ok(v) => v,
            Err(_) => return Vec::new(),
        };
        let mut done = Vec::new();
        for environment in view
            .pipeline
            .environments
            .iter()
            .filter(|e| e.auto_release.as_deref() == Some(branch.as_str()))
        {
            let intent = Intent {
                service: &build.service,
                environment,
                build: build.clone(),
                kind: DeployKind::AutoRelease,
                options: DeployOptions::default(),
                requested_by: None,
                admin: false,
                approvals: 0,
            };
            match self.carry_out(intent).await {
                Ok(d) => done.push(d),
                Err(e) => {
                    tracing::info!(build = %build.id, env = %environment.name, error = %e, "no auto-release")
                }
            }
        }
        done
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
    ) -> Result<(Shown<BuildRow>, Vec<tug_core::ArtifactSpec>)> {
        let is_build = side.starts_with(tug_core::digest::PREFIX) || BuildId::parse(side).is_ok();
        let build = if is_build {
            self.resolve_visible(who, side).await?
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

    /// Clears an environment's auto-release hold.
    pub async fn resume_auto_release(&self, who: &Principal, service: &ServiceName, env: &EnvName) -> Result<()> {
        self.require_in(who, Action::Deploy, service)?;
        let view = self.pipeline_of(service).await?;
        environment(&view.pipeline, env)?;
        self.db.set_auto_release_hold(service, env, false).await?;
        self.emit(
            "auto_release.resumed",
            Some(service),
            Some(who.name.as_str()),
            serde_json::json!({"environment": env}),
        )
        .await;
        Ok(())
    }

    /// Every environment of the service in pipeline order with what it
    /// runs, as the caller may see it.
    pub async fn status(&self, who: &Principal, service: &ServiceName) -> Result<(PipelineView, Vec<EnvStatus>)> {
        self.require_in(who, Action::Read, service)?;
        let view = self.pipeline_of(service).await?;
        let mut states = Vec::with_capacity(view.pipeline.environments.len());
        for environment in &view.pipeline.environments {
            let state = self.db.env_state(service, &environment.name).await?;
            let build = match &state.current {
                Some(d) => self.db.build_summary(&d.build).await?,
                None => None,
            };
            states.push((environment, state, build));
        }
        let pending = self.db.pending_requests(service).await?;
        let sights = self
            .sights(
                who,
                states
                    .iter()
                    .flat_map(|(_, s, _)| s.current.iter().flat_map(deployment_builds))
                    .chain(pending.iter().map(|r| r.build.clone()))
                    .collect(),
            )
            .await?;
        let current: Vec<(EnvName, Option<BuildId>)> = states
            .iter()
            .map(|(e, s, _)| (e.name.clone(), s.current.as_ref().map(|d| d.build.clone())))
            .collect();
        let mut counts = self.agent_counts(who, service, &current).await?.into_iter();
        let mut out = Vec::with_capacity(states.len());
        for (environment, state, build) in states {
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
    ) -> Result<Option<BuildRow>> {
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

    /// Approves or rejects the pending deployment of `build` into `env`.
    /// The requester never approves their own deployment; each approver
    /// decides once; the last approval needed carries the deployment out
    /// (the policies are checked again then).
    pub async fn decide(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        build: &str,
        approve: bool,
    ) -> Result<Decision> {
        self.require_in(who, Action::Approve, service)?;
        let view = self.pipeline_of(service).await?;
        let environment = environment(&view.pipeline, env)?;
        let build = self.resolve_visible(who, build).await?;
        let request = self.db.pending_request(service, env, &build.id).await?.ok_or_else(|| {
            Error::NothingToDeploy(format!(
                "no deployment of build {} into {env} of {service} waits for approval",
                build.id
            ))
        })?;
        if request.requested_by == who.name.as_str() {
            return Err(Error::SelfApproval {
                token: who.name.clone(),
            });
        }
        let now = self.now();
        if request.expires_at.is_some_and(|t| t <= now) {
            self.db.close_request(&request.id, "expired").await?;
            return Err(Error::NothingToDeploy(format!(
                "the request to deploy build {} into {env} expired; ask for the deployment again",
                build.id
            )));
        }
        let decision = if approve { "approve" } else { "reject" };
        self.db.decide(&request.id, who.name.as_str(), decision, now).await?;
        let kind = if approve {
            "approval.approved"
        } else {
            "approval.rejected"
        };
        self.emit_request(kind, Some(who.name.as_str()), &request).await;
        let need = environment.approvals;
        if !approve {
            self.db.close_request(&request.id, "rejected").await?;
            let request = RequestRow {
                state: "rejected".into(),
                ..request
            };
            return Ok(Decision {
                request,
                need,
                deployment: None,
            });
        }
        let request = self
            .db
            .pending_request(service, env, &build.id)
            .await?
            .unwrap_or(request);
        let approvals = approvals(&request);
        if approvals < need {
            return Ok(Decision {
                request,
                need,
                deployment: None,
            });
        }
        let intent = Intent {
            service,
            environment,
            build,
            kind: request.kind,
            options: DeployOptions {
                override_freeze: request.override_freeze,
                reason: request.reason.clone(),
            },
            requested_by: Some(request.requested_by.clone()),
            // The override was checked when the request was made.
            admin: request.override_freeze,
            approvals,
        };
        match self.carry_out(intent).await? {
            Outcome::Deployed { deployment, build } => {
                self.db.close_request(&request.id, "deployed").await?;
                let request = RequestRow {
                    state: "deployed".into(),
                    ..request
                };
                Ok(Decision {
                    request,
                    need,
                    deployment: Some((deployment, build)),
                })
            }
            Outcome::Pending { request, need } => Ok(Decision {
                request,
                need,
                deployment: None,
            }),
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
            admin,
            approvals,
        } = intent;
        if options.override_freeze {
            if !admin {
                return Err(Error::Invalid(
                    "only an admin token may override a freeze window".into(),
                ));
            }
            if options.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                return Err(Error::Invalid("an override needs a reason: pass --reason \"…\"".into()));
            }
        }
        let state = self.db.env_state(service, &environment.name).await?;
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
                if let Some(request) = self.db.pending_request(service, &environment.name, &build.id).await? {
                    return Ok(Outcome::Pending { request, need });
                }
                let timeout = environment.approval_timeout.unwrap_or(self.settings.approval_timeout);
                let request = RequestRow {
                    id: uuid::Uuid::now_v7().to_string(),
                    service: service.clone(),
                    environment: environment.name.clone(),
                    build: build.id.clone(),
                    kind,
                    state: "pending".into(),
                    requested_by: requested_by.unwrap_or_else(|| "auto-release".into()),
                    requested_at: now,
                    expires_at: chrono::Duration::from_std(timeout).ok().map(|d| now + d),
                    reason: options.reason,
                    override_freeze: options.override_freeze,
                    decisions: Vec::new(),
                };
                self.db.create_request(&request).await?;
                self.emit_request("approval.requested", Some(request.requested_by.as_str()), &request)
                    .await;
                return Ok(Outcome::Pending { request, need });
            }
        }
        // A manual release into an auto-releasing environment holds its
        // auto-release until `tug policy resume`.
        let hold = (kind == DeployKind::Release && environment.auto_release.is_some()).then_some(true);
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
        };
        let done = self.db.deploy(&deployment, state.seq, hold).await?;
        self.emit_deployment(&done).await;
        Ok(Outcome::Deployed {
            deployment: done,
            build: Box::new(build),
        })
    }
}

/// The builds a deployment names: its own and the one it replaced.
fn deployment_builds(d: &DeploymentRow) -> impl Iterator<Item = BuildId> + '_ {
    d.replaced.iter().chain([&d.build]).cloned()
}

/// Distinct approvals of a request (each approver decides once; the
/// requester cannot).
fn approvals(request: &RequestRow) -> u32 {
    request
        .decisions
        .iter()
        .filter(|(who, d)| d == "approve" && *who != request.requested_by)
        .count() as u32
}

impl<'a> Intent<'a> {
    fn by(
        who: &Principal,
        service: &'a ServiceName,
        environment: &'a Environment,
        build: BuildRow,
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
            admin: who.role == Role::Admin,
            approvals: 0,
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
