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

/// Where the test can reach a server's blobs behind its back.
enum Blobs {
    Dir(std::path::PathBuf),
    S3(tug_testkit::S3Env),
}

impl Blobs {
    /// Replaces the stored bytes of `digest`, as a failing disk or a
    /// careless operator would.
    async fn corrupt(&self, digest: &tug_core::Digest, bytes: &[u8]) {
        let hex = digest.hex();
        match self {
            Blobs::Dir(data) => std::fs::write(data.join("blobs/sha256").join(&hex[..2]).join(&hex), bytes).unwrap(),
            Blobs::S3(s3) => {
                use object_store::ObjectStore;
                let bucket = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_endpoint(&s3.endpoint)
                    .with_allow_http(true)
                    .with_virtual_hosted_style_request(false)
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(&s3.secret_access_key)
                    .build()
                    .unwrap();
                let key = object_store::path::Path::from(format!("{}/blobs/sha256/{hex}", s3.prefix));
                bucket.put(&key, bytes.to_vec().into()).await.unwrap();
            }
        }
    }
}

/// A corrupt blob used to stay corrupt for good: fsck reported it, but a
/// push of the right file was answered "already stored". Now fsck names
/// the build that needs it, `--repair` moves it aside, and pushing the
/// file again (into the sealed build itself) restores it.
async fn a_corrupt_blob_is_repaired_by_fsck_repair_and_a_push(server: TestServer, blobs: Blobs) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let app: &[u8] = b"the application, as CI built it";
    write_files(
        w,
        &[
            ("app.bin", app),
            ("notes.txt", b"release notes"),
            ("other.bin", b"not in the build"),
        ],
    );
    let build = push_build(&server, w, "1.0.0", &["app.bin", "notes.txt"], true);
    let digest = digest_of(app);
    assert_eq!(
        server.tug(w, &["fsck", "--output", "json"]).json()["corrupt"],
        serde_json::json!([])
    );

    blobs.corrupt(&digest, b"the application, after the disk").await;
    let run = server.tug(w, &["fsck"]);
    let text = run.fails();
    assert!(text.is_empty(), "{text}");
    let out = &run.stdout;
    assert!(out.contains(&format!("CORRUPT {digest}")), "{out}");
    assert!(
        out.contains(&format!("needed by app.bin of build {build} (api 1.0.0, sealed)")),
        "{out}"
    );
    assert!(out.contains("tug fsck --repair"), "{out}");
    let report = json_of(&server.tug(w, &["fsck", "--output", "json"]));
    assert_eq!(report["needed_by"].as_array().unwrap().len(), 1, "{report:#}");
    let user = &report["needed_by"][0];
    assert_eq!(
        (
            &user["digest"],
            &user["build"],
            &user["service"],
            &user["version"],
            &user["artifact"]
        ),
        (
            &serde_json::json!(digest.to_string()),
            &serde_json::json!(build),
            &serde_json::json!("api"),
            &serde_json::json!("1.0.0"),
            &serde_json::json!("app.bin")
        )
    );

    // Without a repair, pushing the file changes nothing: the store says
    // it has the blob.
    let pushed = server.tug(w, &["push", &build, "app.bin", "--output", "json"]).json();
    assert_eq!(pushed["uploaded_blobs"], 0);
    assert_eq!(
        json_of(&server.tug(w, &["fsck", "--output", "json"]))["corrupt"][0]["digest"],
        digest.to_string()
    );

    // Only admins repair.
    let viewer = server.tug(
        w,
        &["token", "create", "--name", "v", "--role", "viewer", "--output", "json"],
    );
    let viewer = viewer.json()["secret"].as_str().unwrap().to_string();
    let refused = server.tug_as(&viewer, w, &["fsck", "--repair"]).fails().to_string();
    assert!(refused.contains("may not run store maintenance"), "{refused}");

    let repaired = json_of(&server.tug(w, &["fsck", "--repair", "--output", "json"]));
    assert_eq!(repaired["repaired"], true);
    let moved_to = repaired["corrupt"][0]["moved_to"].as_str().unwrap().to_string();
    assert!(moved_to.contains("corrupt/sha256/"), "{moved_to}");
    assert_eq!(repaired["missing"], serde_json::json!([digest.to_string()]));
    if let Blobs::Dir(data) = &blobs {
        assert!(
            std::path::Path::new(&moved_to).starts_with(data.join("corrupt")),
            "{moved_to}"
        );
        assert_eq!(std::fs::read(&moved_to).unwrap(), b"the application, after the disk");
    }
    let run = server.tug(w, &["fsck"]);
    run.fails();
    assert!(run.stdout.contains(&format!("MISSING {digest}")), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("needed by app.bin of build {build}")),
        "{}",
        run.stdout
    );

    // A file that is not the build's artifact is refused by the sealed build.
    let err = server
        .tug(w, &["push", &build, "other.bin", "--name", "app.bin"])
        .fails()
        .to_string();
    assert!(err.contains("can no longer change"), "{err}");

    let pushed = server.tug(w, &["push", &build, "app.bin", "--output", "json"]).json();
    assert_eq!(
        (&pushed["uploaded_blobs"], &pushed["sealed_build"]),
        (&serde_json::json!(1), &serde_json::json!(true))
    );
    let clean = server.tug(w, &["fsck", "--output", "json"]).json();
    assert_eq!(
        (&clean["corrupt"], &clean["missing"]),
        (&serde_json::json!([]), &serde_json::json!([]))
    );
    let out = tempfile::tempdir().unwrap();
    server.tug(out.path(), &["pull", &build]).ok();
    assert_eq!(std::fs::read(out.path().join("app.bin")).unwrap(), app);
}

/// The JSON a failing command printed on stdout.
fn json_of(run: &crate::support::Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_blob_is_repaired_by_fsck_repair_and_a_push_on_sqlite_and_files() {
    let server = TestServer::start().await;
    let blobs = Blobs::Dir(server.data_dir());
    a_corrupt_blob_is_repaired_by_fsck_repair_and_a_push(server, blobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_blob_is_repaired_by_fsck_repair_and_a_push_on_postgres_and_s3() {
    let s3 = tug_testkit::s3_env();
    let backend = Backend::Shared {
        database: tug_testkit::postgres_database().await,
        s3: s3.clone(),
    };
    let server = TestServer::start_with(backend, &[]).await;
    a_corrupt_blob_is_repaired_by_fsck_repair_and_a_push(server, Blobs::S3(s3)).await;
}
