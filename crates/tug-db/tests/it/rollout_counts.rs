//! Repository tests of paced rollouts: how the environment's agents are
//! counted for a grant decision.

use chrono::{DateTime, Duration, Utc};
use tug_core::{BuildId, EnvName, Platform};
use tug_db::{AgentRow, Db, RolloutCounts};

use crate::builds::service;

fn build() -> BuildId {
    BuildId::parse(&uuid::Uuid::now_v7().to_string()).unwrap()
}

fn prod() -> EnvName {
    EnvName::parse("prod").unwrap()
}

/// An agent of prod running `build` in `state`, last heard from at `seen`.
fn agent(id: &str, build: &BuildId, state: &str, failed: Option<&BuildId>, seen: DateTime<Utc>) -> AgentRow {
    AgentRow {
        agent_id: id.to_string(),
        service: service(),
        environment: prod(),
        hostname: format!("host-{id}"),
        platform: Platform::parse("linux/amd64").unwrap(),
        agent_version: "1.0.0".into(),
        build: Some(build.clone()),
        state: tug_core::states::AgentState::parse(state).unwrap(),
        error: None,
        failed_build: failed.cloned(),
        waiting: None,
        exit: None,
        first_seen: seen,
        last_seen: seen,
    }
}

/// Grants `agents` deployment 2 of `build`, as one decision taken at `at`.
async fn grant(db: &Db, build: &BuildId, agents: &[&str], at: DateTime<Utc>) {
    let mut lock = db.lock_rollout(&service(), &prod(), 2, build, at).await.unwrap();
    let agents: Vec<String> = agents.iter().map(|a| a.to_string()).collect();
    lock.grant(&agents, at).await.unwrap();
    lock.commit().await.unwrap();
}

crate::db_test!(rollout_counts_of_every_kind_of_agent, |db: Db| async move {
    let (old, new) = (build(), build());
    let now = Utc::now();
    let since = now - Duration::seconds(60);
    let long_ago = now - Duration::hours(2);
    for a in [
        agent("installing", &new, "downloading", None, now),
        agent("updated", &new, "healthy", None, now),
        agent("gave-up", &old, "healthy", Some(&new), now),
        agent("not-yet", &old, "healthy", None, now),
        agent("gone", &old, "downloading", None, long_ago),
        agent("ahead", &new, "healthy", None, now),
    ] {
        db.upsert_agent(&a).await.unwrap();
    }
    grant(&db, &new, &["stale-grant"], long_ago).await;
    // "silent" was granted and never reported: it may be installing.
    grant(&db, &new, &["installing", "updated", "gave-up", "gone", "silent"], now).await;

    // "gone" went quiet before its grant: the grant may have reached it,
    // so it counts (live, in flight) until the grant is as old as the
    // stale limit.
    let counts = db.rollout_counts(&service(), &prod(), 2, &new, since).await.unwrap();
    assert_eq!(
        counts,
        RolloutCounts {
            agents: 6,
            granted: 5,
            healthy: 2,
            granted_healthy: 1,
            in_flight: 3,
            failed: 1,
        }
    );
    // The decision's own read, under the lock, counts the same.
    let mut lock = db.lock_rollout(&service(), &prod(), 2, &new, now).await.unwrap();
    assert_eq!(lock.counts(since).await.unwrap(), counts);
    drop(lock);
    // Grants of another deployment count for nothing here.
    let other = db.rollout_counts(&service(), &prod(), 3, &new, since).await.unwrap();
    assert_eq!((other.granted, other.in_flight, other.healthy), (0, 0, 2));
});

crate::db_test!(
    a_granted_agent_quiet_for_longer_than_the_stale_limit_still_counts_in_flight,
    |db: Db| async move {
        // Agents that report rarely (or whose reports are late) look stale
        // while they wait; one granted then may be installing at once, and
        // not counting it let one more agent in than max_in_flight allows.
        let (old, new) = (build(), build());
        let now = Utc::now();
        let since = now - Duration::seconds(60);
        db.upsert_agent(&agent("quiet", &old, "waiting", None, now - Duration::seconds(61)))
            .await
            .unwrap();
        let before = db.rollout_counts(&service(), &prod(), 2, &new, since).await.unwrap();
        assert_eq!((before.agents, before.in_flight), (0, 0));
        grant(&db, &new, &["quiet"], now).await;
        let after = db.rollout_counts(&service(), &prod(), 2, &new, since).await.unwrap();
        assert_eq!((after.agents, after.granted, after.in_flight), (1, 1, 1));
        // Once the grant is as old as the stale limit, the quiet agent is gone.
        let later = now + Duration::seconds(61);
        let gone = db
            .rollout_counts(&service(), &prod(), 2, &new, later - Duration::seconds(60))
            .await
            .unwrap();
        assert_eq!((gone.agents, gone.in_flight), (0, 0));
    }
);
