//! `/v1/audit`: the event log as an audit trail, admin only. `verify`
//! walks its hash chain; `export` streams it whole as JSON lines (one
//! [`tug_api::AuditRecord`] per line), page by page, so an export of any
//! size holds one page in memory.

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tug_api::{AuditExportQuery, AuditVerification};
use tug_service::Since;

use crate::error::ApiError;
use crate::extract::Caller;
use crate::AppState;

/// Events read per page of an export.
const PAGE: u32 = 1000;

/// Walks the hash chain; names the first event that breaks it.
pub async fn verify(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<axum::Json<AuditVerification>, ApiError> {
    Ok(axum::Json(state.tugboat.verify_audit(&who).await?))
}

/// Streams the log (after `since`, of `service`) as JSON lines.
pub async fn export(
    State(state): State<AppState>,
    Caller(who): Caller,
    query: Result<Query<AuditExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let since = state.tugboat.audit_since(&who, q.since.as_deref())?;
    let service = super::service_param(q.service.as_deref())?;
    let (after, at) = match since {
        Since::After(id) => (id, None),
        Since::At(t) => (0, Some(t)),
    };
    let tugboat = state.tugboat.clone();
    // The first page is read before the answer starts, so that a failure
    // to read is an error status, not a cut-off body.
    let first = tugboat.export_audit(&who, after, at, service.as_ref(), PAGE).await?;
    let pages = futures::stream::unfold(Some(first), move |page| {
        let tugboat = tugboat.clone();
        let who = who.clone();
        let service = service.clone();
        async move {
            let page = page?;
            let mut body = Vec::new();
            for r in &page.records {
                // A record of strings and numbers always serializes.
                serde_json::to_writer(&mut body, r).unwrap_or_default();
                body.push(b'\n');
            }
            let next = match page.next {
                Some(after) => match tugboat.export_audit(&who, after, at, service.as_ref(), PAGE).await {
                    Ok(next) => Some(Ok(next)),
                    Err(e) => Some(Err(e)),
                },
                None => None,
            };
            match next {
                Some(Err(e)) => {
                    // The status is sent already: the body ends short, and
                    // the client sees an incomplete answer.
                    tracing::error!(error = %e, "the audit export ended early");
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
                Some(Ok(next)) => Some((Ok(Bytes::from(body)), Some(next))),
                None => Some((Ok(Bytes::from(body)), None)),
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(pages),
    )
        .into_response())
}
