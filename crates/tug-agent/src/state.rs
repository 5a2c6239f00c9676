//! What the agent remembers across restarts, in its directory: its id
//! (`agent-id`), and `state.json` (an activation in progress, the rollback
//! target, the build that failed, the install history). Every write is
//! atomic (temporary file, fsync, rename, fsync of the directory), so a
//! `kill -9` leaves either the old or the new file, never a torn one.
//!
//! Nothing here talks to the server or touches releases.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tug_core::BuildId;

use crate::error::{io, Error, Result};

/// The contents of `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Set from just before `current` switches to this build until its
    /// health is confirmed or it is rolled back: finding it set at start
    /// means the agent died mid-activation.
    #[serde(default)]
    pub activating: Option<BuildId>,
    /// The build `current` pointed at before the last switch: where a
    /// failed activation rolls back to.
    #[serde(default)]
    pub previous: Option<BuildId>,
    /// The last build whose activation or health check failed (the agent
    /// went back); it is not tried again while the channel keeps naming it
    /// and is forgotten once the channel names another build.
    #[serde(default)]
    pub failed: Option<FailedBuild>,
    /// Builds switched to, oldest first; pruning keeps the newest.
    #[serde(default)]
    pub history: Vec<BuildId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedBuild {
    pub build: BuildId,
    pub error: String,
}

impl State {
    /// Reads `state.json`; a missing file is the empty state. An unreadable
    /// one is reported rather than guessed at.
    pub fn load(path: &Path) -> Result<State> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::State {
                path: path.to_path_buf(),
                message: format!("cannot parse the agent state ({e}); remove the file to start afresh"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io(path)(e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        write_atomic(path, &bytes)
    }

    /// Records a switch to `build`, oldest entries first.
    pub fn record_install(&mut self, build: &BuildId) {
        self.history.retain(|b| b != build);
        self.history.push(build.clone());
    }
}

/// Writes `bytes` to `path` so that readers (and a restart after a crash)
/// see the old or the new contents, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        // Typically a full disk: the old file stays, and so must no
        // half-written temporary.
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes the entries of `dir` (creations, renames) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The agent's stable id: read from `agent-id`, or created once (a UUID
/// v7) and written there.
pub fn agent_id(dir: &Path) -> Result<String> {
    let path = dir.join("agent-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if uuid::Uuid::parse_str(s.trim()).is_ok() => return Ok(s.trim().to_string()),
        Ok(_) => tracing::warn!(path = %path.display(), "agent id is not a UUID; creating a new one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let id = uuid::Uuid::now_v7().to_string();
    write_atomic(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

/// The machine's name, as the kernel knows it.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A moment no later than this process's start, from `/proc` (boot time
/// plus the process's start in clock ticks), less a margin that covers the
/// whole-second resolution of the boot time. Leftovers older than this
/// belong to an earlier process. Without `/proc` it is the epoch, so
/// nothing counts as a leftover (keeping a partial file is harmless: every
/// blob is verified before use).
pub fn process_start() -> SystemTime {
    fn read() -> Option<SystemTime> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may contain spaces and parentheses;
        // the fields after the last ')' are plain numbers.
        let rest = &stat[stat.rfind(')')? + 1..];
        // `rest` starts at field 3 (state); starttime is field 22.
        let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
        let btime: u64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        // USER_HZ is 100 on every Linux architecture's user ABI.
        let start = Duration::from_secs(btime) + Duration::from_millis(ticks * 10);
        (SystemTime::UNIX_EPOCH + start).checked_sub(Duration::from_secs(2))
    }
    read().unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(State::load(&path).unwrap(), State::default());
        let b = BuildId::parse("0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70").unwrap();
        let mut s = State {
            activating: Some(b.clone()),
            ..Default::default()
        };
        s.record_install(&b);
        s.record_install(&b);
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), s);
        assert_eq!(s.history.len(), 1);
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(State::load(&path).is_err());
    }

    #[test]
    fn agent_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent_id(dir.path()).unwrap();
        assert_eq!(agent_id(dir.path()).unwrap(), a);
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 7);
    }

    #[test]
    fn process_start_is_in_the_past() {
        let start = process_start();
        assert!(start <= SystemTime::now());
        // The test binary started within the last hour.
        assert!(start > SystemTime::now() - Duration::from_secs(3600));
    }
}
