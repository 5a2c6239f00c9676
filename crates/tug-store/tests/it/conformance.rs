//! The behaviour every `BlobStore` must have. Each case is written once as
//! a function of the store and run on the filesystem and on S3 by
//! `conformance!` below.

use std::sync::Arc;

use tug_core::Digest;
use tug_store::{BlobStore, Error};

use crate::support::{body, data, interrupted_body, put, read};

/// Declares, for each case, one test on a fresh filesystem store and one on
/// a fresh S3 prefix.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod on_fs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _dir) = crate::support::fs_store();
                    super::$case(store).await;
                }
            )*
        }
        mod on_s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::support::s3_store()).await;
                }
            )*
        }
    };
}

conformance!(
    round_trip_and_ranges,
    empty_blob,
    missing_blob,
    put_of_existing_blob_succeeds,
    digest_mismatch_stores_nothing,
    digest_mismatch_keeps_existing_blob,
    too_large_stores_nothing,
    interrupted_body_stores_nothing,
    concurrent_puts_of_one_digest,
    multipart_sized_blob,
    list_and_delete,
    quarantined_blob_is_missing_until_put_again,
);

async fn round_trip_and_ranges(store: Arc<dyn BlobStore>) {
    let bytes = data(100_000, 1);
    let digest = Digest::of(&bytes);
    let size = bytes.len() as u64;

    assert_eq!(store.put(&digest, body(&bytes, 7_000), size).await.unwrap(), size);
    assert_eq!(store.stat(&digest).await.unwrap(), Some(size));

    let (whole, reported) = read(&*store, &digest, 0, None).await;
    assert_eq!(reported, size);
    assert!(whole == bytes, "the whole blob reads back as written");

    for (start, end) in [
        (0, Some(1)),
        (10, Some(20)),
        (6_999, Some(7_001)),
        (99_995, None),
        (0, Some(size)),
    ] {
        let (part, reported) = read(&*store, &digest, start, end).await;
        assert_eq!(reported, size, "the size is the whole blob's for {start}..{end:?}");
        let end = end.unwrap_or(size) as usize;
        assert!(part == bytes[start as usize..end], "range {start}..{end}");
    }

    // An end past the blob is clamped.
    let (tail, _) = read(&*store, &digest, 90_000, Some(1_000_000)).await;
    assert!(tail == bytes[90_000..]);

    // Starting at the end is an empty read; an end before the start too.
    let (empty, reported) = read(&*store, &digest, size, None).await;
    assert!(empty.is_empty());
    assert_eq!(reported, size);
    let (empty, _) = read(&*store, &digest, 50, Some(40)).await;
    assert!(empty.is_empty());

    // Starting past the end is refused.
    match store.get(&digest, size + 1, None).await {
        Err(Error::RangeNotSatisfiable { start, size: s }) => {
            assert_eq!((start, s), (size + 1, size))
        }
        other => panic!(
            "expected RangeNotSatisfiable, got {:?}",
            other.map(|b| b.map(|b| b.size))
        ),
    }
}

async fn empty_blob(store: Arc<dyn BlobStore>) {
    let digest = Digest::of(b"");
    assert_eq!(store.put(&digest, body(b"", 1), 0).await.unwrap(), 0);
    assert_eq!(store.stat(&digest).await.unwrap(), Some(0));
    let (bytes, size) = read(&*store, &digest, 0, None).await;
    assert!(bytes.is_empty());
    assert_eq!(size, 0);
    let (bytes, _) = read(&*store, &digest, 0, Some(10)).await;
    assert!(bytes.is_empty());
    assert!(matches!(
        store.get(&digest, 1, None).await,
        Err(Error::RangeNotSatisfiable { start: 1, size: 0 })
    ));
    assert_eq!(store.list().await.unwrap().len(), 1);
}

async fn missing_blob(store: Arc<dyn BlobStore>) {
    let digest = Digest::of(b"never stored");
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    assert!(store.get(&digest, 0, None).await.unwrap().is_none());
    assert!(store.get(&digest, 5, Some(10)).await.unwrap().is_none());
    assert!(!store.delete(&digest).await.unwrap());
    assert!(store.list().await.unwrap().is_empty());
}

async fn put_of_existing_blob_succeeds(store: Arc<dyn BlobStore>) {
    let bytes = data(300_000, 2);
    let digest = Digest::of(&bytes);
    assert_eq!(put(&*store, &bytes).await.unwrap(), 300_000);
    assert_eq!(put(&*store, &bytes).await.unwrap(), 300_000);
    assert_eq!(store.list().await.unwrap().len(), 1);
    let (back, _) = read(&*store, &digest, 0, None).await;
    assert!(back == bytes);
}

async fn digest_mismatch_stores_nothing(store: Arc<dyn BlobStore>) {
    let bytes = data(200_000, 3);
    let claimed = Digest::of(b"something else");
    match store.put(&claimed, body(&bytes, 10_000), u64::MAX).await {
        Err(Error::DigestMismatch { expected, actual, size }) => {
            assert_eq!(expected, claimed);
            assert_eq!(actual, Digest::of(&bytes));
            assert_eq!(size, 200_000);
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(store.stat(&claimed).await.unwrap(), None);
    assert!(store.get(&claimed, 0, None).await.unwrap().is_none());
    assert!(store.list().await.unwrap().is_empty());
}

async fn digest_mismatch_keeps_existing_blob(store: Arc<dyn BlobStore>) {
    let good = data(50_000, 4);
    let digest = Digest::of(&good);
    put(&*store, &good).await.unwrap();
    let bad = data(60_000, 5);
    let result = store.put(&digest, body(&bad, 4_096), u64::MAX).await;
    assert!(matches!(result, Err(Error::DigestMismatch { .. })), "{result:?}");
    let (back, size) = read(&*store, &digest, 0, None).await;
    assert_eq!(size, 50_000);
    assert!(back == good, "a refused put leaves the stored blob as it was");
}

async fn too_large_stores_nothing(store: Arc<dyn BlobStore>) {
    let bytes = data(5_000, 6);
    let digest = Digest::of(&bytes);
    match store.put(&digest, body(&bytes, 700), 4_999).await {
        Err(Error::TooLarge { limit }) => assert_eq!(limit, 4_999),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    assert!(store.list().await.unwrap().is_empty());

    // Exactly at the limit is fine.
    assert_eq!(store.put(&digest, body(&bytes, 700), 5_000).await.unwrap(), 5_000);
}

async fn interrupted_body_stores_nothing(store: Arc<dyn BlobStore>) {
    let bytes = data(100_000, 7);
    let digest = Digest::of(&bytes);
    match store
        .put(&digest, interrupted_body(&bytes, 10_000, 30_000), u64::MAX)
        .await
    {
        Err(Error::Interrupted { received, source }) => {
            assert_eq!(received, 30_000);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionReset);
        }
        other => panic!("expected Interrupted, got {other:?}"),
    }
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    assert!(store.list().await.unwrap().is_empty());
}

async fn concurrent_puts_of_one_digest(store: Arc<dyn BlobStore>) {
    // Larger than one S3 part, so the uploads really overlap.
    let bytes = Arc::new(data(10 * 1024 * 1024, 8));
    let digest = Digest::of(&bytes);
    let puts: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            let bytes = Arc::clone(&bytes);
            tokio::spawn(async move { store.put(&digest, body(&bytes, 256 * 1024), u64::MAX).await })
        })
        .collect();
    for put in puts {
        assert_eq!(put.await.unwrap().unwrap(), bytes.len() as u64);
    }
    let (back, size) = read(&*store, &digest, 0, None).await;
    assert_eq!(size, bytes.len() as u64);
    assert!(back == *bytes, "the blob is the one that was put");
    assert_eq!(store.list().await.unwrap().len(), 1);
}

async fn multipart_sized_blob(store: Arc<dyn BlobStore>) {
    // Several 8 MiB S3 parts and a short last one, in chunks that do not
    // line up with part boundaries.
    let bytes = data(20 * 1024 * 1024 + 12_345, 9);
    let digest = Digest::of(&bytes);
    let size = bytes.len() as u64;
    assert_eq!(store.put(&digest, body(&bytes, 100_003), size).await.unwrap(), size);
    let (back, _) = read(&*store, &digest, 0, None).await;
    assert!(back == bytes);

    // A range across the first part boundary.
    let boundary = 8 * 1024 * 1024;
    let (across, _) = read(&*store, &digest, boundary - 10, Some(boundary + 10)).await;
    assert!(across == bytes[boundary as usize - 10..boundary as usize + 10]);
}

async fn list_and_delete(store: Arc<dyn BlobStore>) {
    let blobs: Vec<Vec<u8>> = vec![data(10, 10), data(1_000, 11), data(0, 12)];
    let before = chrono::Utc::now() - chrono::Duration::minutes(5);
    for bytes in &blobs {
        put(&*store, bytes).await.unwrap();
    }

    let mut expected: Vec<(Digest, u64)> = blobs.iter().map(|b| (Digest::of(b), b.len() as u64)).collect();
    expected.sort();
    let listed = store.list().await.unwrap();
    let got: Vec<(Digest, u64)> = listed.iter().map(|info| (info.digest, info.size)).collect();
    assert_eq!(got, expected);
    assert!(listed.iter().all(|info| info.modified > before), "{listed:?}");

    let gone = Digest::of(&blobs[1]);
    assert!(store.delete(&gone).await.unwrap());
    assert!(!store.delete(&gone).await.unwrap());
    assert_eq!(store.stat(&gone).await.unwrap(), None);
    assert!(store.get(&gone, 0, None).await.unwrap().is_none());
    let left: Vec<Digest> = store.list().await.unwrap().iter().map(|info| info.digest).collect();
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&gone));
}

/// `fsck --repair` moves a damaged blob aside: from then on the digest is
/// missing (not stated, read, listed or deletable), so the next put, which
/// a present blob would answer without reading the body, stores it again.
async fn quarantined_blob_is_missing_until_put_again(store: Arc<dyn BlobStore>) {
    let bytes = data(70_000, 13);
    let digest = Digest::of(&bytes);
    let other = data(5_000, 14);
    put(&*store, &bytes).await.unwrap();
    put(&*store, &other).await.unwrap();

    let first = store.quarantine(&digest).await.unwrap().expect("the blob was there");
    assert!(first.contains(&digest.hex()), "{first}");
    assert!(first.contains("corrupt/sha256/"), "{first}");
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    assert!(store.get(&digest, 0, None).await.unwrap().is_none());
    assert!(!store.delete(&digest).await.unwrap());
    let listed: Vec<Digest> = store.list().await.unwrap().iter().map(|b| b.digest).collect();
    assert_eq!(
        listed,
        vec![Digest::of(&other)],
        "the quarantine is not among the blobs"
    );
    assert_eq!(store.quarantine(&digest).await.unwrap(), None, "nothing left to move");

    assert_eq!(put(&*store, &bytes).await.unwrap(), 70_000);
    let (back, size) = read(&*store, &digest, 0, None).await;
    assert_eq!(size, 70_000);
    assert!(back == bytes, "the blob is stored again");

    // A second repair of the same digest keeps the first one's bytes.
    let second = store.quarantine(&digest).await.unwrap().expect("stored again");
    assert_ne!(first, second);
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    assert_eq!(store.stat(&Digest::of(&other)).await.unwrap(), Some(5_000));
}
