//! Channel and public answers follow the environments themselves, not the
//! event log: with every event lost (each event row is deleted behind the
//! server's back the moment it is written), a release, a build marked
//! critical, an embargo lifted and a pipeline change still reach held
//! long-polls, plain channel answers and Teleport's public answers within
//! moments, whether made through the server that answers or through a
//! second one sharing its database.

use std::time::{Duration, Instant};

use tug_api::Channel;
use tug_core::{EnvName, Platform, ServiceName};
use tug_testkit::BehindTheBack;

use crate::agents::{build, release, setup_service, PIPELINE};
use crate::grants::second_server;
use crate::support::{Backend, TestServer};

/// Makes the database drop every event row as it is written: the change
/// commits, its event never shows.
async fn lose_every_event(server: &TestServer) {
    let mut db = BehindTheBack::connect(&server.database_url()).await;
    let sql = if db.is_postgres() {
        "CREATE FUNCTION lose_event() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN DELETE FROM events WHERE id = NEW.id; RETURN NULL; END $$; \
         CREATE TRIGGER lose_events AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION lose_event();"
    } else {
        "CREATE TRIGGER lose_events AFTER INSERT ON events BEGIN DELETE FROM events WHERE id = NEW.id; END;"
    };
    db.execute(sql).await;
}

/// How many event rows the database holds.
async fn events_stored(server: &TestServer) -> i64 {
    let mut db = BehindTheBack::connect(&server.database_url()).await;
    db.integers("SELECT COUNT(*) FROM events").await[0]
}

/// Polls `f` until it gives `Some`, for up to 5 s (the server reads the
/// environments every 200 ms).
async fn within<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not seen within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Observer<'a> {
    server: &'a TestServer,
    agent: tug_client::Client,
}

impl Observer<'_> {
    async fn channel(&self, env: &str) -> (Channel, String) {
        self.agent
            .channel(
                &ServiceName::parse("web").unwrap(),
                &EnvName::parse(env).unwrap(),
                &Platform::parse("linux/amd64").unwrap(),
                None,
                None,
                None,
            )
            .await
            .unwrap()
            .unwrap()
    }

    /// Holds a long-poll on `env`'s channel at `tag`, answering when the
    /// answer changes.
    fn hold(&self, env: &str, tag: &str) -> tokio::task::JoinHandle<(Channel, String)> {
        let (agent, env, tag) = (self.agent.clone(), env.to_string(), tag.to_string());
        tokio::spawn(async move {
            agent
                .channel(
                    &ServiceName::parse("web").unwrap(),
                    &EnvName::parse(&env).unwrap(),
                    &Platform::parse("linux/amd64").unwrap(),
                    None,
                    Some(&tag),
                    Some(Duration::from_secs(60)),
                )
                .await
                .unwrap()
                .expect("the long-poll answers with the change, not 304")
        })
    }

    /// Teleport's public answer `prod/version` or `prod/critical`.
    async fn public(&self, path: &str) -> (u16, String) {
        let url = format!("{}/v1/webapi/automaticupgrades/channel/web/{path}", self.server.url);
        let res = reqwest::get(url).await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    async fn public_becomes(&self, path: &str, want: (u16, &str)) {
        within(&format!("{path} answering {want:?}"), || async {
            let got = self.public(path).await;
            (got.0 == want.0 && (want.0 != 200 || got.1 == want.1)).then_some(())
        })
        .await;
    }
}

/// Waits for a held long-poll's answer, for up to 5 s.
async fn answered(held: tokio::task::JoinHandle<(Channel, String)>) -> (Channel, String) {
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held long-poll answers within 5 s")
        .unwrap()
}

/// Regression: channel and public answers were cached by the newest event
/// id, so a change whose event was lost left every server's answers stale
/// until some unrelated change.
async fn lost_events_leave_no_answer_stale(backend: Backend, through_a_second_server: bool) {
    let observed = TestServer::start_with(backend.clone(), &[]).await;
    let second = match through_a_second_server {
        true => Some(second_server(&observed, &backend).await),
        false => None,
    };
    let changer = second.as_ref().unwrap_or(&observed);
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let agent_token = setup_service(changer, w, "web", PIPELINE);
    let see = Observer {
        server: &observed,
        agent: observed.client_with(&agent_token),
    };
    let v1 = build(changer, "1.0.0").await;
    release(changer, &v1, "prod");
    // The observed server has computed and cached every answer.
    let tag1 = within("v1 in prod", || async {
        let (c, tag) = see.channel("prod").await;
        (c.build.as_ref().map(|b| b.as_str()) == Some(v1.as_str())).then_some(tag)
    })
    .await;
    see.public_becomes("prod/version", (200, "v1.0.0")).await;
    see.public_becomes("prod/critical", (200, "no")).await;

    lose_every_event(&observed).await;
    let events_before = events_stored(&observed).await;

    // A release.
    let held = see.hold("prod", &tag1);
    let v2 = build(changer, "2.0.0").await;
    release(changer, &v2, "prod");
    let (c, tag2) = answered(held).await;
    assert_eq!(c.build.as_ref().map(|b| b.as_str()), Some(v2.as_str()));
    assert_eq!(see.channel("prod").await.1, tag2, "a plain answer is the new one");
    see.public_becomes("prod/version", (200, "v2.0.0")).await;

    // A build marked critical: no deployment, the same sequence number.
    let held = see.hold("prod", &tag2);
    changer.client().mark_critical(&v2).await.unwrap();
    let (c, tag3) = answered(held).await;
    assert!(c.critical && tag3 != tag2, "{c:?} {tag3}");
    see.public_becomes("prod/critical", (200, "yes")).await;

    // An embargo lifted: sec runs an embargoed build, which this agent
    // token (not scoped to sec) is not shown until the embargo is lifted.
    std::fs::write(w.join("fix.bin"), b"the fix").unwrap();
    let pushed = changer
        .tug(
            w,
            &[
                "push",
                "--service",
                "web",
                "--version",
                "2.0.1",
                "--embargo",
                "--seal",
                "fix.bin",
                "--output",
                "json",
            ],
        )
        .json();
    let fix = pushed["build"].as_str().unwrap().to_string();
    release(changer, &fix, "sec");
    let hidden = within("the embargoed build in sec", || async {
        let (c, tag) = see.channel("sec").await;
        c.embargoed.then_some(tag)
    })
    .await;
    let held = see.hold("sec", &hidden);
    changer.tug(w, &["build", "unembargo", &fix]).ok();
    let (c, _) = answered(held).await;
    assert!(!c.embargoed, "{c:?}");
    assert_eq!(c.build.as_ref().map(|b| b.as_str()), Some(fix.as_str()));

    // A pipeline change: prod becomes private, so it is no longer public.
    std::fs::write(
        w.join("p.toml"),
        PIPELINE.replace("name = \"prod\"", "name = \"prod\"\nprivate = true"),
    )
    .unwrap();
    changer.tug(w, &["pipeline", "apply", "-f", "p.toml"]).ok();
    see.public_becomes("prod/version", (404, "")).await;

    assert_eq!(
        events_stored(&observed).await,
        events_before,
        "every change above lost its event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_events_leave_no_answer_stale_on_sqlite() {
    lost_events_leave_no_answer_stale(Backend::Embedded, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_events_leave_no_answer_stale_on_postgres() {
    lost_events_leave_no_answer_stale(Backend::postgres_s3().await, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_events_of_a_second_server_leave_no_answer_stale_on_sqlite() {
    lost_events_leave_no_answer_stale(Backend::Embedded, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_events_of_a_second_server_leave_no_answer_stale_on_postgres() {
    lost_events_leave_no_answer_stale(Backend::postgres_s3().await, true).await;
}
