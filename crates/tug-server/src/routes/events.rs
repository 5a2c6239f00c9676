//! `GET /v1/events`: changes as Server-Sent Events. The stream polls the
//! event table for ids above the last one sent, so it carries the changes
//! made through every server sharing the database, in order, once.

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
use tug_db::EventRow;
use tug_service::{Principal, Tugboat};

use crate::error::ApiError;
use crate::extract::Caller;
use crate::AppState;

/// How often an idle stream looks for new events.
const POLL: Duration = Duration::from_millis(250);
/// Events read per query.
const BATCH: u32 = 200;

pub fn event(row: EventRow) -> tug_api::Event {
    tug_api::Event {
        id: row.id,
        at: row.at,
        kind: row.kind,
        service: row.service,
        actor: row.actor,
        payload: serde_json::from_str(&row.payload).unwrap_or(serde_json::Value::Null),
    }
}

struct Cursor {
    tugboat: Tugboat,
    who: Principal,
    service: Option<ServiceName>,
    last: i64,
    queue: VecDeque<EventRow>,
}

pub async fn stream(
    State(state): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let service = q
        .service
        .as_deref()
        .map(ServiceName::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let last = match q.since.or(resume) {
        Some(id) => id,
        None => state.tugboat.last_event_id(&who).await?,
    };
    let cursor = Cursor {
        tugboat: state.tugboat.clone(),
        who,
        service,
        last,
        queue: VecDeque::new(),
    };
    let events = futures::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(row) = c.queue.pop_front() {
                c.last = row.id;
                let id = row.id.to_string();
                let kind = row.kind.clone();
                let data = serde_json::to_string(&event(row)).unwrap_or_default();
                return Some((Ok(Event::default().id(id).event(kind).data(data)), c));
            }
            match c.tugboat.events(&c.who, c.last, c.service.as_ref(), BATCH).await {
                Ok(rows) if !rows.is_empty() => c.queue.extend(rows),
                Ok(_) => tokio::time::sleep(POLL).await,
                Err(e) => {
                    // A revoked token or a lost database ends the stream;
                    // the client reconnects with Last-Event-ID.
                    tracing::info!(error = %e, "event stream ended");
                    return None;
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
