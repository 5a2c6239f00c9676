//! `/metrics` through the real server after a realistic flow (pushes,
//! releases, a promotion that waits for an approval, downloads, agents,
//! an embargoed build in a private environment): `promtool check metrics`
//! passes on the scrape, the counters move with what happens, routes are
//! labelled by their templates, an embargoed build is never named, and
//! only a metrics or admin token reads it. And the release line each
//! deployment writes into the server's log.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use reqwest::Method;

use crate::support::{Backend, TestServer};

const PIPELINE: &str = r#"service = "web"

[[environments]]
name = "dev"

[[environments]]
name = "prod"
upstream = "dev"
approvals = 1

[[environments]]
name = "sec"
private = true
"#;

fn token(server: &TestServer, w: &Path, name: &str, role: &str) -> String {
    server
        .tug(
            w,
            &["token", "create", "--name", name, "--role", role, "--output", "json"],
        )
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn scrape(server: &TestServer, token: &str) -> (u16, String, String) {
    let res = reqwest::Client::new()
        .get(format!("{}/metrics", server.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, res.text().await.unwrap())
}

/// The value of the sample whose name and labels start `series` (labels in
/// the order the server writes them), or 0 when there is none.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

/// Runs `promtool check metrics` on a scrape, as Prometheus's own linter.
fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus; scripts/test installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn metrics_after_a_realistic_flow(backend: Backend) {
    // With the event sink, a durable consumer whose lag the scrape shows.
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    let server = TestServer::start_in(dir, backend, &[], &[("TUG_EVENT_SINK", sink.to_str().unwrap())]);
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "web"]).ok();
    std::fs::write(w.join("p.toml"), PIPELINE).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "p.toml"]).ok();
    let scraper = token(&server, w, "scraper", "metrics");
    let viewer = token(&server, w, "eve", "viewer");
    let approver = token(&server, w, "alice", "approver");
    // An agent of the private environment, which may run the embargoed
    // build.
    let agent = server
        .tug(
            w,
            &[
                "token",
                "create",
                "--name",
                "agent-1",
                "--role",
                "agent",
                "--service",
                "web",
                "--env",
                "sec",
                "--output",
                "json",
            ],
        )
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_string();

    let body = b"web 1.0.0 binary".to_vec();
    let digest = crate::support::digest_of(&body);
    let v1 = crate::agents::sealed(&server, "web", "1.0.0", &[("app", None, body.clone())]).await;
    let (_, _, before) = scrape(&server, &scraper).await;

    // A release, a promotion that waits for alice, a download.
    server.tug(w, &["release", "web", "--env", "dev", "--build", &v1]).ok();
    server.tug(w, &["promote", "web", "--to", "prod"]).ok();
    server
        .tug_as(&approver, w, &["approve", "web", "--env", "prod", "--build", &v1])
        .ok();
    let got = server
        .http(Method::GET, &format!("/v1/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), body.as_slice());

    // An embargoed security build in the private environment, run by an
    // agent there.
    std::fs::write(w.join("fix.bin"), b"the security fix").unwrap();
    let fix = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "web",
                "--version",
                "1.0.1",
                "--embargo",
                "--seal",
                "--output",
                "json",
                "fix.bin",
            ],
        )
        .json();
    let fix = fix["build"].as_str().unwrap().to_string();
    server.tug(w, &["release", "web", "--env", "sec", "--build", &fix]).ok();
    let report = serde_json::json!({
        "agent_id": "a1", "hostname": "h1", "platform": "linux/amd64", "agent_version": "1",
        "service": "web", "environment": "sec", "build": fix, "state": "healthy",
    });
    let res = reqwest::Client::new()
        .post(format!("{}/v1/agents/report", server.url))
        .bearer_auth(&agent)
        .json(&report)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());

    // Only a metrics or admin token reads the metrics.
    let (status, content_type, text) = scrape(&server, &scraper).await;
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    assert_eq!(scrape(&server, &server.admin_token).await.0, 200);
    assert_eq!(scrape(&server, &viewer).await.0, 403);
    let anonymous = reqwest::get(format!("{}/metrics", server.url)).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    promtool(&text);

    // The counters moved with what happened.
    for (series, want) in [
        (
            "tug_deployments_total{service=\"web\",environment=\"dev\",kind=\"release\"}",
            1.0,
        ),
        (
            "tug_deployments_total{service=\"web\",environment=\"prod\",kind=\"promote\"}",
            1.0,
        ),
        (
            "tug_deployments_total{service=\"web\",environment=\"sec\",kind=\"release\"}",
            1.0,
        ),
        (
            "tug_deployment_lead_time_seconds_count{service=\"web\",environment=\"prod\",kind=\"promote\"}",
            1.0,
        ),
        (
            "tug_approval_wait_seconds_count{service=\"web\",environment=\"prod\",decision=\"approve\"}",
            1.0,
        ),
        (
            "tug_agents{service=\"web\",environment=\"sec\",state=\"healthy\",build=\"embargoed\"}",
            1.0,
        ),
    ] {
        assert_eq!(value(&text, series), want, "{series}\n{text}");
    }
    let bytes_in = value(&text, "tug_blob_bytes_total{direction=\"in\"}");
    assert!(bytes_in >= (body.len() + b"the security fix".len()) as f64, "{text}");
    assert!(value(&before, "tug_blob_bytes_total{direction=\"in\"}") >= body.len() as f64);
    assert_eq!(
        value(&text, "tug_blob_bytes_total{direction=\"out\"}")
            - value(&before, "tug_blob_bytes_total{direction=\"out\"}"),
        body.len() as f64,
        "{text}"
    );
    // Requests are counted by route template, never by the path sent.
    let blob_route = "tug_http_requests_total{route=\"/v1/blobs/{digest}\",method=\"GET\",status=\"200\"}";
    assert!(value(&text, blob_route) >= 1.0, "{text}");
    let scrapes = "tug_http_requests_total{route=\"/metrics\",method=\"GET\",status=\"200\"}";
    assert!(value(&text, scrapes) >= 1.0, "{text}");
    assert!(
        value(
            &text,
            "tug_http_request_duration_seconds_count{route=\"/v1/services/{service}/release\",method=\"POST\"}"
        ) >= 2.0,
        "{text}"
    );
    assert!(
        !text.contains(digest.hex().as_str()) && !text.contains(&v1),
        "no path or build id in a label:\n{text}"
    );
    // The embargoed build is never named.
    assert!(!text.contains(&fix) && !text.contains(&fix[..8]), "{text}");
    // The event log's consumers have no lag to show without consumers; the
    // scrape after one more release counts it.
    let v2 = crate::agents::sealed(&server, "web", "2.0.0", &[("app", None, b"web 2".to_vec())]).await;
    server.tug(w, &["release", "web", "--env", "dev", "--build", &v2]).ok();
    let (_, _, after) = scrape(&server, &scraper).await;
    assert_eq!(
        value(
            &after,
            "tug_deployments_total{service=\"web\",environment=\"dev\",kind=\"release\"}"
        ),
        2.0
    );
    promtool(&after);
    // The sink catches up with the log: its lag falls to 0.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, _, text) = scrape(&server, &scraper).await;
        if text
            .lines()
            .any(|l| l == "tug_consumer_lag_events{consumer=\"event-sink\"} 0")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sink's lag never fell to 0:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // One release line per deployment in the server's log, after its
    // commit; the operator's log names even the embargoed build.
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("tug::release")).collect();
    assert_eq!(lines.len(), 4, "{log}");
    let want = [
        ("dev", "1.0.0", v1.as_str(), "release", "admin"),
        ("prod", "1.0.0", v1.as_str(), "promote", "alice"),
        ("sec", "1.0.1", fix.as_str(), "release", "admin"),
        ("dev", "2.0.0", v2.as_str(), "release", "admin"),
    ];
    for (line, (env, version, build, kind, actor)) in lines.iter().zip(want) {
        for field in [
            "deployed".to_string(),
            "service=web".to_string(),
            format!("env={env}"),
            format!("version={version}"),
            format!("build={build}"),
            format!("kind={kind}"),
            format!("actor={actor}"),
        ] {
            assert!(line.contains(&field), "{field} in {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_realistic_flow_sqlite() {
    metrics_after_a_realistic_flow(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_realistic_flow_postgres() {
    metrics_after_a_realistic_flow(Backend::postgres_s3().await).await;
}
