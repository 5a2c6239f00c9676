//! `GET /v1/events`: changes as Server-Sent Events, each a
//! [`tug_api::Event`] (its `id` is the event's, its `event` the kind). The
//! stream polls the event log for ids above the last one read, so it
//! carries the changes made through every server sharing the database, in
//! order, once; each event as the caller may see it (the service decides). The stream looks
//! its token up again whenever the server learns of a revocation: once the
//! token is revoked it sends an `error` event (`token_revoked`) and ends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tug_api::EventQuery;
use tug_core::ServiceName;
use tug_service::{Principal, Tugboat};

use crate::error::ApiError;
use crate::extract::Caller;
use crate::AppState;

/// How often an idle stream looks for new events.
const POLL: Duration = Duration::from_millis(250);
/// Events read per query.
const BATCH: u32 = 200;

struct Cursor {
    tugboat: Tugboat,
    who: Principal,
    service: Option<ServiceName>,
    /// The id of the last event read, sent or not.
    last: i64,
    queue: VecDeque<tug_api::Event>,
    /// Moves when some token is revoked (see `AppState::revocations`).
    revocations: tokio::sync::watch::Receiver<i64>,
    /// Set once the stream has said why it ends.
    ended: bool,
}

/// The `error` event that ends a stream, with the API's error body.
fn error_event(e: tug_service::Error) -> Event {
    let e = ApiError::from(e);
    let body = tug_api::ErrorBody {
        code: e.code.to_string(),
        message: e.message,
    };
    Event::default()
        .event("error")
        .data(serde_json::to_string(&body).unwrap_or_default())
}

pub async fn stream(
    State(state): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let service = super::service_param(q.service.as_deref())?;
    state.tugboat.check_watch(&who, service.as_ref())?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let last = match q.since.or(resume) {
        Some(id) => id,
        None => state.tugboat.last_event_id(&who).await?,
    };
    let mut revocations = state.revocations.clone();
    revocations.mark_unchanged();
    let cursor = Cursor {
        tugboat: state.tugboat.clone(),
        who,
        service,
        last,
        queue: VecDeque::new(),
        revocations,
        ended: false,
    };
    let events = futures::stream::unfold(cursor, |mut c| async move {
        if c.ended {
            return None;
        }
        loop {
            if c.revocations.has_changed().unwrap_or(false) {
                c.revocations.mark_unchanged();
                if let Err(e) = c.tugboat.recheck(&c.who).await {
                    tracing::info!(error = %e, "event stream ended");
                    c.ended = true;
                    return Some((Ok(error_event(e)), c));
                }
            }
            if let Some(e) = c.queue.pop_front() {
                let data = serde_json::to_string(&e).unwrap_or_default();
                let sse = Event::default().id(e.id.to_string()).event(e.kind()).data(data);
                return Some((Ok(sse), c));
            }
            match c.tugboat.events(&c.who, c.last, c.service.as_ref(), BATCH).await {
                Ok(page) => {
                    // Events the caller may not see are skipped, not re-read.
                    let fresh = page.last != c.last;
                    c.last = page.last;
                    c.queue.extend(page.events);
                    if !fresh {
                        tokio::time::sleep(POLL).await;
                    }
                }
                Err(e) => {
                    // A lost database ends the stream; the client
                    // reconnects with Last-Event-ID.
                    tracing::info!(error = %e, "event stream ended");
                    c.ended = true;
                    return Some((Ok(error_event(e)), c));
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
