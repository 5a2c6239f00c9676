//! A load tool for channels, used by `bench/longpoll`: N simulated agents
//! long-poll one environment's channel, spread over one or more Tugboat
//! servers (agent i asks server i mod n), then the tool releases a new
//! build. Traffic goes only to the servers named on the command line
//! (loopback in the benchmark).
//!
//! Usage:
//!
//! ```text
//! longpoll_load SERVERS ADMIN_TOKEN AGENT_TOKEN SERVICE ENV BUILD_ID AGENTS [OPTIONS]
//! ```
//!
//! SERVERS is one URL or several separated by commas. Without `--from`, it
//! measures how long each agent takes to learn of the release. With
//! `--from BUILD` the agents behave as `tug agent` does in a paced
//! rollout: each reports healthy on BUILD (what it runs), long-polls, and
//! when the channel names the new build, reports `waiting` (with the
//! server's reason) while it may not update; once it may, it reports
//! `downloading`, takes `--install-ms` to install, and reports `healthy`.
//! Every agent reports its status at once when it changes and every
//! `--heartbeat` seconds otherwise, as the agent does. `--record FILE`
//! writes one line per agent: its id and the Unix times in milliseconds at
//! which its long-poll answered that it may update, and at which its
//! `healthy` report was sent and acknowledged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Semaphore};
use tug_api::{AgentReport, AgentState, Channel};
use tug_client::Client;
use tug_core::{BuildId, EnvName, Platform, ServiceName};

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: longpoll_load SERVERS ADMIN_TOKEN AGENT_TOKEN SERVICE ENV BUILD_ID AGENTS \
                     [--from BUILD_ID] [--heartbeat SECS] [--install-ms MS] [--record FILE]";

/// How many agents set themselves up (first report, first answer) at once.
const SETTING_UP: usize = 200;

struct Args {
    servers: Vec<String>,
    admin: String,
    agent_token: String,
    service: ServiceName,
    env: EnvName,
    build: BuildId,
    agents: usize,
    from: Option<BuildId>,
    heartbeat: Duration,
    install: Duration,
    record: Option<String>,
}

fn args() -> Result<Args, Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 7 {
        return Err(USAGE.into());
    }
    let mut parsed = Args {
        servers: args[0].split(',').map(str::to_string).collect(),
        admin: args[1].clone(),
        agent_token: args[2].clone(),
        service: ServiceName::parse(&args[3])?,
        env: EnvName::parse(&args[4])?,
        build: BuildId::parse(&args[5])?,
        agents: args[6].parse()?,
        from: None,
        heartbeat: Duration::from_secs(10),
        install: Duration::from_millis(1000),
        record: None,
    };
    let mut rest = args[7..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or(USAGE)?;
        match flag.as_str() {
            "--from" => parsed.from = Some(BuildId::parse(value)?),
            "--heartbeat" => parsed.heartbeat = Duration::from_secs(value.parse()?),
            "--install-ms" => parsed.install = Duration::from_millis(value.parse()?),
            "--record" => parsed.record = Some(value.clone()),
            _ => return Err(USAGE.into()),
        }
    }
    Ok(parsed)
}

/// Milliseconds since the Unix epoch, comparable with the servers' times
/// on the same machine.
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn pick(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (sorted.len() as f64 * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What one agent of the rollout did, in Unix milliseconds.
#[derive(Debug, Clone, Copy)]
struct Done {
    answered: i64,
    healthy_sent: i64,
    healthy_acked: i64,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Arc::new(args()?);
    // One client per server: its pool opens a connection per concurrent
    // request.
    let clients: Vec<Client> = args
        .servers
        .iter()
        .map(|s| Client::new(s, Some(args.agent_token.clone())))
        .collect::<Result<_, _>>()?;
    let holding = Arc::new(AtomicUsize::new(0));
    let setting_up = Arc::new(Semaphore::new(SETTING_UP));
    let released_at = Arc::new(tokio::sync::OnceCell::<Instant>::new());
    let mut tasks = Vec::with_capacity(args.agents);
    for i in 0..args.agents {
        let agent = Sim {
            client: clients[i % clients.len()].clone(),
            id: format!("sim-{i:05}"),
            args: args.clone(),
        };
        let (holding, setting_up, released_at) = (holding.clone(), setting_up.clone(), released_at.clone());
        tasks.push(tokio::spawn(async move {
            agent.run(holding, setting_up, released_at).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while holding.load(Ordering::SeqCst) < args.agents {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} agents connected",
                holding.load(Ordering::SeqCst),
                args.agents
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last long-polls reach the servers before the release.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let admin = Client::new(&args.servers[0], Some(args.admin.clone()))?;
    let req = tug_api::Release {
        environment: args.env.clone(),
        build: Some(args.build.to_string()),
        branch: None,
        version: None,
        flags: Default::default(),
    };
    let released = Instant::now();
    let released_unix = unix_ms();
    let _ = released_at.set(released);
    admin.release(&args.service, &req).await?;
    // Outcomes are kept to the end: each keeps its agent heartbeating.
    let mut outcomes = Vec::with_capacity(args.agents);
    for t in tasks {
        outcomes.push(t.await?);
    }
    let mut learned: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o.learned)
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let done: Vec<(String, Done)> = outcomes
        .iter()
        .filter_map(|o| o.done.map(|d| (o.id.clone(), d)))
        .collect();
    learned.sort_by(f64::total_cmp);
    let mut line = format!(
        "agents={} learned={} p50_ms={:.0} p99_ms={:.0} max_ms={:.0}",
        args.agents,
        learned.len(),
        pick(&learned, 0.5),
        pick(&learned, 0.99),
        learned.last().copied().unwrap_or(f64::NAN)
    );
    if args.from.is_some() {
        line.push_str(&rollout_summary(&done, released_unix));
        if let Some(path) = &args.record {
            let mut text = String::new();
            for (id, d) in &done {
                text.push_str(&format!("{id} {} {} {}\n", d.answered, d.healthy_sent, d.healthy_acked));
            }
            std::fs::write(path, text)?;
        }
    }
    println!("{line}");
    Ok(())
}

/// The rollout as the agents saw it: how many finished, how long it took,
/// the most agents between their grant's answer and their healthy report
/// at once, and how long a place freed by a healthy report stayed free
/// before a waiting agent was told to go (the k-th go after the first
/// `max_in_flight` follows the k-th healthy report).
fn rollout_summary(done: &[(String, Done)], released: i64) -> String {
    let mut events: Vec<(i64, i32)> = done
        .iter()
        .flat_map(|(_, d)| [(d.answered, 1), (d.healthy_acked, -1)])
        .collect();
    events.sort();
    let (mut now, mut most) = (0, 0);
    for (_, delta) in &events {
        now += delta;
        most = most.max(now);
    }
    let mut answered: Vec<i64> = done.iter().map(|(_, d)| d.answered).collect();
    let mut freed: Vec<i64> = done.iter().map(|(_, d)| d.healthy_sent).collect();
    answered.sort_unstable();
    freed.sort_unstable();
    let first_wave = usize::try_from(most).unwrap_or(0);
    let mut refill: Vec<f64> = answered
        .iter()
        .skip(first_wave)
        .zip(&freed)
        .map(|(go, free)| (go - free).max(0) as f64)
        .collect();
    refill.sort_by(f64::total_cmp);
    let last = done.iter().map(|(_, d)| d.healthy_acked).max().unwrap_or(released);
    format!(
        " updated={} rollout_s={:.1} client_max_in_flight={} refill_p50_ms={:.0} refill_p99_ms={:.0}",
        done.len(),
        (last - released) as f64 / 1000.0,
        most,
        pick(&refill, 0.5),
        pick(&refill, 0.99)
    )
}

/// One simulated agent.
struct Sim {
    client: Client,
    id: String,
    args: Arc<Args>,
}

/// What one agent measured.
struct Outcome {
    id: String,
    /// From the release to the first answer naming the new build.
    learned: Option<Duration>,
    done: Option<Done>,
    /// Keeps the agent's report loop heartbeating until the tool exits.
    _reporting: Option<watch::Sender<Status>>,
}

/// What an agent reports: its build, state and waiting reason.
type Status = (BuildId, AgentState, Option<String>);

impl Sim {
    fn report_of(&self, (build, state, waiting): &Status) -> AgentReport {
        AgentReport {
            agent_id: self.id.clone(),
            hostname: format!("host-{}", self.id),
            platform: Platform::parse("linux/amd64").unwrap_or_else(|_| unreachable!()),
            agent_version: "0.1.0".into(),
            service: self.args.service.clone(),
            environment: self.args.env.clone(),
            build: Some(build.clone()),
            state: *state,
            error: None,
            failed_build: None,
            waiting: waiting.clone(),
            exit: None,
        }
    }

    async fn channel(&self, tag: Option<&str>) -> Option<(Channel, String)> {
        let platform = Platform::parse("linux/amd64").unwrap_or_else(|_| unreachable!());
        let wait = tag.map(|_| Duration::from_secs(60));
        loop {
            match self
                .client
                .channel(&self.args.service, &self.args.env, &platform, Some(&self.id), tag, wait)
                .await
            {
                Ok(answer) => return answer,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn run(
        self,
        holding: Arc<AtomicUsize>,
        setting_up: Arc<Semaphore>,
        released_at: Arc<tokio::sync::OnceCell<Instant>>,
    ) -> Outcome {
        let target = self.args.build.clone();
        let permit = setting_up.acquire().await;
        // The report loop, as the agent's: at once on a change, and every
        // heartbeat otherwise; `acked` says which status was last received.
        let reporting = self.args.from.clone().map(|from| {
            let (status, rx) = watch::channel::<Status>((from, AgentState::Healthy, None));
            let (acked_tx, acked) = watch::channel::<Option<(Status, i64, i64)>>(None);
            let report_loop = tokio::spawn(report_loop(self.client.clone(), self.clone_for_reports(), rx, acked_tx));
            (status, acked, report_loop)
        });
        if let Some((_, acked, _)) = &reporting {
            let mut acked = acked.clone();
            let _ = acked.wait_for(Option::is_some).await;
        }
        let mut tag = loop {
            if let Some((_, tag)) = self.channel(None).await {
                break tag;
            }
        };
        drop(permit);
        holding.fetch_add(1, Ordering::SeqCst);
        let mut outcome = Outcome {
            id: self.id.clone(),
            learned: None,
            done: None,
            _reporting: None,
        };
        loop {
            let Some((c, new_tag)) = self.channel(Some(&tag)).await else {
                continue;
            };
            tag = new_tag;
            if c.build.as_ref() != Some(&target) {
                continue;
            }
            if outcome.learned.is_none() {
                outcome.learned = Some(released_at.get().copied().unwrap_or_else(Instant::now).elapsed());
            }
            let Some((status, acked, _)) = &reporting else {
                return outcome;
            };
            let from = status.borrow().0.clone();
            if !c.may_update {
                let waiting = (from, AgentState::Waiting, c.waiting);
                status.send_if_modified(|s| std::mem::replace(s, waiting.clone()) != waiting);
                continue;
            }
            let answered = unix_ms();
            status.send_replace((target.clone(), AgentState::Downloading, None));
            tokio::time::sleep(self.args.install).await;
            let healthy: Status = (target.clone(), AgentState::Healthy, None);
            status.send_replace(healthy.clone());
            let mut acked = acked.clone();
            let (sent, at) = match acked
                .wait_for(|a| a.as_ref().is_some_and(|(s, _, _)| s == &healthy))
                .await
            {
                Ok(a) => a.as_ref().map_or((0, 0), |(_, sent, at)| (*sent, *at)),
                Err(_) => (0, 0),
            };
            outcome.done = Some(Done {
                answered,
                healthy_sent: sent,
                healthy_acked: at,
            });
            outcome._reporting = reporting.map(|(status, _, _)| status);
            return outcome;
        }
    }

    fn clone_for_reports(&self) -> Sim {
        Sim {
            client: self.client.clone(),
            id: self.id.clone(),
            args: self.args.clone(),
        }
    }
}

/// Reports `status` at once when it changes and every heartbeat otherwise,
/// retrying failed reports; publishes each status acknowledged, with when
/// it was sent and acknowledged. Runs until the tool exits.
async fn report_loop(
    client: Client,
    sim: Sim,
    mut status: watch::Receiver<Status>,
    acked: watch::Sender<Option<(Status, i64, i64)>>,
) {
    loop {
        let current = status.borrow_and_update().clone();
        let sent = unix_ms();
        match client.report(&sim.report_of(&current)).await {
            Ok(()) => {
                acked.send_replace(Some((current, sent, unix_ms())));
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(sim.args.heartbeat) => {}
        }
    }
}
