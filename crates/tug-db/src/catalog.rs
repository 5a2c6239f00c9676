//! What the public release catalog reads: a service's deployments into its
//! public environments grouped by build, and for one page of those builds
//! their rows, their artifacts and the builds between them (the
//! changelog). Each is one query whatever the page holds, so a catalog of
//! a thousand versions costs a handful of statements, never one per
//! version.
//!
//! It decides nothing about who may see what: the service layer passes the
//! public environments and applies the access rule to what comes back.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;
use tug_core::{ArtifactSpec, BuildId, BuildState, EnvName, ServiceName, Version};

use crate::builds::{access_from_row, build_from_row, ACCESS_COLUMNS, INSERT_CHUNK, LIST_COLUMNS};
use crate::{artifact_from_row, millis, parse, BuildAccessRow, BuildRow, Db, Result, ARTIFACT_COLUMNS};

/// One build's deployments into one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedRow {
    pub build: BuildAccessRow,
    pub environment: EnvName,
    /// When it was first deployed there.
    pub first_deployed_at: DateTime<Utc>,
    /// Its newest deployment there: the environment runs the build with
    /// the highest.
    pub last_seq: i64,
}

/// The most builds one changelog query reads (a page's changelogs
/// together); a longer range is cut and said to be.
pub const CHANGELOG_ROWS: u32 = 2000;

impl Db {
    /// Every (build, environment) pair of `service` with a deployment into
    /// one of `environments`, with the build's access facts.
    pub async fn published(&self, service: &ServiceName, environments: &[EnvName]) -> Result<Vec<PublishedRow>> {
        if environments.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = (0..environments.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT {ACCESS_COLUMNS}, p.environment, p.first_at, p.last_seq FROM \
             (SELECT d.build_id, d.environment, MIN(d.deployed_at) AS first_at, MAX(d.seq) AS last_seq \
              FROM deployments d WHERE d.service = $1 AND d.environment IN ({}) \
              GROUP BY d.build_id, d.environment) p \
             JOIN builds b ON b.id = p.build_id",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(service.as_str());
        for e in environments {
            q = q.bind(e.as_str());
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(PublishedRow {
                    build: access_from_row(r)?,
                    environment: parse(&r.try_get::<String, _>("environment")?, EnvName::parse)?,
                    first_deployed_at: millis(r.try_get("first_at")?)?,
                    last_seq: r.try_get("last_seq")?,
                })
            })
            .collect()
    }

    /// The rows of `ids` (without manifest text), in no set order.
    pub async fn builds_by_id(&self, ids: &[BuildId]) -> Result<Vec<BuildRow>> {
        crate::builds::builds_by_id(&mut *self.pool.acquire().await?, ids).await
    }

    /// The artifacts of each of `ids`, by name.
    pub async fn artifacts_of(&self, ids: &[BuildId]) -> Result<HashMap<BuildId, Vec<ArtifactSpec>>> {
        let mut out: HashMap<BuildId, Vec<ArtifactSpec>> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(INSERT_CHUNK) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT build_id, {ARTIFACT_COLUMNS} FROM artifacts WHERE build_id IN ({}) ORDER BY build_id, name",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            for r in q.fetch_all(&self.pool).await? {
                let id = parse(&r.try_get::<String, _>("build_id")?, BuildId::parse)?;
                out.entry(id).or_default().push(artifact_from_row(&r)?);
            }
        }
        Ok(out)
    }

    /// The sealed builds of `service` created after `after` (if given) and
    /// no later than `until`, newest first, at most [`CHANGELOG_ROWS`];
    /// embargoed builds are left out here already.
    pub async fn sealed_between(
        &self,
        service: &ServiceName,
        after: Option<DateTime<Utc>>,
        until: DateTime<Utc>,
    ) -> Result<Vec<BuildRow>> {
        let sql = format!(
            "SELECT {LIST_COLUMNS} FROM builds b WHERE b.service = $1 AND b.state = $2 AND b.embargoed = 0 \
             AND b.created_at > $3 AND b.created_at <= $4 ORDER BY b.created_at DESC, b.id DESC LIMIT {CHANGELOG_ROWS}"
        );
        sqlx::query(&sql)
            .bind(service.as_str())
            .bind(BuildState::Sealed.as_str())
            .bind(after.map_or(i64::MIN, |t| t.timestamp_millis()))
            .bind(until.timestamp_millis())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(build_from_row)
            .collect()
    }

    /// The sealed builds of `service` that carry `version`.
    pub async fn sealed_of_version(&self, service: &ServiceName, version: &Version) -> Result<Vec<BuildId>> {
        let rows = sqlx::query("SELECT id FROM builds WHERE service = $1 AND version = $2 AND state = $3")
            .bind(service.as_str())
            .bind(version.to_string())
            .bind(BuildState::Sealed.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| parse(&r.try_get::<String, _>("id")?, BuildId::parse))
            .collect()
    }

    /// What a service's catalog is computed from, as one number that only
    /// grows: the id of the service's newest event. Every change a catalog
    /// could show (a build created, sealed, yanked or unembargoed, a
    /// deployment, a pipeline revision) is recorded in the event log in the
    /// transaction that makes it, so an answer computed at one stamp stands
    /// while the stamp does; one lookup in the `events_service` index.
    pub async fn catalog_stamp(&self, service: &ServiceName) -> Result<i64> {
        let r = sqlx::query("SELECT COALESCE(MAX(id), 0) AS newest FROM events WHERE service = $1")
            .bind(service.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get("newest")?)
    }
}
