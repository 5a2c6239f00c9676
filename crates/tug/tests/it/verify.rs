//! Metric gates (`verify`) against a real Prometheus server scraping a
//! target whose error counter the test sets: promotions out of a gated
//! environment wait until the query has stayed within bounds for its
//! `for`; an unreachable Prometheus and an empty answer block with their
//! reasons; a value out of bounds halts a paced rollout (and rolls it
//! back); bad gates are refused when the pipeline is applied.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::prometheus::{free_port, ErrorTarget, Prometheus};
use crate::support::{eventually, Backend, TestServer};

/// The query every gate here asks.
const QUERY: &str = "sum(test_errors_total)";

/// Samples every 200 ms, so the tests wait for Prometheus's scrapes rather
/// than for the sampler.
async fn server_on(backend: Backend) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    TestServer::start_in(dir, backend, &[], &[("TUG_VERIFY_INTERVAL_MS", "200")])
}

fn pipeline(service: &str, prometheus: &str, query: &str, staging_extra: &str) -> String {
    format!(
        r#"service = "{service}"

[[environments]]
name = "staging"
verify = {{ prometheus = "{prometheus}", query = "{query}", max = 0.5, for = "3s" }}
{staging_extra}

[[environments]]
name = "prod"
upstream = "staging"
"#
    )
}

fn apply(server: &TestServer, w: &Path, service: &str, pipeline: &str) {
    server.tug(w, &["service", "create", service]).ok();
    std::fs::write(w.join(format!("{service}.toml")), pipeline).unwrap();
    server
        .tug(w, &["pipeline", "apply", "-f", &format!("{service}.toml")])
        .ok();
}

async fn build(server: &TestServer, service: &str, version: &str) -> String {
    let body = format!("{service} {version}").into_bytes();
    crate::agents::sealed(server, service, version, &[("app", None, body)]).await
}

/// The gate of `env` as `tug status --output json` shows it.
fn gate(server: &TestServer, w: &Path, service: &str, env: &str) -> serde_json::Value {
    let s = server.tug(w, &["status", service, "--output", "json"]).json();
    s["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == env)
        .unwrap()["gate"]
        .clone()
}

fn promote(server: &TestServer, w: &Path, service: &str) -> crate::support::Run {
    server.tug(w, &["promote", service, "--to", "prod"])
}

async fn promotion_waits_until_the_gate_has_held(backend: Backend) {
    let server = server_on(backend).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let target = ErrorTarget::start(5);
    let prometheus = Prometheus::start(w, target.addr);
    apply(&server, w, "web", &pipeline("web", &prometheus.url, QUERY, ""));
    let v1 = build(&server, "web", "1.0.0").await;
    server
        .tug(w, &["release", "web", "--env", "staging", "--build", &v1])
        .ok();
    prometheus.wait_for(QUERY, 5.0);

    // Out of bounds: blocked, with the query and its value.
    let blocked = eventually(20, || {
        let g = gate(&server, w, "web", "staging");
        g["blocked"]
            .as_str()
            .filter(|b| b.contains("returned 5"))
            .map(str::to_string)
    });
    assert!(
        blocked.contains("above max 0.5") && blocked.contains(QUERY),
        "{blocked}"
    );
    let err = promote(&server, w, "web").fails().to_string();
    assert!(
        err.contains("verify") && err.contains("returned 5, above max 0.5"),
        "{err}"
    );
    let status = server.tug(w, &["status", "web"]).ok().to_string();
    assert!(
        status.contains("staging (metric gate blocks): query sum(test_errors_total) returned 5"),
        "{status}"
    );

    // Back within bounds: still refused until it has held for 3 s.
    target.set(0);
    prometheus.wait_for(QUERY, 0.0);
    let since = eventually(20, || {
        let g = gate(&server, w, "web", "staging");
        g["within_since"]
            .as_str()
            .map(|s| chrono::DateTime::parse_from_rfc3339(s).unwrap())
    });
    let early = promote(&server, w, "web");
    if chrono::Utc::now() - since.with_timezone(&chrono::Utc) < chrono::Duration::milliseconds(2500) {
        let err = early.fails().to_string();
        assert!(err.contains("has held for") && err.contains("of 3s"), "{err}");
    }
    // Allowed once it has held: never before.
    let promoted = eventually(20, || {
        let run = promote(&server, w, "web");
        (run.code == 0).then_some(chrono::Utc::now())
    });
    assert!(
        promoted - since.with_timezone(&chrono::Utc) >= chrono::Duration::seconds(3),
        "promoted at {promoted}, within bounds only since {since}"
    );
    let s = server.tug(w, &["status", "web", "--output", "json"]).json();
    assert_eq!(s["environments"][1]["current"]["build"], v1.as_str());
    // The gate's last sample in the metrics.
    let text = server
        .http(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tug_verify_value{service=\"web\",environment=\"staging\"} 0.0",
        "tug_verify_within_bounds{service=\"web\",environment=\"staging\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_waits_until_the_gate_has_held_sqlite() {
    promotion_waits_until_the_gate_has_held(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_waits_until_the_gate_has_held_postgres() {
    promotion_waits_until_the_gate_has_held(Backend::postgres_s3().await).await;
}

/// An unreachable Prometheus and a query that matches nothing never pass:
/// each blocks with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_prometheus_and_an_empty_answer_block_with_their_reasons() {
    let server = server_on(Backend::Embedded).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let target = ErrorTarget::start(0);
    let prometheus = Prometheus::start(w, target.addr);
    let closed = format!("http://127.0.0.1:{}", free_port());
    apply(&server, w, "web", &pipeline("web", &closed, QUERY, ""));
    apply(
        &server,
        w,
        "api",
        &pipeline("api", &prometheus.url, "sum(no_such_metric_total)", ""),
    );
    for service in ["web", "api"] {
        let b = build(&server, service, "1.0.0").await;
        server
            .tug(w, &["release", service, "--env", "staging", "--build", &b])
            .ok();
    }
    for (service, reason) in [
        ("web", format!("Prometheus at {closed} is unreachable")),
        ("api", "returned nothing".to_string()),
    ] {
        let first = eventually(20, || {
            let g = gate(&server, w, service, "staging");
            g["blocked"].as_str().filter(|b| b.contains(&reason))?;
            g["last_sample"].as_str().map(str::to_string)
        });
        let first = chrono::DateTime::parse_from_rfc3339(&first).unwrap();
        // It stays so past the gate's 3 s: a gate never passes by default.
        eventually(20, || {
            let g = gate(&server, w, service, "staging");
            let last = chrono::DateTime::parse_from_rfc3339(g["last_sample"].as_str()?).ok()?;
            assert!(g["within_since"].is_null(), "{g}");
            assert!(g["blocked"].as_str().unwrap().contains(&reason), "{g}");
            (last - first >= chrono::Duration::milliseconds(3500)).then_some(())
        });
        let err = promote(&server, w, service).fails().to_string();
        assert!(err.contains("policy_violation") || err.contains("verify"), "{err}");
        assert!(err.contains(&reason), "{service}: {err}");
    }
}

async fn a_value_out_of_bounds_halts_the_rollout(backend: Backend) {
    let server = server_on(backend).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let target = ErrorTarget::start(0);
    let prometheus = Prometheus::start(w, target.addr);
    apply(
        &server,
        w,
        "web",
        &pipeline(
            "web",
            &prometheus.url,
            QUERY,
            r#"rollout = { strategy = "all-at-once", auto_rollback = true }"#,
        ),
    );
    apply(
        &server,
        w,
        "api",
        &pipeline(
            "api",
            &prometheus.url,
            QUERY,
            r#"rollout = { strategy = "all-at-once" }"#,
        ),
    );
    let mut builds = Vec::new();
    for service in ["web", "api"] {
        let v1 = build(&server, service, "1.0.0").await;
        let v2 = build(&server, service, "2.0.0").await;
        for b in [&v1, &v2] {
            server
                .tug(w, &["release", service, "--env", "staging", "--build", b])
                .ok();
        }
        builds.push((v1, v2));
    }
    prometheus.wait_for(QUERY, 0.0);
    eventually(20, || {
        gate(&server, w, "web", "staging")["within_since"].as_str().map(|_| ())
    });

    // The error counter jumps: both rollouts halt; web rolls back.
    let began = Instant::now();
    target.set(10);
    let want = format!("metric gate: query {QUERY} returned 10, above max 0.5");
    let history = eventually(20, || {
        let h = server
            .tug(w, &["history", "web", "--env", "staging", "--output", "json"])
            .json();
        (h[0]["requested_by"] == "auto-rollback").then_some(h)
    });
    assert_eq!(history[0]["build"], builds[0].0.as_str(), "back to 1.0.0");
    assert!(history[0]["reason"].as_str().unwrap().contains(&want), "{history}");
    let halted = eventually(20, || {
        let r = server
            .tug(w, &["rollout", "status", "api", "--env", "staging", "--output", "json"])
            .json();
        (r["state"] == "halted").then_some(r)
    });
    assert!(halted["reason"].as_str().unwrap().contains(&want), "{halted}");
    assert_eq!(halted["build"], builds[1].1.as_str(), "api keeps 2.0.0, halted");
    let events = server.tug(w, &["audit", "export"]).ok().to_string();
    assert!(
        events
            .lines()
            .any(|l| l.contains("rollout.halted") && l.contains(&want)),
        "{events}"
    );
    assert!(began.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_out_of_bounds_halts_the_rollout_and_rolls_back_sqlite() {
    a_value_out_of_bounds_halts_the_rollout(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_out_of_bounds_halts_the_rollout_and_rolls_back_postgres() {
    a_value_out_of_bounds_halts_the_rollout(Backend::postgres_s3().await).await;
}

/// Each bad gate is refused when the pipeline is applied, naming its
/// field, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gates_are_refused_at_apply_naming_the_field() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "web"]).ok();
    for (gate, field) in [
        (
            r#"{ prometheus = "ftp://p:9090", query = "up", max = 1, for = "1m" }"#,
            "verify.prometheus",
        ),
        (
            r#"{ prometheus = "http://user:secret@p:9090", query = "up", max = 1, for = "1m" }"#,
            "verify.prometheus",
        ),
        (
            r#"{ prometheus = "http://p:9090", query = " ", max = 1, for = "1m" }"#,
            "verify.query",
        ),
        (
            r#"{ prometheus = "http://p:9090", query = "sum(rate(x[5m])", max = 1, for = "1m" }"#,
            "verify.query",
        ),
        (
            r#"{ prometheus = "http://p:9090", query = "up", max = nan, for = "1m" }"#,
            "verify.max",
        ),
        (
            r#"{ prometheus = "http://p:9090", query = "up", min = inf, for = "1m" }"#,
            "verify.min",
        ),
        (
            r#"{ prometheus = "http://p:9090", query = "up", max = 1, for = "soon" }"#,
            "verify.for",
        ),
        (
            r#"{ prometheus = "http://p:9090", query = "up", for = "1m" }"#,
            "verify.max",
        ),
    ] {
        std::fs::write(
            w.join("p.toml"),
            format!("service = \"web\"\n[[environments]]\nname = \"staging\"\nverify = {gate}\n"),
        )
        .unwrap();
        let err = server
            .tug(w, &["pipeline", "apply", "-f", "p.toml"])
            .fails()
            .to_string();
        assert!(err.contains(field), "{gate}: {err}");
        assert!(!err.contains("secret"), "{err}");
    }
    let shown = server.tug(w, &["pipeline", "show", "web", "--output", "json"]);
    assert_ne!(shown.code, 0, "no pipeline was stored: {}", shown.stdout);
}
