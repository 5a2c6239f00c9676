//! The event sink: a consumer that appends every event to a file as JSON
//! lines, each line one event in the public schema with its hashes, as
//! `tug audit export` writes them. Lines are written and fsync'd before the
//! dispatcher moves the cursor.
//!
//! It is an operator's audit feed, like the export: it holds every event
//! whole, embargoed builds' included, since whoever reads the file reads
//! the server's own record (mode 0600, like the database) and a feed that
//! left events out could not be checked against the hash chain.
//!
//! Exactly once in the file, across crashes: when it (re)starts, the sink
//! removes an unfinished last line (a crash in the middle of a write; its
//! event was never acknowledged, so it comes again) and reads the id of the
//! last whole line, and it skips events up to that id (written before a
//! crash that came before the cursor moved).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tug_api::AuditRecord;

use crate::consumers::{Consumer, ConsumerError};

/// How much of the file's end is read at once while looking for its last
/// line.
const TAIL_CHUNK: u64 = 64 * 1024;

/// The JSON-lines event sink (see the module's documentation).
pub struct EventSink {
    path: PathBuf,
    file: Option<Arc<File>>,
    /// The id of the last event in the file.
    last: i64,
}

impl EventSink {
    /// The consumer's name: where its cursor is stored.
    pub const NAME: &'static str = "event-sink";

    /// A sink appending to `path`, created (mode 0600) if missing. Opens
    /// it once, so a path that cannot be written is refused when the
    /// server starts rather than in its log later.
    pub fn open(path: &Path) -> std::io::Result<EventSink> {
        open_append(path)?;
        Ok(EventSink {
            path: path.to_path_buf(),
            file: None,
            last: 0,
        })
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    if file.metadata()?.is_dir() {
        return Err(std::io::Error::other("it is a directory"));
    }
    Ok(file)
}

/// Removes an unfinished last line and returns the id of the last event in
/// the file (0 when it is empty).
fn repair(file: &File, path: &Path) -> Result<i64, ConsumerError> {
    let len = file.metadata()?.len();
    let (end, line) = last_line(file, len)?;
    if end < len {
        tracing::warn!(
            path = %path.display(),
            removed = len - end,
            "removed the unfinished last line a crash left in the event sink"
        );
        file.set_len(end)?;
        file.sync_data()?;
    }
    let Some(line) = line else { return Ok(0) };
    let id = serde_json::from_slice::<serde_json::Value>(&line)
        .ok()
        .and_then(|v| v.get("id").and_then(serde_json::Value::as_i64));
    id.ok_or_else(|| {
        ConsumerError::new(format!(
            "the last line of {} is not an event; move the file away to start a new one",
            path.display()
        ))
    })
}

/// Where the file's whole lines end (after the last newline) and the last
/// whole line, without its newline.
fn last_line(file: &File, len: u64) -> std::io::Result<(u64, Option<Vec<u8>>)> {
    // Newlines from the end, found by reading backwards a chunk at a time.
    let mut found: Vec<u64> = Vec::with_capacity(2);
    let mut pos = len;
    while pos > 0 && found.len() < 2 {
        let start = pos.saturating_sub(TAIL_CHUNK);
        let mut buf = vec![0; usize::try_from(pos - start).map_err(std::io::Error::other)?];
        file.read_exact_at(&mut buf, start)?;
        for (i, b) in buf.iter().enumerate().rev() {
            if *b == b'\n' {
                found.push(start + i as u64);
                if found.len() == 2 {
                    break;
                }
            }
        }
        pos = start;
    }
    let Some(&last_newline) = found.first() else {
        return Ok((0, None));
    };
    let from = found.get(1).map_or(0, |n| n + 1);
    let mut line = vec![0; usize::try_from(last_newline - from).map_err(std::io::Error::other)?];
    file.read_exact_at(&mut line, from)?;
    Ok((last_newline + 1, Some(line)))
}

#[async_trait::async_trait]
impl Consumer for EventSink {
    fn name(&self) -> &str {
        EventSink::NAME
    }

    async fn resume(&mut self) -> Result<(), ConsumerError> {
        let path = self.path.clone();
        let (file, last) = tokio::task::spawn_blocking(move || {
            let file = open_append(&path)?;
            let last = repair(&file, &path)?;
            Ok::<_, ConsumerError>((file, last))
        })
        .await
        .map_err(|e| ConsumerError::new(e.to_string()))??;
        self.file = Some(Arc::new(file));
        self.last = last;
        Ok(())
    }

    async fn handle(&mut self, records: &[AuditRecord]) -> Result<(), ConsumerError> {
        let Some(file) = self.file.clone() else {
            return Err(ConsumerError::new("the event sink is not open"));
        };
        let mut lines = Vec::new();
        let mut last = self.last;
        for r in records.iter().filter(|r| r.event.id > self.last) {
            serde_json::to_writer(&mut lines, r).map_err(|e| ConsumerError::new(e.to_string()))?;
            lines.push(b'\n');
            last = r.event.id;
        }
        if lines.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            (&*file).write_all(&lines)?;
            file.sync_data()
        })
        .await
        .map_err(|e| ConsumerError::new(e.to_string()))??;
        self.last = last;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, bytes).unwrap();
        let file = open_append(&path).unwrap();
        (dir, path, file)
    }

    #[test]
    fn an_unfinished_last_line_is_removed_and_the_last_id_read() {
        let (_d, path, file) = file_with(b"{\"id\":1}\n{\"id\":2,\"x\":\"y\"}\n{\"id\":3,\"ki");
        assert_eq!(repair(&file, &path).unwrap(), 2);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"id\":1}\n{\"id\":2,\"x\":\"y\"}\n");
        assert_eq!(repair(&file, &path).unwrap(), 2, "a whole file is left as it is");
    }

    #[test]
    fn an_empty_file_or_one_unfinished_line_starts_from_nothing() {
        for bytes in [&b""[..], b"{\"id\":1"] {
            let (_d, path, file) = file_with(bytes);
            assert_eq!(repair(&file, &path).unwrap(), 0);
            assert_eq!(std::fs::read(&path).unwrap(), b"");
        }
    }

    #[test]
    fn a_last_line_longer_than_a_chunk_is_read_whole() {
        let long = format!("{{\"id\":7,\"pad\":\"{}\"}}\n", "x".repeat(3 * TAIL_CHUNK as usize));
        let (_d, path, file) = file_with(format!("{{\"id\":6}}\n{long}").as_bytes());
        assert_eq!(repair(&file, &path).unwrap(), 7);
    }

    #[test]
    fn a_last_line_that_is_not_an_event_is_refused() {
        let (_d, path, file) = file_with(b"hello\n");
        assert!(repair(&file, &path)
            .unwrap_err()
            .to_string()
            .contains("move the file away"));
    }
}
