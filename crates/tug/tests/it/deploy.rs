//! Pipelines and deployments through the real binary: Lunar's flow
//! (auto-release of master to dev, promote to prod, a hotfix branch refused
//! by prod's branch restriction and accepted once it is widened, rollback,
//! status and history), policies, bad input, and concurrent deployments.

use std::path::Path;

use crate::support::{write_files, Backend, TestServer};

const LUNAR: &str = r#"
service = "api"

[[environments]]
name = "dev"
auto_release = { branch = "master" }

[[environments]]
name = "prod"
upstream = "dev"
branch_restriction = "^master$"
"#;

pub fn apply(server: &TestServer, w: &Path, text: &str) -> crate::support::Run {
    std::fs::write(w.join("pipeline.toml"), text).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "pipeline.toml", "--output", "json"])
}

/// Pushes and seals a build of `branch`; returns its id.
pub fn sealed(server: &TestServer, w: &Path, branch: &str, commit: &str, version: &str) -> String {
    let file = format!("{commit}.bin");
    write_files(w, &[(file.as_str(), commit.as_bytes())]);
    let out = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--branch",
                branch,
                "--commit",
                commit,
                "--version",
                version,
                "--seal",
                &file,
                "--output",
                "json",
            ],
        )
        .json();
    out["build"].as_str().unwrap().to_string()
}

pub fn current(server: &TestServer, w: &Path, env: &str) -> Option<String> {
    let status = server.tug(w, &["status", "api", "--output", "json"]).json();
    let e = status["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == env)
        .unwrap()
        .clone();
    e["current"]["build"].as_str().map(str::to_string)
}

pub async fn lunar_flow(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let applied = apply(server, w, LUNAR).json();
    assert_eq!(applied["revision"], 1);

    // A sealed master build goes to dev by itself.
    let b1 = sealed(server, w, "master", "aaaaaaa1", "1.0.0");
    assert_eq!(current(server, w, "dev").as_deref(), Some(b1.as_str()));
    assert_eq!(current(server, w, "prod"), None);

    // Promote takes what dev runs; no byte moves, only the record.
    let promoted = server
        .tug(w, &["promote", "api", "--to", "prod", "--output", "json"])
        .json();
    assert_eq!(promoted["status"], "deployed");
    assert_eq!(promoted["deployment"]["build"], b1.as_str());
    assert_eq!(promoted["deployment"]["kind"], "promote");
    let err = server.tug(w, &["promote", "api", "--to", "prod"]).fails().to_string();
    assert!(
        err.contains("nothing_to_deploy") && err.contains("already runs"),
        "{err}"
    );

    // A hotfix branch is refused by prod's restriction, naming the policy.
    let hotfix = sealed(server, w, "hotfix/x", "bbbbbbb2", "1.0.1");
    assert_eq!(
        current(server, w, "dev").as_deref(),
        Some(b1.as_str()),
        "hotfix is not auto-released"
    );
    let err = server
        .tug(w, &["release", "api", "--env", "prod", "--branch", "hotfix/x"])
        .fails()
        .to_string();
    assert!(
        err.contains("policy_violation") && err.contains("branch_restriction") && err.contains("hotfix/x"),
        "{err}"
    );
    assert_eq!(
        current(server, w, "prod").as_deref(),
        Some(b1.as_str()),
        "a refusal changes nothing"
    );

    // Widened, it is accepted.
    let widened = apply(server, w, &LUNAR.replace("^master$", "^(master|hotfix/.*)$")).json();
    assert_eq!(widened["revision"], 2);
    server
        .tug(w, &["release", "api", "--env", "prod", "--branch", "hotfix/x"])
        .ok();
    assert_eq!(current(server, w, "prod").as_deref(), Some(hotfix.as_str()));

    // Rollback goes back to what ran before, as a new deployment.
    let rolled = server
        .tug(w, &["rollback", "api", "--env", "prod", "--output", "json"])
        .json();
    assert_eq!(rolled["deployment"]["build"], b1.as_str());
    assert_eq!(rolled["deployment"]["replaced"], hotfix.as_str());
    let history = server
        .tug(w, &["history", "api", "--env", "prod", "--output", "json"])
        .json();
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["rollback", "release", "promote"]);
    assert_eq!(history[0]["summary"]["version"], "1.0.0");
    let table = server.tug(w, &["status", "api"]).ok().to_string();
    for needle in ["dev", "prod", "1.0.0", "master", "aaaaaaa1", "rollback"] {
        assert!(table.contains(needle), "{needle} missing:\n{table}");
    }
    let log = server.tug(w, &["history", "api", "--env", "prod"]).ok().to_string();
    assert!(log.contains("hotfix/x") && log.contains("rollback"), "{log}");

    // A manual release into dev holds its auto-release until resumed.
    server
        .tug(w, &["release", "api", "--env", "dev", "--build", &hotfix])
        .ok();
    let b3 = sealed(server, w, "master", "ccccccc3", "1.1.0");
    assert_eq!(current(server, w, "dev").as_deref(), Some(hotfix.as_str()), "held");
    assert!(server.tug(w, &["status", "api"]).ok().contains("auto-release held"));
    server.tug(w, &["policy", "resume", "api", "--env", "dev"]).ok();
    let b4 = sealed(server, w, "master", "ddddddd4", "1.2.0");
    assert_eq!(current(server, w, "dev").as_deref(), Some(b4.as_str()));
    assert_ne!(b3, b4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lunar_flow_on_sqlite() {
    lunar_flow(&TestServer::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lunar_flow_on_postgres_and_s3() {
    lunar_flow(&TestServer::start_with(Backend::postgres_s3().await, &[]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pipelines_and_unknown_names_change_nothing() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let err = server.tug(w, &["status", "api"]).fails().to_string();
    assert!(
        err.contains("pipeline_not_found") && err.contains("tug pipeline apply"),
        "{err}"
    );
    for (text, expected) in [
        (LUNAR.replace("upstream = \"dev\"", "upstream = \"qa\""), "qa"),
        (LUNAR.replace("^master$", "^(master"), "regex"),
        (LUNAR.replace("name = \"prod\"", "name = \"dev\""), "dev"),
        (format!("{LUNAR}\ncolour = \"red\"\n"), "colour"),
        (
            "service = \"api\"\n[[environments]]\nname = \"a\"\nupstream = \"b\"\n[[environments]]\nname = \"b\"\nupstream = \"a\"\n"
                .to_string(),
            "a -> b -> a",
        ),
    ] {
        let err = apply(&server, w, &text).fails().to_string();
        assert!(err.contains(expected), "{text}\n=> {err}");
    }
    let err = server.tug(w, &["pipeline", "show", "api"]).fails().to_string();
    assert!(err.contains("pipeline_not_found"), "nothing was stored: {err}");
    // The server validates too, whatever a client sends.
    let res = server
        .http(reqwest::Method::PUT, "/v1/services/api/pipeline")
        .json(&serde_json::json!({"spec": "service = \"api\"\n[[environments]]\nname = \"x\"\nsoak = \"1x\"\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "invalid_pipeline");
    assert!(body["message"].as_str().unwrap().contains("1x"), "{body}");

    apply(&server, w, LUNAR).ok();
    let err = server
        .tug(w, &["release", "api", "--env", "staging", "--branch", "master"])
        .fails()
        .to_string();
    assert!(
        err.contains("environment_not_found") && err.contains("dev, prod"),
        "{err}"
    );
    let err = server
        .tug(w, &["release", "api", "--env", "dev", "--version", "1.0"])
        .fails()
        .to_string();
    assert!(err.contains("MAJOR.MINOR.PATCH"), "{err}");
    let err = server
        .tug(w, &["release", "api", "--env", "dev", "--version", "9.9.9"])
        .fails()
        .to_string();
    assert!(err.contains("nothing_to_deploy"), "{err}");
    let err = server.tug(w, &["status", "nope"]).fails().to_string();
    assert!(err.contains("service_not_found"), "{err}");
    let err = server.tug(w, &["promote", "api", "--to", "prod"]).fails().to_string();
    assert!(err.contains("runs nothing yet"), "{err}");

    // A draft never deploys.
    let draft = server
        .tug(
            w,
            &[
                "build",
                "create",
                "--service",
                "api",
                "--version",
                "2.0.0",
                "--branch",
                "master",
            ],
        )
        .ok()
        .trim()
        .to_string();
    let err = server
        .tug(w, &["release", "api", "--env", "dev", "--build", &draft])
        .fails()
        .to_string();
    assert!(err.contains("not_sealed"), "{err}");

    // Roles: a ci token may not deploy, a viewer may not change pipelines.
    let ci = server
        .tug(
            w,
            &["token", "create", "--name", "ci", "--role", "ci", "--output", "json"],
        )
        .json();
    let err = server
        .tug_as(ci["secret"].as_str().unwrap(), w, &["promote", "api", "--to", "prod"])
        .fails()
        .to_string();
    assert!(err.contains("HTTP 403"), "{err}");
    let deployer = server
        .tug(
            w,
            &[
                "token", "create", "--name", "dep", "--role", "deployer", "--output", "json",
            ],
        )
        .json();
    std::fs::write(w.join("p2.toml"), LUNAR).unwrap();
    let err = server
        .tug_as(
            deployer["secret"].as_str().unwrap(),
            w,
            &["pipeline", "apply", "-f", "p2.toml"],
        )
        .fails()
        .to_string();
    assert!(err.contains("HTTP 403"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_windows_soak_and_server_rules() {
    let server = TestServer::start_with(Backend::Embedded, &["--server-rule", "prod=^master$"]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();

    // A pipeline may not auto-release a branch a server rule forbids.
    let err = apply(
        &server,
        w,
        &LUNAR.replace(
            "branch_restriction = \"^master$\"",
            "auto_release = { branch = \"hotfix\" }",
        ),
    )
    .fails()
    .to_string();
    assert!(err.contains("prod=^master$"), "{err}");

    // Soak: prod takes a build only after it spent an hour in dev.
    let soaking = LUNAR.replace(
        "branch_restriction = \"^master$\"",
        "branch_restriction = \"^master$\"\nsoak = \"1h\"",
    );
    apply(&server, w, &soaking).ok();
    sealed(&server, w, "master", "aaaaaaa1", "1.0.0");
    let err = server.tug(w, &["promote", "api", "--to", "prod"]).fails().to_string();
    assert!(err.contains("soak") && err.contains("1h"), "{err}");

    // A freeze window in force refuses deployments unless an admin
    // overrides it with a reason, which is recorded.
    let frozen = LUNAR.replace(
        "branch_restriction = \"^master$\"",
        "branch_restriction = \"^master$\"\nfreeze = [{ from = \"2000-01-01T00:00:00Z\", until = \"2999-01-01T00:00:00Z\" }]",
    );
    apply(&server, w, &frozen).ok();
    let err = server.tug(w, &["promote", "api", "--to", "prod"]).fails().to_string();
    assert!(err.contains("freeze"), "{err}");
    let err = server
        .tug(w, &["promote", "api", "--to", "prod", "--override"])
        .fails()
        .to_string();
    assert!(err.contains("reason"), "{err}");
    let d = server
        .tug(
            w,
            &[
                "promote",
                "api",
                "--to",
                "prod",
                "--override",
                "--reason",
                "incident 42",
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(d["deployment"]["override_freeze"], true);
    assert_eq!(d["deployment"]["reason"], "incident 42");

    // The server rule holds even when the pipeline's restriction is widened.
    apply(&server, w, &LUNAR.replace("^master$", ".*")).ok();
    sealed(&server, w, "hotfix/y", "bbbbbbb2", "1.0.1");
    let err = server
        .tug(w, &["release", "api", "--env", "prod", "--branch", "hotfix/y"])
        .fails()
        .to_string();
    assert!(err.contains("server_branch_restriction"), "{err}");
}

/// A draft of `branch` with one artifact (its bytes name the version),
/// ready to be sealed.
pub async fn filled_draft(
    client: &tug_client::Client,
    service: &tug_core::ServiceName,
    branch: &str,
    version: &str,
) -> tug_api::Build {
    let b = client
        .create_build(&tug_api::CreateBuild {
            service: service.clone(),
            version: tug_core::Version::parse(version).unwrap(),
            source: tug_core::BuildSource {
                branch: Some(branch.into()),
                ..Default::default()
            },
            ci: Default::default(),
            expected: vec![],
            embargoed: false,
        })
        .await
        .unwrap();
    let body = format!("build {version} {}", b.id).into_bytes();
    let digest = tug_core::Digest::of(&body);
    client.put_blob_bytes(&digest, body.clone()).await.unwrap();
    let spec = tug_core::ArtifactSpec {
        name: tug_core::ArtifactName::parse("app.bin").unwrap(),
        kind: tug_core::ArtifactKind::Binary,
        platform: None,
        size: body.len() as u64,
        digest,
        derived_from: vec![],
        executable: false,
        uri: None,
    };
    client.register_artifacts(b.id.as_str(), vec![spec]).await.unwrap();
    b
}

/// Fires 50 releases of 50 different builds at one environment at once.
/// Each either wins or gets 409 conflict; the log has exactly the winners,
/// in an unbroken chain where each replaced the one before: no lost update.
pub async fn concurrent_releases(servers: &[&TestServer]) {
    let a = servers[0];
    let client = a.client();
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    a.tug(w, &["service", "create", "api"]).ok();
    apply(a, w, LUNAR).ok();
    let service = tug_core::ServiceName::parse("api").unwrap();
    let mut builds = Vec::new();
    for i in 0..50 {
        let b = filled_draft(&client, &service, "feature", &format!("1.0.{i}")).await;
        client.seal(b.id.as_str()).await.unwrap();
        builds.push(b.id.to_string());
    }
    let tasks: Vec<_> = builds
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let client = servers[i % servers.len()].client();
            let service = service.clone();
            let req = tug_api::Release {
                environment: tug_core::EnvName::parse("dev").unwrap(),
                build: Some(b.clone()),
                branch: None,
                version: None,
                flags: Default::default(),
            };
            tokio::spawn(async move { client.release(&service, &req).await })
        })
        .collect();
    let mut wins = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(d) => wins.push(d),
            Err(e) => assert_eq!(e.code(), Some("conflict"), "{e}"),
        }
    }
    assert!(!wins.is_empty());
    let history = client
        .history(&service, &tug_core::EnvName::parse("dev").unwrap(), 1000)
        .await
        .unwrap()
        .deployments;
    assert_eq!(history.len(), wins.len(), "every winner is in the log, nothing else");
    let mut chain: Vec<_> = history.iter().rev().collect();
    chain.dedup_by_key(|d| d.seq);
    assert_eq!(chain.len(), history.len(), "sequence numbers are unique");
    for (k, d) in chain.iter().enumerate() {
        assert_eq!(d.seq, k as i64 + 1);
        let before = if k == 0 { None } else { chain[k - 1].build.clone() };
        assert_eq!(d.replaced, before, "deployment {} replaced what ran before it", d.seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_releases_on_sqlite() {
    let server = TestServer::start().await;
    concurrent_releases(&[&server]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_releases_on_two_servers_sharing_postgres() {
    let a = TestServer::start_with(Backend::postgres_s3().await, &[]).await;
    let b = a.sibling().await;
    concurrent_releases(&[&a, &b]).await;
}

/// Creates a token; returns its secret.
pub fn token(server: &TestServer, w: &Path, name: &str, role: &str) -> String {
    let t = server
        .tug(
            w,
            &["token", "create", "--name", name, "--role", role, "--output", "json"],
        )
        .json();
    t["secret"].as_str().unwrap().to_string()
}

pub const TRAIN: &str = r#"
service = "api"

[[environments]]
name = "trials"
auto_release = { branch = "master" }

[[environments]]
name = "production"
upstream = "trials"
approvals = 2
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_from_distinct_approvers_carry_a_deployment_out() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    apply(&server, w, TRAIN).ok();
    let token = |name: &str, role: &str| token(&server, w, name, role);
    let (deployer, alice, bob, viewer) = (
        token("deployer", "deployer"),
        token("alice", "approver"),
        token("bob", "approver"),
        token("eve", "viewer"),
    );
    let b1 = sealed(&server, w, "master", "aaaaaaa1", "1.0.0");

    // The promotion waits for two approvals.
    let asked = server
        .tug_as(
            &deployer,
            w,
            &["promote", "api", "--to", "production", "--output", "json"],
        )
        .json();
    assert_eq!(asked["status"], "pending_approval");
    assert_eq!(asked["pending"]["need"], 2);
    assert_eq!(asked["pending"]["requested_by"], "deployer");
    assert!(asked["pending"]["expires_at"].is_string());
    assert_eq!(current(&server, w, "production"), None);
    let text = server
        .tug_as(&deployer, w, &["promote", "api", "--to", "production"])
        .ok()
        .to_string();
    assert!(
        text.contains("waits for approval") && text.contains("0 of 2"),
        "asking again shows the same request: {text}"
    );
    let status = server.tug(w, &["status", "api", "--output", "json"]).json();
    assert_eq!(status["environments"][1]["pending"][0]["build"], b1.as_str());

    // Neither the requester, nor a viewer, nor the same approver twice.
    let err = server
        .tug_as(&deployer, w, &["approve", "api", "--env", "production", "--build", &b1])
        .fails()
        .to_string();
    assert!(err.contains("HTTP 403"), "{err}");
    let err = server
        .tug_as(&viewer, w, &["approve", "api", "--env", "production", "--build", &b1])
        .fails()
        .to_string();
    assert!(err.contains("HTTP 403"), "{err}");
    let first = server
        .tug_as(
            &alice,
            w,
            &[
                "approve",
                "api",
                "--env",
                "production",
                "--build",
                &b1,
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(first["pending"]["approved_by"], serde_json::json!(["alice"]));
    assert!(first["deployment"].is_null());
    let err = server
        .tug_as(&alice, w, &["approve", "api", "--env", "production", "--build", &b1])
        .fails()
        .to_string();
    assert!(err.contains("already decided"), "{err}");
    assert_eq!(current(&server, w, "production"), None);

    // The second distinct approval carries it out.
    let second = server
        .tug_as(
            &bob,
            w,
            &[
                "approve",
                "api",
                "--env",
                "production",
                "--build",
                &b1,
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(second["deployment"]["build"], b1.as_str());
    assert_eq!(second["deployment"]["requested_by"], "deployer");
    assert_eq!(current(&server, w, "production").as_deref(), Some(b1.as_str()));
    let err = server
        .tug_as(&bob, w, &["approve", "api", "--env", "production", "--build", &b1])
        .fails()
        .to_string();
    assert!(err.contains("waits for approval"), "nothing pending any more: {err}");

    // A rejection ends a request; rollbacks need no approval.
    let b2 = sealed(&server, w, "master", "bbbbbbb2", "1.1.0");
    server
        .tug_as(&deployer, w, &["promote", "api", "--to", "production"])
        .ok();
    let rejected = server
        .tug_as(
            &alice,
            w,
            &[
                "reject",
                "api",
                "--env",
                "production",
                "--build",
                &b2,
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(rejected["pending"]["state"], "rejected");
    assert_eq!(current(&server, w, "production").as_deref(), Some(b1.as_str()));
    let status = server.tug(w, &["status", "api", "--output", "json"]).json();
    assert_eq!(status["environments"][1]["pending"].as_array().unwrap().len(), 0);
}

const WITH_PRIVATE: &str = r#"
service = "api"

[[environments]]
name = "production"

[[environments]]
name = "security"
private = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embargoed_builds_stay_private_and_yanked_builds_never_deploy() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    apply(&server, w, WITH_PRIVATE).ok();
    let t = server
        .tug(
            w,
            &["token", "create", "--name", "ci", "--role", "ci", "--output", "json"],
        )
        .json();
    let ci = t["secret"].as_str().unwrap().to_string();
    let t = server
        .tug(
            w,
            &[
                "token", "create", "--name", "eve", "--role", "viewer", "--output", "json",
            ],
        )
        .json();
    let viewer = t["secret"].as_str().unwrap().to_string();
    let t = server
        .tug(
            w,
            &[
                "token", "create", "--name", "alice", "--role", "approver", "--output", "json",
            ],
        )
        .json();
    let approver = t["secret"].as_str().unwrap().to_string();

    // CI fills and seals its embargoed build.
    write_files(w, &[("fix.bin", b"security fix")]);
    let out = server
        .tug_as(
            &ci,
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
    assert_eq!(out["sealed"]["embargoed"], true);

    // Only admins, approvers and its creator see it.
    let err = server.tug_as(&viewer, w, &["build", "show", &id]).fails().to_string();
    assert!(err.contains("build_not_found"), "{err}");
    let listed = server
        .tug_as(&viewer, w, &["build", "list", "--service", "api", "--output", "json"])
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 0);
    server.tug_as(&approver, w, &["build", "show", &id]).ok();
    assert_eq!(
        server
            .tug(w, &["build", "list", "--service", "api", "--output", "json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // It goes only to the private environment.
    let err = server
        .tug(w, &["release", "api", "--env", "production", "--build", &id])
        .fails()
        .to_string();
    assert!(err.contains("embargo"), "{err}");
    server
        .tug(w, &["release", "api", "--env", "security", "--build", &id])
        .ok();
    server.tug(w, &["build", "unembargo", &id]).ok();
    server.tug_as(&viewer, w, &["build", "show", &id]).ok();
    server
        .tug(w, &["release", "api", "--env", "production", "--build", &id])
        .ok();

    // A yanked build never deploys again, not even by rollback.
    write_files(w, &[("next.bin", b"next")]);
    let next = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--version",
                "2.0.2",
                "--branch",
                "master",
                "--seal",
                "next.bin",
                "--output",
                "json",
            ],
        )
        .json();
    let next = next["build"].as_str().unwrap().to_string();
    server
        .tug(w, &["release", "api", "--env", "production", "--build", &next])
        .ok();
    let yanked = server
        .tug(
            w,
            &["build", "yank", &id, "--reason", "CVE in the fix", "--output", "json"],
        )
        .json();
    assert!(yanked["yanked_at"].is_string());
    let err = server
        .tug(w, &["rollback", "api", "--env", "production"])
        .fails()
        .to_string();
    assert!(err.contains("yanked"), "{err}");
    let err = server.tug_as(&ci, w, &["build", "yank", &next]).fails().to_string();
    assert!(err.contains("HTTP 403"), "{err}");
    assert!(server.tug(w, &["build", "show", &id]).ok().contains("CVE in the fix"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_versions_follow_the_newest_stable_release() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "teleport"]).ok();
    let next = |args: &[&str]| -> String {
        let mut all = vec!["version", "next", "--service", "teleport"];
        all.extend_from_slice(args);
        server.tug(w, &all).ok().trim().to_string()
    };
    assert_eq!(
        next(&["--patch"]),
        "v0.0.1",
        "a service without builds starts from 0.0.0"
    );
    for v in ["14.2.0", "13.9.9", "15.0.0-rc.1"] {
        server
            .tug(w, &["build", "create", "--service", "teleport", "--version", v])
            .ok();
    }
    assert_eq!(next(&["--patch"]), "v14.2.1");
    let by_version = server
        .tug(
            w,
            &[
                "build",
                "list",
                "--service",
                "teleport",
                "--sort",
                "version",
                "--limit",
                "2",
                "--output",
                "json",
            ],
        )
        .json();
    let versions: Vec<&str> = by_version
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["version"].as_str().unwrap())
        .collect();
    assert_eq!(
        versions,
        vec!["15.0.0-rc.1", "14.2.0"],
        "semantic-version precedence, not creation order"
    );
    let err = server
        .tug(w, &["build", "list", "--service", "teleport", "--sort", "size"])
        .fails()
        .to_string();
    assert!(err.contains("possible values: created, version"), "{err}");
    assert_eq!(next(&["--minor"]), "v14.3.0");
    assert_eq!(next(&["--major"]), "v15.0.0");
    let cloud = next(&["--cloud", "--commit", "4f2a9c1e77"]);
    let (head, tail) = cloud.split_once("-cloud.").unwrap();
    assert_eq!(head, "v15.0.0", "RFD 134: newest stable major + 1");
    let (stamp, commit) = tail.split_once('.').unwrap();
    assert_eq!(commit, "4f2a9c");
    assert_eq!(stamp.len(), "20261122T031405".len());
    assert_eq!(&stamp[8..9], "T");
    let json = server
        .tug(
            w,
            &[
                "version",
                "next",
                "--service",
                "teleport",
                "--cloud",
                "--commit",
                "4f2a9c1e77",
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(
        json["tag"].as_str().unwrap(),
        format!("v{}", json["version"].as_str().unwrap())
    );
    // The version is a valid build version.
    tug_core::Version::parse(json["version"].as_str().unwrap()).unwrap();

    let err = server
        .tug(
            w,
            &["version", "next", "--service", "teleport", "--cloud", "--commit", "xyz"],
        )
        .fails()
        .to_string();
    assert!(err.contains("HTTP 400"), "{err}");
    let err = server
        .tug(w, &["version", "next", "--service", "teleport", "--cloud"])
        .fails()
        .to_string();
    assert!(err.contains("--commit"), "{err}");
    let err = server
        .tug(w, &["version", "next", "--service", "nope", "--patch"])
        .fails()
        .to_string();
    assert!(err.contains("service_not_found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_names_changed_artifacts_and_the_source_range() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    apply(&server, w, LUNAR).ok();
    let push = |commit: &str, files: &[(&str, &[u8])]| -> String {
        let dir = w.join(commit);
        write_files(&dir, files);
        let out = server
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
                    "--version",
                    "1.0.0",
                    "--repo",
                    "https://git.example.com/org/api.git",
                    "--seal",
                    dir.to_str().unwrap(),
                    "--output",
                    "json",
                ],
            )
            .json();
        out["build"].as_str().unwrap().to_string()
    };
    let old = push(
        "1111111a",
        &[("same.txt", b"same"), ("app.bin", b"old app"), ("gone.txt", b"bye")],
    );
    server.tug(w, &["promote", "api", "--to", "prod"]).ok();
    let new = push(
        "2222222b",
        &[("same.txt", b"same"), ("app.bin", b"new app!"), ("new.txt", b"hi")],
    );

    let d = server
        .tug(w, &["diff", "api", "--from", "prod", "--to", "dev", "--output", "json"])
        .json();
    assert_eq!(d["from"]["id"], old.as_str());
    assert_eq!(d["to"]["id"], new.as_str());
    assert_eq!(d["unchanged"], 1);
    let changes: Vec<(String, String)> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            ("app.bin".into(), "changed".into()),
            ("gone.txt".into(), "removed".into()),
            ("new.txt".into(), "added".into())
        ]
    );
    assert_eq!(d["changes"][0]["old_size"], 7);
    assert_eq!(d["changes"][0]["new_size"], 8);
    assert_eq!(
        d["source"]["compare_url"],
        "https://git.example.com/org/api/compare/1111111a...2222222b"
    );

    // By build ids, and as a table.
    let by_id = server
        .tug(w, &["diff", "api", "--from", &old, "--to", &new, "--output", "json"])
        .json();
    assert_eq!(by_id["changes"], d["changes"]);
    let table = server
        .tug(w, &["diff", "api", "--from", "prod", "--to", "dev"])
        .ok()
        .to_string();
    for needle in [
        "app.bin",
        "changed",
        "removed",
        "added",
        "compare/1111111a...2222222b",
        "3 changed, 1 the same",
    ] {
        assert!(table.contains(needle), "{needle}:\n{table}");
    }
    let same = server
        .tug(w, &["diff", "api", "--from", "dev", "--to", "dev"])
        .ok()
        .to_string();
    assert!(same.contains("No artifact changed"), "{same}");
    let err = server
        .tug(w, &["diff", "api", "--from", "qa", "--to", "dev"])
        .fails()
        .to_string();
    assert!(err.contains("environment_not_found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_events_as_they_happen() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    server.tug(w, &["service", "create", "other"]).ok();

    // The watcher connects first and waits for six events of api.
    let args = [
        "watch",
        "--service",
        "api",
        "--since",
        "0",
        "--count",
        "6",
        "--output",
        "json",
    ];
    let child = std::process::Command::new(crate::support::TUG)
        .args(args)
        .env_clear()
        .env("TUG_SERVER", &server.url)
        .env("TUG_TOKEN", &server.admin_token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut watcher = crate::support::KillOnDrop(child);
    apply(&server, w, LUNAR).ok();
    server
        .tug(w, &["build", "create", "--service", "other", "--version", "1.0.0"])
        .ok();
    let b = sealed(&server, w, "master", "aaaaaaa1", "1.0.0");
    server.tug(w, &["promote", "api", "--to", "prod"]).ok();

    let status = crate::support::eventually(30, || watcher.0.try_wait().unwrap());
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(watcher.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "service.created",
            "pipeline.applied",
            "build.created",
            "build.sealed",
            "deployment",
            "deployment"
        ]
    );
    assert!(
        events.iter().all(|e| e["service"] == "api"),
        "other services' events are filtered out"
    );
    // Every event speaks the event schema.
    assert!(events.iter().all(|e| e["schema_version"] == 1), "{events:#?}");
    assert_eq!(events[4]["environment"], "dev");
    assert_eq!(events[4]["deployment_kind"], "auto_release");
    assert!(events[4]["actor"].is_null(), "auto-release is nobody's doing");
    assert_eq!(events[5]["environment"], "prod");
    assert_eq!(events[5]["build"]["id"], b.as_str());
    assert_eq!(events[5]["build"]["version"], "1.0.0");
    assert_eq!(events[5]["deployment_kind"], "promote");
    assert_eq!(
        events[5]["actor"],
        serde_json::json!({"name": "admin", "role": "admin"})
    );
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "in order: {ids:?}");
}

const TELEPORT: &str = r#"
service = "teleport"

[[environments]]
name = "canary"
auto_release = { branch = "master" }

[[environments]]
name = "internal"
upstream = "canary"
soak = "2s"

[[environments]]
name = "trials"
upstream = "internal"
approvals = 1

[[environments]]
name = "production"
upstream = "trials"
approvals = 2
branch_restriction = "^master$"

[[environments]]
name = "security"
private = true
"#;

/// Teleport's cloud train end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teleport_cloud_train() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let w = tempfile::tempdir().unwrap();
    let w = w.path().to_path_buf();
    server.tug(&w, &["service", "create", "teleport"]).ok();
    std::fs::write(w.join("pipeline.toml"), TELEPORT).unwrap();
    server.tug(&w, &["pipeline", "apply", "-f", "pipeline.toml"]).ok();
    let token = |name: &str, role: &str| -> String {
        let t = server
            .tug(
                &w,
                &["token", "create", "--name", name, "--role", role, "--output", "json"],
            )
            .json();
        t["secret"].as_str().unwrap().to_string()
    };
    let (ci, deployer, alice, bob) = (
        token("ci", "ci"),
        token("release-bot", "deployer"),
        token("alice", "approver"),
        token("bob", "approver"),
    );

    // A cloud version, and a draft that expects three artifacts.
    let build_through = |commit: &str| -> String {
        let tag = server.tug_as(
            &ci,
            &w,
            &[
                "version",
                "next",
                "--service",
                "teleport",
                "--cloud",
                "--commit",
                commit,
            ],
        );
        let version = tag.ok().trim().trim_start_matches('v').to_string();
        assert!(version.contains("-cloud."), "{version}");
        let id = server
            .tug_as(
                &ci,
                &w,
                &[
                    "build",
                    "create",
                    "--service",
                    "teleport",
                    "--version",
                    &version,
                    "--branch",
                    "master",
                    "--commit",
                    commit,
                    "--expect",
                    "linux-amd64/teleport.tar.gz",
                    "--expect",
                    "teleport_amd64.deb",
                    "--expect",
                    "teleport.oci",
                ],
            )
            .ok()
            .trim()
            .to_string();
        // Three CI jobs push at once.
        let jobs: Vec<_> = [
            ("linux-amd64/teleport.tar.gz", vec![]),
            (
                "teleport_amd64.deb",
                // A stand-in, not a Debian package: pushed as a plain file.
                vec!["--kind", "other", "--derived-from", "linux-amd64/teleport.tar.gz"],
            ),
            ("teleport.oci", vec!["--derived-from", "teleport_amd64.deb"]),
        ]
        .into_iter()
        .map(|(name, extra)| {
            let (server, ci, id) = (server.clone(), ci.clone(), id.clone());
            let dir = w.join(format!("{commit}-{}", name.replace('/', "-")));
            std::thread::spawn(move || {
                write_files(&dir, &[(name, format!("{name} of {id}").as_bytes())]);
                let mut args = vec!["push", id.as_str(), name, "--name", name];
                args.extend(extra);
                server.tug_as(&ci, &dir, &args).ok().to_string()
            })
        })
        .collect();
        for j in jobs {
            j.join().unwrap();
        }
        server.tug_as(&ci, &w, &["build", "seal", &id]).ok();
        id
    };
    let first = build_through("4f2a9c1e");
    let status = |env: &str| -> Option<String> {
        let s = server.tug(&w, &["status", "teleport", "--output", "json"]).json();
        let e = s["environments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["environment"] == env)
            .unwrap()
            .clone();
        e["current"]["build"].as_str().map(str::to_string)
    };
    assert_eq!(status("canary").as_deref(), Some(first.as_str()));

    // Internal takes it only after it soaked in canary.
    let early = server.tug_as(&deployer, &w, &["promote", "teleport", "--to", "internal"]);
    if early.code != 0 {
        assert!(early.stderr.contains("soak"), "{}", early.stderr);
        crate::support::eventually(20, || {
            (server
                .tug_as(&deployer, &w, &["promote", "teleport", "--to", "internal"])
                .code
                == 0)
                .then_some(())
        });
    }
    assert_eq!(status("internal").as_deref(), Some(first.as_str()));

    // Trials needs one approval, production two.
    let asked = server
        .tug_as(
            &deployer,
            &w,
            &["promote", "teleport", "--to", "trials", "--output", "json"],
        )
        .json();
    assert_eq!(asked["status"], "pending_approval");
    server
        .tug_as(
            &alice,
            &w,
            &["approve", "teleport", "--env", "trials", "--build", &first],
        )
        .ok();
    assert_eq!(status("trials").as_deref(), Some(first.as_str()));
    server
        .tug_as(&deployer, &w, &["promote", "teleport", "--to", "production"])
        .ok();
    server
        .tug_as(
            &alice,
            &w,
            &["approve", "teleport", "--env", "production", "--build", &first],
        )
        .ok();
    assert_eq!(status("production"), None);
    server
        .tug_as(
            &bob,
            &w,
            &["approve", "teleport", "--env", "production", "--build", &first],
        )
        .ok();
    assert_eq!(status("production").as_deref(), Some(first.as_str()));

    // A second build goes straight to production (a release, approved),
    // then production is rolled back without waiting for anyone.
    let second = build_through("9b8c7d6e");
    server
        .tug_as(
            &deployer,
            &w,
            &["release", "teleport", "--env", "production", "--build", &second],
        )
        .ok();
    server
        .tug_as(
            &alice,
            &w,
            &["approve", "teleport", "--env", "production", "--build", &second],
        )
        .ok();
    server
        .tug_as(
            &bob,
            &w,
            &["approve", "teleport", "--env", "production", "--build", &second],
        )
        .ok();
    assert_eq!(status("production").as_deref(), Some(second.as_str()));
    let rolled = server
        .tug_as(
            &deployer,
            &w,
            &["rollback", "teleport", "--env", "production", "--output", "json"],
        )
        .json();
    assert_eq!(rolled["status"], "deployed");
    assert_eq!(status("production").as_deref(), Some(first.as_str()));

    // An embargoed security fix goes only to the private environment.
    write_files(&w, &[("fix.tar.gz", b"security fix")]);
    let fix = server
        .tug_as(
            &ci,
            &w,
            &[
                "push",
                "--service",
                "teleport",
                "--version",
                "16.0.1",
                "--branch",
                "master",
                "--embargo",
                "--seal",
                "fix.tar.gz",
                "--output",
                "json",
            ],
        )
        .json();
    let fix = fix["build"].as_str().unwrap().to_string();
    assert_eq!(
        status("canary").as_deref(),
        Some(second.as_str()),
        "an embargoed build is not auto-released to canary"
    );
    // A deployer may not see it at all; an admin may, but not into
    // production.
    let err = server
        .tug_as(
            &deployer,
            &w,
            &["release", "teleport", "--env", "security", "--build", &fix],
        )
        .fails()
        .to_string();
    assert!(err.contains("build_not_found"), "{err}");
    let err = server
        .tug(&w, &["release", "teleport", "--env", "production", "--build", &fix])
        .fails()
        .to_string();
    assert!(err.contains("embargo"), "{err}");
    server
        .tug(&w, &["release", "teleport", "--env", "security", "--build", &fix])
        .ok();
    assert_eq!(status("security").as_deref(), Some(fix.as_str()));

    let history = server
        .tug(&w, &["history", "teleport", "--env", "production", "--output", "json"])
        .json();
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["rollback", "release", "promote"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_listed_applied_and_deleted_as_pipeline_revisions() {
    let server = TestServer::start_with(Backend::Embedded, &["--server-rule", "prod=^master$"]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    apply(&server, w, LUNAR).ok();
    let listed = server.tug(w, &["policy", "list", "api", "--output", "json"]).json();
    let policies: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}:{}={}",
                p["environment"].as_str().unwrap(),
                p["policy"].as_str().unwrap(),
                p["value"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        policies,
        vec![
            "dev:auto-release=master",
            "prod:upstream=dev",
            "prod:branch-restriction=^master$",
            // The server-wide rule, listed as such.
            "prod:branch-restriction=^master$"
        ]
    );
    assert_eq!(listed[3]["scope"], "server");

    let applied = server
        .tug(
            w,
            &[
                "policy",
                "apply",
                "api",
                "--env",
                "prod",
                "--soak",
                "90m",
                "--approvals",
                "1",
                "--freeze",
                "Sat 00:00 - Mon 06:00",
                "--tz",
                "Europe/Berlin",
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(applied["revision"], 2);
    let table = server.tug(w, &["policy", "list", "api"]).ok().to_string();
    for needle in [
        "1h30m",
        "approvals",
        "Sat 00:00 - Mon 06:00 Europe/Berlin",
        "revision 2",
    ] {
        assert!(table.contains(needle), "{needle}:\n{table}");
    }
    server
        .tug(w, &["policy", "delete", "api", "--env", "prod", "--policy", "soak"])
        .ok();
    let shown = server.tug(w, &["pipeline", "show", "api"]).ok().to_string();
    assert!(!shown.contains("soak") && shown.contains("approvals = 1"), "{shown}");

    // Bad values and conflicts are refused and change nothing.
    let err = server
        .tug(
            w,
            &[
                "policy",
                "apply",
                "api",
                "--env",
                "prod",
                "--branch-restriction",
                "^(master",
            ],
        )
        .fails()
        .to_string();
    assert!(err.contains("regex") || err.contains("unclosed"), "{err}");
    let err = server
        .tug(
            w,
            &["policy", "apply", "api", "--env", "prod", "--auto-release", "hotfix"],
        )
        .fails()
        .to_string();
    assert!(
        err.contains("prod=^master$") || err.contains("branch_restriction"),
        "{err}"
    );
    let err = server
        .tug(w, &["policy", "delete", "api", "--env", "dev", "--policy", "soak"])
        .fails()
        .to_string();
    assert!(err.contains("no soak policy"), "{err}");
    let err = server
        .tug(w, &["policy", "delete", "api", "--env", "qa", "--policy", "soak"])
        .fails()
        .to_string();
    assert!(err.contains("no environment qa"), "{err}");
    let revision = server.tug(w, &["pipeline", "show", "api", "--output", "json"]).json()["revision"].clone();
    assert_eq!(revision, 3, "only the successful changes made revisions");
    let history = server
        .tug(w, &["pipeline", "history", "api", "--output", "json"])
        .json();
    let revisions: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revisions, vec![3, 2, 1]);
    assert!(history.as_array().unwrap().iter().all(|r| r["changed_by"] == "admin"));
    assert!(history[2]["spec"].as_str().unwrap().contains("^master$"));
    assert!(server
        .tug(w, &["pipeline", "history", "api"])
        .ok()
        .contains("prod (from dev)"));

    // A change based on an old revision is refused, not lost.
    let res = server
        .http(reqwest::Method::PUT, "/v1/services/api/pipeline")
        .json(&serde_json::json!({"spec": LUNAR, "base_revision": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "conflict");
}
