//! Webhook delivery figures, for `bench/webhooks`: starts the `tug` server
//! (`TUG_BIN`) on SQLite in a work directory (`BENCH_WORK`) and a fast
//! receiver on 127.0.0.1 (a minimal HTTP/1.1 server with keep-alive that
//! answers 200 at once and notes each request's `webhook-id` and arrival
//! time), and measures one of:
//!
//! - `latency`: 10 webhooks (`deployment` events), `BENCH_RELEASES`
//!   releases at 20/s; for each of the 10 × releases receipts, the time
//!   from the event's `at` (taken just before its commit) to its arrival:
//!   p50, p99, max.
//! - `drain`: one webhook whose endpoint is down while `BENCH_BACKLOG`
//!   events are recorded (every attempt fails; retries every 20 s at
//!   most); the receiver is up when the next retry comes, and the
//!   backlog's drain rate is measured from the first arrival to the last.
//! - `kill`: one webhook for every event; `BENCH_ROUNDS` times, services are
//!   created from a client while the server is killed with SIGKILL and
//!   restarted; at the end every event of the log from the webhook's
//!   creation on must have arrived at least once (de-duplicated by
//!   `webhook-id`), and the missing and duplicate counts are printed.
//!
//! Prints one Markdown table row per figure.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request the receiver got.
#[derive(Clone)]
struct Arrival {
    id: String,
    /// Seconds since the Unix epoch.
    at: f64,
    body: Vec<u8>,
}

type Arrivals = Arc<Mutex<Vec<Arrival>>>;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Serves one keep-alive connection: answers every request 200.
async fn serve(mut conn: tokio::net::TcpStream, arrivals: Arrivals, keep_body: bool) -> anyhow::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 65536];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut length = 0usize;
        let mut id = String::new();
        for line in head.lines() {
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "webhook-id" => id = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        while buf.len() < head_end + length {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = if keep_body {
            buf[head_end..head_end + length].to_vec()
        } else {
            Vec::new()
        };
        arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arrival { id, at: now(), body });
        buf.drain(..head_end + length);
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await?;
    }
}

async fn receiver(listener: tokio::net::TcpListener, arrivals: Arrivals, keep_body: bool) {
    while let Ok((conn, _)) = listener.accept().await {
        let _ = conn.set_nodelay(true);
        tokio::spawn(serve(conn, arrivals.clone(), keep_body));
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Server {
    bin: PathBuf,
    work: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Server {
    async fn start(bin: &Path, work: &Path, env: &[(&str, &str)]) -> anyhow::Result<Server> {
        let mut s = Server {
            bin: bin.to_path_buf(),
            work: work.to_path_buf(),
            port: free_port()?,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
        };
        s.spawn().await?;
        Ok(s)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("tug.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["server", "--data-dir"])
            .arg(self.work.join("data"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .current_dir(&self.work)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().context("cannot start tug")?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/healthz", self.url())).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("tug did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn client(&self) -> anyhow::Result<tug_client::Client> {
        let token = std::fs::read_to_string(self.work.join("data/admin.token"))?;
        Ok(tug_client::Client::new(&self.url(), Some(token.trim().to_string()))?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn webhook(client: &tug_client::Client, url: String, events: &str) -> anyhow::Result<String> {
    let created = client
        .create_webhook(&tug_api::CreateWebhook {
            url,
            kind: None,
            service: None,
            events: Some(events.to_string()),
        })
        .await?;
    Ok(created.webhook.id)
}

async fn wait_for(deadline_secs: u64, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(deadline_secs);
    while !done() {
        if Instant::now() > deadline {
            bail!("not done within {deadline_secs} s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn count(arrivals: &Arrivals) -> usize {
    arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let bin = PathBuf::from(std::env::var("TUG_BIN").context("TUG_BIN is not set")?);
    let work = PathBuf::from(std::env::var("BENCH_WORK").context("BENCH_WORK is not set")?);
    let num = |name: &str, default: usize| -> usize {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let arrivals: Arrivals = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let rport = listener.local_addr()?.port();
    match mode.as_str() {
        "latency" => {
            tokio::spawn(receiver(listener, arrivals.clone(), true));
            let server = Server::start(&bin, &work, &[]).await?;
            let client = server.client()?;
            let api = tug_core::ServiceName::parse("api")?;
            client.create_service(&api).await?;
            client
                .apply_pipeline(&api, "service = \"api\"\n\n[[environments]]\nname = \"dev\"\n", None)
                .await?;
            let mut builds = Vec::new();
            for n in 0..2 {
                builds.push(sealed(&server, n)?);
            }
            for k in 0..10 {
                webhook(&client, format!("http://127.0.0.1:{rport}/{k}"), "deployment").await?;
            }
            let releases = num("BENCH_RELEASES", 200);
            let env = tug_core::EnvName::parse("dev")?;
            for n in 0..releases {
                let started = Instant::now();
                client
                    .release(
                        &api,
                        &tug_api::Release {
                            environment: env.clone(),
                            build: Some(builds[n % 2].clone()),
                            branch: None,
                            version: None,
                            flags: Default::default(),
                        },
                    )
                    .await?;
                tokio::time::sleep(Duration::from_millis(50).saturating_sub(started.elapsed())).await;
            }
            wait_for(60, || count(&arrivals) >= releases * 10).await?;
            let mut lags: Vec<f64> = arrivals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .filter_map(|a| {
                    let e: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
                    let at = chrono::DateTime::parse_from_rfc3339(e["at"].as_str()?).ok()?;
                    Some((a.at - at.timestamp_millis() as f64 / 1000.0) * 1000.0)
                })
                .collect();
            lags.sort_by(f64::total_cmp);
            println!(
                "| commit to receipt, 10 webhooks, {releases} releases at 20/s ({} receipts) | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
                lags.len(),
                percentile(&lags, 0.5),
                percentile(&lags, 0.99),
                lags.last().copied().unwrap_or(f64::NAN)
            );
        }
        "drain" => {
            // The receiver's port is closed until the backlog is recorded.
            drop(listener);
            let server = Server::start(
                &bin,
                &work,
                &[
                    ("TUG_WEBHOOK_BACKOFF_INITIAL_MS", "20000"),
                    ("TUG_WEBHOOK_BACKOFF_MAX_SECS", "20"),
                ],
            )
            .await?;
            let client = server.client()?;
            webhook(&client, format!("http://127.0.0.1:{rport}/drain"), "service.created").await?;
            let backlog = num("BENCH_BACKLOG", 10_000);
            let started = Instant::now();
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let mut n = t;
                        while n < backlog {
                            let name = tug_core::ServiceName::parse(&format!("s{n}"))?;
                            client.create_service(&name).await?;
                            n += 8;
                        }
                        anyhow::Ok(())
                    })
                })
                .collect();
            for t in tasks {
                t.await??;
            }
            let recorded = started.elapsed();
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", rport)).await?;
            tokio::spawn(receiver(listener, arrivals.clone(), false));
            eprintln!("recorded the backlog in {recorded:?}; the endpoint was down meanwhile");
            wait_for(120, || count(&arrivals) >= backlog).await?;
            let got = arrivals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let first = got.first().map_or(0.0, |a| a.at);
            let last = got.get(backlog - 1).map_or(0.0, |a| a.at);
            let in_order = got.windows(2).all(|w| event_of(&w[0].id) < event_of(&w[1].id));
            println!(
                "| drain of a {backlog}-event backlog to one fast receiver | {:.0} deliveries/s ({backlog} in {:.2} s, in order: {in_order}) |",
                (backlog as f64 - 1.0) / (last - first),
                last - first
            );
        }
        "kill" => {
            tokio::spawn(receiver(listener, arrivals.clone(), false));
            let mut server = Server::start(&bin, &work, &[("TUG_CONSUMER_LEASE_SECS", "2")]).await?;
            let client = server.client()?;
            let id = webhook(&client, format!("http://127.0.0.1:{rport}/kill"), "*").await?;
            let rounds = num("BENCH_ROUNDS", 10);
            for n in 0..rounds {
                let client = server.client()?;
                // Events keep coming while the server is killed.
                let load = tokio::spawn(async move {
                    let mut made = 0usize;
                    loop {
                        let name = format!("k{n}x{made}");
                        let Ok(name) = tug_core::ServiceName::parse(&name) else {
                            break;
                        };
                        if client.create_service(&name).await.is_err() {
                            break;
                        }
                        made += 1;
                    }
                });
                tokio::time::sleep(Duration::from_millis(700)).await;
                server.kill9();
                let _ = load.await;
                server.spawn().await?;
            }
            let client = server.client()?;
            // Every event after the webhook's creation, by id.
            let (created, last) = log_span(&client, &id).await?;
            let deadline = Instant::now() + Duration::from_secs(120);
            let (missing, duplicates, total) = loop {
                let got = arrivals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                let ids: Vec<i64> = got.iter().map(|a| event_of(&a.id)).collect();
                let unique: HashSet<i64> = ids.iter().copied().collect();
                let expected: Vec<i64> = (created..=last).collect();
                let missing = expected.iter().filter(|e| !unique.contains(e)).count();
                if missing == 0 || Instant::now() > deadline {
                    break (missing, ids.len() - unique.len(), expected.len());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            println!(
                "| kill -9 of the server {rounds} times during delivery | {total} events, received at least once: {}, missing {missing}, duplicates {duplicates} (de-duplicated by webhook-id) |",
                total - missing
            );
            if missing > 0 {
                bail!("{missing} events never arrived");
            }
        }
        _ => bail!("usage: webhook_bench latency|drain|kill"),
    }
    Ok(())
}

/// The event id in a `webhook-id` (`msg_<webhook>_<event>`).
fn event_of(id: &str) -> i64 {
    id.rsplit('_').next().and_then(|e| e.parse().ok()).unwrap_or(-1)
}

/// Pushes and seals build `n` of `api` with the real CLI; returns its id.
fn sealed(server: &Server, n: usize) -> anyhow::Result<String> {
    let file = server.work.join(format!("b{n}.bin"));
    std::fs::write(&file, format!("bench build {n}"))?;
    let token = std::fs::read_to_string(server.work.join("data/admin.token"))?;
    let out = Command::new(&server.bin)
        .args(["push", "--service", "api", "--branch", "master", "--commit"])
        .arg(format!("{n:040x}"))
        .args(["--version", &format!("1.0.{n}"), "--seal", "--output", "json"])
        .arg(&file)
        .env("TUG_SERVER", server.url())
        .env("TUG_TOKEN", token.trim())
        .output()?;
    if !out.status.success() {
        bail!("tug push failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["build"].as_str().context("no build id")?.to_string())
}

/// The id of webhook `id`'s `webhook.created` event (its first delivery)
/// and of the log's last event.
async fn log_span(client: &tug_client::Client, id: &str) -> anyhow::Result<(i64, i64)> {
    use futures::StreamExt;
    let mut export = Box::pin(client.audit_export(&tug_api::AuditExportQuery::default()).await?);
    let (mut created, mut last) = (None, 0);
    while let Some(r) = export.next().await {
        let r = r?;
        if let tug_api::Change::WebhookCreated { webhook } = &r.event.change {
            if webhook.id == id {
                created = Some(r.event.id);
            }
        }
        last = r.event.id;
    }
    Ok((created.context("no webhook.created event")?, last))
}
