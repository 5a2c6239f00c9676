//! Pipelines and deployments. The deployment log is append-only; the newest
//! row of an environment is what it should run. A deployment is written
//! with a compare-and-set on the environment's sequence number, so of two
//! concurrent deployments to one environment exactly one wins, on any
//! number of servers sharing the database.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;
use tug_core::{BuildId, DeployKind, EnvName, ServiceName};

use crate::{millis, opt_millis, opt_parse, parse, Db, Error, Result};

/// One revision of a service's pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineRow {
    pub service: ServiceName,
    pub revision: i64,
    /// The pipeline as canonical TOML.
    pub spec: String,
    pub changed_at: DateTime<Utc>,
    pub changed_by: Option<String>,
}

/// A deployment to record.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub id: String,
    pub service: ServiceName,
    pub environment: EnvName,
    pub build: BuildId,
    pub kind: DeployKind,
    pub requested_by: Option<String>,
    pub reason: Option<String>,
    pub override_freeze: bool,
    pub at: DateTime<Utc>,
}

/// A recorded deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRow {
    pub id: String,
    pub service: ServiceName,
    pub environment: EnvName,
    pub seq: i64,
    pub build: BuildId,
    pub kind: DeployKind,
    pub requested_by: Option<String>,
    pub deployed_at: DateTime<Utc>,
    /// What ran in the environment before.
    pub replaced: Option<BuildId>,
    pub reason: Option<String>,
    pub override_freeze: bool,
}

/// An environment's position in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvState {
    /// The sequence number of the newest deployment (0: none yet). Pass it
    /// back to [`Db::deploy`] as the expected value.
    pub seq: i64,
    pub auto_release_held: bool,
    pub current: Option<DeploymentRow>,
}

fn kind(s: &str) -> Result<DeployKind> {
    match s {
        "release" => Ok(DeployKind::Release),
        "promote" => Ok(DeployKind::Promote),
        "rollback" => Ok(DeployKind::Rollback),
        "auto_release" => Ok(DeployKind::AutoRelease),
        other => Err(Error::Corrupt(format!("unknown deployment kind {other:?}"))),
    }
}

const COLUMNS: &str =
    "id, service, environment, seq, build_id, kind, requested_by, deployed_at, replaced_build, reason, override";

fn deployment_from_row(r: &AnyRow) -> Result<DeploymentRow> {
    Ok(DeploymentRow {
        id: r.try_get("id")?,
        service: parse(&r.try_get::<String, _>("service")?, ServiceName::parse)?,
        environment: parse(&r.try_get::<String, _>("environment")?, EnvName::parse)?,
        seq: r.try_get("seq")?,
        build: parse(&r.try_get::<String, _>("build_id")?, BuildId::parse)?,
        kind: kind(&r.try_get::<String, _>("kind")?)?,
        requested_by: r.try_get("requested_by")?,
        deployed_at: millis(r.try_get("deployed_at")?)?,
        replaced: opt_parse(r.try_get("replaced_build")?, BuildId::parse)?,
        reason: r.try_get("reason")?,
        override_freeze: r.try_get::<i64, _>("override")? != 0,
    })
}

fn pipeline_from_row(r: &AnyRow) -> Result<PipelineRow> {
    Ok(PipelineRow {
        service: parse(&r.try_get::<String, _>("service")?, ServiceName::parse)?,
        revision: r.try_get("revision")?,
        spec: r.try_get("spec")?,
        changed_at: millis(r.try_get("changed_at")?)?,
        changed_by: r.try_get("changed_by")?,
    })
}

impl Db {
    /// Stores a new revision of a service's pipeline. Two concurrent
    /// changes cannot both take one revision number (primary key); the
    /// loser gets [`Error::Conflict`].
    pub async fn save_pipeline(
        &self,
        service: &ServiceName,
        spec: &str,
        at: DateTime<Utc>,
        by: Option<String>,
    ) -> Result<PipelineRow> {
        let current = self.pipeline(service).await?.map_or(0, |p| p.revision);
        let res = sqlx::query(
            "INSERT INTO pipelines (service, revision, spec, changed_at, changed_by) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(service.as_str())
        .bind(current + 1)
        .bind(spec)
        .bind(at.timestamp_millis())
        .bind(by.clone())
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(Error::Conflict(format!(
                    "the pipeline of {service} changed meanwhile; apply again"
                )))
            }
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                return Err(Error::ServiceNotFound(service.clone()))
            }
            Err(e) => return Err(e.into()),
        }
        Ok(PipelineRow {
            service: service.clone(),
            revision: current + 1,
            spec: spec.to_string(),
            changed_at: at,
            changed_by: by,
        })
    }

    /// The newest pipeline of a service.
    pub async fn pipeline(&self, service: &ServiceName) -> Result<Option<PipelineRow>> {
        let row = sqlx::query(
            "SELECT service, revision, spec, changed_at, changed_by FROM pipelines WHERE service = $1 \
             ORDER BY revision DESC LIMIT 1",
        )
        .bind(service.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(pipeline_from_row).transpose()
    }

    /// Every revision of a service's pipeline, newest first.
    pub async fn pipeline_history(&self, service: &ServiceName) -> Result<Vec<PipelineRow>> {
        let rows = sqlx::query(
            "SELECT service, revision, spec, changed_at, changed_by FROM pipelines WHERE service = $1 \
             ORDER BY revision DESC",
        )
        .bind(service.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pipeline_from_row).collect()
    }

    /// Where an environment's log stands.
    pub async fn env_state(&self, service: &ServiceName, env: &EnvName) -> Result<EnvState> {
        let row = sqlx::query("SELECT seq, auto_release_held FROM environments WHERE service = $1 AND name = $2")
            .bind(service.as_str())
            .bind(env.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(EnvState::default());
        };
        let seq: i64 = row.try_get("seq")?;
        let held = row.try_get::<i64, _>("auto_release_held")? != 0;
        let current = if seq > 0 {
            let r = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM deployments WHERE service = $1 AND environment = $2 AND seq = $3"
            ))
            .bind(service.as_str())
            .bind(env.as_str())
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
            r.as_ref().map(deployment_from_row).transpose()?
        } else {
            None
        };
        Ok(EnvState {
            seq,
            auto_release_held: held,
            current,
        })
    }

    /// Appends a deployment if the environment is still at `expected_seq`
    /// (what [`Db::env_state`] said when the policies were checked). When
    /// another deployment got there first: [`Error::Conflict`], nothing
    /// written. `hold` sets or clears the environment's auto-release hold in
    /// the same transaction.
    pub async fn deploy(&self, d: &NewDeployment, expected_seq: i64, hold: Option<bool>) -> Result<DeploymentRow> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO environments (service, name, seq) VALUES ($1, $2, 0) ON CONFLICT (service, name) DO NOTHING",
        )
        .bind(d.service.as_str())
        .bind(d.environment.as_str())
        .execute(&mut *tx)
        .await?;
        let moved = sqlx::query("UPDATE environments SET seq = seq + 1 WHERE service = $1 AND name = $2 AND seq = $3")
            .bind(d.service.as_str())
            .bind(d.environment.as_str())
            .bind(expected_seq)
            .execute(&mut *tx)
            .await?;
        if moved.rows_affected() != 1 {
            return Err(Error::Conflict(format!(
                "another deployment to {} of {} happened meanwhile; check tug status and try again",
                d.environment, d.service
            )));
        }
        if let Some(h) = hold {
            sqlx::query("UPDATE environments SET auto_release_held = $1 WHERE service = $2 AND name = $3")
                .bind(i64::from(h))
                .bind(d.service.as_str())
                .bind(d.environment.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let replaced: Option<String> = if expected_seq > 0 {
            sqlx::query("SELECT build_id FROM deployments WHERE service = $1 AND environment = $2 AND seq = $3")
                .bind(d.service.as_str())
                .bind(d.environment.as_str())
                .bind(expected_seq)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("build_id"))
                .transpose()?
        } else {
            None
        };
        sqlx::query(
            "INSERT INTO deployments (id, service, environment, seq, build_id, kind, requested_by, deployed_at, \
             replaced_build, reason, override) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&d.id)
        .bind(d.service.as_str())
        .bind(d.environment.as_str())
        .bind(expected_seq + 1)
        .bind(d.build.as_str())
        .bind(d.kind.as_str())
        .bind(d.requested_by.clone())
        .bind(d.at.timestamp_millis())
        .bind(replaced.clone())
        .bind(d.reason.clone())
        .bind(i64::from(d.override_freeze))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(DeploymentRow {
            id: d.id.clone(),
            service: d.service.clone(),
            environment: d.environment.clone(),
            seq: expected_seq + 1,
            build: d.build.clone(),
            kind: d.kind,
            requested_by: d.requested_by.clone(),
            deployed_at: d.at,
            replaced: replaced.as_deref().map(|b| parse(b, BuildId::parse)).transpose()?,
            reason: d.reason.clone(),
            override_freeze: d.override_freeze,
        })
    }

    /// Sets or clears an environment's auto-release hold.
    pub async fn set_auto_release_hold(&self, service: &ServiceName, env: &EnvName, held: bool) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO environments (service, name, seq) VALUES ($1, $2, 0) ON CONFLICT (service, name) DO NOTHING",
        )
        .bind(service.as_str())
        .bind(env.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE environments SET auto_release_held = $1 WHERE service = $2 AND name = $3")
            .bind(i64::from(held))
            .bind(service.as_str())
            .bind(env.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// An environment's deployments, newest first.
    pub async fn history(&self, service: &ServiceName, env: &EnvName, limit: u32) -> Result<Vec<DeploymentRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM deployments WHERE service = $1 AND environment = $2 ORDER BY seq DESC LIMIT {}",
            limit.max(1)
        ))
        .bind(service.as_str())
        .bind(env.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// When `build` last became current in `env`, if it ever did.
    pub async fn last_deployed_at(
        &self,
        service: &ServiceName,
        env: &EnvName,
        build: &BuildId,
    ) -> Result<Option<DateTime<Utc>>> {
        let row = sqlx::query(
            "SELECT MAX(deployed_at) AS at FROM deployments WHERE service = $1 AND environment = $2 AND build_id = $3",
        )
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(build.as_str())
        .fetch_one(&self.pool)
        .await?;
        opt_millis(row.try_get("at")?)
    }
}

/// A deployment waiting for approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    pub id: String,
    pub service: ServiceName,
    pub environment: EnvName,
    pub build: BuildId,
    pub kind: DeployKind,
    /// pending, deployed, rejected or expired.
    pub state: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub override_freeze: bool,
    /// (approver, decision) pairs, oldest first.
    pub decisions: Vec<(String, String)>,
}

const REQUEST_COLUMNS: &str =
    "id, service, environment, build_id, kind, state, requested_by, requested_at, expires_at, reason, override";

impl Db {
    /// Records a deployment that waits for approvals.
    pub async fn create_request(&self, r: &RequestRow) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO deployment_requests ({REQUEST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10)"
        ))
        .bind(&r.id)
        .bind(r.service.as_str())
        .bind(r.environment.as_str())
        .bind(r.build.as_str())
        .bind(r.kind.as_str())
        .bind(&r.requested_by)
        .bind(r.requested_at.timestamp_millis())
        .bind(r.expires_at.map(|t| t.timestamp_millis()))
        .bind(r.reason.clone())
        .bind(i64::from(r.override_freeze))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn request_from_row(&self, row: &AnyRow) -> Result<RequestRow> {
        let id: String = row.try_get("id")?;
        let decisions =
            sqlx::query("SELECT approver, decision FROM approvals WHERE request_id = $1 ORDER BY decided_at")
                .bind(&id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get::<String, _>("approver")?, r.try_get::<String, _>("decision")?)))
                .collect::<Result<Vec<_>>>()?;
        Ok(RequestRow {
            id,
            service: parse(&row.try_get::<String, _>("service")?, ServiceName::parse)?,
            environment: parse(&row.try_get::<String, _>("environment")?, EnvName::parse)?,
            build: parse(&row.try_get::<String, _>("build_id")?, BuildId::parse)?,
            kind: kind(&row.try_get::<String, _>("kind")?)?,
            state: row.try_get("state")?,
            requested_by: row.try_get("requested_by")?,
            requested_at: millis(row.try_get("requested_at")?)?,
            expires_at: opt_millis(row.try_get("expires_at")?)?,
            reason: row.try_get("reason")?,
            override_freeze: row.try_get::<i64, _>("override")? != 0,
            decisions,
        })
    }

    /// The pending request to deploy `build` into `env`, if any.
    pub async fn pending_request(
        &self,
        service: &ServiceName,
        env: &EnvName,
        build: &BuildId,
    ) -> Result<Option<RequestRow>> {
        let row = sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM deployment_requests WHERE service = $1 AND environment = $2 \
             AND build_id = $3 AND state = 'pending' ORDER BY requested_at DESC LIMIT 1"
        ))
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(build.as_str())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some(self.request_from_row(&r).await?)),
            None => Ok(None),
        }
    }

    /// Every pending request of a service, oldest first.
    pub async fn pending_requests(&self, service: &ServiceName) -> Result<Vec<RequestRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM deployment_requests WHERE service = $1 AND state = 'pending' ORDER BY requested_at"
        ))
        .bind(service.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.request_from_row(r).await?);
        }
        Ok(out)
    }

    /// Records one approver's decision; a second decision by the same
    /// approver is a conflict.
    pub async fn decide(&self, request: &str, approver: &str, decision: &str, at: DateTime<Utc>) -> Result<()> {
        let res =
            sqlx::query("INSERT INTO approvals (request_id, approver, decision, decided_at) VALUES ($1, $2, $3, $4)")
                .bind(request)
                .bind(approver)
                .bind(decision)
                .bind(at.timestamp_millis())
                .execute(&self.pool)
                .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::Conflict(format!(
                "{approver} already decided on this deployment"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves a pending request to `state`; `false` if it was no longer
    /// pending (another server carried it out first).
    pub async fn close_request(&self, id: &str, state: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE deployment_requests SET state = $1 WHERE id = $2 AND state = 'pending'")
            .bind(state)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
