//! `/v1/admin`: store maintenance (fsck, gc), admin only.

use std::time::Duration;

use axum::extract::State;
use tug_api::{CorruptBlob, FsckReport, GcReport, GcRequest};
use tug_service::GcOptions;

use crate::error::ApiError;
use crate::extract::{Caller, Json};
use crate::AppState;

pub async fn fsck(State(state): State<AppState>, Caller(who): Caller) -> Result<axum::Json<FsckReport>, ApiError> {
    let r = state.tugboat.fsck(&who).await?;
    Ok(axum::Json(FsckReport {
        checked: r.checked,
        bytes: r.bytes,
        corrupt: r
            .corrupt
            .into_iter()
            .map(|(digest, actual, size)| CorruptBlob { digest, actual, size })
            .collect(),
        missing: r.missing,
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
