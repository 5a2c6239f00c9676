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
use tug_db::{BuildFilter, BuildRow, DeploymentRow, EnvState, NewDeployment, PipelineRow, RequestRow};

use crate::{Error, Principal, Result, Tugboat};

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

/// What changed between two builds.
#[derive(Debug, Clone)]
pub struct Diff {
    pub old: BuildRow,
    pub new: BuildRow,
    pub changes: Vec<tug_core::diff::ArtifactChange>,
    pub unchanged: u64,
    pub source: tug_core::diff::SourceRange,
}

/// One environment in `status`.
#[derive(Debug, Clone)]
pub struct EnvStatus {
    pub environment: Environment,
    pub state: EnvState,
    pub build: Option<BuildRow>,
    /// Deployments into this environment waiting for approvals.
    pub pending: Vec<RequestRow>,
    /// The rollout of the current build to the environment's agents.
    pub rollout: crate::RolloutStatus,
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
        self.require(who, Action::Read)?;
        self.pipeline_of(service).await
    }

    /// Every revision of a service's pipeline, newest first, with who
    /// applied it and when.
    pub async fn pipeline_history(&self, who: &Principal, service: &ServiceName) -> Result<Vec<PipelineRow>> {
        self.require(who, Action::Read)?;
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
    ) -> Result<Outcome> {
        self.require(who, Action::Deploy)?;
        let view = self.pipeline_of(service).await?;
        let environment = environment(&view.pipeline, env)?;
        let build = match selector {
            BuildSelector::Reference(r) => self.resolve(&r).await?,
            BuildSelector::Branch(b) => self
                .newest_sealed(service, Some(b.clone()), None)
                .await?
                .ok_or_else(|| {
                    Error::NothingToDeploy(format!("service {service} has no sealed build of branch {b}"))
                })?,
            BuildSelector::Version(v) => {
                self.newest_sealed(service, None, Some(v.clone()))
                    .await?
                    .ok_or_else(|| {
                        Error::NothingToDeploy(format!("service {service} has no sealed build with version {v}"))
                    })?
            }
        };
        if &build.service != service {
            return Err(Error::Invalid(format!(
                "build {} belongs to service {}, not {service}",
                build.id, build.service
            )));
        }
        self.carry_out(Intent::by(
            who,
            service,
            environment,
            build,
            DeployKind::Release,
            options,
        ))
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
    ) -> Result<Outcome> {
        self.require(who, Action::Deploy)?;
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
                self.newest_sealed(service, Some(branch.clone()), None)
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
        let current = self.db.env_state(service, to).await?.current;
        if current.as_ref().is_some_and(|c| c.build == build_id) {
            return Err(Error::NothingToDeploy(format!(
                "{to} of {service} already runs build {build_id}"
            )));
        }
        let build = self
            .db
            .build(&build_id)
            .await?
            .ok_or_else(|| Error::BuildNotFound(build_id.to_string()))?;
        self.carry_out(Intent::by(
            who,
            service,
            environment,
            build,
            DeployKind::Promote,
            options,
        ))
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
    ) -> Result<Outcome> {
        self.require(who, Action::Deploy)?;
        let view = self.pipeline_of(service).await?;
        let environment = environment(&view.pipeline, env)?;
        let current = self.db.env_state(service, env).await?.current.ok_or_else(|| {
            Error::NothingToDeploy(format!("{env} of {service} runs nothing yet; nothing to roll back"))
        })?;
        let target = match to {
            Some(r) => {
                let b = self.resolve(&r).await?;
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
                self.db
                    .build(&previous)
                    .await?
                    .ok_or_else(|| Error::BuildNotFound(previous.to_string()))?
            }
        };
        if target.id == current.build {
            return Err(Error::NothingToDeploy(format!(
                "{env} of {service} already runs build {}",
                target.id
            )));
        }
        self.carry_out(Intent::by(
            who,
            service,
            environment,
            target,
            DeployKind::Rollback,
            options,
        ))
        .await
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
        self.require(who, Action::Read)?;
        if !self.db.service_exists(service).await? {
            return Err(Error::ServiceNotFound(service.clone()));
        }
        let stable: Vec<Version> = self
            .db
            .versions(service)
            .await?
            .into_iter()
            .filter(|v| v.semver().pre.is_empty())
            .collect();
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
    ) -> Result<(BuildRow, Vec<tug_core::ArtifactSpec>)> {
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
        let artifacts = self.db.artifacts(&build.id).await?;
        Ok((build, artifacts))
    }

    /// What changed from one environment or build to another.
    pub async fn diff(&self, who: &Principal, service: &ServiceName, from: &str, to: &str) -> Result<Diff> {
        self.require(who, Action::Read)?;
        let (old, old_artifacts) = self.diff_side(who, service, from).await?;
        let (new, new_artifacts) = self.diff_side(who, service, to).await?;
        let (changes, unchanged) = tug_core::diff::artifacts(&old_artifacts, &new_artifacts);
        let source = tug_core::diff::source_range(&old.source, &new.source);
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
        self.require(who, Action::Deploy)?;
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

    /// Every environment of the service in pipeline order with what it runs.
    pub async fn status(&self, who: &Principal, service: &ServiceName) -> Result<(PipelineView, Vec<EnvStatus>)> {
        self.require(who, Action::Read)?;
        let view = self.pipeline_of(service).await?;
        let mut out = Vec::with_capacity(view.pipeline.environments.len());
        for environment in &view.pipeline.environments {
            let state = self.db.env_state(service, &environment.name).await?;
            let build = match &state.current {
                Some(d) => self.db.build_summary(&d.build).await?,
                None => None,
            };
            let pacing = crate::Pacing::of(service, environment, &state, build.as_ref().is_some_and(|b| b.critical));
            let rollout = self.status_of(&pacing).await?;
            out.push(EnvStatus {
                environment: environment.clone(),
                state,
                build,
                pending: Vec::new(),
                rollout,
            });
        }
        for request in self.db.pending_requests(service).await? {
            if let Some(s) = out.iter_mut().find(|s| s.environment.name == request.environment) {
                s.pending.push(request);
            }
        }
        Ok((view, out))
    }

    /// An environment's deployments, newest first, with their builds.
    pub async fn history(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        limit: u32,
    ) -> Result<Vec<(DeploymentRow, Option<BuildRow>)>> {
        self.require(who, Action::Read)?;
        let view = self.pipeline_of(service).await?;
        environment(&view.pipeline, env)?;
        let mut out = Vec::new();
        for d in self.db.history(service, env, limit).await? {
            let b = self.db.build_summary(&d.build).await?;
            out.push((d, b));
        }
        Ok(out)
    }

    async fn newest_sealed(
        &self,
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
            hide_embargoed: false,
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
        self.require(who, Action::Approve)?;
        let view = self.pipeline_of(service).await?;
        let environment = environment(&view.pipeline, env)?;
        let build = self.resolve(build).await?;
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
                return Err(Error::AdminOnly("override a freeze window"));
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
                    expires_at: chrono::Duration::from_std(timeout)
                        .ok()
                        .and_then(|d| now.checked_add_signed(d)),
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
