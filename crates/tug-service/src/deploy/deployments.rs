//! Deployments: release, promote and rollback, the policy check and
//! compare-and-set that carry one out, and the auto-release hold.

use super::*;

impl Tugboat {
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
        let environment = &self.environment_of(service, env).await?;
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
    pub(crate) async fn refuse_if_running(&self, service: &ServiceName, env: &EnvName, build: &BuildId) -> Result<()> {
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
        let environment = &self.environment_of(service, to).await?;
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
        let environment = &self.environment_of(service, env).await?;
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
    pub(crate) async fn require_seen(
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
    pub(crate) async fn deploy_as(
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
    pub(crate) async fn answer_as(&self, who: &Principal, outcome: Outcome) -> Result<Option<Answer>> {
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
        let environment = &self.environment_of(service, env).await?;
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
        let upstream_gate = match &environment.upstream {
            Some(up) if kind == DeployKind::Promote => self.upstream_gate(service, up, &build.id).await?,
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
            upstream_gate: upstream_gate
                .as_ref()
                .and_then(|(up, since, why)| crate::verify::gate_fact(up, *since, why.as_deref())),
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
        let actor_name = actor.as_ref().map(|a| a.name.to_string());
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
        self.deployed(
            &done,
            &build,
            deployment_kind(kind, actor_name.is_some()),
            actor_name.as_deref(),
        );
        Ok(Outcome::Deployed {
            deployment: done,
            build: Box::new(build),
        })
    }

    /// What every deployment does once committed: the release line in the
    /// server's log and the deployment metrics. The line names the build
    /// even under embargo: the server's log is its operator's, like the
    /// audit export; the metrics never name it.
    fn deployed(&self, done: &DeploymentRecord, build: &BuildRecord, kind: DeploymentKind, actor: Option<&str>) {
        let actor = actor.or(done.requested_by.as_deref()).unwrap_or("tugboat");
        tracing::info!(
            target: "tug::release",
            service = %done.service,
            env = %done.environment,
            version = %build.version,
            build = %build.id,
            kind = %kind,
            actor = %actor,
            seq = done.seq,
            "deployed"
        );
        let lead_time = build
            .sealed_at
            .and_then(|sealed| (done.deployed_at - sealed).to_std().ok());
        self.metrics.deployed(
            done.service.as_str(),
            done.environment.as_str(),
            kind.as_str(),
            lead_time,
        );
    }
}
