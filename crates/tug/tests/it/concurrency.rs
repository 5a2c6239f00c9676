//! Auto-release and approvals under crashes and races, through the real
//! binary on SQLite and on PostgreSQL: a `kill -9` between a seal and its
//! auto-release loses nothing, concurrent seals end on the newest build,
//! concurrent last approvals deploy a request once, `tug policy resume`
//! catches up, and approval requests expire by themselves (with an event,
//! and in `tug status`), while `tug history` says who approved.

use std::path::Path;
use std::time::Duration;

use tug_core::{EnvName, ServiceName};

use crate::deploy::{apply, current, filled_draft, sealed, token, TRAIN};
use crate::support::{eventually, Backend, TestServer};

fn api() -> ServiceName {
    ServiceName::parse("api").unwrap()
}

fn env(name: &str) -> EnvName {
    EnvName::parse(name).unwrap()
}

fn setup(server: &TestServer, w: &Path, pipeline: &str) {
    server.tug(w, &["service", "create", "api"]).ok();
    apply(server, w, pipeline).ok();
}

/// The sealed master build auto-release should have put in trials: the
/// newest by seal time (ids, which are time-ordered, break ties).
async fn newest_sealed_master(client: &tug_client::Client) -> Option<String> {
    let builds = client
        .list_builds(&tug_api::BuildQuery {
            service: Some("api".into()),
            branch: Some("master".into()),
            state: Some("sealed".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    builds
        .into_iter()
        .max_by(|a, b| (a.sealed_at, a.id.as_str()).cmp(&(b.sealed_at, b.id.as_str())))
        .map(|b| b.id.to_string())
}

async fn trials_runs(client: &tug_client::Client) -> Option<String> {
    let status = client.status(&api()).await.unwrap();
    status
        .environments
        .iter()
        .find(|e| e.environment.as_str() == "trials")
        .and_then(|e| e.current.as_ref())
        .and_then(|d| d.build.as_ref().map(|b| b.to_string()))
}

/// A moment between 0 and `max_ms` milliseconds that differs from run to
/// run, to kill the server at.
fn random_moment(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    Duration::from_millis(u64::from(nanos) % max_ms.max(1))
}

/// Regression: a `kill -9` between a seal's commit and its auto-release lost the
/// release for good. Seals master drafts in rounds and kills the server at
/// a random moment while they are in flight; after each restart trials
/// comes to run the newest sealed master build by itself.
async fn kill_9_between_seal_and_auto_release(backend: Backend) {
    let mut server = TestServer::start_with(backend, &[]).await;
    let w = tempfile::tempdir().unwrap();
    setup(&server, w.path(), TRAIN);
    let (mut answered, mut cut_off) = (0, 0);
    for round in 0..12 {
        let client = server.client();
        // Two CI jobs sealing drafts one after the other, so that a kill at
        // any moment is likely to land in the middle of a seal.
        let mut jobs = Vec::new();
        for job in 0..2 {
            let mut drafts = Vec::new();
            for i in 0..5 {
                let b = filled_draft(&client, &api(), "master", &format!("1.{round}.{}", job * 10 + i)).await;
                drafts.push(b.id.to_string());
            }
            let client = client.clone();
            jobs.push(tokio::spawn(async move {
                let mut sealed = 0;
                for id in drafts {
                    if client.seal(&id).await.is_err() {
                        return (sealed, true);
                    }
                    sealed += 1;
                }
                (sealed, false)
            }));
        }
        // Not waiting for anything: choosing where in the seals the kill
        // lands.
        tokio::time::sleep(random_moment(40)).await;
        server.kill9();
        for job in jobs {
            // Cut off or answered: either is fine, what was committed counts.
            let (sealed, cut) = job.await.unwrap();
            answered += sealed;
            cut_off += usize::from(cut);
        }
        server.restart();
        let client = server.client();
        let Some(newest) = newest_sealed_master(&client).await else {
            continue;
        };
        let runs = eventually(30, || {
            let runs = current(&server, w.path(), "trials");
            (runs.as_deref() == Some(newest.as_str())).then_some(runs)
        });
        assert_eq!(runs.as_deref(), Some(newest.as_str()), "round {round}");
    }
    eprintln!("{answered} seals answered, {cut_off} cut off by a kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_between_seal_and_auto_release_loses_no_release_on_sqlite() {
    kill_9_between_seal_and_auto_release(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_between_seal_and_auto_release_loses_no_release_on_postgres() {
    kill_9_between_seal_and_auto_release(Backend::postgres_s3().await).await;
}

/// Regression: after a lost auto-release, sealing the build again answered 200
/// and still released nothing. The lost release is made here by lifting
/// the hold on trials behind the server's back, which leaves a sealed build
/// trials should run and does not.
async fn resealing_releases_a_lost_auto_release(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(&server, w, TRAIN);
    let b1 = sealed(&server, w, "master", "aaaaaaa1", "1.0.0");
    let b2 = sealed(&server, w, "master", "bbbbbbb2", "1.0.1");
    // Rolling back holds trials on b1.
    server.tug(w, &["rollback", "api", "--env", "trials"]).ok();
    assert_eq!(current(&server, w, "trials").as_deref(), Some(b1.as_str()), "held");

    let db = tug_db::Db::connect(&server.database_url()).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.set_auto_release_hold(&api(), &env("trials"), false).await.unwrap();
    tx.commit(&[]).await.unwrap();
    db.close().await;

    let again = server.tug(w, &["build", "seal", &b2, "--output", "json"]).json();
    assert_eq!(again["state"], "sealed");
    assert_eq!(
        current(&server, w, "trials").as_deref(),
        Some(b2.as_str()),
        "sealing again releases what the first seal did not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resealing_a_sealed_build_releases_a_lost_auto_release_on_sqlite() {
    resealing_releases_a_lost_auto_release(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resealing_a_sealed_build_releases_a_lost_auto_release_on_postgres() {
    resealing_releases_a_lost_auto_release(Backend::postgres_s3().await).await;
}

/// Regression: sealing 8 master drafts at once lost auto-releases to the
/// compare-and-set and left trials on an older build. Every round, with
/// the seals spread over `servers`, trials ends on the newest sealed build,
/// no auto-release is refused for "another deployment … meanwhile", and
/// the log only ever moves forward.
async fn concurrent_seals(servers: &[&TestServer]) {
    let a = servers[0];
    let w = tempfile::tempdir().unwrap();
    setup(a, w.path(), TRAIN);
    let client = a.client();
    for round in 0..4 {
        let mut drafts = Vec::new();
        for i in 0..8 {
            drafts.push(filled_draft(&client, &api(), "master", &format!("2.{round}.{i}")).await);
        }
        let seals: Vec<_> = drafts
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let client = servers[i % servers.len()].client();
                let id = b.id.to_string();
                tokio::spawn(async move { client.seal(&id).await })
            })
            .collect();
        for s in seals {
            s.await.unwrap().unwrap();
        }
        let newest = newest_sealed_master(&client).await;
        assert_eq!(trials_runs(&client).await, newest, "round {round}");
    }
    for s in servers {
        assert!(!s.log().contains("meanwhile"), "an auto-release was lost:\n{}", s.log());
    }
    let builds: std::collections::HashMap<String, tug_api::Build> = client
        .list_builds(&tug_api::BuildQuery {
            service: Some("api".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.id.to_string(), b))
        .collect();
    let order = |id: &tug_core::BuildId| {
        let b = &builds[id.as_str()];
        (b.sealed_at, b.id.to_string())
    };
    let history = client.history(&api(), &env("trials"), 1000).await.unwrap().deployments;
    assert!(history.len() >= 4);
    for d in &history {
        assert_eq!(d.kind, tug_core::DeployKind::AutoRelease);
        if let Some(before) = &d.replaced {
            let after = d.build.as_ref().expect("the admin sees every build");
            assert!(order(before) < order(after), "deployment {} went backwards", d.seq);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_seals_all_end_on_the_newest_build_on_sqlite() {
    let server = TestServer::start().await;
    concurrent_seals(&[&server]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_seals_all_end_on_the_newest_build_on_two_servers_sharing_postgres() {
    let a = TestServer::start_with(Backend::postgres_s3().await, &[]).await;
    let b = a.sibling().await;
    concurrent_seals(&[&a, &b]).await;
}

/// Regression: four approvers approving at once deployed one request two or three
/// times, one deployment "replacing" itself, and `tug rollback` then
/// answered 409. Every round: one deployment per request, each approval
/// answered, and the history names the approvers.
async fn concurrent_approvals(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(&server, w, TRAIN);
    let deployer = token(&server, w, "deployer", "deployer");
    let approvers: Vec<String> = (0..4)
        .map(|i| token(&server, w, &format!("approver{i}"), "approver"))
        .collect();
    let rounds = 4;
    for round in 0..rounds {
        let b = sealed(
            &server,
            w,
            "master",
            &format!("cccccc{round:02}"),
            &format!("3.0.{round}"),
        );
        let asked = server
            .tug_as(
                &deployer,
                w,
                &["promote", "api", "--to", "production", "--output", "json"],
            )
            .json();
        assert_eq!(asked["status"], "pending_approval");
        let answers: Vec<crate::support::Run> = std::thread::scope(|s| {
            let runs: Vec<_> = approvers
                .iter()
                .map(|t| {
                    let (server, b) = (&server, &b);
                    s.spawn(move || {
                        server.tug_as(
                            t,
                            w,
                            &[
                                "approve",
                                "api",
                                "--env",
                                "production",
                                "--build",
                                b,
                                "--output",
                                "json",
                            ],
                        )
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let mut deployed = 0;
        for a in &answers {
            if a.code == 0 {
                let v = a.json();
                if !v["deployment"].is_null() {
                    deployed += 1;
                    assert_eq!(v["pending"]["state"], "deployed");
                }
            } else {
                // Came after the request was carried out and closed.
                assert!(a.stderr.contains("waits for approval"), "{}", a.stderr);
            }
        }
        assert_eq!(deployed, 1, "round {round}: exactly one approval deploys");
        assert_eq!(current(&server, w, "production").as_deref(), Some(b.as_str()));
    }
    let history = server
        .tug(w, &["history", "api", "--env", "production", "--output", "json"])
        .json();
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), rounds, "one deployment per request: {history:#?}");
    for d in history {
        assert_ne!(d["replaced"], d["build"], "a deployment replaced itself: {d:#}");
        let approved: Vec<&str> = d["approved_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(approved.len() >= 2, "{d:#}");
        assert!(approved.iter().all(|a| a.starts_with("approver")), "{d:#}");
    }
    let table = server
        .tug(w, &["history", "api", "--env", "production"])
        .ok()
        .to_string();
    assert!(table.contains("APPROVED BY") && table.contains("approver"), "{table}");
    let rolled = server
        .tug(w, &["rollback", "api", "--env", "production", "--output", "json"])
        .json();
    assert_eq!(rolled["deployment"]["build"], history[1]["build"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_approvals_deploy_a_request_once_on_sqlite() {
    concurrent_approvals(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_approvals_deploy_a_request_once_on_postgres() {
    concurrent_approvals(Backend::postgres_s3().await).await;
}

/// Regression: `tug policy resume` did not release the build sealed during the
/// hold. It does now, at once; and a rollback holds auto-release too, so
/// the build rolled back from does not come back by itself.
async fn resume_catches_up(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(&server, w, TRAIN);
    let b1 = sealed(&server, w, "master", "aaaaaaa1", "1.0.0");
    let b2 = sealed(&server, w, "master", "bbbbbbb2", "1.0.1");
    assert_eq!(current(&server, w, "trials").as_deref(), Some(b2.as_str()));
    server
        .tug(w, &["release", "api", "--env", "trials", "--build", &b1])
        .ok();
    let b3 = sealed(&server, w, "master", "ccccccc3", "1.0.2");
    assert_eq!(current(&server, w, "trials").as_deref(), Some(b1.as_str()), "held");

    let resumed = server
        .tug(w, &["policy", "resume", "api", "--env", "trials"])
        .ok()
        .to_string();
    assert!(
        resumed.contains("resumed") && resumed.contains(&short_id(&server, w, &b3)),
        "{resumed}"
    );
    assert_eq!(
        current(&server, w, "trials").as_deref(),
        Some(b3.as_str()),
        "the build sealed during the hold is released by the resume"
    );
    let again = server
        .tug(w, &["policy", "resume", "api", "--env", "trials", "--output", "json"])
        .json();
    assert!(again["result"].is_null(), "nothing left to catch up: {again}");

    // A rollback holds too: the build rolled back from stays out, even
    // when something makes auto-release look again.
    let rolled = server
        .tug(w, &["rollback", "api", "--env", "trials", "--output", "json"])
        .json();
    assert_eq!(rolled["deployment"]["build"], b1.as_str());
    server.tug(w, &["build", "seal", &b3]).ok();
    assert_eq!(current(&server, w, "trials").as_deref(), Some(b1.as_str()));
    assert!(server.tug(w, &["status", "api"]).ok().contains("auto-release held"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_releases_a_build_sealed_during_the_hold_on_sqlite() {
    resume_catches_up(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_releases_a_build_sealed_during_the_hold_on_postgres() {
    resume_catches_up(Backend::postgres_s3().await).await;
}

/// Regression: an expired request stayed "pending" until someone touched it, and
/// no event said it expired. With a three-second `approval_timeout` the
/// request expires by itself: `approval.expired` is recorded, `tug status`
/// moves it from pending to expired, and a late approval is told so.
async fn approvals_expire(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(
        &server,
        w,
        &TRAIN.replace("approvals = 2", "approvals = 2\napproval_timeout = \"3s\""),
    );
    let deployer = token(&server, w, "deployer", "deployer");
    let alice = token(&server, w, "alice", "approver");
    let bob = token(&server, w, "bob", "approver");
    let b = sealed(&server, w, "master", "aaaaaaa1", "1.0.0");
    let client = server.client();
    let events = client
        .events(&tug_api::EventQuery {
            service: Some("api".into()),
            since: Some(0),
        })
        .await
        .unwrap();

    server
        .tug_as(&deployer, w, &["promote", "api", "--to", "production"])
        .ok();
    server
        .tug_as(&alice, w, &["approve", "api", "--env", "production", "--build", &b])
        .ok();
    let short = short_id(&server, w, &b);
    let table = server.tug(w, &["status", "api"]).ok().to_string();
    assert!(
        table.contains(&format!(
            "production: build {short} waits for approval: 1 of 2 (alice), requested by deployer, expires in"
        )),
        "{table}"
    );

    // Nobody touches the request: it expires by itself.
    let mut events = std::pin::pin!(events);
    let expired = tokio::time::timeout(Duration::from_secs(30), async {
        use futures::StreamExt;
        while let Some(e) = events.next().await {
            let e = e.unwrap();
            if e.kind() == "approval.expired" {
                return e;
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("approval.expired within 30 s");
    assert_eq!(expired.change.build().unwrap().id.as_str(), b.as_str());
    assert_eq!(expired.change.environment().unwrap().as_str(), "production");
    assert!(expired.actor.is_none(), "nobody expired it: {expired:?}");

    let status = server.tug(w, &["status", "api", "--output", "json"]).json();
    let production = &status["environments"][1];
    assert_eq!(production["pending"], serde_json::json!([]), "{production:#}");
    assert_eq!(production["expired"][0]["build"], b.as_str(), "{production:#}");
    assert_eq!(production["expired"][0]["approved_by"], serde_json::json!(["alice"]));
    let table = server.tug(w, &["status", "api"]).ok().to_string();
    assert!(
        table.contains(&format!("production: the request to deploy build {short} expired at")),
        "{table}"
    );
    let err = server
        .tug_as(&bob, w, &["approve", "api", "--env", "production", "--build", &b])
        .fails()
        .to_string();
    assert!(err.contains("expired"), "{err}");
    assert_eq!(current(&server, w, "production"), None);

    // Asked again, a new request waits; deployed, the old expiry is no
    // longer news.
    server
        .tug_as(&deployer, w, &["promote", "api", "--to", "production"])
        .ok();
    for t in [&alice, &bob] {
        server
            .tug_as(t, w, &["approve", "api", "--env", "production", "--build", &b])
            .ok();
    }
    let status = server.tug(w, &["status", "api", "--output", "json"]).json();
    let production = &status["environments"][1];
    assert_eq!(production["expired"], serde_json::json!([]), "{production:#}");
    assert_eq!(
        production["current"]["approved_by"],
        serde_json::json!(["alice", "bob"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_requests_expire_by_themselves_on_sqlite() {
    approvals_expire(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_requests_expire_by_themselves_on_postgres() {
    approvals_expire(Backend::postgres_s3().await).await;
}

/// The short id `tug` shows for a build.
fn short_id(server: &TestServer, w: &Path, build: &str) -> String {
    let b = server.tug(w, &["build", "show", build, "--output", "json"]).json();
    b["short_id"].as_str().expect("short_id").to_string()
}

/// Regression: a deployment that "replaced" the very build it deployed made
/// `tug rollback` answer "already runs build". Deploying what an
/// environment runs is refused, whichever way it is asked for, and adds
/// nothing to its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_what_runs_is_refused_and_no_deployment_replaces_itself() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    setup(&server, w, TRAIN);
    let b1 = sealed(&server, w, "master", "aaaaaaa1", "1.0.0");
    let err = server
        .tug(w, &["release", "api", "--env", "trials", "--build", &b1])
        .fails()
        .to_string();
    assert!(
        err.contains("already runs build") && err.contains("nothing_to_deploy"),
        "{err}"
    );
    let b2 = sealed(&server, w, "master", "bbbbbbb2", "1.0.1");
    server.tug(w, &["rollback", "api", "--env", "trials"]).ok();
    let err = server
        .tug(w, &["release", "api", "--env", "trials", "--build", &b1])
        .fails()
        .to_string();
    assert!(err.contains("already runs build"), "{err}");
    let history = server.client().history(&api(), &env("trials"), 100).await.unwrap();
    assert_eq!(history.deployments.len(), 3, "auto-release, auto-release, rollback");
    for d in &history.deployments {
        assert_ne!(d.replaced, d.build, "deployment {} replaced itself", d.seq);
    }
    // And the rollback that was refused in that case works: back to b2.
    server.tug(w, &["rollback", "api", "--env", "trials", "--to", &b2]).ok();
    assert_eq!(current(&server, w, "trials").as_deref(), Some(b2.as_str()));
}
