//! Load and lag of the event sink, for `bench/sink`: releases builds at a
//! steady rate from several clients (each into its own environment,
//! alternating two builds) for some seconds while tailing the server's
//! event sink file, and prints the achieved rate, the release latency and
//! the sink's lag (from an event's time, taken just before its commit, to
//! its line appearing in the file) as a Markdown table.
//!
//! Environment: `TUG_SERVER`, `TUG_TOKEN`, `LOAD_SINK` (the file),
//! `LOAD_BUILDS` (two build ids, comma-separated), `LOAD_RATE` (releases
//! per second), `LOAD_SECONDS`, `LOAD_CLIENTS` (environments `e0`… must
//! exist).

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = var("TUG_SERVER")?;
    let token = var("TUG_TOKEN")?;
    let sink = std::path::PathBuf::from(var("LOAD_SINK")?);
    let builds: Vec<String> = var("LOAD_BUILDS")?.split(',').map(str::to_string).collect();
    if builds.len() != 2 {
        bail!("LOAD_BUILDS must name two builds");
    }
    let rate: f64 = var("LOAD_RATE")?.parse()?;
    let seconds: f64 = var("LOAD_SECONDS")?.parse()?;
    let clients: usize = var("LOAD_CLIENTS")?.parse()?;
    let total = (rate * seconds).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);

    // The tail: every line's lag, from the file's size at start.
    let lags = Arc::new(Mutex::new(Vec::<(f64, String)>::new()));
    let stop_tail = Arc::new(AtomicBool::new(false));
    let tail = {
        let lags = lags.clone();
        let stop = stop_tail.clone();
        let mut file = std::fs::File::open(&sink).with_context(|| format!("cannot open {}", sink.display()))?;
        file.seek(SeekFrom::End(0))?;
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut pending = Vec::new();
            let mut buf = vec![0u8; 1 << 20];
            while !stop.load(Ordering::SeqCst) {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let seen = Utc::now();
                pending.extend_from_slice(&buf[..n]);
                while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    let v: serde_json::Value = serde_json::from_slice(&line)?;
                    let at: DateTime<Utc> = v["at"].as_str().context("no at")?.parse()?;
                    let lag = (seen - at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
                    let kind = v["kind"].as_str().unwrap_or("").to_string();
                    lags.lock().unwrap().push((lag, kind));
                }
            }
            Ok(())
        })
    };

    // The load: release n goes out at start + n × interval (or at once
    // when the clients fall behind).
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let (url, token, builds) = (url.clone(), token.clone(), builds.clone());
        let (next, done, latencies) = (next.clone(), done.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let client = tug_client::Client::new(&url, Some(token))?;
            let api = tug_core::ServiceName::parse("api")?;
            let env = tug_core::EnvName::parse(&format!("e{k}"))?;
            let mut turn = 0usize;
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                tokio::time::sleep_until((start + interval * n as u32).into()).await;
                let release = tug_api::Release {
                    environment: env.clone(),
                    build: Some(builds[turn % 2].clone()),
                    branch: None,
                    version: None,
                    flags: Default::default(),
                };
                let sent = Instant::now();
                client.release(&api, &release).await?;
                latencies.lock().unwrap().push(sent.elapsed().as_secs_f64() * 1000.0);
                done.fetch_add(1, Ordering::SeqCst);
                turn += 1;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let load = start.elapsed();
    let released = done.load(Ordering::SeqCst);

    // Wait for the sink to write every deployment, for up to 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let written = || lags.lock().unwrap().iter().filter(|(_, k)| k == "deployment").count();
    while written() < released && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let drained = start.elapsed();
    stop_tail.store(true, Ordering::SeqCst);
    tail.join().map_err(|_| anyhow::anyhow!("the tail panicked"))??;

    let mut lag: Vec<f64> = lags.lock().unwrap().iter().map(|(l, _)| *l).collect();
    lag.sort_by(f64::total_cmp);
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(f64::total_cmp);
    let achieved = released as f64 / load.as_secs_f64();
    let keeps_up = written() >= released && percentile(&lag, 1.0) < 1000.0;
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| target rate | {rate:.0} deployments/s for {seconds:.0} s, {clients} clients |");
    println!(
        "| achieved rate | {achieved:.0} deployments/s ({released} in {:.2} s) |",
        load.as_secs_f64()
    );
    println!(
        "| release latency p50 / p99 | {:.1} ms / {:.1} ms |",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!("| sink lines (events) | {} |", lag.len());
    println!(
        "| sink lag p50 / p99 / max | {:.1} ms / {:.1} ms / {:.1} ms |",
        percentile(&lag, 0.5),
        percentile(&lag, 0.99),
        percentile(&lag, 1.0)
    );
    println!(
        "| sink done after the load ended | {:.0} ms |",
        (drained - load).as_secs_f64() * 1000.0
    );
    println!(
        "| keeps up (every deployment written, max lag < 1 s) | {} |",
        if keeps_up { "yes" } else { "no" }
    );
    Ok(())
}
