//! Soak time: a promotion waits until its build has run upstream for the
//! soak, counted by the server's clock; with `soak_healthy`, only the time
//! enough of the upstream's agents reported healthy counts.

use std::time::Duration;

use tug_api::{AgentReport, AgentState};
use tug_core::{BuildId, Platform, ServiceName};

use crate::app::{env_name, Dialect, TestApp};

const SOAK: &str = r#"
service = "web"

[[environments]]
name = "trials"

[[environments]]
name = "prod"
upstream = "trials"
soak = "1h"
"#;

async fn a_promotion_waits_until_the_clock_passes_the_soak(dialect: Dialect) {
    let app = TestApp::start(dialect).await;
    let web = app.service(SOAK).await;
    let admin = app.admin();
    let v1 = app.sealed(&web, "master", "1.0.0").await;
    app.release(&web, "trials", &v1).await;

    app.clock.advance(Duration::from_secs(3599));
    let err = app.promote(&admin, &web, "prod").await.unwrap_err();
    assert_eq!(err.code(), Some("policy_violation"), "{err}");
    assert!(
        err.to_string().contains("soak") && err.to_string().contains("1h"),
        "{err}"
    );

    app.clock.advance(Duration::from_secs(1));
    let done = app.promote(&admin, &web, "prod").await.unwrap();
    assert_eq!(done.deployment.unwrap().build, Some(v1));

    // A new build upstream starts its own soak: the old build's hour is
    // not its.
    let v2 = app.sealed(&web, "master", "1.0.1").await;
    app.release(&web, "trials", &v2).await;
    app.clock.advance(Duration::from_secs(1800));
    let err = app.promote(&admin, &web, "prod").await.unwrap_err();
    assert!(err.to_string().contains("soak"), "{err}");
    app.clock.advance(Duration::from_secs(1800));
    let done = app.promote(&admin, &web, "prod").await.unwrap();
    assert_eq!(done.deployment.unwrap().build, Some(v2));
}

const HEALTHY_SOAK: &str = r#"
service = "web"

[[environments]]
name = "trials"

[[environments]]
name = "prod"
upstream = "trials"
soak = "10m"
soak_healthy = "50%"
"#;

/// How often the test's agents report, by the test's clock: within the
/// time after which an agent that stopped reporting no longer counts.
const HEARTBEAT: Duration = Duration::from_secs(30);

async fn only_healthy_time_counts_toward_a_health_aware_soak(dialect: Dialect) {
    let app = TestApp::start(dialect).await;
    let web = app.service(HEALTHY_SOAK).await;
    let admin = app.admin();
    let v1 = app.sealed(&web, "master", "1.0.0").await;
    app.release(&web, "trials", &v1).await;
    let agents = ["trials-a", "trials-b"];

    // Twenty minutes in trials, every agent failing its activation.
    for _ in 0..40 {
        app.clock.advance(HEARTBEAT);
        for agent in agents {
            report(&app, &web, agent, &v1, AgentState::Activating).await;
        }
    }
    let err = app.promote(&admin, &web, "prod").await.unwrap_err();
    assert!(
        err.to_string().contains("soak") && err.to_string().contains("with at least 50% of its agents healthy"),
        "{err}"
    );

    // One of two healthy is 50%: from now on the time counts, and nine
    // and a half minutes of it are not ten.
    for _ in 0..19 {
        report(&app, &web, agents[0], &v1, AgentState::Healthy).await;
        report(&app, &web, agents[1], &v1, AgentState::Activating).await;
        app.clock.advance(HEARTBEAT);
    }
    let err = app.promote(&admin, &web, "prod").await.unwrap_err();
    assert!(err.to_string().contains("soak"), "{err}");
    for _ in 0..2 {
        report(&app, &web, agents[0], &v1, AgentState::Healthy).await;
        report(&app, &web, agents[1], &v1, AgentState::Activating).await;
        app.clock.advance(HEARTBEAT);
    }
    let done = app.promote(&admin, &web, "prod").await.unwrap();
    assert_eq!(done.deployment.unwrap().build, Some(v1));
}

async fn report(app: &TestApp, service: &ServiceName, agent: &str, build: &BuildId, state: AgentState) {
    app.admin()
        .report(&AgentReport {
            agent_id: agent.to_string(),
            hostname: agent.to_string(),
            platform: Platform::parse("linux/amd64").unwrap(),
            agent_version: "1.0.0".into(),
            service: service.clone(),
            environment: env_name("trials"),
            build: Some(build.clone()),
            state,
            error: None,
            failed_build: None,
            waiting: None,
            exit: None,
        })
        .await
        .unwrap();
}

crate::on_both_dialects!(
    a_promotion_waits_until_the_clock_passes_the_soak,
    only_healthy_time_counts_toward_a_health_aware_soak,
);
