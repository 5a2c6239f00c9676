//! Who may see and do what, through the real server and CLI: embargoed
//! builds (hidden from everyone but admins, approvers, their creating token
//! and the agents of the private environment they run in; shown as "an
//! embargoed build" in every view of an environment), visibility tied to
//! the token's id rather than its name, service scopes that bind every
//! role, revoked tokens that end open event streams and held long-polls,
//! and the last admin token under two admins revoking each other.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{eventually, write_files, Backend, KillOnDrop, TestServer, TUG};

const API: &str = r#"
service = "api"

[[environments]]
name = "dev"

[[environments]]
name = "sec"
private = true
approvals = 1
"#;

const WEB: &str = r#"
service = "web"

[[environments]]
name = "dev"

[[environments]]
name = "prod"
upstream = "dev"
"#;

/// Creates a token as the admin; returns its secret.
fn token(server: &TestServer, name: &str, role: &str, scope: &[&str]) -> String {
    let w = tempfile::tempdir().unwrap();
    let mut args = vec!["token", "create", "--name", name, "--role", role, "--output", "json"];
    args.extend_from_slice(scope);
    let t = server.tug(w.path(), &args).json();
    t["secret"].as_str().unwrap().to_string()
}

fn apply(server: &TestServer, pipeline: &str) {
    let w = tempfile::tempdir().unwrap();
    std::fs::write(w.path().join("p.toml"), pipeline).unwrap();
    server.tug(w.path(), &["pipeline", "apply", "-f", "p.toml"]).ok();
}

/// One request with `token`: the status and, unless it is an event
/// stream, the body.
pub(crate) async fn call(
    server: &TestServer,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", server.url))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let stream = res
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    if stream {
        return (status, String::new());
    }
    (status, res.text().await.unwrap())
}

async fn get(server: &TestServer, token: &str, path: &str) -> (u16, String) {
    call(server, token, Method::GET, path, None).await
}

/// Every event `token` may see from the first on, up to the first
/// `pipeline.applied` of `web` (the test's last change), as JSON lines.
async fn events_until_marker(server: &TestServer, token: &str) -> Vec<tug_api::Event> {
    let client = server.client_with(token);
    let stream = client
        .events(&tug_api::EventQuery {
            service: None,
            since: Some(0),
        })
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut seen = Vec::new();
    let read = async {
        while let Some(e) = stream.next().await {
            let e = e.unwrap();
            let marker = e.kind() == "pipeline.applied" && e.service.as_ref().is_some_and(|s| s.as_str() == "web");
            seen.push(e);
            if marker {
                return;
            }
        }
        panic!("the event stream ended before the last change");
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the last change reached the stream within 30s");
    seen
}

/// Pushes `fix.bin` (in `w`) as a sealed embargoed build of `api` with
/// `token` and the build metadata in `meta`; returns the push's JSON.
fn push_embargoed(server: &TestServer, token: &str, w: &std::path::Path, meta: &[&str]) -> Value {
    let mut args = vec!["push", "--service", "api", "--embargo", "--seal", "--output", "json"];
    args.extend_from_slice(meta);
    args.push("fix.bin");
    server.tug_as(token, w, &args).json()
}

/// What must not reach a reader the build is embargoed from.
struct Secrets(Vec<String>);

impl Secrets {
    #[track_caller]
    fn absent(&self, what: &str, text: &str) {
        for s in &self.0 {
            assert!(!text.contains(s.as_str()), "{what} shows {s}:\n{text}");
        }
    }
}

const EMBARGOED: &str = "an embargoed build";

async fn embargoed_builds_leak_to_no_reader(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    server.tug(w, &["service", "create", "web"]).ok();
    apply(&server, API);
    let ci = token(&server, "ci-api", "ci", &["--service", "api"]);
    let viewer = token(&server, "eve", "viewer", &[]);
    let deployer = token(&server, "dan", "deployer", &[]);
    let ci_web = token(&server, "ci-web", "ci", &["--service", "web"]);
    let approver = token(&server, "alice", "approver", &[]);
    let agent_sec = token(&server, "fleet-sec", "agent", &["--service", "api", "--env", "sec"]);
    let agent = token(&server, "fleet", "agent", &[]);

    // A plain build runs in dev.
    write_files(w, &[("plain.bin", b"plain api"), ("fix.bin", b"the security fix")]);
    let plain = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--version",
                "1.0.0",
                "--branch",
                "master",
                "--seal",
                "plain.bin",
                "--output",
                "json",
            ],
        )
        .json();
    let plain = plain["build"].as_str().unwrap().to_string();
    server
        .tug(w, &["release", "api", "--env", "dev", "--build", &plain])
        .ok();

    // CI pushes and seals the security fix under embargo; an admin
    // releases it into the private sec, and an approver lets it in.
    let commit = "5ec0ffee".repeat(5);
    let meta = [
        "--version",
        "7.31.337",
        "--branch",
        "hotfix-31337",
        "--commit",
        &commit,
        "--message",
        "fix CVE-2024-31337",
    ];
    let out = push_embargoed(&server, &ci, w, &meta);
    let fix = out["build"].as_str().unwrap().to_string();
    let manifest = out["sealed"]["manifest_digest"].as_str().unwrap().to_string();
    let blob = tug_core::Digest::of(b"the security fix");
    server
        .tug(
            w,
            &[
                "release",
                "api",
                "--env",
                "sec",
                "--build",
                &fix,
                "--reason",
                "CVE-2024-31337 hotfix",
            ],
        )
        .ok();
    server
        .tug_as(&approver, w, &["approve", "api", "--env", "sec", "--build", &fix])
        .ok();
    apply(&server, WEB);
    let secrets = Secrets(vec![
        fix.clone(),
        commit.clone(),
        "31337".into(),
        manifest.trim_start_matches("sha256:").into(),
        blob.hex(),
    ]);

    let channel = "/v1/channels/api/sec?platform=linux/amd64";
    let views = [
        "/v1/services/api/status",
        "/v1/services/api/environments/sec/history",
        "/v1/services/api/diff?from=sec&to=dev",
        "/v1/services/api/rollout?env=sec",
        "/v1/agents",
        channel,
    ];
    // A viewer, a deployer and a ci token of another service learn
    // nothing of it: not through a view, an event, the build or its blob.
    for (who, reader) in [("viewer", &viewer), ("deployer", &deployer), ("ci-web", &ci_web)] {
        for path in views {
            let (status, body) = get(&server, reader, path).await;
            secrets.absent(&format!("{who} {path} ({status})"), &body);
            if who == "ci-web" && path != "/v1/agents" {
                assert_eq!(status, 403, "{who} {path}: {body}");
                assert!(body.contains("out_of_scope"), "{body}");
            } else {
                assert_eq!(status, 200, "{who} {path}: {body}");
            }
        }
        for path in [
            format!("/v1/builds/{fix}"),
            format!("/v1/builds/{fix}/manifest"),
            format!("/v1/builds/{manifest}"),
        ] {
            let (status, body) = get(&server, reader, &path).await;
            assert_eq!(status, 404, "{who} {path}: {body}");
            assert!(body.contains("build_not_found"), "{body}");
        }
        for method in [Method::GET, Method::HEAD] {
            let (status, _) = call(&server, reader, method.clone(), &format!("/v1/blobs/{blob}"), None).await;
            assert_eq!(status, 404, "{who} {method} of the fix's blob");
        }
        let events = events_until_marker(&server, reader).await;
        secrets.absent(&format!("{who}'s events"), &serde_json::to_string(&events).unwrap());
        if who == "ci-web" {
            assert!(events.iter().all(|e| e.service.as_ref().unwrap().as_str() == "web"));
        } else {
            // The deployment into sec is there, as "an embargoed build".
            assert!(
                events.iter().any(|e| e.kind() == "deployment"
                    && e.embargoed
                    && e.change.environment().is_some_and(|env| env.as_str() == "sec")),
                "{events:#?}"
            );
            // Events about the build itself are left out.
            assert!(!events.iter().any(|e| e.kind().starts_with("approval.")), "{events:#?}");
            assert!(
                events
                    .iter()
                    .filter(|e| e.kind().starts_with("build."))
                    .all(|e| e.change.build().is_some_and(|b| b.id.as_str() == plain.as_str())),
                "{events:#?}"
            );
        }
        let count = events.len().to_string();
        let watched = server.tug_as(reader, w, &["watch", "--since", "0", "--count", &count]);
        secrets.absent(&format!("{who} tug watch"), watched.ok());
        if who != "ci-web" {
            assert!(watched.stdout.contains(EMBARGOED), "{}", watched.stdout);
            for args in [
                vec!["status", "api"],
                vec!["history", "api", "--env", "sec"],
                vec!["diff", "api", "--from", "sec", "--to", "dev"],
            ] {
                let run = server.tug_as(reader, w, &args);
                secrets.absent(&format!("{who} tug {args:?}"), run.ok());
                assert!(run.stdout.contains(EMBARGOED), "tug {args:?}: {}", run.stdout);
            }
        } else {
            let err = server.tug_as(reader, w, &["status", "api"]).fails().to_string();
            assert!(err.contains("out_of_scope"), "{err}");
        }
    }
    let listed = server
        .tug_as(&viewer, w, &["build", "list", "--service", "api", "--output", "json"])
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "only the plain build: {listed}");

    // An agent token not scoped to sec is told that sec runs an embargoed
    // build, and gets none of its bytes.
    let (status, body) = get(&server, &agent, channel).await;
    assert_eq!(status, 200);
    secrets.absent("an unscoped agent's channel", &body);
    let answer: tug_api::Channel = serde_json::from_str(&body).unwrap();
    assert!(answer.embargoed && answer.build.is_none() && answer.artifacts.is_empty());
    assert_eq!(get(&server, &agent, &format!("/v1/blobs/{blob}")).await.0, 404);

    // Admins, approvers, the token that created it and the agents of sec
    // see all of it.
    for (who, reader) in [
        ("admin", &server.admin_token),
        ("approver", &approver),
        ("creator", &ci),
    ] {
        let (status, body) = get(&server, reader, &format!("/v1/builds/{fix}")).await;
        assert_eq!(status, 200, "{who}: {body}");
        let (_, status_body) = get(&server, reader, "/v1/services/api/status").await;
        assert!(status_body.contains(&fix), "{who}: {status_body}");
        let run = server.tug_as(reader, w, &["status", "api"]);
        assert!(run.ok().contains("7.31.337"), "{who}: {}", run.stdout);
    }
    let (status, body) = get(&server, &agent_sec, channel).await;
    assert_eq!(status, 200);
    let answer: tug_api::Channel = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.build.as_ref().map(|b| b.to_string()), Some(fix.clone()));
    assert_eq!(answer.artifacts[0].digest, blob);
    assert_eq!(get(&server, &agent_sec, &format!("/v1/blobs/{blob}")).await.0, 200);
    // …and only sec: dev is not theirs to follow.
    let (status, body) = get(&server, &agent_sec, "/v1/channels/api/dev?platform=linux/amd64").await;
    assert_eq!(status, 403, "{body}");

    // The plain build goes back into sec: its history says what it
    // replaced was an embargoed build.
    server
        .tug(w, &["release", "api", "--env", "sec", "--build", &plain])
        .ok();
    server
        .tug_as(&approver, w, &["approve", "api", "--env", "sec", "--build", &plain])
        .ok();
    let history = server
        .tug_as(&viewer, w, &["history", "api", "--env", "sec", "--output", "json"])
        .json();
    secrets.absent("history after the plain build", &history.to_string());
    assert_eq!(history[0]["build"], plain.as_str());
    assert_eq!(history[0]["replaced_embargoed"], true);
    assert_eq!(history[1]["embargoed"], true);
    let run = server.tug_as(&viewer, w, &["history", "api", "--env", "sec"]);
    secrets.absent("tug history", run.ok());
    assert!(run.stdout.contains(EMBARGOED), "{}", run.stdout);

    // Lifting the embargo shows everything, its past events included.
    server.tug(w, &["build", "unembargo", &fix]).ok();
    assert_eq!(get(&server, &viewer, &format!("/v1/builds/{fix}")).await.0, 200);
    assert_eq!(get(&server, &viewer, &format!("/v1/blobs/{blob}")).await.0, 200);
    let history = server
        .tug_as(&viewer, w, &["history", "api", "--env", "sec", "--output", "json"])
        .json();
    assert_eq!(history[1]["build"], fix.as_str());
    let events = events_until_marker(&server, &viewer).await;
    for kind in [
        "build.created",
        "build.sealed",
        "approval.requested",
        "approval.approved",
    ] {
        assert!(
            events
                .iter()
                .any(|e| e.kind() == kind && e.change.build().is_some_and(|b| b.id.as_str() == fix.as_str())),
            "{kind} of the fix: {events:#?}"
        );
    }
}

on_both_backends!(embargoed_builds_leak_to_no_reader);

async fn embargo_follows_the_token_not_its_name(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let ci = token(&server, "ci-sec", "ci", &[]);
    write_files(w, &[("fix.bin", b"fix")]);
    let out = push_embargoed(&server, &ci, w, &["--version", "2.0.1"]);
    let fix = out["build"].as_str().unwrap().to_string();
    assert_eq!(get(&server, &ci, &format!("/v1/builds/{fix}")).await.0, 200);

    server.tug(w, &["token", "revoke", "ci-sec"]).ok();
    let reused = token(&server, "ci-sec", "viewer", &[]);
    for path in [format!("/v1/builds/{fix}"), format!("/v1/builds/{fix}/manifest")] {
        let (status, body) = get(&server, &reused, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, body) = get(&server, &ci, &format!("/v1/builds/{fix}")).await;
    assert_eq!(status, 401, "{body}");
    // The name now means the new token: revoking it again revokes that
    // one; once more, it says so.
    server.tug(w, &["token", "revoke", "ci-sec"]).ok();
    let err = server.tug(w, &["token", "revoke", "ci-sec"]).fails().to_string();
    assert!(
        err.contains("token_already_revoked") && err.contains("HTTP 409"),
        "{err}"
    );
}

on_both_backends!(embargo_follows_the_token_not_its_name);

// Teleport's updaters ask without a token: a public environment never
// names an embargoed build, even one it runs because it was made public
// after the build went in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_updater_endpoints_never_name_an_embargoed_build() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let private = API.replace("approvals = 1", "");
    apply(&server, &private);
    write_files(w, &[("fix.bin", b"fix")]);
    let out = push_embargoed(&server, &server.admin_token, w, &["--version", "7.31.337"]);
    let fix = out["build"].as_str().unwrap().to_string();
    server.tug(w, &["build", "mark-critical", &fix]).ok();
    server.tug(w, &["release", "api", "--env", "sec", "--build", &fix]).ok();
    let public = |what: &str| {
        let url = format!("{}/v1/webapi/automaticupgrades/channel/api/sec/{what}", server.url);
        async move {
            let res = reqwest::get(url).await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    assert_eq!(public("version").await.0, 404, "a private environment is not public");
    apply(&server, &private.replace("private = true", ""));
    assert_eq!(public("version").await, (200, "none".to_string()));
    assert_eq!(public("critical").await, (200, "no".to_string()));
    server.tug(w, &["build", "unembargo", &fix]).ok();
    assert_eq!(public("version").await, (200, "v7.31.337".to_string()));
    assert_eq!(public("critical").await, (200, "yes".to_string()));
}

/// A sealed build of `service` with one artifact; returns its id and its
/// blob's digest.
async fn shipped(server: &TestServer, service: &str, version: &str) -> (String, tug_core::Digest) {
    let body = format!("{service} {version}").into_bytes();
    let id = crate::agents::sealed(server, service, version, &[("app", None, body.clone())]).await;
    let w = tempfile::tempdir().unwrap();
    server
        .tug(w.path(), &["release", service, "--env", "dev", "--build", &id])
        .ok();
    (id, tug_core::Digest::of(&body))
}

fn report(service: &str, env: &str, agent: &str) -> Value {
    json!({
        "agent_id": agent, "hostname": agent, "platform": "linux/amd64", "agent_version": "1.0.0",
        "service": service, "environment": env, "build": null, "state": "idle",
    })
}

/// One request of a matrix: who, with which token, what, and the status
/// and error code expected.
type Row<'a> = (&'a str, &'a str, Method, String, Option<Value>, u16, &'a str);

async fn service_scope_binds_every_role(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    for s in ["api", "web"] {
        server.tug(w, &["service", "create", s]).ok();
    }
    apply(&server, &API.replace("approvals = 1", "approvals = 0"));
    let (api_build, api_blob) = shipped(&server, "api", "1.0.0").await;
    // Web's pipeline comes after api's changes: a reader of web's events
    // reads up to it, and none of api's may be among them.
    apply(&server, WEB);
    let (web_build, _) = shipped(&server, "web", "1.0.0").await;
    let admin = server.admin_token.clone();
    for (service, id) in [("api", "agent-api"), ("web", "agent-web")] {
        let (status, body) = call(
            &server,
            &admin,
            Method::POST,
            "/v1/agents/report",
            Some(report(service, "dev", id)),
        )
        .await;
        assert_eq!(status, 204, "{body}");
    }
    let scoped = ["--service", "web"];
    let deployer = token(&server, "deployer-web", "deployer", &scoped);
    let approver = token(&server, "approver-web", "approver", &scoped);
    let viewer = token(&server, "viewer-web", "viewer", &scoped);
    let ci = token(&server, "ci-web", "ci", &scoped);
    let agent = token(&server, "agent-web", "agent", &scoped);
    let agent_dev = token(&server, "agent-web-dev", "agent", &["--service", "web", "--env", "dev"]);

    let env = json!({"environment": "dev"});
    let decide = json!({"environment": "dev", "build": api_build});
    let writes: Vec<(&str, Method, String, Option<Value>)> = vec![
        (
            "release",
            Method::POST,
            "/v1/services/api/release".into(),
            Some(json!({"environment": "dev", "build": api_build})),
        ),
        (
            "promote",
            Method::POST,
            "/v1/services/api/promote".into(),
            Some(json!({"to": "dev"})),
        ),
        (
            "rollback",
            Method::POST,
            "/v1/services/api/rollback".into(),
            Some(env.clone()),
        ),
        (
            "resume",
            Method::POST,
            "/v1/services/api/environments/dev/resume".into(),
            None,
        ),
        (
            "halt",
            Method::POST,
            "/v1/services/api/rollout/halt".into(),
            Some(json!({"environment": "dev", "reason": "x"})),
        ),
        (
            "resume rollout",
            Method::POST,
            "/v1/services/api/rollout/resume".into(),
            Some(env.clone()),
        ),
    ];
    let reads: Vec<String> = vec![
        "/v1/services/api/status".into(),
        "/v1/services/api/environments/dev/history".into(),
        "/v1/services/api/diff?from=dev&to=dev".into(),
        "/v1/services/api/pipeline".into(),
        "/v1/services/api/pipeline/history".into(),
        "/v1/services/api/next-version?bump=patch".into(),
        "/v1/services/api/rollout?env=dev".into(),
        "/v1/builds?service=api".into(),
        "/v1/events?service=api".into(),
        "/v1/agents?service=api".into(),
        "/v1/channels/api/dev?platform=linux/amd64".into(),
    ];
    let hidden: Vec<String> = vec![
        format!("/v1/builds/{api_build}"),
        format!("/v1/builds/{api_build}/manifest"),
        format!("/v1/blobs/{api_blob}"),
    ];

    // Every role scoped to web: the other service is out of scope (403)
    // where a request names it, and its builds and blobs do not exist (404).
    let mut rows: Vec<Row> = Vec::new();
    for (who, t) in [
        ("deployer", &deployer),
        ("approver", &approver),
        ("viewer", &viewer),
        ("ci", &ci),
    ] {
        for path in &reads {
            rows.push((who, t, Method::GET, path.clone(), None, 403, "out_of_scope"));
        }
        for path in &hidden {
            let code = if path.contains("blobs") {
                "blob_not_found"
            } else {
                "build_not_found"
            };
            rows.push((who, t, Method::GET, path.clone(), None, 404, code));
        }
    }
    for (_, method, path, body) in &writes {
        rows.push((
            "deployer",
            &deployer,
            method.clone(),
            path.clone(),
            body.clone(),
            403,
            "out_of_scope",
        ));
    }
    for verb in ["yank", "critical"] {
        let path = format!("/v1/builds/{api_build}/{verb}");
        let body = (verb == "yank").then(|| json!({}));
        rows.push(("deployer", &deployer, Method::POST, path, body, 404, "build_not_found"));
    }
    for verb in ["approve", "reject"] {
        let path = format!("/v1/services/api/{verb}");
        rows.push((
            "approver",
            &approver,
            Method::POST,
            path,
            Some(decide.clone()),
            403,
            "out_of_scope",
        ));
    }
    let draft = json!({"service": "api", "version": "9.0.0"});
    rows.push((
        "ci",
        &ci,
        Method::POST,
        "/v1/builds".into(),
        Some(draft),
        403,
        "out_of_scope",
    ));
    rows.push((
        "ci",
        &ci,
        Method::POST,
        format!("/v1/builds/{api_build}/seal"),
        None,
        404,
        "build_not_found",
    ));
    rows.push((
        "agent",
        &agent,
        Method::GET,
        reads[10].clone(),
        None,
        403,
        "out_of_scope",
    ));
    rows.push((
        "agent",
        &agent,
        Method::GET,
        hidden[2].clone(),
        None,
        404,
        "blob_not_found",
    ));
    let api_report = Some(report("api", "dev", "intruder"));
    rows.push((
        "agent",
        &agent,
        Method::POST,
        "/v1/agents/report".into(),
        api_report,
        403,
        "out_of_scope",
    ));
    // An agent token scoped to web's dev follows nothing else of web.
    let prod = "/v1/channels/web/prod?platform=linux/amd64".to_string();
    rows.push(("agent-dev", &agent_dev, Method::GET, prod, None, 403, "out_of_scope"));
    let prod_report = Some(report("web", "prod", "wanderer"));
    rows.push((
        "agent-dev",
        &agent_dev,
        Method::POST,
        "/v1/agents/report".into(),
        prod_report,
        403,
        "out_of_scope",
    ));

    for (who, t, method, path, body, status, code) in rows {
        let (got, text) = call(&server, t, method.clone(), &path, body).await;
        assert_eq!(got, status, "{who} {method} {path}: {text}");
        if method != Method::HEAD {
            assert!(text.contains(code), "{who} {method} {path}: {text}");
        }
    }

    // Within its scope each works, and listings show web only.
    let (status, body) = get(&server, &agent_dev, "/v1/channels/web/dev?platform=linux/amd64").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&web_build));
    let web_report = Some(report("web", "dev", "agent-web-2"));
    assert_eq!(
        call(&server, &agent_dev, Method::POST, "/v1/agents/report", web_report)
            .await
            .0,
        204
    );
    for (path, key) in [("/v1/services", "services"), ("/v1/builds", "builds")] {
        let (status, body) = get(&server, &viewer, path).await;
        assert_eq!(status, 200, "{body}");
        let listed: Value = serde_json::from_str(&body).unwrap();
        let names: Vec<&str> = listed[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.get("service").unwrap_or(&v["name"]).as_str().unwrap())
            .collect();
        assert!(
            !names.is_empty() && names.iter().all(|n| *n == "web"),
            "{path}: {names:?}"
        );
    }
    let (_, body) = get(&server, &viewer, "/v1/agents").await;
    let agents: Vec<tug_api::Agent> = serde_json::from_str(&body).unwrap();
    assert!(
        !agents.is_empty() && agents.iter().all(|a| a.report.service.as_str() == "web"),
        "{body}"
    );
    let events = events_until_marker(&server, &viewer).await;
    let services: Vec<&str> = events.iter().map(|e| e.service.as_ref().unwrap().as_str()).collect();
    // Web's creation and its pipeline.
    assert_eq!(services, ["web", "web"], "{events:#?}");

    // The CLI says the same.
    let err = server
        .tug_as(&deployer, w, &["rollback", "api", "--env", "dev"])
        .fails()
        .to_string();
    assert!(err.contains("out_of_scope") && err.contains("HTTP 403"), "{err}");
    let err = server
        .tug_as(&deployer, w, &["build", "yank", &api_build])
        .fails()
        .to_string();
    assert!(err.contains("build_not_found"), "{err}");
    let err = server
        .tug_as(&approver, w, &["approve", "api", "--env", "dev", "--build", &api_build])
        .fails()
        .to_string();
    assert!(err.contains("out_of_scope"), "{err}");
    let listed = server
        .tug_as(&viewer, w, &["service", "list", "--output", "json"])
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    server.tug_as(&deployer, w, &["promote", "web", "--to", "prod"]).ok();
}

on_both_backends!(service_scope_binds_every_role);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scopes_are_checked_when_created() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    apply(&server, API);
    for (args, says) in [
        (vec!["--role", "admin", "--service", "api"], "cannot be scoped"),
        (
            vec!["--role", "metrics", "--service", "api"],
            "a metrics token cannot be scoped to a service",
        ),
        (
            vec!["--role", "viewer", "--service", "api", "--env", "sec"],
            "only agent tokens",
        ),
        (
            vec!["--role", "agent", "--service", "api", "--env", "nowhere"],
            "environment_not_found",
        ),
    ] {
        let mut all = vec!["token", "create", "--name", "x"];
        all.extend(args);
        let err = server.tug(w, &all).fails().to_string();
        assert!(err.contains(says), "{err}");
    }
    token(&server, "fleet-sec", "agent", &["--service", "api", "--env", "sec"]);
    let listed = server.tug(w, &["token", "list"]).ok().to_string();
    let row = listed.lines().find(|l| l.contains("fleet-sec")).unwrap();
    assert!(row.contains("api") && row.contains("sec"), "{listed}");
}

/// `tug watch --since 0` as `token`, with its stdout lines on a channel.
fn watch(server: &TestServer, token: &str) -> (KillOnDrop, std::sync::mpsc::Receiver<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(TUG)
        .args(["watch", "--since", "0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("TUG_SERVER", &server.url)
        .env("TUG_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (KillOnDrop(child), rx)
}

async fn revoked_tokens_end_streams_and_long_polls(backend: Backend) {
    // The server says when it holds a long-poll, so the test revokes only
    // once it does.
    let log = [("RUST_LOG", "info,tug_server::routes::agents=debug")];
    let server = TestServer::start_in(tempfile::tempdir().unwrap(), backend.clone(), &[], &log);
    // On a shared database a second server holds the long-poll: the
    // revocation reaches it through the database, not through this
    // server's own notice.
    let second = match backend {
        Backend::Shared { .. } => Some(TestServer::start_in(tempfile::tempdir().unwrap(), backend, &[], &log)),
        Backend::Embedded => None,
    };
    let holder = second.as_ref().unwrap_or(&server);
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "web"]).ok();
    apply(&server, WEB);
    let watcher = token(&server, "watcher", "viewer", &[]);
    let follower = token(&server, "follower", "agent", &[]);

    // An open event stream, delivering: it printed the pipeline applied.
    let (mut watching, lines) = watch(&server, &watcher);
    eventually(30, || {
        lines.try_iter().any(|l| l.contains("pipeline.applied")).then_some(())
    });

    // A held long-poll: the channel's answer has not changed.
    let (_, tag) = holder
        .client_with(&follower)
        .channel(
            &tug_core::ServiceName::parse("web").unwrap(),
            &tug_core::EnvName::parse("dev").unwrap(),
            &tug_core::Platform::parse("linux/amd64").unwrap(),
            None,
            None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let url = format!("{}/v1/channels/web/dev?platform=linux/amd64&wait=60s", holder.url);
    let held = tokio::spawn({
        let follower = follower.clone();
        async move {
            let res = reqwest::Client::new()
                .get(url)
                .bearer_auth(follower)
                .header("If-None-Match", tag)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (Instant::now(), status, res.text().await.unwrap())
        }
    });

    eventually(30, || {
        holder.log().contains("holding a channel long-poll").then_some(())
    });

    // Each is timed from the start of its token's revocation.
    let follower_revoked = Instant::now();
    server.tug(w, &["token", "revoke", "follower"]).ok();
    let revoked = Instant::now();
    server.tug(w, &["token", "revoke", "watcher"]).ok();

    // Both end within 5 s of the revocation.
    let (answered, status, body) = tokio::time::timeout_at((follower_revoked + Duration::from_secs(5)).into(), held)
        .await
        .expect("the held long-poll ended within 5s of the revocation")
        .unwrap();
    eprintln!(
        "the held long-poll ended {:?} after the revocation",
        answered - follower_revoked
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token_revoked"), "{body}");
    let deadline = revoked + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = watching.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "tug watch still streams 5s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("tug watch exited {:?} after the revocation", revoked.elapsed());
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(watching.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("token_revoked"), "{stderr}");
}

on_both_backends!(revoked_tokens_end_streams_and_long_polls);

async fn two_admins_revoking_each_other_leave_one(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let mut pair = (
        ("admin".to_string(), server.admin_token.clone()),
        ("admin-0".to_string(), token(&server, "admin-0", "admin", &[])),
    );
    for round in 1..=20 {
        let ((a, a_secret), (b, b_secret)) = pair.clone();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let revoke = |by: String, target: String| {
            let (url, barrier) = (server.url.clone(), barrier.clone());
            tokio::spawn(async move {
                let req = reqwest::Client::new()
                    .delete(format!("{url}/v1/tokens/{target}"))
                    .bearer_auth(by);
                barrier.wait().await;
                let res = req.send().await.unwrap();
                (res.status().as_u16(), res.text().await.unwrap())
            })
        };
        let x = revoke(a_secret.clone(), b.clone());
        let y = revoke(b_secret.clone(), a.clone());
        let outcomes = [x.await.unwrap(), y.await.unwrap()];
        let won: Vec<usize> = (0..2).filter(|i| outcomes[*i].0 == 200).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one revocation wins: {outcomes:?}");
        let lost = &outcomes[1 - won[0]];
        // The loser was revoked by the winner, or found itself the last
        // admin: either way it is refused, and one admin is left.
        assert!(
            lost.1.contains("last_admin") || lost.1.contains("token_revoked"),
            "round {round}: {outcomes:?}"
        );
        let survivor = if won[0] == 0 { (a, a_secret) } else { (b, b_secret) };
        let listed = server
            .tug_as(&survivor.1, w, &["token", "list", "--output", "json"])
            .json();
        let admins = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["role"] == "admin" && t["revoked_at"].is_null())
            .count();
        assert_eq!(admins, 1, "round {round}");
        let name = format!("admin-{round}");
        let t = server
            .tug_as(
                &survivor.1,
                w,
                &[
                    "token", "create", "--name", &name, "--role", "admin", "--output", "json",
                ],
            )
            .json();
        pair = (survivor, (name, t["secret"].as_str().unwrap().to_string()));
    }
}

on_both_backends!(two_admins_revoking_each_other_leave_one);
