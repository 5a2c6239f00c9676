//! What `tug agent` tells about itself, as an operator reads it in
//! `tug agents` and in the agent's log: how the supervised process exited
//! (code or signal, and the end of its stderr) instead of only "health
//! check timed out"; `waiting (why)` instead of `idle` while a maintenance
//! window or a rollout holds it back; exits written as words, not
//! `ExitStatus(unix_wait_status(32256))`; and no colour codes in a log
//! file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use crate::support::{eventually, Backend, KillOnDrop, TestServer};

/// Starts `tug agent` for `web`/`prod` in `w/agent`, logging to
/// `w/agent.log`, with `args` after the common ones; what it supervises
/// finds `w/out` in `TUG_OUT`.
pub(crate) fn start_agent(server: &TestServer, token: &str, w: &Path, args: &[&str]) -> KillOnDrop {
    KillOnDrop(
        std::process::Command::new(crate::support::TUG)
            .args(["agent", "--service", "web", "--env", "prod", "--dir"])
            .arg(w.join("agent"))
            .args(["--heartbeat", "1"])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("TUG_SERVER", &server.url)
            .env("TUG_TOKEN", token)
            .env("TUG_OUT", w.join("out"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(w.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// The service `web` with one environment, `prod`; returns an agent token.
pub(crate) fn web_prod(server: &TestServer, w: &Path) -> String {
    crate::agents::setup_service(
        server,
        w,
        "web",
        "service = \"web\"\n[[environments]]\nname = \"prod\"\n",
    )
}

fn log(w: &Path) -> String {
    std::fs::read_to_string(w.join("agent.log")).unwrap_or_default()
}

/// The one agent of `web` as `tug agents --output json` shows it.
fn the_agent(server: &TestServer, w: &Path) -> Option<Value> {
    let fleet = server
        .tug(w, &["agents", "--service", "web", "--output", "json"])
        .json();
    fleet.as_array().unwrap().first().cloned()
}

/// Pushes a directory of `files` (name, contents, mode) as a sealed build
/// of `web`.
pub(crate) fn push(server: &TestServer, w: &Path, version: &str, files: &[(&str, &str, u32)]) -> String {
    let dir = w.join(format!("dist-{version}"));
    for (name, body, mode) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let args = format!(
        "push --service web --version {version} --seal {} --output json",
        dir.display()
    );
    let out = server.tug(w, &args.split(' ').collect::<Vec<_>>()).json();
    out["build"].as_str().unwrap().to_string()
}

/// A program pushed without its executable bit cannot start: the agent
/// used to report only that its health check timed out while the process
/// looped on "Permission denied" in a log no one read.
async fn an_agent_reports_how_its_process_exited(server: TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let token = web_prod(&server, w);
    let broken = push(
        &server,
        w,
        "1.0.0",
        &[("web-server", "#!/bin/sh\nexec sleep 600\n", 0o644)],
    );
    server
        .tug(w, &["release", "web", "--env", "prod", "--build", &broken])
        .ok();
    let _agent = start_agent(
        &server,
        &token,
        w,
        &[
            "--exec",
            "./web-server",
            "--health-cmd",
            "false",
            "--health-timeout",
            "2",
        ],
    );

    let agent = eventually(60, || {
        the_agent(&server, w).filter(|a| a["state"] == "failed" && !a["exit"].is_null())
    });
    let exit = &agent["exit"];
    assert_eq!(exit["code"], 126, "{agent:#}");
    assert_eq!(exit["build"], broken.as_str());
    assert!(
        exit["stderr"].as_str().unwrap().contains("Permission denied"),
        "{agent:#}"
    );
    let error = agent["error"].as_str().unwrap();
    assert!(error.contains("--exec exited with code 126"), "{error}");
    assert!(error.contains("Permission denied"), "{error}");

    let table = server.tug(w, &["agents", "--service", "web"]).ok().to_string();
    assert!(table.contains("exited with code 126"), "{table}");

    let log = log(w);
    assert!(log.contains("supervised process exited with code 126"), "{log}");
    assert!(
        !log.contains("unix_wait_status") && !log.contains("ExitStatus("),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "no colour codes in a log file: {log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reports_how_its_process_exited_on_sqlite() {
    an_agent_reports_how_its_process_exited(TestServer::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reports_how_its_process_exited_on_postgres() {
    an_agent_reports_how_its_process_exited(TestServer::start_with(Backend::postgres_s3().await, &[]).await).await;
}

/// An unknown state is refused, not stored as `idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_agent_state_is_refused() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let token = web_prod(&server, w.path());
    let report = |state: &str| {
        serde_json::json!({
            "agent_id": "a1", "hostname": "h", "platform": "linux/amd64", "agent_version": "0.1.0",
            "service": "web", "environment": "prod", "build": null, "state": state,
        })
    };
    for (state, status) in [("sleeping", 400), ("Waiting", 400), ("", 400), ("waiting", 204)] {
        let res = reqwest::Client::new()
            .post(format!("{}/v1/agents/report", server.url))
            .bearer_auth(&token)
            .json(&report(state))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{state:?}");
        if status == 400 {
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["code"], "invalid_request", "{body}");
            assert!(body["message"].as_str().unwrap().contains("unknown variant"), "{body}");
        }
    }
    let agent = the_agent(&server, w.path()).unwrap();
    assert_eq!(agent["state"], "waiting");
}

const HELD: &str = r#"
service = "web"

[[environments]]
name = "prod"
maintenance = [{ from = "2099-01-01T00:00:00Z", until = "2099-01-02T00:00:00Z" }]
"#;

/// Outside every maintenance window an agent waits: `tug agents` used to
/// show it `idle` and its log said nothing.
async fn an_agent_held_by_a_maintenance_window_is_waiting(server: TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let token = crate::agents::setup_service(&server, w, "web", HELD);
    let out = w.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let build = push(
        &server,
        w,
        "1.0.0",
        &[(
            "web-server",
            "#!/bin/sh\necho up > \"$TUG_OUT/running\"\nexec sleep 600\n",
            0o755,
        )],
    );
    server
        .tug(w, &["release", "web", "--env", "prod", "--build", &build])
        .ok();
    let health = format!("test -f {}", out.join("running").display());
    let _agent = start_agent(&server, &token, w, &["--exec", "./web-server", "--health-cmd", &health]);

    let waiting = eventually(60, || the_agent(&server, w).filter(|a| a["state"] == "waiting"));
    let reason = waiting["waiting"].as_str().unwrap().to_string();
    assert!(reason.contains("maintenance"), "{waiting:#}");
    assert!(waiting["build"].is_null(), "nothing installed yet: {waiting:#}");
    let table = server.tug(w, &["agents", "--service", "web"]).ok().to_string();
    assert!(
        table.contains(&format!("waiting ({}", &reason[..20.min(reason.len())])),
        "{table}"
    );

    // Several heartbeats later the reason is still logged once.
    let seen = waiting["last_seen"].clone();
    eventually(30, || {
        let a = the_agent(&server, w)?;
        (a["last_seen"] != seen && a["state"] == "waiting").then_some(())
    });
    let log = log(w);
    assert_eq!(log.matches("waiting before installing").count(), 1, "{log}");
    assert!(log.contains(&reason), "{log}");

    // A critical build goes in at once; the agent stops waiting.
    server.tug(w, &["build", "mark-critical", &build]).ok();
    let healthy = eventually(60, || the_agent(&server, w).filter(|a| a["state"] == "healthy"));
    assert_eq!(healthy["build"], build.as_str());
    assert!(healthy.get("waiting").is_none_or(Value::is_null), "{healthy:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_held_by_a_maintenance_window_is_waiting_on_sqlite() {
    an_agent_held_by_a_maintenance_window_is_waiting(TestServer::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_held_by_a_maintenance_window_is_waiting_on_postgres() {
    an_agent_held_by_a_maintenance_window_is_waiting(TestServer::start_with(Backend::postgres_s3().await, &[]).await)
        .await;
}
