//! Writing deployments into git repositories: a commit per deployment into
//! an environment's GitOps repository, and the move of the service's
//! source-repository environment tag to the deployed build's commit.
//!
//! One durable consumer per repository address (the family [`GitWriters`],
//! consumers named `git:<address>`, created with their cursor at the log's
//! head by the pipeline revision that first names the repository). Each
//! runs beside the requests, never on their path, under its own lease, so
//! a slow or refusing repository holds back nothing but itself. It works
//! in two steps:
//!
//! 1. The deployment events of a page become rows of `gitops_deliveries`
//!    (one per deployment and target, made once: a redelivered event finds
//!    its rows), in one transaction.
//! 2. The open rows whose time has come are written on a fresh fetch of
//!    the repository: per branch, one commit each on the fetched head,
//!    pushed together in one push. A push that lost a race with another
//!    writer (not a fast-forward) is fetched and applied again; one that
//!    the repository refuses otherwise (a hook, say) is retried one
//!    delivery at a time, so only the refused ones wait, each with its own
//!    back-off. Before committing, the commits already on the branch are
//!    searched for the deployment's `Tugboat-Deployment` trailer: a
//!    delivery pushed before a crash is recognised, not written twice.
//!
//! While any delivery stays open the consumer reports the page's last
//! event as unhandled (its rows exist, so nothing is repeated), so that
//! the dispatcher offers it again after the back-off: the consumer is
//! called again when a retry is due even when no new event comes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use tokio::time::Instant;
use tug_api::{AuditRecord, Change, Deployed, Event};
use tug_core::manifest::ArtifactKind;
use tug_core::pipeline::gitops::{
    self, CommitFacts, DeliveryState, DeliveryTarget, GitOps, Image, Layout, SourceRepo, KUSTOMIZATION,
};
use tug_core::{EnvName, Pipeline, ServiceName};
use tug_db::{GitDeliveryOutcome, GitDeliveryRow, NewGitDelivery};

use crate::consumers::{Consumer, ConsumerError, ConsumerFamily};
use crate::git::{Git, GitError, GitSettings};
use crate::{Result, Tugboat};

/// The prefix of a repository consumer's name; the rest is the address.
pub const CONSUMER_PREFIX: &str = "git:";

/// The consumer that writes into the repository at `url`.
pub fn consumer_name(url: &str) -> String {
    format!("{CONSUMER_PREFIX}{url}")
}

/// Every repository a pipeline writes into: the GitOps repositories of
/// its environments and its source repository.
pub fn repositories(pipeline: &Pipeline) -> Vec<String> {
    let mut urls: Vec<String> = pipeline
        .environments
        .iter()
        .filter_map(|e| e.gitops.as_ref().map(|g| g.repo.to_string()))
        .chain(pipeline.source_repo.as_ref().map(|s| s.url.to_string()))
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

/// How many open deliveries one call writes at most.
const BATCH: u32 = 500;

/// The largest manifest written into a repository.
const MAX_MANIFEST: usize = 16 << 20;

/// How many commits back the branch is searched for a deployment's
/// trailer.
const TRAILER_DEPTH: &str = "5000";

/// How often a push that lost a race is fetched and applied again within
/// one call.
const STALE_ROUNDS: usize = 5;

/// No new commit is started with less than this left of a call's budget:
/// the time to push what is committed. What is left stays due for the next
/// call.
const PUSH_TIME: Duration = Duration::from_millis(1500);

/// The family of repository writers.
pub struct GitWriters {
    settings: Arc<GitSettings>,
    /// How long one call of a writer may take: well within a third of the
    /// consumers' lease.
    budget: Duration,
}

impl GitWriters {
    pub fn new(settings: GitSettings, lease: Duration) -> GitWriters {
        // The dispatcher hands events over with two thirds of the lease
        // ahead; half of it leaves the rest for the clocks to differ.
        let budget = (lease / 2)
            .saturating_sub(Duration::from_millis(500))
            .max(Duration::from_secs(1));
        GitWriters {
            settings: Arc::new(settings),
            budget,
        }
    }
}

#[async_trait::async_trait]
impl ConsumerFamily for GitWriters {
    fn family(&self) -> &str {
        "git"
    }

    /// The repositories' writers are the owned consumers a pipeline's
    /// revision created (see `apply_pipeline`): one indexed read, not a
    /// parse of every pipeline at each rescan.
    async fn names(&self, tugboat: &Tugboat) -> Result<Vec<String>> {
        Ok(tugboat.db.consumer_names(CONSUMER_PREFIX).await?)
    }

    fn make(&self, tugboat: &Tugboat, name: &str) -> Box<dyn Consumer> {
        Box::new(RepoWriter {
            name: name.to_string(),
            url: name.strip_prefix(CONSUMER_PREFIX).unwrap_or(name).to_string(),
            tugboat: tugboat.clone(),
            settings: self.settings.clone(),
            budget: self.budget,
        })
    }
}

/// The writer of one repository.
struct RepoWriter {
    name: String,
    url: String,
    tugboat: Tugboat,
    settings: Arc<GitSettings>,
    budget: Duration,
}

#[async_trait::async_trait]
impl Consumer for RepoWriter {
    fn name(&self) -> &str {
        &self.name
    }

    fn owned(&self) -> bool {
        true
    }

    async fn handle(&mut self, records: &[AuditRecord]) -> Result<(), ConsumerError> {
        let deadline = Instant::now() + self.budget;
        let new = self
            .deliveries(records)
            .await
            .map_err(|e| ConsumerError::new(e.to_string()))?;
        let now = self.tugboat.now();
        self.tugboat
            .db
            .add_deliveries(&new, now)
            .await
            .map_err(|e| ConsumerError::new(e.to_string()))?;
        let next = self
            .deliver(deadline)
            .await
            .map_err(|e| ConsumerError::new(e.to_string()))?;
        let Some(next) = next else {
            return Ok(());
        };
        // Deliveries wait: the last event is left unhandled so that it is
        // offered again when the first of them is due (or at the latest in
        // a second, for new events of other environments).
        let wait = (next - self.tugboat.now()).to_std().unwrap_or_default();
        let mut e = ConsumerError::new(format!("deliveries into {} wait for a retry", self.url))
            .retry_after(wait.min(Duration::from_secs(1)));
        if let Some(before) = records.len().checked_sub(2).and_then(|i| records.get(i)) {
            e = e.handled_through(before.event.id);
        }
        Err(e)
    }
}

/// One delivery ready to write: its row, the deployment and what it
/// needs.
struct Planned {
    row: GitDeliveryRow,
    event: Event,
    deployed: Deployed,
    what: What,
}

enum What {
    Commit { gitops: GitOps, files: Files },
    Tag { tag: String, commit: String },
}

/// What a GitOps commit writes.
enum Files {
    /// The `manifests` layout: file name under the path → content.
    Manifests(Vec<(String, Vec<u8>)>),
    /// The `kustomize` layout: the images to pin.
    Images(Vec<Image>),
}

/// Why a delivery cannot be written now: for good (skipped) or for now
/// (failed, tried again).
enum Problem {
    Skip(String),
    Fail(String),
}

impl From<crate::Error> for Problem {
    fn from(e: crate::Error) -> Problem {
        Problem::Fail(e.to_string())
    }
}

impl From<tug_db::Error> for Problem {
    fn from(e: tug_db::Error) -> Problem {
        Problem::Fail(crate::Error::from(e).to_string())
    }
}

impl RepoWriter {
    /// The deliveries into this repository that the deployment events
    /// among `records` ask for, by the services' current pipelines.
    async fn deliveries(&self, records: &[AuditRecord]) -> Result<Vec<NewGitDelivery>> {
        let mut pipelines: HashMap<ServiceName, Option<Pipeline>> = HashMap::new();
        let mut out = Vec::new();
        for r in records {
            let (Some(service), Change::Deployment(d)) = (&r.event.service, &r.event.change) else {
                continue;
            };
            let Some(build) = &d.build else { continue };
            if !pipelines.contains_key(service) {
                let p = self.tugboat.db.pipeline(service).await?;
                pipelines.insert(service.clone(), p.and_then(|row| Pipeline::parse(&row.spec).ok()));
            }
            let Some(pipeline) = pipelines.get(service).and_then(Option::as_ref) else {
                continue;
            };
            let new = |target| NewGitDelivery {
                target,
                service: service.clone(),
                environment: d.environment.clone(),
                seq: d.seq,
                repo: self.url.clone(),
                build: build.id.clone(),
                event_id: r.event.id,
            };
            let env = pipeline.environment(&d.environment);
            if env
                .and_then(|e| e.gitops.as_ref())
                .is_some_and(|g| g.repo.as_str() == self.url)
            {
                out.push(new(DeliveryTarget::Gitops));
            }
            if pipeline
                .source_repo
                .as_ref()
                .is_some_and(|s| s.url.as_str() == self.url)
            {
                out.push(new(DeliveryTarget::SourceTag));
            }
        }
        Ok(out)
    }

    /// Writes the open deliveries that are due; returns when the first of
    /// those still open is due next.
    async fn deliver(&self, deadline: Instant) -> Result<Option<DateTime<Utc>>> {
        let db = &self.tugboat.db;
        let now = self.tugboat.now();
        let due: Vec<GitDeliveryRow> = db
            .open_deliveries(&self.url, BATCH)
            .await?
            .into_iter()
            .filter(|r| r.next_attempt <= now)
            .collect();
        if !due.is_empty() {
            let mut branches: Vec<(String, Vec<Planned>)> = Vec::new();
            let mut tags = Vec::new();
            for row in due {
                match self.plan(&row).await {
                    Ok(p) => match &p.what {
                        What::Commit { gitops, .. } => {
                            let branch = gitops.branch.clone();
                            match branches.iter_mut().find(|(b, _)| *b == branch) {
                                Some((_, list)) => list.push(p),
                                None => branches.push((branch, vec![p])),
                            }
                        }
                        What::Tag { .. } => tags.push(p),
                    },
                    Err(problem) => self.finish(&row, Err(problem)).await?,
                }
            }
            match Git::open(&self.settings, &self.url, deadline).await {
                Err(e) => {
                    for p in branches.iter().flat_map(|(_, l)| l).chain(&tags) {
                        self.finish(&p.row, Err(Problem::Fail(e.to_string()))).await?;
                    }
                }
                Ok(git) => {
                    for (branch, batch) in &branches {
                        self.write_branch(&git, branch, batch, deadline).await?;
                    }
                    for p in &tags {
                        let done = self.move_tag(&git, p, deadline).await;
                        self.finish(&p.row, done).await?;
                    }
                }
            }
        }
        let open = db.open_deliveries(&self.url, BATCH).await?;
        Ok(open.iter().map(|r| r.next_attempt).min())
    }

    /// Records the outcome of one delivery.
    async fn finish(&self, row: &GitDeliveryRow, done: Result<String, Problem>) -> Result<()> {
        self.finish_all(vec![(row, done)]).await
    }

    /// Records the outcomes of deliveries in one transaction (a push's
    /// worth costs one commit of the database, not one per delivery).
    async fn finish_all(&self, done: Vec<(&GitDeliveryRow, Result<String, Problem>)>) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let now = self.tugboat.now();
        let outcomes: Vec<(&GitDeliveryRow, GitDeliveryOutcome)> = done
            .into_iter()
            .map(|(row, done)| (row, self.outcome(row, done, now)))
            .collect();
        Ok(self.tugboat.db.finish_deliveries(&outcomes, now).await?)
    }

    fn outcome(&self, row: &GitDeliveryRow, done: Result<String, Problem>, now: DateTime<Utc>) -> GitDeliveryOutcome {
        match done {
            Ok(sha) => GitDeliveryOutcome {
                state: DeliveryState::Pushed,
                commit_sha: Some(sha),
                error: None,
                next_attempt: now,
                tried: true,
            },
            Err(Problem::Skip(why)) => GitDeliveryOutcome {
                state: DeliveryState::Skipped,
                commit_sha: None,
                error: Some(why),
                next_attempt: now,
                tried: false,
            },
            Err(Problem::Fail(why)) => {
                self.tugboat.count_delivery_failure(row.target.as_str());
                let after = backoff(row.attempts);
                tracing::warn!(
                    repo = %self.url, service = %row.service, environment = %row.environment,
                    seq = row.seq, target = row.target.as_str(), error = %why,
                    retry_in_ms = after.as_millis() as u64, "git delivery failed"
                );
                GitDeliveryOutcome {
                    state: DeliveryState::Failed,
                    commit_sha: None,
                    error: Some(why),
                    next_attempt: now + chrono::Duration::from_std(after).unwrap_or_else(|_| chrono::Duration::zero()),
                    tried: true,
                }
            }
        }
    }

    /// Reads what a delivery needs: its event, the environment's current
    /// configuration, and the build's artifacts.
    async fn plan(&self, row: &GitDeliveryRow) -> Result<Planned, Problem> {
        let db = &self.tugboat.db;
        let rows = db.events_after(row.event_id - 1, None, 1).await?;
        let Some(event_row) = rows.first().filter(|e| e.id == row.event_id) else {
            return Err(Problem::Skip(format!("event {} is not in the log", row.event_id)));
        };
        let event = crate::audit::audit_record(event_row)?.event;
        let Change::Deployment(deployed) = event.change.clone() else {
            return Err(Problem::Skip(format!("event {} is not a deployment", row.event_id)));
        };
        let Some(build) = &deployed.build else {
            return Err(Problem::Skip("the deployment names no build".into()));
        };
        let pipeline = db
            .pipeline(&row.service)
            .await?
            .and_then(|p| Pipeline::parse(&p.spec).ok())
            .ok_or_else(|| Problem::Skip(format!("{} has no pipeline any more", row.service)))?;
        let what = match row.target {
            DeliveryTarget::SourceTag => {
                let Some(SourceRepo { url, tag }) = pipeline.source_repo.as_ref() else {
                    return Err(Problem::Skip("the pipeline names no source repository any more".into()));
                };
                if url.as_str() != self.url {
                    return Err(Problem::Skip(format!("the source repository is now {url}")));
                }
                if build.embargoed {
                    return Err(Problem::Skip(
                        "the build is embargoed: its commit is not tagged while the embargo lasts".into(),
                    ));
                }
                let Some(commit) = build.source.commit.clone() else {
                    return Err(Problem::Skip("the build has no source commit".into()));
                };
                What::Tag {
                    tag: tag.render(row.service.as_str(), row.environment.as_str()),
                    commit,
                }
            }
            DeliveryTarget::Gitops => {
                let gitops = pipeline
                    .environment(&row.environment)
                    .and_then(|e| e.gitops.clone())
                    .filter(|g| g.repo.as_str() == self.url)
                    .ok_or_else(|| {
                        Problem::Skip(format!(
                            "environment {} no longer writes into {}",
                            row.environment, self.url
                        ))
                    })?;
                let files = self.files(&gitops, &row.build).await?;
                What::Commit { gitops, files }
            }
        };
        Ok(Planned {
            row: row.clone(),
            event,
            deployed,
            what,
        })
    }

    /// What a build puts into a GitOps repository in `gitops`'s layout.
    async fn files(&self, gitops: &GitOps, build: &tug_core::BuildId) -> Result<Files, Problem> {
        let artifacts = self.tugboat.db.artifacts(build).await?;
        match gitops.layout {
            Layout::Manifests => {
                let mut files = Vec::new();
                for a in artifacts.iter().filter(|a| a.kind == ArtifactKind::Manifest) {
                    let name = gitops::manifest_file(a.name.as_str()).ok_or_else(|| {
                        Problem::Skip(format!("manifest {} cannot be written under the path", a.name))
                    })?;
                    if a.size > MAX_MANIFEST as u64 {
                        return Err(Problem::Skip(format!(
                            "manifest {} is {} bytes: at most {MAX_MANIFEST} are written",
                            a.name, a.size
                        )));
                    }
                    let blob = self
                        .tugboat
                        .store
                        .get(&a.digest, 0, None)
                        .await
                        .map_err(|e| Problem::Fail(e.to_string()))?
                        .ok_or_else(|| Problem::Fail(format!("the blob of manifest {} is missing", a.name)))?;
                    let mut body = blob.body;
                    let mut bytes = Vec::new();
                    while let Some(chunk) = body
                        .try_next()
                        .await
                        .map_err(|e| Problem::Fail(format!("cannot read manifest {}: {e}", a.name)))?
                    {
                        bytes.extend_from_slice(&chunk);
                    }
                    files.push((name, bytes));
                }
                if files.is_empty() {
                    return Err(Problem::Skip("the build has no artifact of kind manifest".into()));
                }
                Ok(Files::Manifests(files))
            }
            Layout::Kustomize => {
                let images: Vec<Image> = artifacts
                    .iter()
                    .filter(|a| a.kind == ArtifactKind::Oci)
                    .map(|a| Image {
                        name: a.name.to_string(),
                        digest: a.digest.to_string(),
                    })
                    .collect();
                if images.is_empty() {
                    return Err(Problem::Skip("the build has no artifact of kind oci".into()));
                }
                Ok(Files::Images(images))
            }
        }
    }

    /// Writes `batch` (deliveries of one branch, in order) on a fresh fetch
    /// and pushes it; a refused push is retried one delivery at a time.
    async fn write_branch(&self, git: &Git, branch: &str, batch: &[Planned], deadline: Instant) -> Result<()> {
        match self.commit_and_push(git, branch, batch, deadline).await? {
            Pushed::All | Pushed::Later => Ok(()),
            Pushed::Refused(error) if batch.len() == 1 => self.finish(&batch[0].row, Err(Problem::Fail(error.0))).await,
            Pushed::Refused(_) => {
                for one in batch {
                    match self
                        .commit_and_push(git, branch, std::slice::from_ref(one), deadline)
                        .await?
                    {
                        Pushed::Refused(error) => self.finish(&one.row, Err(Problem::Fail(error.0))).await?,
                        Pushed::All => {}
                        Pushed::Later => break,
                    }
                }
                Ok(())
            }
        }
    }

    /// One try of a batch: fetch, skip what the branch has already, one
    /// commit per delivery, one push; a push that lost a race is tried
    /// again on the new head.
    async fn commit_and_push(&self, git: &Git, branch: &str, batch: &[Planned], deadline: Instant) -> Result<Pushed> {
        let mut last = GitError("not tried".into());
        for _ in 0..STALE_ROUNDS {
            if Instant::now() + PUSH_TIME >= deadline {
                return Ok(Pushed::Later);
            }
            let base = match fetch(git, branch, deadline).await {
                Ok(base) => base,
                Err(e) => return Ok(Pushed::Refused(e)),
            };
            let mut known = match &base {
                Some(_) => match pushed_deployments(git, branch, deadline).await {
                    Ok(k) => k,
                    Err(e) => return Ok(Pushed::Refused(e)),
                },
                None => HashMap::new(),
            };
            if let Err(e) = checkout(git, branch, base.is_some(), deadline).await {
                return Ok(Pushed::Refused(e));
            }
            let mut made: Vec<&Planned> = Vec::new();
            let mut found = Vec::new();
            for p in batch {
                if Instant::now() + PUSH_TIME >= deadline {
                    // The rest stays due for the next call.
                    break;
                }
                if let Some(sha) = known.remove(&deployment_key(&p.row)) {
                    // Pushed before a crash (or by another server that lost
                    // its lease): recognised by its trailer.
                    found.push((&p.row, Ok(sha)));
                    continue;
                }
                match self.commit(git, p, deadline).await {
                    Ok(()) => made.push(p),
                    Err(problem) => {
                        let _ = git.run(&["reset", "-q", "--hard"], deadline).await;
                        let _ = git.run(&["clean", "-q", "-fdx"], deadline).await;
                        found.push((&p.row, Err(problem)));
                    }
                }
            }
            self.finish_all(found).await?;
            if made.is_empty() {
                return Ok(Pushed::All);
            }
            // The commits just made, oldest first: one per delivery of
            // `made`, in its order.
            let count = made.len().to_string();
            let shas = match git.run(&["rev-list", "--max-count", &count, "HEAD"], deadline).await {
                Ok(out) => out.lines().rev().map(str::to_string).collect::<Vec<_>>(),
                Err(e) => return Ok(Pushed::Refused(e)),
            };
            let refspec = format!("HEAD:refs/heads/{branch}");
            match git
                .run(&["push", "-q", "--porcelain", "origin", &refspec], deadline)
                .await
            {
                Ok(_) => {
                    let done = made.iter().zip(shas).map(|(p, sha)| (&p.row, Ok(sha))).collect();
                    self.finish_all(done).await?;
                    return Ok(Pushed::All);
                }
                Err(e) if e.is_stale() => last = e,
                Err(e) => return Ok(Pushed::Refused(e)),
            }
        }
        Ok(Pushed::Refused(last))
    }

    /// Writes one delivery into the checked-out branch and commits it.
    async fn commit(&self, git: &Git, p: &Planned, deadline: Instant) -> Result<(), Problem> {
        let What::Commit { gitops, files } = &p.what else {
            return Err(Problem::Skip("not a commit".into()));
        };
        let path = gitops.path.render(p.row.service.as_str(), p.row.environment.as_str());
        let dir = git.dir().join(&path);
        let io = |e: std::io::Error| Problem::Fail(format!("cannot write {path}: {e}"));
        match files {
            Files::Manifests(files) => {
                // The path is the build's: what the new build lacks goes.
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(io)?;
                }
                let build = p.row.build.to_string();
                for (name, bytes) in files {
                    let file = dir.join(name);
                    if let Some(parent) = file.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    std::fs::write(&file, bytes).map_err(io)?;
                }
                let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
                std::fs::write(dir.join(KUSTOMIZATION), gitops::manifests_kustomization(&build, &names)).map_err(io)?;
            }
            Files::Images(images) => {
                let file = dir.join(KUSTOMIZATION);
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    Problem::Fail(format!(
                        "cannot read {path}/{KUSTOMIZATION} on branch {}: {e}",
                        gitops.branch
                    ))
                })?;
                let edited = gitops::set_images(&text, images).map_err(|e| Problem::Fail(format!("{path}: {e}")))?;
                std::fs::write(&file, edited).map_err(io)?;
            }
        }
        let fail = |e: GitError| Problem::Fail(e.0);
        git.run(&["add", "-A", "--", &path], deadline).await.map_err(fail)?;
        let message = self.message(p);
        git.run(
            &["commit", "-q", "--allow-empty", "--no-verify", "-m", &message],
            deadline,
        )
        .await
        .map_err(fail)?;
        Ok(())
    }

    fn message(&self, p: &Planned) -> String {
        let build = p.deployed.build.as_ref();
        let version = build.map(|b| b.version.to_string()).unwrap_or_default();
        let digest = build.and_then(|b| b.manifest_digest.as_ref()).map(|d| d.to_string());
        let actor = p.event.actor.as_ref().map(|a| a.name.to_string());
        gitops::commit_message(&CommitFacts {
            service: p.row.service.as_str(),
            env: p.row.environment.as_str(),
            version: &version,
            build: p.row.build.as_ref(),
            manifest_digest: digest.as_deref(),
            kind: p.deployed.deployment_kind.as_str(),
            actor: actor.as_deref(),
            reason: p.deployed.reason.as_deref(),
            deployment: &deployment_key(&p.row),
        })
    }

    /// Moves the environment tag to the build's commit and pushes it.
    async fn move_tag(&self, git: &Git, p: &Planned, deadline: Instant) -> Result<String, Problem> {
        let What::Tag { tag, commit } = &p.what else {
            return Err(Problem::Skip("not a tag".into()));
        };
        let fail = |e: GitError| Problem::Fail(e.0);
        let spec = format!("{commit}^{{commit}}");
        let full = match git.run(&["rev-parse", "-q", "--verify", &spec], deadline).await {
            Ok(sha) => sha,
            Err(_) => {
                git.run(
                    &[
                        "fetch",
                        "-q",
                        "--no-tags",
                        "origin",
                        "+refs/heads/*:refs/remotes/origin/*",
                    ],
                    deadline,
                )
                .await
                .map_err(fail)?;
                git.run(&["rev-parse", "-q", "--verify", &spec], deadline)
                    .await
                    .map_err(|_| Problem::Fail(format!("commit {commit} is on no branch of {}", self.url)))?
            }
        };
        let full = full.trim().to_string();
        let refspec = format!("{full}:refs/tags/{tag}");
        git.run(&["push", "-q", "--force", "origin", &refspec], deadline)
            .await
            .map_err(fail)?;
        Ok(full)
    }
}

/// How a batch's push ended.
enum Pushed {
    /// Every delivery is in the branch.
    All,
    /// The repository refused (or could not be reached).
    Refused(GitError),
    /// Not tried: the call's time is up; the deliveries stay due.
    Later,
}

fn deployment_key(row: &GitDeliveryRow) -> String {
    gitops::deployment_key(row.service.as_str(), row.environment.as_str(), row.seq)
}

/// Fetches `branch`; its head, or `None` when the repository does not
/// have it yet (an empty repository).
async fn fetch(git: &Git, branch: &str, deadline: Instant) -> Result<Option<String>, GitError> {
    let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
    match git
        .run(&["fetch", "-q", "--no-tags", "origin", &refspec], deadline)
        .await
    {
        Ok(_) => {}
        Err(e) if e.0.contains("couldn't find remote ref") => {
            let _ = git
                .run(
                    &["update-ref", "-d", &format!("refs/remotes/origin/{branch}")],
                    deadline,
                )
                .await;
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    let head = git
        .run(&["rev-parse", &format!("refs/remotes/origin/{branch}")], deadline)
        .await?;
    Ok(Some(head.trim().to_string()))
}

/// The deployments the branch's recent commits carried out, by their
/// trailer: deployment key → commit.
async fn pushed_deployments(git: &Git, branch: &str, deadline: Instant) -> Result<HashMap<String, String>, GitError> {
    let format = format!(
        "--format=%H%x09%(trailers:key={},valueonly,separator=%x09)",
        gitops::DEPLOYMENT_TRAILER
    );
    let log = git
        .run(
            &[
                "log",
                "-n",
                TRAILER_DEPTH,
                &format,
                &format!("refs/remotes/origin/{branch}"),
            ],
            deadline,
        )
        .await?;
    let mut known = HashMap::new();
    for line in log.lines() {
        let mut parts = line.split('\t');
        let Some(sha) = parts.next() else { continue };
        for key in parts.filter(|k| !k.is_empty()) {
            known.entry(key.trim().to_string()).or_insert_with(|| sha.to_string());
        }
    }
    Ok(known)
}

/// Checks the fetched branch out clean (an empty tree when the repository
/// has no such branch yet).
async fn checkout(git: &Git, branch: &str, exists: bool, deadline: Instant) -> Result<(), GitError> {
    if exists {
        git.run(
            &[
                "checkout",
                "-q",
                "-f",
                "-B",
                "tugboat-work",
                &format!("refs/remotes/origin/{branch}"),
            ],
            deadline,
        )
        .await?;
    } else {
        // An unborn branch with an empty index: the next commit is the
        // repository's first.
        git.run(&["symbolic-ref", "HEAD", "refs/heads/tugboat-work"], deadline)
            .await?;
        git.run(&["update-ref", "-d", "refs/heads/tugboat-work"], deadline)
            .await?;
        git.run(&["rm", "-rfq", "--cached", "--ignore-unmatch", "."], deadline)
            .await?;
    }
    git.run(&["clean", "-q", "-fdx"], deadline).await?;
    Ok(())
}

/// How long a failed delivery waits before its next try: doubling from a
/// second up to five minutes, with a quarter of jitter either way so that
/// deliveries refused together are not retried in lockstep.
fn backoff(attempts: i64) -> Duration {
    let base = Duration::from_secs(1u64 << attempts.clamp(0, 9).unsigned_abs()).min(Duration::from_secs(300));
    let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0.75..1.25);
    base.mul_f64(jitter)
}

/// One write of a deployment into a git repository, as status and
/// history show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub target: DeliveryTarget,
    pub repo: String,
    pub state: DeliveryState,
    pub commit: Option<String>,
    pub attempts: i64,
    pub error: Option<String>,
    /// When a failed delivery is tried again.
    pub next_attempt: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl Tugboat {
    /// Those of `urls` that no current pipeline of another service than
    /// `service` names: repositories the applying service was the last to
    /// write into.
    pub(crate) async fn repositories_named_by_none_but(
        &self,
        service: &ServiceName,
        urls: &[String],
    ) -> Result<Vec<String>> {
        if urls.is_empty() {
            return Ok(Vec::new());
        }
        let mut named = std::collections::HashSet::new();
        for row in self.db.current_pipelines().await? {
            if &row.service == service {
                continue;
            }
            if let Ok(p) = Pipeline::parse(&row.spec) {
                named.extend(repositories(&p));
            }
        }
        Ok(urls.iter().filter(|u| !named.contains(*u)).cloned().collect())
    }

    /// Adds to `views` (deployments of one environment) their deliveries,
    /// for those whose build the caller sees.
    pub(crate) async fn with_deliveries(
        &self,
        service: &ServiceName,
        env: &EnvName,
        views: &mut [crate::DeploymentView],
    ) -> Result<()> {
        let seqs: Vec<i64> = views.iter().filter(|v| v.summary.is_some()).map(|v| v.seq).collect();
        if seqs.is_empty() {
            return Ok(());
        }
        for row in self.db.deliveries_of(service, env, &seqs).await? {
            if let Some(v) = views.iter_mut().find(|v| v.seq == row.seq && v.summary.is_some()) {
                v.deliveries.push(Delivery {
                    target: row.target,
                    repo: row.repo,
                    state: row.state,
                    commit: row.commit_sha,
                    attempts: row.attempts,
                    error: row.last_error,
                    next_attempt: (row.state == DeliveryState::Failed).then_some(row.next_attempt),
                    updated_at: row.updated_at,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_five_minutes_with_jitter() {
        for (attempts, secs) in [
            (0, 1.0),
            (1, 2.0),
            (3, 8.0),
            (8, 256.0),
            (9, 300.0),
            (40, 300.0),
            (-1, 1.0),
        ] {
            let d = backoff(attempts).as_secs_f64();
            assert!(d >= secs * 0.75 && d <= secs * 1.25, "{attempts}: {d}");
        }
    }
}
