//! Channels, agent reports and the fleet view, through the real server:
//! what an environment wants agents of a platform to run, long-polls that
//! answer soon after a change, Teleport's plain-text updater endpoints, and
//! the agent role's narrow rights.

use std::time::{Duration, Instant};

use tug_core::{ArtifactKind, ArtifactName, ArtifactSpec, Digest, EnvName, Platform, ServiceName};

use crate::support::TestServer;

const PIPELINE: &str = r#"
service = "web"

[[environments]]
name = "prod"

[[environments]]
name = "sec"
private = true
"#;

/// A sealed build of `web` with one artifact per platform and one for all.
pub(crate) async fn build(server: &TestServer, version: &str) -> String {
    let client = server.client();
    let b = client
        .create_build(&tug_api::CreateBuild {
            service: ServiceName::parse("web").unwrap(),
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
    for (name, platform) in [
        ("web-amd64", Some("linux/amd64")),
        ("web-arm64", Some("linux/arm64")),
        ("config.json", None),
    ] {
        let body = format!("{name} {version}").into_bytes();
        let digest = Digest::of(&body);
        client.put_blob_bytes(&digest, body.clone()).await.unwrap();
        specs.push(ArtifactSpec {
            name: ArtifactName::parse(name).unwrap(),
            kind: ArtifactKind::Binary,
            platform: platform.map(|p| Platform::parse(p).unwrap()),
            size: body.len() as u64,
            digest,
            derived_from: vec![],
        });
    }
    client.register_artifacts(b.id.as_str(), specs).await.unwrap();
    client.seal(b.id.as_str()).await.unwrap();
    b.id.to_string()
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
    server.tug(w, &["service", "create", "web"]).ok();
    std::fs::write(w.join("p.toml"), PIPELINE).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "p.toml"]).ok();
    let t = server
        .tug(
            w,
            &[
                "token", "create", "--name", "agent-1", "--role", "agent", "--output", "json",
            ],
        )
        .json();
    let agent = server.client_with(t["secret"].as_str().unwrap());
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
        .bearer_auth(t["secret"].as_str().unwrap())
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
    server.tug(w, &["service", "create", "web"]).ok();
    std::fs::write(w.join("p.toml"), PIPELINE).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "p.toml"]).ok();
    let t = server
        .tug(
            w,
            &[
                "token", "create", "--name", "agent-1", "--role", "agent", "--output", "json",
            ],
        )
        .json();
    let agent_token = t["secret"].as_str().unwrap().to_string();
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
    server.tug(w, &["service", "create", "web"]).ok();
    std::fs::write(w.join("p.toml"), PIPELINE).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "p.toml"]).ok();
    let t = server
        .tug(
            w,
            &[
                "token", "create", "--name", "agent-1", "--role", "agent", "--output", "json",
            ],
        )
        .json();
    let token = t["secret"].as_str().unwrap().to_string();

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
