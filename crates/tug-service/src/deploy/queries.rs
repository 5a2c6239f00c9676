//! Read-only questions about deployments: the status of every environment, an
//! environment's history, the diff between two builds or environments, the
//! next version.

use super::*;

impl Tugboat {
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
    pub(crate) async fn diff_side(
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
            self.environment_of(service, &env).await?;
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
    pub(crate) async fn names_environment(&self, service: &ServiceName, name: &str) -> bool {
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
            let gate = self
                .gate_view(service, environment, state.current.as_ref().map(|d| d.seq))
                .await?;
            let mut current: Vec<DeploymentView> =
                state.current.map(|d| sights.deployment(d, build)).into_iter().collect();
            self.with_deliveries(service, &environment.name, &mut current).await?;
            out.push(EnvStatus {
                gate,
                environment: environment.clone(),
                auto_release_held: state.auto_release_held,
                rollout: crate::rollouts::shown(rollout, &sights),
                current: current.pop(),
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
        self.environment_of(service, env).await?;
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
        self.with_deliveries(service, env, &mut out).await?;
        Ok(out)
    }

    /// The newest sealed build of a branch or version; with `who`, the
    /// newest that caller may see (a deployer's `--branch master` passes
    /// over an embargoed build it cannot see).
    pub(crate) async fn newest_sealed_seen_by(
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
}
