//! The event sink, a durable consumer of the event log, through the real
//! binary: across `kill -9` of the server in a loop while clients release
//! builds as fast as they can, the sink's file ends with every event of the
//! log exactly once, in order, with no gap, as `tug audit export` writes
//! them (SQLite and PostgreSQL); with two servers on one PostgreSQL, one
//! runs the sink, and when it is killed the other takes over within the
//! lease and the file still has every event; a sink path that cannot be
//! written stops the server at start.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::deploy::{apply, sealed};
use crate::support::{eventually, Backend, TestServer, TUG};

/// Environments, one per releasing client.
const CLIENTS: usize = 4;

/// The consumer lease the tests' servers hold, in seconds: short, so a
/// restarted server takes the sink over from its killed predecessor soon.
const LEASE_SECS: u64 = 2;

/// A server whose event sink writes `sink`.
fn sink_server(backend: Backend, sink: &Path) -> TestServer {
    let lease = LEASE_SECS.to_string();
    TestServer::start_in(
        tempfile::tempdir().unwrap(),
        backend,
        &[],
        &[
            ("TUG_EVENT_SINK", sink.to_str().unwrap()),
            ("TUG_CONSUMER_LEASE_SECS", &lease),
        ],
    )
}

/// Service `api` with environments `e0`… (one per client) and two sealed
/// builds.
fn setup(server: &TestServer, w: &Path) -> [String; 2] {
    server.tug(w, &["service", "create", "api"]).ok();
    let mut pipeline = "service = \"api\"\n".to_string();
    for k in 0..CLIENTS {
        pipeline.push_str(&format!("\n[[environments]]\nname = \"e{k}\"\n"));
    }
    apply(server, w, &pipeline).ok();
    [
        sealed(server, w, "master", "aaaaaaa1", "1.0.0"),
        sealed(server, w, "master", "bbbbbbb2", "1.0.1"),
    ]
}

/// Releases the two builds in turn into environment `e{k}` until `done`
/// reaches `target`, through whatever address `url` holds (it changes when
/// the server restarts), retrying while the server is down.
async fn release_loop(
    url: Arc<RwLock<String>>,
    token: String,
    k: usize,
    builds: [String; 2],
    done: Arc<AtomicUsize>,
    target: usize,
) {
    let api = tug_core::ServiceName::parse("api").unwrap();
    let env = tug_core::EnvName::parse(&format!("e{k}")).unwrap();
    let mut turn = 0;
    let mut client: Option<(String, tug_client::Client)> = None;
    while done.load(Ordering::SeqCst) < target {
        let now = url.read().unwrap().clone();
        if client.as_ref().is_none_or(|(u, _)| *u != now) {
            client = Some((now.clone(), tug_client::Client::new(&now, Some(token.clone())).unwrap()));
        }
        let release = tug_api::Release {
            environment: env.clone(),
            build: Some(builds[turn % 2].clone()),
            branch: None,
            version: None,
            flags: Default::default(),
        };
        match client.as_ref().unwrap().1.release(&api, &release).await {
            Ok(_) => {
                done.fetch_add(1, Ordering::SeqCst);
                turn += 1;
            }
            // The release committed but its answer was lost to a kill.
            Err(e) if e.code() == Some("nothing_to_deploy") => turn += 1,
            // The server is down or starting: try again in a moment.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The sink file's lines, each parsed; the file must end with a newline
/// (no unfinished line).
fn sink_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "the sink ends mid-line");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a line of the sink is not JSON ({e}): {l}")))
        .collect()
}

/// Every event of the log, whole, as `tug audit export` writes it.
fn export(server: &TestServer) -> Vec<Value> {
    let w = tempfile::tempdir().unwrap();
    server
        .tug(w.path(), &["audit", "export"])
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until the sink has the log's newest event, then checks it holds
/// every event exactly once, in order, with no gap, each as the export
/// writes it.
fn assert_sink_has_every_event(server: &TestServer, sink: &Path) {
    let all = export(server);
    let newest = all.last().unwrap()["id"].as_i64().unwrap();
    eventually(30, || {
        let lines = sink_lines(sink);
        (lines.last().and_then(|l| l["id"].as_i64()) == Some(newest)).then_some(())
    });
    let lines = sink_lines(sink);
    let ids: Vec<i64> = lines.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "an event was written twice");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "events out of order");
    let expected: Vec<i64> = (1..=newest).collect();
    assert_eq!(ids, expected, "the sink has a gap");
    assert_eq!(lines, all, "the sink's lines differ from the audit export's");
}

/// 1,000 deployments from several clients while the server is killed with
/// `kill -9` and restarted every 150 of them.
async fn every_event_reaches_the_sink_exactly_once_across_kill_9(backend: Backend) {
    const DEPLOYMENTS: usize = 1000;
    const KILL_EVERY: usize = 150;
    let sinks = tempfile::tempdir().unwrap();
    let sink = sinks.path().join("events.jsonl");
    let mut server = sink_server(backend, &sink);
    let w = tempfile::tempdir().unwrap();
    let builds = setup(&server, w.path());

    let url = Arc::new(RwLock::new(server.url.clone()));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            tokio::spawn(release_loop(
                url.clone(),
                server.admin_token.clone(),
                k,
                builds.clone(),
                done.clone(),
                DEPLOYMENTS,
            ))
        })
        .collect();
    let mut kills = 0;
    let mut next_kill = KILL_EVERY;
    while next_kill < DEPLOYMENTS {
        let deadline = Instant::now() + Duration::from_secs(60);
        while done.load(Ordering::SeqCst) < next_kill {
            assert!(
                Instant::now() < deadline,
                "the deployments stalled at {}",
                done.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::task::block_in_place(|| server.restart());
        *url.write().unwrap() = server.url.clone();
        kills += 1;
        next_kill += KILL_EVERY;
    }
    for c in clients {
        c.await.unwrap();
    }
    assert!(kills >= 6, "{kills} kills");
    tokio::task::block_in_place(|| assert_sink_has_every_event(&server, &sink));
    let deployments = export(&server).iter().filter(|e| e["kind"] == "deployment").count();
    assert!(deployments >= DEPLOYMENTS, "{deployments} deployments");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_sink_exactly_once_across_kill_9_on_sqlite() {
    every_event_reaches_the_sink_exactly_once_across_kill_9(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_sink_exactly_once_across_kill_9_on_postgres() {
    every_event_reaches_the_sink_exactly_once_across_kill_9(Backend::postgres_s3().await).await;
}

/// Whether a server's log says it runs the event sink.
fn runs_the_sink(server: &TestServer) -> bool {
    server.log().contains("running consumer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_servers_runs_the_sink_and_the_other_takes_over_when_it_is_killed() {
    let backend = Backend::postgres_s3().await;
    let sinks = tempfile::tempdir().unwrap();
    let sink = sinks.path().join("events.jsonl");
    let a = sink_server(backend.clone(), &sink);
    let mut b = sink_server(backend, &sink);
    b.admin_token = a.admin_token.clone();
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let [b1, b2] = setup(&a, w);
    for (i, build) in [&b1, &b2, &b1].into_iter().enumerate() {
        let server = if i % 2 == 0 { &a } else { &b };
        server.tug(w, &["release", "api", "--env", "e0", "--build", build]).ok();
    }
    tokio::task::block_in_place(|| assert_sink_has_every_event(&a, &sink));
    let (mut holder, other) = match (runs_the_sink(&a), runs_the_sink(&b)) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        both => panic!("one server runs the sink, not {both:?}"),
    };

    holder.kill9();
    let killed = Instant::now();
    for build in [&b2, &b1, &b2] {
        other.tug(w, &["release", "api", "--env", "e1", "--build", build]).ok();
    }
    tokio::task::block_in_place(|| {
        eventually(LEASE_SECS + 5, || runs_the_sink(&other).then_some(()));
        assert!(
            killed.elapsed() < Duration::from_secs(LEASE_SECS + 5),
            "took over after {:?}",
            killed.elapsed()
        );
        assert_sink_has_every_event(&other, &sink);
    });
}

#[test]
fn an_event_sink_that_cannot_be_written_stops_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing: PathBuf = dir.path().join("no-such-dir").join("events.jsonl");
    for (path, why) in [
        (missing.to_str().unwrap(), "No such file or directory"),
        (dir.path().to_str().unwrap(), "directory"),
    ] {
        let out = Command::new(TUG)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .current_dir(dir.path())
            .env_clear()
            .env("TUG_EVENT_SINK", path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path}: started");
        assert!(
            stderr.contains("cannot open the event sink") && stderr.contains("TUG_EVENT_SINK") && stderr.contains(why),
            "{path}: {stderr}"
        );
    }
}
