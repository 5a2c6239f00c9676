//! What the server's `/metrics` reads from the database at each scrape:
//! agents by state and build, the newest paced rollout of each
//! environment, and the metric gates' last samples. Each is one grouped
//! query, so a scrape costs a few statements whatever the fleet's size.
//!
//! This module only reads; the gates' samples are written in `verify`.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{Db, Result};

/// How many agents of one service and environment report one state and
/// build. `build` is `None` for agents that run nothing yet; `embargoed`
/// says the build is under embargo (the metrics never name it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTally {
    pub service: String,
    pub environment: String,
    /// The reported state, or `stale` for agents not heard from since the
    /// cut-off.
    pub state: String,
    pub build: Option<String>,
    pub embargoed: bool,
    pub agents: i64,
}

/// The state (`rolling`, `halted`) of an environment's newest paced
/// rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutTally {
    pub service: String,
    pub environment: String,
    pub state: String,
}

impl Db {
    /// Agents grouped by service, environment, state (`stale` when not
    /// heard from since `since`) and build.
    pub async fn agent_tallies(&self, since: DateTime<Utc>) -> Result<Vec<AgentTally>> {
        let rows = sqlx::query(
            "SELECT a.service, a.environment, \
                    CASE WHEN a.last_seen < $1 THEN 'stale' ELSE a.state END AS state, \
                    a.build_id, COALESCE(b.embargoed, 0) AS embargoed, COUNT(*) AS agents \
             FROM agents a LEFT JOIN builds b ON b.id = a.build_id \
             GROUP BY a.service, a.environment, CASE WHEN a.last_seen < $1 THEN 'stale' ELSE a.state END, \
                      a.build_id, COALESCE(b.embargoed, 0) \
             ORDER BY a.service, a.environment",
        )
        .bind(since.timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AgentTally {
                    service: r.try_get("service")?,
                    environment: r.try_get("environment")?,
                    state: r.try_get("state")?,
                    build: r.try_get("build_id")?,
                    embargoed: r.try_get::<i64, _>("embargoed")? != 0,
                    agents: r.try_get("agents")?,
                })
            })
            .collect()
    }

    /// The newest paced rollout of every environment that had one.
    pub async fn rollout_tallies(&self) -> Result<Vec<RolloutTally>> {
        let rows = sqlx::query(
            "SELECT r.service, r.environment, r.state FROM rollouts r \
             JOIN (SELECT service, environment, MAX(seq) AS seq FROM rollouts GROUP BY service, environment) n \
               ON n.service = r.service AND n.environment = r.environment AND n.seq = r.seq \
             ORDER BY r.service, r.environment",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RolloutTally {
                    service: r.try_get("service")?,
                    environment: r.try_get("environment")?,
                    state: r.try_get("state")?,
                })
            })
            .collect()
    }
}
