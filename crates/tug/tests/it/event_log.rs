//! The event log through the real binary, on SQLite and on PostgreSQL: a
//! change and its event commit together (an event that cannot be recorded
//! refuses the change), events speak the public schema, `tug audit verify`
//! names an event edited or deleted behind the server's back, `tug audit
//! export` writes the whole log as JSON lines, and the events recorded
//! before the log had a hash chain are rewritten and chained when the
//! server starts.

use std::path::Path;

use serde_json::Value;
use sqlx::Connection;

use crate::deploy::{apply, current, sealed};
use crate::support::{Backend, TestServer};

const PIPELINE: &str = r#"
service = "api"

[[environments]]
name = "dev"
"#;

/// A connection to the server's database, behind its back.
async fn database(server: &TestServer) -> sqlx::AnyConnection {
    database_at(&server.database_url()).await
}

async fn database_at(url: &str) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot open {url}: {e}"))
}

/// Runs statements on the server's database.
async fn sql(server: &TestServer, statements: &[&str]) {
    let mut db = database(server).await;
    for s in statements {
        sqlx::raw_sql(s)
            .execute(&mut db)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    db.close().await.unwrap();
}

/// One integer a query returns.
async fn number(server: &TestServer, query: &str) -> i64 {
    let mut db = database(server).await;
    let n: i64 = sqlx::query_scalar(query).fetch_one(&mut db).await.unwrap();
    db.close().await.unwrap();
    n
}

async fn dev_seq(server: &TestServer) -> i64 {
    number(
        server,
        "SELECT COALESCE(MAX(seq), 0) FROM environments WHERE service = 'api' AND name = 'dev'",
    )
    .await
}

/// Makes every insert into the event log fail, as a full disk or a broken
/// table would.
async fn refuse_events(server: &TestServer) {
    if server.database_url().starts_with("sqlite:") {
        sql(
            server,
            &["CREATE TRIGGER refuse_events BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'events refused'); END"],
        )
        .await;
    } else {
        sql(
            server,
            &[
                "CREATE FUNCTION refuse_events() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'events refused'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse_events BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_events()",
            ],
        )
        .await;
    }
}

async fn allow_events(server: &TestServer) {
    let drop = if server.database_url().starts_with("sqlite:") {
        "DROP TRIGGER refuse_events"
    } else {
        "DROP TRIGGER refuse_events ON events"
    };
    sql(server, &[drop]).await;
}

/// A service `api` with one environment `dev`, and two sealed builds.
fn two_builds(server: &TestServer, w: &Path) -> (String, String) {
    server.tug(w, &["service", "create", "api"]).ok();
    apply(server, w, PIPELINE).ok();
    let b1 = sealed(server, w, "master", "aaaaaaa1", "1.0.0");
    let b2 = sealed(server, w, "master", "bbbbbbb2", "1.0.1");
    (b1, b2)
}

/// A release whose event cannot be recorded is refused and deploys
/// nothing: before events were written in the deployment's transaction,
/// the deployment committed and its event was lost.
async fn a_release_whose_event_is_not_recorded_is_refused_and_deploys_nothing(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let (b1, b2) = two_builds(server, w);
    server.tug(w, &["release", "api", "--env", "dev", "--build", &b1]).ok();
    let seq = dev_seq(server).await;
    let events = number(server, "SELECT COUNT(*) FROM events").await;

    refuse_events(server).await;
    let err = server
        .tug(w, &["release", "api", "--env", "dev", "--build", &b2])
        .fails()
        .to_string();
    assert!(err.contains("HTTP 500") && err.contains("internal"), "{err}");
    assert_eq!(
        current(server, w, "dev").as_deref(),
        Some(b1.as_str()),
        "nothing deployed"
    );
    assert_eq!(dev_seq(server).await, seq, "the environment's seq did not move");
    let history = server
        .tug(w, &["history", "api", "--env", "dev", "--output", "json"])
        .json();
    assert_eq!(history.as_array().unwrap().len(), 1, "{history:#}");
    // Any change: a yank is refused and leaves the build as it was.
    server.tug(w, &["build", "yank", &b2, "--reason", "r"]).fails();
    let shown = server.tug(w, &["build", "show", &b2, "--output", "json"]).json();
    assert!(shown["yanked_at"].is_null(), "{shown:#}");
    assert_eq!(number(server, "SELECT COUNT(*) FROM events").await, events);

    allow_events(server).await;
    server.tug(w, &["release", "api", "--env", "dev", "--build", &b2]).ok();
    assert_eq!(current(server, w, "dev").as_deref(), Some(b2.as_str()));
    assert_eq!(dev_seq(server).await, seq + 1);
    server.tug(w, &["audit", "verify"]).ok();
}

on_both!(
    a_release_whose_event_is_not_recorded_is_refused_and_deploys_nothing,
    a_release_whose_event_is_not_recorded_is_refused_and_deploys_nothing_on_sqlite,
    a_release_whose_event_is_not_recorded_is_refused_and_deploys_nothing_on_postgres
);

/// Every event of the log, whole, as `tug audit export` writes it.
fn export(server: &TestServer, w: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "export"];
    all.extend(args);
    server
        .tug(w, &all)
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `tug audit verify`'s JSON answer and exit code.
fn verify(server: &TestServer, w: &Path) -> (Value, i32) {
    let run = server.tug(w, &["audit", "verify", "--output", "json"]);
    (serde_json::from_str(&run.stdout).unwrap(), run.code)
}

/// An audit log that someone edits or deletes from behind the server's
/// back is found out, naming the event.
async fn tug_audit_verify_names_the_event_edited_or_deleted(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let (b1, _) = two_builds(server, w);
    server.tug(w, &["release", "api", "--env", "dev", "--build", &b1]).ok();
    server
        .tug(w, &["token", "create", "--name", "dash", "--role", "viewer"])
        .ok();
    let run = server.tug(w, &["audit", "verify"]);
    let said = run.ok().to_string();
    let records = export(server, w, &[]);
    let n = records.len();
    assert!(n >= 8, "{records:#?}");
    assert!(said.contains(&format!("Verified {n} events")), "{said}");

    // An event's content changed.
    let deployment = records.iter().find(|r| r["kind"] == "deployment").unwrap();
    let id = deployment["id"].as_i64().unwrap();
    sql(
        server,
        &[&format!(
            "UPDATE events SET payload = REPLACE(payload, '\"dev\"', '\"prod\"') WHERE id = {id}"
        )],
    )
    .await;
    let (v, code) = verify(server, w);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["ok"], false);
    assert_eq!(v["broken"]["id"], id, "{v:#}");
    assert_eq!(v["broken"]["problem"], "hash_mismatch", "{v:#}");
    let table = server.tug(w, &["audit", "verify"]);
    assert_eq!(table.code, 1);
    assert!(
        table.stdout.contains(&format!("BROKEN at event {id}")) && table.stdout.contains("was changed"),
        "{}",
        table.stdout
    );
    sql(
        server,
        &[&format!(
            "UPDATE events SET payload = REPLACE(payload, '\"prod\"', '\"dev\"') WHERE id = {id}"
        )],
    )
    .await;
    assert_eq!(verify(server, w).1, 0, "put back as it was");

    // A column readers filter on, changed to hide an event from a service.
    sql(
        server,
        &[&format!("UPDATE events SET service = 'other' WHERE id = {id}")],
    )
    .await;
    let (v, _) = verify(server, w);
    assert_eq!(
        (v["broken"]["id"].as_i64(), v["broken"]["problem"].as_str()),
        (Some(id), Some("unreadable"))
    );
    sql(server, &[&format!("UPDATE events SET service = 'api' WHERE id = {id}")]).await;

    // An event deleted: its successor names its missing predecessor.
    sql(server, &["DELETE FROM events WHERE id = 3"]).await;
    let (v, code) = verify(server, w);
    assert_eq!(code, 1);
    assert_eq!(v["broken"]["id"], 4, "{v:#}");
    assert_eq!(v["broken"]["problem"], "predecessor_missing");
    assert!(
        v["broken"]["message"]
            .as_str()
            .unwrap()
            .contains("predecessor of event 4 is missing"),
        "{v:#}"
    );
}

on_both!(
    tug_audit_verify_names_the_event_edited_or_deleted,
    tug_audit_verify_names_the_event_edited_or_deleted_on_sqlite,
    tug_audit_verify_names_the_event_edited_or_deleted_on_postgres
);

/// Deleting only the newest event is found through the log's head.
async fn tug_audit_verify_finds_the_newest_event_deleted(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    two_builds(server, w);
    let newest = number(server, "SELECT MAX(id) FROM events").await;
    sql(server, &[&format!("DELETE FROM events WHERE id = {newest}")]).await;
    let (v, code) = verify(server, w);
    assert_eq!(code, 1);
    assert_eq!(v["broken"]["id"], newest, "{v:#}");
    assert_eq!(v["broken"]["problem"], "newest_missing", "{v:#}");
}

on_both!(
    tug_audit_verify_finds_the_newest_event_deleted,
    tug_audit_verify_finds_the_newest_event_deleted_on_sqlite,
    tug_audit_verify_finds_the_newest_event_deleted_on_postgres
);

/// `tug audit export` writes every event once, in order, whole, with its
/// hashes; `--since` takes an id or a time, `--service` one service; only
/// an admin may export, and no event carries a token's secret or hash.
async fn tug_audit_export_writes_the_whole_log_as_json_lines(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let (b1, _) = two_builds(server, w);
    server.tug(w, &["service", "create", "web"]).ok();
    let secret = server
        .tug(
            w,
            &[
                "token",
                "create",
                "--name",
                "ci-web",
                "--role",
                "ci",
                "--service",
                "web",
            ],
        )
        .ok()
        .trim()
        .to_string();
    server.tug(w, &["release", "api", "--env", "dev", "--build", &b1]).ok();
    server.tug(w, &["token", "revoke", "ci-web"]).ok();

    let all = export(server, w, &[]);
    let ids: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as i64).collect::<Vec<_>>(),
        "every id once, in order"
    );
    for pair in all.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    assert_eq!(
        all[0]["prev_hash"],
        "sha256:0000000000000000000000000000000000000000000000000000000000000000"
    );
    assert!(all.iter().all(|r| r["schema_version"] == 1));
    let kinds: Vec<&str> = all.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    for kind in [
        "token.created",
        "service.created",
        "pipeline.applied",
        "build.created",
        "build.sealed",
        "deployment",
        "token.revoked",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let created = all
        .iter()
        .find(|r| r["kind"] == "token.created" && r["token"]["name"] == "ci-web")
        .unwrap();
    assert_eq!(created["service"], "web");
    assert_eq!(created["actor"]["role"], "admin");
    let text = serde_json::to_string(&all).unwrap();
    let hash = crate::support::digest_of(secret.as_bytes()).hex();
    assert!(!text.contains(&secret) && !text.contains(&hash), "no secret, no hash");
    let deployment = all.iter().find(|r| r["kind"] == "deployment").unwrap();
    assert_eq!(deployment["build"]["id"], b1.as_str());
    assert_eq!(deployment["build"]["source"]["commit"], "aaaaaaa1");
    assert_eq!(deployment["deployment_kind"], "release");

    let after = export(server, w, &["--since", "3"]);
    assert_eq!(after.first().unwrap()["id"], 4);
    assert_eq!(after.len(), all.len() - 3);
    let at = all[4]["at"].as_str().unwrap();
    let since_time = export(server, w, &["--since", at]);
    // Times, not their text: a whole second is written without a fraction.
    let time = |v: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert!(since_time.iter().all(|r| time(&r["at"]) >= time(&all[4]["at"])));
    assert!(since_time.iter().any(|r| r["id"] == all[4]["id"]));
    let web = export(server, w, &["--service", "web"]);
    assert!(!web.is_empty() && web.iter().all(|r| r["service"] == "web"), "{web:#?}");

    let err = server
        .tug(w, &["audit", "export", "--since", "yesterday"])
        .fails()
        .to_string();
    assert!(
        err.contains("HTTP 400") && err.contains("neither an event id nor a time"),
        "{err}"
    );
    let viewer = server
        .tug(w, &["token", "create", "--name", "dash", "--role", "viewer"])
        .ok()
        .trim()
        .to_string();
    for args in [&["audit", "export"][..], &["audit", "verify"]] {
        let err = server.tug_as(&viewer, w, args).fails().to_string();
        assert!(err.contains("HTTP 403") && err.contains("audit log"), "{err}");
    }
}

on_both!(
    tug_audit_export_writes_the_whole_log_as_json_lines,
    tug_audit_export_writes_the_whole_log_as_json_lines_on_sqlite,
    tug_audit_export_writes_the_whole_log_as_json_lines_on_postgres
);

const OLD_BUILD: &str = "0190aaaa-0000-7000-8000-0000000000b1";
const OLD_DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// A database as Tugboat left it before its event log had a hash chain:
/// the migrations before 0014, a service, a token, a build and events in
/// the old shapes (with gaps in their ids, as sequences leave them).
async fn old_database(url: &str, dialect: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tug-db/migrations")
        .join(dialect);
    let mut migrator = sqlx::migrate::Migrator::new(dir).await.unwrap();
    let before: Vec<sqlx::migrate::Migration> =
        migrator.migrations.iter().filter(|m| m.version < 14).cloned().collect();
    migrator.migrations = before.into();
    let mut db = database_at(url).await;
    migrator.run(&mut db).await.unwrap();
    let event = |id: i64, kind: &str, actor: Option<&str>, payload: String| {
        format!(
            "INSERT INTO events (id, at, kind, service, actor, payload, build_id) VALUES ({id}, {}, '{kind}', 'api', {}, '{payload}', '{OLD_BUILD}')",
            1_700_000_010_000 + id,
            actor.map_or("NULL".to_string(), |a| format!("'{a}'")),
        )
    };
    let statements = [
        "INSERT INTO services (name, created_at) VALUES ('api', 1700000000000)".to_string(),
        "INSERT INTO tokens (id, name, role, service, secret_hash, created_at, created_by) \
         VALUES ('0190aaaa-0000-7000-8000-000000000001', 'alice', 'deployer', NULL, 'h1', 1700000000000, 'admin')"
            .to_string(),
        format!(
            "INSERT INTO builds (id, service, version, state, branch, commit_sha, expected, created_at, updated_at, \
             created_by, sealed_at, manifest_digest) VALUES ('{OLD_BUILD}', 'api', '1.2.3', 'sealed', 'master', \
             'abc1234', '[]', 1700000001000, 1700000001000, 'alice', 1700000002000, '{OLD_DIGEST}')"
        ),
        event(
            1,
            "build.created",
            Some("alice"),
            format!(
                r#"{{"build":"{OLD_BUILD}","version":"1.2.3","branch":"master","commit":"abc1234","state":"draft","manifest_digest":null}}"#
            ),
        ),
        event(2, "pipeline.applied", Some("alice"), r#"{"revision":1}"#.to_string()),
        event(
            4,
            "deployment",
            Some("alice"),
            format!(
                r#"{{"environment":"dev","build":"{OLD_BUILD}","kind":"release","seq":1,"replaced":null,"reason":"first","override_freeze":false}}"#
            ),
        ),
        event(
            5,
            "approval.expired",
            None,
            format!(
                r#"{{"environment":"prod","build":"{OLD_BUILD}","kind":"promote","requested_by":"alice","state":"expired"}}"#
            ),
        ),
        event(
            7,
            "rollout.halted",
            Some("rollout"),
            format!(r#"{{"environment":"dev","build":"{OLD_BUILD}","seq":1,"reason":"2 agent(s) failed"}}"#),
        ),
    ];
    for s in &statements {
        sqlx::raw_sql(s)
            .execute(&mut db)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    db.close().await.unwrap();
}

/// Upgrading keeps the log's history: the events recorded before the hash
/// chain are rewritten in the event schema (what they lacked looked up)
/// and chained, once, before the server records anything new.
async fn old_events_are_rewritten_and_chained_when_the_server_starts(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (url, dialect) = match &backend {
        Backend::Embedded => {
            let data = dir.path().join("tug-data");
            std::fs::create_dir(&data).unwrap();
            std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
            (format!("sqlite://{}/tug.db?mode=rwc", data.display()), "sqlite")
        }
        Backend::Shared { database, .. } => (database.clone(), "postgres"),
    };
    old_database(&url, dialect).await;
    let mut server = TestServer::start_in(dir, backend, &[], &[]);
    let w = tempfile::tempdir().unwrap();
    let w = w.path();

    let (v, code) = verify(&server, w);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["events"], 6, "five old events and the first admin token: {v:#}");
    let all = export(&server, w, &[]);
    let ids: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 4, 5, 7, 8], "old ids are kept");
    assert!(all.iter().all(|r| r["schema_version"] == 1), "{all:#?}");
    let kinds: Vec<&str> = all.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "build.created",
            "pipeline.applied",
            "deployment",
            "approval.expired",
            "rollout.halted",
            "token.created"
        ]
    );
    // What an old event lacked is looked up: the build's digest and
    // source, the actor's role.
    assert_eq!(all[0]["build"]["manifest_digest"], OLD_DIGEST);
    assert_eq!(all[0]["build"]["source"]["commit"], "abc1234");
    assert_eq!(
        all[0]["actor"],
        serde_json::json!({"name": "alice", "role": "deployer"})
    );
    assert_eq!(all[2]["deployment_kind"], "release");
    assert_eq!(all[2]["reason"], "first");
    assert_eq!(all[2]["requested_by"], "alice");
    assert!(all[3]["actor"].is_null() && all[3]["request"].is_null(), "{:#}", all[3]);
    assert_eq!(all[3]["deployment_kind"], "promote");
    assert!(all[4]["actor"].is_null(), "a halt on failures is nobody's doing");
    assert_eq!(all[4]["reason"], "2 agent(s) failed");
    assert_eq!(all[5]["token"]["name"], "admin");

    // Readers get the old events in the schema too.
    let watched = server.tug(w, &["watch", "--since", "0", "--count", "6", "--output", "json"]);
    let watched: Vec<Value> = watched.ok().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(watched.len(), 6);
    assert_eq!(watched[2]["kind"], "deployment");

    // A restart chains nothing again.
    server.restart();
    let (v, code) = verify(&server, w);
    assert_eq!((code, v["events"].as_u64()), (0, Some(6)), "{v:#}");
    assert_eq!(export(&server, w, &[]), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_are_rewritten_and_chained_when_the_server_starts_on_sqlite() {
    old_events_are_rewritten_and_chained_when_the_server_starts(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_are_rewritten_and_chained_when_the_server_starts_on_postgres() {
    old_events_are_rewritten_and_chained_when_the_server_starts(Backend::postgres_s3().await).await;
}
