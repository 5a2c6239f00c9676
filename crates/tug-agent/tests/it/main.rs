//! The agent against a real Tugboat server on loopback: agents run as
//! in-process tasks on their own temporary directories, supervise real
//! shell processes and are observed through the files those write and the
//! fleet view (`GET /v1/agents`). Nothing sleeps to wait: every wait polls
//! a condition with a deadline.

mod scenarios;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
        let bytes = script.as_bytes().to_vec();
        let digest = Digest::of(&bytes);
        let size = bytes.len() as u64;
        self.admin.put_blob_bytes(&digest, bytes).await?;
        self.admin
            .register_artifacts(
                build.id.as_str(),
                vec![ArtifactSpec {
                    name: ArtifactName::parse("server.sh")?,
                    kind: ArtifactKind::Binary,
                    platform: None,
                    size,
                    digest,
                    derived_from: Vec::new(),
                }],
            )
            .await?;
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
