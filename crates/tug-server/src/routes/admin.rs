//! `/v1/admin`: store maintenance (fsck, gc), admin only.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use tug_api::{CorruptBlob, FsckQuery, FsckReport, GcReport, GcRequest};
use tug_service::GcOptions;

use crate::error::ApiError;
use crate::extract::{Caller, Json};
use crate::AppState;

/// Re-hashes every blob; with `?repair=true` also moves corrupt ones aside.
pub async fn fsck(
    State(state): State<AppState>,
    Caller(who): Caller,
    query: Result<Query<FsckQuery>, QueryRejection>,
) -> Result<axum::Json<FsckReport>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let r = if q.repair {
        state.tugboat.fsck_repair(&who).await?
    } else {
        state.tugboat.fsck(&who).await?
    };
    Ok(axum::Json(FsckReport {
        checked: r.checked,
        bytes: r.bytes,
        corrupt: r
            .corrupt
            .into_iter()
            .map(|c| CorruptBlob {
                digest: c.digest,
                actual: c.actual,
                size: c.size,
                moved_to: c.moved_to,
            })
            .collect(),
        missing: r.missing,
        needed_by: r.needed_by,
        repaired: r.repaired,
    }))
}

pub async fn gc(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(req): Json<GcRequest>,
) -> Result<axum::Json<GcReport>, ApiError> {
    let options = GcOptions {
        dry_run: req.dry_run,
        draft_max_age: req.draft_max_age_secs.map(Duration::from_secs),
        grace: req.grace_secs.map(Duration::from_secs),
    };
    let r = state.tugboat.gc(&who, options).await?;
    Ok(axum::Json(GcReport {
        dry_run: req.dry_run,
        abandoned_drafts: r.abandoned_drafts,
        deleted: r.deleted,
        freed_bytes: r.freed_bytes,
        kept: r.kept,
    }))
}
