//! A load tool for channels: N simulated agents long-poll one environment's
//! channel on a Tugboat server, then the tool releases a new build and
//! measures how long each agent takes to learn of it. Used by
//! `bench/longpoll`; traffic goes only to the server named on the command
//! line (loopback in the benchmark).
//!
//! Usage: longpoll_load SERVER ADMIN_TOKEN AGENT_TOKEN SERVICE ENV BUILD_ID AGENTS
//! (the build is released into ENV once every agent holds a long-poll).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tug_client::Client;
use tug_core::{EnvName, Platform, ServiceName};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 8 {
        return Err("usage: longpoll_load SERVER ADMIN_TOKEN AGENT_TOKEN SERVICE ENV BUILD_ID AGENTS".into());
    }
    let (server, admin, agent) = (args[1].clone(), args[2].clone(), args[3].clone());
    let service = ServiceName::parse(&args[4])?;
    let env = EnvName::parse(&args[5])?;
    let build = args[6].clone();
    let agents: usize = args[7].parse()?;
    let platform = Platform::parse("linux/amd64")?;

    // Every agent reads the channel once, then holds a long-poll on its ETag.
    let holding = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(agents);
    let released_at = Arc::new(tokio::sync::OnceCell::<Instant>::new());
    // One client: its pool opens a connection per concurrent long-poll.
    let shared = Client::new(&server, Some(agent))?;
    for i in 0..agents {
        let client = shared.clone();
        let (service, env, platform, holding, released_at) = (
            service.clone(),
            env.clone(),
            platform.clone(),
            holding.clone(),
            released_at.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let id = format!("sim-{i}");
            let (_, etag) = loop {
                match client.channel(&service, &env, &platform, Some(&id), None, None).await {
                    Ok(Some(answer)) => break answer,
                    Ok(None) => continue,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            holding.fetch_add(1, Ordering::SeqCst);
            loop {
                match client
                    .channel(
                        &service,
                        &env,
                        &platform,
                        Some(&id),
                        Some(&etag),
                        Some(Duration::from_secs(60)),
                    )
                    .await
                {
                    Ok(Some(_)) => {
                        let at = released_at.get().copied().unwrap_or_else(Instant::now);
                        return Some(at.elapsed());
                    }
                    Ok(None) => continue,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while holding.load(Ordering::SeqCst) < agents {
        if Instant::now() > deadline {
            return Err(format!("only {} of {agents} agents connected", holding.load(Ordering::SeqCst)).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last long-polls reach the server before the release.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let admin = Client::new(&server, Some(admin))?;
    let req = tug_api::Release {
        environment: env.clone(),
        build: Some(build),
        branch: None,
        version: None,
        flags: Default::default(),
    };
    let _ = released_at.set(Instant::now());
    admin.release(&service, &req).await?;
    let mut latencies = Vec::with_capacity(agents);
    for t in tasks {
        if let Some(d) = t.await? {
            latencies.push(d.as_secs_f64() * 1000.0);
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1];
    println!(
        "agents={} learned={} p50_ms={:.0} p99_ms={:.0} max_ms={:.0}",
        agents,
        latencies.len(),
        pick(0.5),
        pick(0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    Ok(())
}
