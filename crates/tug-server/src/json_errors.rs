//! Every error answer is JSON `{"code","message"}`, as the API promises,
//! including the ones the framework writes itself: `405 Method Not Allowed`
//! (empty body), a path segment that does not decode to UTF-8 (a
//! `text/plain` rejection), and anything else with a status of 400 or more
//! that a handler did not shape. One layer around the whole router
//! rewrites such answers, keeping their status and headers (`Allow`); the
//! answers handlers make through `ApiError` pass through untouched.
//!
//! A handler that panics is answered with a generic 500 in the same form
//! (the panic is logged), rather than with a dropped connection.

use std::any::Any;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tug_api::ErrorBody;

use crate::error::{ApiError, INTERNAL_MESSAGE};

/// How much of a framework's plain-text error is read to quote it.
const MAX_QUOTED: usize = 1024;

/// The middleware: passes answers through, rewriting non-JSON errors.
pub async fn ensure_json(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let res = next.run(req).await;
    if res.status().as_u16() < 400 || is_json(&res) {
        return res;
    }
    rewrite(&method, &uri, res).await
}

fn is_json(res: &Response) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The same answer as JSON: status and headers kept, body replaced.
async fn rewrite(method: &Method, uri: &Uri, res: Response) -> Response {
    let (mut parts, body) = res.into_parts();
    // Framework errors are short texts; a body larger than that is not
    // quoted at all.
    let text = axum::body::to_bytes(body, MAX_QUOTED)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let path = shown(uri.path());
    let status = parts.status;
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no method");
            (
                "method_not_allowed",
                format!("{method} is not allowed on {path}; it accepts {allowed}"),
            )
        }
        StatusCode::BAD_REQUEST if !decodes(uri.path()) => (
            "invalid_path",
            format!(
                "the path {path} has percent-escapes that are not UTF-8 text; names and ids in paths are UTF-8, escape them byte by byte"
            ),
        ),
        s if s.is_server_error() => ("internal", INTERNAL_MESSAGE.to_string()),
        s => {
            let reason = s.canonical_reason().unwrap_or("error").to_lowercase();
            let message = if text.is_empty() { reason } else { text };
            (code_of(s), format!("{message} ({method} {path})"))
        }
    };
    let body = ErrorBody {
        code: code.to_string(),
        message,
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

/// A stable code for a status the framework answered with.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        _ => "request_refused",
    }
}

/// Whether every percent-escape in `path` decodes to UTF-8.
fn decodes(path: &str) -> bool {
    percent_encoding::percent_decode_str(path).decode_utf8().is_ok()
}

/// A path as quoted in a message: paths may be long.
fn shown(path: &str) -> String {
    const MAX: usize = 200;
    if path.len() <= MAX {
        return path.to_string();
    }
    // Paths are ASCII (hyper refuses other bytes), so any index is a
    // character boundary; `get` keeps this safe regardless.
    format!("{}…", path.get(..MAX).unwrap_or(path))
}

/// The answer to a request whose handler panicked.
pub fn panicked(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    tracing::error!(panic = what, "a request handler panicked");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", INTERNAL_MESSAGE).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_do_not_decode_are_told_apart() {
        assert!(decodes("/v1/builds/0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70"));
        assert!(decodes("/v1/builds/%C3%A9"));
        assert!(!decodes("/v1/builds/%FF%FE"));
        assert!(!decodes("/v1/services/%C3/status"));
    }

    #[test]
    fn long_paths_are_cut() {
        let long = format!("/{}", "a".repeat(500));
        assert_eq!(shown(&long).chars().count(), 201);
    }
}
