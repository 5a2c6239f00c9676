//! `/v1/blobs`: ask which blobs are missing, upload (streamed, verified
//! against the digest in the URL), read (with `Range`), check.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use tug_api::{BlobStored, MissingBlobs, MissingBlobsResponse};

use crate::error::ApiError;
use crate::extract::{digest, Caller, Json};
use crate::AppState;

/// The most digests one `missing` request may ask about.
const MAX_MISSING: usize = 10_000;

pub async fn missing(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(req): Json<MissingBlobs>,
) -> Result<axum::Json<MissingBlobsResponse>, ApiError> {
    if req.digests.len() > MAX_MISSING {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("at most {MAX_MISSING} digests per request; split the list"),
        ));
    }
    let missing = state.tugboat.missing_blobs(&who, &req.digests).await?;
    Ok(axum::Json(MissingBlobsResponse { missing }))
}

pub async fn put(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let digest = digest(&segment)?;
    let declared = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("invalid_request", "Content-Length must be a number of bytes"))?,
        ),
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let stored = state
        .tugboat
        .put_blob(&who, &digest, declared, Box::pin(stream))
        .await?;
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut res = (
        status,
        axum::Json(BlobStored {
            digest,
            size: stored.size,
            created: stored.created,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/blobs/{digest}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

pub async fn head(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
) -> Result<Response, ApiError> {
    let digest = digest(&segment)?;
    match state.tugboat.stat_blob(&who, &digest).await? {
        Some(size) => {
            let mut res = StatusCode::OK.into_response();
            let h = res.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
                h.insert(header::ETAG, v);
            }
            Ok(res)
        }
        None => Err(tug_service::Error::BlobNotFound(digest).into()),
    }
}

/// A parsed `Range: bytes=…` header (a single range; anything else is
/// ignored and the whole blob served, as HTTP allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    From(u64),
    Span(u64, u64),
    Suffix(u64),
}

fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (false, true) => a.parse().ok().map(ByteRange::From),
        (false, false) => {
            let (s, e) = (a.parse().ok()?, b.parse().ok()?);
            (s <= e).then_some(ByteRange::Span(s, e))
        }
        (true, false) => b.parse().ok().map(ByteRange::Suffix),
        (true, true) => None,
    }
}

pub async fn get(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(segment): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let digest = digest(&segment)?;
    let size = async {
        state
            .tugboat
            .stat_blob(&who, &digest)
            .await?
            .ok_or(tug_service::Error::BlobNotFound(digest))
    };
    ranged(&headers, digest, size, |start, end| {
        state.tugboat.get_blob(&who, &digest, start, end)
    })
    .await
}

/// Answers a GET of the blob `digest` with the range `headers` ask for (a
/// single range, else the whole blob): 206 with `Content-Range`, or 416
/// past the end. `size` is awaited only for a suffix range; `fetch` reads
/// the bytes from `start` to `end`.
pub(crate) async fn ranged<S, F, Fut>(
    headers: &HeaderMap,
    digest: tug_core::Digest,
    size: S,
    fetch: F,
) -> Result<Response, ApiError>
where
    S: std::future::Future<Output = Result<u64, tug_service::Error>>,
    F: FnOnce(u64, Option<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<tug_service::Blob, tug_service::Error>>,
{
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let (start, end) = match range {
        None => (0, None),
        Some(ByteRange::From(s)) => (s, None),
        Some(ByteRange::Span(s, e)) => (s, Some(e.saturating_add(1))),
        Some(ByteRange::Suffix(n)) => (size.await?.saturating_sub(n), None),
    };
    let blob = match fetch(start, end).await {
        // The store refuses a start past the end; the answer names the
        // size all the same, so a client can resume correctly.
        Err(tug_service::Error::RangeNotSatisfiable { start, size }) => return Ok(unsatisfiable(start, size)),
        blob => blob?,
    };
    let end = end.map_or(blob.size, |e| e.min(blob.size));
    if range.is_some() && blob.size > 0 && start >= blob.size {
        return Ok(unsatisfiable(start, blob.size));
    }
    let partial = range.is_some() && blob.size > 0;
    let mut res = Response::new(Body::from_stream(blob.body));
    *res.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end.saturating_sub(start)));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        h.insert(header::ETAG, v);
    }
    if partial {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{}", end.saturating_sub(1), blob.size)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(res)
}

/// 416 with `Content-Range: bytes */SIZE`, as RFC 9110 asks, so that the
/// client learns the blob's size.
fn unsatisfiable(start: u64, size: u64) -> Response {
    let mut res = ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range_not_satisfiable",
        format!("range starts at {start}, past the end of the {size}-byte blob; ask for bytes below {size}"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        res.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=10-"), Some(ByteRange::From(10)));
        assert_eq!(parse_range("bytes=0-99"), Some(ByteRange::Span(0, 99)));
        assert_eq!(parse_range("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(parse_range("bytes=5-1"), None);
        assert_eq!(parse_range("bytes=0-1,4-5"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_range("bytes=x-"), None);
    }
}
