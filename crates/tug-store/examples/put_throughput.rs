//! Measures put throughput and peak memory: `cargo run --release -p
//! tug-store --example put_throughput -- fs|s3 [GIB] [CONCURRENT]`.
//!
//! `fs` writes into a temporary directory; `s3` uses the server named by
//! the test command's `TUG_TEST_S3_*` variables. The body arrives in 64 KiB
//! chunks, like an HTTP upload, cut from one repeated 1 MiB pattern so that
//! generating it costs nothing.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use tug_core::Hasher;
use tug_store::s3::Credentials;
use tug_store::{BlobStore, FsStore, S3Config, S3Store};

const CHUNK: usize = 64 * 1024;
const PATTERN: usize = 1024 * 1024;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// Peak resident memory of this process, from /proc.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    kib / 1024
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = args.first().map(String::as_str).unwrap_or("fs");
    let gib: u64 = args.get(1).map_or(1, |a| a.parse().expect("GIB is a number"));
    let concurrent: u64 = args.get(2).map_or(1, |a| a.parse().expect("CONCURRENT is a number"));

    let _dir;
    let store: Arc<dyn BlobStore> = match backend {
        "fs" => {
            let dir = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into())).unwrap();
            let store = FsStore::new(dir.path()).unwrap();
            _dir = dir;
            Arc::new(store)
        }
        "s3" => Arc::new(
            S3Store::new(S3Config {
                bucket: var("TUG_TEST_S3_BUCKET"),
                prefix: format!("throughput-{}", rand::random::<u32>()),
                endpoint: Some(var("TUG_TEST_S3_ENDPOINT")),
                region: "us-east-1".into(),
                credentials: Some(Credentials {
                    access_key_id: var("TUG_TEST_S3_ACCESS_KEY"),
                    secret_access_key: var("TUG_TEST_S3_SECRET_KEY"),
                    session_token: None,
                }),
            })
            .unwrap(),
        ),
        other => panic!("unknown backend {other:?}: use fs or s3"),
    };

    let size = gib * 1024 * 1024 * 1024;
    let puts: Vec<_> = (0..concurrent)
        .map(|i| {
            // Each put gets its own content, so concurrent puts are
            // different blobs.
            let mut pattern = vec![0u8; PATTERN];
            for (j, byte) in pattern.iter_mut().enumerate() {
                *byte = (j as u64).wrapping_mul(2_654_435_761).wrapping_add(i) as u8 ^ (j >> 11) as u8;
            }
            let pattern = Bytes::from(pattern);
            let chunks = move || {
                let pattern = pattern.clone();
                futures::stream::iter(0..size / CHUNK as u64).map(move |n| {
                    let at = (n as usize * CHUNK) % PATTERN;
                    Ok::<_, std::io::Error>(pattern.slice(at..at + CHUNK))
                })
            };
            let mut hasher = Hasher::new();
            let mut all = Box::pin(chunks());
            while let Some(Ok(chunk)) = futures::executor::block_on(all.next()) {
                hasher.update(&chunk);
            }
            let digest = hasher.finish();
            let store = Arc::clone(&store);
            async move {
                let started = Instant::now();
                store.put(&digest, chunks().boxed(), u64::MAX).await.unwrap();
                started.elapsed()
            }
        })
        .collect();

    let started = Instant::now();
    let times = futures::future::join_all(puts).await;
    let total = started.elapsed();
    for time in times {
        println!(
            "one put of {gib} GiB: {:.2?} ({:.0} MiB/s)",
            time,
            (size >> 20) as f64 / time.as_secs_f64()
        );
    }
    println!(
        "{backend}: {concurrent} x {gib} GiB in {total:.2?}, {:.0} MiB/s in all; peak RSS {} MiB",
        ((concurrent * size) >> 20) as f64 / total.as_secs_f64(),
        peak_rss_mib()
    );
}
