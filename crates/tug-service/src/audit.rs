//! The audit log: verifying the event log's hash chain and exporting it
//! whole. Both are for admins: an export is the log as recorded, with every
//! embargoed build's events, and verifying it needs every event.
//!
//! Verification walks the log in id order up to its head (as read when the
//! walk starts) with `tug_core::audit::Walk`, and also checks that each
//! event's stored columns (kind, service, build, actor, time) say what its
//! JSON says, since readers filter and hide events by those columns.

use chrono::{DateTime, Utc};
use tug_api::{AuditBreak, AuditRecord, AuditVerification};
use tug_core::audit::{Break, Problem, Walk};
use tug_core::{Action, ServiceName};
use tug_db::EventRow;

use crate::events::parse_row;
use crate::{Error, Principal, Result, Tugboat};

/// Events read per query while verifying.
const VERIFY_PAGE: u32 = 5000;

/// Where an export starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Events after this id.
    After(i64),
    /// Events recorded at or after this time.
    At(DateTime<Utc>),
}

impl Since {
    /// An id (`120`) or an RFC 3339 time (`2026-11-22T00:00:00Z`).
    pub fn parse(s: &str) -> Result<Since> {
        if let Ok(id) = s.parse::<i64>() {
            if id < 0 {
                return Err(Error::Invalid(format!("since {id}: an event id is 0 or more")));
            }
            return Ok(Since::After(id));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Since::At(t.with_timezone(&Utc)))
            .map_err(|_| {
                Error::Invalid(format!(
                    "since {:?} is neither an event id nor a time; give an id (120) or an RFC 3339 time (2026-11-22T00:00:00Z)",
                    s.chars().take(80).collect::<String>()
                ))
            })
    }
}

/// A page of the export: the records, and the id where the next page
/// starts (`None`: the export is complete).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportPage {
    pub records: Vec<AuditRecord>,
    pub next: Option<i64>,
}

fn problem_code(p: &Problem) -> &'static str {
    match p {
        Problem::HashMismatch { .. } => "hash_mismatch",
        Problem::PredecessorMissing { .. } => "predecessor_missing",
        Problem::Unchained => "unchained",
        Problem::Unreadable(_) => "unreadable",
        Problem::NewestMissing { .. } => "newest_missing",
        Problem::HeadMismatch { .. } => "head_mismatch",
    }
}

impl Tugboat {
    /// Walks the whole event log and says whether every event hashes to its
    /// stored hash and follows the one before it, naming the first that
    /// does not.
    pub async fn verify_audit(&self, who: &Principal) -> Result<AuditVerification> {
        self.require(who, Action::Audit)?;
        let head = self.db.event_head().await?;
        let head_hash = head.hash.unwrap_or_else(tug_core::audit::genesis);
        let mut walk = Walk::new();
        let page = |after: i64| {
            let db = self.db.clone();
            tokio::spawn(async move { db.events_after(after, None, VERIFY_PAGE).await })
        };
        let mut reading = page(0);
        let broken = 'walk: loop {
            // The reading task is never aborted while awaited, so it ends by
            // returning or by panicking, and its panic is ours.
            let rows = (&mut reading)
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            let end = rows.len() < VERIFY_PAGE as usize;
            // The next page is read while this one is checked.
            if let (false, Some(last)) = (end, rows.last()) {
                reading = page(last.id);
            }
            for row in &rows {
                // Events committed after the head was read are not this
                // walk's business.
                if row.id > head.id {
                    break 'walk walk.finish(head.id, &head_hash).err();
                }
                if let Err(b) = walk.step(&row.chained()) {
                    break 'walk Some(b);
                }
                if let Err(what) = parse_row(row) {
                    break 'walk Some(Break {
                        id: row.id,
                        problem: Problem::Unreadable(what),
                    });
                }
            }
            if end {
                break walk.finish(head.id, &head_hash).err();
            }
        };
        // A walk that stopped at a break leaves a page being read for nothing.
        reading.abort();
        Ok(AuditVerification {
            ok: broken.is_none(),
            events: walk.events(),
            head_id: head.id,
            head_hash,
            broken: broken.map(|b| AuditBreak {
                id: b.id,
                problem: problem_code(&b.problem).to_string(),
                message: b.to_string(),
            }),
        })
    }

    /// One page of the export: events after `after` (and recorded at or
    /// after `since`, of `service`, when given), whole, with their hashes.
    pub async fn export_audit(
        &self,
        who: &Principal,
        after: i64,
        since: Option<DateTime<Utc>>,
        service: Option<&ServiceName>,
        limit: u32,
    ) -> Result<ExportPage> {
        self.require(who, Action::Audit)?;
        let rows = self.db.events_where(after, since, service, limit).await?;
        let next = (rows.len() >= limit.max(1) as usize).then(|| rows.last().map_or(after, |r| r.id));
        let records = rows.iter().map(audit_record).collect::<Result<Vec<_>>>()?;
        Ok(ExportPage { records, next })
    }

    /// Where an export starts, checked before anything is read.
    pub fn audit_since(&self, who: &Principal, since: Option<&str>) -> Result<Since> {
        self.require(who, Action::Audit)?;
        since.map_or(Ok(Since::After(0)), Since::parse)
    }
}

/// An event as recorded, whole, with its hashes: what the export writes
/// and consumers are fed.
pub(crate) fn audit_record(row: &EventRow) -> Result<AuditRecord> {
    let unchained = || Error::corrupt(format!("event {} has no hash; run tug audit verify", row.id));
    let event = crate::events::read_row(row)?;
    Ok(AuditRecord {
        event,
        prev_hash: row.prev_hash.ok_or_else(unchained)?,
        hash: row.hash.ok_or_else(unchained)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_an_id_or_a_time() {
        assert_eq!(Since::parse("120").unwrap(), Since::After(120));
        assert_eq!(
            Since::parse("2026-11-22T01:00:00+01:00").unwrap(),
            Since::At("2026-11-22T00:00:00Z".parse().unwrap())
        );
        for bad in ["-1", "yesterday", "", "2026-13-01T00:00:00Z"] {
            assert!(matches!(Since::parse(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }
}
