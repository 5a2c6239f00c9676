//! Paced rollouts, maintenance windows, health-aware soak and compatibility
//! through the real server. The agents here are API clients that ask their
//! channel and report as `tug agent` does, so a test can stand in any
//! number of them and make each succeed or fail on cue.

use std::time::{Duration, Instant};

use tug_api::{AgentReport, AgentState, Channel};
use tug_core::{BuildId, EnvName, Platform, ServiceName};

use crate::agents::{build, release};
use crate::support::TestServer;

/// One simulated agent of `service` in `env`.
struct Sim {
    client: tug_client::Client,
    id: String,
    service: ServiceName,
    env: EnvName,
}

impl Sim {
    fn report_of(&self, build: Option<&str>, state: AgentState, failed: Option<&str>) -> AgentReport {
        AgentReport {
            agent_id: self.id.clone(),
            hostname: format!("host-{}", self.id),
            platform: Platform::parse("linux/amd64").unwrap(),
            agent_version: "0.1.0".into(),
            service: self.service.clone(),
            environment: self.env.clone(),
            build: build.map(|b| BuildId::parse(b).unwrap()),
            state,
            error: failed.map(|_| "health check failed: HTTP 500".to_string()),
            failed_build: failed.map(|b| BuildId::parse(b).unwrap()),
            waiting: None,
            exit: None,
        }
    }

    async fn report(&self, build: &str, state: AgentState) {
        self.client
            .report(&self.report_of(Some(build), state, None))
            .await
            .unwrap();
    }

    /// Reports that the agent tried `bad`, failed and went back to `good`.
    async fn fail(&self, good: &str, bad: &str) {
        self.client
            .report(&self.report_of(Some(good), AgentState::Failed, Some(bad)))
            .await
            .unwrap();
    }

    /// Asks until the answer satisfies `want` (a plain poll may see the
    /// answer from before a change for up to the server's change-poll
    /// interval), for up to 5 s.
    async fn ask_until(&self, want: impl Fn(&Channel) -> bool) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (c, _) = self.ask().await;
            if want(&c) || Instant::now() > deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ask(&self) -> (Channel, String) {
        self.client
            .channel(
                &self.service,
                &self.env,
                &Platform::parse("linux/amd64").unwrap(),
                Some(&self.id),
                None,
                None,
            )
            .await
            .unwrap()
            .unwrap()
    }
}

async fn setup(pipeline: &str, service: &str) -> (TestServer, String) {
    setup_on(TestServer::start().await, pipeline, service).await
}

async fn setup_on(server: TestServer, pipeline: &str, service: &str) -> (TestServer, String) {
    let w = tempfile::tempdir().unwrap();
    let token = crate::agents::setup_service(&server, w.path(), service, pipeline);
    (server, token)
}

fn sims(server: &TestServer, token: &str, service: &str, env: &str, n: usize) -> Vec<Sim> {
    (1..=n)
        .map(|i| Sim {
            client: server.client_with(token),
            id: format!("agent-{i}"),
            service: ServiceName::parse(service).unwrap(),
            env: EnvName::parse(env).unwrap(),
        })
        .collect()
}

fn tug(server: &TestServer, args: &[&str]) -> crate::support::Run {
    let w = tempfile::tempdir().unwrap();
    server.tug(w.path(), args)
}

/// The build an environment of `web` runs.
fn current(server: &TestServer, env: &str) -> Option<String> {
    let s = tug(server, &["status", "web", "--output", "json"]).json();
    s["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == env)
        .and_then(|e| e["current"]["build"].as_str().map(str::to_string))
}

/// The kinds of every event so far.
async fn event_kinds(server: &TestServer) -> Vec<String> {
    use futures::StreamExt;
    let query = tug_api::EventQuery {
        service: None,
        since: Some(0),
    };
    let mut stream = Box::pin(server.client().events(&query).await.unwrap());
    let mut kinds = Vec::new();
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
        kinds.push(e.kind().to_string());
    }
    kinds
}

const CANARY: &str = r#"
service = "web"

[[environments]]
name = "prod"
rollout = { strategy = "canary", count = 2, then = "rolling", max_in_flight = 1, halt_after_failures = 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_then_rolling_paces_agents_and_halts_on_a_failure() {
    canary_then_rolling(setup(CANARY, "web").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_then_rolling_on_postgres() {
    let server = TestServer::start_with(crate::support::Backend::postgres_s3().await, &[]).await;
    canary_then_rolling(setup_on(server, CANARY, "web").await).await;
}

async fn canary_then_rolling((server, token): (TestServer, String)) {
    let agents = sims(&server, &token, "web", "prod", 6);
    let v1 = build(&server, "1.0.0").await;
    release(&server, &v1, "prod");
    for a in &agents {
        a.report(&v1, AgentState::Healthy).await;
    }
    // Agents already on the build may always "update" to it.
    assert!(agents[5].ask().await.0.may_update);

    let v2 = build(&server, "2.0.0").await;
    release(&server, &v2, "prod");
    let is_v2 = |c: &Channel| c.build.as_ref().map(|b| b.as_str()) == Some(v2.as_str());
    agents[0].ask_until(is_v2).await;
    // The two canaries first; nobody else until both are healthy.
    assert!(agents[0].ask().await.0.may_update);
    assert!(agents[1].ask().await.0.may_update);
    let (c, waiting_tag) = agents[2].ask().await;
    assert!(!c.may_update);
    assert!(c.waiting.as_deref().unwrap().contains("canary"), "{c:?}");
    assert!(agents[0].ask().await.0.may_update, "a grant is kept");
    agents[0].report(&v2, AgentState::Healthy).await;
    assert!(!agents[2].ask().await.0.may_update, "one canary is not enough");

    // A waiting agent's long-poll ends when a place frees up.
    let waiter = {
        let client = server.client_with(&token);
        let tag = waiting_tag.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = client
                .channel(
                    &ServiceName::parse("web").unwrap(),
                    &EnvName::parse("prod").unwrap(),
                    &Platform::parse("linux/amd64").unwrap(),
                    Some("agent-3"),
                    Some(&tag),
                    Some(Duration::from_secs(20)),
                )
                .await
                .unwrap();
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    agents[1].report(&v2, AgentState::Healthy).await;
    let (answer, took) = waiter.await.unwrap();
    let (c, tag) = answer.expect("the long-poll answers with a grant, not 304");
    assert!(c.may_update && tag != waiting_tag, "{c:?} {tag}");
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // Rolling, one at a time: agent-3 is in flight, agent-4 waits.
    let (c, _) = agents[3].ask().await;
    assert!(!c.may_update);
    assert!(c.waiting.as_deref().unwrap().contains("max_in_flight"), "{c:?}");
    agents[2].report(&v2, AgentState::Activating).await;
    assert!(!agents[3].ask().await.0.may_update);
    agents[2].report(&v2, AgentState::Healthy).await;
    assert!(agents[3].ask().await.0.may_update);

    // agent-4's health check fails: the rollout halts, nobody else updates.
    agents[3].fail(&v1, &v2).await;
    let (c, _) = agents[4].ask().await;
    assert!(!c.may_update);
    assert!(c.waiting.as_deref().unwrap().contains("halted"), "{c:?}");
    let status = tug(
        &server,
        &["rollout", "status", "web", "--env", "prod", "--output", "json"],
    )
    .json();
    assert_eq!(status["state"], "halted");
    assert_eq!(status["failures"], 1);
    assert_eq!(status["updated"], 3);
    assert!(status["reason"].as_str().unwrap().contains("agent-4"), "{status}");
    let text = tug(&server, &["rollout", "status", "web", "--env", "prod"])
        .ok()
        .to_string();
    assert!(
        text.contains("rollout halted") && text.contains("canary of 2, then rolling, 1 at a time"),
        "{text}"
    );
    let text = tug(&server, &["status", "web"]).ok().to_string();
    assert!(text.contains("prod (rollout halted)"), "{text}");
    assert_eq!(
        current(&server, "prod"),
        Some(v2.clone()),
        "no auto-rollback configured"
    );

    // Resume: earlier failures no longer count; agent-5 may go.
    let r = tug(
        &server,
        &["rollout", "resume", "web", "--env", "prod", "--output", "json"],
    )
    .json();
    assert_eq!(
        (r["state"].as_str(), r["failures"].as_i64()),
        (Some("rolling"), Some(0))
    );
    assert!(agents[4].ask().await.0.may_update);
    let err = tug(&server, &["rollout", "resume", "web", "--env", "prod"])
        .fails()
        .to_string();
    assert!(err.contains("HTTP 409") && err.contains("not halted"), "{err}");
    // Halting by hand needs a reason, and stops further grants.
    let r = tug(
        &server,
        &["rollout", "halt", "web", "--env", "prod", "--reason", "latency up 20%"],
    )
    .ok()
    .to_string();
    assert!(r.contains("rollout halted") && r.contains("latency up 20%"), "{r}");
    assert!(!agents[5].ask().await.0.may_update);
    let err = tug(&server, &["rollout", "halt", "web", "--env", "prod", "--reason", " "])
        .fails()
        .to_string();
    assert!(err.contains("HTTP 400") && err.contains("reason"), "{err}");

    // Events tell the story.
    let kinds = event_kinds(&server).await;
    for kind in ["rollout.progress", "rollout.halted", "rollout.resumed"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

const AUTO_ROLLBACK: &str = r#"
service = "web"

[[environments]]
name = "prod"
rollout = { strategy = "all-at-once", halt_after_failures = 2, auto_rollback = true }
freeze = [{ from = "2020-01-01T00:00:00Z", until = "2100-01-01T00:00:00Z" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_past_the_threshold_roll_the_environment_back() {
    // Frozen for ever: only an admin override deploys, yet the automatic
    // rollback still restores the last good build.
    let (server, token) = setup(AUTO_ROLLBACK, "web").await;
    let agents = sims(&server, &token, "web", "prod", 3);
    let v1 = build(&server, "1.0.0").await;
    let v2 = build(&server, "2.0.0").await;
    for b in [&v1, &v2] {
        tug(
            &server,
            &[
                "release",
                "web",
                "--env",
                "prod",
                "--build",
                b,
                "--override",
                "--reason",
                "test",
            ],
        )
        .ok();
    }
    for a in &agents {
        let c = a
            .ask_until(|c| c.build.as_ref().map(|b| b.as_str()) == Some(v2.as_str()))
            .await;
        assert!(c.may_update, "all at once");
    }
    agents[0].fail(&v1, &v2).await;
    assert_eq!(current(&server, "prod"), Some(v2.clone()), "one failure is below 2");
    agents[1].fail(&v1, &v2).await;
    let history = tug(&server, &["history", "web", "--env", "prod", "--output", "json"]).json();
    let newest = &history[0];
    assert_eq!(newest["build"], v1.as_str());
    assert_eq!(newest["kind"], "rollback");
    assert_eq!(newest["requested_by"], "auto-rollback");
    assert!(
        newest["reason"].as_str().unwrap().contains("2 agent(s) failed build"),
        "{newest}"
    );
    // The rollback itself is not paced: every agent may go back at once.
    for a in &agents {
        let c = a
            .ask_until(|c| c.build.as_ref().map(|b| b.as_str()) == Some(v1.as_str()))
            .await;
        assert_eq!(c.build.as_ref().map(|b| b.as_str()), Some(v1.as_str()));
        assert!(c.may_update);
    }
    let status = tug(
        &server,
        &["rollout", "status", "web", "--env", "prod", "--output", "json"],
    )
    .json();
    assert_eq!(status["state"], "unpaced", "{status}");
}

const MAINTENANCE: &str = r#"
service = "web"

[[environments]]
name = "prod"
maintenance = [{ from = "2020-01-01T00:00:00Z", until = "2020-01-02T00:00:00Z" }]

[[environments]]
name = "stage"
maintenance = [{ from = "2020-01-01T00:00:00Z", until = "2100-01-01T00:00:00Z" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_windows_hold_updates_unless_the_build_is_critical() {
    let (server, token) = setup(MAINTENANCE, "web").await;
    let prod = &sims(&server, &token, "web", "prod", 1)[0];
    let stage = &sims(&server, &token, "web", "stage", 1)[0];
    let v1 = build(&server, "1.0.0").await;
    release(&server, &v1, "prod");
    release(&server, &v1, "stage");
    let is_v1 = |c: &Channel| c.build.as_ref().map(|b| b.as_str()) == Some(v1.as_str());
    prod.ask_until(is_v1).await;
    stage.ask_until(is_v1).await;
    let (c, tag) = prod.ask().await;
    assert!(!c.may_update, "outside prod's only window");
    assert!(c.waiting.as_deref().unwrap().contains("maintenance"), "{c:?}");
    assert!(stage.ask().await.0.may_update, "inside stage's window");
    // A critical build goes out at once, and the waiting agent's ETag changes.
    tug(&server, &["build", "mark-critical", &v1]).ok();
    prod.ask_until(|c| c.critical).await;
    let (c, critical_tag) = prod.ask().await;
    assert!(c.may_update && c.critical);
    assert_ne!(tag, critical_tag);
    let status = tug(
        &server,
        &["rollout", "status", "web", "--env", "prod", "--output", "json"],
    )
    .json();
    assert_eq!(status["in_maintenance"], false);
    // Day-range windows are accepted by policy apply and listed.
    tug(
        &server,
        &[
            "policy",
            "apply",
            "web",
            "--env",
            "prod",
            "--maintenance",
            "Mon-Fri 02:00 - 04:00",
            "--tz",
            "Europe/Berlin",
        ],
    )
    .ok();
    let list = tug(&server, &["policy", "list", "web"]).ok().to_string();
    assert!(list.contains("Mon-Fri 02:00 - 04:00 Europe/Berlin"), "{list}");
    let err = tug(
        &server,
        &[
            "policy",
            "apply",
            "web",
            "--env",
            "prod",
            "--maintenance",
            "Mon-Fry 02:00 - 04:00",
        ],
    )
    .fails()
    .to_string();
    assert!(
        err.contains("maintenance window") && err.contains("\"Fry\" is not a weekday"),
        "{err}"
    );
}

const COMPAT: &str = r#"
service = "teleport"

[[environments]]
name = "cloud"
compatible_with = { service = "teleport-agent", max_major_skew = 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_too_far_ahead_of_the_oldest_agent_are_refused() {
    let (server, token) = setup(COMPAT, "teleport").await;
    tug(&server, &["service", "create", "teleport-agent"]).ok();
    let w = tempfile::tempdir().unwrap();
    std::fs::write(
        w.path().join("a.toml"),
        "service = \"teleport-agent\"\n[[environments]]\nname = \"cloud\"\n",
    )
    .unwrap();
    server.tug(w.path(), &["pipeline", "apply", "-f", "a.toml"]).ok();
    let push = |service: &'static str, version: &'static str| {
        let body = format!("{service} {version}").into_bytes();
        let server = &server;
        async move { crate::agents::sealed(server, service, version, &[("bin", None, body)]).await }
    };
    let agent12 = push("teleport-agent", "12.4.0").await;
    let agent13 = push("teleport-agent", "13.1.0").await;
    let fleet = sims(&server, &token, "teleport-agent", "cloud", 2);
    fleet[0].report(&agent13, AgentState::Healthy).await;
    fleet[1].report(&agent12, AgentState::Healthy).await;

    let t14 = push("teleport", "14.0.0").await;
    let err = server
        .tug(w.path(), &["release", "teleport", "--env", "cloud", "--build", &t14])
        .fails()
        .to_string();
    assert!(err.contains("compatibility") && err.contains("12.4.0"), "{err}");
    let t13 = push("teleport", "13.0.0").await;
    server
        .tug(w.path(), &["release", "teleport", "--env", "cloud", "--build", &t13])
        .ok();
    // Once the oldest agent is upgraded, 14 may go.
    fleet[1].report(&agent13, AgentState::Healthy).await;
    server
        .tug(w.path(), &["release", "teleport", "--env", "cloud", "--build", &t14])
        .ok();
}

const SOAK: &str = r#"
service = "web"

[[environments]]
name = "trials"

[[environments]]
name = "prod"
upstream = "trials"
soak = "2s"
soak_healthy = "50%"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_time_counts_only_while_the_upstream_is_healthy() {
    healthy_soak(setup(SOAK, "web").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_soak_on_postgres() {
    let server = TestServer::start_with(crate::support::Backend::postgres_s3().await, &[]).await;
    healthy_soak(setup_on(server, SOAK, "web").await).await;
}

async fn healthy_soak((server, token): (TestServer, String)) {
    let trials = sims(&server, &token, "web", "trials", 2);
    let v1 = build(&server, "1.0.0").await;
    release(&server, &v1, "trials");
    // Three seconds in trials, but its agents report failing the whole time.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for a in &trials {
            a.report(&v1, AgentState::Activating).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let err = tug(&server, &["promote", "web", "--to", "prod"]).fails().to_string();
    assert!(
        err.contains("soak") && err.contains("with at least 50% of its agents healthy"),
        "{err}"
    );
    // Healthy (one of two is 50%) for more than the soak: promotion passes.
    let until = Instant::now() + Duration::from_millis(2600);
    while Instant::now() < until {
        trials[0].report(&v1, AgentState::Healthy).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tug(&server, &["promote", "web", "--to", "prod"]).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_bad_input_is_refused_with_a_reason() {
    let (server, token) = setup(CANARY, "web").await;
    let v1 = build(&server, "1.0.0").await;
    let agent = &sims(&server, &token, "web", "prod", 1)[0];
    // No rollout under way yet.
    let err = tug(&server, &["rollout", "halt", "web", "--env", "prod", "--reason", "x"])
        .fails()
        .to_string();
    assert!(err.contains("HTTP 400") && err.contains("runs nothing yet"), "{err}");
    release(&server, &v1, "prod");
    // A paced environment needs to know who asks.
    let res = server
        .http(reqwest::Method::GET, "/v1/channels/web/prod?platform=linux/amd64")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert!(res.text().await.unwrap().contains("agent=<agent id>"));
    let long = "a".repeat(101);
    let res = server
        .http(
            reqwest::Method::GET,
            &format!("/v1/channels/web/prod?platform=linux/amd64&agent={long}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let err = tug(&server, &["rollout", "status", "web", "--env", "qa"])
        .fails()
        .to_string();
    assert!(err.contains("HTTP 404") && err.contains("qa"), "{err}");
    let res = server
        .http(reqwest::Method::POST, "/v1/services/web/rollout/halt")
        .header("content-type", "application/json")
        .body(r#"{"environment":"prod"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400, "no reason");
    // The agent role follows and reports; it cannot halt or resume.
    let err = server
        .client_with(&token)
        .halt_rollout(&agent.service, &agent.env, "x")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("forbidden"), "{err}");
    // A report naming a failed build that does not exist is refused whole.
    let err = agent
        .client
        .report(&agent.report_of(
            Some(&v1),
            AgentState::Failed,
            Some("0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("build_not_found"), "{err}");
    assert!(server.client().agents(Some("web"), None).await.unwrap().is_empty());
    // Only agent tokens (and admins) report: a viewer or CI token may not.
    let w = tempfile::tempdir().unwrap();
    for role in ["viewer", "ci", "deployer"] {
        let t = server
            .tug(
                w.path(),
                &[
                    "token",
                    "create",
                    "--name",
                    &format!("t-{role}"),
                    "--role",
                    role,
                    "--output",
                    "json",
                ],
            )
            .json();
        let err = server
            .client_with(t["secret"].as_str().unwrap())
            .report(&agent.report_of(Some(&v1), AgentState::Healthy, None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("forbidden"), "{role}: {err}");
    }
}

const FLEET: &str = r#"
service = "web"

[[environments]]
name = "prod"
rollout = { strategy = "canary", count = 2, then = "all-at-once", halt_after_failures = 1, auto_rollback = true }
"#;

/// Five real `tug agent` processes, each supervising a small service in
/// its own directory: a good build reaches all of them; a build whose
/// health check fails goes to the two canaries only, which roll back; the
/// rollout halts, the environment is rolled back, and the other three never
/// run the bad build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agents_halt_a_bad_rollout_and_the_rest_keep_the_good_build() {
    let (server, token) = setup(FLEET, "web").await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let out = w.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // The service appends each version it starts as to its agent's log.
    let script = |version: &str, healthy: bool| {
        let marker = if healthy { "" } else { "# BROKEN" };
        let text =
            format!("#!/bin/sh\n{marker}\necho {version} >> \"$TUG_TEST_OUT/$TUG_TEST_AGENT\"\nexec sleep 600\n");
        [("serve.sh", None, text.into_bytes())]
    };
    let v1 = crate::agents::sealed(&server, "web", "1.0.0", &script("1.0.0", true)).await;
    let v2 = crate::agents::sealed(&server, "web", "2.0.0", &script("2.0.0", false)).await;
    server.tug(w, &["release", "web", "--env", "prod", "--build", &v1]).ok();

    let mut agents = Vec::new();
    for i in 1..=5 {
        let name = format!("a{i}");
        let dir = w.join(&name);
        let health = format!("! grep -q BROKEN {}/current/serve.sh", dir.display());
        let child = std::process::Command::new(crate::support::TUG)
            .args([
                "agent",
                "--service",
                "web",
                "--env",
                "prod",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .args(["--exec", "./serve.sh", "--health-cmd", &health, "--health-timeout", "2"])
            .args(["--heartbeat", "1"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("TUG_SERVER", &server.url)
            .env("TUG_TOKEN", &token)
            .env("TUG_TEST_OUT", &out)
            .env("TUG_TEST_AGENT", &name)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(w.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        agents.push(crate::support::KillOnDrop(child));
    }
    let fleet = || {
        server
            .tug(w, &["agents", "--service", "web", "--output", "json"])
            .json()
            .as_array()
            .unwrap()
            .clone()
    };
    let logs = || {
        (1..=5)
            .map(|i| std::fs::read_to_string(w.join(format!("a{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "{what} within 60 s; fleet: {:#?}\nagent logs:\n{}",
                fleet(),
                logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let all_healthy_on = |build: &str| {
        let f = fleet();
        (f.len() == 5 && f.iter().all(|a| a["state"] == "healthy" && a["build"] == build)).then_some(())
    };
    wait_for("all five healthy on the good build", &|| all_healthy_on(&v1).is_some());

    server.tug(w, &["release", "web", "--env", "prod", "--build", &v2]).ok();
    // The two canaries try it, fail their health check and go back; the
    // second failure halts the rollout and rolls the environment back.
    wait_for("the automatic rollback", &|| {
        let history = server
            .tug(w, &["history", "web", "--env", "prod", "--output", "json"])
            .json();
        history[0]["kind"] == "rollback" && history[0]["build"] == v1.as_str()
    });
    wait_for("all five healthy on the good build again", &|| {
        all_healthy_on(&v1).is_some()
    });
    let ran: Vec<String> = (1..=5)
        .map(|i| std::fs::read_to_string(out.join(format!("a{i}"))).unwrap_or_default())
        .collect();
    let tried = ran.iter().filter(|r| r.contains("2.0.0")).count();
    assert_eq!(tried, 2, "only the canaries ran the bad build: {ran:?}\n{}", logs());
    for r in &ran {
        assert!(
            r.trim_end().ends_with("1.0.0"),
            "every agent runs the good build again: {ran:?}"
        );
    }
    let kinds = event_kinds(&server).await;
    assert!(kinds.iter().any(|k| k == "rollout.halted"), "{kinds:?}");
    drop(agents);
}
