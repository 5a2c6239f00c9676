//! Metric gates: per deployment of an environment, what the sampler last
//! learnt from Prometheus (the `verify_gates` table).
//!
//! Every server samples; the writes are idempotent and ordered by sample
//! time: a sample never overwrites a newer one, a sample within bounds
//! keeps the earliest `within_since` (or starts it), and any other sample
//! clears it. Two servers sampling at once therefore agree, and at worst
//! one sample late restarts the gate's clock, which only delays a
//! promotion.

use chrono::{DateTime, Utc};
use sqlx::Row;
use tug_core::{BuildId, EnvName, ServiceName};

use crate::{millis, opt_millis, parse, Db, Result};

/// One sample of a gate's query.
#[derive(Debug, Clone, PartialEq)]
pub struct GateSample {
    pub at: DateTime<Utc>,
    /// The query's value, when it returned one.
    pub value: Option<f64>,
    /// Why the sample is not a value within bounds: out of bounds, no
    /// value, Prometheus unreachable or refusing the query. `None`: within
    /// bounds.
    pub error: Option<String>,
}

/// A gate as stored: the deployment it belongs to and its last sample.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRow {
    pub service: ServiceName,
    pub environment: EnvName,
    pub seq: i64,
    pub build: BuildId,
    /// Since when every sample was within bounds; `None` when the last one
    /// was not.
    pub within_since: Option<DateTime<Utc>>,
    pub last: GateSample,
}

impl Db {
    /// Records a sample of the gate of deployment `seq` (running `build`)
    /// unless a newer sample is recorded already.
    pub async fn save_gate_sample(
        &self,
        service: &ServiceName,
        env: &EnvName,
        seq: i64,
        build: &BuildId,
        sample: &GateSample,
    ) -> Result<()> {
        let within = i64::from(sample.error.is_none());
        // The value is always bound as a number, with $9 saying whether
        // there is one: PostgreSQL keeps the type a prepared statement's
        // parameter had when first bound, and a NULL bound first through
        // the `Any` driver is not typed as a double.
        sqlx::query(
            "INSERT INTO verify_gates (service, environment, seq, build_id, within_since, last_sample, last_value, last_error) \
             VALUES ($1, $2, $3, $4, CASE WHEN $5 = 1 THEN $6 ELSE NULL END, $6, CASE WHEN $9 = 1 THEN $7 ELSE NULL END, $8) \
             ON CONFLICT (service, environment, seq) DO UPDATE SET \
               within_since = CASE WHEN $5 = 1 THEN COALESCE(verify_gates.within_since, $6) ELSE NULL END, \
               last_sample = $6, last_value = CASE WHEN $9 = 1 THEN $7 ELSE NULL END, last_error = $8 \
             WHERE verify_gates.last_sample <= $6",
        )
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(seq)
        .bind(build.as_str())
        .bind(within)
        .bind(sample.at.timestamp_millis())
        .bind(sample.value.unwrap_or(0.0))
        .bind(sample.error.as_deref())
        .bind(i64::from(sample.value.is_some()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The gate of deployment `seq` of an environment, if it was sampled.
    pub async fn gate(&self, service: &ServiceName, env: &EnvName, seq: i64) -> Result<Option<GateRow>> {
        let row = sqlx::query(
            "SELECT service, environment, seq, build_id, within_since, last_sample, last_value, last_error \
             FROM verify_gates WHERE service = $1 AND environment = $2 AND seq = $3",
        )
        .bind(service.as_str())
        .bind(env.as_str())
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(gate_from_row).transpose()
    }

    /// The newest deployment's gate of every environment that has one, for
    /// `/metrics`.
    pub async fn current_gates(&self) -> Result<Vec<GateRow>> {
        let rows = sqlx::query(
            "SELECT g.service, g.environment, g.seq, g.build_id, g.within_since, g.last_sample, g.last_value, g.last_error \
             FROM verify_gates g \
             JOIN (SELECT service, environment, MAX(seq) AS seq FROM verify_gates GROUP BY service, environment) n \
               ON n.service = g.service AND n.environment = g.environment AND n.seq = g.seq \
             ORDER BY g.service, g.environment",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(gate_from_row).collect()
    }
}

fn gate_from_row(r: &sqlx::any::AnyRow) -> Result<GateRow> {
    Ok(GateRow {
        service: parse(&r.try_get::<String, _>("service")?, ServiceName::parse)?,
        environment: parse(&r.try_get::<String, _>("environment")?, EnvName::parse)?,
        seq: r.try_get("seq")?,
        build: parse(&r.try_get::<String, _>("build_id")?, BuildId::parse)?,
        within_since: opt_millis(r.try_get("within_since")?)?,
        last: GateSample {
            at: millis(r.try_get("last_sample")?)?,
            value: r.try_get("last_value")?,
            error: r.try_get("last_error")?,
        },
    })
}
