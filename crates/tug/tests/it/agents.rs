//! Channels, agent reports and the fleet view, through the real server:
//! what an environment wants agents of a platform to run, long-polls that
//! answer soon after a change, Teleport's plain-text updater endpoints, the
//! agent role's narrow rights, and `tug agent` as a process: killed with
//! `kill -9` at rest and mid-update, and on a full disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tug_core::{ArtifactKind, ArtifactName, ArtifactSpec, Digest, EnvName, Platform, ServiceName};

use crate::support::TestServer;

pub(crate) const PIPELINE: &str = r#"
service = "web"

[[environments]]
name = "prod"

[[environments]]
name = "sec"
private = true
"#;

/// A sealed build of `service` (branch `master`) with `files`: name,
/// platform (none: for all) and contents.
pub(crate) async fn sealed(
    server: &TestServer,
    service: &str,
    version: &str,
    files: &[(&str, Option<&str>, Vec<u8>)],
) -> String {
    let client = server.client();
    let b = client
        .create_build(&tug_api::CreateBuild {
            service: ServiceName::parse(service).unwrap(),
            version: tug_core::Version::parse(version).unwrap(),
            source: tug_core::BuildSource {
                branch: Some("master".into()),
                ..Default::default()
            },
            ci: Default::default(),
            expected: vec![],
            embargoed: false,
        })
        .await
        .unwrap();
    let mut specs = Vec::new();
    for (name, platform, body) in files {
        let digest = Digest::of(body);
        client.put_blob_bytes(&digest, body.clone()).await.unwrap();
        specs.push(ArtifactSpec {
            name: ArtifactName::parse(name).unwrap(),
            kind: ArtifactKind::Binary,
            platform: platform.map(|p| Platform::parse(p).unwrap()),
            size: body.len() as u64,
            digest,
            derived_from: vec![],
            executable: false,
            uri: None,
        });
    }
    client.register_artifacts(b.id.as_str(), specs).await.unwrap();
    client.seal(b.id.as_str()).await.unwrap();
    b.id.to_string()
}

/// A sealed build of `web` with one artifact per platform and one for all.
pub(crate) async fn build(server: &TestServer, version: &str) -> String {
    let files: Vec<(&str, Option<&str>, Vec<u8>)> = [
        ("web-amd64", Some("linux/amd64")),
        ("web-arm64", Some("linux/arm64")),
        ("config.json", None),
    ]
    .into_iter()
    .map(|(name, platform)| (name, platform, format!("{name} {version}").into_bytes()))
    .collect();
    sealed(server, "web", version, &files).await
}

pub(crate) fn release(server: &TestServer, build: &str, env: &str) {
    let w = tempfile::tempdir().unwrap();
    server
        .tug(w.path(), &["release", "web", "--env", env, "--build", build])
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_long_poll_and_teleport_endpoints() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let secret = setup(&server, w);
    let agent = server.client_with(&secret);
    let (web, prod, amd64) = (
        ServiceName::parse("web").unwrap(),
        EnvName::parse("prod").unwrap(),
        Platform::parse("linux/amd64").unwrap(),
    );

    // Nothing yet: no build, and Teleport's updater hears "none".
    let (empty, etag0) = agent
        .channel(&web, &prod, &amd64, None, None, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(empty.build, None);
    let plain = |path: &str| {
        let url = format!("{}/v1/webapi/automaticupgrades/channel/web/{path}", server.url);
        async move {
            let res = reqwest::get(url).await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    assert_eq!(
        plain("prod/version").await,
        (200, "none".to_string()),
        "no token needed"
    );

    let v1 = build(&server, "1.0.0").await;
    release(&server, &v1, "prod");
    // A long-poll on the old ETag answers as soon as the server sees the
    // release (answers are shared until the next change is seen).
    let (c, etag1) = agent
        .channel(&web, &prod, &amd64, None, Some(&etag0), Some(Duration::from_secs(10)))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(etag0, etag1);
    assert_eq!(c.build.as_ref().map(|b| b.as_str()), Some(v1.as_str()));
    assert_eq!(c.version.as_ref().map(|v| v.to_string()).as_deref(), Some("1.0.0"));
    let names: Vec<&str> = c.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["config.json", "web-amd64"],
        "the asked platform's files and those for all"
    );
    // An agent token fetches what its channel names.
    let bytes = reqwest::Client::new()
        .get(format!("{}{}", server.url, c.artifacts[1].url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(Digest::of(&bytes), c.artifacts[1].digest);
    // Public answers are cached until the server sees the next change.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = plain("prod/version").await;
        if got == (200, "v1.0.0".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "prod/version: {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Public answers are cached until the server sees the next change.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = plain("prod/critical").await;
        if got == (200, "no".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "prod/critical: {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(plain("sec/version").await.0, 404, "private environments are not public");

    // Unchanged: a plain poll is 304; a long-poll waits its time, then 304.
    assert!(agent
        .channel(&web, &prod, &amd64, None, Some(&etag1), None)
        .await
        .unwrap()
        .is_none());
    let started = Instant::now();
    assert!(agent
        .channel(&web, &prod, &amd64, None, Some(&etag1), Some(Duration::from_secs(1)))
        .await
        .unwrap()
        .is_none());
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A long-poll answers soon after a release.
    let waiting = {
        let (agent, web, prod, amd64, etag1) = (agent.clone(), web.clone(), prod.clone(), amd64.clone(), etag1.clone());
        tokio::spawn(async move {
            agent
                .channel(&web, &prod, &amd64, None, Some(&etag1), Some(Duration::from_secs(30)))
                .await
        })
    };
    let v2 = build(&server, "1.1.0").await;
    let released = Instant::now();
    release(&server, &v2, "prod");
    let (c2, etag2) = waiting
        .await
        .unwrap()
        .unwrap()
        .expect("the long-poll answers with the new build");
    assert_eq!(c2.build.as_ref().map(|b| b.as_str()), Some(v2.as_str()));
    assert!(
        released.elapsed() < Duration::from_secs(3),
        "took {:?}",
        released.elapsed()
    );

    // A critical build: the channel and Teleport's updater say so.
    assert!(!c2.critical);
    server.tug(w, &["build", "mark-critical", &v2]).ok();
    let (c3, _) = agent
        .channel(&web, &prod, &amd64, None, Some(&etag2), Some(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("marking the build critical changes the channel's answer");
    assert!(c3.critical);
    // Public answers are cached until the server sees the next change.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = plain("prod/critical").await;
        if got == (200, "yes".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "prod/critical: {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let draft = server
        .tug(w, &["build", "create", "--service", "web", "--version", "9.0.0"])
        .ok()
        .trim()
        .to_string();
    assert!(server
        .tug(w, &["build", "mark-critical", &draft])
        .fails()
        .contains("only sealed builds"));

    // Bad input.
    let err = agent
        .channel(&web, &EnvName::parse("qa").unwrap(), &amd64, None, None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("environment_not_found"));
    let res = server
        .http(reqwest::Method::GET, "/v1/channels/web/prod?platform=amd64")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = server
        .http(
            reqwest::Method::GET,
            "/v1/channels/web/prod?platform=linux/amd64&wait=1h",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_report_and_the_fleet_shows_them() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let agent_token = setup(&server, w);
    let agent = server.client_with(&agent_token);
    let v1 = build(&server, "1.0.0").await;
    release(&server, &v1, "prod");

    let report =
        |id: &str, build: Option<&str>, state: tug_api::AgentState, error: Option<&str>| tug_api::AgentReport {
            agent_id: id.to_string(),
            hostname: format!("host-{id}"),
            platform: Platform::parse("linux/amd64").unwrap(),
            agent_version: "0.1.0".into(),
            service: ServiceName::parse("web").unwrap(),
            environment: EnvName::parse("prod").unwrap(),
            build: build.map(|b| tug_core::BuildId::parse(b).unwrap()),
            state,
            error: error.map(str::to_string),
            failed_build: None,
            waiting: None,
            exit: None,
        };
    agent
        .report(&report("a1", Some(&v1), tug_api::AgentState::Healthy, None))
        .await
        .unwrap();
    agent
        .report(&report("a2", Some(&v1), tug_api::AgentState::Healthy, None))
        .await
        .unwrap();
    agent
        .report(&report(
            "a3",
            None,
            tug_api::AgentState::Failed,
            Some("health check timed out"),
        ))
        .await
        .unwrap();
    // A newer report replaces the older one.
    agent
        .report(&report("a2", Some(&v1), tug_api::AgentState::Downloading, None))
        .await
        .unwrap();

    let fleet = server
        .tug(w, &["agents", "--service", "web", "--output", "json"])
        .json();
    assert_eq!(fleet.as_array().unwrap().len(), 3);
    assert_eq!(fleet[1]["agent_id"], "a2");
    assert_eq!(fleet[1]["state"], "downloading");
    assert_eq!(fleet[2]["error"], "health check timed out");
    let table = server.tug(w, &["agents"]).ok().to_string();
    assert!(
        table.contains("host-a3") && table.contains("health check timed out"),
        "{table}"
    );
    let status = server.tug(w, &["status", "web", "--output", "json"]).json();
    let counts = &status["environments"][0]["agents"];
    assert_eq!(
        (counts["total"].as_u64(), counts["on_current"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(
        (counts["healthy"].as_u64(), counts["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(server
        .tug(w, &["status", "web"])
        .ok()
        .contains("2/3 on it, 1 healthy, 1 failed"));

    // The agent role reads its channel and reports, nothing else.
    for args in [
        vec!["build", "list", "--service", "web"],
        vec!["status", "web"],
        vec!["agents"],
    ] {
        let err = server.tug_as(&agent_token, w, &args).fails().to_string();
        assert!(err.contains("HTTP 403"), "{args:?}: {err}");
    }
    let err = agent
        .report(&tug_api::AgentReport {
            environment: EnvName::parse("qa").unwrap(),
            ..report("a4", None, tug_api::AgentState::Idle, None)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("environment_not_found"));
    let err = agent
        .report(&report(
            "a5",
            Some("0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70"),
            tug_api::AgentState::Idle,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("build_not_found"));
    let v = server
        .tug(
            w,
            &[
                "token", "create", "--name", "eve", "--role", "viewer", "--output", "json",
            ],
        )
        .json();
    let err = server
        .client_with(v["secret"].as_str().unwrap())
        .report(&report("a6", None, tug_api::AgentState::Idle, None))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403));
    let res = server
        .http(reqwest::Method::POST, "/v1/agents/report")
        .json(&serde_json::json!({"agent_id": "x", "colour": "red"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

/// `tug agent` as a real process: installs the released build, runs it,
/// checks its health and reports; the next release replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_installs_runs_and_reports() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let token = setup(&server, w);

    // A tiny service: it writes which version runs, then stays up.
    let release_of = |version: &str| -> String {
        let dir = w.join(format!("build-{version}"));
        let script = format!("#!/bin/sh\necho {version} > \"$TUG_AGENT_OUT/running\"\nexec sleep 600\n");
        crate::support::write_files(&dir, &[("serve.sh", script.as_bytes())]);
        let out = server
            .tug(
                w,
                &[
                    "push",
                    "--service",
                    "web",
                    "--version",
                    version,
                    "--kind",
                    "binary",
                    "--seal",
                    dir.join("serve.sh").to_str().unwrap(),
                    "--output",
                    "json",
                ],
            )
            .json();
        let id = out["build"].as_str().unwrap().to_string();
        server.tug(w, &["release", "web", "--env", "prod", "--build", &id]).ok();
        id
    };
    let out_dir = w.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let running = out_dir.join("running");
    let v1 = release_of("1.0.0");

    let err = server
        .tug_as("", w, &["agent", "--service", "web", "--env", "prod", "--dir", "x"])
        .fails()
        .to_string();
    assert!(err.contains("agent role"), "{err}");
    let health = format!("test -f {}", running.display());
    let agent_dir = w.join("agent");
    let child = std::process::Command::new(crate::support::TUG)
        .args([
            "agent",
            "--service",
            "web",
            "--env",
            "prod",
            "--dir",
            agent_dir.to_str().unwrap(),
        ])
        .args(["--exec", "./serve.sh", "--health-cmd", &health, "--heartbeat", "1"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("TUG_SERVER", &server.url)
        .env("TUG_TOKEN", &token)
        .env("TUG_AGENT_OUT", &out_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(w.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let mut agent = crate::support::KillOnDrop(child);
    let log = || std::fs::read_to_string(w.join("agent.log")).unwrap_or_default();
    let healthy_on = |build: &str| {
        let fleet = server
            .tug(w, &["agents", "--service", "web", "--output", "json"])
            .json();
        let agents = fleet.as_array().unwrap().clone();
        (agents.len() == 1 && agents[0]["state"] == "healthy" && agents[0]["build"] == build).then_some(())
    };
    crate::support::eventually(60, || healthy_on(&v1));
    assert_eq!(std::fs::read_to_string(&running).unwrap().trim(), "1.0.0", "{}", log());
    assert!(agent_dir.join("current/serve.sh").exists());

    std::fs::remove_file(&running).unwrap();
    let v2 = release_of("2.0.0");
    crate::support::eventually(60, || healthy_on(&v2));
    assert_eq!(std::fs::read_to_string(&running).unwrap().trim(), "2.0.0", "{}", log());
    let status = server.tug(w, &["status", "web", "--output", "json"]).json();
    assert_eq!(status["environments"][0]["agents"]["on_current"], 1);

    // SIGTERM stops the agent and the service it supervises.
    std::process::Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap();
    let exited = crate::support::eventually(30, || agent.0.try_wait().unwrap());
    assert!(exited.success(), "{exited:?}: {}", log());
}

// ---- `tug agent` killed, restarted, and out of space ----

/// A service for the agent to supervise: serves `VERSION PID` over HTTP on
/// `$SERVICE_PORT` and, once it listens, writes the same to
/// `$TUG_AGENT_OUT/running`.
fn service_script(version: &str) -> String {
    format!(
        r#"#!/bin/sh
exec python3 -c '
import http.server, os, sys
body = ("%s %d\n" % (sys.argv[1], os.getpid())).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["SERVICE_PORT"])), H)
out = os.environ["TUG_AGENT_OUT"]
with open(out + "/running.tmp", "w") as f:
    f.write(body.decode())
os.rename(out + "/running.tmp", out + "/running")
server.serve_forever()
' {version}
"#
    )
}

/// Healthy when the service that listens is the version being activated.
const SERVICE_HEALTH: &str = r#"test "$(cut -d' ' -f1 "$TUG_AGENT_OUT/running" 2>/dev/null)" = "$TUG_VERSION""#;

/// What the service on `port` answers (`VERSION PID`), if it answers.
fn ask(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut res = String::new();
    s.read_to_string(&mut res).ok()?;
    res.split_once("\r\n\r\n").map(|(_, body)| body.trim().to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `pid` is alive (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// The live python processes serving on `port` (found by the port in
/// their environment).
fn service_pids(port: u16) -> Vec<u32> {
    let want = format!("SERVICE_PORT={port}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            alive(pid)
                && environ.split(|&b| b == 0).any(|v| v == want.as_bytes())
                && String::from_utf8_lossy(&cmdline).contains("python3")
        })
        .collect()
}

fn pid_of(answer: &str) -> u32 {
    answer.split(' ').nth(1).and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// The service `web` with `prod`, and an agent token.
fn setup(server: &TestServer, w: &Path) -> String {
    setup_service(server, w, "web", PIPELINE)
}

/// Creates `service` with `pipeline` and returns a new agent token.
pub(crate) fn setup_service(server: &TestServer, w: &Path, service: &str, pipeline: &str) -> String {
    server.tug(w, &["service", "create", service]).ok();
    std::fs::write(w.join("p.toml"), pipeline).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "p.toml"]).ok();
    let t = server
        .tug(
            w,
            &[
                "token", "create", "--name", "agent-1", "--role", "agent", "--output", "json",
            ],
        )
        .json();
    t["secret"].as_str().unwrap().to_string()
}

/// Creates, fills, seals and releases into `prod` a build of `files`.
async fn ship(server: &TestServer, version: &str, files: &[(&str, Vec<u8>)]) -> String {
    let files: Vec<(&str, Option<&str>, Vec<u8>)> = files.iter().map(|(n, b)| (*n, None, b.clone())).collect();
    let id = sealed(server, "web", version, &files).await;
    release(server, &id, "prod");
    id
}

/// `tug agent` as a process of its own, supervising the service on `port`.
struct AgentProcess {
    child: std::process::Child,
    out: PathBuf,
}

impl AgentProcess {
    /// Runs `tug agent` with `args` after the common ones; with `tmpfs`, in
    /// a mount namespace of its own where its directory is a tmpfs mounted
    /// with those options (gone with the namespace's last process).
    fn start(server: &TestServer, token: &str, w: &Path, port: u16, args: &[&str], tmpfs: Option<&str>) -> Self {
        let out = w.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let dir = w.join("agent");
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = match tmpfs {
            Some(options) => {
                let mut c = std::process::Command::new("unshare");
                c.args([
                    "-m",
                    "sh",
                    "-c",
                    "mount -t tmpfs -o \"$1\" tug-agent \"$2\" && shift 2 && exec \"$@\"",
                    "sh",
                ])
                .arg(options)
                .arg(&dir)
                .arg(crate::support::TUG);
                c
            }
            None => std::process::Command::new(crate::support::TUG),
        };
        cmd.args(["agent", "--service", "web", "--env", "prod", "--dir"])
            .arg(&dir)
            .args([
                "--exec",
                "./serve.sh",
                "--health-cmd",
                SERVICE_HEALTH,
                "--heartbeat",
                "1",
            ])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("TUG_SERVER", &server.url)
            .env("TUG_TOKEN", token)
            .env("TUG_AGENT_OUT", &out)
            .env("SERVICE_PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(w.join("agent.log"))
                    .unwrap(),
            );
        AgentProcess {
            child: cmd.spawn().unwrap(),
            out,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no chance to stop what it supervises.
    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the agent stops its service and exits 0.
    fn terminate(&mut self) -> std::process::ExitStatus {
        std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        crate::support::eventually(30, || self.child.try_wait().unwrap())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // A failed test must not leave the service behind either.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let running = std::fs::read_to_string(self.out.join("running")).unwrap_or_default();
        let pid = pid_of(running.trim());
        if pid > 0 && alive(pid) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// What `tug agents` says of the only agent: (state, build, error).
fn fleet(server: &TestServer, w: &Path) -> Option<(String, String, String)> {
    let fleet = server
        .tug(w, &["agents", "--service", "web", "--output", "json"])
        .json();
    let agents = fleet.as_array()?;
    let a = (agents.len() == 1).then(|| &agents[0])?;
    let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
    Some((s("state"), s("build"), s("error")))
}

fn on(server: &TestServer, w: &Path, state: &str, build: &str) -> Option<()> {
    fleet(server, w)
        .filter(|(s, b, _)| s == state && b == build)
        .map(|_| ())
}

/// The agent's `state.json`.
fn agent_state(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap_or_default()).unwrap_or_default()
}

fn current_of(dir: &Path) -> String {
    std::fs::read_link(dir.join("current"))
        .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The names under `releases/`, sorted.
fn releases_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// After `kill -9` of the agent, its service runs on; the restarted agent
/// stops that one before it starts its own, so one instance serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_stops_the_service_its_killed_predecessor_left() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let token = setup(&server, w);
    let port = free_port();
    let v1 = ship(&server, "1.0.0", &[("serve.sh", service_script("1.0.0").into_bytes())]).await;
    let mut agent = AgentProcess::start(&server, &token, w, port, &[], None);
    let log = || std::fs::read_to_string(w.join("agent.log")).unwrap_or_default();
    crate::support::eventually(60, || on(&server, w, "healthy", &v1));
    let first = crate::support::eventually(10, || ask(port));
    let old = pid_of(&first);
    assert!(first.starts_with("1.0.0 ") && alive(old), "{first}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("agent/supervised.pid")).unwrap()).unwrap();
    assert!(record["pgid"].as_u64().is_some_and(|g| g > 0), "{record}");

    agent.kill9();
    assert!(alive(old), "the service does not die with the agent");
    assert_eq!(ask(port).as_deref(), Some(first.as_str()));

    let mut agent = AgentProcess::start(&server, &token, w, port, &[], None);
    let second = crate::support::eventually(60, || ask(port).filter(|a| a.starts_with("1.0.0 ") && pid_of(a) != old));
    let new = pid_of(&second);
    crate::support::eventually(10, || (!alive(old)).then_some(()));
    assert_eq!(service_pids(port), vec![new], "{}", log());
    crate::support::eventually(30, || on(&server, w, "healthy", &v1));
    assert!(
        log().contains("stopped the process an earlier agent left running"),
        "{}",
        log()
    );

    assert!(agent.terminate().success(), "{}", log());
    crate::support::eventually(10, || (!alive(new)).then_some(()));
    assert!(!w.join("agent/supervised.pid").exists());
}

/// `kill -9` in the middle of updates: once while the activation hook
/// runs (the restarted agent finishes the update) and once while the
/// health check of a bad build waits (the restarted agent undoes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_update_is_finished_or_undone_after_restart() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let dir = w.join("agent");
    let token = setup(&server, w);
    let port = free_port();
    let log = || std::fs::read_to_string(w.join("agent.log")).unwrap_or_default();
    // Slow once, for 2.0.0: long enough to be killed in.
    let hook = r#"if [ "$TUG_VERSION" = 2.0.0 ] && [ ! -e "$TUG_AGENT_OUT/hook-slowed" ]; then
        echo $$ > "$TUG_AGENT_OUT/hook-slowed.tmp" && mv "$TUG_AGENT_OUT/hook-slowed.tmp" "$TUG_AGENT_OUT/hook-slowed"
        exec sleep 120
    fi"#;
    let args = |timeout: &'static str| ["--on-activate", hook, "--health-timeout", timeout];
    let v1 = ship(&server, "1.0.0", &[("serve.sh", service_script("1.0.0").into_bytes())]).await;
    let mut agent = AgentProcess::start(&server, &token, w, port, &args("60"), None);
    crate::support::eventually(60, || on(&server, w, "healthy", &v1));
    let p1 = pid_of(&ask(port).unwrap());

    // Killed while the hook of 2.0.0 runs: `current` already names the
    // complete new release, the old service still runs.
    let v2 = ship(&server, "2.0.0", &[("serve.sh", service_script("2.0.0").into_bytes())]).await;
    let hook_pid: u32 = crate::support::eventually(60, || {
        std::fs::read_to_string(w.join("out/hook-slowed"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    agent.kill9();
    std::process::Command::new("kill")
        .args(["-KILL", &hook_pid.to_string()])
        .status()
        .unwrap();
    assert_eq!(current_of(&dir), v2);
    assert!(dir.join("releases").join(&v2).join("serve.sh").exists());
    assert_eq!(agent_state(&dir)["activating"], v2.as_str());
    assert!(alive(p1));

    let mut agent = AgentProcess::start(&server, &token, w, port, &args("60"), None);
    crate::support::eventually(60, || on(&server, w, "healthy", &v2));
    let answer = crate::support::eventually(10, || ask(port).filter(|a| a.starts_with("2.0.0 ")));
    let p2 = pid_of(&answer);
    assert_eq!(service_pids(port), vec![p2], "{}", log());
    assert!(!alive(p1));
    assert_eq!(current_of(&dir), v2);
    assert!(agent_state(&dir)["activating"].is_null());
    assert!(!releases_in(&dir).iter().any(|r| r.ends_with(".tmp")));

    // Killed while the health check of a build that never becomes healthy
    // waits; restarted with a short timeout, the agent rolls it back.
    let v3 = ship(&server, "3.0.0", &[("serve.sh", service_script("2.9.9").into_bytes())]).await;
    crate::support::eventually(60, || {
        let running = std::fs::read_to_string(w.join("out/running")).ok()?;
        (running.starts_with("2.9.9 ") && agent_state(&dir)["activating"] == v3.as_str()).then_some(())
    });
    agent.kill9();
    assert_eq!(current_of(&dir), v3);
    let p3 = pid_of(&ask(port).unwrap());

    let mut agent = AgentProcess::start(&server, &token, w, port, &args("3"), None);
    let (_, _, error) =
        crate::support::eventually(60, || fleet(&server, w).filter(|(s, b, _)| s == "failed" && b == &v2));
    assert!(error.contains(&v3), "{error}");
    assert_eq!(current_of(&dir), v2);
    let state = agent_state(&dir);
    assert_eq!(state["failed"]["build"], v3.as_str());
    assert!(state["activating"].is_null());
    let answer = crate::support::eventually(10, || ask(port).filter(|a| a.starts_with("2.0.0 ")));
    assert_eq!(service_pids(port), vec![pid_of(&answer)], "{}", log());
    assert!(!alive(p3));
    assert!(!releases_in(&dir).iter().any(|r| r.ends_with(".tmp")));
    assert!(agent.terminate().success(), "{}", log());
}

/// The agent's directory is a small tmpfs. A build too big for the space
/// left is refused before any byte is downloaded, and installed once
/// space is freed; a build whose assembly runs out of inodes leaves
/// nothing behind. The running build and its service stay all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_the_running_build() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let token = setup(&server, w);
    let port = free_port();
    let log = || std::fs::read_to_string(w.join("agent.log")).unwrap_or_default();
    let v1 = ship(&server, "1.0.0", &[("serve.sh", service_script("1.0.0").into_bytes())]).await;
    let agent = AgentProcess::start(&server, &token, w, port, &[], Some("size=2m,nr_inodes=64"));
    // The tmpfs is in the agent's mount namespace only: seen through its
    // root.
    let dir = PathBuf::from(format!("/proc/{}/root{}", agent.pid(), w.join("agent").display()));
    crate::support::eventually(60, || on(&server, w, "healthy", &v1));
    let first = crate::support::eventually(10, || ask(port));
    assert!(first.starts_with("1.0.0 "), "{first}");
    let df = |what: &str| -> u64 {
        let out = std::process::Command::new("stat")
            .args(["-f", "-c", what])
            .arg(&dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    assert_eq!(df("%b") * df("%S"), 2 << 20, "the agent's directory is the tmpfs");

    // 1 MiB taken by someone else: 1.5 MiB more do not fit.
    std::fs::write(dir.join("filler"), vec![0u8; 1 << 20]).unwrap();
    let ballast = vec![7u8; 3 << 19];
    let v2 = ship(
        &server,
        "2.0.0",
        &[("serve.sh", service_script("2.0.0").into_bytes()), ("ballast", ballast)],
    )
    .await;
    let (_, _, error) = crate::support::eventually(60, || {
        fleet(&server, w).filter(|(s, b, e)| s == "failed" && b == &v1 && !e.is_empty())
    });
    assert!(error.contains("no space left") && error.contains(&v2), "{error}");
    assert_eq!(current_of(&dir), v1);
    assert_eq!(ask(port).as_deref(), Some(first.as_str()), "the service is untouched");
    assert_eq!(releases_in(&dir), vec![v1.clone()]);
    assert_eq!(std::fs::read_dir(dir.join("cache/sha256")).unwrap().count(), 1);
    assert!(agent_state(&dir)["failed"].is_null(), "retried, not given up on");

    // Space freed: the agent's retries install it.
    std::fs::remove_file(dir.join("filler")).unwrap();
    crate::support::eventually(60, || on(&server, w, "healthy", &v2));
    assert!(ask(port).unwrap().starts_with("2.0.0 "));

    // More directories than free inodes: assembly fails midway, and what
    // it made is removed (or the next build would not fit either).
    let dirs = df("%d") + 16;
    let files: Vec<(String, Vec<u8>)> = (0..dirs).map(|i| (format!("d{i:03}/x"), b"x".to_vec())).collect();
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let v3 = ship(&server, "3.0.0", &files).await;
    let (_, _, error) = crate::support::eventually(60, || {
        fleet(&server, w).filter(|(s, b, e)| s == "failed" && b == &v2 && !e.is_empty())
    });
    assert!(error.contains("No space left on device"), "{error}");
    assert!(ask(port).unwrap().starts_with("2.0.0 "));
    assert_eq!(current_of(&dir), v2);
    let v4 = ship(&server, "4.0.0", &[("serve.sh", service_script("4.0.0").into_bytes())]).await;
    crate::support::eventually(60, || on(&server, w, "healthy", &v4));
    assert!(ask(port).unwrap().starts_with("4.0.0 "));
    let releases = releases_in(&dir);
    assert!(!releases.iter().any(|r| r.starts_with(&v3)), "{releases:?}: {}", log());
    assert!(!std::fs::read_dir(dir.join("manifests")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(&v3)));
    drop(agent);
}
