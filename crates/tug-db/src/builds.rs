//! Builds and their artifacts: drafts filled by many CI jobs at once, sealed
//! once, abandoned by gc when left too long.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;
use tug_core::short_id::IdPrefix;
use tug_core::{
    ArtifactName, ArtifactSpec, BlobUse, BuildId, BuildManifest, BuildSource, BuildState, CiRun, Digest, ServiceName,
    Version,
};

use crate::{
    artifact_from_row, millis, opt_millis, opt_parse, parse, Db, Error, Result, Tx, ARTIFACT_COLUMNS, HAS_BLOB,
};
pub use tug_core::records::{BuildFilter, BuildRecord as BuildRow};

/// A draft to create.
#[derive(Debug, Clone)]
pub struct NewBuild {
    pub id: BuildId,
    pub service: ServiceName,
    pub version: Version,
    pub source: BuildSource,
    pub ci: CiRun,
    pub expected: Vec<ArtifactName>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    /// The id of the token that created it (what access is decided by;
    /// `created_by` is its name, for people).
    pub created_by_token: Option<String>,
    pub embargoed: bool,
}

/// The ids sorted next to `$id` among all builds, as `prev_id` and
/// `next_id`: what a short id must differ from to be unique. Both are one
/// probe of the primary key's index. (UUID strings sort the same under
/// every collation: their hyphens stand at the same places.)
macro_rules! neighbour_ids {
    ($id:literal) => {
        concat!(
            "(SELECT MAX(p.id) FROM builds p WHERE p.id < ",
            $id,
            ") AS prev_id, (SELECT MIN(n.id) FROM builds n WHERE n.id > ",
            $id,
            ") AS next_id"
        )
    };
}

/// The shortest unique prefix of a row's `id` from its `prev_id` and
/// `next_id` columns.
fn short_id_from_row(r: &AnyRow, id: &str) -> Result<String> {
    let prev: Option<String> = r.try_get("prev_id")?;
    let next: Option<String> = r.try_get("next_id")?;
    Ok(tug_core::short_id::shorten(
        id,
        prev.iter().chain(&next).map(String::as_str),
    ))
}

/// The columns of a build row; `$manifest` selects the manifest text or a
/// NULL in its place (lists never show it, and it is the row's bulk).
macro_rules! build_columns {
    ($manifest:literal) => {
        concat!(
            "b.id, b.service, b.version, b.state, b.repo, b.branch, b.commit_sha, b.tag, b.author, ",
            "b.message, b.ci_url, b.builder_image, b.expected, b.created_at, b.updated_at, b.created_by, ",
            "b.created_by_token, ",
            "b.sealed_at, b.manifest_digest, ",
            $manifest,
            ", b.yanked_at, b.yanked_by, b.yank_reason, b.embargoed, b.critical, ",
            "(SELECT COUNT(*) FROM artifacts a WHERE a.build_id = b.id) AS artifact_count, ",
            neighbour_ids!("b.id")
        )
    };
}

const COLUMNS: &str = build_columns!("b.manifest");

/// The same for lists, without the manifest text.
pub(crate) const LIST_COLUMNS: &str = build_columns!("CAST(NULL AS TEXT) AS manifest");

pub(crate) fn build_from_row(r: &AnyRow) -> Result<BuildRow> {
    let expected: Vec<String> =
        serde_json::from_str(&r.try_get::<String, _>("expected")?).map_err(|e| Error::Corrupt(e.to_string()))?;
    let state: String = r.try_get("state")?;
    let id: String = r.try_get("id")?;
    Ok(BuildRow {
        short_id: short_id_from_row(r, &id)?,
        id: parse(&id, BuildId::parse)?,
        service: parse(&r.try_get::<String, _>("service")?, ServiceName::parse)?,
        version: parse(&r.try_get::<String, _>("version")?, Version::parse)?,
        state: BuildState::parse(&state).ok_or_else(|| Error::Corrupt(format!("unknown build state {state:?}")))?,
        source: BuildSource {
            author: r.try_get("author")?,
            branch: r.try_get("branch")?,
            commit: r.try_get("commit_sha")?,
            message: r.try_get("message")?,
            repo: r.try_get("repo")?,
            tag: r.try_get("tag")?,
        },
        ci: CiRun {
            builder_image: opt_parse(r.try_get("builder_image")?, Digest::parse)?,
            url: r.try_get("ci_url")?,
        },
        expected: expected
            .iter()
            .map(|e| parse(e, ArtifactName::parse))
            .collect::<Result<_>>()?,
        created_at: millis(r.try_get("created_at")?)?,
        updated_at: millis(r.try_get("updated_at")?)?,
        created_by: r.try_get("created_by")?,
        created_by_token: r.try_get("created_by_token")?,
        sealed_at: opt_millis(r.try_get("sealed_at")?)?,
        manifest_digest: opt_parse(r.try_get("manifest_digest")?, Digest::parse)?,
        manifest: r.try_get("manifest")?,
        artifact_count: u64::try_from(r.try_get::<i64, _>("artifact_count")?).unwrap_or(0),
        yanked_at: opt_millis(r.try_get("yanked_at")?)?,
        yanked_by: r.try_get("yanked_by")?,
        yank_reason: r.try_get("yank_reason")?,
        embargoed: r.try_get::<i64, _>("embargoed")? != 0,
        critical: r.try_get::<i64, _>("critical")? != 0,
    })
}

/// What deciding who may see a build needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildAccessRow {
    pub id: BuildId,
    pub service: ServiceName,
    pub embargoed: bool,
    pub created_by_token: Option<String>,
}

pub(crate) const ACCESS_COLUMNS: &str = "b.id, b.service, b.embargoed, b.created_by_token";

pub(crate) fn access_from_row(r: &AnyRow) -> Result<BuildAccessRow> {
    Ok(BuildAccessRow {
        id: parse(&r.try_get::<String, _>("id")?, BuildId::parse)?,
        service: parse(&r.try_get::<String, _>("service")?, ServiceName::parse)?,
        embargoed: r.try_get::<i64, _>("embargoed")? != 0,
        created_by_token: r.try_get("created_by_token")?,
    })
}

/// Parses the text column `column` of every row with the type's own
/// validation.
pub(crate) fn parse_column<T, C: FromIterator<T>, E: std::fmt::Display>(
    rows: &[AnyRow],
    column: &str,
    f: impl Fn(&str) -> Result<T, E>,
) -> Result<C> {
    rows.iter()
        .map(|r| parse(&r.try_get::<String, _>(column)?, &f))
        .collect()
}

/// Rows per multi-row INSERT: well under both dialects' parameter limits.
pub(crate) const INSERT_CHUNK: usize = 100;

impl Db {
    pub async fn build(&self, id: &BuildId) -> Result<Option<BuildRow>> {
        self.build_with(COLUMNS, id).await
    }

    /// A build without its manifest text (`manifest` is `None`): for the
    /// paths that run often (agent reports, channels, status) and need only
    /// the build's facts.
    pub async fn build_summary(&self, id: &BuildId) -> Result<Option<BuildRow>> {
        self.build_with(LIST_COLUMNS, id).await
    }

    async fn build_with(&self, columns: &str, id: &BuildId) -> Result<Option<BuildRow>> {
        let row = sqlx::query(&format!("SELECT {columns} FROM builds b WHERE b.id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(build_from_row).transpose()
    }

    /// The sealed build whose manifest has this digest.
    pub async fn build_by_manifest(&self, digest: &Digest) -> Result<Option<BuildRow>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM builds b WHERE b.manifest_digest = $1"))
            .bind(digest.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(build_from_row).transpose()
    }

    /// Up to `limit` builds whose id starts with `prefix`, in id order: a
    /// range over the primary key, so as cheap as a lookup by id.
    pub async fn builds_by_id_prefix(&self, prefix: &IdPrefix, limit: u32) -> Result<Vec<BuildRow>> {
        let mut sql = format!("SELECT {LIST_COLUMNS} FROM builds b WHERE b.id >= $1");
        let upper = prefix.upper_bound();
        if upper.is_some() {
            sql.push_str(" AND b.id < $2");
        }
        sql.push_str(&format!(" ORDER BY b.id LIMIT {}", limit.max(1)));
        let mut q = sqlx::query(&sql).bind(prefix.as_str());
        if let Some(u) = &upper {
            q = q.bind(u.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        let builds: Vec<BuildRow> = rows.iter().map(build_from_row).collect::<Result<_>>()?;
        // The range is exact; checking again costs nothing and keeps a
        // collation surprise from ever naming a build the prefix does not.
        Ok(builds.into_iter().filter(|b| prefix.matches(b.id.as_str())).collect())
    }

    /// The short id of each of `ids` that names a build, as [`BuildRow`]
    /// carries it, for ids a caller holds without their rows (the build a
    /// deployment replaced, the build an agent runs).
    pub async fn short_build_ids(&self, ids: &[BuildId]) -> Result<HashMap<BuildId, String>> {
        let mut unique: Vec<&BuildId> = ids.iter().collect();
        unique.sort();
        unique.dedup();
        let mut out = HashMap::with_capacity(unique.len());
        for chunk in unique.chunks(INSERT_CHUNK) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT b.id, {} FROM builds b WHERE b.id IN ({})",
                neighbour_ids!("b.id"),
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            for r in q.fetch_all(&self.pool).await? {
                let id: String = r.try_get("id")?;
                let short = short_id_from_row(&r, &id)?;
                out.insert(parse(&id, BuildId::parse)?, short);
            }
        }
        Ok(out)
    }

    /// The access facts of the builds with these ids (those that exist).
    pub async fn build_access(&self, ids: &[BuildId]) -> Result<Vec<BuildAccessRow>> {
        rows_by_id(&mut *self.pool.acquire().await?, ACCESS_COLUMNS, ids)
            .await?
            .iter()
            .map(access_from_row)
            .collect()
    }

    /// The access facts of every build with an artifact stored as `digest`,
    /// or with an OCI image whose manifest refers to it.
    pub async fn blob_builds(&self, digest: &Digest) -> Result<Vec<BuildAccessRow>> {
        let rows = sqlx::query(&format!(
            "SELECT DISTINCT {ACCESS_COLUMNS} FROM artifacts a JOIN builds b ON b.id = a.build_id \
             WHERE a.digest = $1 AND a.{HAS_BLOB} \
             UNION SELECT DISTINCT {ACCESS_COLUMNS} FROM oci_manifest_refs r JOIN artifacts a ON a.digest = r.manifest \
             JOIN builds b ON b.id = a.build_id WHERE r.digest = $1"
        ))
        .bind(digest.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(access_from_row).collect()
    }

    /// Builds matching `filter`, newest first.
    pub async fn list_builds(&self, filter: &BuildFilter) -> Result<Vec<BuildRow>> {
        let mut sql = format!("SELECT {LIST_COLUMNS} FROM builds b WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        let mut add = |col: &str, value: String, sql: &mut String| {
            args.push(value);
            sql.push_str(&format!(" AND b.{col} = ${}", args.len()));
        };
        if let Some(s) = &filter.service {
            add("service", s.to_string(), &mut sql);
        }
        if let Some(b) = &filter.branch {
            add("branch", b.clone(), &mut sql);
        }
        if let Some(v) = &filter.version {
            add("version", v.to_string(), &mut sql);
        }
        if let Some(s) = filter.state {
            add("state", s.as_str().to_string(), &mut sql);
        }
        if filter.hide_embargoed {
            match &filter.unless_created_by_token {
                Some(token) => {
                    args.push(token.clone());
                    sql.push_str(&format!(
                        " AND (b.embargoed = 0 OR b.created_by_token = ${})",
                        args.len()
                    ));
                }
                None => sql.push_str(" AND b.embargoed = 0"),
            }
        }
        // Semantic-version order is computed here (text order is not
        // precedence: 1.10.0 > 1.9.0), over every match, then cut.
        if filter.by_version {
            sql.push_str(" ORDER BY b.created_at DESC, b.id DESC");
        } else {
            sql.push_str(&format!(
                " ORDER BY b.created_at DESC, b.id DESC LIMIT {}",
                filter.limit.max(1)
            ));
        }
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut builds: Vec<BuildRow> = rows.iter().map(build_from_row).collect::<Result<_>>()?;
        if filter.by_version {
            // Stable sort: equal versions stay newest first.
            builds.sort_by(|a, b| b.version.cmp(&a.version));
            builds.truncate(filter.limit.max(1) as usize);
        }
        Ok(builds)
    }

    /// The newest sealed build of `branch` by seal time (ties broken by id)
    /// that may still be deployed: not yanked, and not embargoed unless
    /// `embargoed` allows it. What auto-release wants an environment to run.
    pub async fn newest_releasable(
        &self,
        service: &ServiceName,
        branch: &str,
        embargoed: bool,
    ) -> Result<Option<BuildRow>> {
        let row = sqlx::query(&format!(
            "SELECT {LIST_COLUMNS} FROM builds b WHERE b.service = $1 AND b.branch = $2 AND b.state = $3 \
             AND b.yanked_at IS NULL{} ORDER BY b.sealed_at DESC, b.id DESC LIMIT 1",
            if embargoed { "" } else { " AND b.embargoed = 0" }
        ))
        .bind(service.as_str())
        .bind(branch)
        .bind(BuildState::Sealed.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(build_from_row).transpose()
    }

    /// A build's artifacts, by name.
    pub async fn artifacts(&self, id: &BuildId) -> Result<Vec<ArtifactSpec>> {
        let rows = sqlx::query(&format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE build_id = $1 ORDER BY name"
        ))
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(artifact_from_row).collect()
    }

    /// Adds artifacts to a draft in one transaction: all or none. An
    /// artifact identical to one already registered is accepted again (a
    /// retried push); the same name with other content is refused. Returns
    /// how many were new.
    pub async fn add_artifacts(&self, id: &BuildId, specs: &[ArtifactSpec], now: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        lock_draft(&mut tx, id, now).await?;
        let added = insert_artifacts(&mut tx, id, specs, now).await?;
        tx.commit().await?;
        Ok(added)
    }
}

/// Adds artifacts to a draft whose lock the transaction holds (see
/// [`Db::add_artifacts`]).
pub(crate) async fn insert_artifacts(
    tx: &mut sqlx::AnyConnection,
    id: &BuildId,
    specs: &[ArtifactSpec],
    now: DateTime<Utc>,
) -> Result<u64> {
    {
        let existing: BTreeMap<ArtifactName, ArtifactSpec> = {
            let rows = sqlx::query(&format!("SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE build_id = $1"))
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await?;
            rows.iter()
                .map(artifact_from_row)
                .map(|a| a.map(|a| (a.name.clone(), a)))
                .collect::<Result<_>>()?
        };
        let mut fresh = Vec::new();
        for s in specs {
            match existing.get(&s.name) {
                Some(e) if e == s => {}
                Some(e) => {
                    return Err(Error::DuplicateArtifact {
                        id: id.clone(),
                        name: s.name.clone(),
                        existing: e.digest,
                    })
                }
                None => fresh.push(s),
            }
        }
        for chunk in fresh.chunks(INSERT_CHUNK) {
            let mut sql = String::from(
                "INSERT INTO artifacts (build_id, name, kind, platform, size, digest, derived_from, created_at, executable, uri) \
                 VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                let row: Vec<String> = (1..=10).map(|n| format!("${}", i * 10 + n)).collect();
                sql.push_str(&format!("({})", row.join(", ")));
            }
            let mut q = sqlx::query(&sql);
            for s in chunk {
                let derived: Vec<String> = s.derived_from.iter().map(|d| d.to_string()).collect();
                q = q
                    .bind(id.as_str())
                    .bind(s.name.as_str())
                    .bind(s.kind.as_str())
                    .bind(s.platform.as_ref().map(|p| p.to_string()))
                    .bind(i64::try_from(s.size).map_err(|e| Error::Corrupt(e.to_string()))?)
                    .bind(s.digest.to_string())
                    .bind(serde_json::to_string(&derived).map_err(|e| Error::Corrupt(e.to_string()))?)
                    .bind(now.timestamp_millis())
                    .bind(i64::from(s.executable))
                    .bind(s.uri.as_ref().map(|u| u.to_string()));
            }
            q.execute(&mut *tx).await?;
        }
        Ok(fresh.len() as u64)
    }
}

/// Takes the build's row lock if it is a draft (the first statement of the
/// transaction is a write, so SQLite takes its write lock at once instead of
/// failing to upgrade a read lock later).
pub(crate) async fn lock_draft(tx: &mut sqlx::AnyConnection, id: &BuildId, now: DateTime<Utc>) -> Result<()> {
    let done = sqlx::query("UPDATE builds SET revision = revision + 1, updated_at = $1 WHERE id = $2 AND state = $3")
        .bind(now.timestamp_millis())
        .bind(id.as_str())
        .bind(BuildState::Draft.as_str())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let row = sqlx::query("SELECT state FROM builds WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    match row {
        None => Err(Error::BuildNotFound(id.clone())),
        Some(r) => {
            let state: String = r.try_get("state")?;
            let state =
                BuildState::parse(&state).ok_or_else(|| Error::Corrupt(format!("unknown build state {state:?}")))?;
            Err(Error::NotDraft { id: id.clone(), state })
        }
    }
}

/// The builds with these ids (those that exist), without their manifests.
pub(crate) async fn builds_by_id(conn: &mut sqlx::AnyConnection, ids: &[BuildId]) -> Result<Vec<BuildRow>> {
    rows_by_id(conn, LIST_COLUMNS, ids)
        .await?
        .iter()
        .map(build_from_row)
        .collect()
}

/// `columns` of the builds with these ids (those that exist).
async fn rows_by_id(conn: &mut sqlx::AnyConnection, columns: &str, ids: &[BuildId]) -> Result<Vec<AnyRow>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(INSERT_CHUNK) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT {columns} FROM builds b WHERE b.id IN ({})", marks.join(", "));
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id.as_str());
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

impl Tx {
    pub async fn insert_build(&mut self, b: &NewBuild) -> Result<()> {
        let expected: Vec<&str> = b.expected.iter().map(|e| e.as_str()).collect();
        let res = sqlx::query(
            "INSERT INTO builds (id, service, version, state, repo, branch, commit_sha, tag, author, message, \
             ci_url, builder_image, expected, created_at, updated_at, created_by, created_by_token, embargoed) \
             VALUES ($1, $2, $3, $17, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15, $16)",
        )
        .bind(b.id.as_str())
        .bind(b.service.as_str())
        .bind(b.version.to_string())
        .bind(b.source.repo.clone())
        .bind(b.source.branch.clone())
        .bind(b.source.commit.clone())
        .bind(b.source.tag.clone())
        .bind(b.source.author.clone())
        .bind(b.source.message.clone())
        .bind(b.ci.url.clone())
        .bind(b.ci.builder_image.map(|d| d.to_string()))
        .bind(serde_json::to_string(&expected).map_err(|e| Error::Corrupt(e.to_string()))?)
        .bind(b.created_at.timestamp_millis())
        .bind(b.created_by.clone())
        .bind(b.created_by_token.clone())
        .bind(i64::from(b.embargoed))
        .bind(BuildState::Draft.as_str())
        .execute(self.conn())
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                Err(Error::ServiceNotFound(b.service.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Seals a draft: under the build's lock, `make` turns the draft and its
    /// artifacts into a manifest (or refuses), and the manifest is stored;
    /// returns the sealed build. The outer error is the database's; the
    /// inner one is `make`'s (drop the transaction then).
    pub async fn seal_build<E>(
        &mut self,
        id: &BuildId,
        now: DateTime<Utc>,
        make: impl FnOnce(&BuildRow, &[ArtifactSpec]) -> Result<BuildManifest, E>,
    ) -> Result<Result<BuildRow, E>> {
        let tx = self.conn();
        lock_draft(&mut *tx, id, now).await?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM builds b WHERE b.id = $1"))
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let build = build_from_row(&row)?;
        let rows = sqlx::query(&format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE build_id = $1 ORDER BY name"
        ))
        .bind(id.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let artifacts: Vec<ArtifactSpec> = rows.iter().map(artifact_from_row).collect::<Result<_>>()?;
        let manifest = match make(&build, &artifacts) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let bytes = manifest.canonical_bytes();
        let text = String::from_utf8(bytes).map_err(|e| Error::Corrupt(e.to_string()))?;
        sqlx::query("UPDATE builds SET state = $5, sealed_at = $1, manifest_digest = $2, manifest = $3 WHERE id = $4")
            .bind(now.timestamp_millis())
            .bind(manifest.digest().to_string())
            .bind(text)
            .bind(id.as_str())
            .bind(BuildState::Sealed.as_str())
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM builds b WHERE b.id = $1"))
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await?;
        Ok(Ok(build_from_row(&row)?))
    }
}

impl Db {
    /// Abandons drafts not touched since `cutoff` and drops their artifacts,
    /// so their blobs become garbage. Returns the abandoned ids.
    pub async fn abandon_stale_drafts(&self, cutoff: DateTime<Utc>) -> Result<Vec<BuildId>> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "UPDATE builds SET state = $3, updated_at = $1 WHERE state = $4 AND updated_at < $2 RETURNING id",
        )
        .bind(Utc::now().timestamp_millis())
        .bind(cutoff.timestamp_millis())
        .bind(BuildState::Abandoned.as_str())
        .bind(BuildState::Draft.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let ids: Vec<BuildId> = parse_column(&rows, "id", BuildId::parse)?;
        sqlx::query("DELETE FROM artifacts WHERE build_id IN (SELECT id FROM builds WHERE state = $1)")
            .bind(BuildState::Abandoned.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// The drafts `abandon_stale_drafts(cutoff)` would abandon now, by id.
    pub async fn stale_drafts(&self, cutoff: DateTime<Utc>) -> Result<Vec<BuildId>> {
        let rows = sqlx::query("SELECT id FROM builds WHERE state = $2 AND updated_at < $1 ORDER BY id")
            .bind(cutoff.timestamp_millis())
            .bind(BuildState::Draft.as_str())
            .fetch_all(&self.pool)
            .await?;
        parse_column(&rows, "id", BuildId::parse)
    }

    /// Every digest a build still refers to once the drafts untouched since
    /// `draft_cutoff` are abandoned: the same set whether they already were
    /// (a gc) or not (a dry run, which must report what the gc would do).
    pub async fn digests_kept_after_abandoning(&self, draft_cutoff: DateTime<Utc>) -> Result<HashSet<Digest>> {
        let rows = sqlx::query(&format!(
            "SELECT DISTINCT a.digest FROM artifacts a JOIN builds b ON b.id = a.build_id \
             WHERE NOT (b.state = $2 AND b.updated_at < $1) AND a.{HAS_BLOB} \
             UNION SELECT DISTINCT r.digest FROM oci_manifest_refs r JOIN artifacts a ON a.digest = r.manifest \
             JOIN builds b ON b.id = a.build_id WHERE NOT (b.state = $2 AND b.updated_at < $1)"
        ))
        .bind(draft_cutoff.timestamp_millis())
        .bind(BuildState::Draft.as_str())
        .fetch_all(&self.pool)
        .await?;
        parse_column(&rows, "digest", Digest::parse)
    }

    /// The artifacts (and their builds) that need any of `digests`, by
    /// digest, then build and artifact name.
    pub async fn blob_users(&self, digests: &[Digest]) -> Result<Vec<BlobUse>> {
        let mut users = Vec::new();
        for chunk in digests.chunks(INSERT_CHUNK) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT a.digest, a.name, b.id, b.service, b.version, b.state FROM artifacts a \
                 JOIN builds b ON b.id = a.build_id WHERE a.{HAS_BLOB} AND a.digest IN ({})",
                placeholders.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for d in chunk {
                q = q.bind(d.to_string());
            }
            for r in q.fetch_all(&self.pool).await? {
                let state: String = r.try_get("state")?;
                users.push(BlobUse {
                    digest: parse(&r.try_get::<String, _>("digest")?, Digest::parse)?,
                    build: parse(&r.try_get::<String, _>("id")?, BuildId::parse)?,
                    service: parse(&r.try_get::<String, _>("service")?, ServiceName::parse)?,
                    version: parse(&r.try_get::<String, _>("version")?, Version::parse)?,
                    state: BuildState::parse(&state)
                        .ok_or_else(|| Error::Corrupt(format!("unknown build state {state:?}")))?,
                    artifact: parse(&r.try_get::<String, _>("name")?, ArtifactName::parse)?,
                });
            }
        }
        users.sort_by(|a, b| (a.digest, &a.build, &a.artifact).cmp(&(b.digest, &b.build, &b.artifact)));
        Ok(users)
    }

    /// Every digest some draft or sealed build refers to.
    pub async fn referenced_digests(&self) -> Result<HashSet<Digest>> {
        let rows = sqlx::query(&format!("SELECT DISTINCT digest FROM artifacts WHERE {HAS_BLOB}"))
            .fetch_all(&self.pool)
            .await?;
        parse_column(&rows, "digest", Digest::parse)
    }

    /// Whether any build refers to `digest` now (checked again by gc right
    /// before it deletes a blob).
    pub async fn is_referenced(&self, digest: &Digest) -> Result<bool> {
        let row = sqlx::query(&format!(
            "SELECT 1 AS one FROM artifacts WHERE digest = $1 AND {HAS_BLOB} \
             UNION SELECT 1 AS one FROM oci_manifest_refs r JOIN artifacts a ON a.digest = r.manifest \
             WHERE r.digest = $1"
        ))
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Records that a client uploaded `digest` or found it present and is
    /// about to register it.
    pub async fn claim_blobs(&self, digests: &[Digest], now: DateTime<Utc>) -> Result<()> {
        if digests.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in digests.chunks(INSERT_CHUNK) {
            let mut sql = String::from("INSERT INTO blob_claims (digest, claimed_at) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("(${}, ${})", i * 2 + 1, i * 2 + 2));
            }
            sql.push_str(" ON CONFLICT (digest) DO UPDATE SET claimed_at = excluded.claimed_at");
            let mut q = sqlx::query(&sql);
            for d in chunk {
                q = q.bind(d.to_string()).bind(now.timestamp_millis());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Digests claimed at or after `since`.
    pub async fn claimed_since(&self, since: DateTime<Utc>) -> Result<HashSet<Digest>> {
        let rows = sqlx::query("SELECT digest FROM blob_claims WHERE claimed_at >= $1")
            .bind(since.timestamp_millis())
            .fetch_all(&self.pool)
            .await?;
        parse_column(&rows, "digest", Digest::parse)
    }

    /// Forgets claims of blobs that are gone.
    pub async fn forget_claim(&self, digest: &Digest) -> Result<()> {
        sqlx::query("DELETE FROM blob_claims WHERE digest = $1")
            .bind(digest.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Db {
    /// The version of each build of a service that is not abandoned, with
    /// what deciding who may see it needs.
    pub async fn build_versions(&self, service: &ServiceName) -> Result<Vec<(Version, BuildAccessRow)>> {
        let rows = sqlx::query(&format!(
            "SELECT b.version, {ACCESS_COLUMNS} FROM builds b WHERE b.service = $1 AND b.state <> $2"
        ))
        .bind(service.as_str())
        .bind(BuildState::Abandoned.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse(&r.try_get::<String, _>("version")?, Version::parse)?,
                    access_from_row(r)?,
                ))
            })
            .collect()
    }
}

impl Tx {
    /// Marks a sealed build yanked; `false` if it was not sealed or was
    /// yanked already.
    pub async fn yank_build(
        &mut self,
        id: &BuildId,
        at: DateTime<Utc>,
        by: &str,
        reason: Option<&str>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE builds SET yanked_at = $1, yanked_by = $2, yank_reason = $3 \
             WHERE id = $4 AND state = $5 AND yanked_at IS NULL",
        )
        .bind(at.timestamp_millis())
        .bind(by)
        .bind(reason.map(str::to_string))
        .bind(id.as_str())
        .bind(BuildState::Sealed.as_str())
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks a sealed build critical; `false` if it was not sealed.
    pub async fn mark_critical(&mut self, id: &BuildId) -> Result<bool> {
        let done = sqlx::query("UPDATE builds SET critical = 1 WHERE id = $1 AND state = $2")
            .bind(id.as_str())
            .bind(BuildState::Sealed.as_str())
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Lifts a build's embargo; `false` if it had none.
    pub async fn unembargo_build(&mut self, id: &BuildId) -> Result<bool> {
        let done = sqlx::query("UPDATE builds SET embargoed = 0 WHERE id = $1 AND embargoed = 1")
            .bind(id.as_str())
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
