//! Content-addressed blob storage. A blob is written once under its sha256
//! digest and never changed; it becomes visible only after the bytes that
//! arrived hash to the digest the writer claimed.
//!
//! Two backends implement [`BlobStore`]: [`fs::FsStore`] (a directory: a
//! temporary file, fsync, rename) and [`s3::S3Store`] (any S3-compatible
//! store through `object_store`: a multipart upload completed only when the
//! digest matches, aborted otherwise). This crate knows nothing of builds.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use tug_core::Digest;

pub mod fs;
pub mod s3;
mod verify;

pub use fs::FsStore;
pub use s3::{S3Config, S3Store};

/// A stream of body bytes. An `Err` item means the sender went away or the
/// body was cut short; the put that reads it stores nothing.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the content hashes to {actual} ({size} bytes), not {expected}; nothing was stored")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("the body is larger than the {limit}-byte limit; nothing was stored")]
    TooLarge { limit: u64 },
    #[error("the upload was cut short after {received} bytes: {source}; nothing was stored")]
    Interrupted { received: u64, source: std::io::Error },
    #[error("range starts at {start}, past the end of the {size}-byte blob")]
    RangeNotSatisfiable { start: u64, size: u64 },
    #[error("invalid blob store address {url:?}: {why}")]
    Config { url: String, why: String },
    #[error("blob store I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("object store request failed: {0}")]
    ObjectStore(#[from] object_store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The name a quarantined blob gets: its hex digest and when it was moved
/// aside, so a blob that rots again after a repair does not overwrite the
/// evidence of the first time.
fn quarantine_name(digest: &Digest, at: DateTime<Utc>) -> String {
    format!("{}.{}", digest.hex(), at.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// A blob being read: its full size and a stream of the requested bytes.
pub struct Blob {
    /// The size of the whole blob, whatever range was asked for.
    pub size: u64,
    /// The first byte of `body` within the blob.
    pub start: u64,
    pub body: ByteStream,
}

/// One stored blob, as listed for fsck and gc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub modified: DateTime<Utc>,
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Where the blobs live, for logs and `tug server`'s banner; never
    /// includes credentials.
    fn describe(&self) -> String;

    /// The size of a stored blob, or `None`.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>>;

    /// Streams `body` into the store while hashing it. The blob becomes
    /// visible only if the bytes hash to `digest` and number at most `limit`;
    /// otherwise nothing is left behind. Storing a blob that already exists
    /// succeeds. Returns the blob's size.
    async fn put(&self, digest: &Digest, body: ByteStream, limit: u64) -> Result<u64>;

    /// Stores the file at `path` as the blob `digest`: the caller hashed
    /// the file's bytes as it wrote them and found `digest`. A store that
    /// can take the file over without copying it (the filesystem store,
    /// when the file is on its disk) does so, and the file is gone
    /// afterwards; any other store reads it (hashing it again as any put
    /// does) and leaves it for the caller to remove.
    async fn put_verified_file(&self, digest: &Digest, path: &std::path::Path, limit: u64) -> Result<u64> {
        self.put(digest, file_stream(path).await?, limit).await
    }

    /// Opens a blob for reading from byte `start` (0 for all of it) up to
    /// `end` (exclusive; `None` for the end of the blob).
    async fn get(&self, digest: &Digest, start: u64, end: Option<u64>) -> Result<Option<Blob>>;

    /// Removes a blob; `false` if it was not there.
    async fn delete(&self, digest: &Digest) -> Result<bool>;

    /// Every stored blob. Files or keys that are not blobs are skipped.
    async fn list(&self) -> Result<Vec<BlobInfo>>;

    /// Moves a blob whose bytes no longer match its digest out of the
    /// store, into a quarantine place outside the blobs (kept for
    /// inspection, never served or listed). Afterwards the digest counts as
    /// missing, so the next put of it stores the right bytes again. Returns
    /// where the bytes went, or `None` if the blob was not there.
    async fn quarantine(&self, digest: &Digest) -> Result<Option<String>>;

    /// Removes what interrupted writes left behind (called at start).
    /// Returns how many leftovers were removed.
    async fn clean_temporary(&self) -> Result<u64>;
}

/// The bytes of a file as a stream of 1 MiB chunks.
async fn file_stream(path: &std::path::Path) -> Result<ByteStream> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    let chunks = futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = bytes::BytesMut::with_capacity(1 << 20);
        while buf.len() < (1 << 20) {
            if file.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        Ok::<_, std::io::Error>((!buf.is_empty()).then(|| (buf.freeze(), file)))
    });
    Ok(Box::pin(chunks))
}

/// Opens the store a `--blob-store` address names: a filesystem path (or
/// `file:///path`), or `s3://BUCKET[/PREFIX]?endpoint=…&region=…`, with
/// credentials passed in `s3_credentials` (the binary reads them from the
/// usual `AWS_*` variables; this crate reads no environment).
pub fn open(address: &str, s3_credentials: Option<s3::Credentials>) -> Result<Arc<dyn BlobStore>> {
    if address.starts_with("s3://") {
        let config = S3Config::parse(address, s3_credentials)?;
        Ok(Arc::new(S3Store::new(config)?))
    } else {
        let path = address.strip_prefix("file://").unwrap_or(address);
        if path.is_empty() {
            return Err(Error::Config {
                url: address.into(),
                why: "the path is empty".into(),
            });
        }
        Ok(Arc::new(FsStore::new(path)?))
    }
}
