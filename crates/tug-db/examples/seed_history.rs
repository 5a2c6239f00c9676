//! Seeds a Tugboat database with a long deployment history, for
//! `bench/deploy`: one service, N sealed builds and N deployments spread
//! round-robin over the environments, all in the past. It goes through
//! [`tug_db::Db`] (the migrations, `insert_build`, `add_artifacts`,
//! `seal_build` with the real sealing rules, `env_state` and `deploy` with
//! its compare-and-set), so the rows are exactly what the server writes; it
//! only skips HTTP, which would take far longer for 100,000 builds, and the
//! events (`crates/tug-service/examples/seed_events.rs` seeds those).
//!
//! Run it before `tug server` starts on the same database:
//!
//! ```sh
//! cargo run --release -p tug-db --example seed_history -- \
//!   --database sqlite://DIR/tug.db --service api --builds 100000 \
//!   --deployments 100000 --envs e1,e2,…,e10 --digest sha256:HEX --size BYTES
//! ```
//!
//! Build `i` (oldest first, one every 5 minutes, branch `master`, version
//! `0.<i / 1000>.<i % 1000>`) has `--artifacts` artifacts (default 1), all
//! naming the blob `--digest` of `--size` bytes (it should be in the store
//! before anything reads it). Deployment `i` puts build `i % builds` into
//! environment `i % envs` (the first environment gets `auto_release`, the
//! others `promote`), two seconds after the build's seal. Prints what it did
//! and how long it took.

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use tug_core::{
    ArtifactKind, ArtifactName, ArtifactSpec, BuildId, BuildManifest, BuildSource, CiRun, DeployKind, Digest, Draft,
    EnvName, ServiceName, Version,
};
use tug_db::{Db, NewBuild, NewDeployment};

struct Args {
    database: String,
    service: String,
    builds: u64,
    deployments: u64,
    envs: Vec<String>,
    digest: String,
    size: u64,
    artifacts: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: seed_history --database URL --digest sha256:HEX --size BYTES \
         [--service api] [--builds 100000] [--deployments 100000] [--envs e1,…,e10] [--artifacts 1]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        database: String::new(),
        service: "api".into(),
        builds: 100_000,
        deployments: 100_000,
        envs: (1..=10).map(|i| format!("e{i}")).collect(),
        digest: String::new(),
        size: 0,
        artifacts: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        let num = |v: &str| v.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--database" => a.database = value,
            "--service" => a.service = value,
            "--builds" => a.builds = num(&value),
            "--deployments" => a.deployments = num(&value),
            "--envs" => a.envs = value.split(',').map(str::to_string).collect(),
            "--digest" => a.digest = value,
            "--size" => a.size = num(&value),
            "--artifacts" => a.artifacts = num(&value),
            _ => usage(),
        }
    }
    if a.database.is_empty() || a.digest.is_empty() || a.builds == 0 || a.envs.is_empty() {
        usage()
    }
    a
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A version-7 UUID whose time part is `at`, as the server makes for
/// builds and deployments at that instant.
fn uuid_at(at: DateTime<Utc>) -> String {
    let ms = at.timestamp_millis() as u64;
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
    uuid::Uuid::new_v7(ts).to_string()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args();
    let db = Db::connect(&a.database).await?;
    let service = ServiceName::parse(&a.service)?;
    let digest = Digest::parse(&a.digest)?;
    let envs: Vec<EnvName> = a.envs.iter().map(|e| EnvName::parse(e)).collect::<Result<_, _>>()?;
    let step = Duration::minutes(5);
    // The history ends a day ago, so everything the benchmark does is newer.
    let start = Utc::now() - Duration::days(1) - step * (a.builds as i32);
    let mut tx = db.begin().await?;
    tx.create_service(&service, start - Duration::days(1)).await?;
    tx.commit(&[]).await?;

    let began = Instant::now();
    let mut ids = Vec::with_capacity(a.builds as usize);
    for i in 0..a.builds {
        let at = start + step * (i as i32);
        let id = BuildId::parse(&uuid_at(at))?;
        let mut tx = db.begin().await?;
        tx.insert_build(&NewBuild {
            id: id.clone(),
            service: service.clone(),
            version: Version::parse(&format!("0.{}.{}", i / 1000, i % 1000))?,
            source: BuildSource {
                branch: Some("master".into()),
                commit: Some(format!("{i:040x}")),
                repo: Some("https://git.example.com/api".into()),
                ..BuildSource::default()
            },
            ci: CiRun::default(),
            expected: Vec::new(),
            created_at: at,
            created_by: Some("seed".into()),
            created_by_token: None,
            embargoed: false,
        })
        .await?;
        tx.commit(&[]).await?;
        let specs: Vec<ArtifactSpec> = (0..a.artifacts)
            .map(|k| {
                Ok(ArtifactSpec {
                    name: ArtifactName::parse(&format!("bin/{k:04}.bin"))?,
                    kind: ArtifactKind::Binary,
                    platform: None,
                    size: a.size,
                    digest,
                    derived_from: Vec::new(),
                    executable: false,
                    uri: None,
                })
            })
            .collect::<Result<_, tug_core::NameError>>()?;
        db.add_artifacts(&id, &specs, at).await?;
        let mut tx = db.begin().await?;
        tx.seal_build(&id, at + Duration::seconds(1), |b, artifacts| {
            BuildManifest::seal(Draft {
                id: &b.id,
                service: &b.service,
                version: &b.version,
                source: &b.source,
                ci: &b.ci,
                created_at: &rfc3339(b.created_at),
                expected: &b.expected,
                artifacts,
            })
        })
        .await??;
        tx.commit(&[]).await?;
        ids.push(id);
        if (i + 1) % 10_000 == 0 {
            eprintln!("seed_history: {} builds in {:.0?}", i + 1, began.elapsed());
        }
    }
    let builds_took = began.elapsed();

    let began = Instant::now();
    for i in 0..a.deployments {
        let b = (i % a.builds) as usize;
        let env = &envs[(i % envs.len() as u64) as usize];
        let at = start + step * (b as i32) + Duration::seconds(2) + Duration::milliseconds((i / a.builds) as i64);
        let state = db.env_state(&service, env).await?;
        let mut tx = db.begin().await?;
        tx.deploy(
            &NewDeployment {
                id: uuid_at(at),
                service: service.clone(),
                environment: env.clone(),
                build: ids[b].clone(),
                kind: if env == &envs[0] {
                    DeployKind::AutoRelease
                } else {
                    DeployKind::Promote
                },
                requested_by: None,
                reason: None,
                override_freeze: false,
                at,
                request: None,
            },
            state.seq,
            None,
        )
        .await?;
        tx.commit(&[]).await?;
        if (i + 1) % 10_000 == 0 {
            eprintln!("seed_history: {} deployments in {:.0?}", i + 1, began.elapsed());
        }
    }
    let deployments_took = began.elapsed();
    db.close().await;
    println!(
        "seeded service {service}: {} builds ({} artifacts each) in {:.1} s, {} deployments over {} environments in {:.1} s",
        a.builds,
        a.artifacts,
        builds_took.as_secs_f64(),
        a.deployments,
        envs.len(),
        deployments_took.as_secs_f64()
    );
    Ok(())
}
