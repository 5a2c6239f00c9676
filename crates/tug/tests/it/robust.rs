//! What a careless or hostile client, or an unlucky operator, meets: private
//! files, a busy port, connections that never finish their headers,
//! pipelines too large to serve, durations too long to compute with,
//! framework errors that must still be JSON, commits and versions as CI
//! writes them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::support::{digest_of, eventually, write_files, Backend, KillOnDrop, TestServer, TUG};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The status, code and message of a JSON error answer.
async fn error(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
    let kind = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = res.text().await.unwrap();
    assert!(kind.starts_with("application/json"), "{status} {kind}: {text:?}");
    let body: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?}"));
    (
        status,
        body["code"].as_str().unwrap().to_string(),
        body["message"].as_str().unwrap().to_string(),
    )
}

/// Pushes one file into a new sealed build of service `api`; returns its id.
fn sealed_build(server: &TestServer, w: &Path, version: &str, body: &[u8]) -> String {
    let name = format!("{version}.bin");
    write_files(w, &[(name.as_str(), body)]);
    let out = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--version",
                version,
                "--branch",
                "master",
                "--commit",
                "4f2a9c1e",
                "--seal",
                &name,
                "--output",
                "json",
            ],
        )
        .json();
    out["build"].as_str().unwrap().to_string()
}

fn apply(server: &TestServer, w: &Path, pipeline: &str) -> crate::support::Run {
    write_files(w, &[("pipeline.toml", pipeline.as_bytes())]);
    server.tug(w, &["pipeline", "apply", "-f", "pipeline.toml"])
}

// ---- file modes ---------------------------------------------------------

/// A server started by hand: `sh -c 'umask …; exec tug server …'`, so the
/// test controls the umask it runs with.
struct HandStarted {
    url: String,
    _child: KillOnDrop,
}

fn start_with_umask(dir: &Path, umask: &str) -> HandStarted {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask {umask} && exec \"$0\" server --listen 127.0.0.1:0 --data-dir tug-data 2>>server.log"
        ))
        .arg(TUG)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    // Keep draining so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let url = first
        .trim()
        .strip_prefix("Tugboat listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    HandStarted {
        url,
        _child: KillOnDrop(child),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_database_and_blobs_are_private_even_with_umask_000() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_umask(dir.path(), "000");
    let data = dir.path().join("tug-data");
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let client = tug_client::Client::new(&server.url, Some(token.trim().to_string())).unwrap();
    let body = b"a released binary".to_vec();
    let digest = digest_of(&body);
    client.put_blob_bytes(&digest, body).await.unwrap();
    client
        .create_service(&tug_core::ServiceName::parse("api").unwrap())
        .await
        .unwrap();

    let hex = digest.hex();
    let private_dirs = [
        data.clone(),
        data.join("blobs"),
        data.join("blobs/sha256"),
        data.join("blobs/sha256").join(&hex[..2]),
        data.join("tmp"),
    ];
    for d in &private_dirs {
        assert_eq!(mode(d), 0o700, "{}", d.display());
    }
    // The -wal and -shm files exist while the server runs (WAL mode) and
    // take the database file's mode.
    for f in ["tug.db", "tug.db-wal", "tug.db-shm", "admin.token"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    let blob = data.join("blobs/sha256").join(&hex[..2]).join(&hex);
    assert_eq!(mode(&blob), 0o600, "{}", blob.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_data_directory_open_to_others_is_kept_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tug-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = TestServer::start_in(dir, Backend::Embedded, &[], &[]);
    assert_eq!(mode(&server.data_dir()), 0o755, "the user's directory is not changed");
    let log = server.log();
    assert!(
        log.contains("has mode 0755") && log.contains(&format!("chmod 700 {}", server.data_dir().display())),
        "{log}"
    );
    // The files inside are private all the same.
    assert_eq!(mode(&server.data_dir().join("tug.db")), 0o600);
}

#[test]
fn a_data_directory_that_is_a_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tug-data"), "not a directory").unwrap();
    let out = Command::new(TUG)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir", "tug-data"])
        .current_dir(dir.path())
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr
            .contains("data directory tug-data is not a directory; choose another with --data-dir DIR or TUG_DATA_DIR"),
        "{stderr}"
    );
}

// ---- the socket before anything on disk ---------------------------------

#[test]
fn a_busy_port_names_the_flag_and_creates_nothing_on_disk() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for data_dir in [None, Some("elsewhere/tug-data")] {
        let mut cmd = Command::new(TUG);
        cmd.args(["server", "--listen", &addr.to_string()])
            .current_dir(dir.path())
            .env_clear()
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(d) = data_dir {
            cmd.args(["--data-dir", d]);
        }
        let child = KillOnDrop(cmd.spawn().unwrap());
        let mut child = child;
        let status = eventually(30, || child.0.try_wait().unwrap());
        let mut stderr = String::new();
        child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        assert!(!status.success());
        assert!(
            stderr.contains(&format!(
                "cannot listen on {addr}: the address is in use (is another tug server running?); choose another with --listen ADDR or TUG_LISTEN"
            )),
            "{stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "created {left:?}");
    }
}

// ---- header-read timeout ------------------------------------------------

/// Reads until the server closes the connection; how long that took.
fn closed_after(mut conn: TcpStream, started: Instant, limit: Duration) -> Duration {
    conn.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_headers_are_closed() {
    let timeout = Duration::from_secs(5);
    let margin = Duration::from_secs(3);
    let server = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        Backend::Embedded,
        &[],
        &[("TUG_HEADER_READ_TIMEOUT_SECS", "5")],
    );
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "web"]).ok();
    apply(&server, w, "service = \"web\"\n[[environments]]\nname = \"prod\"\n").ok();
    let addr = server.url.trim_start_matches("http://").to_string();
    let token = server.admin_token.clone();

    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        // Five that send half a request line, one that sends nothing, one
        // that stops inside its headers.
        let mut slow = Vec::new();
        for i in 0..7 {
            let mut conn = TcpStream::connect(&addr).unwrap();
            match i {
                5 => {}
                6 => conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: tug\r\nX-Slow: ").unwrap(),
                _ => conn.write_all(b"GET /v1/servi").unwrap(),
            }
            slow.push(conn);
        }
        // A long-poll whose headers are complete is held past the timeout.
        let etag = {
            let mut conn = TcpStream::connect(&addr).unwrap();
            write!(
                conn,
                "GET /v1/channels/web/prod?platform=linux/amd64 HTTP/1.1\r\nHost: tug\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer).unwrap();
            let line = answer
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("etag:"))
                .unwrap_or_else(|| panic!("{answer}"));
            line[5..].trim().to_string()
        };
        let mut poll = TcpStream::connect(&addr).unwrap();
        let poll_started = Instant::now();
        write!(
            poll,
            "GET /v1/channels/web/prod?platform=linux/amd64&wait=8s HTTP/1.1\r\nHost: tug\r\nAuthorization: Bearer {token}\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        // A keep-alive connection that went idle after its request.
        let mut idle = TcpStream::connect(&addr).unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: tug\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        let idle_since = Instant::now();

        for conn in slow {
            let took = closed_after(conn, started, timeout + margin);
            assert!(took >= timeout - Duration::from_millis(500), "closed too early: {took:?}");
        }
        let took = closed_after(idle, idle_since, timeout + margin);
        assert!(took >= timeout - Duration::from_millis(500), "idle closed too early: {took:?}");

        poll.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut answer = String::new();
        poll.read_to_string(&mut answer).unwrap();
        let held = poll_started.elapsed();
        assert!(answer.starts_with("HTTP/1.1 304"), "{answer}");
        assert!(held >= Duration::from_secs(7), "the long-poll was cut after {held:?}");
    })
    .await
    .unwrap();
    // Still serving.
    server.client().list_services().await.unwrap();
}

// ---- pipeline limits ----------------------------------------------------

async fn pipeline_limits(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let mut huge = String::from("service = \"api\"\n");
    for i in 0..50_000 {
        huge.push_str(&format!("[[environments]]\nname = \"e{i}\"\n"));
    }
    let started = Instant::now();
    let res = server
        .http(Method::PUT, "/v1/services/api/pipeline")
        .json(&serde_json::json!({ "spec": huge }))
        .send()
        .await
        .unwrap();
    let (status, code, message) = error(res).await;
    assert_eq!((status, code.as_str()), (413, "pipeline_too_large"), "{message}");
    assert!(message.contains("at most 262144 bytes"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    let mut many = String::from("service = \"api\"\n");
    for i in 0..101 {
        many.push_str(&format!("[[environments]]\nname = \"e{i}\"\n"));
    }
    let err = apply(server, w, &many).fails().to_string();
    assert!(err.contains("at most 100 are allowed per pipeline"), "{err}");
    let res = server
        .http(Method::PUT, "/v1/services/api/pipeline")
        .json(&serde_json::json!({ "spec": many }))
        .send()
        .await
        .unwrap();
    assert_eq!(error(res).await.1, "invalid_pipeline");
    let err = server.tug(w, &["pipeline", "show", "api"]).fails().to_string();
    assert!(err.contains("pipeline_not_found"), "nothing was stored: {err}");
}

on_both!(
    pipeline_limits,
    fifty_thousand_environments_are_refused_quickly,
    fifty_thousand_environments_are_refused_quickly_on_postgres
);

// ---- durations that would overflow --------------------------------------

async fn long_approval_timeouts(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let pipeline = |timeout: &str| {
        format!(
            "service = \"api\"\n[[environments]]\nname = \"prod\"\napprovals = 1\napproval_timeout = \"{timeout}\"\n"
        )
    };
    let err = apply(server, w, &pipeline("99999999d")).fails().to_string();
    assert!(
        err.contains("approval_timeout \"99999999d\" is too long: at most 365d (a year) is allowed"),
        "{err}"
    );
    // The longest allowed one works: the release waits for its approval,
    // which expires a year from now.
    apply(server, w, &pipeline("365d")).ok();
    let build = sealed_build(server, w, "1.0.0", b"one");
    let out = server
        .tug(
            w,
            &["release", "api", "--env", "prod", "--build", &build, "--output", "json"],
        )
        .json();
    let expires = out["pending"]["expires_at"].as_str().unwrap();
    let expires: chrono::DateTime<chrono::Utc> = expires.parse().unwrap();
    let left = expires - chrono::Utc::now();
    assert!(left > chrono::Duration::days(364), "{left}");
}

on_both!(
    long_approval_timeouts,
    approval_timeout_99999999d_is_refused_instead_of_panicking_every_release,
    approval_timeout_99999999d_is_refused_instead_of_panicking_every_release_on_postgres
);

// ---- every error is JSON ------------------------------------------------

/// Every route of the API with the methods it accepts.
const ROUTES: &[(&str, &[&str])] = &[
    ("/healthz", &["GET"]),
    ("/v1/services", &["GET", "POST"]),
    ("/v1/tokens", &["GET", "POST"]),
    ("/v1/tokens/{name}", &["DELETE"]),
    ("/v1/blobs/missing", &["POST"]),
    ("/v1/blobs/{digest}", &["GET", "HEAD", "PUT"]),
    ("/v1/builds", &["GET", "POST"]),
    ("/v1/builds/{build}", &["GET"]),
    ("/v1/builds/{build}/manifest", &["GET"]),
    ("/v1/builds/{build}/artifacts", &["POST"]),
    ("/v1/builds/{build}/seal", &["POST"]),
    ("/v1/builds/{build}/yank", &["POST"]),
    ("/v1/builds/{build}/unembargo", &["POST"]),
    ("/v1/builds/{build}/critical", &["POST"]),
    ("/v1/services/{service}/pipeline", &["GET", "PUT"]),
    ("/v1/services/{service}/pipeline/history", &["GET"]),
    ("/v1/services/{service}/release", &["POST"]),
    ("/v1/services/{service}/promote", &["POST"]),
    ("/v1/services/{service}/rollback", &["POST"]),
    ("/v1/services/{service}/approve", &["POST"]),
    ("/v1/services/{service}/reject", &["POST"]),
    ("/v1/services/{service}/status", &["GET"]),
    ("/v1/services/{service}/next-version", &["GET"]),
    ("/v1/services/{service}/diff", &["GET"]),
    ("/v1/services/{service}/environments/{env}/history", &["GET"]),
    ("/v1/services/{service}/environments/{env}/resume", &["POST"]),
    ("/v1/events", &["GET"]),
    ("/v1/channels/{service}/{env}", &["GET"]),
    ("/v1/webapi/automaticupgrades/channel/{service}/{env}/version", &["GET"]),
    (
        "/v1/webapi/automaticupgrades/channel/{service}/{env}/critical",
        &["GET"],
    ),
    ("/v1/agents/report", &["POST"]),
    ("/v1/agents", &["GET"]),
    ("/v1/services/{service}/rollout", &["GET"]),
    ("/v1/services/{service}/rollout/halt", &["POST"]),
    ("/v1/services/{service}/rollout/resume", &["POST"]),
    ("/v1/admin/fsck", &["POST"]),
    ("/v1/admin/gc", &["POST"]),
];

/// `pattern` with every `{param}` replaced by `with`.
fn fill(pattern: &str, with: &str) -> String {
    pattern
        .split('/')
        .map(|seg| if seg.starts_with('{') { with } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_wrong_methods_and_undecodable_paths_with_json() {
    let server = TestServer::start().await;
    let with = |method: &str, path: &str| server.http(Method::from_bytes(method.as_bytes()).unwrap(), path).send();

    // The two answers the issue found.
    let res = with("DELETE", "/v1/services").await.unwrap();
    assert_eq!(res.headers()["allow"], "GET,HEAD,POST");
    let (status, code, message) = error(res).await;
    assert_eq!((status, code.as_str()), (405, "method_not_allowed"));
    assert_eq!(
        message,
        "DELETE is not allowed on /v1/services; it accepts GET,HEAD,POST"
    );
    let (status, code, message) = error(with("GET", "/v1/builds/%FF%FE").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_path"), "{message}");
    assert!(message.contains("/v1/builds/%FF%FE"), "{message}");

    for (pattern, methods) in ROUTES {
        let path = fill(pattern, "x1");
        let res = with("PATCH", &path).await.unwrap();
        let allow = res.headers().get("allow").map(|v| v.to_str().unwrap().to_string());
        let (status, code, _) = error(res).await;
        assert_eq!((status, code.as_str()), (405, "method_not_allowed"), "PATCH {path}");
        let allow = allow.unwrap_or_else(|| panic!("PATCH {path}: no Allow header"));
        for m in *methods {
            assert!(allow.contains(m), "PATCH {path}: Allow {allow} lacks {m}");
        }
        if pattern.contains('{') {
            let path = fill(pattern, "%FF%FE");
            for m in methods.iter().filter(|m| **m != "HEAD") {
                let (status, code, message) = error(with(m, &path).await.unwrap()).await;
                assert_eq!((status, code.as_str()), (400, "invalid_path"), "{m} {path}: {message}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsatisfiable_range_names_the_blob_size() {
    let server = TestServer::start().await;
    let body = b"0123456789".to_vec();
    let digest = digest_of(&body);
    server.client().put_blob_bytes(&digest, body).await.unwrap();
    // Past the end (the store refuses it) and at the end (the route does).
    for range in ["bytes=20-", "bytes=10-", "bytes=11-15"] {
        let res = server
            .http(Method::GET, &format!("/v1/blobs/{digest}"))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.headers().get("content-range").map(|v| v.to_str().unwrap()),
            Some("bytes */10"),
            "{range}"
        );
        let (status, code, _) = error(res).await;
        assert_eq!((status, code.as_str()), (416, "range_not_satisfiable"), "{range}");
    }
}

async fn freeze_override_by_a_deployer(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    apply(
        server,
        w,
        "service = \"api\"\n[[environments]]\nname = \"prod\"\nfreeze = [{ from = \"2000-01-01T00:00:00Z\", until = \"2999-01-01T00:00:00Z\" }]\n",
    )
    .ok();
    let build = sealed_build(server, w, "1.0.0", b"one");
    let deployer = server
        .tug(
            w,
            &[
                "token", "create", "--name", "dep", "--role", "deployer", "--output", "json",
            ],
        )
        .json();
    let deployer = deployer["secret"].as_str().unwrap();
    let release = [
        "release",
        "api",
        "--env",
        "prod",
        "--build",
        &build,
        "--override",
        "--reason",
        "hotfix",
    ];
    let err = server.tug_as(deployer, w, &release).fails().to_string();
    assert!(err.contains("HTTP 403") && err.contains("forbidden"), "{err}");
    assert!(
        err.contains("only an admin token may override a freeze window"),
        "{err}"
    );
    server.tug(w, &release).ok();
}

on_both!(
    freeze_override_by_a_deployer,
    a_freeze_override_by_a_deployer_is_forbidden_not_invalid,
    a_freeze_override_by_a_deployer_is_forbidden_not_invalid_on_postgres
);

// ---- commits and versions -----------------------------------------------

async fn commits_and_versions(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    write_files(w, &[("app.bin", b"the app")]);

    // An unset $GIT_SHA, or something that is no commit: refused by the CLI
    // before anything is sent.
    for commit in ["", "not a sha!"] {
        let err = server
            .tug(
                w,
                &[
                    "push",
                    "--service",
                    "api",
                    "--branch",
                    "master",
                    "--commit",
                    commit,
                    "--seal",
                    "app.bin",
                ],
            )
            .fails()
            .to_string();
        assert!(
            err.contains("a commit must be a hexadecimal git object id of 4 to 64 digits")
                && err.contains("is $GIT_SHA set?"),
            "{commit:?}: {err}"
        );
    }
    assert_eq!(
        server.client().head_blob(&digest_of(b"the app")).await.unwrap(),
        None,
        "nothing was uploaded"
    );
    // …and by the server.
    for commit in ["", "not a sha!", "abc"] {
        let res = server
            .http(Method::POST, "/v1/builds")
            .json(&serde_json::json!({"service": "api", "version": "1.0.0", "source": {"commit": commit}}))
            .send()
            .await
            .unwrap();
        let (status, code, message) = error(res).await;
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{message}");
        assert!(message.starts_with("source.commit"), "{message}");
    }
    let builds = server
        .tug(w, &["build", "list", "--service", "api", "--output", "json"])
        .json();
    assert_eq!(builds, serde_json::json!([]), "no build was created");

    // One command's output is the next one's input: `tug version next`
    // prints a leading v, which every command reading a version accepts.
    let next = server
        .tug(w, &["version", "next", "--service", "api", "--minor"])
        .ok()
        .trim()
        .to_string();
    assert!(next.starts_with('v'), "{next}");
    let id = server
        .tug(
            w,
            &[
                "build",
                "create",
                "--service",
                "api",
                "--version",
                &next,
                "--commit",
                "4f2a9c1e",
            ],
        )
        .ok()
        .trim()
        .to_string();
    let shown = server.tug(w, &["build", "show", &id, "--output", "json"]).json();
    assert_eq!(shown["version"], next.trim_start_matches('v'), "stored without the v");
    server.tug(w, &["push", &id, "app.bin"]).ok();
    server.tug(w, &["build", "seal", &id]).ok();
    apply(server, w, "service = \"api\"\n[[environments]]\nname = \"prod\"\n").ok();
    let out = server
        .tug(
            w,
            &[
                "release",
                "api",
                "--env",
                "prod",
                "--version",
                &next,
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(out["deployment"]["build"], id.as_str());
    let listed = server
        .tug(
            w,
            &[
                "build",
                "list",
                "--service",
                "api",
                "--version",
                &next,
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    let cloud = server
        .tug(
            w,
            &[
                "version",
                "next",
                "--service",
                "api",
                "--cloud",
                "--commit",
                "4f2a9c1e77",
            ],
        )
        .ok()
        .trim()
        .to_string();
    server
        .tug(
            w,
            &[
                "build",
                "create",
                "--service",
                "api",
                "--version",
                &cloud,
                "--commit",
                "4f2a9c1e77",
            ],
        )
        .ok();
}

on_both!(
    commits_and_versions,
    empty_or_invalid_commits_are_refused_and_versions_with_v_round_trip,
    empty_or_invalid_commits_are_refused_and_versions_with_v_round_trip_on_postgres
);
