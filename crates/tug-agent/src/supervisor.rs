//! The supervised process (`--exec`): one child at a time, run with
//! `sh -c` in its own process group so that stopping it reaches whatever the
//! shell started. A background task owns the child: it restarts it with
//! back-off when it exits on its own, and replaces it on request (SIGTERM
//! to the group, a grace period, then SIGKILL).
//!
//! It does not decide what runs: the agent tells it which release to run
//! and when.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// How long a stopped child has between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
/// The first delay before restarting a child that exited on its own.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// A child that ran this long before exiting is restarted without the
/// back-off its earlier exits built up.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// How to start the process: the working directory and the environment
/// (`TUG_RELEASE_DIR`, `TUG_BUILD`, `TUG_VERSION`) beyond the agent's own.
#[derive(Debug, Clone)]
pub struct Launch {
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
}

enum Request {
    Start(Launch, oneshot::Sender<Result<u32>>),
    Stop(oneshot::Sender<()>),
    // Only the tests ask which process runs.
    #[cfg(test)]
    Pid(oneshot::Sender<Option<u32>>),
}

/// A handle on the supervising task. Dropping it stops the child.
pub struct Supervisor {
    tx: mpsc::Sender<Request>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    pub fn new(command: String, max_backoff: Duration) -> Supervisor {
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(supervise(command, max_backoff.max(FIRST_BACKOFF), rx));
        Supervisor { tx, task }
    }

    /// Stops the running child (if any) and starts one for `launch`.
    /// Returns the new child's pid.
    pub async fn start(&self, launch: Launch) -> Result<u32> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Request::Start(launch, ack))
            .await
            .map_err(|_| Error::Task("supervisor".into()))?;
        rx.await.map_err(|_| Error::Task("supervisor".into()))?
    }

    /// Stops the child and does not restart it.
    pub async fn stop(&self) {
        let (ack, rx) = oneshot::channel();
        if self.tx.send(Request::Stop(ack)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The pid of the running child, if one runs.
    #[cfg(test)]
    pub async fn pid(&self) -> Option<u32> {
        let (ack, rx) = oneshot::channel();
        self.tx.send(Request::Pid(ack)).await.ok()?;
        rx.await.ok().flatten()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Dropping the task drops its `Running`, which kills the group.
        self.task.abort();
    }
}

/// A child and its process group, killed when dropped (the agent's task
/// was cancelled, or the runtime is shutting down).
struct Running {
    child: Child,
    pgid: Pid,
    started: Instant,
}

impl Running {
    fn signal(&self, sig: Signal) {
        // ESRCH (the group is gone already) is the expected outcome after
        // the child exited; there is nothing to do about other errors.
        let _ = killpg(self.pgid, sig);
    }

    /// SIGTERM, wait up to the grace period, then SIGKILL; then make sure
    /// nothing the child started in its group outlives it.
    async fn stop(mut self) {
        self.signal(Signal::SIGTERM);
        if tokio::time::timeout(GRACE, self.child.wait()).await.is_err() {
            tracing::warn!(pid = %self.pgid, "supervised process ignored SIGTERM; killing it");
        }
        // Drop sends SIGKILL to the group and reaps nothing left waiting.
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        // kill_on_drop on the Command reaps the shell itself.
    }
}

fn spawn(command: &str, launch: &Launch) -> Result<Running> {
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&launch.cwd)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(Error::Spawn)?;
    let pid = child
        .id()
        .ok_or_else(|| Error::Spawn(std::io::Error::other("the child exited before its pid was read")))?;
    let pgid = Pid::from_raw(i32::try_from(pid).map_err(|_| Error::Spawn(std::io::Error::other("pid out of range")))?);
    tracing::info!(pid, cwd = %launch.cwd.display(), "started supervised process");
    Ok(Running {
        child,
        pgid,
        started: Instant::now(),
    })
}

/// Waits for the child to exit, or forever when there is none.
async fn exited(running: &mut Option<Running>) -> std::io::Result<std::process::ExitStatus> {
    match running {
        Some(r) => r.child.wait().await,
        None => std::future::pending().await,
    }
}

async fn supervise(command: String, max_backoff: Duration, mut rx: mpsc::Receiver<Request>) {
    let mut running: Option<Running> = None;
    let mut launch: Option<Launch> = None;
    let mut restart_at: Option<Instant> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Request::Start(l, ack)) => {
                    if let Some(r) = running.take() {
                        r.stop().await;
                    }
                    backoff = FIRST_BACKOFF;
                    restart_at = None;
                    let result = spawn(&command, &l);
                    let pid = result.as_ref().ok().and_then(|r| r.child.id());
                    match result {
                        Ok(r) => running = Some(r),
                        // Still wanted: keep trying in the background.
                        Err(_) => restart_at = Some(Instant::now() + backoff),
                    }
                    launch = Some(l);
                    let _ = ack.send(pid.ok_or_else(|| Error::Spawn(std::io::Error::other(format!("cannot run sh -c {command:?}")))));
                }
                Some(Request::Stop(ack)) => {
                    if let Some(r) = running.take() {
                        r.stop().await;
                    }
                    launch = None;
                    restart_at = None;
                    let _ = ack.send(());
                }
                #[cfg(test)]
                Some(Request::Pid(ack)) => {
                    let _ = ack.send(running.as_ref().and_then(|r| r.child.id()));
                }
            },
            status = exited(&mut running) => {
                let ran = running.as_ref().map(|r| r.started.elapsed()).unwrap_or_default();
                // Kill what the shell left in its group before replacing it.
                running = None;
                if ran >= STABLE_AFTER {
                    backoff = FIRST_BACKOFF;
                }
                tracing::warn!(?status, ?backoff, "supervised process exited; restarting it");
                restart_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(max_backoff);
            },
            _ = sleep_until(restart_at) => {
                restart_at = None;
                if let Some(l) = &launch {
                    match spawn(&command, l) {
                        Ok(r) => running = Some(r),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot restart supervised process");
                            restart_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(max_backoff);
                        }
                    }
                }
            }
        }
    }
    if let Some(r) = running.take() {
        r.stop().await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until<F: Fn() -> bool>(what: &str, f: F) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn alive(pid: u32) -> bool {
        // A zombie still has a /proc entry; its state is 'Z'.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn replaces_restarts_and_stops_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // The shell forks a grandchild (sleep) that must be stopped too,
        // and records its pid.
        let cmd = format!(
            "echo $TUG_BUILD >> {o}; sleep 30 & echo $! > {o}.$TUG_BUILD; wait",
            o = out.display()
        );
        let sup = Supervisor::new(cmd, Duration::from_millis(200));
        let launch = |b: &str| Launch {
            cwd: dir.path().to_path_buf(),
            env: vec![("TUG_BUILD".into(), b.into())],
        };
        let first = sup.start(launch("a")).await.unwrap();
        let grandchild_file = dir.path().join("out.a");
        until("the first child", || grandchild_file.exists()).await;
        let grandchild: u32 = {
            until("the pid", || {
                std::fs::read_to_string(&grandchild_file).is_ok_and(|s| s.ends_with('\n'))
            })
            .await;
            std::fs::read_to_string(&grandchild_file)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let second = sup.start(launch("b")).await.unwrap();
        assert_ne!(first, second);
        until("the old group to be gone", || !alive(first) && !alive(grandchild)).await;
        let lines = || std::fs::read_to_string(&out).unwrap().lines().count();
        until("the second child", || lines() == 2).await;
        // Killed from outside: restarted with the same launch.
        killpg(Pid::from_raw(second as i32), Signal::SIGKILL).unwrap();
        until("a restart", || lines() == 3).await;
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\nb\nb\n");
        let third = sup.pid().await.unwrap();
        sup.stop().await;
        assert!(sup.pid().await.is_none());
        until("the stopped child to be gone", || !alive(third)).await;
    }

    #[tokio::test]
    async fn a_child_that_keeps_exiting_is_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let sup = Supervisor::new(
            format!("echo x >> {}; exit 1", out.display()),
            Duration::from_millis(100),
        );
        sup.start(Launch {
            cwd: dir.path().to_path_buf(),
            env: Vec::new(),
        })
        .await
        .unwrap();
        until("three runs", || {
            std::fs::read_to_string(&out).is_ok_and(|s| s.lines().count() >= 3)
        })
        .await;
        sup.stop().await;
    }
}
