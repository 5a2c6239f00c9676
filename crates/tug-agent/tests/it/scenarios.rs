//! The agent's scenarios: a fleet converging and following a release, a
//! failed health check or activation hook rolled back (and reported as
//! such), a corrupt download discarded, the server going away and coming
//! back, long-polls that really wait, and recovery after a crash.

use std::time::Duration;

use tug_api::AgentState;
use tug_core::BuildId;

use crate::{alive, config, current, read, script, until, Relay, Result, RunningAgent, Server};

/// Whether the newest report the agent sent names `build` as running and
/// `failed` as the build it gave up on.
fn last_report_is(relay: &Relay, state: &str, build: &BuildId, failed: Option<&BuildId>) -> bool {
    relay.reports().last().is_some_and(|r| {
        r["state"] == state && r["build"] == build.as_str() && r["failed_build"].as_str() == failed.map(|f| f.as_str())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_converge_and_follow_a_new_release() -> Result {
    let server = Server::start().await?;
    let v1 = server.build("1.0.0", &script("1.0.0")).await?;
    server.release(&v1).await?;
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir()).collect::<std::io::Result<_>>()?;
    let agents: Vec<RunningAgent> = dirs
        .iter()
        .map(|d| RunningAgent::start(config(&server, d.path())))
        .collect();
    for d in &dirs {
        until(30, "an agent healthy on 1.0.0", || {
            server.reports(d.path(), AgentState::Healthy, &v1)
        })
        .await?;
        assert_eq!(read(d.path().join("served-version")), "1.0.0");
        assert_eq!(current(d.path()).as_deref(), Some(v1.as_str()));
    }
    let listed = server.admin.agents(Some("web"), Some("prod")).await?;
    assert_eq!(listed.len(), 5);
    assert!(listed
        .iter()
        .all(|a| a.report.agent_version == env!("CARGO_PKG_VERSION") && !a.report.hostname.is_empty()));

    let v2 = server.build("2.0.0", &script("2.0.0")).await?;
    server.release(&v2).await?;
    for d in &dirs {
        until(30, "an agent healthy on 2.0.0", || {
            server.reports(d.path(), AgentState::Healthy, &v2)
        })
        .await?;
        assert_eq!(read(d.path().join("served-version")), "2.0.0");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(d.path().join("current/server.sh"))?.permissions(),
        );
        assert_eq!(mode & 0o777, 0o755);
        // Both releases share the cache; only what the kept releases use
        // is there.
        assert_eq!(std::fs::read_dir(d.path().join("cache/sha256"))?.count(), 2);
    }
    for a in agents {
        a.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_fails_its_health_check_is_rolled_back() -> Result {
    let server = Server::start().await?;
    let good = server.build("1.0.0", &script("1.0.0")).await?;
    server.release(&good).await?;
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(server.addr).await?;
    let mut c = config(&server, dir.path());
    c.server = relay.url();
    c.health_timeout = Duration::from_secs(2);
    let agent = RunningAgent::start(c);
    until(30, "healthy on the good build", || {
        server.reports(dir.path(), AgentState::Healthy, &good)
    })
    .await?;

    // This build claims another version than it is: never healthy.
    let bad = server.build("2.0.0", &script("1.9.9")).await?;
    server.release(&bad).await?;
    until(30, "failed, back on the good build", || {
        server.reports(dir.path(), AgentState::Failed, &good)
    })
    .await?;
    let report = server.agent(dir.path()).await?.map(|a| a.report);
    let error = report.and_then(|r| r.error).unwrap_or_default();
    assert!(error.contains(bad.as_str()), "{error}");
    assert_eq!(current(dir.path()).as_deref(), Some(good.as_str()));
    // The good build was activated again.
    until(10, "the good build serving again", || async {
        Ok(read(dir.path().join("served-version")) == "1.0.0")
    })
    .await?;
    let state: serde_json::Value = serde_json::from_str(&read(dir.path().join("state.json")))?;
    assert_eq!(state["failed"]["build"], bad.as_str());
    // The agent reports the build it gave up on beside the one it runs.
    until(10, "a report naming the failed build", || async {
        Ok(last_report_is(&relay, "failed", &good, Some(&bad)))
    })
    .await?;

    // The failed build is not retried; the next one is installed.
    let fixed = server.build("2.0.1", &script("2.0.1")).await?;
    server.release(&fixed).await?;
    until(30, "healthy on the fixed build", || {
        server.reports(dir.path(), AgentState::Healthy, &fixed)
    })
    .await?;
    // The channel names another build: the failed one is no longer named.
    until(10, "a report without the failed build", || async {
        Ok(last_report_is(&relay, "healthy", &fixed, None))
    })
    .await?;
    assert!(relay.reports().iter().any(|r| r["failed_build"] == bad.as_str()));
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_activation_hook_runs_in_the_new_release_and_its_failure_rolls_back() -> Result {
    let server = Server::start().await?;
    let good = server.build("1.0.0", &script("1.0.0")).await?;
    server.release(&good).await?;
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(server.addr).await?;
    let mut c = config(&server, dir.path());
    c.server = relay.url();
    // Records what it sees, in a file named after the build; fails for
    // 2.0.0 only.
    c.on_activate = Some(
        r#"d="$TUG_RELEASE_DIR/../.."; out="$d/hook-$TUG_BUILD"
        { readlink "$d/current"; pwd -P; echo "$TUG_BUILD $TUG_VERSION"; cat "$d/served-version" 2>/dev/null || echo none; } > "$out"
        cat server.sh > "$out.script"
        test "$TUG_VERSION" != 2.0.0"#
            .into(),
    );
    let agent = RunningAgent::start(c);
    until(30, "healthy on 1.0.0", || {
        server.reports(dir.path(), AgentState::Healthy, &good)
    })
    .await?;
    let release_dir = |b: &BuildId| dir.path().join("releases").join(b.as_str());
    let hook_saw = |b: &BuildId| read(dir.path().join(format!("hook-{b}")));
    // Run after the switch, in the release, before the process started.
    assert_eq!(
        hook_saw(&good),
        format!("releases/{good}\n{}\n{good} 1.0.0\nnone", release_dir(&good).display())
    );

    let next = server.build("1.1.0", &script("1.1.0")).await?;
    server.release(&next).await?;
    until(30, "healthy on 1.1.0", || {
        server.reports(dir.path(), AgentState::Healthy, &next)
    })
    .await?;
    // `current` already names the new release, the old process still runs.
    assert_eq!(
        hook_saw(&next),
        format!("releases/{next}\n{}\n{next} 1.1.0\n1.0.0", release_dir(&next).display())
    );
    assert_eq!(
        read(dir.path().join(format!("hook-{next}.script"))),
        script("1.1.0").trim()
    );
    assert_eq!(read(dir.path().join("served-version")), "1.1.0");

    // A hook that exits non-zero fails the activation like a health check.
    let bad = server.build("2.0.0", &script("2.0.0")).await?;
    server.release(&bad).await?;
    until(30, "failed, back on 1.1.0", || {
        server.reports(dir.path(), AgentState::Failed, &next)
    })
    .await?;
    assert!(hook_saw(&bad).starts_with(&format!("releases/{bad}\n")));
    assert_eq!(current(dir.path()).as_deref(), Some(next.as_str()));
    let error = server
        .agent(dir.path())
        .await?
        .and_then(|a| a.report.error)
        .unwrap_or_default();
    assert!(
        error.contains(bad.as_str()) && error.contains("activation hook exited"),
        "{error}"
    );
    until(10, "a report naming the failed build", || async {
        Ok(last_report_is(&relay, "failed", &next, Some(&bad)))
    })
    .await?;
    // The failed build's process never started; 1.1.0 runs again.
    assert_eq!(read(dir.path().join("served-version")), "1.1.0");
    let state: serde_json::Value = serde_json::from_str(&read(dir.path().join("state.json")))?;
    assert_eq!(state["failed"]["build"], bad.as_str());
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_ask_for_at_least_a_second() -> Result {
    let server = Server::start().await?;
    let v1 = server.build("1.0.0", &script("1.0.0")).await?;
    server.release(&v1).await?;
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(server.addr).await?;
    let mut c = config(&server, dir.path());
    c.server = relay.url();
    // Sent as whole seconds, this used to be `wait=0s`: a poll loop with
    // no pause at all.
    c.poll_wait = Duration::from_millis(100);
    let agent = RunningAgent::start(c);
    until(30, "healthy on 1.0.0", || {
        server.reports(dir.path(), AgentState::Healthy, &v1)
    })
    .await?;
    let long_polls = || -> Vec<crate::Sent> {
        let mut polls: Vec<_> = relay
            .requests()
            .into_iter()
            .filter(|r| r.target.starts_with("/v1/channels/") && r.header("if-none-match").is_some())
            .collect();
        polls.sort_by_key(|r| r.at);
        polls
    };
    until(15, "three long-polls", || async { Ok(long_polls().len() >= 3) }).await?;
    let polls = long_polls();
    for p in &polls {
        assert!(p.target.contains("wait=1s"), "{}", p.target);
    }
    // The server held each of them for that second.
    let spanned = polls[2].at - polls[0].at;
    assert!(spanned >= Duration::from_millis(1800), "three polls within {spanned:?}");
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_download_is_discarded_and_fetched_again() -> Result {
    let server = Server::start().await?;
    let body = script("1.0.0");
    let v1 = server.build("1.0.0", &body).await?;
    server.release(&v1).await?;
    let dir = tempfile::tempdir()?;
    // Garbage of the right length both as the cached blob and as a partial
    // download of it: neither hashes to the digest.
    let digest = tug_core::Digest::of(body.as_bytes());
    let cache = dir.path().join("cache/sha256");
    std::fs::create_dir_all(&cache)?;
    let garbage = "#!/bin/sh\necho pwned\n".to_string() + &"#".repeat(body.len() - 21);
    assert_eq!(garbage.len(), body.len());
    std::fs::write(cache.join(digest.hex()), &garbage)?;
    std::fs::write(cache.join(format!("{}.part", digest.hex())), &garbage)?;

    let agent = RunningAgent::start(config(&server, dir.path()));
    until(30, "healthy on the real bytes", || {
        server.reports(dir.path(), AgentState::Healthy, &v1)
    })
    .await?;
    assert_eq!(std::fs::read_to_string(dir.path().join("current/server.sh"))?, body);
    assert_eq!(std::fs::read_to_string(cache.join(digest.hex()))?, body);
    assert!(!cache.join(format!("{}.part", digest.hex())).exists());
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_keeps_running_while_the_server_is_away() -> Result {
    let mut server = Server::start().await?;
    let v1 = server.build("1.0.0", &script("1.0.0")).await?;
    server.release(&v1).await?;
    let dir = tempfile::tempdir()?;
    let agent = RunningAgent::start(config(&server, dir.path()));
    until(30, "healthy on 1.0.0", || {
        server.reports(dir.path(), AgentState::Healthy, &v1)
    })
    .await?;
    let pid = read(dir.path().join("pid"));
    assert!(alive(&pid));

    server.stop().await?;
    // Reports and polls fail now; the agent must neither exit nor touch
    // the running process.
    until(10, "the port to be closed", || async {
        Ok(tokio::net::TcpStream::connect(server.addr).await.is_err())
    })
    .await?;
    let seen = server.agent(dir.path()).await.is_err();
    assert!(seen, "the server still answers");
    assert!(alive(&pid));
    assert_eq!(current(dir.path()).as_deref(), Some(v1.as_str()));

    server.restart().await?;
    let v2 = server.build("2.0.0", &script("2.0.0")).await?;
    server.release(&v2).await?;
    until(30, "healthy on 2.0.0 after the outage", || {
        server.reports(dir.path(), AgentState::Healthy, &v2)
    })
    .await?;
    assert!(!alive(&pid), "the old process was not stopped");
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_recovers_from_a_crash_mid_deployment() -> Result {
    let server = Server::start().await?;
    let v1 = server.build("1.0.0", &script("1.0.0")).await?;
    server.release(&v1).await?;
    let dir = tempfile::tempdir()?;
    let agent = RunningAgent::start(config(&server, dir.path()));
    until(30, "healthy on 1.0.0", || {
        server.reports(dir.path(), AgentState::Healthy, &v1)
    })
    .await?;
    agent.stop().await?;

    // What kill -9 between assembly and switch leaves: a half-assembled
    // release, a half-made symlink, and the intent in state.json.
    let v2 = server.build("2.0.0", &script("2.0.0")).await?;
    let tmp = dir.path().join("releases").join(format!("{v2}.tmp"));
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(tmp.join("server.sh"), "#!/bin/sh\nexit 1\n")?;
    std::os::unix::fs::symlink(format!("releases/{v2}.tmp"), dir.path().join("current.new"))?;
    let state = serde_json::json!({ "activating": v2.as_str(), "previous": v1.as_str(), "history": [v1.as_str(), v2.as_str()] });
    std::fs::write(dir.path().join("state.json"), state.to_string())?;
    server.release(&v2).await?;

    let agent = RunningAgent::start(config(&server, dir.path()));
    until(30, "healthy on 2.0.0 after the crash", || {
        server.reports(dir.path(), AgentState::Healthy, &v2)
    })
    .await?;
    assert!(!tmp.exists());
    assert_eq!(current(dir.path()).as_deref(), Some(v2.as_str()));
    assert_eq!(read(dir.path().join("served-version")), "2.0.0");
    agent.stop().await?;

    // A crash after the switch, before health was confirmed: the
    // activation is run again (the process writes its version again).
    let state = serde_json::json!({ "activating": v2.as_str(), "previous": v1.as_str(), "history": [v1.as_str(), v2.as_str()] });
    std::fs::write(dir.path().join("state.json"), state.to_string())?;
    std::fs::remove_file(dir.path().join("served-version"))?;
    let agent = RunningAgent::start(config(&server, dir.path()));
    until(30, "the activation re-run", || async {
        Ok(read(dir.path().join("served-version")) == "2.0.0")
    })
    .await?;
    until(30, "confirmed healthy", || async {
        let s: serde_json::Value = serde_json::from_str(&read(dir.path().join("state.json")))?;
        Ok(s["activating"].is_null())
    })
    .await?;
    // The report may lag the state file by one heartbeat.
    until(10, "the healthy report", || {
        server.reports(dir.path(), AgentState::Healthy, &v2)
    })
    .await?;
    agent.stop().await
}
