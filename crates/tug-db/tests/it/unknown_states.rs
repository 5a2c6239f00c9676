//! A state the database holds in no known text form (written behind the
//! repository's back) is an error when read, never a default.

use chrono::{Duration, Utc};
use tug_core::states::Decision;
use tug_core::{DeployKind, EnvName, Platform};
use tug_db::{AgentRow, CreatedRequest, Error, RequestRow};

use crate::builds::{draft, service};
use crate::TestDb;

/// Runs `sql` on the database at `url` over a connection of its own.
async fn behind_the_back(url: &str, sql: &str) {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let done = sqlx::query(sql).execute(&pool).await.unwrap();
    assert_eq!(done.rows_affected(), 1, "{sql}");
    pool.close().await;
}

fn assert_corrupt<T: std::fmt::Debug>(read: Result<T, Error>, what: &str) {
    match read {
        Err(Error::Corrupt(message)) => assert!(message.contains(what), "{message}"),
        other => panic!("reading an unknown {what} gave {other:?}"),
    }
}

async fn unknown_states_read_back_are_corrupt(t: TestDb) {
    let (db, url) = (&t.db, t.url.as_str());
    let prod = EnvName::parse("production").unwrap();
    let build = draft(db, "master", "1.0.0", &[]).await;
    let now = Utc::now();

    db.upsert_agent(&AgentRow {
        agent_id: "agent-1".into(),
        service: service(),
        environment: prod.clone(),
        hostname: "host-1".into(),
        platform: Platform::parse("linux/amd64").unwrap(),
        agent_version: "1.0.0".into(),
        build: None,
        state: tug_core::states::AgentState::Idle,
        error: None,
        failed_build: None,
        waiting: None,
        exit: None,
        first_seen: now,
        last_seen: now,
    })
    .await
    .unwrap();
    behind_the_back(url, "UPDATE agents SET state = 'sleeping' WHERE agent_id = 'agent-1'").await;
    assert_corrupt(db.agent("agent-1").await, "sleeping");

    let request = RequestRow {
        id: uuid::Uuid::now_v7().to_string(),
        service: service(),
        environment: prod.clone(),
        build: build.clone(),
        kind: DeployKind::Promote,
        state: tug_core::states::RequestState::Pending,
        requested_by: "deployer".into(),
        requested_at: now,
        expires_at: Some(now + Duration::hours(1)),
        reason: None,
        override_freeze: false,
        decisions: Vec::new(),
    };
    let created = crate::in_tx!(db, |tx| tx.create_request(&request, false).await).unwrap();
    assert!(matches!(created, CreatedRequest::Created { .. }));
    crate::in_tx!(db, |tx| tx.decide(&request.id, "alice", Decision::Approve, now).await).unwrap();
    behind_the_back(
        url,
        &format!(
            "UPDATE approvals SET decision = 'maybe' WHERE request_id = '{}'",
            request.id
        ),
    )
    .await;
    assert_corrupt(db.request(&request.id).await, "maybe");
    behind_the_back(
        url,
        &format!(
            "UPDATE approvals SET decision = 'approve' WHERE request_id = '{}'",
            request.id
        ),
    )
    .await;
    behind_the_back(
        url,
        &format!(
            "UPDATE deployment_requests SET state = 'sleeping' WHERE id = '{}'",
            request.id
        ),
    )
    .await;
    assert_corrupt(db.request(&request.id).await, "sleeping");

    db.lock_rollout(&service(), &prod, 1, &build, now)
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    assert!(db.rollout(&service(), &prod, 1).await.unwrap().is_some());
    behind_the_back(url, "UPDATE rollouts SET state = 'sleeping' WHERE seq = 1").await;
    assert_corrupt(db.rollout(&service(), &prod, 1).await, "sleeping");
}

mod unknown_states_read_from_the_database_are_errors {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::unknown_states_read_back_are_corrupt(crate::sqlite().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::unknown_states_read_back_are_corrupt(crate::postgres().await).await;
    }
}
