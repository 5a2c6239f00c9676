//! `tug fsck` finds blobs whose bytes changed on disk; `tug gc` removes
//! blobs no build refers to, abandons stale drafts first, and never touches
//! a blob of a sealed build.

use crate::support::{digest_of, write_files, TestServer};

fn blob_path(server: &TestServer, digest: &tug_core::Digest) -> std::path::PathBuf {
    let hex = digest.hex();
    server.data_dir().join("blobs/sha256").join(&hex[..2]).join(&hex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_reports_corrupted_blobs() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    write_files(w, &[("good.bin", b"good bytes"), ("bad.bin", b"bytes that will rot")]);
    server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--version",
                "1.0.0",
                "--seal",
                "good.bin",
                "bad.bin",
            ],
        )
        .ok();
    let clean = server.tug(w, &["fsck", "--output", "json"]).json();
    assert_eq!(clean["checked"], 2);
    assert_eq!(clean["corrupt"].as_array().unwrap().len(), 0);

    let rotten = digest_of(b"bytes that will rot");
    std::fs::write(blob_path(&server, &rotten), b"bytes that did rot!").unwrap();
    let run = server.tug(w, &["fsck"]);
    let out = run.stdout.clone();
    assert_ne!(run.code, 0, "fsck fails when the store is damaged");
    assert!(out.contains(&format!("CORRUPT {rotten}")), "{out}");
    assert!(out.contains(&digest_of(b"bytes that did rot!").to_string()), "{out}");
    assert!(!out.contains(&digest_of(b"good bytes").to_string()), "{out}");

    std::fs::remove_file(blob_path(&server, &rotten)).unwrap();
    let report = server.tug(w, &["fsck", "--output", "json"]);
    let missing: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    assert_eq!(missing["missing"][0], rotten.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_collects_garbage_and_never_a_sealed_blob() {
    let server = TestServer::start().await;
    let client = server.client();
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    write_files(
        w,
        &[
            ("sealed.bin", b"sealed"),
            ("draft.bin", b"draft"),
            ("shared.bin", b"shared"),
        ],
    );
    server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--version",
                "1.0.0",
                "--seal",
                "sealed.bin",
                "shared.bin",
            ],
        )
        .ok();
    let draft = server
        .tug(w, &["build", "create", "--service", "api", "--version", "1.1.0"])
        .ok()
        .trim()
        .to_string();
    server.tug(w, &["push", &draft, "draft.bin", "shared.bin"]).ok();
    client
        .put_blob_bytes(&digest_of(b"orphan"), b"orphan".to_vec())
        .await
        .unwrap();

    // Within the grace period nothing goes, not even the orphan.
    let kept = server.tug(w, &["gc", "--output", "json"]).json();
    assert_eq!(kept["deleted"].as_array().unwrap().len(), 0);

    let dry = server
        .tug(w, &["gc", "--grace", "0", "--dry-run", "--output", "json"])
        .json();
    assert_eq!(dry["deleted"][0], digest_of(b"orphan").to_string());
    assert!(
        client.head_blob(&digest_of(b"orphan")).await.unwrap().is_some(),
        "a dry run deletes nothing"
    );

    let first = server.tug(w, &["gc", "--grace", "0", "--output", "json"]).json();
    assert_eq!(
        first["deleted"].as_array().unwrap(),
        &vec![serde_json::json!(digest_of(b"orphan").to_string())]
    );
    assert_eq!(first["abandoned_drafts"].as_array().unwrap().len(), 0);

    // Drafts older than the limit are abandoned first; their blobs go, the
    // sealed build's (including one it shares with the draft) stay.
    let second = server
        .tug(w, &["gc", "--grace", "0", "--draft-max-age", "0", "--output", "json"])
        .json();
    assert_eq!(second["abandoned_drafts"][0], draft.as_str());
    assert_eq!(
        second["deleted"].as_array().unwrap(),
        &vec![serde_json::json!(digest_of(b"draft").to_string())]
    );
    for kept in [b"sealed".as_slice(), b"shared"] {
        assert!(client.head_blob(&digest_of(kept)).await.unwrap().is_some());
    }
    let abandoned = client.build(&draft).await.unwrap();
    assert_eq!(abandoned.state, tug_core::BuildState::Abandoned);
    let err = server.tug(w, &["push", &draft, "draft.bin"]).fails().to_string();
    assert!(err.contains("abandoned"), "{err}");
    assert_eq!(
        server.tug(w, &["fsck", "--output", "json"]).json()["missing"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}
