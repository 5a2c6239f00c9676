//! The OCI registry's metadata: manifests and what they refer to, free
//! tags, upload sessions and the key that signs bearer tokens. The images
//! of builds are artifacts (kind `oci`) of those builds; the tags derived
//! from builds and environments are read from the builds and the
//! deployment log here, never copied.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;
use tug_core::{ArtifactName, ArtifactSpec, BuildId, BuildState, Digest, EnvName, ServiceName, Version};

use crate::builds::{access_from_row, insert_artifacts, lock_draft, parse_column, ACCESS_COLUMNS};
use crate::{millis, opt_parse, parse, BuildAccessRow, Db, Result};

/// A manifest stored in a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciManifestRow {
    pub repository: String,
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// The manifest's annotations as JSON text, for the referrers API.
    pub annotations: Option<String>,
    pub size: u64,
    pub created_at: DateTime<Utc>,
}

const MANIFEST_COLUMNS: &str = "repository, digest, media_type, artifact_type, subject, annotations, size, created_at";

fn manifest_from_row(r: &AnyRow) -> Result<OciManifestRow> {
    Ok(OciManifestRow {
        repository: r.try_get("repository")?,
        digest: parse(&r.try_get::<String, _>("digest")?, Digest::parse)?,
        media_type: r.try_get("media_type")?,
        artifact_type: r.try_get("artifact_type")?,
        subject: opt_parse(r.try_get("subject")?, Digest::parse)?,
        annotations: r.try_get("annotations")?,
        size: u64::try_from(r.try_get::<i64, _>("size")?).unwrap_or(0),
        created_at: millis(r.try_get("created_at")?)?,
    })
}

/// Where a pushed manifest goes besides its repository.
#[derive(Debug, Clone)]
pub enum ManifestPlacement {
    /// Nowhere else: pushed by digest.
    Untagged,
    /// Under a free tag.
    Tag(String),
    /// As the `oci` artifact of a draft build.
    Build { id: BuildId, artifact: ArtifactSpec },
}

/// An image of a build (its `oci` artifact) with what deciding who may see
/// the build needs.
#[derive(Debug, Clone)]
pub struct BuildImage {
    pub digest: Digest,
    pub build: BuildAccessRow,
    pub version: Version,
    pub state: BuildState,
}

fn image_from_row(r: &AnyRow) -> Result<BuildImage> {
    let state: String = r.try_get("state")?;
    Ok(BuildImage {
        digest: parse(&r.try_get::<String, _>("digest")?, Digest::parse)?,
        build: access_from_row(r)?,
        version: parse(&r.try_get::<String, _>("version")?, Version::parse)?,
        state: BuildState::parse(&state)
            .ok_or_else(|| crate::Error::Corrupt(format!("unknown build state {state:?}")))?,
    })
}

const IMAGE_SELECT: &str = "SELECT a.digest, b.version, b.state, b.id, b.service, b.embargoed, b.created_by_token \
     FROM artifacts a JOIN builds b ON b.id = a.build_id";

impl Db {
    /// The secret named `name`, created from `fresh` by the first server
    /// that asks (every other server then reads the same one).
    pub async fn oci_key(&self, name: &str, fresh: &str, now: DateTime<Utc>) -> Result<String> {
        sqlx::query(
            "INSERT INTO oci_keys (name, secret, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(fresh)
        .bind(now.timestamp_millis())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT secret FROM oci_keys WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("secret")?)
    }

    /// Records a new upload session.
    pub async fn insert_oci_upload(&self, id: &str, repository: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query("INSERT INTO oci_uploads (id, repository, started_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(repository)
            .bind(now.timestamp_millis())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The repository of an upload session, if it is open.
    pub async fn oci_upload(&self, id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT repository FROM oci_uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("repository")).transpose()?)
    }

    /// Closes an upload session; `false` if it was not open.
    pub async fn delete_oci_upload(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM oci_uploads WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The upload sessions started before `cutoff`.
    pub async fn stale_oci_uploads(&self, cutoff: DateTime<Utc>) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM oci_uploads WHERE started_at < $1")
            .bind(cutoff.timestamp_millis())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// Stores a manifest, what it refers to, and where it goes, in one
    /// transaction: all of it or nothing. A build's image goes in as its
    /// artifact, only while the build is a draft.
    pub async fn put_oci_manifest(
        &self,
        m: &OciManifestRow,
        refs: &[Digest],
        placement: &ManifestPlacement,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let now = m.created_at;
        // A build's lock first, so that a seal racing this push waits
        // (or wins, and this push is refused).
        if let ManifestPlacement::Build { id, artifact } = placement {
            lock_draft(&mut tx, id, now).await?;
            insert_artifacts(&mut tx, id, std::slice::from_ref(artifact), now).await?;
        }
        sqlx::query(&format!(
            "INSERT INTO oci_manifests ({MANIFEST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (repository, digest) DO NOTHING"
        ))
        .bind(&m.repository)
        .bind(m.digest.to_string())
        .bind(&m.media_type)
        .bind(m.artifact_type.as_deref())
        .bind(m.subject.map(|s| s.to_string()))
        .bind(m.annotations.as_deref())
        .bind(i64::try_from(m.size).map_err(|e| crate::Error::Corrupt(e.to_string()))?)
        .bind(now.timestamp_millis())
        .execute(&mut *tx)
        .await?;
        for r in refs {
            sqlx::query("INSERT INTO oci_manifest_refs (manifest, digest) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(m.digest.to_string())
                .bind(r.to_string())
                .execute(&mut *tx)
                .await?;
        }
        if let ManifestPlacement::Tag(tag) = placement {
            sqlx::query(
                "INSERT INTO oci_tags (repository, tag, digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repository, tag) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
            )
            .bind(&m.repository)
            .bind(tag)
            .bind(m.digest.to_string())
            .bind(now.timestamp_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A manifest of a repository.
    pub async fn oci_manifest(&self, repository: &str, digest: &Digest) -> Result<Option<OciManifestRow>> {
        let row = sqlx::query(&format!(
            "SELECT {MANIFEST_COLUMNS} FROM oci_manifests WHERE repository = $1 AND digest = $2"
        ))
        .bind(repository)
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(manifest_from_row).transpose()
    }

    /// The digests a manifest refers to (config, layers, children).
    pub async fn oci_manifest_refs(&self, manifest: &Digest) -> Result<Vec<Digest>> {
        let rows = sqlx::query("SELECT digest FROM oci_manifest_refs WHERE manifest = $1")
            .bind(manifest.to_string())
            .fetch_all(&self.pool)
            .await?;
        parse_column(&rows, "digest", Digest::parse)
    }

    /// The manifests of a repository whose subject is `subject`.
    pub async fn oci_referrers(&self, repository: &str, subject: &Digest) -> Result<Vec<OciManifestRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {MANIFEST_COLUMNS} FROM oci_manifests WHERE repository = $1 AND subject = $2 ORDER BY digest"
        ))
        .bind(repository)
        .bind(subject.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(manifest_from_row).collect()
    }

    /// What a free tag of a repository points at.
    pub async fn oci_tag(&self, repository: &str, tag: &str) -> Result<Option<Digest>> {
        let row = sqlx::query("SELECT digest FROM oci_tags WHERE repository = $1 AND tag = $2")
            .bind(repository)
            .bind(tag)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| parse(&r.try_get::<String, _>("digest")?, Digest::parse))
            .transpose()
    }

    /// The free tags of a repository.
    pub async fn oci_tags(&self, repository: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT tag FROM oci_tags WHERE repository = $1")
            .bind(repository)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("tag")?)).collect()
    }

    /// Removes a free tag; `false` if there was none.
    pub async fn delete_oci_tag(&self, repository: &str, tag: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM oci_tags WHERE repository = $1 AND tag = $2")
            .bind(repository)
            .bind(tag)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes a manifest from a repository with the free tags that point
    /// at it; `false` if it was not there. Its blobs stay until gc.
    pub async fn delete_oci_manifest(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM oci_manifests WHERE repository = $1 AND digest = $2")
            .bind(repository)
            .bind(digest.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM oci_tags WHERE repository = $1 AND digest = $2")
            .bind(repository)
            .bind(digest.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether a repository holds `digest` as a manifest or as something
    /// one of its manifests refers to.
    pub async fn oci_repository_has(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM oci_manifests WHERE repository = $1 AND digest = $2 \
             UNION SELECT 1 AS one FROM oci_manifests m JOIN oci_manifest_refs r ON r.manifest = m.digest \
             WHERE m.repository = $1 AND r.digest = $2",
        )
        .bind(repository)
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// The builds whose image `image` is the manifest `digest`.
    pub async fn oci_manifest_builds(
        &self,
        service: &ServiceName,
        image: &ArtifactName,
        digest: &Digest,
    ) -> Result<Vec<BuildImage>> {
        let rows = sqlx::query(&format!(
            "{IMAGE_SELECT} WHERE b.service = $1 AND a.name = $2 AND a.kind = 'oci' AND a.digest = $3"
        ))
        .bind(service.as_str())
        .bind(image.as_str())
        .bind(digest.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(image_from_row).collect()
    }

    /// The image `image` of one build.
    pub async fn oci_build_image(&self, build: &BuildId, image: &ArtifactName) -> Result<Option<BuildImage>> {
        let row = sqlx::query(&format!(
            "{IMAGE_SELECT} WHERE b.id = $1 AND a.name = $2 AND a.kind = 'oci'"
        ))
        .bind(build.as_str())
        .bind(image.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(image_from_row).transpose()
    }

    /// The images `image` of every build of a service that is not
    /// abandoned, newest first.
    pub async fn oci_build_images(&self, service: &ServiceName, image: &ArtifactName) -> Result<Vec<BuildImage>> {
        let rows = sqlx::query(&format!(
            "{IMAGE_SELECT} WHERE b.service = $1 AND a.name = $2 AND a.kind = 'oci' AND b.state <> $3 \
             ORDER BY b.created_at DESC"
        ))
        .bind(service.as_str())
        .bind(image.as_str())
        .bind(BuildState::Abandoned.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(image_from_row).collect()
    }

    /// The image `image` of the build each environment of a service runs
    /// now, read from the deployment log in one query, so a promotion
    /// moves every environment tag at once.
    pub async fn oci_environment_images(
        &self,
        service: &ServiceName,
        image: &ArtifactName,
        env: Option<&EnvName>,
    ) -> Result<Vec<(EnvName, BuildImage)>> {
        let rows = sqlx::query(&format!(
            "SELECT e.name AS env, a.digest, b.version, b.state, {ACCESS_COLUMNS} FROM environments e \
             JOIN deployments d ON d.service = e.service AND d.environment = e.name AND d.seq = e.seq \
             JOIN builds b ON b.id = d.build_id \
             JOIN artifacts a ON a.build_id = b.id AND a.name = $2 AND a.kind = 'oci' \
             WHERE e.service = $1 AND ($3 = '' OR e.name = $3) ORDER BY e.name"
        ))
        .bind(service.as_str())
        .bind(image.as_str())
        .bind(env.map_or("", |e| e.as_str()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse(&r.try_get::<String, _>("env")?, EnvName::parse)?,
                    image_from_row(r)?,
                ))
            })
            .collect()
    }

    /// The manifests gc keeps (those tagged, those that are images of
    /// builds it keeps, those pushed since `young`, and those whose subject
    /// is kept) and every digest they refer to.
    pub async fn oci_kept(&self, draft_cutoff: DateTime<Utc>, young: DateTime<Utc>) -> Result<HashSet<Digest>> {
        let rows = sqlx::query(
            "WITH kept AS ( \
               SELECT digest FROM oci_tags \
               UNION SELECT a.digest FROM artifacts a JOIN builds b ON b.id = a.build_id \
                 WHERE a.kind = 'oci' AND NOT (b.state = $2 AND b.updated_at < $1) \
               UNION SELECT digest FROM oci_manifests WHERE created_at >= $3 \
             ), with_referrers AS ( \
               SELECT digest FROM kept \
               UNION SELECT m.digest FROM oci_manifests m JOIN kept k ON m.subject = k.digest \
             ) \
             SELECT digest FROM with_referrers \
             UNION SELECT r.digest FROM oci_manifest_refs r JOIN with_referrers w ON r.manifest = w.digest",
        )
        .bind(draft_cutoff.timestamp_millis())
        .bind(BuildState::Draft.as_str())
        .bind(young.timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        parse_column(&rows, "digest", Digest::parse)
    }

    /// Forgets the manifests pushed before `young` (and what they refer
    /// to) that are not in `kept`; returns how many manifest rows went.
    pub async fn forget_oci_manifests(&self, kept: &HashSet<Digest>, young: DateTime<Utc>) -> Result<u64> {
        let rows = sqlx::query("SELECT DISTINCT digest FROM oci_manifests WHERE created_at < $1")
            .bind(young.timestamp_millis())
            .fetch_all(&self.pool)
            .await?;
        let all: Vec<Digest> = parse_column(&rows, "digest", Digest::parse)?;
        let mut gone = 0;
        for d in all.iter().filter(|d| !kept.contains(d)) {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query("DELETE FROM oci_manifests WHERE digest = $1")
                .bind(d.to_string())
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM oci_manifest_refs WHERE manifest = $1")
                .bind(d.to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            gone += done.rows_affected();
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_columns_cover_the_access_facts() {
        for column in ACCESS_COLUMNS.split(", ") {
            assert!(IMAGE_SELECT.contains(column), "{column}");
        }
    }
}
