//! The supervised process (`--exec`): one child at a time, run with
//! `sh -c` in its own process group so that stopping it reaches whatever the
//! shell started. A background task owns the child: it restarts it with
//! back-off when it exits on its own, and replaces it on request (SIGTERM
//! to the group, a grace period, then SIGKILL).
//!
//! The running group is recorded in `supervised.pid` (its id and the
//! leader's start time), because a `kill -9` of the agent leaves the group
//! running: the next agent on the directory stops that group
//! ([`stop_stale`]) before it starts its own.
//!
//! The child's stderr goes through the supervisor to the agent's own
//! stderr, which keeps its end: when the child exits on its own, the exit
//! (its code, or the signal that killed it) and the last lines it wrote
//! are published to the agent's reports (`exits`), because "the health
//! check timed out" does not say that the program could not even start.
//!
//! It does not decide what runs: the agent tells it which release to run
//! and when.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tug_api::ProcessExit;
use tug_core::BuildId;

use crate::error::{Error, Result};
use crate::state::write_atomic;

/// The file, in the agent directory, naming the supervised process group.
pub const PID_FILE: &str = "supervised.pid";

/// How long a stopped child has between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
/// The first delay before restarting a child that exited on its own.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// A child that ran this long before exiting is restarted without the
/// back-off its earlier exits built up.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The end of a child's stderr kept for the report: this many bytes...
const TAIL_BYTES: usize = 4096;
/// ...and of those, this many lines.
const TAIL_LINES: usize = 20;
/// How long an exited child's stderr may take to reach its end (what the
/// group's other processes still write) before the exit is published.
const TAIL_WAIT: Duration = Duration::from_secs(1);

/// How to start the process: the working directory and the environment
/// (`TUG_RELEASE_DIR`, `TUG_BUILD`, `TUG_VERSION`) beyond the agent's own.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The build the process runs, for the report of its exit.
    pub build: Option<BuildId>,
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
    exits: watch::Receiver<Option<ProcessExit>>,
}

impl Supervisor {
    /// A supervisor that records the group it runs in `pid_file`.
    pub fn new(command: String, max_backoff: Duration, pid_file: PathBuf) -> Supervisor {
        let (tx, rx) = mpsc::channel(8);
        let (exited, exits) = watch::channel(None);
        let task = tokio::spawn(supervise(command, max_backoff.max(FIRST_BACKOFF), pid_file, rx, exited));
        Supervisor { tx, task, exits }
    }

    /// How the child last ended on its own (not stopped by the agent),
    /// updated at each such exit.
    pub fn exits(&self) -> watch::Receiver<Option<ProcessExit>> {
        self.exits.clone()
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
    pid_file: PathBuf,
    build: Option<BuildId>,
    /// The end of what the group wrote to stderr.
    tail: Arc<Mutex<Vec<u8>>>,
    /// Copies the group's stderr to the agent's until every writer is gone.
    stderr: Option<tokio::task::JoinHandle<()>>,
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
        // kill_on_drop on the Command reaps the shell itself. The group is
        // gone, so nothing is left for a later agent to stop.
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// The contents of `supervised.pid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PidRecord {
    /// The process group, which is also the leader's pid (the shell).
    pgid: i32,
    /// The leader's start time in clock ticks since boot (field 22 of
    /// `/proc/<pid>/stat`): a pid reused by another process has another.
    start_ticks: u64,
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    zombie: bool,
    pgid: i32,
    start_ticks: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields after the last ')' are plain: state (3), ppid, pgrp (5), …,
    // starttime (22).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(ProcStat {
        zombie: *fields.first()? == "Z",
        pgid: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// The live (not zombie) processes of the group `pgid`.
fn live_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.pgid == pgid && !s.zombie))
        .collect()
}

/// Whether `pid` was started for a release under `releases` (the agent
/// gives every process it starts `TUG_RELEASE_DIR`, and children inherit
/// it).
fn started_from(pid: i32, releases: &Path) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("TUG_RELEASE_DIR={}/", releases.display());
    environ.split(|&b| b == 0).any(|var| var.starts_with(want.as_bytes()))
}

fn write_pid_file(path: &Path, pgid: Pid) {
    let written = proc_stat(pgid.as_raw())
        .ok_or_else(|| "the process is gone already".to_string())
        .and_then(|s| {
            let record = PidRecord {
                pgid: pgid.as_raw(),
                start_ticks: s.start_ticks,
            };
            let json = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
            write_atomic(path, &json).map_err(|e| e.to_string())
        });
    // The process runs either way; without the record, a `kill -9` of the
    // agent would leave it for the next agent to run a second one beside.
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the supervised process");
    }
}

/// Stops the process group that `pid_file` names if it is still running:
/// what an agent killed with `kill -9` left. The group is taken to be the
/// recorded one when its leader has the recorded start time, or, when the
/// leader is gone, when its members run from a release under `releases`;
/// a reused pid is left alone. SIGTERM, the grace period, then SIGKILL.
/// Returns the group stopped, if any.
pub async fn stop_stale(pid_file: &Path, releases: &Path) -> Result<Option<i32>> {
    let bytes = match std::fs::read(pid_file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::error::io(pid_file)(e)),
    };
    let remove = || match std::fs::remove_file(pid_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(crate::error::io(pid_file)(e)),
        _ => Ok(()),
    };
    let Ok(record) = serde_json::from_slice::<PidRecord>(&bytes) else {
        tracing::warn!(path = %pid_file.display(), "unreadable record of the supervised process; ignoring it");
        remove()?;
        return Ok(None);
    };
    let members = live_members(record.pgid);
    let ours = match proc_stat(record.pgid) {
        Some(leader) => leader.start_ticks == record.start_ticks,
        None => members.iter().any(|&pid| started_from(pid, releases)),
    };
    if !ours || members.is_empty() {
        remove()?;
        return Ok(None);
    }
    tracing::warn!(
        pgid = record.pgid,
        "stopping the supervised process an earlier agent left running"
    );
    let pgid = Pid::from_raw(record.pgid);
    let gone = |within: Duration| async move {
        let deadline = Instant::now() + within;
        while !live_members(record.pgid).is_empty() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    };
    let _ = killpg(pgid, Signal::SIGTERM);
    if !gone(GRACE).await {
        tracing::warn!(pgid = record.pgid, "the stale process ignored SIGTERM; killing it");
        let _ = killpg(pgid, Signal::SIGKILL);
        gone(GRACE).await;
    }
    remove()?;
    Ok(Some(record.pgid))
}

fn spawn(command: &str, launch: &Launch, pid_file: &Path) -> Result<Running> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&launch.cwd)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(Error::Spawn)?;
    let tail = Arc::new(Mutex::new(Vec::new()));
    let stderr = match child.stderr.take() {
        Some(pipe) => tokio::spawn(copy_stderr(pipe, tail.clone())),
        None => tokio::spawn(async {}),
    };
    let pid = child
        .id()
        .ok_or_else(|| Error::Spawn(std::io::Error::other("the child exited before its pid was read")))?;
    let pgid = Pid::from_raw(i32::try_from(pid).map_err(|_| Error::Spawn(std::io::Error::other("pid out of range")))?);
    tracing::info!(pid, cwd = %launch.cwd.display(), "started supervised process");
    write_pid_file(pid_file, pgid);
    Ok(Running {
        child,
        pgid,
        started: Instant::now(),
        pid_file: pid_file.to_path_buf(),
        build: launch.build.clone(),
        tail,
        stderr: Some(stderr),
    })
}

/// Copies a child's stderr to the agent's own, keeping its last
/// [`TAIL_BYTES`] in `tail`. Ends when every process holding the pipe is
/// gone.
async fn copy_stderr(mut pipe: ChildStderr, tail: Arc<Mutex<Vec<u8>>>) {
    let mut out = tokio::io::stderr();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // The agent's stderr is where the child's went before; failing to
        // write it must not stop the child (nor the tail).
        let _ = out.write_all(&buf[..n]).await;
        if let Ok(mut t) = tail.lock() {
            t.extend_from_slice(&buf[..n]);
            if t.len() > 2 * TAIL_BYTES {
                let cut = t.len() - TAIL_BYTES;
                t.drain(..cut);
            }
        }
    }
}

/// The last [`TAIL_LINES`] lines of the last [`TAIL_BYTES`] bytes of
/// `bytes`, as text.
fn tail_text(bytes: &[u8]) -> String {
    let bytes = &bytes[bytes.len().saturating_sub(TAIL_BYTES)..];
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches('\n');
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// What an exit status says: the code, or the name of the signal.
pub fn exit_of(status: std::process::ExitStatus) -> (Option<i32>, Option<String>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (Some(code), None),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string());
            (None, Some(name))
        }
        (None, None) => (None, None),
    }
}

/// `exited with code 126`, `killed by signal SIGKILL`: for logs and
/// reports, instead of `ExitStatus(unix_wait_status(32256))`.
pub fn describe(status: std::process::ExitStatus) -> String {
    let (code, signal) = exit_of(status);
    ProcessExit {
        build: None,
        code,
        signal,
        at: chrono::Utc::now(),
        stderr: String::new(),
    }
    .to_string()
}

/// Turns a child that exited on its own into its report: the group is
/// stopped (dropping `running`), what it wrote last is collected.
async fn ended(mut running: Running, status: std::io::Result<std::process::ExitStatus>) -> ProcessExit {
    let (code, signal) = match status {
        Ok(status) => exit_of(status),
        Err(_) => (None, None),
    };
    let (tail, build, copying) = (running.tail.clone(), running.build.clone(), running.stderr.take());
    drop(running);
    if let Some(copying) = copying {
        let _ = tokio::time::timeout(TAIL_WAIT, copying).await;
    }
    let stderr = tail.lock().map(|t| tail_text(&t)).unwrap_or_default();
    ProcessExit {
        build,
        code,
        signal,
        at: chrono::Utc::now(),
        stderr,
    }
}

/// Waits for the child to exit, or forever when there is none.
async fn exited(running: &mut Option<Running>) -> std::io::Result<std::process::ExitStatus> {
    match running {
        Some(r) => r.child.wait().await,
        None => std::future::pending().await,
    }
}

async fn supervise(
    command: String,
    max_backoff: Duration,
    pid_file: PathBuf,
    mut rx: mpsc::Receiver<Request>,
    exits: watch::Sender<Option<ProcessExit>>,
) {
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
                    let result = spawn(&command, &l, &pid_file);
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
                let Some(r) = running.take() else { continue };
                let ran = r.started.elapsed();
                if ran >= STABLE_AFTER {
                    backoff = FIRST_BACKOFF;
                }
                // Dropping it kills what the shell left in its group.
                let exit = ended(r, status).await;
                let build = exit.build.as_ref().map(|b| b.to_string()).unwrap_or_default();
                tracing::warn!(build, "supervised process {exit}; restarting it in {backoff:?}");
                exits.send_replace(Some(exit));
                restart_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(max_backoff);
            },
            _ = sleep_until(restart_at) => {
                restart_at = None;
                if let Some(l) = &launch {
                    match spawn(&command, l, &pid_file) {
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
        let pid_file = dir.path().join(PID_FILE);
        let sup = Supervisor::new(cmd, Duration::from_millis(200), pid_file.clone());
        let launch = |b: &str| Launch {
            build: None,
            cwd: dir.path().to_path_buf(),
            env: vec![("TUG_BUILD".into(), b.into())],
        };
        let first = sup.start(launch("a")).await.unwrap();
        let recorded: PidRecord = serde_json::from_slice(&std::fs::read(&pid_file).unwrap()).unwrap();
        assert_eq!(recorded.pgid as u32, first);
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
        assert!(!pid_file.exists(), "nothing runs, so nothing is recorded");
    }

    /// A process group as a `kill -9`ed agent leaves it: running on its
    /// own, recorded in the pid file.
    fn orphan_group(cmd: &str, release_dir: &Path) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("TUG_RELEASE_DIR", release_dir)
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn record(pid_file: &Path, pgid: u32, start_ticks: u64) {
        let json = serde_json::to_vec(&PidRecord {
            pgid: pgid as i32,
            start_ticks,
        })
        .unwrap();
        std::fs::write(pid_file, json).unwrap();
    }

    #[tokio::test]
    async fn a_stale_group_is_stopped_but_a_reused_pid_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let releases = dir.path().join("releases");
        let pid_file = dir.path().join(PID_FILE);
        let mut child = orphan_group("sleep 30 & wait", &releases.join("b"));
        let pgid = child.id();
        until("the group's member", || live_members(pgid as i32).len() == 2).await;
        let start = proc_stat(pgid as i32).unwrap().start_ticks;

        // The same pid, another start time: another process now has the
        // pid, and it is left alone.
        record(&pid_file, pgid, start + 1);
        assert_eq!(stop_stale(&pid_file, &releases).await.unwrap(), None);
        assert!(alive(pgid));
        assert!(!pid_file.exists());

        record(&pid_file, pgid, start);
        assert_eq!(stop_stale(&pid_file, &releases).await.unwrap(), Some(pgid as i32));
        assert!(live_members(pgid as i32).is_empty(), "the whole group is stopped");
        child.wait().unwrap();
        assert!(!pid_file.exists());
        assert_eq!(stop_stale(&pid_file, &releases).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_group_whose_leader_died_is_stopped_if_it_runs_a_release() {
        let dir = tempfile::tempdir().unwrap();
        let releases = dir.path().join("releases");
        let pid_file = dir.path().join(PID_FILE);
        for (release_dir, stopped) in [(releases.join("b"), true), (dir.path().join("elsewhere"), false)] {
            let mut leader = orphan_group("sleep 30 & sleep 30 & wait", &release_dir);
            let pgid = leader.id() as i32;
            until("the group's members", || live_members(pgid).len() == 3).await;
            record(&pid_file, leader.id(), proc_stat(pgid).unwrap().start_ticks);
            // The leader dies and is reaped; its children stay in the group.
            nix::sys::signal::kill(Pid::from_raw(pgid), Signal::SIGKILL).unwrap();
            leader.wait().unwrap();
            assert_eq!(live_members(pgid).len(), 2);
            let got = stop_stale(&pid_file, &releases).await.unwrap();
            assert_eq!(got.is_some(), stopped, "{}", release_dir.display());
            assert_eq!(live_members(pgid).is_empty(), stopped);
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }

    #[test]
    fn the_tail_is_the_last_lines_of_the_last_bytes() {
        let many: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let tail = tail_text(many.as_bytes());
        assert_eq!(tail.lines().count(), 20);
        assert!(tail.starts_with("line 11\n") && tail.ends_with("line 30"), "{tail}");
        let long = "x".repeat(10_000);
        assert_eq!(tail_text(long.as_bytes()).len(), TAIL_BYTES);
        assert_eq!(tail_text(b"no newline"), "no newline");
        assert_eq!(tail_text(b""), "");
    }

    #[tokio::test]
    async fn exits_are_described_by_code_or_signal() {
        let status = |cmd: &str| std::process::Command::new("sh").arg("-c").arg(cmd).status().unwrap();
        assert_eq!(describe(status("exit 126")), "exited with code 126");
        assert_eq!(describe(status("kill -KILL $$")), "killed by signal SIGKILL");
        assert_eq!(exit_of(status("kill -TERM $$")), (None, Some("SIGTERM".to_string())));
    }

    /// A child that exits on its own is reported with how it ended and
    /// the end of its stderr; one the agent stops is not.
    #[tokio::test]
    async fn an_exit_is_published_with_the_end_of_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let cmd = format!(
            "if [ -e {m} ]; then exec sleep 30; fi; touch {m}; echo starting >&2; echo ./web-server: Permission denied >&2; exit 126",
            m = marker.display()
        );
        let sup = Supervisor::new(cmd, Duration::from_millis(100), dir.path().join(PID_FILE));
        let mut exits = sup.exits();
        let build = BuildId::parse("0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70").unwrap();
        sup.start(Launch {
            build: Some(build.clone()),
            cwd: dir.path().to_path_buf(),
            env: Vec::new(),
        })
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), exits.changed())
            .await
            .unwrap()
            .unwrap();
        let exit = exits.borrow_and_update().clone().unwrap();
        assert_eq!((exit.code, exit.signal.as_deref()), (Some(126), None));
        assert_eq!(exit.build, Some(build));
        assert_eq!(exit.stderr, "starting\n./web-server: Permission denied");
        assert_eq!(exit.to_string(), "exited with code 126");
        // Restarted, it stays up; stopping it is not an exit of its own.
        until("the restart", || sup_running(&dir)).await;
        sup.stop().await;
        assert!(!exits.has_changed().unwrap());
    }

    fn sup_running(dir: &tempfile::TempDir) -> bool {
        dir.path().join(PID_FILE).exists()
    }

    #[tokio::test]
    async fn a_child_that_keeps_exiting_is_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let sup = Supervisor::new(
            format!("echo x >> {}; exit 1", out.display()),
            Duration::from_millis(100),
            dir.path().join(PID_FILE),
        );
        sup.start(Launch {
            build: None,
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
