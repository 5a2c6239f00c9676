//! Approval expiry: a request nobody decides expires when the server's
//! clock passes its `approval_timeout`, once, with an `approval.expired`
//! event, and a late approval is told so.

use std::time::Duration;

use tug_core::Role;

use crate::app::{env_name, Dialect, TestApp};

const TRAIN: &str = r#"
service = "api"

[[environments]]
name = "trials"

[[environments]]
name = "production"
upstream = "trials"
approvals = 1
approval_timeout = "2h"

[[environments]]
name = "emea"
upstream = "trials"
approvals = 1
"#;

async fn a_request_expires_when_the_clock_passes_its_timeout(dialect: Dialect) {
    // Environments without their own timeout take the server's.
    let app = TestApp::builder(dialect)
        .approval_timeout(Duration::from_secs(30 * 60))
        .start()
        .await;
    let api = app.service(TRAIN).await;
    let deployer = app.client_with(&app.token("deployer", Role::Deployer).await);
    let alice = app.client_with(&app.token("alice", Role::Approver).await);
    let b = app.sealed(&api, "master", "1.0.0").await;
    app.release(&api, "trials", &b).await;
    let asked = app.clock.now();
    for env in ["production", "emea"] {
        let res = app.promote(&deployer, &api, env).await.unwrap();
        assert_eq!(res.status, tug_api::DeployStatus::PendingApproval, "{res:?}");
    }

    // Just before the server's half hour nothing is due.
    app.clock.advance(Duration::from_secs(30 * 60 - 1));
    app.sweep().await;
    assert!(app.events("approval.expired").await.is_empty());

    // At the half hour emea's request expires, production's waits on.
    app.clock.advance(Duration::from_secs(1));
    app.sweep().await;
    let expired = app.events("approval.expired").await;
    assert_eq!(expired.len(), 1, "{expired:#?}");
    assert_eq!(expired[0].change.environment(), Some(&env_name("emea")));
    assert_eq!(expired[0].change.build().unwrap().id, b);
    assert!(expired[0].actor.is_none(), "nobody expired it: {:?}", expired[0]);
    assert_eq!(expired[0].at, app.clock.now());
    let decide = |env: &str| tug_api::Decide {
        environment: env_name(env),
        build: b.to_string(),
    };
    let err = alice
        .decide(&api, &decide("emea"), tug_core::states::Decision::Approve)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    // Production's two hours end; two servers sweeping at the same moment
    // record its expiry once.
    app.clock.set(asked + chrono::Duration::hours(2));
    tokio::join!(app.sweep(), app.sweep());
    let expired = app.events("approval.expired").await;
    assert_eq!(expired.len(), 2, "{expired:#?}");
    assert_eq!(expired[1].change.environment(), Some(&env_name("production")));
    let status = app.admin().status(&api).await.unwrap();
    let production = status
        .environments
        .iter()
        .find(|e| e.environment == env_name("production"))
        .unwrap();
    assert!(production.pending.is_empty(), "{production:#?}");
    assert_eq!(production.expired.len(), 1, "{production:#?}");
    let err = alice
        .decide(&api, &decide("production"), tug_core::states::Decision::Approve)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    // Asked again, a new request runs its own two hours, and approved in
    // time it deploys.
    app.promote(&deployer, &api, "production").await.unwrap();
    app.clock.advance(Duration::from_secs(2 * 3600 - 1));
    app.sweep().await;
    let decided = alice
        .decide(&api, &decide("production"), tug_core::states::Decision::Approve)
        .await
        .unwrap();
    assert_eq!(decided.deployment.unwrap().build, Some(b));
    assert_eq!(app.events("approval.expired").await.len(), 2);
}

crate::on_both_dialects!(a_request_expires_when_the_clock_passes_its_timeout);
