//! Webhooks through the real binary, checked by receivers that share no
//! code with Tugboat: a Python receiver verifying every request with the
//! PyPI `standardwebhooks` library, and Debian's `webhook` server checking
//! GitHub's `X-Hub-Signature-256` with a `payload-hmac-sha256` rule.
//! Retries keep their `webhook-id` and their order; failing endpoints (500,
//! a closed port, a slow answer, a redirect loop, a 100 MB answer) delay
//! neither another webhook nor a release; a delivery that keeps failing is
//! dead-lettered after the retry period; `redeliver` sends one again;
//! secrets appear in no listing, event or log; Slack gets Block Kit
//! messages; bad input is refused naming the field.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::deploy::{apply, sealed};
use crate::support::{eventually, Backend, KillOnDrop, TestServer};

const RECEIVER: &str = include_str!("webhooks/receiver.py");

/// A server whose webhooks retry fast and give up after `retry_secs`.
pub fn webhook_server(backend: Backend, retry_secs: u64) -> TestServer {
    let retry = retry_secs.to_string();
    TestServer::start_in(
        tempfile::tempdir().unwrap(),
        backend,
        &[],
        &[
            ("TUG_WEBHOOK_TIMEOUT_MS", "500"),
            ("TUG_WEBHOOK_BACKOFF_INITIAL_MS", "50"),
            ("TUG_WEBHOOK_BACKOFF_MAX_SECS", "1"),
            ("TUG_WEBHOOK_RETRY_SECS", &retry),
            ("TUG_CONSUMER_LEASE_SECS", "2"),
        ],
    )
}

/// The Python receiver (see `webhooks/receiver.py`), running until dropped.
pub struct Receiver {
    pub dir: tempfile::TempDir,
    pub port: u16,
    scheme: &'static str,
    _child: KillOnDrop,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::start_with(None)
    }

    /// A receiver over TLS with the certificate and key files given.
    pub fn start_tls(cert: &Path, key: &Path) -> Receiver {
        Receiver::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("receiver.py");
        std::fs::write(&script, RECEIVER).unwrap();
        let mut command = Command::new("python3");
        command.arg(&script).arg(dir.path());
        if let Some((cert, key)) = tls {
            command.arg(cert).arg(key);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the receiver");
        let child = KillOnDrop(child);
        let port = eventually(20, || {
            std::fs::read_to_string(dir.path().join("port"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
        });
        Receiver {
            dir,
            port,
            scheme: if tls.is_some() { "https" } else { "http" },
            _child: child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}/{path}", self.scheme, self.port)
    }

    /// Lets the receiver verify requests to `/NAME/…` with `secret`.
    pub fn trust(&self, name: &str, secret: &str) {
        let path = self.dir.path().join("secrets.json");
        let mut all: HashMap<String, String> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        all.insert(name.into(), secret.into());
        std::fs::write(
            self.dir.path().join("secrets.tmp"),
            serde_json::to_string(&all).unwrap(),
        )
        .unwrap();
        std::fs::rename(self.dir.path().join("secrets.tmp"), path).unwrap();
    }

    /// Every request received so far whose path starts with `/NAME/`.
    pub fn received(&self, name: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("received.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["path"].as_str().unwrap_or("").starts_with(&format!("/{name}/")))
            .collect()
    }

    /// The requests to `/NAME/` answered 200, one per webhook-id (the first).
    pub fn accepted(&self, name: &str) -> Vec<Value> {
        let mut seen = HashSet::new();
        self.received(name)
            .into_iter()
            .filter(|r| r["status"] == 200 && seen.insert(r["webhook_id"].as_str().unwrap_or("").to_string()))
            .collect()
    }
}

/// Creates a webhook with the CLI; returns (id, secret).
pub fn create(server: &TestServer, w: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["webhook", "create"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--output", "json"]);
    let created = server.tug(w, &all).json();
    (
        created["webhook"]["id"].as_str().unwrap().to_string(),
        created["secret"].as_str().unwrap().to_string(),
    )
}

fn deliveries(server: &TestServer, w: &Path, id: &str) -> Vec<Value> {
    server
        .tug(w, &["webhook", "deliveries", id, "--output", "json"])
        .json()
        .as_array()
        .unwrap()
        .clone()
}

async fn signed_events_arrive_verified_in_order_with_retries_keeping_their_id(backend: Backend) {
    let server = webhook_server(backend, 3600);
    let receiver = Receiver::start();
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let (id, secret) = create(
        &server,
        w,
        &["--url", &receiver.url("a/fail/2"), "--events", "service.created"],
    );
    assert!(secret.starts_with("whsec_"), "{secret}");
    receiver.trust("a", &secret);
    let names: Vec<String> = (1..=5).map(|n| format!("svc{n}")).collect();
    for n in &names {
        server.tug(w, &["service", "create", n]).ok();
    }
    let accepted = eventually(30, || {
        let a = receiver.accepted("a");
        (a.len() == names.len()).then_some(a)
    });
    // Verified by the standardwebhooks library, in the order created.
    assert!(accepted.iter().all(|r| r["verified"] == true), "{accepted:?}");
    let services: Vec<&str> = accepted
        .iter()
        .map(|r| r["body"]["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, names.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(accepted.iter().all(|r| r["body"]["kind"] == "service.created"));
    // Every event was tried three times under one webhook-id, and a later
    // event was first sent only after the one before it was accepted.
    let all = receiver.received("a");
    for r in &accepted {
        let id = r["webhook_id"].as_str().unwrap();
        assert!(id.starts_with("msg_"), "{id}");
        let tries: Vec<&Value> = all.iter().filter(|x| x["webhook_id"] == id).collect();
        assert_eq!(tries.len(), 3, "{id}: {tries:?}");
        assert!(tries.iter().all(|t| t["verified"] == true));
    }
    let order: Vec<&str> = all.iter().map(|r| r["webhook_id"].as_str().unwrap()).collect();
    let mut firsts: Vec<&str> = Vec::new();
    for o in &order {
        if firsts.last() != Some(o) {
            firsts.push(o);
        }
    }
    assert_eq!(firsts.len(), names.len(), "attempts interleave: {order:?}");
    // The deliveries say so.
    let ds = eventually(10, || {
        let ds = deliveries(&server, w, &id);
        (ds.len() == names.len() && ds.iter().all(|d| d["state"] == "delivered")).then_some(ds)
    });
    assert!(ds.iter().all(|d| d["attempts"] == 3), "{ds:?}");
    // A prefix of the id names the webhook too.
    let short = &id[..13];
    assert_eq!(deliveries(&server, w, short).len(), names.len());
    // The secret is in no listing, event or log line.
    let listed = server.tug(w, &["webhook", "list", "--output", "json"]).ok().to_string();
    let table = server.tug(w, &["webhook", "list"]).ok().to_string();
    let events = server.tug(w, &["audit", "export"]).ok().to_string();
    assert!(
        listed.contains(&id) && events.contains("webhook.created"),
        "{listed}\n{events}"
    );
    let raw = secret.trim_start_matches("whsec_");
    for (what, text) in [
        ("list", &listed),
        ("table", &table),
        ("events", &events),
        ("log", &server.log()),
    ] {
        assert!(!text.contains(raw), "the secret is in the {what}");
    }
    // Deleting it deletes its consumer: nothing more is sent.
    server.tug(w, &["webhook", "delete", &id]).ok();
    server.tug(w, &["service", "create", "after"]).ok();
    assert!(server
        .tug(w, &["webhook", "list", "--output", "json"])
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    let exported = server.tug(w, &["audit", "export"]).ok().to_string();
    assert!(exported.contains("webhook.deleted"));
    let err = server.tug(w, &["webhook", "deliveries", &id]).fails().to_string();
    assert!(err.contains("webhook_not_found") || err.contains("no webhook"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_arrive_verified_in_order_with_retries_keeping_their_id_on_sqlite() {
    signed_events_arrive_verified_in_order_with_retries_keeping_their_id(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_arrive_verified_in_order_with_retries_keeping_their_id_on_postgres() {
    signed_events_arrive_verified_in_order_with_retries_keeping_their_id(Backend::postgres_s3().await).await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_webhook_passes_the_webhook_servers_payload_hmac_rule() {
    let server = webhook_server(Backend::Embedded, 3600);
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let hooks = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_, secret) = create(
        &server,
        w,
        &[
            "--url",
            &format!("http://127.0.0.1:{port}/hooks/tug"),
            "--kind",
            "github",
            "--events",
            "service.*",
        ],
    );
    let out = hooks.path().join("payloads");
    let record = hooks.path().join("record.sh");
    std::fs::write(
        &record,
        format!("#!/bin/sh\nprintf '%s\\n' \"$1\" >> {}\n", out.display()),
    )
    .unwrap();
    std::fs::set_permissions(&record, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rule = |secret: &str| {
        json!({
            "match": {
                "type": "payload-hmac-sha256",
                "secret": secret,
                "parameter": {"source": "header", "name": "X-Hub-Signature-256"}
            }
        })
    };
    let config = json!([{
        "id": "tug",
        "execute-command": record,
        "command-working-directory": hooks.path(),
        "pass-arguments-to-command": [{"source": "entire-payload"}],
        "trigger-rule-mismatch-http-response-code": 403,
        "trigger-rule": rule(&secret),
    }]);
    let config_path = hooks.path().join("hooks.json");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let _webhookd = KillOnDrop(
        Command::new("/usr/bin/webhook")
            .args([
                "-hooks",
                config_path.to_str().unwrap(),
                "-ip",
                "127.0.0.1",
                "-port",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's webhook server is installed (scripts/test installs it)"),
    );
    server.tug(w, &["service", "create", "gh1"]).ok();
    server.tug(w, &["service", "create", "gh2"]).ok();
    let payloads = eventually(30, || {
        let text = std::fs::read_to_string(&out).ok()?;
        let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (lines.len() >= 2).then_some(lines)
    });
    let services: Vec<&str> = payloads.iter().map(|p| p["service"].as_str().unwrap()).collect();
    assert_eq!(&services[..2], ["gh1", "gh2"]);
    // The same payload with a signature made with another key is refused,
    // and its command does not run.
    let body = serde_json::to_vec(&payloads[0]).unwrap();
    let res = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/hooks/tug"))
        .header("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64)))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(!res.status().is_success(), "{}", res.status());
    let lines = std::fs::read_to_string(&out).unwrap().lines().count();
    assert_eq!(lines, payloads.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoints_delay_neither_other_webhooks_nor_releases_and_end_dead_lettered() {
    let server = webhook_server(Backend::Embedded, 2);
    let receiver = Receiver::start();
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    apply(&server, w, "service = \"api\"\n\n[[environments]]\nname = \"dev\"\n").ok();
    let builds = [
        sealed(&server, w, "master", "aaaaaaa1", "1.0.0"),
        sealed(&server, w, "master", "bbbbbbb2", "1.0.1"),
    ];
    let closed = format!("http://127.0.0.1:{}/closed", free_port());
    let bad = [
        receiver.url("b/always500"),
        closed,
        receiver.url("c/slow"),
        receiver.url("d/redirect"),
        receiver.url("e/huge"),
    ];
    let mut bad_ids = Vec::new();
    for url in &bad {
        bad_ids.push(create(&server, w, &["--url", url, "--events", "deployment"]).0);
    }
    let (good, secret) = create(&server, w, &["--url", &receiver.url("a/ok"), "--events", "deployment"]);
    receiver.trust("a", &secret);
    // Releases answer at once and the good endpoint gets each deployment
    // within moments, whatever the others do.
    for (n, build) in builds.iter().cycle().take(6).enumerate() {
        let started = Instant::now();
        server
            .tug(w, &["release", "api", "--env", "dev", "--build", build])
            .ok();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "release {n} took {:?}",
            started.elapsed()
        );
        let arrived = Instant::now();
        eventually(5, || (receiver.accepted("a").len() > n).then_some(()));
        assert!(
            arrived.elapsed() < Duration::from_secs(2),
            "delivery {n} took {:?}",
            arrived.elapsed()
        );
    }
    assert!(receiver.accepted("a").iter().all(|r| r["verified"] == true));
    // The redirect is not followed (one request per attempt, never to
    // elsewhere) and the huge answer was not read (its deliveries are
    // done within the timeout).
    let huge = eventually(20, || {
        let ds = deliveries(&server, w, &bad_ids[4]);
        (ds.len() == 6 && ds.iter().all(|d| d["state"] == "delivered")).then_some(ds)
    });
    assert!(huge.iter().all(|d| d["attempts"] == 1));
    // After the retry period the failing ones are dead-lettered one by
    // one, and the endpoint moves on to the next deployment.
    for id in &bad_ids[..4] {
        let ds = eventually(60, || {
            let ds = deliveries(&server, w, id);
            (ds.len() == 6 && ds.iter().all(|d| d["state"] == "dead")).then_some(ds)
        });
        assert!(ds.iter().all(|d| d["attempts"].as_i64().unwrap() >= 1), "{ds:?}");
        let table = server.tug(w, &["webhook", "deliveries", id]).ok().to_string();
        assert!(table.contains("dead"), "{table}");
    }
    let redirect = deliveries(&server, w, &bad_ids[3]);
    assert!(redirect[0]["last_status"] == 302, "{redirect:?}");
    // Every failed attempt is counted for Prometheus, by kind of target
    // (never by URL: a Slack URL is a credential).
    let metrics = server
        .http(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tug_delivery_failures_total{target=\"webhook\"} "))
        .unwrap_or_else(|| panic!("no webhook failures counted:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(failures >= 4.0, "{failures}");
    assert!(!metrics.contains("127.0.0.1"), "{metrics}");
    let closed = deliveries(&server, w, &bad_ids[1]);
    assert!(
        closed[0]["last_error"].as_str().unwrap().contains("connect"),
        "{closed:?}"
    );
    let slow = deliveries(&server, w, &bad_ids[2]);
    assert!(
        slow[0]["last_error"].as_str().unwrap().contains("timed out"),
        "{slow:?}"
    );
    // Redeliver sends one again with the same webhook-id, now.
    let first = deliveries(&server, w, &good).last().unwrap().clone();
    let before = receiver.received("a").len();
    let again = server
        .tug(
            w,
            &[
                "webhook",
                "redeliver",
                first["id"].as_str().unwrap(),
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(again["attempts"], 2);
    assert_eq!(again["state"], "delivered");
    let received = receiver.received("a");
    assert_eq!(received.len(), before + 1);
    assert_eq!(received.last().unwrap()["webhook_id"], first["id"]);
    assert_eq!(received.last().unwrap()["verified"], true);
    // Redelivering a dead one to a still failing endpoint says so (exit
    // status 1, the answer on stdout) and records the attempt.
    let dead = deliveries(&server, w, &bad_ids[0])[0].clone();
    let run = server.tug(w, &["webhook", "redeliver", dead["id"].as_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("failed: HTTP 500"), "{run:?}");
    let after = deliveries(&server, w, &bad_ids[0])[0].clone();
    assert_eq!(after["attempts"].as_i64(), dead["attempts"].as_i64().map(|a| a + 1));
    assert_eq!(after["state"], "dead");
    let err = server
        .tug(w, &["webhook", "redeliver", "msg_nope_1"])
        .fails()
        .to_string();
    assert!(err.contains("no delivery"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_gets_block_kit_messages_for_deployments_and_approvals() {
    let server = webhook_server(Backend::Embedded, 3600);
    let receiver = Receiver::start();
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    apply(
        &server,
        w,
        "service = \"api\"\n\n[[environments]]\nname = \"dev\"\n\n[[environments]]\nname = \"prod\"\nupstream = \"dev\"\napprovals = 1\n",
    )
    .ok();
    let (id, _) = create(
        &server,
        w,
        &[
            "--url",
            &receiver.url("s/unsigned"),
            "--kind",
            "slack",
            "--service",
            "api",
        ],
    );
    let listed = server.tug(w, &["webhook", "list", "--output", "json"]).json();
    assert_eq!(
        listed[0]["events"],
        json!([
            "deployment",
            "approval.requested",
            "rollout.halted",
            "rollout.rollback_failed"
        ])
    );
    let build = sealed(&server, w, "master", "aaaaaaa1", "1.0.0");
    server
        .tug(w, &["release", "api", "--env", "dev", "--build", &build])
        .ok();
    server.tug(w, &["promote", "api", "--to", "prod"]).ok();
    let messages = eventually(20, || {
        let m = receiver.received("s");
        (m.len() >= 2).then_some(m)
    });
    let deployed = &messages[0]["body"];
    assert_eq!(deployed["text"], ":rocket: api 1.0.0 deployed to dev");
    let blocks = deployed["blocks"].as_array().unwrap();
    assert!(blocks.iter().all(|b| b["type"].is_string()));
    assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
    assert!(blocks[1]["fields"].as_array().unwrap().len() >= 4);
    let approval = &messages[1]["body"];
    assert!(
        approval["text"]
            .as_str()
            .unwrap()
            .starts_with(":raised_hand: Approval needed: api 1.0.0 to prod"),
        "{approval}"
    );
    let text = approval.to_string();
    assert!(
        text.contains(&format!("tug approve api --env prod --build {build}")),
        "{text}"
    );
    assert!(text.contains("approver or admin"), "{text}");
    // Events with no message (the build's creation and seal) were not sent.
    assert!(messages.iter().all(|m| m["body"]["text"].is_string()));
    eventually(10, || {
        (deliveries(&server, w, &id).len() == messages.len()).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhooks_are_refused_naming_the_field_and_leave_nothing() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    for (args, field) in [
        (vec!["--url", "ftp://example.com/hook"], "url"),
        (vec!["--url", "https://user:pw@example.com/hook"], "url"),
        (vec!["--url", "not a url"], "url"),
        (vec!["--url", "http://example.com/", "--events", "deploy"], "events"),
        (
            vec!["--url", "http://example.com/", "--events", "approval.[x]"],
            "events",
        ),
        (vec!["--url", "http://example.com/", "--service", "nope"], "service"),
        (
            vec!["--url", "http://example.com/", "--service", "Not Valid"],
            "service",
        ),
    ] {
        let mut all = vec!["webhook", "create"];
        all.extend_from_slice(&args);
        let err = server.tug(w, &all).fails().to_string();
        assert!(err.contains(&format!("{field}:")), "{args:?}: {err}");
        assert!(!err.contains("pw@"), "{err}");
    }
    let err = server
        .tug(
            w,
            &["webhook", "create", "--url", "http://example.com/", "--kind", "teams"],
        )
        .fails()
        .to_string();
    assert!(err.contains("standard, github or slack"), "{err}");
    let res = server
        .http(reqwest::Method::POST, "/v1/webhooks")
        .json(&json!({"url": "gopher://x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "invalid_request");
    assert!(body["message"].as_str().unwrap().starts_with("url:"), "{body}");
    assert!(server
        .tug(w, &["webhook", "list", "--output", "json"])
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    let export = server.tug(w, &["audit", "export"]).ok().to_string();
    assert!(!export.contains("webhook.created"));
}

/// Event ids in the log from webhook `id`'s `webhook.created` on.
fn events_from_creation(server: &TestServer, w: &Path, id: &str) -> Vec<i64> {
    let export = server.tug(w, &["audit", "export"]).ok().to_string();
    let events: Vec<Value> = export.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let created = events
        .iter()
        .find(|e| e["kind"] == "webhook.created" && e["webhook"]["id"] == id)
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    events
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .filter(|e| *e >= created)
        .collect()
}

async fn every_event_arrives_at_least_once_across_kill_9(backend: Backend) {
    let mut server = webhook_server(backend, 3600);
    let receiver = Receiver::start();
    let w = tempfile::tempdir().unwrap();
    let w = w.path().to_path_buf();
    let (id, secret) = create(&server, &w, &["--url", &receiver.url("k/ok")]);
    receiver.trust("k", &secret);
    for round in 0..4 {
        // Events keep being recorded while the server dies.
        let (url, token) = (server.url.clone(), server.admin_token.clone());
        let home = w.clone();
        let load = std::thread::spawn(move || {
            let mut n = 0;
            while Command::new(crate::support::TUG)
                .args(["service", "create", &format!("r{round}n{n}")])
                .env_clear()
                .env("HOME", &home)
                .env("TUG_SERVER", &url)
                .env("TUG_TOKEN", &token)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                n += 1;
            }
        });
        // Killed while deliveries arrive.
        let before = receiver.accepted("k").len();
        eventually(20, || (receiver.accepted("k").len() >= before + 5).then_some(()));
        server.kill9();
        load.join().unwrap();
        server.restart();
    }
    let expected = events_from_creation(&server, &w, &id);
    assert!(expected.len() > 20, "{}", expected.len());
    let got = eventually(60, || {
        let got: HashSet<i64> = receiver
            .accepted("k")
            .iter()
            .map(|r| r["body"]["id"].as_i64().unwrap())
            .collect();
        expected.iter().all(|e| got.contains(e)).then_some(got)
    });
    assert!(receiver.accepted("k").iter().all(|r| r["verified"] == true));
    // Each webhook-id names one event.
    for r in receiver.received("k") {
        let event = r["body"]["id"].as_i64().unwrap();
        assert!(r["webhook_id"].as_str().unwrap().ends_with(&format!("_{event}")));
    }
    assert!(got.len() >= expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_at_least_once_across_kill_9_on_sqlite() {
    every_event_arrives_at_least_once_across_kill_9(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_at_least_once_across_kill_9_on_postgres() {
    every_event_arrives_at_least_once_across_kill_9(Backend::postgres_s3().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embargoed_build_reaches_no_endpoint() {
    let server = webhook_server(Backend::Embedded, 3600);
    let receiver = Receiver::start();
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    apply(
        &server,
        w,
        "service = \"api\"\n\n[[environments]]\nname = \"security\"\nprivate = true\n",
    )
    .ok();
    let (_, secret) = create(&server, w, &["--url", &receiver.url("a/ok")]);
    receiver.trust("a", &secret);
    create(&server, w, &["--url", &receiver.url("s/unsigned"), "--kind", "slack"]);
    crate::support::write_files(w, &[("fix.bin", b"security fix")]);
    let out = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--version",
                "2.0.1",
                "--branch",
                "master",
                "--embargo",
                "--seal",
                "fix.bin",
                "--output",
                "json",
            ],
        )
        .json();
    let id = out["build"].as_str().unwrap().to_string();
    server
        .tug(w, &["release", "api", "--env", "security", "--build", &id])
        .ok();
    // Delivered in order: once the next event arrived, the ones before did.
    server.tug(w, &["service", "create", "marker"]).ok();
    let got = eventually(20, || {
        let got = receiver.accepted("a");
        got.iter().any(|r| r["body"]["service"] == "marker").then_some(got)
    });
    let deployment = got.iter().find(|r| r["body"]["kind"] == "deployment").unwrap();
    assert_eq!(deployment["body"]["embargoed"], true);
    assert!(deployment["body"]["build"].is_null());
    assert!(got
        .iter()
        .all(|r| r["body"]["kind"] != "build.created" && r["body"]["kind"] != "build.sealed"));
    let slack = eventually(20, || receiver.received("s").into_iter().next());
    assert!(
        slack["body"]["text"].as_str().unwrap().contains("an embargoed build"),
        "{slack}"
    );
    for r in receiver.received("a").iter().chain(receiver.received("s").iter()) {
        let text = r["body"].to_string();
        assert!(!text.contains(&id) && !text.contains("2.0.1"), "{text}");
    }
}

/// A certificate authority and a certificate it signed for 127.0.0.1, made
/// with openssl in `dir`: (the authority's PEM, the certificate, its key).
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Tugboat test authority",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (dir.join("ca.pem"), dir.join("leaf.pem"), dir.join("leaf.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_reach_https_endpoints_whose_certificate_the_server_trusts_and_no_other() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(certs.path());
    let receiver = Receiver::start_tls(&cert, &key);
    let ca = ca.display().to_string();
    // SSL_CERT_FILE replaces the system's trusted authorities, as for
    // OpenSSL: an operator's private authority is trusted this way.
    let trusting = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        Backend::Embedded,
        &[],
        &[
            ("SSL_CERT_FILE", &ca),
            ("TUG_WEBHOOK_TIMEOUT_MS", "500"),
            ("TUG_CONSUMER_LEASE_SECS", "2"),
        ],
    );
    let doubting = webhook_server(Backend::Embedded, 3600);
    for (server, name) in [(&trusting, "trusted"), (&doubting, "doubted")] {
        let w = tempfile::tempdir().unwrap();
        let w = w.path();
        server.tug(w, &["service", "create", "api"]).ok();
        apply(server, w, "service = \"api\"\n\n[[environments]]\nname = \"dev\"\n").ok();
        let build = sealed(server, w, "master", "aaaaaaa1", "1.0.0");
        let (id, secret) = create(
            server,
            w,
            &["--url", &receiver.url(&format!("{name}/ok")), "--events", "deployment"],
        );
        receiver.trust(name, &secret);
        server
            .tug(w, &["release", "api", "--env", "dev", "--build", &build])
            .ok();
        if name == "trusted" {
            let got = eventually(20, || receiver.accepted(name).into_iter().next());
            assert_eq!(got["verified"], true, "{got}");
            assert_eq!(got["body"]["kind"], "deployment", "{got}");
        } else {
            let ds = eventually(20, || {
                let ds = deliveries(server, w, &id);
                (ds.first().is_some_and(|d| d["attempts"].as_i64() >= Some(1))).then_some(ds)
            });
            let error = ds[0]["last_error"].as_str().unwrap_or_default().to_lowercase();
            assert!(
                error.contains("certificate") || error.contains("tls") || error.contains("connect"),
                "{ds:?}"
            );
            assert!(receiver.received(name).is_empty());
        }
    }
}
