//! Freeze and maintenance windows at the moments they open and close, by
//! the server's clock: weekly windows in Europe/Berlin across both daylight
//! saving changes, one-off windows, the admin's freeze override, and
//! agents told to wait outside a maintenance window unless the build is
//! critical.

use tug_api::{Channel, DeployFlags};
use tug_core::{BuildId, Platform, Role, ServiceName};

use crate::app::{at, env_name, Dialect, TestApp};

const WEEKEND_FREEZE: &str = r#"
service = "web"

[[environments]]
name = "prod"
freeze = [{ weekly = "Sat 00:00 - Mon 06:00", tz = "Europe/Berlin" }]
"#;

/// Releases a new build to prod at `when`; whether the freeze refused it.
async fn frozen_at(app: &TestApp, web: &ServiceName, when: &str, version: &str) -> bool {
    app.clock.set(at(when));
    let b = app.sealed(web, "master", version).await;
    match release(&app.admin(), web, &b, DeployFlags::default()).await {
        Ok(_) => false,
        Err(e) if e.code() == Some("policy_violation") && e.to_string().contains("frozen") => true,
        Err(e) => panic!("release at {when}: {e}"),
    }
}

async fn release(
    client: &tug_client::Client,
    web: &ServiceName,
    b: &BuildId,
    flags: DeployFlags,
) -> tug_client::Result<tug_api::DeployResult> {
    client
        .release(
            web,
            &tug_api::Release {
                environment: env_name("prod"),
                build: Some(b.to_string()),
                branch: None,
                version: None,
                flags,
            },
        )
        .await
}

/// Berlin's weekend freeze starts and ends at Berlin's midnight and six
/// o'clock in the morning, whatever its offset from UTC that week: the
/// spring change (29 March 2026) moves the window's end an hour earlier
/// in UTC than its start, the autumn change (25 October 2026) an hour
/// later.
async fn a_weekly_freeze_follows_berlin_across_daylight_saving(dialect: Dialect) {
    let app = TestApp::start(dialect).await;
    let web = app.service(WEEKEND_FREEZE).await;
    let moments = [
        // Spring: in at 00:00 CET (+01:00), out at 06:00 CEST (+02:00).
        ("2026-03-27T22:59:59Z", false),
        ("2026-03-27T23:00:00Z", true),
        ("2026-03-29T01:30:00Z", true),
        ("2026-03-30T03:59:59Z", true),
        ("2026-03-30T04:00:00Z", false),
        ("2026-03-30T04:30:00Z", false),
        // Autumn: in at 00:00 CEST, out at 06:00 CET.
        ("2026-10-23T21:59:59Z", false),
        ("2026-10-23T22:00:00Z", true),
        ("2026-10-26T04:59:59Z", true),
        ("2026-10-26T05:00:00Z", false),
    ];
    for (i, (when, frozen)) in moments.into_iter().enumerate() {
        assert_eq!(
            frozen_at(&app, &web, when, &format!("1.0.{i}")).await,
            frozen,
            "frozen at {when}"
        );
    }
}

const YEAR_END_FREEZE: &str = r#"
service = "web"

[[environments]]
name = "prod"
freeze = [{ from = "2026-12-24T00:00:00+01:00", until = "2026-12-27T00:00:00+01:00" }]
"#;

/// A one-off freeze holds from its start (included) to its end
/// (excluded); inside it an admin may deploy with a reason, which is
/// recorded, and nobody else may.
async fn a_one_off_freeze_holds_unless_an_admin_overrides_it(dialect: Dialect) {
    let app = TestApp::start(dialect).await;
    let web = app.service(YEAR_END_FREEZE).await;
    assert!(!frozen_at(&app, &web, "2026-12-23T22:59:59Z", "1.0.0").await);
    assert!(frozen_at(&app, &web, "2026-12-23T23:00:00Z", "1.0.1").await);
    assert!(frozen_at(&app, &web, "2026-12-26T22:59:59Z", "1.0.2").await);

    // Still frozen: the override needs an admin and a reason.
    let b = app.sealed(&web, "hotfix", "1.0.3").await;
    let override_with = |reason: Option<&str>| DeployFlags {
        override_freeze: true,
        reason: reason.map(str::to_string),
    };
    let deployer = app.client_with(&app.token("deployer", Role::Deployer).await);
    let err = release(&deployer, &web, &b, override_with(Some("incident 42")))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    let err = release(&app.admin(), &web, &b, override_with(None)).await.unwrap_err();
    assert!(err.to_string().contains("reason"), "{err}");
    let done = release(&app.admin(), &web, &b, override_with(Some("incident 42")))
        .await
        .unwrap();
    let d = done.deployment.unwrap();
    assert_eq!(d.build, Some(b.clone()));
    assert!(d.override_freeze && d.reason.as_deref() == Some("incident 42"), "{d:?}");
    let deployed = app.events("deployment").await;
    let overridden: Vec<_> = deployed
        .iter()
        .filter_map(|e| match &e.change {
            tug_api::Change::Deployment(d) if d.override_freeze => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(overridden.len(), 1, "{deployed:#?}");
    assert_eq!(overridden[0].build.as_ref().map(|b| &b.id), Some(&b));
    assert_eq!(overridden[0].reason.as_deref(), Some("incident 42"));

    assert!(!frozen_at(&app, &web, "2026-12-26T23:00:00Z", "1.0.4").await);
}

const NIGHTLY_MAINTENANCE: &str = r#"
service = "web"

[[environments]]
name = "prod"
maintenance = [{ weekly = "Mon-Fri 02:00 - 04:00", tz = "Europe/Berlin" }]
"#;

/// What prod's channel tells an agent at `when`.
async fn channel_at(app: &TestApp, web: &ServiceName, when: &str) -> Channel {
    app.clock.set(at(when));
    let (channel, _etag) = app
        .admin()
        .channel(
            web,
            &env_name("prod"),
            &Platform::parse("linux/amd64").unwrap(),
            Some("prod-1"),
            None,
            None,
        )
        .await
        .unwrap()
        .expect("an answer without an ETag");
    channel
}

/// An agent is told to wait outside prod's nightly window and may update
/// inside it (Berlin time, a summer night); a critical build goes at once.
async fn agents_update_inside_the_maintenance_window_or_for_a_critical_build(dialect: Dialect) {
    let app = TestApp::start(dialect).await;
    let web = app.service(NIGHTLY_MAINTENANCE).await;
    app.clock.set(at("2026-06-30T10:00:00Z"));
    let v1 = app.sealed(&web, "master", "1.0.0").await;
    app.release(&web, "prod", &v1).await;

    // Tuesday 30 June: 12:00 in Berlin.
    let c = channel_at(&app, &web, "2026-06-30T10:00:00Z").await;
    assert_eq!(c.build.as_ref(), Some(&v1));
    assert!(!c.may_update, "{c:?}");
    assert!(
        c.waiting.as_deref().unwrap_or_default().contains("maintenance"),
        "{c:?}"
    );
    // 01:59:59 and 04:00 in Berlin are outside, 02:00 and 03:59:59 inside.
    for (when, inside) in [
        ("2026-06-30T23:59:59Z", false),
        ("2026-07-01T00:00:00Z", true),
        ("2026-07-01T01:59:59Z", true),
        ("2026-07-01T02:00:00Z", false),
        // Saturday night: not a weekday.
        ("2026-07-04T00:30:00Z", false),
    ] {
        let c = channel_at(&app, &web, when).await;
        assert_eq!(c.may_update, inside, "at {when}: {c:?}");
        assert_eq!(c.waiting.is_none(), inside, "at {when}: {c:?}");
    }

    // Marked critical, the build goes out at once, outside the window. The
    // server's answers learn of the flag from its change poller, which the
    // commit wakes: within a moment, never a poll interval later.
    app.admin().mark_critical(v1.as_str()).await.unwrap();
    let started = std::time::Instant::now();
    let c = loop {
        let c = channel_at(&app, &web, "2026-07-04T12:00:00Z").await;
        if c.critical || started.elapsed() > std::time::Duration::from_secs(1) {
            break c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(c.critical && c.may_update, "{c:?}");
}

crate::on_both_dialects!(
    a_weekly_freeze_follows_berlin_across_daylight_saving,
    a_one_off_freeze_holds_unless_an_admin_overrides_it,
    agents_update_inside_the_maintenance_window_or_for_a_critical_build,
);
