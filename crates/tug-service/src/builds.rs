//! Builds: drafts, artifacts, sealing, yanking, embargo and critical marks,
//! showing and listing, and the build references they are named by.

use super::*;

impl Tugboat {
    pub async fn create_build(&self, who: &Principal, draft: BuildDraft) -> Result<BuildRecord> {
        let BuildDraft {
            service,
            version,
            source,
            ci,
            expected,
            embargoed,
        } = draft;
        self.require_in(who, Action::WriteBuilds, &service)?;
        if let Some(commit) = &source.commit {
            tug_core::CommitId::parse(commit).map_err(|e| Error::Invalid(format!("source.{e}")))?;
        }
        check_text("source.branch", source.branch.as_deref(), 255)?;
        check_text("source.tag", source.tag.as_deref(), 255)?;
        check_text("source.repo", source.repo.as_deref(), 2048)?;
        check_text("source.author", source.author.as_deref(), 512)?;
        check_text("ci.url", ci.url.as_deref(), 2048)?;
        if source.message.as_ref().is_some_and(|m| m.len() > 64 * 1024) {
            return Err(Error::Invalid(
                "source.message is longer than 64 KiB; shorten it".into(),
            ));
        }
        let mut unique = HashSet::new();
        if let Some(dup) = expected.iter().find(|e| !unique.insert(*e)) {
            return Err(Error::Invalid(format!(
                "expected artifact {dup} is listed twice; list each name once"
            )));
        }
        let id = BuildId::parse(&uuid::Uuid::now_v7().to_string()).map_err(|e| Error::Invalid(e.to_string()))?;
        let now = self.now();
        let build = NewBuild {
            id: id.clone(),
            service,
            version,
            source,
            ci,
            expected,
            created_at: now,
            created_by: Some(who.name.to_string()),
            created_by_token: Some(who.token_id.clone()),
            embargoed,
        };
        let event = self.event(
            Some(&build.service),
            Some(events::actor(who)),
            Change::BuildCreated {
                build: tug_api::EventBuild {
                    id: build.id.clone(),
                    version: build.version.clone(),
                    manifest_digest: None,
                    source: tug_api::EventSource::from(&build.source),
                    embargoed: build.embargoed,
                },
            },
        );
        let mut tx = self.db.begin().await?;
        tx.insert_build(&build).await?;
        self.commit(tx, &[event]).await?;
        self.db.build(&id).await?.ok_or(Error::BuildNotFound(id.to_string()))
    }

    /// What a build reference names (its id, a prefix of its id, or its
    /// manifest digest), before anyone's sight is applied. Every place that
    /// reads a build reference comes through here by
    /// [`Tugboat::resolve_visible`], so a short id works wherever an id
    /// does.
    pub(crate) async fn named(&self, reference: &BuildRef) -> Result<Named> {
        Ok(match reference.target() {
            BuildTarget::Id(id) => Named::One(self.db.build(id).await?.map(Box::new)),
            BuildTarget::Manifest(d) => Named::One(self.db.build_by_manifest(d).await?.map(Box::new)),
            BuildTarget::Prefix(prefix) => {
                let prefix = prefix.clone();
                let mut matches = self.db.builds_by_id_prefix(&prefix, PREFIX_MATCHES + 1).await?;
                let more = matches.len() > PREFIX_MATCHES as usize;
                matches.truncate(PREFIX_MATCHES as usize);
                Named::Prefix { prefix, matches, more }
            }
        })
    }

    /// The short id of each of `ids` (unique among every build now).
    pub async fn short_build_ids(&self, who: &Principal, ids: &[BuildId]) -> Result<HashMap<BuildId, String>> {
        self.require(who, Action::Read)?;
        Ok(self.db.short_build_ids(ids).await?)
    }

    /// Yanks a sealed build: it never deploys again.
    pub async fn yank_build(&self, who: &Principal, reference: &BuildRef, reason: Option<&str>) -> Result<BuildRecord> {
        self.require(who, Action::Deploy)?;
        let build = self.resolve_visible(who, reference).await?;
        if build.state != BuildState::Sealed {
            return Err(Error::Invalid(format!(
                "build {} is {}; only sealed builds can be yanked",
                build.id, build.state
            )));
        }
        let mut tx = self.db.begin().await?;
        if tx.yank_build(&build.id, self.now(), who.name.as_str(), reason).await? {
            let reason = reason.map(str::to_string);
            let event = self.build_event(who, &build, |build| Change::BuildYanked { build, reason });
            self.commit(tx, &[event]).await?;
        }
        self.build_again(&build.id).await
    }

    /// Marks a sealed build critical: agents install it at once, and
    /// Teleport's updaters hear `critical: yes`.
    pub async fn mark_critical(&self, who: &Principal, reference: &BuildRef) -> Result<BuildRecord> {
        self.require(who, Action::Deploy)?;
        let build = self.resolve_visible(who, reference).await?;
        let mut tx = self.db.begin().await?;
        if !tx.mark_critical(&build.id).await? {
            return Err(Error::Invalid(format!(
                "build {} is {}; only sealed builds can be marked critical",
                build.id, build.state
            )));
        }
        let event = self.build_event(who, &build, |build| Change::BuildCritical { build });
        self.commit(tx, &[event]).await?;
        self.build_again(&build.id).await
    }

    /// Lifts a build's embargo (admin only): it becomes visible to everyone
    /// and may go to any environment, and so do its deployments and events.
    pub async fn unembargo_build(&self, who: &Principal, reference: &BuildRef) -> Result<BuildRecord> {
        self.require(who, Action::ManagePipelines)?;
        let build = self.resolve_visible(who, reference).await?;
        let mut tx = self.db.begin().await?;
        if tx.unembargo_build(&build.id).await? {
            let lifted = BuildRecord {
                embargoed: false,
                ..build.clone()
            };
            let event = self.build_event(who, &lifted, |build| Change::BuildUnembargoed { build });
            self.commit(tx, &[event]).await?;
        }
        self.build_again(&build.id).await
    }

    /// A build read again after a change to it.
    pub(crate) async fn build_again(&self, id: &BuildId) -> Result<BuildRecord> {
        self.db.build(id).await?.ok_or(Error::BuildNotFound(id.to_string()))
    }

    /// A build by id or manifest digest, with its artifacts.
    pub async fn show_build(&self, who: &Principal, reference: &BuildRef) -> Result<BuildView> {
        self.require(who, Action::Read)?;
        let build = self.resolve_visible(who, reference).await?;
        let artifacts = self.db.artifacts(&build.id).await?;
        Ok(BuildView {
            build,
            artifacts: Some(artifacts),
        })
    }

    /// The canonical manifest bytes of a sealed build.
    pub async fn manifest(&self, who: &Principal, reference: &BuildRef) -> Result<(Digest, String)> {
        self.require(who, Action::Read)?;
        let build = self.resolve_visible(who, reference).await?;
        match (build.manifest_digest, build.manifest) {
            (Some(d), Some(m)) => Ok((d, m)),
            _ => Err(Error::NotSealed(build.id)),
        }
    }

    /// Builds matching `filter` that the caller may see: of its service
    /// when scoped, and no embargoed build but its own unless it sees them
    /// all.
    pub async fn list_builds(&self, who: &Principal, mut filter: BuildFilter) -> Result<Vec<BuildRecord>> {
        filter.service = self.listing_scope(who, Action::Read, filter.service.as_ref())?;
        filter.hide_embargoed = !who.reader().sees_every_embargoed_build();
        filter.unless_created_by_token = Some(who.token_id.clone());
        if let Some(s) = &filter.service {
            if !self.db.service_exists(s).await? {
                return Err(Error::ServiceNotFound(s.clone()));
            }
        }
        let builds = self.db.list_builds(&filter).await?;
        // The query left out what the rule hides; the rule has the last word.
        let sights = self.sights(who, builds.iter().map(|b| b.id.clone()).collect()).await?;
        Ok(builds.into_iter().filter(|b| sights.full(&b.id)).collect())
    }

    /// Registers artifacts whose blobs are already stored. All or nothing.
    pub async fn register_artifacts(
        &self,
        who: &Principal,
        reference: &BuildRef,
        specs: Vec<ArtifactSpec>,
    ) -> Result<u64> {
        self.require(who, Action::WriteBuilds)?;
        let build = self.resolve_visible(who, reference).await?;
        if specs.is_empty() {
            return Err(Error::Invalid("no artifacts given; send at least one".into()));
        }
        let mut names = HashSet::new();
        if let Some(dup) = specs.iter().find(|s| !names.insert(&s.name)) {
            return Err(Error::Invalid(format!(
                "artifact name {} appears twice in this request; each name may appear once per build",
                dup.name
            )));
        }
        // A reference carries its address and no file; a file carries no
        // address.
        for spec in &specs {
            spec.check_reference().map_err(Error::Invalid)?;
        }
        // Every blob must be stored, with the size the artifact claims.
        let files: Vec<&ArtifactSpec> = specs.iter().filter(|s| s.has_blob()).collect();
        let stats = self.stat_all(files.iter().map(|s| s.digest).collect()).await;
        for (spec, (_, stat)) in files.into_iter().zip(stats) {
            match stat? {
                None => {
                    return Err(Error::BlobMissing {
                        name: spec.name.clone(),
                        digest: spec.digest,
                    })
                }
                Some(size) if size != spec.size => {
                    return Err(Error::SizeMismatch {
                        name: spec.name.clone(),
                        claimed: spec.size,
                        stored: size,
                    })
                }
                Some(_) => {}
            }
        }
        // Packages are read (and refused when they are not packages) before
        // the artifacts are added, so the indexes never lack a package.
        self.read_debs(&specs).await?;
        Ok(self.db.add_artifacts(&build.id, &specs, self.now()).await?)
    }

    /// Seals a draft: checks the expected artifacts and derivations, stores
    /// the canonical manifest. Sealing a sealed build returns it unchanged.
    /// Either way, the environments that auto-release the build's branch
    /// are reconciled before the answer (so sealing again repairs a release
    /// a crash lost right after the seal).
    pub async fn seal_build(&self, who: &Principal, reference: &BuildRef) -> Result<BuildRecord> {
        self.require(who, Action::WriteBuilds)?;
        let build = self.resolve_visible(who, reference).await?;
        let mut tx = self.db.begin().await?;
        let sealed = tx
            .seal_build(&build.id, self.now(), |b, artifacts| {
                BuildManifest::seal(Draft {
                    id: &b.id,
                    service: &b.service,
                    version: &b.version,
                    source: &b.source,
                    ci: &b.ci,
                    created_at: &rfc3339(b.created_at),
                    expected: &b.expected,
                    artifacts,
                })
            })
            .await;
        match sealed {
            Ok(Ok(row)) => {
                let event = self.build_event(who, &row, |build| Change::BuildSealed { build });
                self.commit(tx, &[event]).await?;
                let row = self.build_again(&row.id).await?;
                self.reconcile_after_seal(&row).await;
                Ok(row)
            }
            Ok(Err(e)) => Err(Error::Seal(e)),
            Err(tug_db::Error::NotDraft {
                state: BuildState::Sealed,
                ..
            }) => {
                // Nothing changed: the transaction (and SQLite's write lock)
                // ends before the reconciliation writes.
                drop(tx);
                let row = self.build_again(&build.id).await?;
                self.reconcile_after_seal(&row).await;
                Ok(row)
            }
            Err(e) => Err(e.into()),
        }
    }
}
