//! What Tugboat writes into git repositories for each deployment: one row
//! per deployment and target (a GitOps commit, a source repository's
//! environment tag) in `gitops_deliveries`, made by the repository's
//! consumer when it reads the deployment's event and updated as the
//! writer tries it. The rows make redelivered events harmless (a row is
//! made once), let a refused delivery be retried on its own schedule
//! without holding the others back, and are what `tug status` and `tug
//! history` show.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;
use tug_core::pipeline::gitops::{DeliveryState, DeliveryTarget};
use tug_core::{BuildId, EnvName, ServiceName};

use crate::{millis, parse, Db, PipelineRow, Result};

/// A delivery to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGitDelivery {
    pub target: DeliveryTarget,
    pub service: ServiceName,
    pub environment: EnvName,
    pub seq: i64,
    pub repo: String,
    pub build: BuildId,
    pub event_id: i64,
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitDeliveryRow {
    pub target: DeliveryTarget,
    pub service: ServiceName,
    pub environment: EnvName,
    pub seq: i64,
    pub repo: String,
    pub build: BuildId,
    pub event_id: i64,
    pub state: DeliveryState,
    pub commit_sha: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The outcome of one try of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitDeliveryOutcome {
    pub state: DeliveryState,
    pub commit_sha: Option<String>,
    pub error: Option<String>,
    /// When to try again (for [`DeliveryState::Failed`]).
    pub next_attempt: DateTime<Utc>,
    /// Whether this outcome was a try (counted in `attempts`).
    pub tried: bool,
}

const COLUMNS: &str = "target, service, environment, seq, repo, build_id, event_id, state, commit_sha, attempts, \
                       last_error, next_attempt, updated_at";

fn delivery_from_row(r: &AnyRow) -> Result<GitDeliveryRow> {
    let target: String = r.try_get("target")?;
    let state: String = r.try_get("state")?;
    Ok(GitDeliveryRow {
        target: parse(&target, |t| DeliveryTarget::parse(t).ok_or("unknown delivery target"))?,
        service: parse(&r.try_get::<String, _>("service")?, ServiceName::parse)?,
        environment: parse(&r.try_get::<String, _>("environment")?, EnvName::parse)?,
        seq: r.try_get("seq")?,
        repo: r.try_get("repo")?,
        build: parse(&r.try_get::<String, _>("build_id")?, BuildId::parse)?,
        event_id: r.try_get("event_id")?,
        state: parse(&state, |s| DeliveryState::parse(s).ok_or("unknown delivery state"))?,
        commit_sha: r.try_get("commit_sha")?,
        attempts: r.try_get("attempts")?,
        last_error: r.try_get("last_error")?,
        next_attempt: millis(r.try_get("next_attempt")?)?,
        updated_at: millis(r.try_get("updated_at")?)?,
    })
}

impl Db {
    /// Makes the deliveries that do not exist yet, in one transaction (a
    /// redelivered event's rows exist already and are left as they are).
    pub async fn add_deliveries(&self, deliveries: &[NewGitDelivery], now: DateTime<Utc>) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for d in deliveries {
            sqlx::query(
                "INSERT INTO gitops_deliveries (target, service, environment, seq, repo, build_id, event_id, state, \
                 next_attempt, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8) \
                 ON CONFLICT (target, service, environment, seq) DO NOTHING",
            )
            .bind(d.target.as_str())
            .bind(d.service.as_str())
            .bind(d.environment.as_str())
            .bind(d.seq)
            .bind(&d.repo)
            .bind(d.build.to_string())
            .bind(d.event_id)
            .bind(now.timestamp_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The deliveries into `repo` not done yet (pending or failed), in the
    /// order of their deployments' events, at most `limit`.
    pub async fn open_deliveries(&self, repo: &str, limit: u32) -> Result<Vec<GitDeliveryRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM gitops_deliveries WHERE repo = $1 AND state IN ('pending', 'failed') \
             ORDER BY event_id, target LIMIT $2"
        ))
        .bind(repo)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    /// Records the outcomes of tries of deliveries, in one transaction.
    pub async fn finish_deliveries(
        &self,
        done: &[(&GitDeliveryRow, GitDeliveryOutcome)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (d, outcome) in done {
            sqlx::query(
                "UPDATE gitops_deliveries SET state = $1, commit_sha = COALESCE($2, commit_sha), last_error = $3, \
                 next_attempt = $4, attempts = attempts + $5, updated_at = $6 \
                 WHERE target = $7 AND service = $8 AND environment = $9 AND seq = $10",
            )
            .bind(outcome.state.as_str())
            .bind(outcome.commit_sha.clone())
            .bind(outcome.error.clone())
            .bind(outcome.next_attempt.timestamp_millis())
            .bind(i64::from(outcome.tried))
            .bind(now.timestamp_millis())
            .bind(d.target.as_str())
            .bind(d.service.as_str())
            .bind(d.environment.as_str())
            .bind(d.seq)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The deliveries of the deployments `seqs` of one environment.
    pub async fn deliveries_of(
        &self,
        service: &ServiceName,
        env: &EnvName,
        seqs: &[i64],
    ) -> Result<Vec<GitDeliveryRow>> {
        let (Some(lo), Some(hi)) = (seqs.iter().min(), seqs.iter().max()) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM gitops_deliveries WHERE service = $1 AND environment = $2 \
             AND seq BETWEEN $3 AND $4 ORDER BY seq, target"
        ))
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(*lo)
        .bind(*hi)
        .fetch_all(&self.pool)
        .await?;
        let rows = rows.iter().map(delivery_from_row).collect::<Result<Vec<_>>>()?;
        Ok(rows.into_iter().filter(|r| seqs.contains(&r.seq)).collect())
    }

    /// The newest pipeline of every service.
    pub async fn current_pipelines(&self) -> Result<Vec<PipelineRow>> {
        let rows = sqlx::query(
            "SELECT p.service, p.revision, p.spec, p.changed_at, p.changed_by FROM pipelines p \
             WHERE p.revision = (SELECT MAX(q.revision) FROM pipelines q WHERE q.service = p.service) \
             ORDER BY p.service",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(crate::deployments::pipeline_from_row).collect()
    }
}
