//! Paced rollouts: each deployment's rollout state, the agents granted its
//! build, the counts pacing decides on, and the health-aware soak clocks.
//!
//! Grants are decided inside a [`RolloutLock`]: one transaction that holds
//! the rollout's lock while it reads the counts and records the grants, so
//! decisions taken at once by several servers sharing the database are
//! taken one after the other. On PostgreSQL the lock is the rollout row's
//! (`SELECT … FOR UPDATE`); on SQLite the transaction's first statement
//! writes, which takes the database's one write lock.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{Any, Row};
pub use tug_core::grant::RolloutCounts;
use tug_core::{BuildId, EnvName, ServiceName};

use crate::{millis, parse, state, Db, Dialect, Result, Tx};
use tug_core::states::{AgentState, RolloutState};

/// The state of one deployment's rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRow {
    pub service: ServiceName,
    pub environment: EnvName,
    /// The deployment's sequence number in the environment.
    pub seq: i64,
    pub build: BuildId,
    /// `rolling` or `halted`.
    pub state: RolloutState,
    pub reason: Option<String>,
    /// Failures before the last resume, which no longer count.
    pub failures_baseline: i64,
    pub changed_at: DateTime<Utc>,
    pub changed_by: Option<String>,
}

impl Tx {
    /// Moves a rollout from state `from` to `to`; `false` when it was not
    /// in `from` (someone else moved it first). `baseline` replaces the
    /// failures that no longer count.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_rollout_state(
        &mut self,
        service: &ServiceName,
        env: &EnvName,
        seq: i64,
        from: RolloutState,
        to: RolloutState,
        reason: Option<&str>,
        baseline: Option<i64>,
        by: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE rollouts SET state = $5, reason = $6, failures_baseline = COALESCE($7, failures_baseline), \
             changed_by = $8, changed_at = $9 \
             WHERE service = $1 AND environment = $2 AND seq = $3 AND state = $4",
        )
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(seq)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(reason)
        .bind(baseline)
        .bind(by)
        .bind(at.timestamp_millis())
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// A health-aware soak clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoakClock {
    pub healthy_ms: i64,
    pub last_sample: DateTime<Utc>,
    pub healthy_now: bool,
}

fn rollout_from_row(r: &AnyRow) -> Result<RolloutRow> {
    Ok(RolloutRow {
        service: parse(&r.try_get::<String, _>("service")?, ServiceName::parse)?,
        environment: parse(&r.try_get::<String, _>("environment")?, EnvName::parse)?,
        seq: r.try_get("seq")?,
        build: parse(&r.try_get::<String, _>("build_id")?, BuildId::parse)?,
        state: state(&r.try_get::<String, _>("state")?, "rollout state", RolloutState::parse)?,
        reason: r.try_get("reason")?,
        failures_baseline: r.try_get("failures_baseline")?,
        changed_at: millis(r.try_get("changed_at")?)?,
        changed_by: r.try_get("changed_by")?,
    })
}

const COLUMNS: &str = "service, environment, seq, build_id, state, reason, failures_baseline, changed_at, changed_by";

impl Db {
    /// The rollout of deployment `seq`, created (rolling) if it has none.
    pub async fn ensure_rollout(
        &self,
        service: &ServiceName,
        env: &EnvName,
        seq: i64,
        build: &BuildId,
        at: DateTime<Utc>,
    ) -> Result<RolloutRow> {
        create_rollout(&self.pool, service, env, seq, build, at).await?;
        self.rollout(service, env, seq)
            .await?
            .ok_or_else(|| crate::Error::Corrupt(format!("the rollout of {service}/{env} #{seq} vanished")))
    }

    /// Takes the lock of deployment `seq`'s rollout (creating the rollout,
    /// rolling, if it has none) for a grant decision: until the returned
    /// lock is committed or dropped, no other decision about this rollout
    /// is taken, by this server or another.
    pub async fn lock_rollout(
        &self,
        service: &ServiceName,
        env: &EnvName,
        seq: i64,
        build: &BuildId,
        at: DateTime<Utc>,
    ) -> Result<RolloutLock> {
        let mut tx = self.pool.begin().await?;
        // The first statement writes: on SQLite that takes the write lock
        // for the whole transaction, so the counts read next are the
        // newest and no other writer moves them until the commit.
        create_rollout(&mut *tx, service, env, seq, build, at).await?;
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        };
        // On PostgreSQL the row lock orders the decisions; each statement
        // after it reads what the decisions before it committed.
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rollouts WHERE service = $1 AND environment = $2 AND seq = $3{lock}"
        ))
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| crate::Error::Corrupt(format!("the rollout of {service}/{env} #{seq} vanished")))?;
        Ok(RolloutLock {
            row: rollout_from_row(&row)?,
            tx,
        })
    }

    /// The rollout of deployment `seq`, if an agent asked for it yet.
    pub async fn rollout(&self, service: &ServiceName, env: &EnvName, seq: i64) -> Result<Option<RolloutRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rollouts WHERE service = $1 AND environment = $2 AND seq = $3"
        ))
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rollout_from_row).transpose()
    }

    /// Whether `agent` may take deployment `seq`'s build.
    pub async fn has_grant(&self, service: &ServiceName, env: &EnvName, seq: i64, agent: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT agent_id FROM rollout_grants WHERE service = $1 AND environment = $2 AND seq = $3 AND agent_id = $4",
        )
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(seq)
        .bind(agent)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// The environment's live agents (heard from or granted since
    /// `since`), counted for deployment `seq` of `build`.
    pub async fn rollout_counts(
        &self,
        service: &ServiceName,
        env: &EnvName,
        seq: i64,
        build: &BuildId,
        since: DateTime<Utc>,
    ) -> Result<RolloutCounts> {
        counts(&self.pool, service, env, seq, build, since).await
    }

    /// The soak clock of deployment `seq` for a share of healthy agents.
    pub async fn soak_clock(
        &self,
        service: &ServiceName,
        env: &EnvName,
        seq: i64,
        share: u8,
    ) -> Result<Option<SoakClock>> {
        let row = sqlx::query(
            "SELECT healthy_ms, last_sample, healthy_now FROM soak_clocks \
             WHERE service = $1 AND environment = $2 AND seq = $3 AND share = $4",
        )
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(seq)
        .bind(i64::from(share))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SoakClock {
                healthy_ms: r.try_get("healthy_ms")?,
                last_sample: millis(r.try_get("last_sample")?)?,
                healthy_now: r.try_get::<i64, _>("healthy_now")? != 0,
            })
        })
        .transpose()
    }

    /// Writes a soak clock if it is still as read (`before`, `None` when
    /// there was none); `false` when another writer got there first.
    pub async fn save_soak_clock(
        &self,
        service: &ServiceName,
        env: &EnvName,
        seq: i64,
        share: u8,
        before: Option<&SoakClock>,
        clock: &SoakClock,
    ) -> Result<bool> {
        let sql = match before {
            None => {
                "INSERT INTO soak_clocks (service, environment, seq, share, healthy_ms, last_sample, healthy_now) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (service, environment, seq, share) DO NOTHING"
            }
            Some(_) => {
                "UPDATE soak_clocks SET healthy_ms = $5, last_sample = $6, healthy_now = $7 \
                 WHERE service = $1 AND environment = $2 AND seq = $3 AND share = $4 AND last_sample = $8"
            }
        };
        let mut q = sqlx::query(sql)
            .bind(service.as_str())
            .bind(env.as_str())
            .bind(seq)
            .bind(i64::from(share))
            .bind(clock.healthy_ms)
            .bind(clock.last_sample.timestamp_millis())
            .bind(i64::from(clock.healthy_now));
        if let Some(b) = before {
            q = q.bind(b.last_sample.timestamp_millis());
        }
        let done = q.execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }
}

/// A rollout's lock, held for one grant decision (see
/// [`Db::lock_rollout`]). Dropping it without [`RolloutLock::commit`]
/// records nothing.
pub struct RolloutLock {
    row: RolloutRow,
    tx: sqlx::Transaction<'static, Any>,
}

impl RolloutLock {
    /// The rollout as it stands under the lock.
    pub fn rollout(&self) -> &RolloutRow {
        &self.row
    }

    /// The environment's live agents (heard from or granted since
    /// `since`), counted for the rollout's build; grants recorded by earlier
    /// decisions are included.
    pub async fn counts(&mut self, since: DateTime<Utc>) -> Result<RolloutCounts> {
        let r = &self.row;
        counts(&mut *self.tx, &r.service, &r.environment, r.seq, &r.build, since).await
    }

    /// Allows `agents` to take the rollout's build (a grant is kept: those
    /// granted before stay so).
    pub async fn grant(&mut self, agents: &[String], at: DateTime<Utc>) -> Result<()> {
        // Few statements for many agents, within every dialect's limit on
        // bound values.
        for chunk in agents.chunks(400) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("($1, $2, $3, ${}, $4)", i + 5))
                .collect();
            let sql = format!(
                "INSERT INTO rollout_grants (service, environment, seq, agent_id, granted_at) VALUES {} \
                 ON CONFLICT (service, environment, seq, agent_id) DO NOTHING",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql)
                .bind(self.row.service.as_str())
                .bind(self.row.environment.as_str())
                .bind(self.row.seq)
                .bind(at.timestamp_millis());
            for agent in chunk {
                q = q.bind(agent.as_str());
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Records the grants and releases the lock.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

async fn create_rollout<'e>(
    on: impl sqlx::Executor<'e, Database = Any>,
    service: &ServiceName,
    env: &EnvName,
    seq: i64,
    build: &BuildId,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO rollouts ({COLUMNS}) VALUES ($1, $2, $3, $4, $6, NULL, 0, $5, NULL) \
         ON CONFLICT (service, environment, seq) DO NOTHING"
    ))
    .bind(service.as_str())
    .bind(env.as_str())
    .bind(seq)
    .bind(build.to_string())
    .bind(at.timestamp_millis())
    .bind(RolloutState::Rolling.as_str())
    .execute(on)
    .await?;
    Ok(())
}

/// Counts an environment's live agents for deployment `seq` of `build`:
/// those heard from since `since`, and those granted the build since then
/// whatever they last said (a grant may have reached an agent that was
/// quiet for a while: it may be installing now). A granted agent that has
/// not reported in this environment at all is counted in flight too.
///
/// One pass over the environment's agents, with the deployment's grants
/// looked up in sets built once (uncorrelated `IN`), and no join: a plan
/// chosen while the tables were small (a prepared statement's plan is
/// kept) then stays linear as grants and agents grow, where a nested-loop
/// join planned on an empty grants table scans it once per agent.
async fn counts<'e>(
    on: impl sqlx::Executor<'e, Database = Any>,
    service: &ServiceName,
    env: &EnvName,
    seq: i64,
    build: &BuildId,
    since: DateTime<Utc>,
) -> Result<RolloutCounts> {
    let row = sqlx::query(
        "SELECT \
         COALESCE(SUM(live), 0) AS agents, \
         COALESCE(SUM(live * granted), 0) AS granted, \
         COALESCE(SUM(live * healthy), 0) AS healthy, \
         COALESCE(SUM(live * granted * healthy), 0) AS granted_healthy, \
         COALESCE(SUM(live * granted * (1 - healthy) * (1 - failed)), 0) AS in_flight, \
         COALESCE(SUM(live * failed), 0) AS failed, \
         (SELECT COUNT(*) FROM rollout_grants WHERE service = $1 AND environment = $2 AND seq = $3 \
             AND granted_at >= $5) - COALESCE(SUM(granted_lately), 0) AS unreported \
         FROM (SELECT \
             CASE WHEN a.last_seen >= $5 OR a.agent_id IN (SELECT agent_id FROM rollout_grants \
                 WHERE service = $1 AND environment = $2 AND seq = $3 AND granted_at >= $5) THEN 1 ELSE 0 END AS live, \
             CASE WHEN a.agent_id IN (SELECT agent_id FROM rollout_grants \
                 WHERE service = $1 AND environment = $2 AND seq = $3) THEN 1 ELSE 0 END AS granted, \
             CASE WHEN a.agent_id IN (SELECT agent_id FROM rollout_grants \
                 WHERE service = $1 AND environment = $2 AND seq = $3 AND granted_at >= $5) THEN 1 ELSE 0 END \
                 AS granted_lately, \
             CASE WHEN a.build_id = $4 AND a.state = $6 THEN 1 ELSE 0 END AS healthy, \
             CASE WHEN a.failed_build = $4 THEN 1 ELSE 0 END AS failed \
             FROM agents a WHERE a.service = $1 AND a.environment = $2) x",
    )
    .bind(service.as_str())
    .bind(env.as_str())
    .bind(seq)
    .bind(build.to_string())
    .bind(since.timestamp_millis())
    .bind(AgentState::Healthy.as_str())
    .fetch_one(on)
    .await?;
    let unreported: i64 = row.try_get("unreported")?;
    Ok(RolloutCounts {
        agents: row.try_get("agents")?,
        granted: row.try_get::<i64, _>("granted")? + unreported,
        healthy: row.try_get("healthy")?,
        granted_healthy: row.try_get("granted_healthy")?,
        in_flight: row.try_get::<i64, _>("in_flight")? + unreported,
        failed: row.try_get("failed")?,
    })
}
