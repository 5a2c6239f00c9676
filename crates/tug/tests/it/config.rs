//! `tug server` configuration: defaults < tug.toml < TUG_* < flags, and a
//! bad file stops the server with a message naming the problem.

use std::process::{Command, Stdio};

use reqwest::Method;

use crate::support::{digest_of, Backend, TestServer, TUG};

async fn put_status(server: &TestServer, size: usize) -> u16 {
    let body = vec![3u8; size];
    let res = server
        .http(Method::PUT, &format!("/v1/blobs/{}", digest_of(&body)))
        .body(body)
        .send()
        .await
        .unwrap();
    res.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tug_toml_then_environment_then_flags() {
    // The file alone.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tug.toml"), "max_blob_size = 100\n").unwrap();
    let server = TestServer::start_in(dir, Backend::Embedded, &[], &[]);
    assert_eq!(put_status(&server, 101).await, 413);
    assert_eq!(put_status(&server, 100).await, 201);

    // The environment beats the file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tug.toml"), "max_blob_size = 100\n").unwrap();
    let server = TestServer::start_in(dir, Backend::Embedded, &[], &[("TUG_MAX_BLOB_SIZE", "200")]);
    assert_eq!(put_status(&server, 150).await, 201);
    assert_eq!(put_status(&server, 201).await, 413);

    // A flag beats both.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tug.toml"), "max_blob_size = 100\n").unwrap();
    let server = TestServer::start_in(
        dir,
        Backend::Embedded,
        &["--max-blob-size", "300"],
        &[("TUG_MAX_BLOB_SIZE", "200")],
    );
    assert_eq!(put_status(&server, 250).await, 201);
    assert_eq!(put_status(&server, 301).await, 413);
}

#[test]
fn a_bad_configuration_stops_the_server_with_a_clear_message() {
    for (file, env, expected) in [
        ("lisen = \"127.0.0.1:1\"\n", None, "unknown field `lisen`"),
        ("max_blob_size = \"big\"\n", None, "max_blob_size"),
        ("", Some(("TUG_LISTEN", "not-an-address")), "TUG_LISTEN"),
        ("", Some(("TUG_DATABASE", "mysql://x")), "unsupported database URL"),
        (
            "",
            Some(("TUG_BLOB_STORE", "s3://?endpoint=x")),
            "cannot open blob store",
        ),
        // Values that would overflow time arithmetic are refused with the
        // key, its variable and the range.
        (
            "approval_timeout_secs = 8639999913600\n",
            None,
            "approval_timeout_secs = 8639999913600 is out of range: use 1 to 31536000 seconds (a year)",
        ),
        (
            "",
            Some(("TUG_GC_GRACE_SECS", "9000000000000")),
            "gc_grace_secs = 9000000000000 is out of range",
        ),
        (
            "header_read_timeout_secs = 0\n",
            None,
            "header_read_timeout_secs = 0 is out of range: use 5 to 300 seconds (tug.toml key header_read_timeout_secs, environment variable TUG_HEADER_READ_TIMEOUT_SECS)",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tug.toml"), file).unwrap();
        let mut cmd = Command::new(TUG);
        cmd.args(["server", "--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env_clear();
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file:?} {env:?} started");
        assert!(stderr.contains(expected), "{file:?} {env:?}: {stderr}");
    }
}
