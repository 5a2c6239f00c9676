//! Repository tests of the deployment log's compare-and-set paths: a request
//! deploys at most once however many approvals complete it at once, an
//! expired request never deploys, one request per build and environment is
//! pending, auto-release requests supersede older ones, due requests expire
//! once across concurrent sweeps, and the newest releasable build goes by
//! seal time.

use chrono::{DateTime, Duration, Utc};
use tug_core::states::{Decision, RequestState};
use tug_core::{BuildId, DeployKind, EnvName};
use tug_db::{CreatedRequest, Db, Error, NewDeployment, RequestRow};

use crate::builds::{draft, seal_at, service, spec};

fn env(name: &str) -> EnvName {
    EnvName::parse(name).unwrap()
}

/// A build of `branch` sealed at `at`.
async fn sealed(db: &Db, branch: &str, at: DateTime<Utc>) -> BuildId {
    let id = draft(db, branch, "1.0.0", &[]).await;
    db.add_artifacts(&id, &[spec("app.bin", id.as_str(), &[])], Utc::now())
        .await
        .unwrap();
    seal_at(db, &id, at).await.unwrap().unwrap();
    id
}

fn request(build: &BuildId, env: &EnvName, kind: DeployKind, expires_at: Option<DateTime<Utc>>) -> RequestRow {
    RequestRow {
        id: uuid::Uuid::now_v7().to_string(),
        service: service(),
        environment: env.clone(),
        build: build.clone(),
        kind,
        state: RequestState::Pending,
        requested_by: "deployer".into(),
        requested_at: Utc::now(),
        expires_at,
        reason: None,
        override_freeze: false,
        decisions: Vec::new(),
    }
}

fn deployment(build: &BuildId, env: &EnvName, request: Option<&str>) -> NewDeployment {
    NewDeployment {
        id: uuid::Uuid::now_v7().to_string(),
        service: service(),
        environment: env.clone(),
        build: build.clone(),
        kind: DeployKind::Promote,
        requested_by: Some("deployer".into()),
        reason: None,
        override_freeze: false,
        at: Utc::now(),
        request: request.map(str::to_string),
    }
}

async fn created(db: &Db, r: &RequestRow, supersede: bool) -> Vec<RequestRow> {
    match crate::in_tx!(db, |tx| tx.create_request(r, supersede).await).unwrap() {
        CreatedRequest::Created { superseded } => superseded,
        CreatedRequest::AlreadyPending => panic!("a request for {} was pending already", r.build),
    }
}

/// A stored pending promotion of `build` into `env`.
async fn promotion(db: &Db, build: &BuildId, env: &EnvName, expires_at: DateTime<Utc>) -> RequestRow {
    let r = request(build, env, DeployKind::Promote, Some(expires_at));
    created(db, &r, false).await;
    r
}

crate::db_test!(concurrent_last_approvals_deploy_a_request_once, |db: Db| async move {
    let build = sealed(&db, "master", Utc::now()).await;
    let prod = env("production");
    let r = promotion(&db, &build, &prod, Utc::now() + Duration::hours(1)).await;
    for approver in ["alice", "bob"] {
        crate::in_tx!(db, |tx| tx.decide(&r.id, approver, Decision::Approve, Utc::now()).await).unwrap();
    }
    // Eight approvals completing the request at once, each having read the
    // environment at a moment of its own: some see it before, some after
    // the winner's deployment.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (db, build, prod, id) = (db.clone(), build.clone(), prod.clone(), r.id.clone());
        tasks.push(tokio::spawn(async move {
            let seq = db.env_state(&service(), &prod).await.unwrap().seq;
            crate::in_tx!(db, |tx| tx
                .deploy(&deployment(&build, &prod, Some(&id)), seq, None)
                .await)
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(d) => {
                won += 1;
                assert_eq!(d.request.as_deref(), Some(r.id.as_str()));
                assert_eq!(d.approved_by, vec!["alice", "bob"]);
            }
            Err(Error::RequestNotPending(id)) => assert_eq!(id, r.id),
            Err(Error::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1, "one request, one deployment");
    let history = db.history(&service(), &prod, 100).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].approved_by, vec!["alice", "bob"]);
    assert_eq!(db.request(&r.id).await.unwrap().unwrap().state, RequestState::Deployed);
    let current = db.env_state(&service(), &prod).await.unwrap().current.unwrap();
    assert_eq!(current.approved_by, vec!["alice", "bob"]);
    assert_eq!(
        db.deployment_of_request(&r.id).await.unwrap().unwrap().id,
        history[0].id
    );

    // Carried out again with a fresh sequence number: refused, nothing
    // written.
    let seq = db.env_state(&service(), &prod).await.unwrap().seq;
    let err = crate::in_tx!(db, |tx| tx
        .deploy(&deployment(&build, &prod, Some(&r.id)), seq, None)
        .await)
    .unwrap_err();
    assert!(matches!(err, Error::RequestNotPending(_)), "{err}");
    assert_eq!(db.env_state(&service(), &prod).await.unwrap().seq, seq);
});

crate::db_test!(an_expired_request_never_deploys, |db: Db| async move {
    let build = sealed(&db, "master", Utc::now()).await;
    let prod = env("production");
    let r = promotion(&db, &build, &prod, Utc::now() - Duration::seconds(1)).await;
    let err = crate::in_tx!(db, |tx| tx
        .deploy(&deployment(&build, &prod, Some(&r.id)), 0, None)
        .await)
    .unwrap_err();
    assert!(matches!(err, Error::RequestNotPending(_)), "{err}");
    let state = db.env_state(&service(), &prod).await.unwrap();
    assert_eq!((state.seq, state.current), (0, None), "nothing written");
    // Past its expiry it is not pending, swept or not.
    assert_eq!(
        db.pending_request(&service(), &prod, &build, Utc::now()).await.unwrap(),
        None
    );
    assert!(db.pending_requests(&service(), Utc::now()).await.unwrap().is_empty());
    let expired = db
        .expired_requests(&service(), &prod, DateTime::<Utc>::MIN_UTC, Utc::now(), 10)
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].state, RequestState::Expired);
});

crate::db_test!(one_request_per_build_and_environment_is_pending, |db: Db| async move {
    let build = sealed(&db, "master", Utc::now()).await;
    let prod = env("production");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let r = request(&build, &prod, DeployKind::Promote, None);
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            crate::in_tx!(db, |tx| tx.create_request(&r, false).await).unwrap()
        }));
    }
    let mut made = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), CreatedRequest::Created { .. }) {
            made += 1;
        }
    }
    assert_eq!(made, 1, "never a second pending request");
    assert_eq!(db.pending_requests(&service(), Utc::now()).await.unwrap().len(), 1);
    // Another environment, or the same one once the first is closed, may
    // have its own.
    created(&db, &request(&build, &env("staging"), DeployKind::Promote, None), false).await;
    let pending = db
        .pending_request(&service(), &prod, &build, Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert!(crate::in_tx!(db, |tx| tx.close_request(&pending.id, RequestState::Rejected).await).unwrap());
    created(&db, &request(&build, &prod, DeployKind::Promote, None), false).await;
});

crate::db_test!(auto_release_requests_supersede_older_ones, |db: Db| async move {
    let old = sealed(&db, "master", Utc::now()).await;
    let new = sealed(&db, "master", Utc::now()).await;
    let prod = env("production");
    let manual = request(&old, &prod, DeployKind::Promote, None);
    created(&db, &manual, false).await;
    let first = request(&old, &env("canary"), DeployKind::AutoRelease, None);
    assert!(created(&db, &first, true).await.is_empty());
    let older = request(&old, &prod, DeployKind::AutoRelease, None);
    // The manual request for the same build is pending: the index holds.
    assert_eq!(
        crate::in_tx!(db, |tx| tx.create_request(&older, true).await).unwrap(),
        CreatedRequest::AlreadyPending
    );
    let newer = request(&new, &env("canary"), DeployKind::AutoRelease, None);
    let superseded = created(&db, &newer, true).await;
    assert_eq!(
        superseded.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec![first.id.as_str()],
        "only the older auto-release request of that environment"
    );
    assert_eq!(
        db.request(&first.id).await.unwrap().unwrap().state,
        RequestState::Superseded
    );
    assert_eq!(
        db.request(&manual.id).await.unwrap().unwrap().state,
        RequestState::Pending
    );
    let last = db
        .last_request(&service(), &env("canary"), &old, Some(DeployKind::AutoRelease))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.id, first.id);
    assert_eq!(
        db.last_request(&service(), &env("canary"), &old, Some(DeployKind::Promote))
            .await
            .unwrap(),
        None
    );
});

crate::db_test!(due_requests_expire_once_across_sweeps, |db: Db| async move {
    let prod = env("production");
    let due = Utc::now() - Duration::seconds(1);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let build = sealed(&db, "master", Utc::now()).await;
        ids.push(promotion(&db, &build, &prod, due).await.id);
    }
    let later = sealed(&db, "master", Utc::now()).await;
    let in_an_hour = Utc::now() + Duration::hours(1);
    promotion(&db, &later, &prod, in_an_hour).await;
    let next = db.next_expiry().await.unwrap().unwrap();
    assert_eq!(next.timestamp_millis(), due.timestamp_millis());

    let mut tasks = Vec::new();
    for _ in 0..4 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            crate::in_tx!(db, |tx| tx.expire_due_requests(Utc::now()).await).unwrap()
        }));
    }
    let mut expired: Vec<String> = Vec::new();
    for t in tasks {
        expired.extend(t.await.unwrap().into_iter().map(|r| r.id));
    }
    expired.sort();
    ids.sort();
    assert_eq!(expired, ids, "each due request expired by exactly one sweep");
    for id in &ids {
        assert_eq!(db.request(id).await.unwrap().unwrap().state, RequestState::Expired);
    }
    assert_eq!(
        db.next_expiry().await.unwrap().unwrap().timestamp_millis(),
        in_an_hour.timestamp_millis()
    );
    assert_eq!(db.pending_requests(&service(), Utc::now()).await.unwrap().len(), 1);
});

crate::db_test!(newest_releasable_build_goes_by_seal_time, |db: Db| async move {
    let t0 = Utc::now();
    // Created first, sealed last: the newest seal.
    let slow = draft(&db, "master", "1.0.0", &[]).await;
    db.add_artifacts(&slow, &[spec("app.bin", "slow", &[])], t0)
        .await
        .unwrap();
    let fast = sealed(&db, "master", t0).await;
    seal_at(&db, &slow, t0 + Duration::seconds(5)).await.unwrap().unwrap();
    let _other = sealed(&db, "hotfix", t0 + Duration::seconds(9)).await;
    let newest = |embargoed| {
        let db = db.clone();
        async move {
            db.newest_releasable(&service(), "master", embargoed)
                .await
                .unwrap()
                .map(|b| b.id)
        }
    };
    assert_eq!(newest(false).await, Some(slow.clone()));

    crate::in_tx!(db, |tx| tx.yank_build(&slow, Utc::now(), "admin", Some("broken")).await).unwrap();
    assert_eq!(newest(false).await, Some(fast.clone()), "yanked builds are skipped");

    let embargoed = BuildId::parse(&uuid::Uuid::now_v7().to_string()).unwrap();
    crate::in_tx!(db, |tx| tx
        .insert_build(&tug_db::NewBuild {
            id: embargoed.clone(),
            service: service(),
            version: tug_core::Version::parse("1.0.1").unwrap(),
            source: tug_core::BuildSource {
                branch: Some("master".into()),
                ..Default::default()
            },
            ci: Default::default(),
            expected: vec![],
            created_at: t0,
            created_by: Some("ci".into()),
            created_by_token: None,
            embargoed: true,
        })
        .await)
    .unwrap();
    db.add_artifacts(&embargoed, &[spec("app.bin", "cve", &[])], t0)
        .await
        .unwrap();
    seal_at(&db, &embargoed, t0 + Duration::seconds(7))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(newest(false).await, Some(fast), "embargoed builds only where allowed");
    assert_eq!(newest(true).await, Some(embargoed));
});

/// Deploys `build` to `env` from `expected_seq` in a transaction of its own.
async fn deploy_from(db: &Db, build: &BuildId, env: &EnvName, expected_seq: i64) -> Result<i64, Error> {
    let d = deployment(build, env, None);
    crate::in_tx!(db, |tx| tx.deploy(&d, expected_seq, None).await).map(|row| row.seq)
}

crate::db_test!(of_many_deploys_from_one_seq_exactly_one_wins, |db: Db| async move {
    const AT_ONCE: usize = 12;
    let prod = env("production");
    let mut builds = Vec::new();
    for _ in 0..2 * AT_ONCE {
        builds.push(sealed(&db, "master", Utc::now()).await);
    }
    // Two rounds, each of many deploys read at the same seq: the
    // first into an environment without a row yet, the second on top
    // of the first round's winner.
    for (round, batch) in builds.chunks(AT_ONCE).enumerate() {
        let seq = i64::try_from(round).unwrap();
        let tasks: Vec<_> = batch
            .iter()
            .map(|b| {
                let (db, b, prod) = (db.clone(), b.clone(), prod.clone());
                tokio::spawn(async move { (b.clone(), deploy_from(&db, &b, &prod, seq).await) })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (b, Ok(new_seq)) => {
                    assert_eq!(new_seq, seq + 1);
                    winners.push(b);
                }
                (_, Err(Error::Conflict(_))) => {}
                (b, Err(e)) => panic!("deploy of {b}: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let state = db.env_state(&service(), &prod).await.unwrap();
        assert_eq!(state.seq, seq + 1);
        assert_eq!(state.current.map(|d| d.build), Some(winners[0].clone()));
    }
    // A deploy from a seq that has moved on loses, however late.
    let err = deploy_from(&db, &builds[0], &prod, 1).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
});
