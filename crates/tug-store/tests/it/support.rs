//! Helpers shared by the tests: stores to test, bodies to put, and reading
//! blobs back.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tempfile::TempDir;
use tug_core::Digest;
use tug_store::s3::Credentials;
use tug_store::{BlobStore, ByteStream, FsStore, S3Config, S3Store};

/// A filesystem store in a fresh directory, removed when the `TempDir` is
/// dropped.
pub fn fs_store() -> (Arc<FsStore>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path().join("store")).unwrap();
    (Arc::new(store), dir)
}

/// An S3 store under a fresh prefix of the test command's bucket.
pub fn s3_store() -> Arc<S3Store> {
    let env = tug_testkit::s3_env();
    let config = S3Config {
        bucket: env.bucket,
        prefix: env.prefix,
        endpoint: Some(env.endpoint),
        region: env.region,
        credentials: Some(Credentials {
            access_key_id: env.access_key_id,
            secret_access_key: env.secret_access_key,
            session_token: None,
        }),
    };
    Arc::new(S3Store::new(config).unwrap())
}

/// `len` bytes that differ for each `seed` and do not repeat with a short
/// period, so a misplaced range or part shows up as a mismatch.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// `data` as a body arriving in chunks of `chunk` bytes.
pub fn body(data: &[u8], chunk: usize) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = data.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    futures::stream::iter(chunks).boxed()
}

/// `data` as a body that is cut off after `cut` bytes.
pub fn interrupted_body(data: &[u8], chunk: usize, cut: usize) -> ByteStream {
    let head = body(&data[..cut], chunk);
    let failure = futures::stream::once(async {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        ))
    });
    head.chain(failure).boxed()
}

pub async fn put(store: &dyn BlobStore, data: &[u8]) -> tug_store::Result<u64> {
    store.put(&Digest::of(data), body(data, 64 * 1024), u64::MAX).await
}

/// The bytes of `digest` from `start` to `end`, and the blob's size.
pub async fn read(store: &dyn BlobStore, digest: &Digest, start: u64, end: Option<u64>) -> (Vec<u8>, u64) {
    let blob = store
        .get(digest, start, end)
        .await
        .unwrap()
        .expect("the blob is stored");
    assert_eq!(blob.start, start);
    let chunks: Vec<Bytes> = blob.body.try_collect().await.unwrap();
    (chunks.concat(), blob.size)
}
