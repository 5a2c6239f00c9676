//! What a server's change poller pays to read every environment's channel
//! stamp ([`tug_db::Db::channel_stamps`]), which it does every 200 ms: seeds
//! a fresh database with `--services` services of `--envs` environments
//! each, every environment running a build, then times the query.
//!
//! ```sh
//! cargo run --release -p tug-db --example stamps_cost -- \
//!   --database sqlite:///tmp/stamps.db --services 100 --envs 10 --runs 200
//! ```
//!
//! Prints the number of rows read and the median, p99 and largest time of
//! one read, in milliseconds. Seeding goes through [`tug_db::Db`]
//! (pipelines, builds, deployments with their compare-and-set); the builds
//! stay unsealed, which the stamps do not read.

use std::time::Instant;

use chrono::Utc;
use tug_core::{BuildId, BuildSource, CiRun, DeployKind, EnvName, ServiceName, Version};
use tug_db::{Db, NewBuild, NewDeployment};

fn usage() -> ! {
    eprintln!("usage: stamps_cost --database URL [--services 100] [--envs 10] [--runs 200]");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut database, mut services, mut envs, mut runs) = (String::new(), 100u32, 10u32, 200usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--database" => database = value,
            "--services" => services = value.parse().unwrap_or_else(|_| usage()),
            "--envs" => envs = value.parse().unwrap_or_else(|_| usage()),
            "--runs" => runs = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if database.is_empty() || runs == 0 {
        usage()
    }
    let db = Db::connect(&database).await?;
    let now = Utc::now();
    let seeding = Instant::now();
    for s in 0..services {
        let service = ServiceName::parse(&format!("svc{s}"))?;
        let mut tx = db.begin().await?;
        tx.create_service(&service, now).await?;
        let spec: String = std::iter::once(format!("service = \"{service}\"\n"))
            .chain((0..envs).map(|e| format!("[[environments]]\nname = \"e{e}\"\n")))
            .collect();
        tx.save_pipeline(&service, 1, &spec, now, None).await?;
        let id = BuildId::parse(&uuid::Uuid::now_v7().to_string())?;
        tx.insert_build(&NewBuild {
            id: id.clone(),
            service: service.clone(),
            version: Version::parse("1.0.0")?,
            source: BuildSource::default(),
            ci: CiRun::default(),
            expected: Vec::new(),
            created_at: now,
            created_by: None,
            created_by_token: None,
            embargoed: false,
        })
        .await?;
        for e in 0..envs {
            let environment = EnvName::parse(&format!("e{e}"))?;
            let deployment = NewDeployment {
                id: uuid::Uuid::now_v7().to_string(),
                service: service.clone(),
                environment,
                build: id.clone(),
                kind: DeployKind::Release,
                requested_by: None,
                reason: None,
                override_freeze: false,
                at: now,
                request: None,
            };
            tx.deploy(&deployment, 0, None).await?;
        }
        tx.commit(&[]).await?;
    }
    eprintln!("stamps_cost: seeded in {:.1?}", seeding.elapsed());
    let mut took = Vec::with_capacity(runs);
    let mut rows = 0;
    for _ in 0..runs {
        let started = Instant::now();
        rows = db.channel_stamps().await?.len();
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    let p99 = took[((took.len() as f64 * 0.99).ceil() as usize).clamp(1, took.len()) - 1];
    println!(
        "environments={} rows={rows} median_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        services * envs,
        took[took.len() / 2],
        p99,
        took[took.len() - 1]
    );
    db.close().await;
    Ok(())
}
