//! Paced rollouts across servers: 20 agents split over two servers that
//! share one database (PostgreSQL, or one SQLite file), all asking at once.
//! The limits are observed in the database, in its grants and the agents'
//! reports, each sample one statement (one consistent moment): at no
//! moment are more agents in flight (granted, and neither healthy on the
//! build nor failed) than the strategy allows, and every agent ends on the
//! new build.
//!
//! Each simulated agent reports as `tug agent` does (healthy on what it
//! runs, `waiting` while told to wait, `downloading` once allowed, then
//! `healthy`), and stays in flight until the test has seen it in flight in
//! two samples, so every in-flight agent is observed; the agents in flight
//! then finish together, so that places free at once on both servers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tug_api::{AgentReport, AgentState, Channel};
use tug_core::{BuildId, EnvName, Platform, ServiceName};
use tug_testkit::BehindTheBack;

use crate::agents::{build, release, setup_service};
use crate::support::{Backend, TestServer};

const AGENTS: usize = 20;

/// A second server on `first`'s database and blob store.
pub(crate) async fn second_server(first: &TestServer, backend: &Backend) -> TestServer {
    match backend {
        Backend::Shared { .. } => first.sibling().await,
        Backend::Embedded => {
            let database = first.database_url();
            let store = first.data_dir().display().to_string();
            let mut s =
                TestServer::start_with(Backend::Embedded, &["--database", &database, "--blob-store", &store]).await;
            s.admin_token = first.admin_token.clone();
            s
        }
    }
}

/// One simulated agent of `web` in `prod`.
struct Sim {
    client: tug_client::Client,
    id: String,
}

impl Sim {
    async fn report(&self, build: &str, state: AgentState, waiting: Option<String>) {
        let report = AgentReport {
            agent_id: self.id.clone(),
            hostname: format!("host-{}", self.id),
            platform: Platform::parse("linux/amd64").unwrap(),
            agent_version: "0.1.0".into(),
            service: ServiceName::parse("web").unwrap(),
            environment: EnvName::parse("prod").unwrap(),
            build: Some(BuildId::parse(build).unwrap()),
            state,
            error: None,
            failed_build: None,
            waiting,
            exit: None,
        };
        self.client.report(&report).await.unwrap();
    }

    async fn channel(&self, tag: Option<&str>) -> Option<(Channel, String)> {
        self.client
            .channel(
                &ServiceName::parse("web").unwrap(),
                &EnvName::parse("prod").unwrap(),
                &Platform::parse("linux/amd64").unwrap(),
                Some(&self.id),
                tag,
                tag.map(|_| Duration::from_secs(20)),
            )
            .await
            .unwrap()
    }

    /// Follows the channel from `tag` (what it answered for `from`) until
    /// allowed to take `to`; then downloads, tells `ready` and waits for
    /// the go before it reports healthy.
    async fn update(
        self,
        from: String,
        to: String,
        mut tag: String,
        ready: mpsc::Sender<(String, oneshot::Sender<()>)>,
    ) {
        let mut told = None;
        loop {
            let Some((c, new_tag)) = self.channel(Some(&tag)).await else {
                continue;
            };
            tag = new_tag;
            if c.build.as_ref().map(|b| b.as_str()) != Some(to.as_str()) {
                continue;
            }
            if c.may_update {
                break;
            }
            if told != c.waiting {
                told.clone_from(&c.waiting);
                self.report(&from, AgentState::Waiting, c.waiting).await;
            }
        }
        self.report(&to, AgentState::Downloading, None).await;
        let (go, gone) = oneshot::channel();
        ready.send((self.id.clone(), go)).await.unwrap();
        gone.await.unwrap();
        self.report(&to, AgentState::Healthy, None).await;
    }
}

/// One moment of the rollout of `build`, read in one statement: the agents
/// granted it and still in flight, and how many granted are healthy on it.
#[derive(Debug)]
struct Moment {
    in_flight: Vec<String>,
    healthy: usize,
}

async fn moment(db: &mut BehindTheBack, build: &str) -> Moment {
    let sql = format!(
        "SELECT g.agent_id || ' ' || CASE \
           WHEN COALESCE(a.build_id, '') = '{build}' AND COALESCE(a.state, '') = 'healthy' THEN 'healthy' \
           WHEN COALESCE(a.failed_build, '') = '{build}' THEN 'failed' \
           ELSE 'in_flight' END \
         FROM rollout_grants g LEFT JOIN agents a ON a.agent_id = g.agent_id \
         WHERE g.service = 'web' AND g.environment = 'prod' \
         AND g.seq = (SELECT seq FROM environments WHERE service = 'web' AND name = 'prod')"
    );
    let mut m = Moment {
        in_flight: Vec::new(),
        healthy: 0,
    };
    for row in db.texts(&sql).await {
        let (agent, how) = row.rsplit_once(' ').unwrap();
        match how {
            "in_flight" => m.in_flight.push(agent.to_string()),
            "healthy" => m.healthy += 1,
            _ => {}
        }
    }
    m
}

/// Rolls `web` from one build to another in `prod` (paced by `pipeline`)
/// with the agents split over two servers, checking every sampled moment
/// with `allowed`; returns the most agents seen in flight at once.
async fn roll_out_across_two_servers(backend: Backend, pipeline: &str, allowed: impl Fn(&Moment) -> bool) -> usize {
    let first = TestServer::start_with(backend.clone(), &[]).await;
    let second = second_server(&first, &backend).await;
    let w = tempfile::tempdir().unwrap();
    let token = setup_service(&first, w.path(), "web", pipeline);
    let v1 = build(&first, "1.0.0").await;
    release(&first, &v1, "prod");
    let sims: Vec<Sim> = (0..AGENTS)
        .map(|i| Sim {
            client: [&first, &second][i % 2].client_with(&token),
            id: format!("agent-{i:02}"),
        })
        .collect();
    let mut tags = Vec::new();
    for sim in &sims {
        sim.report(&v1, AgentState::Healthy, None).await;
        tags.push(sim.channel(None).await.unwrap().1);
    }

    // Every agent holds a long-poll when the new build is released.
    let (ready_tx, mut ready) = mpsc::channel(AGENTS);
    let v2 = build(&first, "2.0.0").await;
    let agents: Vec<_> = sims
        .into_iter()
        .zip(tags)
        .map(|(sim, tag)| tokio::spawn(sim.update(v1.clone(), v2.clone(), tag, ready_tx.clone())))
        .collect();
    release(&second, &v2, "prod");

    let mut db = BehindTheBack::connect(&first.database_url()).await;
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut waiting_for_go: HashMap<String, oneshot::Sender<()>> = HashMap::new();
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        while let Ok((id, go)) = ready.try_recv() {
            waiting_for_go.insert(id, go);
        }
        let now = moment(&mut db, &v2).await;
        assert!(allowed(&now), "too many agents in flight: {now:?}");
        most = most.max(now.in_flight.len());
        if now.healthy == AGENTS {
            break;
        }
        for id in &now.in_flight {
            *seen.entry(id.clone()).or_default() += 1;
        }
        // Once every agent in flight was seen so twice and waits for the
        // go, they all finish at once: their places free together, on
        // both servers, and the agents waiting there ask together.
        let wave_done = !now.in_flight.is_empty()
            && now
                .in_flight
                .iter()
                .all(|id| waiting_for_go.contains_key(id) && seen.get(id).is_some_and(|n| *n >= 2));
        if wave_done {
            for id in &now.in_flight {
                let _ = waiting_for_go.remove(id).unwrap().send(());
            }
        }
        assert!(Instant::now() < deadline, "the rollout did not finish: {now:?}");
        // The pace of the samples.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for a in agents {
        a.await.unwrap();
    }
    let status = first
        .tug(
            w.path(),
            &["rollout", "status", "web", "--env", "prod", "--output", "json"],
        )
        .json();
    assert_eq!(status["updated"], AGENTS, "every agent is on the new build: {status}");
    assert_eq!(status["granted"], AGENTS, "{status}");
    most
}

const ROLLING: &str = r#"
service = "web"

[[environments]]
name = "prod"
rollout = { strategy = "rolling", max_in_flight = 2 }
"#;

/// Regression: grants were serialised by a lock in each server's memory,
/// so two servers on one database could together let more agents update
/// than `max_in_flight`.
async fn two_servers_keep_max_in_flight(backend: Backend) {
    let most = roll_out_across_two_servers(backend, ROLLING, |m| m.in_flight.len() <= 2).await;
    assert_eq!(most, 2, "the limit was reached, never passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_never_let_more_than_max_in_flight_agents_update_on_postgres() {
    two_servers_keep_max_in_flight(Backend::postgres_s3().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_never_let_more_than_max_in_flight_agents_update_on_sqlite() {
    two_servers_keep_max_in_flight(Backend::Embedded).await;
}

const CANARY: &str = r#"
service = "web"

[[environments]]
name = "prod"
rollout = { strategy = "canary", count = 2, then = "rolling", max_in_flight = 1 }
"#;

/// Regression: two servers could each start the canaries of one rollout.
async fn two_servers_start_only_the_canaries(backend: Backend) {
    let most = roll_out_across_two_servers(backend, CANARY, |m| {
        if m.healthy < 2 {
            // The canaries: at most two granted before they are healthy.
            m.healthy + m.in_flight.len() <= 2
        } else {
            m.in_flight.len() <= 1
        }
    })
    .await;
    assert_eq!(most, 2, "both canaries went at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_start_no_more_canaries_than_asked_on_postgres() {
    two_servers_start_only_the_canaries(Backend::postgres_s3().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_start_no_more_canaries_than_asked_on_sqlite() {
    two_servers_start_only_the_canaries(Backend::Embedded).await;
}
