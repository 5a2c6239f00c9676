//! What only the filesystem backend can show: its temporary directory is
//! cleaned at start and stays empty after failed or cancelled puts.

use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;
use tug_core::Digest;
use tug_store::{BlobStore, Error, FsStore};

use crate::support::{body, data, interrupted_body};

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test]
async fn clean_temporary_removes_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = FsStore::new(&root).unwrap();
    std::fs::write(root.join("tmp/0123456789abcdef.part"), b"half an upload").unwrap();
    std::fs::create_dir(root.join("tmp/stray")).unwrap();
    std::fs::write(root.join("tmp/stray/file"), b"x").unwrap();

    assert_eq!(store.clean_temporary().await.unwrap(), 2);
    assert_eq!(entries(&root.join("tmp")), 0);
    assert_eq!(store.clean_temporary().await.unwrap(), 0);
}

#[tokio::test]
async fn failed_puts_leave_tmp_empty() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = FsStore::new(&root).unwrap();
    let bytes = data(3 * 1024 * 1024, 20);
    let digest = Digest::of(&bytes);

    let interrupted = store
        .put(&digest, interrupted_body(&bytes, 64 * 1024, 2 * 1024 * 1024), u64::MAX)
        .await;
    assert!(matches!(interrupted, Err(Error::Interrupted { .. })), "{interrupted:?}");
    let too_large = store.put(&digest, body(&bytes, 64 * 1024), 1024 * 1024).await;
    assert!(matches!(too_large, Err(Error::TooLarge { .. })), "{too_large:?}");
    let mismatch = store
        .put(&Digest::of(b"other"), body(&bytes, 64 * 1024), u64::MAX)
        .await;
    assert!(matches!(mismatch, Err(Error::DigestMismatch { .. })), "{mismatch:?}");

    assert_eq!(entries(&root.join("tmp")), 0);
    assert!(store.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_put_leaves_tmp_empty() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = std::sync::Arc::new(FsStore::new(&root).unwrap());
    let digest = Digest::of(b"never finished");

    // A body that the test feeds by hand and never ends.
    let (feed, chunks) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
    let body = tokio_stream_from(chunks);
    let put = tokio::spawn({
        let store = std::sync::Arc::clone(&store);
        async move { store.put(&digest, body, u64::MAX).await }
    });
    // With a queue of one, the third send returns only after the put took
    // the first chunk, so by then it has created its temporary file.
    for _ in 0..3 {
        feed.send(Ok(Bytes::from(vec![7u8; 1024]))).await.unwrap();
    }
    assert_eq!(entries(&root.join("tmp")), 1);

    put.abort();
    assert!(put.await.unwrap_err().is_cancelled());
    assert_eq!(entries(&root.join("tmp")), 0);
    assert_eq!(store.stat(&digest).await.unwrap(), None);
}

fn tokio_stream_from(mut chunks: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> tug_store::ByteStream {
    futures::stream::poll_fn(move |cx| chunks.poll_recv(cx)).boxed()
}

/// The damaged bytes are kept, outside `blobs/`, for whoever wants to see
/// what happened to them.
#[tokio::test]
async fn quarantine_keeps_the_damaged_bytes_outside_the_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = FsStore::new(&root).unwrap();
    let bytes = data(1_000, 21);
    let digest = Digest::of(&bytes);
    crate::support::put(&store, &bytes).await.unwrap();
    let hex = digest.hex();
    let stored = root.join("blobs/sha256").join(&hex[..2]).join(&hex);
    std::fs::write(&stored, b"rotten").unwrap();

    let moved = store.quarantine(&digest).await.unwrap().unwrap();
    let moved = Path::new(&moved);
    assert_eq!(moved.parent().unwrap(), root.join("corrupt/sha256"));
    assert!(moved
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with(&format!("{hex}.")));
    assert_eq!(std::fs::read(moved).unwrap(), b"rotten");
    assert!(!stored.exists());
}
