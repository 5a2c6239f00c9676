//! The agent against a real Tugboat server on loopback: agents run as
//! in-process tasks on their own temporary directories, supervise real
//! shell processes and are observed through the files those write, the
//! fleet view (`GET /v1/agents`) and, where the server keeps less than the
//! agent says, the requests themselves (a relay between agent and server
//! records them). Nothing sleeps to wait: every wait polls a condition
//! with a deadline.

mod scenarios;
mod unpack;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use anyhow::{bail, Context};
use tug_api::{AgentState, CreateBuild, Release};
use tug_client::Client;
use tug_core::{
    ArtifactKind, ArtifactName, ArtifactSpec, BuildId, Digest, EnvName, Role, ServiceName, TokenName, Version,
};

pub type Result<T = ()> = anyhow::Result<T>;

/// A Tugboat server with the service `web` and its environment `prod`.
pub struct Server {
    pub addr: SocketAddr,
    pub admin: Client,
    pub agent_token: String,
    config: tug_server::Config,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let config = tug_server::Config {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().join("data"),
            ..Default::default()
        };
        let (addr, stop, task) = serve(&config).await?;
        let admin_secret = std::fs::read_to_string(config.admin_token_path())?.trim().to_string();
        let admin = Client::new(&format!("http://{addr}"), Some(admin_secret))?;
        admin.create_service(&service()).await?;
        admin
            .apply_pipeline(
                &service(),
                "service = \"web\"\n[[environments]]\nname = \"prod\"\n",
                None,
            )
            .await?;
        let agent_token = admin
            .create_token(TokenName::parse("fleet")?, Role::Agent, None)
            .await?
            .secret;
        Ok(Server {
            addr,
            admin,
            agent_token,
            config: tug_server::Config { listen: addr, ..config },
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving (the port is closed until `restart`).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await??;
        }
        Ok(())
    }

    /// Serves again on the same address and data.
    pub async fn restart(&mut self) -> Result<()> {
        let (addr, stop, task) = serve(&self.config).await?;
        assert_eq!(addr, self.addr);
        self.stop = Some(stop);
        self.task = Some(task);
        Ok(())
    }

    /// Creates, fills and seals a build whose only artifact is the binary
    /// `server.sh` with `script` as its contents.
    pub async fn build(&self, version: &str, script: &str) -> Result<BuildId> {
        self.build_with(
            version,
            vec![("server.sh", ArtifactKind::Binary, script.as_bytes().to_vec())],
        )
        .await
    }

    /// Creates, fills and seals a build of `files`: (name, kind, bytes).
    pub async fn build_with(&self, version: &str, files: Vec<(&str, ArtifactKind, Vec<u8>)>) -> Result<BuildId> {
        let build = self
            .admin
            .create_build(&CreateBuild {
                service: service(),
                version: Version::parse(version)?,
                source: Default::default(),
                ci: Default::default(),
                expected: Vec::new(),
                embargoed: false,
            })
            .await?;
        let mut specs = Vec::new();
        for (name, kind, bytes) in files {
            let digest = Digest::of(&bytes);
            specs.push(ArtifactSpec {
                name: ArtifactName::parse(name)?,
                kind,
                platform: None,
                size: bytes.len() as u64,
                digest,
                derived_from: Vec::new(),
                executable: false,
                uri: None,
            });
            self.admin.put_blob_bytes(&digest, bytes).await?;
        }
        self.admin.register_artifacts(build.id.as_str(), specs).await?;
        self.admin.seal(build.id.as_str()).await?;
        Ok(build.id)
    }

    pub async fn release(&self, build: &BuildId) -> Result<()> {
        self.admin
            .release(
                &service(),
                &Release {
                    environment: env(),
                    build: Some(build.to_string()),
                    branch: None,
                    version: None,
                    flags: Default::default(),
                },
            )
            .await?;
        Ok(())
    }

    /// What the fleet view says about the agent of `dir`.
    pub async fn agent(&self, dir: &Path) -> Result<Option<tug_api::Agent>> {
        let Ok(id) = std::fs::read_to_string(dir.join("agent-id")) else {
            return Ok(None);
        };
        let agents = self.admin.agents(Some("web"), Some("prod")).await?;
        Ok(agents.into_iter().find(|a| a.report.agent_id == id.trim()))
    }

    /// Whether the agent of `dir` reports `state` with `build` running.
    pub async fn reports(&self, dir: &Path, state: AgentState, build: &BuildId) -> Result<bool> {
        Ok(self
            .agent(dir)
            .await?
            .is_some_and(|a| a.report.state == state && a.report.build.as_ref() == Some(build)))
    }
}

async fn serve(
    config: &tug_server::Config,
) -> Result<(
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let started = tug_server::start(config, &std::collections::HashMap::new()).await?;
    let addr = started.addr;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(started.serve(async move {
        let _ = rx.await;
    }));
    Ok((addr, tx, task))
}

pub fn service() -> ServiceName {
    ServiceName::parse("web").unwrap_or_else(|_| unreachable!())
}

pub fn env() -> EnvName {
    EnvName::parse("prod").unwrap_or_else(|_| unreachable!())
}

/// A script that records its version and pid next to the agent's
/// directory entries, then stays up like a server would.
pub fn script(version: &str) -> String {
    format!(
        "#!/bin/sh\necho $$ > \"$TUG_RELEASE_DIR/../../pid\"\necho {version} > \"$TUG_RELEASE_DIR/../../served-version\"\nexec sleep 600\n"
    )
}

/// Healthy when the running script wrote the version being activated.
pub const HEALTH: &str = "test \"$(cat \"$TUG_RELEASE_DIR/../../served-version\" 2>/dev/null)\" = \"$TUG_VERSION\"";

/// An agent configuration with test timings.
pub fn config(server: &Server, dir: &Path) -> tug_agent::AgentConfig {
    let mut c = tug_agent::AgentConfig::new(server.url(), server.agent_token.clone(), service(), env(), dir);
    c.exec = Some("./server.sh".into());
    c.health_cmd = Some(HEALTH.into());
    c.health_timeout = Duration::from_secs(10);
    c.poll_wait = Duration::from_secs(1);
    c.heartbeat = Duration::from_millis(200);
    c.max_backoff = Duration::from_millis(200);
    c
}

/// A running agent task, stopped (and its process with it) by `stop`.
pub struct RunningAgent {
    pub dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::result::Result<(), tug_agent::Error>>>,
}

impl RunningAgent {
    pub fn start(config: tug_agent::AgentConfig) -> RunningAgent {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let dir = config.dir.clone();
        let task = tokio::spawn(tug_agent::run(config, async move {
            let _ = rx.await;
        }));
        RunningAgent {
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .context("the agent did not stop")???;
        }
        Ok(())
    }
}

/// A TCP relay between agents and the server that keeps every byte the
/// agents sent, so tests read the requests as they went over the wire
/// (the reports' JSON, the long-polls' queries) without changing either
/// side.
pub struct Relay {
    pub addr: SocketAddr,
    sent: Arc<Mutex<Vec<ConnLog>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What one connection carried towards the server, with when it arrived.
type ConnLog = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// One HTTP request an agent sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub at: Instant,
    pub method: String,
    /// The path with its query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Sent {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Relay {
    pub async fn start(to: SocketAddr) -> Result<Relay> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let sent: Arc<Mutex<Vec<_>>> = Arc::default();
        let conns = sent.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let log: ConnLog = Arc::default();
                conns.lock().unwrap().push(log.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.split();
                    let (mut ro, mut wo) = outbound.split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match ri.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            log.lock().unwrap().push((Instant::now(), buf[..n].to_vec()));
                            if wo.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = wo.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut ro, &mut wi).await;
                        let _ = wi.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Ok(Relay { addr, sent, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every complete request sent so far, in order within each
    /// connection, connections in the order they were opened.
    pub fn requests(&self) -> Vec<Sent> {
        let conns: Vec<_> = self.sent.lock().unwrap().clone();
        conns.iter().flat_map(|c| parse_requests(&c.lock().unwrap())).collect()
    }

    /// The bodies of the agent reports sent so far, oldest first.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        let mut sent: Vec<Sent> = self
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.target == "/v1/agents/report")
            .collect();
        sent.sort_by_key(|r| r.at);
        sent.iter()
            .filter_map(|r| serde_json::from_slice(&r.body).ok())
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Splits what one connection carried into HTTP/1.1 requests (bodies by
/// `Content-Length`, which is how the client sends them).
fn parse_requests(chunks: &[(Instant, Vec<u8>)]) -> Vec<Sent> {
    let mut bytes = Vec::new();
    let mut starts = Vec::new();
    for (at, chunk) in chunks {
        starts.push((bytes.len(), *at));
        bytes.extend_from_slice(chunk);
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(end) = bytes[pos..].windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[pos..pos + end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let (method, target) = (first.next().unwrap_or_default(), first.next().unwrap_or_default());
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body_start = pos + end + 4;
        if bytes.len() < body_start + len {
            break;
        }
        let at = starts
            .iter()
            .rev()
            .find(|(o, _)| *o <= pos)
            .map_or_else(Instant::now, |(_, t)| *t);
        out.push(Sent {
            at,
            method: method.to_string(),
            target: target.to_string(),
            headers,
            body: bytes[body_start..body_start + len].to_vec(),
        });
        pos = body_start + len;
    }
    out
}

/// Polls `check` until it returns true, failing after `secs` seconds.
pub async fn until<F, Fut>(secs: u64, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The build `current` points at in an agent directory.
pub fn current(dir: &Path) -> Option<String> {
    std::fs::read_link(dir.join("current"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_string()
}

/// Whether a process is alive (not a zombie).
pub fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}
