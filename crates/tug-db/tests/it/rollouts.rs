//! Repository tests of paced rollouts' compare-and-set paths: grant
//! decisions taken at once under the rollout's lock never put more agents
//! in flight than allowed, and health-aware soak clocks sampled at once
//! count each stretch of time once.

use chrono::{DateTime, Duration, Utc};
use tug_core::grant::{decide, RolloutCounts};
use tug_core::pipeline::{Share, Strategy};
use tug_core::{BuildId, EnvName, Platform};
use tug_db::{AgentRow, Db, SoakClock};

use crate::builds::{draft, service};

fn prod() -> EnvName {
    EnvName::parse("production").unwrap()
}

fn agent(id: &str, build: Option<&BuildId>, state: &str, at: DateTime<Utc>) -> AgentRow {
    AgentRow {
        agent_id: id.to_string(),
        service: service(),
        environment: prod(),
        hostname: id.to_string(),
        platform: Platform::parse("linux/amd64").unwrap(),
        agent_version: "1.0.0".into(),
        build: build.cloned(),
        state: tug_core::states::AgentState::parse(state).unwrap(),
        error: None,
        failed_build: None,
        waiting: None,
        exit: None,
        first_seen: at,
        last_seen: at,
    }
}

/// One agent's grant decision as a server takes it: under the rollout's
/// lock, on the counts it reads there. Whether the agent was granted.
async fn ask(db: &Db, seq: i64, build: &BuildId, agent: &str, max_in_flight: u32) -> bool {
    let now = Utc::now();
    let mut lock = db.lock_rollout(&service(), &prod(), seq, build, now).await.unwrap();
    let counts: RolloutCounts = lock.counts(now - Duration::minutes(1)).await.unwrap();
    let rolling = Strategy::Rolling {
        max_in_flight: Share::Count(max_in_flight),
    };
    if decide(&rolling, &counts).is_err() {
        return false;
    }
    lock.grant(&[agent.to_string()], now).await.unwrap();
    lock.commit().await.unwrap();
    true
}

crate::db_test!(concurrent_grant_decisions_respect_max_in_flight, |db: Db| async move {
    const AGENTS: usize = 16;
    const MAX: u32 = 3;
    let build = draft(&db, "master", "2.0.0", &[]).await;
    let seq = 1;
    let ids: Vec<String> = (0..AGENTS).map(|i| format!("agent-{i:02}")).collect();
    for id in &ids {
        db.upsert_agent(&agent(id, None, "idle", Utc::now())).await.unwrap();
    }
    let mut granted: Vec<String> = Vec::new();
    // Round after round every agent not yet granted asks at once; the
    // ones granted in a round then report healthy on the build, which
    // makes room for the next.
    while granted.len() < AGENTS {
        let asking: Vec<String> = ids.iter().filter(|a| !granted.contains(a)).cloned().collect();
        let tasks: Vec<_> = asking
            .iter()
            .map(|a| {
                let (db, build, a) = (db.clone(), build.clone(), a.clone());
                tokio::spawn(async move { (ask(&db, seq, &build, &a, MAX).await, a) })
            })
            .collect();
        let mut this_round = Vec::new();
        for t in tasks {
            let (yes, a) = t.await.unwrap();
            if yes {
                this_round.push(a);
            }
        }
        let expected = asking.len().min(MAX as usize);
        assert_eq!(this_round.len(), expected, "granted at once: {this_round:?}");
        let counts = db
            .rollout_counts(&service(), &prod(), seq, &build, Utc::now() - Duration::minutes(1))
            .await
            .unwrap();
        assert_eq!(counts.in_flight, expected as i64, "{counts:?}");
        for a in &this_round {
            assert!(db.has_grant(&service(), &prod(), seq, a).await.unwrap());
            db.upsert_agent(&agent(a, Some(&build), "healthy", Utc::now()))
                .await
                .unwrap();
        }
        granted.extend(this_round);
    }
    let counts = db
        .rollout_counts(&service(), &prod(), seq, &build, Utc::now() - Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(
        (counts.granted, counts.in_flight, counts.healthy),
        (AGENTS as i64, 0, AGENTS as i64)
    );
});

/// One sample of a soak clock at `now`, as a report takes it: read, add
/// the healthy time since the last sample, write if nobody wrote since.
async fn sample(db: &Db, now: DateTime<Utc>) -> bool {
    let before = db.soak_clock(&service(), &prod(), 1, 50).await.unwrap();
    let clock = SoakClock {
        healthy_ms: before
            .as_ref()
            .map_or(0, |b| b.healthy_ms + (now - b.last_sample).num_milliseconds()),
        last_sample: now,
        healthy_now: true,
    };
    db.save_soak_clock(&service(), &prod(), 1, 50, before.as_ref(), &clock)
        .await
        .unwrap()
}

crate::db_test!(concurrent_soak_samples_count_each_stretch_once, |db: Db| async move {
    const AT_ONCE: usize = 8;
    let start = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    // Many first samples at once, each having found no clock: one
    // creates it, the others are told they lost.
    let first: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let clock = SoakClock {
                    healthy_ms: 0,
                    last_sample: start,
                    healthy_now: true,
                };
                db.save_soak_clock(&service(), &prod(), 1, 50, None, &clock)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for t in first {
        created += usize::from(t.await.unwrap());
    }
    assert_eq!(created, 1);
    // Then rounds of samples taken at one moment: each ten seconds of
    // health is counted once, whoever wins.
    for round in 1..=5 {
        let now = start + Duration::seconds(10 * round);
        let tasks: Vec<_> = (0..AT_ONCE)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move { sample(&db, now).await })
            })
            .collect();
        let mut saved = 0;
        for t in tasks {
            saved += usize::from(t.await.unwrap());
        }
        // The first to write wins; those that read the clock before it
        // wrote lose; those that read it after add nothing.
        assert!(saved >= 1, "round {round}: no sample was saved");
        let clock = db.soak_clock(&service(), &prod(), 1, 50).await.unwrap().unwrap();
        assert_eq!(clock.healthy_ms, 10_000 * round, "round {round}: {clock:?}");
        assert_eq!(clock.last_sample, now);
    }
    // A sample computed from a clock that moved since it was read is
    // refused, so an older moment never overwrites a newer one.
    let stale = db.soak_clock(&service(), &prod(), 1, 50).await.unwrap().unwrap();
    assert!(sample(&db, start + Duration::seconds(70)).await);
    let late = SoakClock {
        healthy_ms: stale.healthy_ms + 10_000,
        last_sample: start + Duration::seconds(60),
        healthy_now: false,
    };
    let saved = db
        .save_soak_clock(&service(), &prod(), 1, 50, Some(&stale), &late)
        .await
        .unwrap();
    assert!(!saved);
    let clock = db.soak_clock(&service(), &prod(), 1, 50).await.unwrap().unwrap();
    assert_eq!((clock.healthy_ms, clock.healthy_now), (70_000, true));
});
