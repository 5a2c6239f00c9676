//! Agents: the newest report of each, for the fleet view and rollouts.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;
use tug_core::{BuildId, EnvName, Platform, ServiceName};

use crate::{millis, opt_parse, parse, state, Db, Error, Result, Tx};
pub use tug_core::records::{AgentRecord as AgentRow, ExitRecord as ExitRow};
use tug_core::states::AgentState;

fn agent_from_row(r: &AnyRow) -> Result<AgentRow> {
    Ok(AgentRow {
        agent_id: r.try_get("agent_id")?,
        service: parse(&r.try_get::<String, _>("service")?, ServiceName::parse)?,
        environment: parse(&r.try_get::<String, _>("environment")?, EnvName::parse)?,
        hostname: r.try_get("hostname")?,
        platform: parse(&r.try_get::<String, _>("platform")?, Platform::parse)?,
        agent_version: r.try_get("agent_version")?,
        build: opt_parse(r.try_get("build_id")?, BuildId::parse)?,
        state: state(&r.try_get::<String, _>("state")?, "agent state", AgentState::parse)?,
        error: r.try_get("error")?,
        failed_build: opt_parse(r.try_get("failed_build")?, BuildId::parse)?,
        waiting: r.try_get("waiting")?,
        exit: match r.try_get::<Option<i64>, _>("exit_at")? {
            None => None,
            Some(at) => Some(ExitRow {
                build: opt_parse(r.try_get("exit_build")?, BuildId::parse)?,
                code: r
                    .try_get::<Option<i64>, _>("exit_code")?
                    .map(|c| i32::try_from(c).map_err(|e| Error::Corrupt(format!("exit code {c}: {e}"))))
                    .transpose()?,
                signal: r.try_get("exit_signal")?,
                at: millis(at)?,
                stderr: r.try_get::<Option<String>, _>("exit_stderr")?.unwrap_or_default(),
            }),
        },
        first_seen: millis(r.try_get("first_seen")?)?,
        last_seen: millis(r.try_get("last_seen")?)?,
    })
}

const COLUMNS: &str = "agent_id, service, environment, hostname, platform, agent_version, build_id, state, error, \
     failed_build, waiting, exit_build, exit_code, exit_signal, exit_at, exit_stderr, first_seen, last_seen";

impl Db {
    /// Stores an agent's report (its first, or a newer one).
    pub async fn upsert_agent(&self, a: &AgentRow) -> Result<()> {
        upsert_agent(&mut *self.pool.acquire().await?, a).await
    }

    /// One agent's newest report.
    pub async fn agent(&self, agent_id: &str) -> Result<Option<AgentRow>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM agents WHERE agent_id = $1"))
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    /// The versions of the agents of a service in an environment heard
    /// from since `since`: the version of the build each runs, or (running
    /// none) the version it reports of itself.
    pub async fn agent_versions(
        &self,
        service: &ServiceName,
        env: &EnvName,
        since: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT COALESCE(b.version, a.agent_version) AS version FROM agents a \
             LEFT JOIN builds b ON b.id = a.build_id \
             WHERE a.service = $1 AND a.environment = $2 AND a.last_seen >= $3",
        )
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(since.timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("version")?)).collect()
    }

    /// Agents of a service (and environment), by service, environment, host.
    pub async fn agents(&self, service: Option<&ServiceName>, env: Option<&EnvName>) -> Result<Vec<AgentRow>> {
        let mut sql = format!("SELECT {COLUMNS} FROM agents WHERE 1 = 1");
        let mut args = Vec::new();
        if let Some(s) = service {
            args.push(s.to_string());
            sql.push_str(&format!(" AND service = ${}", args.len()));
        }
        if let Some(e) = env {
            args.push(e.to_string());
            sql.push_str(&format!(" AND environment = ${}", args.len()));
        }
        sql.push_str(" ORDER BY service, environment, hostname, agent_id");
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// Every agent's id: the set a short agent id must be unique in.
    pub async fn agent_ids(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT agent_id FROM agents").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get("agent_id")?)).collect()
    }
}

impl Tx {
    /// Stores an agent's report, with the events it causes.
    pub async fn upsert_agent(&mut self, a: &AgentRow) -> Result<()> {
        upsert_agent(self.conn(), a).await
    }
}

async fn upsert_agent(conn: &mut sqlx::AnyConnection, a: &AgentRow) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO agents ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17) \
         ON CONFLICT (agent_id) DO UPDATE SET service = excluded.service, environment = excluded.environment, \
         hostname = excluded.hostname, platform = excluded.platform, agent_version = excluded.agent_version, \
         build_id = excluded.build_id, state = excluded.state, error = excluded.error, \
         failed_build = excluded.failed_build, waiting = excluded.waiting, exit_build = excluded.exit_build, \
         exit_code = excluded.exit_code, exit_signal = excluded.exit_signal, exit_at = excluded.exit_at, \
         exit_stderr = excluded.exit_stderr, last_seen = excluded.last_seen"
    ))
    .bind(&a.agent_id)
    .bind(a.service.as_str())
    .bind(a.environment.as_str())
    .bind(&a.hostname)
    .bind(a.platform.as_str())
    .bind(&a.agent_version)
    .bind(a.build.as_ref().map(|b| b.to_string()))
    .bind(a.state.as_str())
    .bind(a.error.clone())
    .bind(a.failed_build.as_ref().map(|b| b.to_string()))
    .bind(a.waiting.clone())
    .bind(a.exit.as_ref().and_then(|e| e.build.as_ref()).map(|b| b.to_string()))
    .bind(a.exit.as_ref().and_then(|e| e.code).map(i64::from))
    .bind(a.exit.as_ref().and_then(|e| e.signal.clone()))
    .bind(a.exit.as_ref().map(|e| e.at.timestamp_millis()))
    .bind(a.exit.as_ref().map(|e| e.stderr.clone()))
    .bind(a.last_seen.timestamp_millis())
    .execute(conn)
    .await?;
    Ok(())
}
