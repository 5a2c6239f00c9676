//! A typed client for Tugboat's HTTP API, used by the CLI, the agent and the
//! tests. Besides one method per route it carries the two transfers that
//! need care: [`Client::push`] (hash, ask which blobs are missing, upload
//! only those, register) and [`Client::pull`] (download, resume with
//! `Range`, verify every digest before a file takes its final name).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tug_api::{
    ArtifactsRegistered, BlobStored, Build, BuildList, BuildQuery, CreateBuild, CreateService, CreateToken,
    CreatedToken, ErrorBody, FsckReport, GcReport, GcRequest, MissingBlobs, MissingBlobsResponse, RegisterArtifacts,
    Service, ServiceList, Token, TokenList,
};
use tug_core::{
    ArtifactKind, ArtifactName, ArtifactSpec, DerivedFrom, Digest, Hasher, Platform, Role, ServiceName, TokenName,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error body.
    #[error("{message} ({code}, HTTP {status})")]
    Api { status: u16, code: String, message: String },
    /// Nothing answered at the address (refused, unknown host, timeout).
    #[error("cannot reach the Tugboat server at {url}: is `tug server` running there? (set --server or TUG_SERVER)")]
    Connect { url: String, source: reqwest::Error },
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid server URL {0:?}: use http://HOST:PORT")]
    Url(String),
    #[error("{name}: downloaded bytes hash to {actual}, not {expected}; the partial file was removed, pull again")]
    DigestMismatch {
        name: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl Error {
    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Called with the number of bytes just moved.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// One file to push into a build.
#[derive(Debug, Clone)]
pub struct PushItem {
    pub path: PathBuf,
    pub name: ArtifactName,
    pub kind: ArtifactKind,
    pub platform: Option<Platform>,
    pub derived_from: Vec<DerivedFrom>,
    /// The file is a program (on disk it has an executable bit): it is
    /// materialised with its executable bits where it is pulled or deployed.
    pub executable: bool,
}

/// What a push did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushReport {
    pub artifacts: usize,
    /// Blobs whose bytes travelled.
    pub uploaded_blobs: usize,
    pub uploaded_bytes: u64,
    /// Blobs the server already had: no byte of them was sent.
    pub skipped_blobs: usize,
    pub skipped_bytes: u64,
    /// Artifacts that were new to the build.
    pub registered: u64,
    /// The build was sealed: the files were its own artifacts, nothing was
    /// registered, and only the blobs the store lacked (moved aside by
    /// `fsck --repair`, say) were uploaded again.
    pub sealed_build: bool,
}

/// What a pull did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullReport {
    pub files: usize,
    pub downloaded_bytes: u64,
    /// Files already present with the right digest.
    pub up_to_date: usize,
}

/// Progress callbacks for transfers.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called once with the total bytes about to move.
    pub total: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    pub progress: Option<Progress>,
}

/// Blobs uploaded at once by a push.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Digests asked about per `missing` request (the server's limit).
const MISSING_BATCH: usize = 10_000;
/// Artifacts registered per request.
const REGISTER_BATCH: usize = 5_000;

#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client for the server at `base` (`http://127.0.0.1:7700`).
    pub fn new(base: &str, token: Option<String>) -> Result<Client> {
        let url = url::Url::parse(base).map_err(|_| Error::Url(base.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(Error::Url(base.to_string()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            // Below the server's shortest header-read timeout (5 s), which
            // also closes idle keep-alive connections: a connection is
            // never reused just as the server closes it.
            .pool_idle_timeout(std::time::Duration::from_secs(4))
            .build()
            .map_err(Error::Http)?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        req
    }

    async fn send(&self, req: RequestBuilder) -> Result<reqwest::Response> {
        let res = req.send().await.map_err(|e| {
            if e.is_connect() {
                Error::Connect {
                    url: self.base.clone(),
                    source: e,
                }
            } else {
                Error::Http(e)
            }
        })?;
        // 304 answers a conditional request (a channel that did not change).
        if res.status().is_success() || res.status() == StatusCode::NOT_MODIFIED {
            return Ok(res);
        }
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Error::Api {
                status,
                code: body.code,
                message: body.message,
            },
            Err(_) => Error::Api {
                status,
                code: "http_error".into(),
                message: format!(
                    "the server answered HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                ),
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        let res = self.send(req).await?;
        let bytes = res.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(e.to_string()))
    }

    fn with_json(&self, method: Method, path: &str, body: &impl Serialize) -> RequestBuilder {
        self.request(method, path).json(body)
    }

    // ---- health, services, tokens ----

    pub async fn health(&self) -> Result<()> {
        self.send(self.request(Method::GET, "/healthz")).await.map(|_| ())
    }

    pub async fn create_service(&self, name: &ServiceName) -> Result<Service> {
        self.json(self.with_json(Method::POST, "/v1/services", &CreateService { name: name.clone() }))
            .await
    }

    pub async fn list_services(&self) -> Result<Vec<Service>> {
        Ok(self
            .json::<ServiceList>(self.request(Method::GET, "/v1/services"))
            .await?
            .services)
    }

    pub async fn create_token(
        &self,
        name: TokenName,
        role: Role,
        service: Option<ServiceName>,
    ) -> Result<CreatedToken> {
        self.create_token_with(&CreateToken {
            name,
            role,
            service,
            environment: None,
        })
        .await
    }

    /// Creates a token with every option of `POST /v1/tokens` (an agent
    /// token scoped to one environment, say).
    pub async fn create_token_with(&self, req: &CreateToken) -> Result<CreatedToken> {
        self.json(self.with_json(Method::POST, "/v1/tokens", req)).await
    }

    pub async fn list_tokens(&self) -> Result<Vec<Token>> {
        Ok(self
            .json::<TokenList>(self.request(Method::GET, "/v1/tokens"))
            .await?
            .tokens)
    }

    pub async fn revoke_token(&self, name_or_id: &str) -> Result<Token> {
        self.json(self.request(Method::DELETE, &format!("/v1/tokens/{}", encode(name_or_id))))
            .await
    }

    // ---- webhooks ----

    /// Creates a webhook; the answer holds its secret, shown only here.
    pub async fn create_webhook(&self, req: &tug_api::CreateWebhook) -> Result<tug_api::CreatedWebhook> {
        self.json(self.with_json(Method::POST, "/v1/webhooks", req)).await
    }

    pub async fn list_webhooks(&self) -> Result<Vec<tug_api::Webhook>> {
        Ok(self
            .json::<tug_api::WebhookList>(self.request(Method::GET, "/v1/webhooks"))
            .await?
            .webhooks)
    }

    /// Deletes a webhook by id or unique id prefix.
    pub async fn delete_webhook(&self, id: &str) -> Result<tug_api::Webhook> {
        self.json(self.request(Method::DELETE, &format!("/v1/webhooks/{}", encode(id))))
            .await
    }

    pub async fn webhook_deliveries(&self, id: &str) -> Result<Vec<tug_api::Delivery>> {
        Ok(self
            .json::<tug_api::DeliveryList>(
                self.request(Method::GET, &format!("/v1/webhooks/{}/deliveries", encode(id))),
            )
            .await?
            .deliveries)
    }

    /// Sends a delivery again now (same `webhook-id`).
    pub async fn redeliver(&self, delivery: &str) -> Result<tug_api::Delivery> {
        self.json(self.request(
            Method::POST,
            &format!("/v1/webhooks/deliveries/{}/redeliver", encode(delivery)),
        ))
        .await
    }

    // ---- builds ----

    pub async fn create_build(&self, req: &CreateBuild) -> Result<Build> {
        self.json(self.with_json(Method::POST, "/v1/builds", req)).await
    }

    /// A build by id or manifest digest, with its artifacts.
    pub async fn build(&self, reference: &str) -> Result<Build> {
        self.json(self.request(Method::GET, &format!("/v1/builds/{}", encode(reference))))
            .await
    }

    pub async fn list_builds(&self, query: &BuildQuery) -> Result<Vec<Build>> {
        Ok(self
            .json::<BuildList>(self.request(Method::GET, "/v1/builds").query(query))
            .await?
            .builds)
    }

    /// The canonical manifest bytes of a sealed build.
    pub async fn manifest(&self, reference: &str) -> Result<Vec<u8>> {
        let res = self
            .send(self.request(Method::GET, &format!("/v1/builds/{}/manifest", encode(reference))))
            .await?;
        Ok(res.bytes().await?.to_vec())
    }

    pub async fn register_artifacts(
        &self,
        reference: &str,
        artifacts: Vec<ArtifactSpec>,
    ) -> Result<ArtifactsRegistered> {
        let path = format!("/v1/builds/{}/artifacts", encode(reference));
        self.json(self.with_json(Method::POST, &path, &RegisterArtifacts { artifacts }))
            .await
    }

    pub async fn seal(&self, reference: &str) -> Result<Build> {
        self.json(self.request(Method::POST, &format!("/v1/builds/{}/seal", encode(reference))))
            .await
    }

    // ---- pipelines and deployments ----

    /// Stores a pipeline; with `base_revision`, only if the stored one is
    /// still at that revision.
    pub async fn apply_pipeline(
        &self,
        service: &ServiceName,
        spec: &str,
        base_revision: Option<i64>,
    ) -> Result<tug_api::PipelineView> {
        let path = format!("/v1/services/{service}/pipeline");
        let body = tug_api::ApplyPipeline {
            spec: spec.to_string(),
            base_revision,
        };
        self.json(self.with_json(Method::PUT, &path, &body)).await
    }

    pub async fn pipeline(&self, service: &ServiceName) -> Result<tug_api::PipelineView> {
        self.json(self.request(Method::GET, &format!("/v1/services/{service}/pipeline")))
            .await
    }

    pub async fn pipeline_history(&self, service: &ServiceName) -> Result<Vec<tug_api::PipelineRevision>> {
        self.json(self.request(Method::GET, &format!("/v1/services/{service}/pipeline/history")))
            .await
    }

    pub async fn release(&self, service: &ServiceName, req: &tug_api::Release) -> Result<tug_api::DeployResult> {
        self.json(self.with_json(Method::POST, &format!("/v1/services/{service}/release"), req))
            .await
    }

    pub async fn promote(&self, service: &ServiceName, req: &tug_api::Promote) -> Result<tug_api::DeployResult> {
        self.json(self.with_json(Method::POST, &format!("/v1/services/{service}/promote"), req))
            .await
    }

    pub async fn rollback(&self, service: &ServiceName, req: &tug_api::Rollback) -> Result<tug_api::DeployResult> {
        self.json(self.with_json(Method::POST, &format!("/v1/services/{service}/rollback"), req))
            .await
    }

    /// Approves or rejects the waiting deployment of `build`: the route is
    /// named by the decision's text.
    pub async fn decide(
        &self,
        service: &ServiceName,
        req: &tug_api::Decide,
        decision: tug_core::states::Decision,
    ) -> Result<tug_api::Decided> {
        self.json(self.with_json(Method::POST, &format!("/v1/services/{service}/{decision}"), req))
            .await
    }

    /// The next version: `bump` is cloud (with `commit`), major, minor or patch.
    pub async fn next_version(
        &self,
        service: &ServiceName,
        bump: &str,
        commit: Option<&str>,
    ) -> Result<tug_api::NextVersion> {
        let q = tug_api::NextVersionQuery {
            bump: bump.to_string(),
            commit: commit.map(str::to_string),
        };
        self.json(
            self.request(Method::GET, &format!("/v1/services/{service}/next-version"))
                .query(&q),
        )
        .await
    }

    /// What changed between two environments or builds of a service.
    pub async fn diff(&self, service: &ServiceName, from: &str, to: &str) -> Result<tug_api::DiffResult> {
        let q = tug_api::DiffQuery {
            from: from.to_string(),
            to: to.to_string(),
        };
        self.json(
            self.request(Method::GET, &format!("/v1/services/{service}/diff"))
                .query(&q),
        )
        .await
    }

    pub async fn status(&self, service: &ServiceName) -> Result<tug_api::Status> {
        self.json(self.request(Method::GET, &format!("/v1/services/{service}/status")))
            .await
    }

    pub async fn history(
        &self,
        service: &ServiceName,
        env: &tug_core::EnvName,
        limit: u32,
    ) -> Result<tug_api::History> {
        let path = format!("/v1/services/{service}/environments/{env}/history?limit={limit}");
        self.json(self.request(Method::GET, &path)).await
    }

    /// The rollout of an environment's current build to its agents.
    pub async fn rollout(&self, service: &ServiceName, env: &tug_core::EnvName) -> Result<tug_api::Rollout> {
        let path = format!("/v1/services/{service}/rollout");
        self.json(self.request(Method::GET, &path).query(&[("env", env.as_str())]))
            .await
    }

    /// Halts an environment's rollout: no further agent takes the build.
    pub async fn halt_rollout(
        &self,
        service: &ServiceName,
        env: &tug_core::EnvName,
        reason: &str,
    ) -> Result<tug_api::Rollout> {
        let body = tug_api::HaltRequest {
            environment: env.clone(),
            reason: reason.to_string(),
        };
        let path = format!("/v1/services/{service}/rollout/halt");
        self.json(self.with_json(Method::POST, &path, &body)).await
    }

    /// Lets a halted rollout go on.
    pub async fn resume_rollout(&self, service: &ServiceName, env: &tug_core::EnvName) -> Result<tug_api::Rollout> {
        let body = tug_api::ResumeRequest {
            environment: env.clone(),
        };
        let path = format!("/v1/services/{service}/rollout/resume");
        self.json(self.with_json(Method::POST, &path, &body)).await
    }

    /// Lifts an environment's auto-release hold; the answer says what
    /// auto-release did at once.
    pub async fn resume_auto_release(
        &self,
        service: &ServiceName,
        env: &tug_core::EnvName,
    ) -> Result<tug_api::Resumed> {
        let path = format!("/v1/services/{service}/environments/{env}/resume");
        self.json(self.request(Method::POST, &path)).await
    }

    pub async fn yank(&self, reference: &str, reason: Option<String>) -> Result<Build> {
        let path = format!("/v1/builds/{}/yank", encode(reference));
        self.json(self.with_json(Method::POST, &path, &tug_api::Yank { reason }))
            .await
    }

    pub async fn mark_critical(&self, reference: &str) -> Result<Build> {
        self.json(self.request(Method::POST, &format!("/v1/builds/{}/critical", encode(reference))))
            .await
    }

    pub async fn unembargo(&self, reference: &str) -> Result<Build> {
        self.json(self.request(Method::POST, &format!("/v1/builds/{}/unembargo", encode(reference))))
            .await
    }

    /// Follows `GET /v1/events`: a stream of events, oldest first, that
    /// ends when the connection does. When the server ends it for a reason
    /// (the token was revoked), the last item is that error.
    pub async fn events(
        &self,
        query: &tug_api::EventQuery,
    ) -> Result<impl futures::Stream<Item = Result<tug_api::Event>> + use<>> {
        let res = self.send(self.request(Method::GET, "/v1/events").query(query)).await?;
        let state = (res.bytes_stream().boxed(), String::new());
        Ok(futures::stream::unfold(state, |(mut body, mut buf)| async move {
            loop {
                // An event ends with a blank line; its JSON is in `data:`.
                if let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let data: Vec<&str> = block
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    if data.is_empty() {
                        continue; // a keep-alive comment
                    }
                    let data = data.join("\n");
                    let is_error = block
                        .lines()
                        .any(|l| l.strip_prefix("event:").map(str::trim) == Some("error"));
                    if is_error {
                        let e = match serde_json::from_str::<ErrorBody>(&data) {
                            // A stream ends with its token (401) or with
                            // the server's database (500).
                            Ok(b) => Error::Api {
                                status: if b.code == "internal" { 500 } else { 401 },
                                code: b.code,
                                message: b.message,
                            },
                            Err(e) => Error::Protocol(e.to_string()),
                        };
                        return Some((Err(e), (body, buf)));
                    }
                    let parsed = serde_json::from_str(&data).map_err(|e| Error::Protocol(e.to_string()));
                    return Some((parsed, (body, buf)));
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n")),
                    Some(Err(e)) => return Some((Err(Error::Http(e)), (body, buf))),
                    None => return None,
                }
            }
        }))
    }

    // ---- agents ----

    /// What an environment wants agents of `platform` to run. With `etag`
    /// (the last answer's) and `wait`, the server holds the request until
    /// the answer changes; `None` means it did not change.
    pub async fn channel(
        &self,
        service: &ServiceName,
        env: &tug_core::EnvName,
        platform: &tug_core::Platform,
        agent_id: Option<&str>,
        etag: Option<&str>,
        wait: Option<std::time::Duration>,
    ) -> Result<Option<(tug_api::Channel, String)>> {
        let mut req = self.request(Method::GET, &format!("/v1/channels/{service}/{env}"));
        let mut query: Vec<(&str, String)> = vec![("platform", platform.to_string())];
        if let Some(a) = agent_id {
            query.push(("agent", a.to_string()));
        }
        if let Some(w) = wait {
            query.push(("wait", format!("{}s", w.as_secs())));
        }
        req = req.query(&query);
        if let Some(e) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e);
        }
        let res = self.send(req).await?;
        if res.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let etag = res
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = res.bytes().await?;
        let channel = serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(Some((channel, etag)))
    }

    /// Sends an agent's heartbeat and state.
    pub async fn report(&self, report: &tug_api::AgentReport) -> Result<()> {
        self.send(self.with_json(Method::POST, "/v1/agents/report", report))
            .await
            .map(|_| ())
    }

    /// Agents, optionally of one service and environment.
    pub async fn agents(&self, service: Option<&str>, env: Option<&str>) -> Result<Vec<tug_api::Agent>> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        if let Some(e) = env {
            query.push(("env", e));
        }
        self.json(self.request(Method::GET, "/v1/agents").query(&query)).await
    }

    /// Downloads a blob into `dest` (resuming a partial file), verifying
    /// its digest before `dest` takes its final name.
    pub async fn fetch_blob(&self, digest: &Digest, size: u64, dest: &Path) -> Result<u64> {
        let spec = ArtifactSpec {
            name: tug_core::ArtifactName::parse(
                dest.file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| Error::Protocol("destination has no file name".into()))?,
            )
            .map_err(|e| Error::Protocol(e.to_string()))?,
            kind: ArtifactKind::Other,
            platform: None,
            size,
            digest: *digest,
            derived_from: Vec::new(),
            executable: false,
            uri: None,
        };
        let dir = dest
            .parent()
            .ok_or_else(|| Error::Protocol("destination has no directory".into()))?;
        // The cache's files keep the mode they have: releases hard-link
        // them, and set the mode they need themselves.
        Ok(self.pull_one(&spec, dir, None, None).await?.unwrap_or(0))
    }

    // ---- maintenance ----

    /// Checks every blob; with `repair`, moves corrupt ones aside so they
    /// can be uploaded again.
    pub async fn fsck(&self, query: &tug_api::FsckQuery) -> Result<FsckReport> {
        self.json(self.request(Method::POST, "/v1/admin/fsck").query(query))
            .await
    }

    pub async fn gc(&self, req: &GcRequest) -> Result<GcReport> {
        self.json(self.with_json(Method::POST, "/v1/admin/gc", req)).await
    }

    // ---- audit ----

    /// Walks the event log's hash chain (`GET /v1/audit/verify`).
    pub async fn audit_verify(&self) -> Result<tug_api::AuditVerification> {
        self.json(self.request(Method::GET, "/v1/audit/verify")).await
    }

    /// The event log as recorded (`GET /v1/audit/export`), one record per
    /// item, oldest first. An answer the server cut short ends with an
    /// error.
    pub async fn audit_export(
        &self,
        query: &tug_api::AuditExportQuery,
    ) -> Result<impl futures::Stream<Item = Result<tug_api::AuditRecord>> + use<>> {
        let res = self
            .send(self.request(Method::GET, "/v1/audit/export").query(query))
            .await?;
        let state = (res.bytes_stream().boxed(), Vec::<u8>::new());
        Ok(futures::stream::unfold(state, |(mut body, mut buf)| async move {
            loop {
                if let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let parsed = serde_json::from_slice(&line[..end]).map_err(|e| Error::Protocol(e.to_string()));
                    return Some((parsed, (body, buf)));
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(Error::Http(e)), (body, buf))),
                    None if buf.is_empty() => return None,
                    None => {
                        let e = Error::Protocol("the export ended in the middle of a line".into());
                        return Some((Err(e), (body, Vec::new())));
                    }
                }
            }
        }))
    }

    // ---- blobs ----

    /// Which of `digests` the server lacks.
    pub async fn missing_blobs(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut missing = Vec::new();
        for chunk in digests.chunks(MISSING_BATCH) {
            let res: MissingBlobsResponse = self
                .json(self.with_json(
                    Method::POST,
                    "/v1/blobs/missing",
                    &MissingBlobs {
                        digests: chunk.to_vec(),
                    },
                ))
                .await?;
            missing.extend(res.missing);
        }
        Ok(missing)
    }

    /// The size of a stored blob, or `None`.
    pub async fn head_blob(&self, digest: &Digest) -> Result<Option<u64>> {
        match self
            .send(self.request(Method::HEAD, &format!("/v1/blobs/{digest}")))
            .await
        {
            // A HEAD response has no body, so the size is read off the
            // header rather than the (empty) body.
            Ok(res) => Ok(res
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            Err(Error::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Uploads a file as the blob `digest`, streaming it from disk.
    pub async fn put_blob_file(&self, digest: &Digest, path: &Path, progress: Option<Progress>) -> Result<BlobStored> {
        let file = tokio::fs::File::open(path).await.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        let size = file
            .metadata()
            .await
            .map_err(|source| Error::Io {
                path: path.into(),
                source,
            })?
            .len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect_ok(move |chunk| {
            if let Some(p) = &progress {
                p(chunk.len() as u64);
            }
        });
        self.put_blob_body(digest, size, reqwest::Body::wrap_stream(stream))
            .await
    }

    /// Uploads bytes as the blob `digest`.
    pub async fn put_blob_bytes(&self, digest: &Digest, bytes: Vec<u8>) -> Result<BlobStored> {
        let size = bytes.len() as u64;
        self.put_blob_body(digest, size, reqwest::Body::from(bytes)).await
    }

    async fn put_blob_body(&self, digest: &Digest, size: u64, body: reqwest::Body) -> Result<BlobStored> {
        let req = self
            .request(Method::PUT, &format!("/v1/blobs/{digest}"))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body);
        self.json(req).await
    }

    /// Pushes files into a draft: hashes them, asks which blobs the server
    /// lacks, uploads only those (`concurrency` at once), then registers the
    /// artifacts. Many pushes may fill one draft at the same time.
    ///
    /// Into a sealed build, each file must be one of its artifacts (same
    /// name and content): nothing is registered, and the blobs the store
    /// lacks are uploaded again. That is how a blob that `fsck --repair`
    /// moved aside is restored.
    pub async fn push(
        &self,
        build: &str,
        items: Vec<PushItem>,
        concurrency: usize,
        hooks: Hooks,
    ) -> Result<PushReport> {
        // Fail before hashing and uploading gigabytes into a build that can
        // no longer change (the server checks again when registering).
        let target = self.build(build).await?;
        let not_draft = |why: String| Error::Api {
            status: 409,
            code: "build_not_draft".into(),
            message: format!(
                "build {} is {} and can no longer change{why}; create a new build",
                target.id, target.state
            ),
        };
        let sealed = match target.state {
            tug_core::BuildState::Draft => false,
            tug_core::BuildState::Sealed => true,
            tug_core::BuildState::Abandoned => return Err(not_draft(String::new())),
        };
        let hashed = hash_files(items.iter().map(|i| i.path.clone()).collect()).await?;
        if sealed {
            let artifacts = target.artifacts.as_deref().unwrap_or_default();
            for (item, (digest, _)) in items.iter().zip(&hashed) {
                if !artifacts.iter().any(|a| a.name == item.name && a.digest == *digest) {
                    return Err(not_draft(format!(
                        " ({} is not its artifact {} as sealed)",
                        item.path.display(),
                        item.name
                    )));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut unique: Vec<(Digest, u64, PathBuf)> = Vec::new();
        for (item, (digest, size)) in items.iter().zip(&hashed) {
            if seen.insert(*digest) {
                unique.push((*digest, *size, item.path.clone()));
            }
        }
        let digests: Vec<Digest> = unique.iter().map(|(d, _, _)| *d).collect();
        let missing: std::collections::HashSet<Digest> = self.missing_blobs(&digests).await?.into_iter().collect();
        let mut report = PushReport {
            artifacts: items.len(),
            sealed_build: sealed,
            ..Default::default()
        };
        let to_send: Vec<(Digest, u64, PathBuf)> = unique.into_iter().filter(|(d, _, _)| missing.contains(d)).collect();
        report.uploaded_blobs = to_send.len();
        report.uploaded_bytes = to_send.iter().map(|(_, s, _)| s).sum();
        report.skipped_blobs = digests.len() - to_send.len();
        report.skipped_bytes = hashed
            .iter()
            .map(|(_, s)| s)
            .sum::<u64>()
            .saturating_sub(report.uploaded_bytes);
        if let Some(total) = &hooks.total {
            total(report.uploaded_bytes);
        }
        futures::stream::iter(to_send)
            .map(|(digest, _, path)| {
                let progress = hooks.progress.clone();
                async move { self.put_blob_file(&digest, &path, progress).await }
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<_>>()
            .await?;
        if sealed {
            return Ok(report);
        }
        let specs: Vec<ArtifactSpec> = items
            .into_iter()
            .zip(hashed)
            .map(|(item, (digest, size))| ArtifactSpec {
                name: item.name,
                kind: item.kind,
                platform: item.platform,
                size,
                digest,
                derived_from: item.derived_from,
                executable: item.executable,
                uri: None,
            })
            .collect();
        for chunk in specs.chunks(REGISTER_BATCH) {
            report.registered += self.register_artifacts(build, chunk.to_vec()).await?.added;
        }
        Ok(report)
    }

    /// Downloads a build's artifacts (or those named in `only`) into `dir`,
    /// verifying every digest. An interrupted download resumes from its
    /// `.part` file with a `Range` request; a file already present with the
    /// right digest is left alone.
    pub async fn pull(&self, build: &Build, only: &[ArtifactName], dir: &Path, hooks: Hooks) -> Result<PullReport> {
        let artifacts = build.artifacts.clone().unwrap_or_default();
        for name in only {
            if !artifacts.iter().any(|a| &a.name == name) {
                return Err(Error::Api {
                    status: 404,
                    code: "artifact_not_found".into(),
                    message: format!(
                        "build {} has no artifact named {name}; see tug build show {}",
                        build.id, build.id
                    ),
                });
            }
        }
        if let Some(r) = artifacts.iter().find(|a| !a.has_blob() && only.contains(&a.name)) {
            return Err(Error::Api {
                status: 400,
                code: "not_a_file".into(),
                message: format!(
                    "artifact {} of build {} is a reference to {}, not a file: there is nothing to download",
                    r.name,
                    build.id,
                    r.uri.as_ref().map_or("-", |u| u.as_str())
                ),
            });
        }
        // References name something outside the store: nothing to fetch.
        let chosen: Vec<ArtifactSpec> = artifacts
            .into_iter()
            .filter(|a| a.has_blob() && (only.is_empty() || only.contains(&a.name)))
            .collect();
        if let Some(total) = &hooks.total {
            total(chosen.iter().map(|a| a.size).sum());
        }
        let results = futures::stream::iter(chosen)
            .map(|a| {
                let progress = hooks.progress.clone();
                let mode = tug_core::file_mode(a.kind, a.executable);
                async move { self.pull_one(&a, dir, progress, Some(mode)).await }
            })
            .buffer_unordered(DEFAULT_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let mut report = PullReport::default();
        for downloaded in results {
            report.files += 1;
            match downloaded {
                Some(n) => report.downloaded_bytes += n,
                None => report.up_to_date += 1,
            }
        }
        Ok(report)
    }

    /// Returns the bytes downloaded, or `None` if the file was up to date.
    /// With `mode`, the file ends up with that mode (an executable artifact
    /// is pulled executable, also when it was there already).
    async fn pull_one(
        &self,
        a: &ArtifactSpec,
        dir: &Path,
        progress: Option<Progress>,
        mode: Option<u32>,
    ) -> Result<Option<u64>> {
        // ArtifactName is a validated relative path without `..`, so the
        // join stays inside `dir`.
        let dest = dir.join(a.name.as_str());
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
        }
        if tokio::fs::metadata(&dest)
            .await
            .map(|m| m.len() == a.size)
            .unwrap_or(false)
            && hash_file(&dest).await?.0 == a.digest
        {
            if let Some(p) = &progress {
                p(a.size);
            }
            set_mode(&dest, mode).await?;
            return Ok(None);
        }
        let part = PathBuf::from(format!("{}.part", dest.display()));
        let mut have = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0);
        if have > a.size {
            tokio::fs::remove_file(&part).await.map_err(io(&part))?;
            have = 0;
        }
        let mut hasher = Hasher::new();
        if have > 0 {
            // Hash what is already there, then continue after it.
            let (_, n, h) = hash_file_with(&part).await?;
            hasher = h;
            have = n;
            if let Some(p) = &progress {
                p(have);
            }
        }
        let mut downloaded = 0u64;
        if have < a.size {
            let mut req = self.request(Method::GET, &format!("/v1/blobs/{}", a.digest));
            if have > 0 {
                req = req.header(RANGE, format!("bytes={have}-"));
            }
            let res = self.send(req).await?;
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&part)
                .await
                .map_err(io(&part))?;
            if have > 0 && res.status() != StatusCode::PARTIAL_CONTENT {
                // The server sent the whole blob: start over.
                file.set_len(0).await.map_err(io(&part))?;
                hasher = Hasher::new();
            }
            let mut body = res.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(io(&part))?;
                downloaded += chunk.len() as u64;
                if let Some(p) = &progress {
                    p(chunk.len() as u64);
                }
            }
            file.sync_all().await.map_err(io(&part))?;
        }
        let actual = hasher.finish();
        if actual != a.digest {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Error::DigestMismatch {
                name: a.name.to_string(),
                expected: a.digest,
                actual,
            });
        }
        set_mode(&part, mode).await?;
        tokio::fs::rename(&part, &dest).await.map_err(io(&dest))?;
        Ok(Some(downloaded))
    }
}

/// Gives a pulled file its artifact's mode, if one is asked for.
async fn set_mode(path: &Path, mode: Option<u32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(mode) = mode else { return Ok(()) };
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .await
        .map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
}

/// Percent-encodes a path segment.
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Hashes a file: its digest and size.
pub async fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    let (d, n, _) = hash_file_with(path).await?;
    Ok((d, n))
}

async fn hash_file_with(path: &Path) -> Result<(Digest, u64, Hasher)> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&p).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
        let mut h = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|source| Error::Io {
                path: p.clone(),
                source,
            })?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let n = h.len();
        Ok((h.clone().finish(), n, h))
    })
    .await
    .map_err(|e| Error::Protocol(format!("hashing task failed: {e}")))?
}

/// Hashes many files, two at a time (the machine's disks and cores).
async fn hash_files(paths: Vec<PathBuf>) -> Result<Vec<(Digest, u64)>> {
    futures::stream::iter(paths)
        .map(|p| async move { hash_file(&p).await })
        .buffered(2)
        .try_collect()
        .await
}
