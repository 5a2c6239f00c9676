//! `/v2/`: the OCI registry (Distribution Spec v1.1) and its token
//! endpoint. Handlers parse the path (repository names contain slashes,
//! so one wildcard route dispatches on the path's shape), the credentials
//! and the headers, call the registry's use cases and answer with the
//! headers and the error body (`{"errors":[{"code","message","detail"}]}`)
//! the specification asks for. Rules live in `tug_service::oci`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use base64::Engine as _;
use futures::TryStreamExt;
use tug_core::oci::{OciCode, OciError, Reference, Repository, MAX_MANIFEST};
use tug_core::Digest;
use tug_service::oci::{ChunkOutcome, Credentials, Visitor};
use tug_service::{Error, ErrorKind};

use crate::routes::blobs::{parse_range, ByteRange};
use crate::AppState;

/// The service name in challenges and tokens.
const SERVICE: &str = "tugboat";

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// The registry's routes, merged into the server's router.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/", get(base))
        .route("/v2", get(base))
        .route("/v2/token", get(token).post(token_form))
        .route("/v2/{*path}", any(dispatch))
        // Blob bodies stream to the store or a session file; manifests are
        // read up to their own limit.
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// A registry error answer; `scope` makes a 401's challenge name what to
/// ask a token for.
struct Reply {
    error: OciError,
    status: StatusCode,
    challenge: Option<String>,
    headers: Vec<(HeaderName, String)>,
}

impl Reply {
    fn new(error: OciError) -> Reply {
        Reply {
            status: StatusCode::from_u16(error.code.status()).unwrap_or(StatusCode::BAD_REQUEST),
            error,
            challenge: None,
            headers: Vec::new(),
        }
    }

    fn of(code: OciCode, message: impl Into<String>) -> Reply {
        Reply::new(OciError::new(code, message))
    }

    /// The answer to a service error, for a request about `scope`.
    fn from_service(e: Error, scope: Option<&str>, realm: &str) -> Reply {
        let (code, message) = match e {
            Error::Oci(e) => (e.code, e.message),
            Error::TooLarge { limit } => (
                OciCode::SizeInvalid,
                format!("the blob is larger than the {limit}-byte limit; nothing was stored"),
            ),
            e @ Error::DigestMismatch { .. } => (OciCode::DigestInvalid, e.to_string()),
            e @ Error::UploadInterrupted { .. } => (OciCode::BlobUploadInvalid, e.to_string()),
            e @ Error::RangeNotSatisfiable { .. } => (OciCode::RangeInvalid, e.to_string()),
            e => match e.kind() {
                ErrorKind::Unauthenticated => (OciCode::Unauthorized, e.to_string()),
                ErrorKind::Forbidden | ErrorKind::Conflict | ErrorKind::Policy => (OciCode::Denied, e.to_string()),
                ErrorKind::NotFound => (OciCode::NameUnknown, e.to_string()),
                // No code of the specification fits every other invalid
                // request; UNSUPPORTED with 400 says the request itself is
                // at fault.
                ErrorKind::Invalid => {
                    return Reply::of(OciCode::Unsupported, e.to_string()).status(StatusCode::BAD_REQUEST)
                }
                ErrorKind::Unavailable | ErrorKind::Internal => {
                    return Reply {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        ..Reply::internal(e)
                    }
                }
            },
        };
        let mut reply = Reply::of(code, message);
        if code == OciCode::Unauthorized {
            reply.challenge = Some(challenge(realm, scope));
        }
        reply
    }

    fn internal(e: Error) -> Reply {
        let status = if e.kind() == ErrorKind::Unavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        tracing::error!(error = %e, "registry request failed");
        Reply {
            status,
            ..Reply::of(OciCode::Unsupported, crate::error::INTERNAL_MESSAGE)
        }
    }

    fn status(mut self, status: StatusCode) -> Reply {
        self.status = status;
        self
    }

    fn header(mut self, name: HeaderName, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{"code": self.error.code.as_str(), "message": self.error.message, "detail": null}]
        });
        let mut res = (self.status, axum::Json(body)).into_response();
        let h = res.headers_mut();
        h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        if let Some(c) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.insert(header::WWW_AUTHENTICATE, c);
        }
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        res
    }
}

type Answer = Result<Response, Reply>;

/// `WWW-Authenticate: Bearer realm=…,service=…[,scope=…]`.
fn challenge(realm: &str, scope: Option<&str>) -> String {
    match scope {
        Some(s) => format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\",scope=\"{s}\""),
        None => format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\""),
    }
}

/// Where clients ask for tokens: this server, as the client reached it.
fn realm(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{scheme}://{host}/v2/token")
}

/// The credentials of a request: Basic (a Tugboat token as the password)
/// or Bearer.
fn credentials(headers: &HeaderMap) -> Credentials {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Credentials::None;
    };
    if let Some(b) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        return match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((_, password)) => Credentials::Basic(password.to_string()),
            None => Credentials::Basic(String::new()),
        };
    }
    match value.strip_prefix("Bearer ") {
        Some(t) => Credentials::Bearer(t.trim().to_string()),
        None => Credentials::Basic(String::new()),
    }
}

/// `GET /v2/`: the API is here, for callers who may use it.
async fn base(State(state): State<AppState>, headers: HeaderMap) -> Answer {
    let realm = realm(&headers);
    state
        .tugboat
        .registry_visitor(&credentials(&headers))
        .await
        .map_err(|e| Reply::from_service(e, None, &realm))?;
    let mut res = axum::Json(serde_json::json!({})).into_response();
    res.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    Ok(res)
}

/// `GET /v2/token?service=&scope=…`.
async fn token(State(state): State<AppState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Answer {
    let scopes: Vec<String> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect();
    issue(&state, &credentials(&headers), &scopes, &realm(&headers)).await
}

/// `POST /v2/token` with the OAuth2 form (`grant_type=password`).
async fn token_form(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Answer {
    let mut scopes = Vec::new();
    let mut password = None;
    for (k, v) in url::form_urlencoded::parse(&body) {
        match &*k {
            "scope" => scopes.push(v.into_owned()),
            "password" => password = Some(v.into_owned()),
            _ => {}
        }
    }
    let credentials = match password {
        Some(p) => Credentials::Basic(p),
        None => credentials(&headers),
    };
    issue(&state, &credentials, &scopes, &realm(&headers)).await
}

async fn issue(state: &AppState, credentials: &Credentials, scopes: &[String], realm: &str) -> Answer {
    let t = state
        .tugboat
        .registry_token(credentials, scopes)
        .await
        .map_err(|e| Reply::from_service(e, None, realm))?;
    let issued_at = t.issued_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(axum::Json(serde_json::json!({
        "token": t.token,
        "access_token": t.token,
        "expires_in": t.expires_in,
        "issued_at": issued_at,
    }))
    .into_response())
}

/// What a `/v2/<name>/…` path asks for.
enum Target<'a> {
    Manifest(&'a str),
    Blob(&'a str),
    Uploads(Option<&'a str>),
    Tags,
    Referrers(&'a str),
}

/// Splits a path after `/v2/` into the repository name and the target.
fn target(path: &str) -> Option<(&str, Target<'_>)> {
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Some((name, Target::Tags));
    }
    if let Some(name) = path
        .strip_suffix("/blobs/uploads/")
        .or_else(|| path.strip_suffix("/blobs/uploads"))
    {
        return Some((name, Target::Uploads(None)));
    }
    if let Some((name, id)) = path.rsplit_once("/blobs/uploads/") {
        return Some((name, Target::Uploads(Some(id))));
    }
    if let Some((name, r)) = path.rsplit_once("/manifests/") {
        return Some((name, Target::Manifest(r)));
    }
    if let Some((name, d)) = path.rsplit_once("/blobs/") {
        return Some((name, Target::Blob(d)));
    }
    if let Some((name, d)) = path.rsplit_once("/referrers/") {
        return Some((name, Target::Referrers(d)));
    }
    None
}

/// One query parameter.
fn param(query: &Option<String>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// A request body as the stream of bytes the use cases read.
fn stream(body: Body) -> futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>> {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

async fn dispatch(
    State(state): State<AppState>,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Answer {
    let (parts, body) = req.into_parts();
    let axum::http::request::Parts {
        method, headers, uri, ..
    } = parts;
    let realm = realm(&headers);
    let Some((name, target)) = target(&path) else {
        // Not a registry route at all: the answer of any unknown path.
        return Ok(crate::routes::not_found(uri).await.into_response());
    };
    let writes = !matches!(method, Method::GET | Method::HEAD);
    let scope_name = name.chars().take(255).collect::<String>();
    let scope = format!("repository:{scope_name}:{}", if writes { "pull,push" } else { "pull" });
    let fail = |e: Error| Reply::from_service(e, Some(&scope), &realm);
    let repo = Repository::parse(name).map_err(Reply::new)?;
    let visitor = state
        .tugboat
        .registry_visitor(&credentials(&headers))
        .await
        .map_err(fail)?;
    let t = &state.tugboat;
    let v = &visitor;
    match (target, method) {
        (Target::Manifest(r), m @ (Method::GET | Method::HEAD)) => {
            let reference = Reference::parse(r).map_err(Reply::new)?;
            let answer = t.oci_manifest(v, &repo, &reference).await.map_err(fail)?;
            let mut res = if m == Method::HEAD {
                Response::new(Body::empty())
            } else {
                Response::new(Body::from(answer.bytes.clone()))
            };
            let h = res.headers_mut();
            put(h, header::CONTENT_TYPE, &answer.media_type);
            put(h, header::CONTENT_LENGTH, &answer.bytes.len().to_string());
            put(h, CONTENT_DIGEST, &answer.digest.to_string());
            put(h, header::ETAG, &format!("\"{}\"", answer.digest));
            Ok(res)
        }
        (Target::Manifest(r), Method::PUT) => {
            let reference = Reference::parse(r).map_err(Reply::new)?;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = axum::body::to_bytes(body, MAX_MANIFEST).await.map_err(|_| {
                Reply::of(
                    OciCode::SizeInvalid,
                    format!("the manifest is larger than {MAX_MANIFEST} bytes; nothing was stored"),
                )
                .status(StatusCode::PAYLOAD_TOO_LARGE)
            })?;
            let pushed = t
                .oci_put_manifest(v, &repo, &reference, content_type.as_deref(), bytes)
                .await
                .map_err(fail)?;
            let mut res = StatusCode::CREATED.into_response();
            let h = res.headers_mut();
            put(h, header::LOCATION, &format!("/v2/{repo}/manifests/{}", pushed.digest));
            put(h, CONTENT_DIGEST, &pushed.digest.to_string());
            if let Some(s) = pushed.subject {
                put(h, OCI_SUBJECT, &s.to_string());
            }
            Ok(res)
        }
        (Target::Manifest(r), Method::DELETE) => {
            let reference = Reference::parse(r).map_err(Reply::new)?;
            t.oci_delete(v, &repo, &reference).await.map_err(fail)?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Target::Blob(d), m @ (Method::GET | Method::HEAD)) => {
            let digest = tug_core::oci::digest(d).map_err(Reply::new)?;
            blob(t, v, &repo, &digest, &headers, m == Method::HEAD)
                .await
                .map_err(fail)?
        }
        (Target::Blob(_), Method::DELETE) => Err(Reply::of(
            OciCode::Unsupported,
            "blobs are deleted by tug gc once nothing refers to them",
        )),
        (Target::Uploads(None), Method::POST) => {
            if let Some(d) = param(&query, "digest") {
                let digest = tug_core::oci::digest(&d).map_err(Reply::new)?;
                let declared = content_length(&headers);
                t.oci_put_blob(v, &repo, &digest, declared, stream(body))
                    .await
                    .map_err(fail)?;
                return Ok(blob_created(&repo, &digest));
            }
            if let (Some(m), Some(from)) = (param(&query, "mount"), param(&query, "from")) {
                let digest = tug_core::oci::digest(&m).map_err(Reply::new)?;
                if let Ok(from) = Repository::parse(&from) {
                    if t.oci_mount(v, &repo, &digest, &from).await.map_err(fail)? {
                        return Ok(blob_created(&repo, &digest));
                    }
                }
            }
            let id = t.oci_start_upload(v, &repo).await.map_err(fail)?;
            Ok(session(&repo, &id, 0, StatusCode::ACCEPTED))
        }
        (Target::Uploads(Some(id)), Method::PATCH) => {
            let start = match headers.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()) {
                None => None,
                Some(r) => Some(content_range_start(r).ok_or_else(|| {
                    Reply::of(
                        OciCode::RangeInvalid,
                        format!("Content-Range {r:?} is not <start>-<end>"),
                    )
                })?),
            };
            match t
                .oci_upload_chunk(v, &repo, id, start, stream(body))
                .await
                .map_err(fail)?
            {
                ChunkOutcome::Accepted(size) => Ok(session(&repo, id, size, StatusCode::ACCEPTED)),
                ChunkOutcome::OutOfOrder(size) => Err(Reply::of(
                    OciCode::RangeInvalid,
                    format!("the chunk must start at byte {size}, where the upload ends"),
                )
                .header(header::LOCATION, format!("/v2/{repo}/blobs/uploads/{id}"))
                .header(header::RANGE, range(size))),
            }
        }
        (Target::Uploads(Some(id)), Method::GET) => {
            let size = t.oci_upload_status(v, &repo, id).await.map_err(fail)?;
            Ok(session(&repo, id, size, StatusCode::NO_CONTENT))
        }
        (Target::Uploads(Some(id)), Method::PUT) => {
            let digest = param(&query, "digest")
                .ok_or_else(|| Reply::of(OciCode::DigestInvalid, "finish an upload with ?digest=sha256:…"))?;
            let digest = tug_core::oci::digest(&digest).map_err(Reply::new)?;
            t.oci_finish_upload(v, &repo, id, &digest, stream(body))
                .await
                .map_err(fail)?;
            Ok(blob_created(&repo, &digest))
        }
        (Target::Uploads(Some(id)), Method::DELETE) => {
            t.oci_cancel_upload(v, &repo, id).await.map_err(fail)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Target::Tags, Method::GET) => {
            let n = match param(&query, "n") {
                None => None,
                Some(n) => Some(n.parse::<usize>().map_err(|_| {
                    Reply::of(OciCode::Unsupported, format!("n={n} is not a number")).status(StatusCode::BAD_REQUEST)
                })?),
            };
            let last = param(&query, "last");
            let page = t.oci_tags(v, &repo, n, last.as_deref()).await.map_err(fail)?;
            let mut res = axum::Json(serde_json::json!({"name": repo.as_str(), "tags": page.tags})).into_response();
            if let (true, Some(n), Some(last)) = (page.more, n, page.tags.last()) {
                put(
                    res.headers_mut(),
                    header::LINK,
                    &format!("</v2/{repo}/tags/list?n={n}&last={last}>; rel=\"next\""),
                );
            }
            Ok(res)
        }
        (Target::Referrers(d), Method::GET) => {
            let digest = tug_core::oci::digest(d).map_err(Reply::new)?;
            let artifact_type = param(&query, "artifactType");
            let index = t
                .oci_referrers(v, &repo, &digest, artifact_type.as_deref())
                .await
                .map_err(fail)?;
            let mut res = Response::new(Body::from(index));
            put(res.headers_mut(), header::CONTENT_TYPE, tug_core::oci::OCI_INDEX);
            if artifact_type.is_some() {
                put(res.headers_mut(), FILTERS_APPLIED, "artifactType");
            }
            Ok(res)
        }
        (_, m) => Err(
            Reply::of(OciCode::Unsupported, format!("{m} is not supported on /v2/{path}"))
                .status(StatusCode::METHOD_NOT_ALLOWED),
        ),
    }
}

/// A blob, whole or a range of it (206; 416 past its end).
async fn blob(
    t: &tug_service::Tugboat,
    v: &Visitor,
    repo: &Repository,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Answer, Error> {
    let size = t.oci_blob_size(v, repo, digest).await?;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let (start, end) = match range {
        None => (0, size),
        Some(ByteRange::From(s)) => (s, size),
        Some(ByteRange::Span(s, e)) => (s, e.saturating_add(1).min(size)),
        Some(ByteRange::Suffix(n)) => (size.saturating_sub(n), size),
    };
    if range.is_some() && start >= size {
        return Ok(Err(Reply::of(
            OciCode::RangeInvalid,
            format!("range starts at {start}, past the end of the {size}-byte blob"),
        )
        .header(header::CONTENT_RANGE, format!("bytes */{size}"))));
    }
    let mut res = if head {
        Response::new(Body::empty())
    } else {
        let b = t.oci_blob(v, repo, digest, start, Some(end)).await?;
        Response::new(Body::from_stream(b.body))
    };
    let h = res.headers_mut();
    put(h, header::CONTENT_TYPE, "application/octet-stream");
    put(h, header::CONTENT_LENGTH, &end.saturating_sub(start).to_string());
    put(h, header::ACCEPT_RANGES, "bytes");
    put(h, CONTENT_DIGEST, &digest.to_string());
    put(h, header::ETAG, &format!("\"{digest}\""));
    if range.is_some() {
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
        put(
            res.headers_mut(),
            header::CONTENT_RANGE,
            &format!("bytes {start}-{}/{size}", end.saturating_sub(1)),
        );
    }
    Ok(Ok(res))
}

fn put(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The start of a `Content-Range: <start>-<end>` (the registry form, which
/// some clients prefix with `bytes `).
fn content_range_start(value: &str) -> Option<u64> {
    let v = value.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v);
    let (s, e) = v.split_once('-')?;
    let (s, e): (u64, u64) = (s.trim().parse().ok()?, e.trim().split('/').next()?.parse().ok()?);
    (s <= e).then_some(s)
}

/// The `Range` header of a session holding `size` bytes.
fn range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn session(repo: &Repository, id: &str, size: u64, status: StatusCode) -> Response {
    let mut res = status.into_response();
    let h = res.headers_mut();
    put(h, header::LOCATION, &format!("/v2/{repo}/blobs/uploads/{id}"));
    put(h, header::RANGE, &range(size));
    put(h, UPLOAD_UUID, id);
    put(h, header::CONTENT_LENGTH, "0");
    res
}

fn blob_created(repo: &Repository, digest: &Digest) -> Response {
    let mut res = StatusCode::CREATED.into_response();
    let h = res.headers_mut();
    put(h, header::LOCATION, &format!("/v2/{repo}/blobs/{digest}"));
    put(h, CONTENT_DIGEST, &digest.to_string());
    put(h, header::CONTENT_LENGTH, "0");
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_name_and_target() {
        assert!(matches!(
            target("api/server/manifests/v1"),
            Some(("api/server", Target::Manifest("v1")))
        ));
        assert!(matches!(
            target("a/b/c/blobs/uploads/"),
            Some(("a/b/c", Target::Uploads(None)))
        ));
        assert!(matches!(
            target("a/b/blobs/uploads/x"),
            Some(("a/b", Target::Uploads(Some("x"))))
        ));
        assert!(matches!(
            target("a/b/blobs/sha256:1"),
            Some(("a/b", Target::Blob("sha256:1")))
        ));
        assert!(matches!(target("a/b/tags/list"), Some(("a/b", Target::Tags))));
        assert!(matches!(
            target("a/b/referrers/d"),
            Some(("a/b", Target::Referrers("d")))
        ));
        assert!(target("a/b/other").is_none());
    }

    #[test]
    fn content_ranges() {
        assert_eq!(content_range_start("0-99"), Some(0));
        assert_eq!(content_range_start("bytes 100-199/*"), Some(100));
        assert_eq!(content_range_start("9-1"), None);
        assert_eq!(content_range_start("x"), None);
        assert_eq!(range(0), "0-0");
        assert_eq!(range(10), "0-9");
    }
}
