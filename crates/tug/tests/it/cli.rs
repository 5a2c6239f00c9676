//! The command line as people meet it: tables that fit 80 columns with ids
//! whole, short ids accepted wherever a build or token is read, an
//! ambiguous prefix refused with its candidates, shell completions, help
//! and values on every flag, one meaning per flag name, the message when
//! no server answers, pipeline revisions that change nothing refused and
//! the changes of each revision shown, and a quiet exit when the reader of
//! the output goes away.

use std::path::Path;

use reqwest::Method;
use serde_json::{json, Value};
use unicode_width::UnicodeWidthStr;

use crate::support::{write_files, Backend, TestServer};

const PIPELINE: &str = r#"
service = "api"

[[environments]]
name = "dev"
auto_release = { branch = "master" }

[[environments]]
name = "production"
upstream = "dev"
approvals = 1
"#;

/// Creates service `api` with [`PIPELINE`].
fn setup(server: &TestServer, w: &Path) {
    server.tug(w, &["service", "create", "api"]).ok();
    std::fs::write(w.join("pipeline.toml"), PIPELINE).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "pipeline.toml"]).ok();
}

/// A build's short id as the server reports it now. (A later build may
/// share more of the id and lengthen it, as a new commit can lengthen a
/// git short hash.)
fn short_of(server: &TestServer, w: &Path, id: &str) -> String {
    let short = server.tug(w, &["build", "show", id, "--output", "json"]).json()["short_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(id.starts_with(&short) && short.len() < id.len(), "{short} of {id}");
    short
}

/// Pushes and seals a build of master with a long commit message; returns
/// its full id.
fn sealed(server: &TestServer, w: &Path, n: u32) -> String {
    let file = format!("file-{n}.bin");
    write_files(w, &[(file.as_str(), format!("contents {n}").as_bytes())]);
    let version = format!("1.{n}.0");
    let commit = format!("{n:0>40}");
    let pushed = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--branch",
                "master",
                "--commit",
                &commit,
                "--version",
                &version,
                "--author",
                "Ada Lovelace <ada@example.com>",
                "--message",
                "Make the release pipeline understand short identifiers everywhere they are typed",
                "--seal",
                &file,
                "--output",
                "json",
            ],
        )
        .json();
    pushed["build"].as_str().unwrap().to_string()
}

/// Creates the approver token `ann`; returns its secret.
fn approver(server: &TestServer, w: &Path) -> String {
    let created = server
        .tug(
            w,
            &[
                "token", "create", "--name", "ann", "--role", "approver", "--output", "json",
            ],
        )
        .json();
    created["secret"].as_str().unwrap().to_string()
}

/// Runs a command that must fail; returns its stderr.
fn refused(server: &TestServer, w: &Path, args: &[&str]) -> String {
    server.tug(w, args).fails().to_string()
}

/// A loopback port nothing listens on (it was free a moment ago).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn widest(text: &str) -> usize {
    text.lines().map(UnicodeWidthStr::width).max().unwrap_or(0)
}

/// Whether `text` has `id` whole on one of its lines.
fn shows_whole(text: &str, id: &str) -> bool {
    text.lines().any(|l| l.contains(id))
}

async fn status_fits_80_columns_with_ids_whole(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(server, w);
    // Builds made within a second share their first 9 to 12 hex digits.
    let ids: Vec<String> = (1..=3).map(|n| sealed(server, w, n)).collect();
    let builds: Vec<(String, String)> = ids.iter().map(|id| (id.clone(), short_of(server, w, id))).collect();
    let (old, _) = &builds[0];
    let (newest, newest_short) = &builds[2];
    server
        .tug(w, &["release", "api", "--env", "production", "--build", old])
        .ok();
    let approver = approver(server, w);
    server
        .tug_as(&approver, w, &["approve", "api", "--env", "production", "--build", old])
        .ok();

    let narrow = server.tug_env(&server.admin_token, w, &[("COLUMNS", "80")], &["status", "api"]);
    let table = narrow.ok();
    assert!(widest(table) <= 80, "wider than 80 columns:\n{table}");
    assert!(shows_whole(table, newest_short), "{newest_short} not whole:\n{table}");
    let status = server.tug(w, &["status", "api", "--output", "json"]).json();
    let prod_short = status["environments"][1]["current"]["summary"]["short_id"]
        .as_str()
        .unwrap();
    assert!(old.starts_with(prod_short));
    assert!(shows_whole(table, prod_short), "{prod_short} not whole:\n{table}");
    assert!(!table.contains(newest.as_str()), "the full id is not needed:\n{table}");

    // Piped without COLUMNS: no limit, every column.
    let wide = server.tug(w, &["status", "api"]).ok().to_string();
    assert!(
        wide.contains("Ada Lovelace") && wide.contains("short identifiers"),
        "{wide}"
    );
    // Wider terminals show more, narrower ones fewer columns; never a wrap.
    for columns in ["60", "120"] {
        let t = server.tug_env(&server.admin_token, w, &[("COLUMNS", columns)], &["status", "api"]);
        let t = t.ok();
        assert!(widest(t) <= columns.parse().unwrap(), "{columns}:\n{t}");
        assert!(shows_whole(t, newest_short), "{columns}:\n{t}");
    }
    // Other tables fit as well.
    for args in [
        vec!["build", "list", "--service", "api"],
        vec!["history", "api", "--env", "production"],
        vec!["token", "list"],
        vec!["pipeline", "history", "api"],
        vec!["policy", "list", "api"],
    ] {
        let t = server.tug_env(&server.admin_token, w, &[("COLUMNS", "80")], &args);
        let t = t.ok();
        assert!(widest(t) <= 80, "{args:?}:\n{t}");
    }
    let list = server.tug_env(
        &server.admin_token,
        w,
        &[("COLUMNS", "80")],
        &["build", "list", "--service", "api"],
    );
    for (_, short) in &builds {
        assert!(shows_whole(&list.stdout, short), "{short}:\n{}", list.stdout);
    }
}

on_both!(
    status_fits_80_columns_with_ids_whole,
    status_fits_80_columns_with_ids_whole_on_sqlite,
    status_fits_80_columns_with_ids_whole_on_postgres
);

async fn short_ids_are_read_wherever_a_build_is(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(server, w);
    let (a, b) = (sealed(server, w, 1), sealed(server, w, 2));
    let (a_short, b_short) = (short_of(server, w, &a), short_of(server, w, &b));

    // show, with or without the hyphens, and the manifest route.
    let shown = server.tug(w, &["build", "show", &a_short, "--output", "json"]).json();
    assert_eq!(shown["id"], a.as_str());
    let bare: String = b_short.chars().filter(|c| *c != '-').collect();
    let shown = server.tug(w, &["build", "show", &bare, "--output", "json"]).json();
    assert_eq!(shown["id"], b.as_str());
    let text = server.tug(w, &["build", "show", &a_short]).ok().to_string();
    assert!(text.contains("1 artifact\n"), "{text}");
    let res = server
        .http(Method::GET, &format!("/v1/builds/{a_short}/manifest"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // release --build, approve --build, rollback --to, diff, pull.
    let asked = server
        .tug(
            w,
            &[
                "release",
                "api",
                "--env",
                "production",
                "--build",
                &a_short,
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(asked["pending"]["build"], a.as_str());
    assert_eq!(asked["pending"]["build_short_id"], a_short.as_str());
    let approver = approver(server, w);
    let approved = server
        .tug_as(
            &approver,
            w,
            &[
                "approve",
                "api",
                "--env",
                "production",
                "--build",
                &a_short,
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(approved["deployment"]["build"], a.as_str());
    server
        .tug(w, &["release", "api", "--env", "production", "--build", &b_short])
        .ok();
    server
        .tug_as(
            &approver,
            w,
            &["approve", "api", "--env", "production", "--build", &b_short],
        )
        .ok();
    let history = server
        .tug(w, &["history", "api", "--env", "production", "--output", "json"])
        .json();
    assert_eq!(history[0]["replaced_short_id"], a_short.as_str());
    let rolled = server
        .tug(
            w,
            &[
                "rollback",
                "api",
                "--env",
                "production",
                "--to",
                &a_short,
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(rolled["deployment"]["build"], a.as_str());
    assert_eq!(rolled["deployment"]["replaced_short_id"], b_short.as_str());
    let text = server
        .tug(w, &["rollback", "api", "--env", "production", "--to", &b_short])
        .ok()
        .to_string();
    assert!(text.contains(&format!("Rolled back to {b_short} 1.2.0")), "{text}");
    assert!(text.contains(&format!("It replaced build {a_short}.")), "{text}");
    let diff = server
        .tug(
            w,
            &["diff", "api", "--from", &a_short, "--to", &b_short, "--output", "json"],
        )
        .json();
    assert_eq!(
        (diff["from"]["id"].as_str(), diff["to"]["id"].as_str()),
        (Some(a.as_str()), Some(b.as_str()))
    );
    let dest = w.join("pulled");
    server
        .tug(w, &["pull", &b_short, "--dest", dest.to_str().unwrap()])
        .ok();
    assert_eq!(std::fs::read(dest.join("file-2.bin")).unwrap(), b"contents 2");

    // A draft by its short id: push into it, seal it; yank and mark it critical.
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
                "--output",
                "json",
            ],
        )
        .json();
    let draft_short = draft["short_id"].as_str().unwrap().to_string();
    write_files(w, &[("late.bin", b"late")]);
    server.tug(w, &["push", &draft_short, "late.bin"]).ok();
    let sealed_draft = server
        .tug(w, &["build", "seal", &draft_short, "--output", "json"])
        .json();
    assert_eq!(sealed_draft["id"], draft["id"]);
    assert_eq!(sealed_draft["state"], "sealed");
    server.tug(w, &["build", "mark-critical", &draft_short]).ok();
    let yanked = server
        .tug(
            w,
            &["build", "yank", &draft_short, "--reason", "bad", "--output", "json"],
        )
        .json();
    assert!(yanked["yanked_at"].is_string());

    // Tokens: revoked by the short id `tug token list` shows.
    let tokens = server.tug(w, &["token", "list", "--output", "json"]).json();
    let ann = tokens.as_array().unwrap().iter().find(|t| t["name"] == "ann").unwrap();
    let ann_short = ann["short_id"].as_str().unwrap();
    assert!(ann["id"].as_str().unwrap().starts_with(ann_short));
    assert!(server.tug(w, &["token", "list"]).ok().contains(ann_short));
    let revoked = server
        .tug(w, &["token", "revoke", ann_short, "--output", "json"])
        .json();
    assert_eq!(revoked["name"], "ann");
}

on_both!(
    short_ids_are_read_wherever_a_build_is,
    short_ids_are_read_wherever_a_build_is_on_sqlite,
    short_ids_are_read_wherever_a_build_is_on_postgres
);

async fn an_ambiguous_prefix_is_refused_naming_the_candidates(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(server, w);
    let (a, b) = (sealed(server, w, 1), sealed(server, w, 2));
    let secret = server
        .tug(
            w,
            &[
                "build",
                "create",
                "--service",
                "api",
                "--version",
                "9.9.9",
                "--embargo",
                "--output",
                "json",
            ],
        )
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // All three were made within seconds: they share their first digits
    // (the top of the timestamp in a UUIDv7).
    let common = |x: &str, y: &str| x.chars().zip(y.chars()).take_while(|(p, q)| p == q).count();
    let shared = common(&a, &b).min(common(&a, &secret)).min(6);
    assert!(shared >= 4, "{a} {b} {secret}");
    let prefix = &a[..shared];

    let res = server
        .http(Method::GET, &format!("/v1/builds/{prefix}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "ambiguous_id");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&a) && message.contains(&b), "{message}");
    // The admin may see the embargoed build, so it is a candidate; a
    // viewer may not, so it is neither named nor counted.
    assert!(message.contains(&secret), "the admin sees every build: {message}");
    let viewer = crate::deploy::token(server, w, "eve", "viewer");
    let res = server
        .client_with(&viewer)
        .build(prefix)
        .await
        .expect_err("still ambiguous between two builds the viewer sees");
    let message = res.to_string();
    assert!(message.contains(&a) && message.contains(&b), "{message}");
    assert!(!message.contains(&secret), "an embargoed build is not named: {message}");
    let err = refused(server, w, &["build", "show", prefix]);
    assert!(
        err.contains("ambiguous_id") && err.contains(&a) && err.contains("give more of the id"),
        "{err}"
    );
    let err = refused(server, w, &["release", "api", "--env", "dev", "--build", prefix]);
    assert!(err.contains("ambiguous_id"), "{err}");

    // Too short, or not hex at all: not a reference.
    let err = refused(server, w, &["build", "show", &a[..3]]);
    assert!(err.contains("at least 4 hex digits"), "{err}");
    // A prefix nothing starts with is simply not found.
    let err = refused(server, w, &["build", "show", "ffffffff"]);
    assert!(err.contains("build_not_found"), "{err}");
}

on_both!(
    an_ambiguous_prefix_is_refused_naming_the_candidates,
    an_ambiguous_prefix_is_refused_naming_the_candidates_on_sqlite,
    an_ambiguous_prefix_is_refused_naming_the_candidates_on_postgres
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_whose_ids_share_thirteen_characters_are_told_apart() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(&server, w);
    let build = sealed(&server, w, 1);
    let build_short = short_of(&server, w, &build);
    let client = server.client();
    let ids = [
        "0190c3f2-6a2b-7aaa-8000-000000000001",
        "0190c3f2-6a2b-7bbb-8000-000000000002",
    ];
    for (i, id) in ids.iter().enumerate() {
        client
            .report(&tug_api::AgentReport {
                agent_id: id.to_string(),
                hostname: format!("host-{i}"),
                platform: tug_core::Platform::parse("linux/amd64").unwrap(),
                agent_version: "0.1.0".into(),
                service: tug_core::ServiceName::parse("api").unwrap(),
                environment: tug_core::EnvName::parse("dev").unwrap(),
                build: Some(tug_core::BuildId::parse(&build).unwrap()),
                state: tug_api::AgentState::Healthy,
                error: None,
                failed_build: None,
                waiting: None,
                exit: None,
            })
            .await
            .unwrap();
    }
    let fleet = server.tug(w, &["agents", "--output", "json"]).json();
    let shorts: Vec<&str> = fleet
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["short_id"].as_str().unwrap())
        .collect();
    assert_eq!(shorts, vec!["0190c3f2-6a2b-7a", "0190c3f2-6a2b-7b"]);
    assert_eq!(fleet[0]["build_short_id"], build_short.as_str());
    let table = server.tug(w, &["agents"]).ok().to_string();
    for s in shorts {
        assert!(table.contains(s), "{s}:\n{table}");
    }
    assert!(
        table.contains(&build_short) && table.trim_end().ends_with("2 agents"),
        "{table}"
    );
    let one = server.tug(w, &["agents", "--env", "production"]).ok().to_string();
    assert!(one.trim_end().ends_with("0 agents"), "{one}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_a_running_build_was_yanked() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(&server, w);
    let id = sealed(&server, w, 1);
    let short = short_of(&server, w, &id);
    server.tug(w, &["build", "yank", &id, "--reason", "CVE-2026-1"]).ok();
    let status = server.tug(w, &["status", "api", "--output", "json"]).json();
    assert_eq!(status["environments"][0]["current"]["summary"]["yanked"], true);
    let table = server.tug(w, &["status", "api"]).ok().to_string();
    assert!(table.contains("1.1.0 (yanked)"), "{table}");
    assert!(
        table.contains(&format!("dev (yanked build running): {short} was yanked")),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_written_for_bash_zsh_and_fish() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    for (shell, marker) in [("bash", "_tug()"), ("zsh", "#compdef tug"), ("fish", "complete -c tug")] {
        let script = server.tug(w, &["completions", shell]).ok().to_string();
        assert!(script.contains(marker), "{shell}: {}", &script[..script.len().min(300)]);
        // Subcommands and a flag's values are in the script.
        assert!(script.contains("rollback") && script.contains("deployer"), "{shell}");
        std::fs::write(w.join(format!("tug.{shell}")), &script).unwrap();
    }
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(w.join("tug.bash"))
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "bash refuses the script: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let err = refused(&server, w, &["completions", "tcsh"]);
    assert!(err.contains("possible values"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_names_values_and_the_global_options() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let help = server.tug(w, &["token", "create", "--help"]).ok().to_string();
    for needle in [
        "Possible values",
        "deployer",
        "approve or reject waiting deployments",
        "Global options:",
        "--server <URL>",
    ] {
        assert!(help.contains(needle), "{needle}:\n{help}");
    }
    let err = refused(&server, w, &["token", "create", "--name", "x", "--role", "root"]);
    assert!(
        err.contains("possible values: admin, ci, deployer, approver, agent, viewer, metrics"),
        "{err}"
    );
    for args in [
        vec!["release", "--help"],
        vec!["build", "create", "--help"],
        vec!["history", "--help"],
    ] {
        let help = server.tug(w, &args).ok().to_string();
        // Every option line is followed by what it is for (the long help
        // puts it on the next line); an option without help would leave
        // two option lines in a row.
        let lines: Vec<&str> = help.lines().collect();
        for pair in lines.windows(2) {
            let is_option = |l: &str| l.trim_start().starts_with('-') && !l.trim_start().starts_with("- ");
            assert!(
                !(is_option(pair[0]) && is_option(pair[1])),
                "{args:?}: {}\n{help}",
                pair[0]
            );
        }
    }
    let help = server.tug(w, &["history", "--help"]).ok().to_string();
    assert!(
        help.contains("--env <ENV>\n          The environment whose deployments to list"),
        "{help}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_writes_into_dest_and_output_is_only_the_format() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(&server, w);
    let id = sealed(&server, w, 1);
    let pulled = server
        .tug(w, &["pull", &id, "--dest", "into", "--output", "json"])
        .json();
    assert_eq!(pulled["dest"], "into");
    assert!(w.join("into/file-1.bin").is_file());
    // `--output dir` once meant the directory to some and the format to
    // others; it is the format, always.
    let err = refused(&server, w, &["pull", &id, "--output", "dir"]);
    assert!(err.contains("invalid value 'dir' for '--output <FORMAT>'"), "{err}");
    let err = refused(&server, w, &["pull", &id, "-o", "dir"]);
    assert!(err.contains("unexpected argument '-o'"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_says_where_the_server_was_expected() {
    // A port that was just free: nothing listens there.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let w = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::support::TUG)
        .args(["status", "api"])
        .env_clear()
        .env("HOME", w.path())
        .env("TUG_SERVER", &url)
        .env("TUG_TOKEN", "tug_x")
        .current_dir(w.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains(&format!(
            "cannot reach the Tugboat server at {url}: is `tug server` running there? (set --server or TUG_SERVER)"
        )),
        "{err}"
    );
}

async fn revisions_that_change_nothing_are_refused(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(server, w);
    // The same file again, as CI applies it on every run: no new revision.
    let again = server
        .tug(w, &["pipeline", "apply", "-f", "pipeline.toml", "--output", "json"])
        .json();
    assert_eq!(
        (again["revision"].as_i64(), again["changed"].as_bool()),
        (Some(1), Some(false))
    );
    let text = server
        .tug(w, &["pipeline", "apply", "-f", "pipeline.toml"])
        .ok()
        .to_string();
    assert!(text.contains("unchanged"), "{text}");
    // The same pipeline written differently is the same pipeline.
    let res = server
        .http(Method::PUT, "/v1/services/api/pipeline")
        .json(&json!({"spec": PIPELINE.replace("approvals = 1", "approvals = 1 # one reviewer")}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["revision"].as_i64(), body["changed"].as_bool()),
        (Some(1), Some(false))
    );

    let freeze = [
        "policy",
        "apply",
        "api",
        "--env",
        "production",
        "--freeze",
        "Sat 00:00 - Mon 06:00",
        "--tz",
        "Europe/Berlin",
    ];
    server.tug(w, &freeze).ok();
    let err = refused(server, w, &freeze);
    assert!(
        err.contains("nothing to change: production already has freeze window Sat 00:00 - Mon 06:00 Europe/Berlin"),
        "{err}"
    );
    let err = refused(
        server,
        w,
        &["policy", "apply", "api", "--env", "production", "--tz", "UTC"],
    );
    assert!(err.contains("--freeze") && err.contains("--maintenance"), "{err}");
    let err = refused(
        server,
        w,
        &["policy", "apply", "api", "--env", "production", "--approvals", "1"],
    );
    assert!(err.contains("nothing to change"), "{err}");
    let err = refused(server, w, &["policy", "apply", "api", "--env", "production"]);
    assert!(err.contains("name at least one policy"), "{err}");
    // A duplicate window sent straight to the server is refused too.
    let twice = PIPELINE.replace(
        "approvals = 1",
        "freeze = [{ weekly = \"Sat 00:00 - Mon 06:00\", tz = \"UTC\" }, { weekly = \"Sat 00:00 - Mon 06:00\", tz = \"UTC\" }]",
    );
    let res = server
        .http(Method::PUT, "/v1/services/api/pipeline")
        .json(&json!({ "spec": twice }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("twice"), "{body}");

    let history = server
        .tug(w, &["pipeline", "history", "api", "--output", "json"])
        .json();
    let revisions: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revisions, vec![2, 1], "only the freeze made a revision");
}

on_both!(
    revisions_that_change_nothing_are_refused,
    revisions_that_change_nothing_are_refused_on_sqlite,
    revisions_that_change_nothing_are_refused_on_postgres
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_history_shows_what_each_revision_changed() {
    let server = TestServer::start_with(Backend::Embedded, &["--server-rule", "production=^master$"]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(&server, w);
    server
        .tug(
            w,
            &["policy", "apply", "api", "--env", "production", "--approvals", "2"],
        )
        .ok();
    server
        .tug(
            w,
            &[
                "policy",
                "apply",
                "api",
                "--env",
                "production",
                "--freeze",
                "Sat 00:00 - Mon 06:00",
                "--tz",
                "Europe/Berlin",
            ],
        )
        .ok();
    let with_qa = format!("{PIPELINE}\n[[environments]]\nname = \"qa\"\nupstream = \"dev\"\n").replace(
        "approvals = 1",
        "approvals = 2\nfreeze = [{ weekly = \"Sat 00:00 - Mon 06:00\", tz = \"Europe/Berlin\" }]",
    );
    std::fs::write(w.join("pipeline.toml"), with_qa).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "pipeline.toml"]).ok();

    let history = server
        .tug(w, &["pipeline", "history", "api", "--output", "json"])
        .json();
    let changes = |i: usize| -> Vec<Value> { history[i]["changes"].as_array().unwrap().clone() };
    assert_eq!(
        changes(0),
        vec![json!({"change": "environment_added", "environment": "qa", "upstream": "dev"})]
    );
    assert_eq!(
        changes(1),
        vec![
            json!({"change": "policy_added", "environment": "production", "policy": "freeze", "value": "Sat 00:00 - Mon 06:00 Europe/Berlin"})
        ]
    );
    assert_eq!(
        changes(2),
        vec![
            json!({"change": "policy_changed", "environment": "production", "policy": "approvals", "old": "1", "new": "2"})
        ]
    );
    assert_eq!(changes(3).len(), 4, "the first revision adds everything");
    let table = server.tug(w, &["pipeline", "history", "api"]).ok().to_string();
    for needle in [
        "+ environment qa (from dev)",
        "production: + freeze Sat 00:00 - Mon 06:00 Europe/Berlin",
        "production: approvals 1 → 2",
        "+ environment production (from dev)",
    ] {
        assert!(table.contains(needle), "{needle}:\n{table}");
    }

    // `tug policy list` shows the server-wide rule that applies, as such.
    let listed = server.tug(w, &["policy", "list", "api", "--output", "json"]).json();
    let server_rules: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["scope"] == "server")
        .collect();
    assert_eq!(server_rules.len(), 1);
    assert_eq!(
        (
            server_rules[0]["environment"].as_str(),
            server_rules[0]["value"].as_str()
        ),
        (Some("production"), Some("^master$"))
    );
    let table = server.tug(w, &["policy", "list", "api"]).ok().to_string();
    assert!(table.contains("server (cannot be changed here)"), "{table}");
    let view = server.tug(w, &["pipeline", "show", "api", "--output", "json"]).json();
    assert_eq!(
        view["server_rules"],
        json!([{"environment": "production", "branch_restriction": "^master$"}])
    );
}

/// Runs `args` with stdout a pipe whose reader is gone before the first
/// byte is written; returns the exit status and stderr.
fn run_into_closed_pipe(server: &TestServer, w: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = server.command(&server.admin_token, w, &[], args).spawn().unwrap();
    // Close our end at once: every write of the child then fails with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_tug_quietly_with_status_0() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(&server, w);
    sealed(&server, w, 1);
    for args in [
        vec!["token", "list"],
        vec!["history", "api", "--env", "dev", "--output", "json"],
        vec!["history", "api", "--env", "dev"],
        vec!["status", "api"],
        vec!["build", "list", "--service", "api", "--output", "json"],
        vec!["watch", "--since", "0", "--output", "json"],
        vec!["completions", "bash"],
    ] {
        let (code, stderr) = run_into_closed_pipe(&server, w, &args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }
    // A reader that takes one line and goes (`tug completions bash | head -1`):
    // the script is longer than a pipe holds, so the rest meets a closed pipe.
    let mut child = server
        .command(&server.admin_token, w, &[], &["completions", "bash"])
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    std::io::Read::read(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_stdout_is_closed_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("tug-data");
    let mut child = std::process::Command::new(crate::support::TUG)
        .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .env_clear()
        .env("HOME", dir.path())
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Nobody reads the banner: the first write meets a closed pipe.
    drop(child.stdout.take());
    let mut child = crate::support::KillOnDrop(child);
    crate::support::eventually(30, || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    let res = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await;
    assert!(res.is_ok_and(|r| r.status().is_success()), "the server did not answer");
    assert!(child.0.try_wait().unwrap().is_none(), "the server exited");
}
