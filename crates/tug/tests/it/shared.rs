//! The same flows on PostgreSQL and an S3 store (SeaweedFS), and several
//! servers sharing one database and one bucket.

use crate::support::{write_files, Backend, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_seal_show_pull_on_postgres_and_s3() {
    let server = TestServer::start_with(Backend::postgres_s3().await, &[]).await;
    crate::flow::push_seal_show_pull(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_database_and_bucket() {
    let a = TestServer::start_with(Backend::postgres_s3().await, &[]).await;
    let b = a.sibling().await;
    assert!(!a.admin_token.is_empty());
    assert!(
        !b.data_dir().join("admin.token").exists(),
        "the second server finds the admin token in the shared database and makes none"
    );
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    a.tug(w, &["service", "create", "api"]).ok();
    let body: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 253) as u8).collect();
    write_files(w, &[("big.bin", &body)]);
    let out = a
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--version",
                "3.0.0",
                "--seal",
                "big.bin",
                "--output",
                "json",
            ],
        )
        .json();
    let id = out["build"].as_str().unwrap();
    let pulled = w.join("pulled");
    b.tug(w, &["pull", id, "--dest", pulled.to_str().unwrap()]).ok();
    assert_eq!(std::fs::read(pulled.join("big.bin")).unwrap(), body);

    // A token revoked through one server is refused by the other at once.
    let t = a
        .tug(
            w,
            &[
                "token",
                "create",
                "--name",
                "short-lived",
                "--role",
                "viewer",
                "--output",
                "json",
            ],
        )
        .json();
    let secret = t["secret"].as_str().unwrap();
    b.tug_as(secret, w, &["service", "list"]).ok();
    a.tug(w, &["token", "revoke", "short-lived"]).ok();
    assert!(b
        .tug_as(secret, w, &["service", "list"])
        .fails()
        .contains("token_revoked"));

    // fsck through either server sees the S3 blobs.
    let report = b.tug(w, &["fsck", "--output", "json"]).json();
    assert_eq!(report["checked"], 1);
    assert_eq!(report["bytes"], 12u64 << 20);
}
