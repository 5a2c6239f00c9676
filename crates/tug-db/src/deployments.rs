//! Pipelines and deployments. The deployment log is append-only; the newest
//! row of an environment is what it should run. A deployment is written
//! with a compare-and-set on the environment's sequence number, so of two
//! concurrent deployments to one environment exactly one wins, on any
//! number of servers sharing the database. A deployment that carries out an
//! approved request closes the request in the same transaction, so one
//! request deploys at most once; at most one request per build and
//! environment is pending at a time (a unique index), and requests past
//! their expiry are never read as pending.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;
use tug_core::states::{Decision, RequestState};
use tug_core::{BuildId, DeployKind, EnvName, ServiceName};

use crate::{millis, opt_millis, opt_parse, parse, Db, Error, Result, Tx};
pub use tug_core::records::{
    DeploymentRecord as DeploymentRow, DeploymentRequest as RequestRow, PipelineRecord as PipelineRow,
};

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
    /// The approved request this deployment carries out: it must still be
    /// pending (and not expired) and is closed with the deployment.
    pub request: Option<String>,
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

const COLUMNS: &str = "id, service, environment, seq, build_id, kind, requested_by, deployed_at, replaced_build, \
     reason, override, request_id";

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
        request: r.try_get("request_id")?,
        approved_by: Vec::new(),
    })
}

pub(crate) fn pipeline_from_row(r: &AnyRow) -> Result<PipelineRow> {
    Ok(PipelineRow {
        service: parse(&r.try_get::<String, _>("service")?, ServiceName::parse)?,
        revision: r.try_get("revision")?,
        spec: r.try_get("spec")?,
        changed_at: millis(r.try_get("changed_at")?)?,
        changed_by: r.try_get("changed_by")?,
    })
}

impl Tx {
    /// Stores revision `revision` of a service's pipeline (the current
    /// one's successor). Two concurrent changes cannot both take one
    /// revision number (primary key); the loser gets [`Error::Conflict`].
    pub async fn save_pipeline(
        &mut self,
        service: &ServiceName,
        revision: i64,
        spec: &str,
        at: DateTime<Utc>,
        by: Option<String>,
    ) -> Result<PipelineRow> {
        let res = sqlx::query(
            "INSERT INTO pipelines (service, revision, spec, changed_at, changed_by) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(service.as_str())
        .bind(revision)
        .bind(spec)
        .bind(at.timestamp_millis())
        .bind(by.clone())
        .execute(self.conn())
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
            revision,
            spec: spec.to_string(),
            changed_at: at,
            changed_by: by,
        })
    }
}

impl Db {
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
            match r.as_ref().map(deployment_from_row).transpose()? {
                Some(mut d) => {
                    self.fill_approvers(std::slice::from_mut(&mut d)).await?;
                    Some(d)
                }
                None => None,
            }
        } else {
            None
        };
        Ok(EnvState {
            seq,
            auto_release_held: held,
            current,
        })
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
        let mut deployments = rows.iter().map(deployment_from_row).collect::<Result<Vec<_>>>()?;
        self.fill_approvers(&mut deployments).await?;
        Ok(deployments)
    }

    /// Sets `approved_by` of deployments that carried out a request.
    async fn fill_approvers(&self, deployments: &mut [DeploymentRow]) -> Result<()> {
        let requests: Vec<String> = deployments.iter().filter_map(|d| d.request.clone()).collect();
        if requests.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        let mut by_request: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
        for (request, who) in approvers(&mut conn, &requests).await? {
            by_request.entry(request).or_default().push(who);
        }
        for d in deployments {
            if let Some(who) = d.request.as_ref().and_then(|r| by_request.remove(r)) {
                d.approved_by = who;
            }
        }
        Ok(())
    }

    /// The deployment that carried out a request, if one did.
    pub async fn deployment_of_request(&self, request: &str) -> Result<Option<DeploymentRow>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM deployments WHERE request_id = $1"))
            .bind(request)
            .fetch_optional(&self.pool)
            .await?;
        let Some(mut d) = row.as_ref().map(deployment_from_row).transpose()? else {
            return Ok(None);
        };
        self.fill_approvers(std::slice::from_mut(&mut d)).await?;
        Ok(Some(d))
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

impl Tx {
    /// Appends a deployment if the environment is still at `expected_seq`
    /// (what [`Db::env_state`] said when the policies were checked). When
    /// another deployment got there first: [`Error::Conflict`], nothing
    /// written. When `d.request` names a request, it moves from pending to
    /// deployed in the same transaction; if it is no longer pending (another
    /// approval carried it out, it was rejected, or it expired by `d.at`):
    /// [`Error::RequestNotPending`], nothing written. `hold` sets or clears
    /// the environment's auto-release hold in the same transaction.
    pub async fn deploy(&mut self, d: &NewDeployment, expected_seq: i64, hold: Option<bool>) -> Result<DeploymentRow> {
        let tx = self.conn();
        sqlx::query(
            "INSERT INTO environments (service, name, seq) VALUES ($1, $2, 0) ON CONFLICT (service, name) DO NOTHING",
        )
        .bind(d.service.as_str())
        .bind(d.environment.as_str())
        .execute(&mut *tx)
        .await?;
        // The request first: of several approvals completing it at once,
        // the first to close it deploys; the others find it closed and
        // abandon their transaction (PostgreSQL re-checks the condition
        // after the winner commits; SQLite has one writer).
        if let Some(request) = &d.request {
            let closed = sqlx::query(
                "UPDATE deployment_requests SET state = $3 WHERE id = $1 AND state = $4 \
                 AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(request)
            .bind(d.at.timestamp_millis())
            .bind(RequestState::Deployed.as_str())
            .bind(RequestState::Pending.as_str())
            .execute(&mut *tx)
            .await?;
            if closed.rows_affected() != 1 {
                return Err(Error::RequestNotPending(request.clone()));
            }
        }
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
             replaced_build, reason, override, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
        .bind(d.request.clone())
        .execute(&mut *tx)
        .await?;
        let approved_by = match &d.request {
            Some(request) => approvers(&mut *tx, std::slice::from_ref(request))
                .await?
                .into_iter()
                .map(|(_, who)| who)
                .collect(),
            None => Vec::new(),
        };
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
            request: d.request.clone(),
            approved_by,
        })
    }

    /// Sets or clears an environment's auto-release hold.
    pub async fn set_auto_release_hold(&mut self, service: &ServiceName, env: &EnvName, held: bool) -> Result<()> {
        let tx = self.conn();
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
        Ok(())
    }
}

/// (request, approver) of every approval of `requests`, oldest first per
/// request. The requester never counts, whatever the table says.
async fn approvers(conn: &mut sqlx::AnyConnection, requests: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    // Well under both dialects' limits on bound parameters.
    for chunk in requests.chunks(500) {
        let placeholders: Vec<String> = (2..=chunk.len() + 1).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT a.request_id, a.approver FROM approvals a JOIN deployment_requests r ON r.id = a.request_id \
             WHERE a.decision = $1 AND a.approver <> r.requested_by AND a.request_id IN ({}) \
             ORDER BY a.request_id, a.decided_at, a.approver",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(Decision::Approve.as_str());
        for r in chunk {
            q = q.bind(r.as_str());
        }
        for row in q.fetch_all(&mut *conn).await? {
            out.push((row.try_get("request_id")?, row.try_get("approver")?));
        }
    }
    Ok(out)
}

/// What [`Db::create_request`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreatedRequest {
    /// The request is stored; these older auto-release requests of the
    /// environment were superseded by it.
    Created { superseded: Vec<RequestRow> },
    /// A request for the same build and environment is pending already
    /// (made at the same moment by someone else); nothing was stored.
    AlreadyPending,
}

const REQUEST_COLUMNS: &str =
    "id, service, environment, build_id, kind, state, requested_by, requested_at, expires_at, reason, override";

/// Requests that are pending and not past their expiry at `$n`. The state
/// is written into the text, not bound: the planner may then use the
/// unique index over pending requests, whose condition names it so.
fn open_at(n: usize) -> String {
    let pending = RequestState::Pending.as_str();
    format!("state = '{pending}' AND (expires_at IS NULL OR expires_at > ${n})")
}

impl Tx {
    /// Records a deployment that waits for approvals. At most one request
    /// per build and environment is pending (a unique index decides between
    /// concurrent requests). With `supersede`, the environment's other
    /// pending auto-release requests are superseded in the same transaction:
    /// only the newest build auto-release wants waits for approvers.
    pub async fn create_request(&mut self, r: &RequestRow, supersede: bool) -> Result<CreatedRequest> {
        let tx = self.conn();
        let res = sqlx::query(&format!(
            "INSERT INTO deployment_requests ({REQUEST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $11, $6, $7, $8, $9, $10)"
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
        .bind(RequestState::Pending.as_str())
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(CreatedRequest::AlreadyPending),
            Err(e) => return Err(e.into()),
        }
        let superseded = if supersede {
            sqlx::query(&format!(
                "UPDATE deployment_requests SET state = $5 WHERE service = $1 AND environment = $2 \
                 AND kind = $3 AND state = $6 AND id <> $4 RETURNING {REQUEST_COLUMNS}"
            ))
            .bind(r.service.as_str())
            .bind(r.environment.as_str())
            .bind(DeployKind::AutoRelease.as_str())
            .bind(&r.id)
            .bind(RequestState::Superseded.as_str())
            .bind(RequestState::Pending.as_str())
            .fetch_all(&mut *tx)
            .await?
        } else {
            Vec::new()
        };
        Ok(CreatedRequest::Created {
            superseded: requests_from_rows(tx, &superseded).await?,
        })
    }

    /// Marks every pending request past its expiry at `now` as expired and
    /// returns those this call moved: of several servers sweeping at once,
    /// each request is returned to exactly one.
    pub async fn expire_due_requests(&mut self, now: DateTime<Utc>) -> Result<Vec<RequestRow>> {
        let tx = self.conn();
        let rows = sqlx::query(&format!(
            "UPDATE deployment_requests SET state = $2 WHERE state = $3 AND expires_at <= $1 \
             RETURNING {REQUEST_COLUMNS}"
        ))
        .bind(now.timestamp_millis())
        .bind(RequestState::Expired.as_str())
        .bind(RequestState::Pending.as_str())
        .fetch_all(&mut *tx)
        .await?;
        requests_from_rows(tx, &rows).await
    }

    /// Records one approver's decision; a second decision by the same
    /// approver is a conflict.
    pub async fn decide(&mut self, request: &str, approver: &str, decision: Decision, at: DateTime<Utc>) -> Result<()> {
        let res =
            sqlx::query("INSERT INTO approvals (request_id, approver, decision, decided_at) VALUES ($1, $2, $3, $4)")
                .bind(request)
                .bind(approver)
                .bind(decision.as_str())
                .bind(at.timestamp_millis())
                .execute(self.conn())
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
    pub async fn close_request(&mut self, id: &str, state: RequestState) -> Result<bool> {
        let done = sqlx::query("UPDATE deployment_requests SET state = $1 WHERE id = $2 AND state = $3")
            .bind(state.as_str())
            .bind(id)
            .bind(RequestState::Pending.as_str())
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

async fn requests_from_rows(conn: &mut sqlx::AnyConnection, rows: &[AnyRow]) -> Result<Vec<RequestRow>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(request_from_row(&mut *conn, r).await?);
    }
    Ok(out)
}

async fn request_from_row(conn: &mut sqlx::AnyConnection, row: &AnyRow) -> Result<RequestRow> {
    {
        let id: String = row.try_get("id")?;
        let decisions =
            sqlx::query("SELECT approver, decision FROM approvals WHERE request_id = $1 ORDER BY decided_at, approver")
                .bind(&id)
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get::<String, _>("approver")?,
                        crate::state(&r.try_get::<String, _>("decision")?, "decision", Decision::parse)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
        Ok(RequestRow {
            id,
            service: parse(&row.try_get::<String, _>("service")?, ServiceName::parse)?,
            environment: parse(&row.try_get::<String, _>("environment")?, EnvName::parse)?,
            build: parse(&row.try_get::<String, _>("build_id")?, BuildId::parse)?,
            kind: kind(&row.try_get::<String, _>("kind")?)?,
            state: crate::state(
                &row.try_get::<String, _>("state")?,
                "request state",
                RequestState::parse,
            )?,
            requested_by: row.try_get("requested_by")?,
            requested_at: millis(row.try_get("requested_at")?)?,
            expires_at: opt_millis(row.try_get("expires_at")?)?,
            reason: row.try_get("reason")?,
            override_freeze: row.try_get::<i64, _>("override")? != 0,
            decisions,
        })
    }
}

impl Db {
    async fn requests_from_rows(&self, rows: &[AnyRow]) -> Result<Vec<RequestRow>> {
        requests_from_rows(&mut *self.pool.acquire().await?, rows).await
    }

    async fn opt_request(&self, row: Option<AnyRow>) -> Result<Option<RequestRow>> {
        match row {
            Some(r) => Ok(Some(request_from_row(&mut *self.pool.acquire().await?, &r).await?)),
            None => Ok(None),
        }
    }

    /// A request by id, whatever its state.
    pub async fn request(&self, id: &str) -> Result<Option<RequestRow>> {
        let row = sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM deployment_requests WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        self.opt_request(row).await
    }

    /// The request to deploy `build` into `env` that is pending at `now`,
    /// if any (one past its expiry is not, even before it is swept).
    pub async fn pending_request(
        &self,
        service: &ServiceName,
        env: &EnvName,
        build: &BuildId,
        now: DateTime<Utc>,
    ) -> Result<Option<RequestRow>> {
        let row = sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM deployment_requests WHERE service = $1 AND environment = $2 \
             AND build_id = $3 AND {} ORDER BY requested_at DESC LIMIT 1",
            open_at(4)
        ))
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(build.as_str())
        .bind(now.timestamp_millis())
        .fetch_optional(&self.pool)
        .await?;
        self.opt_request(row).await
    }

    /// The newest request (of `kind`, or of any kind) to deploy `build` into
    /// `env`, in any state.
    pub async fn last_request(
        &self,
        service: &ServiceName,
        env: &EnvName,
        build: &BuildId,
        kind: Option<DeployKind>,
    ) -> Result<Option<RequestRow>> {
        let row = sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM deployment_requests WHERE service = $1 AND environment = $2 \
             AND build_id = $3 AND ($4 = '' OR kind = $4) ORDER BY id DESC LIMIT 1"
        ))
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(build.as_str())
        .bind(kind.map_or("", DeployKind::as_str))
        .fetch_optional(&self.pool)
        .await?;
        self.opt_request(row).await
    }

    /// Every request of a service pending at `now`, oldest first.
    pub async fn pending_requests(&self, service: &ServiceName, now: DateTime<Utc>) -> Result<Vec<RequestRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM deployment_requests WHERE service = $1 AND {} ORDER BY requested_at, id",
            open_at(2)
        ))
        .bind(service.as_str())
        .bind(now.timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        self.requests_from_rows(&rows).await
    }

    /// Requests into `env` that expired after `since` and by `now` (swept
    /// or still marked pending), newest first, at most `limit`. Each is
    /// returned with state `expired`.
    pub async fn expired_requests(
        &self,
        service: &ServiceName,
        env: &EnvName,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<RequestRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {REQUEST_COLUMNS} FROM deployment_requests WHERE service = $1 AND environment = $2 \
             AND state IN ($5, $6) AND expires_at > $3 AND expires_at <= $4 \
             ORDER BY expires_at DESC, id DESC LIMIT {}",
            limit.max(1)
        ))
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(since.timestamp_millis())
        .bind(now.timestamp_millis())
        .bind(RequestState::Pending.as_str())
        .bind(RequestState::Expired.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut out = self.requests_from_rows(&rows).await?;
        for r in &mut out {
            r.state = RequestState::Expired;
        }
        Ok(out)
    }

    /// When the next pending request expires, if any does.
    pub async fn next_expiry(&self) -> Result<Option<DateTime<Utc>>> {
        let row = sqlx::query("SELECT MIN(expires_at) AS at FROM deployment_requests WHERE state = $1")
            .bind(RequestState::Pending.as_str())
            .fetch_one(&self.pool)
            .await?;
        opt_millis(row.try_get("at")?)
    }
}
