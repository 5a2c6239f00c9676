//! Pipelines: applying one (a new revision with its event), showing it and
//! its history, and the lookup every deployment starts with.

use super::*;

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
        // A repository the pipeline writes into gets its writer, fed from
        // this revision on (never the deployments before it); one that no
        // pipeline names any more loses it, so a writer runs exactly while
        // some pipeline names its repository, and a repository named again
        // later starts at that revision.
        let repositories = crate::gitops::repositories(&pipeline);
        let before = current
            .as_ref()
            .and_then(|r| Pipeline::parse(&r.spec).ok())
            .map(|p| crate::gitops::repositories(&p))
            .unwrap_or_default();
        let dropped: Vec<String> = before.into_iter().filter(|u| !repositories.contains(u)).collect();
        let unnamed = self.repositories_named_by_none_but(service, &dropped).await?;
        for url in &unnamed {
            tx.delete_consumer(&crate::gitops::consumer_name(url)).await?;
        }
        for url in &repositories {
            tx.create_consumer(&crate::gitops::consumer_name(url)).await?;
        }
        let event = self.event(
            Some(service),
            Some(crate::events::actor(who)),
            Change::PipelineApplied { revision },
        );
        self.commit(tx, &[event]).await?;
        if !repositories.is_empty() || !unnamed.is_empty() {
            self.consumers_changed();
        }
        // An environment may have just gained its auto-release.
        self.reconcile_service(service).await;
        Ok(self.view(row, pipeline, true))
    }

    pub(crate) fn view(&self, row: PipelineRecord, pipeline: Pipeline, changed: bool) -> PipelineView {
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

    /// The environment `env` of `service`'s pipeline, looked up the one way
    /// every use case does: first the pipeline (a service that does not
    /// exist, or has none, says so), then the environment in it.
    pub(crate) async fn environment_of(&self, service: &ServiceName, env: &EnvName) -> Result<Environment> {
        let view = self.pipeline_of(service).await?;
        Ok(environment(&view.pipeline, env)?.clone())
    }

    pub(crate) async fn pipeline_of(&self, service: &ServiceName) -> Result<PipelineView> {
        let Some(row) = self.db.pipeline(service).await? else {
            if !self.db.service_exists(service).await? {
                return Err(Error::ServiceNotFound(service.clone()));
            }
            return Err(Error::NoPipeline(service.clone()));
        };
        let pipeline = Pipeline::parse(&row.spec).map_err(|e| Error::corrupt(e.to_string()))?;
        Ok(self.view(row, pipeline, false))
    }
}
