//! Seeds a Tugboat database with a long event log, for `bench/events`
//! (`tug audit verify` over it). The events go through the real append
//! path: each is a [`tug_api::Event`] made recordable by
//! [`tug_service::recordable`] (its canonical JSON and columns) and
//! appended by [`tug_db::Tx::commit`], which chains it, a thousand per
//! transaction; so the log is exactly what the server writes, only without
//! the changes the events describe.
//!
//! ```sh
//! cargo run --release -p tug-service --example seed_events -- \
//!   --database sqlite://DIR/tug.db --events 100000
//! ```
//!
//! Event `i` is, in turn, a build created, that build sealed, and its
//! deployment into one of ten environments by a deployer (with the build's
//! version, manifest digest and source), one second apart, all in the
//! past. Prints what it did and how long it took.

use std::time::Instant;

use chrono::{Duration, Utc};
use tug_api::{Actor, Change, Deployed, DeploymentKind, Event, EventBuild, EventSource};
use tug_core::{BuildId, Digest, EnvName, Role, ServiceName, TokenName, Version};

/// Events per transaction.
const BATCH: u64 = 1000;

fn usage() -> ! {
    eprintln!("usage: seed_events --database URL [--events 100000]");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut database = String::new();
    let mut events: u64 = 100_000;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--database" => database = value,
            "--events" => events = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if database.is_empty() {
        usage();
    }
    let db = tug_db::Db::connect(&database).await?;
    let service = ServiceName::parse("api")?;
    let actor = Actor {
        name: TokenName::parse("deployer")?,
        role: Role::Deployer,
    };
    let start = Utc::now() - Duration::days(1) - Duration::seconds(events as i64);
    let began = Instant::now();
    let mut done = 0;
    while done < events {
        let n = BATCH.min(events - done);
        let batch: Vec<tug_db::NewEvent> = (done..done + n)
            .map(|i| {
                let b = i / 3;
                let build = EventBuild {
                    id: BuildId::parse(&format!("0190aaaa-0000-7000-8000-{b:012x}")).expect("a UUID"),
                    version: Version::parse(&format!("1.{}.{}", b / 1000, b % 1000)).expect("a version"),
                    manifest_digest: (i % 3 > 0).then(|| Digest::of(&b.to_le_bytes())),
                    source: EventSource {
                        repo: Some("https://git.example.com/api".into()),
                        branch: Some("master".into()),
                        commit: Some(format!("{b:040x}")),
                        tag: None,
                        author: Some("Ada Lovelace <ada@example.com>".into()),
                    },
                    embargoed: false,
                };
                let change = match i % 3 {
                    0 => Change::BuildCreated { build },
                    1 => Change::BuildSealed { build },
                    _ => Change::Deployment(Deployed {
                        environment: EnvName::parse(&format!("e{}", b % 10 + 1)).expect("a name"),
                        build: Some(build),
                        deployment_kind: DeploymentKind::Promote,
                        seq: (b / 10 + 1) as i64,
                        replaced: None,
                        replaced_embargoed: false,
                        override_freeze: false,
                        reason: None,
                        requested_by: Some("deployer".into()),
                        approved_by: Vec::new(),
                    }),
                };
                let at = start + Duration::seconds(i as i64);
                let at = chrono::DateTime::from_timestamp_millis(at.timestamp_millis()).expect("a time");
                tug_service::recordable(&Event::new(at, Some(service.clone()), Some(actor.clone()), change))
            })
            .collect();
        db.begin().await?.commit(&batch).await?;
        done += n;
        if done % 20_000 == 0 {
            eprintln!("seed_events: {done} events in {:.0?}", began.elapsed());
        }
    }
    db.close().await;
    println!("seeded {events} events in {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}
