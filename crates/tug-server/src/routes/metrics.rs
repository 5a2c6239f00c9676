//! `GET /metrics`: the server's Prometheus metrics, for a `metrics` (or
//! admin) token; and the layer that counts every HTTP request by its route
//! template, method and status, with its duration.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tug_service::Tugboat;

use crate::error::ApiError;
use crate::extract::Caller;
use crate::AppState;

/// The metrics in Prometheus's text format.
pub async fn scrape(State(state): State<AppState>, Caller(who): Caller) -> Result<Response, ApiError> {
    let text = state.tugboat.scrape(&who).await?;
    Ok(([(header::CONTENT_TYPE, tug_service::METRICS_CONTENT_TYPE)], text).into_response())
}

/// The label of a request no route matched: its path could be anything,
/// and a label must not grow with what clients send.
const UNMATCHED: &str = "unmatched";

/// Counts a request once its answer's head is ready. The route is the
/// template axum matched (`/v1/builds/{build}`), never the path as sent.
pub async fn track(State(tugboat): State<Tugboat>, request: Request, next: Next) -> Response {
    let began = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_string();
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    tugboat
        .metrics()
        .request(&route, &method, response.status().as_u16(), began.elapsed());
    response
}
