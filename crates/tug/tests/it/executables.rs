//! A program pushed with its executable bit comes out executable: in the
//! build and its manifest, from `tug pull`, and in the agent's release,
//! where `--exec ./web-server` used to loop on "Permission denied".

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::{eventually, Backend, TestServer};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `dist/` as CI leaves it, pushed into a sealed build of `web`: a server
/// program, a helper only its owner may run, and plain files (one setuid,
/// whose extra bits are not carried).
fn push_dist(server: &TestServer, w: &Path, version: &str) -> String {
    let files = [
        (
            "web-server",
            "#!/bin/sh\necho up > \"$TUG_OUT/running\"\nexec sleep 600\n",
            0o755,
        ),
        ("bin/helper", "#!/bin/sh\necho helped\n", 0o700),
        ("config.txt", "port = 8080\n", 0o644),
        ("odd", "setuid, but not a program\n", 0o4644),
    ];
    crate::agent_reports::push(server, w, version, &files)
}

async fn executables_keep_their_mode_from_push_to_pull(server: TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "web"]).ok();
    let build = push_dist(&server, w, "1.0.0");

    let shown = server.tug(w, &["build", "show", &build, "--output", "json"]).json();
    let executable = |name: &str| {
        let artifacts = shown["artifacts"].as_array().unwrap();
        let a = artifacts.iter().find(|a| a["name"] == name).unwrap();
        a.get("executable").cloned().unwrap_or(serde_json::json!(false))
    };
    assert_eq!(executable("web-server"), true);
    assert_eq!(executable("bin/helper"), true);
    assert_eq!(executable("config.txt"), false);
    assert_eq!(executable("odd"), false);
    let manifest = String::from_utf8(server.client().manifest(&build).await.unwrap()).unwrap();
    assert_eq!(manifest.matches(r#""executable":true"#).count(), 2, "{manifest}");
    assert!(!manifest.contains(r#""executable":false"#), "{manifest}");

    let out = tempfile::tempdir().unwrap();
    server.tug(out.path(), &["pull", &build]).ok();
    assert_eq!(mode(&out.path().join("web-server")), 0o755);
    assert_eq!(mode(&out.path().join("bin/helper")), 0o755);
    assert_eq!(mode(&out.path().join("config.txt")), 0o644);
    assert_eq!(mode(&out.path().join("odd")), 0o644, "no setuid bit is carried");
    // A file already there with the right bytes gets the right mode too.
    std::fs::set_permissions(out.path().join("web-server"), std::fs::Permissions::from_mode(0o644)).unwrap();
    server.tug(out.path(), &["pull", &build]).ok();
    assert_eq!(mode(&out.path().join("web-server")), 0o755);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executables_keep_their_mode_from_push_to_pull_on_sqlite() {
    executables_keep_their_mode_from_push_to_pull(TestServer::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executables_keep_their_mode_from_push_to_pull_on_postgres_and_s3() {
    let server = TestServer::start_with(Backend::postgres_s3().await, &[]).await;
    executables_keep_their_mode_from_push_to_pull(server).await;
}

/// The README's agent: `--exec ./web-server` of a build pushed from a
/// directory, without `--kind binary`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_a_program_pushed_without_a_kind() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let token = crate::agent_reports::web_prod(&server, w);
    let build = push_dist(&server, w, "1.0.0");
    server
        .tug(w, &["release", "web", "--env", "prod", "--build", &build])
        .ok();

    let out = w.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let dir = w.join("agent");
    let health = format!("test -f {}", out.join("running").display());
    let _agent =
        crate::agent_reports::start_agent(&server, &token, w, &["--exec", "./web-server", "--health-cmd", &health]);
    let log = || std::fs::read_to_string(w.join("agent.log")).unwrap_or_default();
    eventually(60, || {
        let fleet = server.tug(w, &["agents", "--output", "json"]).json();
        (fleet[0]["state"] == "healthy" && fleet[0]["build"] == build.as_str()).then_some(())
    });
    assert!(!log().contains("Permission denied"), "{}", log());
    assert_eq!(mode(&dir.join("current/web-server")), 0o755);
    assert_eq!(mode(&dir.join("current/bin/helper")), 0o755);
    assert_eq!(mode(&dir.join("current/config.txt")), 0o644);
}
