//! Debian packages' control paragraphs (the `deb_packages` table), and the
//! packages of a set of builds as APT indexes list them.

use chrono::{DateTime, Utc};
use sqlx::Row;
use tug_core::{ArtifactName, BuildId, Digest};

use crate::{parse, Db, Result};

/// A package's control paragraph, as read from its blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebRow {
    pub digest: Digest,
    pub package: String,
    pub version: String,
    pub architecture: String,
    pub control: String,
}

/// A `deb` artifact of a build, with its package's control paragraph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebArtifact {
    pub build: BuildId,
    pub name: ArtifactName,
    pub size: u64,
    pub digest: Digest,
    pub control: String,
}

/// Builds per query: far under both databases' limits on parameters.
const CHUNK: usize = 100;

impl Db {
    /// Which of `digests` have a stored control paragraph.
    pub async fn known_debs(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for chunk in digests.chunks(CHUNK) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("SELECT digest FROM deb_packages WHERE digest IN ({})", marks.join(", "));
            let mut q = sqlx::query(&sql);
            for d in chunk {
                q = q.bind(d.to_string());
            }
            for r in q.fetch_all(&self.pool).await? {
                let d: String = r.try_get("digest")?;
                out.push(parse(&d, Digest::parse)?);
            }
        }
        Ok(out)
    }

    /// Stores control paragraphs; a digest stored already keeps its row
    /// (the same blob has the same control file).
    pub async fn save_debs(&self, rows: &[DebRow], now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO deb_packages (digest, package, version, architecture, control, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (digest) DO NOTHING",
            )
            .bind(r.digest.to_string())
            .bind(&r.package)
            .bind(&r.version)
            .bind(&r.architecture)
            .bind(&r.control)
            .bind(now.timestamp_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The `deb` artifacts of `builds` whose packages were read, in build
    /// and name order.
    pub async fn deb_artifacts(&self, builds: &[BuildId]) -> Result<Vec<DebArtifact>> {
        let mut out = Vec::new();
        for chunk in builds.chunks(CHUNK) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT a.build_id, a.name, a.size, a.digest, d.control FROM artifacts a \
                 JOIN deb_packages d ON d.digest = a.digest \
                 WHERE a.kind = 'deb' AND a.build_id IN ({}) ORDER BY a.build_id, a.name",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for b in chunk {
                q = q.bind(b.as_str());
            }
            for r in q.fetch_all(&self.pool).await? {
                let build: String = r.try_get("build_id")?;
                let name: String = r.try_get("name")?;
                let size: i64 = r.try_get("size")?;
                let digest: String = r.try_get("digest")?;
                out.push(DebArtifact {
                    build: parse(&build, BuildId::parse)?,
                    name: parse(&name, ArtifactName::parse)?,
                    size: u64::try_from(size).map_err(|e| crate::Error::Corrupt(e.to_string()))?,
                    digest: parse(&digest, Digest::parse)?,
                    control: r.try_get("control")?,
                });
            }
        }
        Ok(out)
    }
}
