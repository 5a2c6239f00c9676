//! The filesystem backend: blobs are files under a root directory.
//!
//! Layout:
//! - `<root>/blobs/sha256/<first 2 hex>/<64 hex>`: stored blobs; the
//!   two-digit fan-out keeps directories small.
//! - `<root>/tmp/<random>`: uploads in progress. It is on the same
//!   filesystem as `blobs/`, so moving a verified upload into place is one
//!   atomic rename.
//! - `<root>/corrupt/sha256/<64 hex>.<time>`: blobs fsck found damaged and
//!   was told to repair, moved out of `blobs/` so the digest can be
//!   uploaded again; kept for inspection, deleted by nobody but an operator.
//!
//! A put streams into a temporary file while hashing, fsyncs it, renames it
//! into place and fsyncs the directory, so after a crash a blob is either
//! whole or absent. Directories the store creates are private to the
//! server's user (mode 0700) and blob files, temporary ones included, are
//! readable by it only (0600): what was released is nobody else's to read. Anything left in `tmp/` is removed by
//! [`BlobStore::clean_temporary`] at start. This module does not check
//! stored files for bit rot; that is fsck's job, through [`BlobStore::list`].

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tug_core::Digest;

use crate::verify::VerifiedBody;
use crate::{Blob, BlobInfo, BlobStore, ByteStream, Error, Result};

/// Bytes gathered before one write to the temporary file. Network bodies
/// arrive in chunks of a few KiB; writing each one would cost a syscall and
/// a hop to the blocking pool per chunk.
const WRITE_SIZE: usize = 1024 * 1024;

/// Chunks smaller than this are copied together before writing, so that a
/// body of tiny chunks does not become thousands of iovecs; larger ones
/// are written in place with one vectored write per batch.
const SMALL_CHUNK: usize = 16 * 1024;

/// Batches queued for the writer thread. Bounds the memory of one put to
/// about `(WRITE_QUEUE + 2) * WRITE_SIZE` while letting hashing (on the
/// runtime) and writing (on the writer thread) overlap.
const WRITE_QUEUE: usize = 4;

/// How much is written between two background flushes. Without them the
/// page cache would hold the whole blob until the final fsync, which would
/// then wait for all of it; with them the disk works while the rest of the
/// body arrives.
const FLUSH_EVERY: u64 = 64 * 1024 * 1024;

/// Chunk size of gets: large enough that a download costs few hand-offs and
/// few writes to the socket, small enough for many concurrent downloads.
const READ_SIZE: usize = 1024 * 1024;

/// A content-addressed store in a directory.
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// Opens the store at `root`, creating its directories if needed.
    pub fn new(root: impl AsRef<Path>) -> Result<FsStore> {
        let store = FsStore {
            root: root.as_ref().to_path_buf(),
        };
        create_private_dir(&store.blobs_dir())?;
        create_private_dir(&store.tmp_dir())?;
        Ok(store)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn quarantine_dir(&self) -> PathBuf {
        self.root.join("corrupt").join("sha256")
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs_dir().join(&hex[..2]).join(hex)
    }
}

#[async_trait]
impl BlobStore for FsStore {
    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(&self, digest: &Digest, body: ByteStream, limit: u64) -> Result<u64> {
        let tmp_dir = self.tmp_dir();
        let (tmp_path, file) = tokio::task::spawn_blocking(move || create_temporary(&tmp_dir))
            .await
            .map_err(io::Error::other)??;
        // From here on, every way out of this function (an error, a panic,
        // the caller dropping the future) removes the temporary file, unless
        // the rename below consumed it.
        let guard = RemoveOnDrop(Some(tmp_path.clone()));

        // One blocking thread per put does all the writes, fed through a
        // bounded queue: the runtime thread hashes the next megabyte while
        // this one writes the previous one.
        let (queue, jobs) = tokio::sync::mpsc::channel::<Vec<Bytes>>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || write_batches(file, jobs));

        let mut body = VerifiedBody::new(body, limit);
        let mut batch = Batch::default();
        let mut writer_gone = false;
        while let Some(chunk) = body.next().await? {
            batch.push(chunk);
            if batch.len >= WRITE_SIZE && queue.send(batch.take()).await.is_err() {
                // The writer stopped on an I/O error; it is reported below.
                writer_gone = true;
                break;
            }
        }
        if !writer_gone && batch.len > 0 {
            // A failed send means the writer failed; joining it reports why.
            let _ = queue.send(batch.take()).await;
        }
        drop(queue);
        let file = writer.await.map_err(io::Error::other)??;
        if writer_gone {
            // The writer returns Ok only once the queue is closed, so a
            // refused send always comes with an error above.
            return Err(io::Error::other("the blob writer stopped early").into());
        }
        let size = body.finish(digest)?;

        let final_path = self.blob_path(digest);
        tokio::task::spawn_blocking(move || commit(file, &tmp_path, &final_path))
            .await
            .map_err(io::Error::other)??;
        guard.disarm();
        Ok(size)
    }

    async fn put_verified_file(&self, digest: &Digest, path: &Path, limit: u64) -> Result<u64> {
        let size = tokio::fs::metadata(path).await?.len();
        if size > limit {
            return Err(Error::TooLarge { limit });
        }
        // Renamed into place when the file is on the store's filesystem:
        // the bytes were hashed as they arrived, and are not copied again.
        let (from, to) = (path.to_path_buf(), self.blob_path(digest));
        let renamed = tokio::task::spawn_blocking(move || -> io::Result<bool> {
            use std::os::unix::fs::PermissionsExt;
            let file = File::options().write(true).open(&from)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            match commit(file, &from, &to) {
                Ok(()) => Ok(true),
                Err(e) if e.raw_os_error() == Some(EXDEV) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(io::Error::other)??;
        if renamed {
            return Ok(size);
        }
        self.put(digest, crate::file_stream(path).await?, limit).await
    }

    async fn get(&self, digest: &Digest, start: u64, end: Option<u64>) -> Result<Option<Blob>> {
        let path = self.blob_path(digest);
        let opened = tokio::task::spawn_blocking(move || -> io::Result<Option<(File, u64)>> {
            match File::open(&path) {
                Ok(file) => {
                    let size = file.metadata()?.len();
                    Ok(Some((file, size)))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(io::Error::other)??;
        let Some((file, size)) = opened else {
            return Ok(None);
        };
        if start > size {
            return Err(Error::RangeNotSatisfiable { start, size });
        }
        // An end past the blob is clamped, like HTTP ranges; an end before
        // the start asks for nothing.
        let end = end.map_or(size, |end| end.min(size)).max(start);
        Ok(Some(Blob {
            size,
            start,
            body: read_stream(file, start, end - start)?,
        }))
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self) -> Result<Vec<BlobInfo>> {
        let blobs_dir = self.blobs_dir();
        Ok(tokio::task::spawn_blocking(move || list_blobs(&blobs_dir))
            .await
            .map_err(io::Error::other)??)
    }

    async fn quarantine(&self, digest: &Digest) -> Result<Option<String>> {
        let (from, dir, digest) = (self.blob_path(digest), self.quarantine_dir(), *digest);
        let moved = tokio::task::spawn_blocking(move || quarantine_file(&from, &dir, &digest))
            .await
            .map_err(io::Error::other)??;
        Ok(moved.map(|p| p.display().to_string()))
    }

    async fn clean_temporary(&self) -> Result<u64> {
        let tmp_dir = self.tmp_dir();
        Ok(tokio::task::spawn_blocking(move || remove_all_in(&tmp_dir))
            .await
            .map_err(io::Error::other)??)
    }
}

/// Streams bytes `start..start + len` of a blob file. The file is mapped
/// into memory and handed out as slices of the mapping, so the bytes are
/// copied once, into the socket, instead of into a buffer first; chunks
/// keep the mapping alive, so a blob deleted by gc mid-download is still
/// read whole.
fn read_stream(file: File, start: u64, len: u64) -> io::Result<ByteStream> {
    if len == 0 {
        return Ok(futures::stream::empty().boxed());
    }
    // SAFETY: blob files are immutable. They are written under a temporary
    // name and renamed into place only after their digest is verified, and
    // nothing in Tugboat writes to them afterwards; gc deletes them, which
    // leaves an existing mapping intact. Only an outside process truncating
    // a blob file could invalidate the mapping, and that is corruption of
    // the store, which fsck reports.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::MmapOptions::new().offset(start).len(len as usize).map(&file)? };
    let _ = map.advise(memmap2::Advice::Sequential);
    let whole = Bytes::from_owner(map);
    let chunks = (0..len).step_by(READ_SIZE).map(move |at| {
        let at = at as usize;
        Ok(whole.slice(at..(at + READ_SIZE).min(len as usize)))
    });
    Ok(futures::stream::iter(chunks).boxed())
}

/// `rename` across filesystems (Linux's EXDEV).
const EXDEV: i32 = 18;

/// Creates `dir` and any missing parents with mode 0700 (less the umask).
fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates a new, empty file with a random name in `dir`.
fn create_temporary(dir: &Path) -> io::Result<(PathBuf, File)> {
    loop {
        let path = dir.join(format!("{:016x}.part", rand::random::<u64>()));
        match File::options().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(file) => return Ok((path, file)),
            // Another put drew the same name; draw again.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Chunks of a body gathered for one vectored write.
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    /// Small chunks copied together, not yet in `chunks`.
    small: BytesMut,
    len: usize,
}

impl Batch {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        if chunk.len() < SMALL_CHUNK {
            self.small.extend_from_slice(&chunk);
            if self.small.len() >= SMALL_CHUNK {
                self.chunks.push(self.small.split().freeze());
            }
        } else {
            if !self.small.is_empty() {
                self.chunks.push(self.small.split().freeze());
            }
            self.chunks.push(chunk);
        }
    }

    fn take(&mut self) -> Vec<Bytes> {
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
        self.len = 0;
        std::mem::take(&mut self.chunks)
    }
}

/// The writer thread: writes batches until the queue closes, starting
/// writeback in the background every [`FLUSH_EVERY`] bytes.
fn write_batches(mut file: File, mut jobs: tokio::sync::mpsc::Receiver<Vec<Bytes>>) -> io::Result<File> {
    let mut unflushed = 0u64;
    let mut flusher: Option<std::thread::JoinHandle<io::Result<()>>> = None;
    while let Some(batch) = jobs.blocking_recv() {
        write_all_vectored(&mut file, &batch)?;
        unflushed += batch.iter().map(|chunk| chunk.len() as u64).sum::<u64>();
        // One flush at a time: if the disk is slower than the body, the
        // next flush simply covers more.
        if unflushed >= FLUSH_EVERY && flusher.as_ref().is_none_or(|f| f.is_finished()) {
            if let Some(done) = flusher.take() {
                join_flusher(done)?;
            }
            let handle = file.try_clone()?;
            flusher = Some(std::thread::spawn(move || handle.sync_data()));
            unflushed = 0;
        }
    }
    // A failed flush must fail the put: after a writeback error, a later
    // fsync may report success although the data never reached the disk.
    if let Some(done) = flusher {
        join_flusher(done)?;
    }
    Ok(file)
}

fn join_flusher(flusher: std::thread::JoinHandle<io::Result<()>>) -> io::Result<()> {
    flusher
        .join()
        .map_err(|_| io::Error::other("the flushing thread panicked"))?
}

fn write_all_vectored(file: &mut File, chunks: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|chunk| IoSlice::new(chunk)).collect();
    let mut slices = &mut slices[..];
    // Skips leading empty slices, so an empty batch writes nothing.
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes a verified upload visible: its bytes reach the disk before its
/// name does, and the name is durable before the put reports success.
fn commit(file: File, tmp_path: &Path, final_path: &Path) -> io::Result<()> {
    file.sync_all()?;
    drop(file);
    let parent = final_path.parent().expect("a blob path has a fan-out directory");
    if !parent.exists() {
        create_private_dir(parent)?;
        // The new fan-out directory's own entry must be durable too.
        if let Some(grandparent) = parent.parent() {
            File::open(grandparent)?.sync_all()?;
        }
    }
    // Concurrent puts of one digest each rename their own complete, verified
    // file; whichever lands last wins, and all of them hold the same bytes.
    std::fs::rename(tmp_path, final_path)?;
    File::open(parent)?.sync_all()
}

fn list_blobs(blobs_dir: &Path) -> io::Result<Vec<BlobInfo>> {
    let mut blobs = Vec::new();
    for fan_out in std::fs::read_dir(blobs_dir)? {
        let fan_out = fan_out?;
        if !fan_out.file_type()?.is_dir() {
            continue;
        }
        let fan_out_name = fan_out.file_name();
        for entry in std::fs::read_dir(fan_out.path())? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(digest) = Digest::parse(&format!("{}{name}", tug_core::digest::PREFIX)) else {
                continue;
            };
            // A blob in the wrong fan-out directory could never be found by
            // stat or get, so it is not reported as stored either.
            if fan_out_name.to_str() != Some(&name[..2]) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Deleted while we were listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !meta.is_file() {
                continue;
            }
            let modified: DateTime<Utc> = meta.modified()?.into();
            blobs.push(BlobInfo {
                digest,
                size: meta.len(),
                modified,
            });
        }
    }
    blobs.sort_by_key(|blob| blob.digest);
    Ok(blobs)
}

/// Moves the blob file `from` into `dir` under its quarantine name: a hard
/// link first, which never replaces an earlier quarantined copy, then the
/// blob's own name is removed, so at no moment are the bytes in neither
/// place. Returns the new path, or `None` if there was no blob.
fn quarantine_file(from: &Path, dir: &Path, digest: &Digest) -> io::Result<Option<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut at = Utc::now();
    let to = loop {
        let to = dir.join(crate::quarantine_name(digest, at));
        match std::fs::hard_link(from, &to) {
            Ok(()) => break to,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // Quarantined in the same millisecond before: take the next.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => at += chrono::Duration::milliseconds(1),
            Err(e) => return Err(e),
        }
    };
    File::open(dir)?.sync_all()?;
    match std::fs::remove_file(from) {
        // Moved aside by a concurrent repair: the bytes are kept either way.
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if let Some(parent) = from.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(Some(to))
}

fn remove_all_in(dir: &Path) -> io::Result<u64> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let result = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
        match result {
            Ok(()) => removed += 1,
            // Something else removed it first; it is gone either way.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Removes a temporary file when dropped, unless disarmed after the file
/// was renamed into place.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // Best effort: the file may already be gone (renamed by a commit
        // that finished after the put was cancelled), and a leftover is
        // removed by clean_temporary at the next start anyway.
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}
