//! The public release catalog and its stable download links: what a
//! service published in its public environments, newest first, with each
//! version's files, source and changelog; and which file a link
//! `/dl/{service}/{version}/{name}` or `/dl/{service}/{env}/latest/{name}`
//! names. Who may see what is decided in [`crate::access`]
//! ([`Tugboat::published_publicly`]); this module only arranges it.
//!
//! A version is published when a public environment ran it (a deployment
//! put it there). Its place in the list is when it was first published, so
//! a cursor stays valid while new versions are published above it. Yanked
//! versions stay listed (marked) and downloadable: links handed out keep
//! working, and the mark tells readers not to pick it. Embargoed builds are
//! not there at all.

use std::collections::BTreeMap;

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use tug_api::{
    Catalog, Changelog, ChangelogEntry, CurrentRelease, PublicEnvironment, PublishedVersion, ReleaseArtifact,
    ReleaseEnvironment, ReleaseSource,
};
use tug_core::diff::{commit_url, source_range};

use super::*;

/// Versions per page unless the caller asks for another number.
pub const DEFAULT_CATALOG_PAGE: u32 = 20;
/// The most versions one page holds.
pub const MAX_CATALOG_PAGE: u32 = 100;
/// The most builds one version's changelog lists.
pub const CHANGELOG_PER_RELEASE: usize = 100;

/// Characters escaped in a path segment of a download link: what would end
/// or change the path (`/` is kept out by splitting first), and what a
/// browser or a shell would read otherwise.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\'')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']');

/// The stable link of one artifact of a published version.
pub fn download_path(service: &ServiceName, version: &Version, name: &ArtifactName) -> String {
    let name: Vec<String> = name
        .as_str()
        .split('/')
        .map(|seg| utf8_percent_encode(seg, SEGMENT).to_string())
        .collect();
    format!("/dl/{service}/{version}/{}", name.join("/"))
}

/// A published build with the public environments it went to.
struct Entry {
    build: BuildId,
    published_at: DateTime<Utc>,
    environments: Vec<(EnvName, DateTime<Utc>)>,
}

/// Where a page starts: after the entry published at `at` with id `build`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    at: i64,
    build: BuildId,
}

impl Cursor {
    fn of(e: &Entry) -> Cursor {
        Cursor {
            at: e.published_at.timestamp_millis(),
            build: e.build.clone(),
        }
    }

    fn text(&self) -> String {
        format!("{}.{}", self.at, self.build)
    }

    fn parse(s: &str) -> Result<Cursor> {
        let bad = || {
            Error::Invalid(format!(
                "cursor {:?} is not one this server gave; start again without it",
                s.chars().take(80).collect::<String>()
            ))
        };
        let (at, id) = s.split_once('.').ok_or_else(bad)?;
        Ok(Cursor {
            at: at.parse().map_err(|_| bad())?,
            build: BuildId::parse(id).map_err(|_| bad())?,
        })
    }

    /// Whether `e` comes after the cursor (is older, or as old with a
    /// smaller id).
    fn before(&self, e: &Entry) -> bool {
        (e.published_at.timestamp_millis(), &e.build) < (self.at, &self.build)
    }
}

/// The most catalog answers kept; past it the cache starts again empty
/// (its keys come from anonymous requests, so it must stay bounded).
const MAX_CACHED: usize = 1024;

/// A catalog question: service, environment, page size and cursor.
type Question = (ServiceName, Option<EnvName>, u32, Option<String>);

/// Catalog answers with the stamp ([`tug_db::Db::catalog_stamp`]) each was
/// computed at: an answer is served again while its service's stamp
/// stands, so a burst of readers costs one small query each instead of
/// the catalog's queries, and any change shows at once.
#[derive(Default)]
pub(crate) struct Answers(std::sync::Mutex<HashMap<Question, Stamped>>);

/// An answer and the stamp it was computed at.
type Stamped = (i64, Arc<Catalog>);

impl Answers {
    fn get(&self, q: &Question, stamp: &i64) -> Option<Arc<Catalog>> {
        let answers = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        answers.get(q).filter(|(s, _)| s == stamp).map(|(_, c)| c.clone())
    }

    fn put(&self, q: Question, stamp: i64, catalog: Arc<Catalog>) {
        let mut answers = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if answers.len() >= MAX_CACHED && !answers.contains_key(&q) {
            answers.clear();
        }
        answers.insert(q, (stamp, catalog));
    }
}

impl Tugboat {
    /// One page of `service`'s published versions (in `env` only, when
    /// given), newest first. Anyone may ask: there is no caller.
    pub async fn catalog(
        &self,
        service: &ServiceName,
        env: Option<&EnvName>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Arc<Catalog>> {
        let limit = limit.unwrap_or(DEFAULT_CATALOG_PAGE);
        if !(1..=MAX_CATALOG_PAGE).contains(&limit) {
            return Err(Error::Invalid(format!(
                "limit must be between 1 and {MAX_CATALOG_PAGE}; page with cursor for more"
            )));
        }
        let parsed = cursor.map(Cursor::parse).transpose()?;
        // The stamp is read before the answer is computed: a change made
        // meanwhile moves the stamp past the one stored with the answer.
        let stamp = self.db.catalog_stamp(service).await?;
        let question = (service.clone(), env.cloned(), limit, cursor.map(str::to_string));
        if let Some(hit) = self.catalogs.get(&question, &stamp) {
            return Ok(hit);
        }
        let catalog = Arc::new(self.compute_catalog(service, env, limit, parsed).await?);
        self.catalogs.put(question, stamp, catalog.clone());
        Ok(catalog)
    }

    async fn compute_catalog(
        &self,
        service: &ServiceName,
        env: Option<&EnvName>,
        limit: u32,
        cursor: Option<Cursor>,
    ) -> Result<Catalog> {
        let published = self.published_publicly(service, env).await?;
        let order: HashMap<&EnvName, usize> = published
            .environments
            .iter()
            .enumerate()
            .map(|(i, e)| (&e.name, i))
            .collect();

        let mut by_build: BTreeMap<BuildId, Entry> = BTreeMap::new();
        for r in &published.rows {
            let e = by_build.entry(r.build.id.clone()).or_insert_with(|| Entry {
                build: r.build.id.clone(),
                published_at: r.first_deployed_at,
                environments: Vec::new(),
            });
            e.published_at = e.published_at.min(r.first_deployed_at);
            e.environments.push((r.environment.clone(), r.first_deployed_at));
        }
        let mut entries: Vec<Entry> = by_build.into_values().collect();
        entries.sort_by(|a, b| (b.published_at, &b.build).cmp(&(a.published_at, &a.build)));
        for e in &mut entries {
            e.environments
                .sort_by_key(|(name, _)| order.get(name).copied().unwrap_or(usize::MAX));
        }
        let start = cursor
            .as_ref()
            .map_or(0, |c| entries.iter().position(|e| c.before(e)).unwrap_or(entries.len()));
        let rest = &entries[start..];
        let page_len = rest.len().min(limit as usize);
        let page = &rest[..page_len];
        // The version before each one of the page is the next one in the
        // list, on this page or the first of the next.
        let previous = |i: usize| rest.get(i + 1);

        let mut wanted: Vec<BuildId> = page.iter().map(|e| e.build.clone()).collect();
        if let Some(p) = previous(page_len.saturating_sub(1)).filter(|_| page_len > 0) {
            wanted.push(p.build.clone());
        }
        let rows: HashMap<BuildId, BuildRecord> = self
            .db
            .builds_by_id(&wanted)
            .await?
            .into_iter()
            .map(|b| (b.id.clone(), b))
            .collect();
        let mut artifacts = self.db.artifacts_of(&wanted[..page_len]).await?;

        // The builds every changelog of the page draws from, in one query.
        let created = |id: &BuildId| rows.get(id).map(|b| b.created_at);
        let lows: Vec<Option<DateTime<Utc>>> = (0..page_len)
            .map(|i| previous(i).and_then(|p| created(&p.build)))
            .collect();
        let highest = page.iter().filter_map(|e| created(&e.build)).max();
        let lowest = if lows.iter().any(Option::is_none) {
            None
        } else {
            lows.iter().flatten().min().copied()
        };
        let between = match highest {
            Some(until) => self.db.sealed_between(service, lowest, until).await?,
            None => Vec::new(),
        };
        // The query stopped at its limit: ranges reaching below its oldest
        // row are incomplete.
        let cut_at = (between.len() >= tug_db::CHANGELOG_ROWS as usize)
            .then(|| between.last().map(|b| b.created_at))
            .flatten();
        let between: Vec<&BuildRecord> = between.iter().filter(|b| Tugboat::publicly_visible(b)).collect();

        let mut versions = Vec::with_capacity(page_len);
        for (i, e) in page.iter().enumerate() {
            let Some(b) = rows.get(&e.build) else {
                continue;
            };
            let prev = previous(i).and_then(|p| rows.get(&p.build));
            let low = lows[i];
            let mut in_range: Vec<&BuildRecord> = between
                .iter()
                .filter(|c| c.created_at <= b.created_at && low.is_none_or(|l| c.created_at > l))
                .copied()
                .collect();
            // A version published after a newer one (a rollback) has an
            // empty range; it still names its own build.
            if in_range.is_empty() {
                in_range.push(b);
            }
            let truncated =
                in_range.len() > CHANGELOG_PER_RELEASE || cut_at.is_some_and(|cut| low.is_none_or(|l| l < cut));
            let changelog = Changelog {
                previous: prev.map(|p| p.version.clone()),
                compare_url: prev.and_then(|p| source_range(&p.source, &b.source).compare_url),
                builds: in_range
                    .into_iter()
                    .take(CHANGELOG_PER_RELEASE)
                    .map(|c| ChangelogEntry {
                        build: c.id.clone(),
                        version: c.version.clone(),
                        commit: c.source.commit.clone(),
                        commit_url: commit_url(&c.source),
                        author: c.source.author.clone(),
                        message: c.source.message.clone(),
                        created_at: c.created_at,
                    })
                    .collect(),
                truncated,
            };
            versions.push(PublishedVersion {
                version: b.version.clone(),
                build: b.id.clone(),
                manifest_digest: b.manifest_digest,
                published_at: e.published_at,
                yanked: b.yanked_at.is_some(),
                environments: e
                    .environments
                    .iter()
                    .map(|(name, at)| ReleaseEnvironment {
                        name: name.clone(),
                        first_deployed_at: *at,
                        current: published.current.get(name) == Some(&b.id),
                    })
                    .collect(),
                artifacts: artifacts
                    .remove(&b.id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| ReleaseArtifact {
                        download_url: a.has_blob().then(|| download_path(service, &b.version, &a.name)),
                        name: a.name,
                        kind: a.kind,
                        platform: a.platform,
                        size: a.size,
                        digest: a.digest,
                        uri: a.uri,
                    })
                    .collect(),
                source: ReleaseSource {
                    repo: b.source.repo.clone(),
                    commit: b.source.commit.clone(),
                    branch: b.source.branch.clone(),
                    tag: b.source.tag.clone(),
                    commit_url: commit_url(&b.source),
                },
                changelog,
            });
        }
        let next_cursor = (rest.len() > page_len)
            .then(|| page.last().map(|e| Cursor::of(e).text()))
            .flatten();

        let environments = self.current_releases(&published).await?;
        Ok(Catalog {
            service: service.clone(),
            environments,
            versions,
            next_cursor,
        })
    }

    /// Each public environment with the version it runs now.
    async fn current_releases(&self, published: &crate::access::Published) -> Result<Vec<PublicEnvironment>> {
        let ids: Vec<BuildId> = published.current.values().cloned().collect();
        let versions: HashMap<BuildId, Version> = self
            .db
            .builds_by_id(&ids)
            .await?
            .into_iter()
            .map(|b| (b.id, b.version))
            .collect();
        Ok(published
            .environments
            .iter()
            .map(|e| PublicEnvironment {
                name: e.name.clone(),
                current: published.current.get(&e.name).and_then(|id| {
                    versions.get(id).map(|v| CurrentRelease {
                        version: v.clone(),
                        build: id.clone(),
                    })
                }),
            })
            .collect())
    }

    /// The artifact `name` of the version `version` of `service`, which a
    /// public environment ran: what `/dl/{service}/{version}/{name}`
    /// serves. When several published builds carry the version, the one
    /// published last wins.
    pub async fn published_artifact(
        &self,
        service: &ServiceName,
        version: &Version,
        name: &ArtifactName,
    ) -> Result<ArtifactSpec> {
        let published = self.published_publicly(service, None).await?;
        let candidates: HashSet<BuildId> = self.db.sealed_of_version(service, version).await?.into_iter().collect();
        let newest = published
            .rows
            .iter()
            .filter(|r| candidates.contains(&r.build.id))
            .max_by_key(|r| (r.first_deployed_at, r.build.id.clone()))
            .map(|r| r.build.id.clone())
            .ok_or_else(|| {
                Error::NotPublished(format!(
                    "service {service} published no version {version}; see /v1/releases/{service}"
                ))
            })?;
        self.published_file(service, &newest, name, &version.to_string()).await
    }

    /// The artifact `name` of the build public environment `env` of
    /// `service` runs now: what `/dl/{service}/{env}/latest/{name}` serves.
    pub async fn latest_artifact(
        &self,
        service: &ServiceName,
        env: &EnvName,
        name: &ArtifactName,
    ) -> Result<ArtifactSpec> {
        let published = self.published_publicly(service, Some(env)).await?;
        let id = published
            .current
            .get(env)
            .cloned()
            .ok_or_else(|| Error::NotPublished(format!("{env} of {service} runs no published version yet")))?;
        self.published_file(service, &id, name, &format!("{env}/latest")).await
    }

    /// The file `name` of a published build; a reference is not a file.
    async fn published_file(
        &self,
        service: &ServiceName,
        build: &BuildId,
        name: &ArtifactName,
        shown: &str,
    ) -> Result<ArtifactSpec> {
        let artifact = self
            .db
            .artifacts(build)
            .await?
            .into_iter()
            .find(|a| &a.name == name)
            .ok_or_else(|| {
                Error::NotPublished(format!(
                    "{service} {shown} has no artifact {name}; see /v1/releases/{service}"
                ))
            })?;
        if !artifact.has_blob() {
            return Err(Error::NotPublished(format!(
                "{service} {shown} {name} is a reference to {}, not a file to download",
                artifact.uri.as_ref().map_or("-", |u| u.as_str())
            )));
        }
        Ok(artifact)
    }

    /// The bytes of a published file (from [`Tugboat::published_artifact`]
    /// or [`Tugboat::latest_artifact`], which decided it may be read).
    pub async fn published_blob(&self, artifact: &ArtifactSpec, start: u64, end: Option<u64>) -> Result<Blob> {
        self.read_counted(&artifact.digest, start, end)
            .await?
            .ok_or(Error::BlobNotFound(artifact.digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_links_escape_each_segment_and_keep_directories() {
        let s = ServiceName::parse("api").unwrap();
        let v = Version::parse("v1.4.0").unwrap();
        let n = ArtifactName::parse("linux amd64/app#1?.tar.gz").unwrap();
        assert_eq!(
            download_path(&s, &v, &n),
            "/dl/api/1.4.0/linux%20amd64/app%231%3F.tar.gz"
        );
    }

    #[test]
    fn cursors_round_trip_and_refuse_other_text() {
        let c = Cursor {
            at: 1_700_000_000_000,
            build: BuildId::parse("0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70").unwrap(),
        };
        assert_eq!(Cursor::parse(&c.text()).unwrap(), c);
        for bad in ["", "x", "1.x", "x.0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}
