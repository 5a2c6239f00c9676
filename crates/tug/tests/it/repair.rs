//! Store maintenance as an operator meets it: `tug gc --dry-run` reports
//! exactly what the real run then does (the drafts it abandons and the
//! blobs that frees), out-of-range ages are refused instead of panicking,
//! and `tug fsck` names the builds a damaged blob belongs to while
//! `tug fsck --repair` moves it aside so pushing the file again heals the
//! store. Each runs on the embedded defaults and on PostgreSQL with S3.

use serde_json::Value;

use crate::support::{digest_of, write_files, Backend, TestServer};

/// Pushes `files` from `w` into a new build of `api` at `version`, sealed
/// or left a draft; returns its id.
pub fn push_build(server: &TestServer, w: &std::path::Path, version: &str, files: &[&str], seal: bool) -> String {
    let id = server
        .tug(w, &["build", "create", "--service", "api", "--version", version])
        .ok()
        .trim()
        .to_string();
    server.tug(w, &[&["push", id.as_str()], files].concat()).ok();
    if seal {
        server.tug(w, &["build", "seal", &id]).ok();
    }
    id
}

/// A sealed build, three drafts (one sharing a file with the sealed
/// build, two sharing one with each other) and an orphan blob.
async fn garbage(server: &TestServer, w: &std::path::Path) -> Vec<String> {
    server.tug(w, &["service", "create", "api"]).ok();
    let files: [(&str, &[u8]); 4] = [
        ("sealed.bin", b"sealed"),
        ("shared.bin", b"shared with the sealed build"),
        ("d1.bin", b"only in the first draft"),
        ("d23.bin", b"in the second and third drafts, 47 bytes long!!"),
    ];
    write_files(w, &files);
    push_build(server, w, "1.0.0", &["sealed.bin", "shared.bin"], true);
    let mut drafts = vec![
        push_build(server, w, "1.1.0", &["d1.bin", "shared.bin"], false),
        push_build(server, w, "1.2.0", &["d23.bin"], false),
        push_build(server, w, "1.3.0", &["d23.bin"], false),
    ];
    server
        .client()
        .put_blob_bytes(&digest_of(b"orphan"), b"orphan".to_vec())
        .await
        .unwrap();
    drafts.sort();
    drafts
}

/// The parts of a gc report a dry run must predict.
fn outcome(report: &Value) -> (Value, Value, Value, Value) {
    (
        report["abandoned_drafts"].clone(),
        report["deleted"].clone(),
        report["freed_bytes"].clone(),
        report["kept"].clone(),
    )
}

async fn gc_dry_run_reports_what_the_run_does(server: TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let drafts = garbage(&server, w).await;
    let args = ["gc", "--grace", "0", "--draft-max-age", "0", "--output", "json"];

    let dry = server.tug(w, &[&args[..], &["--dry-run"]].concat()).json();
    assert_eq!(dry["dry_run"], true);
    for id in &drafts {
        let build = server.client().build(id).await.unwrap();
        assert_eq!(build.state, tug_core::BuildState::Draft, "a dry run abandons nothing");
    }
    let text = server.tug(w, &["gc", "--grace", "0", "--draft-max-age", "0", "--dry-run"]);
    let text = text.ok();
    assert!(text.contains("Would delete 3 blobs (76 B)"), "{text}");
    assert!(
        text.contains(&format!("would abandon stale draft {}", drafts[0])),
        "{text}"
    );

    let real = server.tug(w, &args).json();
    assert_eq!(real["dry_run"], false);
    assert_eq!(outcome(&dry), outcome(&real), "dry run {dry:#}\nreal run {real:#}");

    // What was predicted is what happened: the three drafts, and the
    // blobs only they (and nobody) referred to.
    assert_eq!(real["abandoned_drafts"], serde_json::json!(drafts));
    let mut freed = vec![
        digest_of(b"orphan").to_string(),
        digest_of(b"only in the first draft").to_string(),
        digest_of(b"in the second and third drafts, 47 bytes long!!").to_string(),
    ];
    freed.sort();
    assert_eq!(real["deleted"], serde_json::json!(freed));
    assert_eq!(real["freed_bytes"], 6 + 23 + 47);
    for kept in [b"sealed".as_slice(), b"shared with the sealed build"] {
        assert!(server.client().head_blob(&digest_of(kept)).await.unwrap().is_some());
    }
    // Nothing is left to do: a second dry run and run agree on nothing.
    let again = server.tug(w, &[&args[..], &["--dry-run"]].concat()).json();
    assert_eq!(again["deleted"], serde_json::json!([]));
    assert_eq!(again["abandoned_drafts"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_dry_run_reports_what_the_run_does_on_sqlite_and_files() {
    gc_dry_run_reports_what_the_run_does(TestServer::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_dry_run_reports_what_the_run_does_on_postgres_and_s3() {
    gc_dry_run_reports_what_the_run_does(TestServer::start_with(Backend::postgres_s3().await, &[]).await).await;
}

/// `grace_secs` of 9000000000000 used to overflow the clock and panic the
/// request (the connection dropped, the CLI saw no answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_with_an_out_of_range_age_is_refused_not_a_panic() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    for flag in ["--grace", "--draft-max-age"] {
        for dry in [false, true] {
            let mut args = vec!["gc", flag, "9000000000000"];
            if dry {
                args.push("--dry-run");
            }
            let err = server.tug(w, &args).fails().to_string();
            assert!(err.contains("must be at most 3153600000 (100 years)"), "{flag}: {err}");
        }
    }
    for field in ["grace_secs", "draft_max_age_secs"] {
        let res = server
            .http(reqwest::Method::POST, "/v1/admin/gc")
            .json(&serde_json::json!({ field: 9_000_000_000_000u64, "dry_run": true }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{field}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "invalid_request");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{field} is 9000000000000 seconds")),
            "{message}"
        );
    }
    // The largest accepted age works, and the server is still there.
    let ok = server
        .tug(
            w,
            &[
                "gc",
                "--grace",
                "3153600000",
                "--draft-max-age",
                "3153600000",
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(ok["deleted"], serde_json::json!([]));
}
