//! Where every use case asks what its caller may see or act on. The rule
//! itself is `tug_core::access` (pure); this module gathers the facts it
//! needs (a build's service, embargo and creating token; for an agent token
//! scoped to an environment, whether the build was deployed there and the
//! environment is private) and shapes answers by it:
//!
//! - a service outside the caller's scope is refused with 403
//!   `out_of_scope` before anything is looked up, so the refusal says
//!   nothing about what exists there;
//! - a build named by id or digest that the caller may not see (embargoed,
//!   or of another service) does not exist for it: 404, and so does a blob
//!   that only such builds refer to;
//! - views of an environment (status, history, diff, channel, rollout,
//!   agents, deployment events) say it runs "an embargoed build" and carry
//!   no id, version, source, digest or reason of it ([`Shown::Embargoed`]);
//! - views of the build itself (its events, requests to deploy it) are
//!   left out.
//!
//! It does not authenticate (see [`Tugboat::authenticate`]) and holds no
//! state: every answer is decided at the moment it is asked.

use std::collections::HashMap;

use tug_core::access::{BuildAccess, Reader, Sight};
use tug_core::records::{AgentRecord, BuildRecord, DeploymentRecord};
use tug_core::{Action, BuildId, BuildRef, DeployKind, EnvName, ServiceName};
use tug_db::BuildAccessRow;

use crate::{Error, Principal, Result, Tugboat};

impl Principal {
    /// The caller as the access rule sees it.
    pub fn reader(&self) -> Reader<'_> {
        Reader {
            token_id: &self.token_id,
            role: self.role,
            service: self.service.as_ref(),
            environment: self.environment.as_ref(),
        }
    }

    /// The scope, as messages name it: `api` or `api/sec`.
    fn scope_text(&self) -> String {
        match (&self.service, &self.environment) {
            (Some(s), Some(e)) => format!("{s}/{e}"),
            (Some(s), None) => s.to_string(),
            (None, _) => "every service".into(),
        }
    }
}

/// What the caller may know of one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown<T> {
    Visible(T),
    /// Only that it is an embargoed build.
    Embargoed,
}

impl<T> Shown<T> {
    pub fn visible(&self) -> Option<&T> {
        match self {
            Shown::Visible(v) => Some(v),
            Shown::Embargoed => None,
        }
    }

    pub fn is_embargoed(&self) -> bool {
        matches!(self, Shown::Embargoed)
    }

    fn of(value: T, sight: Sight) -> Shown<T> {
        if sight.is_full() {
            Shown::Visible(value)
        } else {
            Shown::Embargoed
        }
    }
}

/// A deployment as one caller may see it. When its build is embargoed
/// from the caller, so are the build's summary and the deployment's reason
/// (a security release's reason names the vulnerability); likewise when
/// the build it replaced is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentView {
    pub id: String,
    pub service: ServiceName,
    pub environment: EnvName,
    pub seq: i64,
    pub kind: DeployKind,
    pub build: Shown<BuildId>,
    /// The build's version and source, when known and visible.
    pub summary: Option<BuildRecord>,
    pub requested_by: Option<String>,
    pub deployed_at: chrono::DateTime<chrono::Utc>,
    pub replaced: Option<Shown<BuildId>>,
    pub reason: Option<String>,
    pub override_freeze: bool,
    /// Who approved the request it carried out (left out with the build).
    pub approved_by: Vec<String>,
    /// Its writes into git repositories (left out with the build).
    pub deliveries: Vec<crate::gitops::Delivery>,
}

impl DeploymentView {
    /// The deployment as a caller who sees every build of its service sees
    /// it (the approvers and admins who decide on a request).
    pub fn whole(d: DeploymentRecord, summary: Option<BuildRecord>) -> DeploymentView {
        DeploymentView::shaped(d, summary, Sight::Full, Sight::Full)
    }

    fn shaped(d: DeploymentRecord, summary: Option<BuildRecord>, build: Sight, replaced: Sight) -> DeploymentView {
        let secret = !(build.is_full() && replaced.is_full());
        DeploymentView {
            id: d.id,
            service: d.service,
            environment: d.environment,
            seq: d.seq,
            kind: d.kind,
            summary: summary.filter(|_| build.is_full()),
            build: Shown::of(d.build, build),
            requested_by: d.requested_by,
            deployed_at: d.deployed_at,
            replaced: d.replaced.map(|r| Shown::of(r, replaced)),
            reason: d.reason.filter(|_| !secret),
            override_freeze: d.override_freeze,
            approved_by: if build.is_full() { d.approved_by } else { Vec::new() },
            deliveries: Vec::new(),
        }
    }
}

/// An agent as one caller may see it: the builds it runs or gave up on,
/// and its error text (which may name them), are left out when either is
/// embargoed from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    pub agent: AgentRecord,
    pub embargoed: bool,
}

/// What a service published in its public environments, already cut to
/// what a caller without a token may see (see
/// [`Tugboat::published_publicly`]).
pub(crate) struct Published {
    /// In pipeline order.
    pub(crate) environments: Vec<tug_core::Environment>,
    /// (build, environment) pairs of publicly visible builds.
    pub(crate) rows: Vec<tug_db::PublishedRow>,
    /// The publicly visible build each environment runs now.
    pub(crate) current: HashMap<EnvName, BuildId>,
}

/// The sight of each build one answer names, gathered in one query.
pub(crate) struct Sights(pub(crate) HashMap<BuildId, Sight>);

impl Sights {
    /// The sight of `id`; a build that does not exist is shown as little
    /// as an embargoed one.
    pub(crate) fn of(&self, id: &BuildId) -> Sight {
        self.0.get(id).copied().unwrap_or(Sight::Embargoed)
    }

    pub(crate) fn full(&self, id: &BuildId) -> bool {
        self.of(id).is_full()
    }

    pub(crate) fn deployment(&self, d: DeploymentRecord, summary: Option<BuildRecord>) -> DeploymentView {
        let build = self.of(&d.build);
        let replaced = d.replaced.as_ref().map_or(Sight::Full, |r| self.of(r));
        DeploymentView::shaped(d, summary, build, replaced)
    }

    pub(crate) fn agent(&self, mut a: AgentRecord) -> AgentView {
        let embargoed = agent_builds(&a).any(|b| !self.full(b));
        if embargoed {
            a.build = None;
            a.failed_build = None;
            a.error = None;
            // How its process last exited names a build and quotes its
            // output.
            a.exit = None;
        }
        AgentView { agent: a, embargoed }
    }
}

/// Every build an agent's row names: the one it runs, the one it gave up
/// on, and the one whose process it last saw exit.
pub(crate) fn agent_builds(a: &AgentRecord) -> impl Iterator<Item = &BuildId> {
    a.build
        .iter()
        .chain(&a.failed_build)
        .chain(a.exit.as_ref().and_then(|e| e.build.as_ref()))
}

/// The access facts of a build row.
pub(crate) fn facts_of(b: &BuildRecord) -> BuildAccessRow {
    BuildAccessRow {
        id: b.id.clone(),
        service: b.service.clone(),
        embargoed: b.embargoed,
        created_by_token: b.created_by_token.clone(),
    }
}

impl Tugboat {
    /// The one rule for callers without a token (the release catalog,
    /// stable download links, anonymous registry and APT pulls): only an
    /// environment marked `public = true` exists for them. Any other
    /// environment, an unknown one, and a service without a pipeline are
    /// all "not found", worded alike, so an anonymous caller learns
    /// nothing of what is not published. Which builds of a public
    /// environment it may see is [`Tugboat::publicly_visible`].
    pub async fn public_environment(&self, service: &ServiceName, env: &EnvName) -> Result<tug_core::Environment> {
        let not_found = || Error::EnvironmentNotFound {
            service: service.clone(),
            environment: env.clone(),
            known: "the public ones".into(),
        };
        match self.environment_of(service, env).await {
            Ok(environment) if environment.public => Ok(environment),
            Ok(_) | Err(Error::EnvironmentNotFound { .. } | Error::ServiceNotFound(_) | Error::NoPipeline(_)) => {
                Err(not_found())
            }
            Err(e) => Err(e),
        }
    }

    /// The public environments of `service` (none when it has no
    /// pipeline), in pipeline order.
    pub async fn public_environments(&self, service: &ServiceName) -> Result<Vec<tug_core::Environment>> {
        match self.pipeline_of(service).await {
            Ok(view) => Ok(view
                .pipeline
                .environments
                .iter()
                .filter(|e| e.public)
                .cloned()
                .collect()),
            Err(Error::ServiceNotFound(_) | Error::NoPipeline(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Whether a caller without a token may see `build` at all: never an
    /// embargoed one, even in a public environment.
    pub fn publicly_visible(build: &BuildRecord) -> bool {
        Self::publicly_visible_facts(&facts_of(build))
    }

    /// [`Tugboat::publicly_visible`] from the access facts of a build.
    pub(crate) fn publicly_visible_facts(facts: &BuildAccessRow) -> bool {
        tug_core::access::public_sight(&BuildAccess {
            service: &facts.service,
            embargoed: facts.embargoed,
            created_by_token: None,
            private_deployments: &[],
        })
        .is_full()
    }

    /// What `service` published, as a caller without a token sees it: the
    /// public environments (or the one asked for, which must be public),
    /// every (build, environment) pair of a deployment into them whose
    /// build is publicly visible, and per environment the build it runs
    /// now when that build is publicly visible (an environment running a
    /// hidden build shows no current build, and the build is not listed).
    /// A service that publishes nothing is "not found", worded alike
    /// whether it exists or not.
    pub(crate) async fn published_publicly(&self, service: &ServiceName, env: Option<&EnvName>) -> Result<Published> {
        let environments = match env {
            Some(e) => vec![self.public_environment(service, e).await?],
            None => self.public_environments(service).await?,
        };
        if environments.is_empty() {
            return Err(Error::NotPublished(format!(
                "service {service} publishes no releases (it has no public environment)"
            )));
        }
        let names: Vec<EnvName> = environments.iter().map(|e| e.name.clone()).collect();
        let rows = self.db.published(service, &names).await?;
        let mut current: HashMap<EnvName, (i64, BuildId, bool)> = HashMap::new();
        for r in &rows {
            let visible = Tugboat::publicly_visible_facts(&r.build);
            let newer = current.get(&r.environment).is_none_or(|(seq, _, _)| r.last_seq > *seq);
            if newer {
                current.insert(r.environment.clone(), (r.last_seq, r.build.id.clone(), visible));
            }
        }
        let current = current
            .into_iter()
            .filter_map(|(env, (_, id, visible))| visible.then_some((env, id)))
            .collect();
        let rows = rows
            .into_iter()
            .filter(|r| Tugboat::publicly_visible_facts(&r.build))
            .collect();
        Ok(Published {
            environments,
            rows,
            current,
        })
    }

    /// 403 unless the caller's role may do `action` and its scope covers
    /// `service`.
    pub(crate) fn require_in(&self, who: &Principal, action: Action, service: &ServiceName) -> Result<()> {
        self.require(who, action)?;
        if who.reader().in_scope(service) {
            Ok(())
        } else {
            Err(self.out_of_scope(who, service.to_string()))
        }
    }

    /// 403 unless the caller may follow `env` of `service` (its channel,
    /// the blobs it names, reports from its agents).
    pub(crate) fn require_follow(
        &self,
        who: &Principal,
        action: Action,
        service: &ServiceName,
        env: &EnvName,
    ) -> Result<()> {
        self.require(who, action)?;
        if who.reader().may_follow(service, env) {
            Ok(())
        } else {
            Err(self.out_of_scope(who, format!("{service}/{env}")))
        }
    }

    fn out_of_scope(&self, who: &Principal, asked: String) -> Error {
        Error::OutOfScope {
            token: who.name.clone(),
            scope: who.scope_text(),
            asked,
        }
    }

    /// Whether the caller may follow `env` of `service` (for callers that
    /// answer from a cache).
    pub fn check_follow(&self, who: &Principal, service: &ServiceName, env: &EnvName) -> Result<()> {
        self.require_follow(who, Action::Follow, service, env)
    }

    /// The service a listing is limited to: the one asked for (which must
    /// be in scope), else the caller's own scope, else none (all).
    pub(crate) fn listing_scope(
        &self,
        who: &Principal,
        action: Action,
        asked: Option<&ServiceName>,
    ) -> Result<Option<ServiceName>> {
        match asked {
            Some(s) => {
                self.require_in(who, action, s)?;
                Ok(Some(s.clone()))
            }
            None => {
                self.require(who, action)?;
                Ok(who.service.clone())
            }
        }
    }

    /// How much of one build the caller may see.
    pub(crate) async fn sight(&self, who: &Principal, build: &BuildAccessRow) -> Result<Sight> {
        let reader = who.reader();
        if reader.sees_everything() {
            return Ok(Sight::Full);
        }
        let deployed = self.private_deployments(&reader, build).await?;
        Ok(reader.sight(&BuildAccess {
            service: &build.service,
            embargoed: build.embargoed,
            created_by_token: build.created_by_token.as_deref(),
            private_deployments: &deployed,
        }))
    }

    /// The private environment the caller (an agent token scoped to one)
    /// follows, if `build` was deployed into it: the one fact of
    /// deployments the rule needs, and only for such a caller.
    async fn private_deployments(&self, reader: &Reader<'_>, build: &BuildAccessRow) -> Result<Vec<EnvName>> {
        let Some(env) = reader.environment.filter(|_| reader.needs_private_deployments()) else {
            return Ok(Vec::new());
        };
        if !build.embargoed || !reader.in_scope(&build.service) {
            return Ok(Vec::new());
        }
        let private = match self.db.pipeline(&build.service).await? {
            Some(row) => tug_core::Pipeline::parse(&row.spec)
                .ok()
                .and_then(|p| p.environment(env).map(|e| e.private))
                .unwrap_or(false),
            None => false,
        };
        if private
            && self
                .db
                .last_deployed_at(&build.service, env, &build.id)
                .await?
                .is_some()
        {
            Ok(vec![env.clone()])
        } else {
            Ok(Vec::new())
        }
    }

    /// The sight of every build in `ids`, with one query for their facts.
    pub(crate) async fn sights(&self, who: &Principal, mut wanted: Vec<BuildId>) -> Result<Sights> {
        wanted.sort();
        wanted.dedup();
        let mut out = HashMap::with_capacity(wanted.len());
        if who.reader().sees_everything() {
            out.extend(wanted.into_iter().map(|id| (id, Sight::Full)));
            return Ok(Sights(out));
        }
        for facts in self.db.build_access(&wanted).await? {
            let sight = self.sight(who, &facts).await?;
            out.insert(facts.id, sight);
        }
        Ok(Sights(out))
    }

    /// A build by id or manifest digest, if the caller may see all of it;
    /// otherwise it does not exist for the caller.
    /// A prefix counts only the builds the caller may see: a hidden build
    /// never makes a prefix ambiguous (which would betray that it exists).
    pub(crate) async fn resolve_visible(&self, who: &Principal, reference: &BuildRef) -> Result<BuildRecord> {
        match self.named(reference).await? {
            crate::Named::One(found) => {
                let build = found.ok_or_else(|| Error::BuildNotFound(reference.shown()))?;
                self.require_visible(who, *build, &reference.shown()).await
            }
            crate::Named::Prefix { prefix, matches, more } => {
                let mut visible = Vec::with_capacity(matches.len());
                for b in matches {
                    if self.sight(who, &facts_of(&b)).await?.is_full() {
                        visible.push(b);
                    }
                }
                // A prefix's matches are list rows (no manifest text): the
                // one chosen is read whole.
                let chosen = crate::pick(reference, &prefix, visible, more)?;
                self.db
                    .build(&chosen.id)
                    .await?
                    .ok_or_else(|| Error::BuildNotFound(reference.shown()))
            }
        }
    }

    /// `build` if the caller may see all of it, else the error of a build
    /// that does not exist (named as the caller named it).
    pub(crate) async fn require_visible(
        &self,
        who: &Principal,
        build: BuildRecord,
        named: &str,
    ) -> Result<BuildRecord> {
        if self.sight(who, &facts_of(&build)).await?.is_full() {
            Ok(build)
        } else {
            Err(Error::BuildNotFound(named.chars().take(80).collect()))
        }
    }

    /// Whether the caller may read the blob `digest`: some build it may
    /// see refers to it. A blob no build refers to yet (an upload before
    /// its registration) is readable by those who may upload.
    pub(crate) async fn may_read_blob(&self, who: &Principal, digest: &tug_core::Digest) -> Result<bool> {
        if who.reader().sees_everything() {
            return Ok(true);
        }
        let builds = self.db.blob_builds(digest).await?;
        if builds.is_empty() {
            return Ok(who.role.allows(Action::WriteBuilds));
        }
        for b in &builds {
            if self.sight(who, b).await?.is_full() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// How much of the build an environment's channel names the caller may
    /// see. The build runs in that environment, so it was deployed there:
    /// no query is needed, and a channel answer shared by many callers is
    /// shaped per caller from the facts it carries.
    pub fn channel_sight(&self, who: &Principal, view: &crate::ChannelView) -> Result<Sight> {
        let service = &view.pacing.service;
        self.require_follow(who, Action::Follow, service, &view.environment.name)?;
        let Some(build) = &view.build else {
            return Ok(Sight::Full);
        };
        let here = [view.environment.name.clone()];
        Ok(who.reader().sight(&BuildAccess {
            service: &build.service,
            embargoed: build.embargoed,
            created_by_token: build.created_by_token.as_deref(),
            private_deployments: if view.environment.private { &here } else { &[] },
        }))
    }

    /// Checks a token again by id: requests that last (event streams,
    /// held long-polls) call this every second or two, so a revocation
    /// ends them within a few seconds on every server.
    pub async fn recheck(&self, who: &Principal) -> Result<()> {
        match self.db.token_by_id(&who.token_id).await? {
            Some(t) if t.revoked_at.is_none() => Ok(()),
            Some(t) => Err(Error::TokenRevoked(t.name)),
            None => Err(Error::InvalidToken),
        }
    }
}
