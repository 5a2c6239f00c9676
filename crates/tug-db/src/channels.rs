//! What the answers about environments' channels are computed from, read
//! for every environment at once: each service's newest pipeline revision
//! and, per environment, its deployment sequence number and the critical
//! and embargo flags of the build it runs. A server compares these with
//! what its cached answers were computed from, so a change reaches its
//! answers whether or not anything else (an event) said so.

use sqlx::Row;
use tug_core::{EnvName, ServiceName};

use crate::{parse, Db, Result};

/// One environment's row, or a service's alone (`environment` is `None`)
/// when it has a pipeline and no environment deployed to yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStampRow {
    pub service: ServiceName,
    /// The service's newest pipeline revision.
    pub revision: i64,
    pub environment: Option<EnvName>,
    pub seq: i64,
    pub critical: bool,
    pub embargoed: bool,
}

impl Db {
    /// The stamp of every environment that has a pipeline: one query,
    /// whatever the number of environments (a scan of the environments
    /// and one index probe per environment into deployments and builds).
    pub async fn channel_stamps(&self) -> Result<Vec<ChannelStampRow>> {
        let rows = sqlx::query(
            "SELECT p.service, p.revision, e.name, COALESCE(e.seq, 0) AS seq, \
             COALESCE(b.critical, 0) AS critical, COALESCE(b.embargoed, 0) AS embargoed \
             FROM (SELECT service, MAX(revision) AS revision FROM pipelines GROUP BY service) p \
             LEFT JOIN environments e ON e.service = p.service \
             LEFT JOIN deployments d ON d.service = e.service AND d.environment = e.name AND d.seq = e.seq \
             LEFT JOIN builds b ON b.id = d.build_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ChannelStampRow {
                    service: parse(&r.try_get::<String, _>("service")?, ServiceName::parse)?,
                    revision: r.try_get("revision")?,
                    environment: crate::opt_parse(r.try_get("name")?, EnvName::parse)?,
                    seq: r.try_get("seq")?,
                    critical: r.try_get::<i64, _>("critical")? != 0,
                    embargoed: r.try_get::<i64, _>("embargoed")? != 0,
                })
            })
            .collect()
    }
}
