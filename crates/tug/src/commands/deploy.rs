//! `tug pipeline`, `tug release`, `tug promote`, `tug rollback`, `tug
//! approve`, `tug reject`, `tug status`, `tug history`, `tug policy`.

use std::process::ExitCode;

use anyhow::Context;
use tug_api::{Decide, DeployFlags, DeployResult, Deployment, PendingDeployment, Promote, Release, Rollback};
use tug_client::Client;
use tug_core::{EnvName, Pipeline, ServiceName, Version};

use crate::cli::{
    DecideArgs, Output, OverrideArgs, PipelineCommand, PolicyCommand, PromoteArgs, ReleaseArgs, RollbackArgs,
    RolloutCommand,
};
use crate::output::{opt, print, table, time};

fn flags(a: OverrideArgs) -> DeployFlags {
    DeployFlags {
        override_freeze: a.override_freeze,
        reason: a.reason,
    }
}

/// `api 1.4.0 (master@4f2a9c1e)` for a deployment's build.
fn build_line(d: &Deployment) -> String {
    match &d.summary {
        Some(s) => format!(
            "{} {} ({}@{})",
            s.id,
            s.version,
            s.source.branch.as_deref().unwrap_or("-"),
            s.source
                .commit
                .as_deref()
                .map(|c| c.chars().take(12).collect::<String>())
                .unwrap_or_else(|| "-".into())
        ),
        None => d.build.to_string(),
    }
}

fn deployed(out: Output, r: &DeployResult, verb: &str) -> anyhow::Result<ExitCode> {
    print(out, r, |r| match (&r.deployment, &r.pending) {
        (Some(d), _) => {
            let mut s = format!(
                "{verb} {} into {} of {} (deployment {}).",
                build_line(d),
                d.environment,
                d.service,
                d.seq
            );
            if let Some(prev) = &d.replaced {
                s.push_str(&format!("\nIt replaced build {prev}."));
            }
            s
        }
        (None, Some(p)) => pending_line(p),
        (None, None) => r.status.clone(),
    })?;
    Ok(ExitCode::SUCCESS)
}

fn pending_line(p: &PendingDeployment) -> String {
    format!(
        "Build {} waits for approval to go into {} ({} of {} approvals{}). Approvers: tug approve <service> --env {} --build {}",
        p.build,
        p.environment,
        p.approved_by.len(),
        p.need,
        p.expires_at.map(|t| format!(", expires {}", time(&t))).unwrap_or_default(),
        p.environment,
        p.build
    )
}

pub async fn decide(client: &Client, out: Output, a: DecideArgs, approve: bool) -> anyhow::Result<ExitCode> {
    let req = Decide {
        environment: EnvName::parse(&a.env)?,
        build: a.build,
    };
    let d = client.decide(&ServiceName::parse(&a.service)?, &req, approve).await?;
    print(out, &d, |d| match (&d.deployment, d.pending.state.as_str()) {
        (Some(dep), _) => format!(
            "Approved: the last approval needed. Deployed {} into {}.",
            build_line(dep),
            dep.environment
        ),
        (None, "rejected") => format!(
            "Rejected: build {} will not go into {}.",
            d.pending.build, d.pending.environment
        ),
        _ => format!("Approved. {}", pending_line(&d.pending)),
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn pipeline(client: &Client, out: Output, c: PipelineCommand) -> anyhow::Result<ExitCode> {
    match c {
        PipelineCommand::Apply { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // Parse here too, to name the service and to say what is wrong
            // before anything is sent.
            let pipeline =
                Pipeline::parse(&text).with_context(|| format!("{} is not a valid pipeline", file.display()))?;
            let v = client.apply_pipeline(&pipeline.service, &text, None).await?;
            print(out, &v, |v| {
                format!(
                    "Pipeline of {} is at revision {}: {}.",
                    v.service,
                    v.revision,
                    env_chain(&v.pipeline)
                )
            })?;
        }
        PipelineCommand::History { service } => {
            let revisions = client.pipeline_history(&ServiceName::parse(&service)?).await?;
            print(out, &revisions, |revs| {
                let mut t = table(&["REVISION", "CHANGED", "BY", "ENVIRONMENTS"]);
                for r in revs {
                    let envs = Pipeline::parse(&r.spec)
                        .map(|p| env_chain(&p))
                        .unwrap_or_else(|e| e.to_string());
                    t.add_row(vec![
                        r.revision.to_string(),
                        time(&r.changed_at),
                        opt(&r.changed_by),
                        envs,
                    ]);
                }
                t.to_string()
            })?;
        }
        PipelineCommand::Show { service } => {
            let v = client.pipeline(&ServiceName::parse(&service)?).await?;
            print(out, &v, |v| {
                format!(
                    "# revision {} by {} at {}\n{}",
                    v.revision,
                    opt(&v.changed_by),
                    time(&v.changed_at),
                    v.spec.trim_end()
                )
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dev, prod (from dev)`.
fn env_chain(p: &Pipeline) -> String {
    p.environments
        .iter()
        .map(|e| match &e.upstream {
            Some(up) => format!("{} (from {up})", e.name),
            None => e.name.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn release(client: &Client, out: Output, a: ReleaseArgs) -> anyhow::Result<ExitCode> {
    if a.build.is_none() && a.branch.is_none() && a.version.is_none() {
        anyhow::bail!("name the build with --build ID, --branch BRANCH or --version VERSION");
    }
    let req = Release {
        environment: EnvName::parse(&a.env)?,
        build: a.build,
        branch: a.branch,
        version: a.version.as_deref().map(Version::parse).transpose()?,
        flags: flags(a.flags),
    };
    let d = client.release(&ServiceName::parse(&a.service)?, &req).await?;
    deployed(out, &d, "Released")
}

pub async fn promote(client: &Client, out: Output, a: PromoteArgs) -> anyhow::Result<ExitCode> {
    let req = Promote {
        to: EnvName::parse(&a.to)?,
        flags: flags(a.flags),
    };
    let d = client.promote(&ServiceName::parse(&a.service)?, &req).await?;
    deployed(out, &d, "Promoted")
}

pub async fn rollback(client: &Client, out: Output, a: RollbackArgs) -> anyhow::Result<ExitCode> {
    let req = Rollback {
        environment: EnvName::parse(&a.env)?,
        to: a.to,
        flags: flags(a.flags),
    };
    let d = client.rollback(&ServiceName::parse(&a.service)?, &req).await?;
    deployed(out, &d, "Rolled back to")
}

pub async fn status(client: &Client, out: Output, service: &str) -> anyhow::Result<ExitCode> {
    let s = client.status(&ServiceName::parse(service)?).await?;
    print(out, &s, |s| {
        let mut t = table(&[
            "ENV", "VERSION", "BRANCH", "COMMIT", "AUTHOR", "MESSAGE", "DEPLOYED", "BY", "AGENTS", "BUILD",
        ]);
        for e in &s.environments {
            let mut name = e.environment.to_string();
            if e.auto_release_held {
                name.push_str(" (auto-release held)");
            }
            if let Some(r) = e
                .rollout
                .as_ref()
                .filter(|r| r.state == "halted" || r.state == "rolling")
            {
                name.push_str(&format!(" (rollout {})", r.state));
            }
            let a = &e.agents;
            let agents = if a.total == 0 {
                "-".to_string()
            } else {
                format!(
                    "{}/{} on it, {} healthy, {} failed, {} stale",
                    a.on_current, a.total, a.healthy, a.failed, a.stale
                )
            };
            let mut row: Vec<String> = match &e.current {
                None => vec!["-".into(); 7],
                Some(d) => {
                    let src = d.summary.as_ref().map(|s| s.source.clone()).unwrap_or_default();
                    vec![
                        d.summary
                            .as_ref()
                            .map(|s| s.version.to_string())
                            .unwrap_or_else(|| "-".into()),
                        opt(&src.branch),
                        src.commit
                            .as_deref()
                            .map(|c| c.chars().take(12).collect())
                            .unwrap_or_else(|| "-".into()),
                        opt(&src.author),
                        src.message
                            .as_deref()
                            .and_then(|m| m.lines().next())
                            .unwrap_or("-")
                            .chars()
                            .take(40)
                            .collect(),
                        format!("{} ({})", time(&d.deployed_at), d.kind),
                        d.requested_by.clone().unwrap_or_else(|| "auto".into()),
                    ]
                }
            };
            row.insert(0, name);
            row.push(agents);
            row.push(
                e.current
                    .as_ref()
                    .map(|d| d.build.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
            t.add_row(row);
        }
        t.to_string()
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn history(client: &Client, out: Output, service: &str, env: &str, limit: u32) -> anyhow::Result<ExitCode> {
    let h = client
        .history(&ServiceName::parse(service)?, &EnvName::parse(env)?, limit)
        .await?;
    print(out, &h.deployments, |ds| {
        let mut t = table(&["#", "WHEN", "KIND", "BUILD", "BY", "REPLACED", "REASON"]);
        for d in ds {
            t.add_row(vec![
                d.seq.to_string(),
                time(&d.deployed_at),
                d.kind.to_string(),
                build_line(d),
                d.requested_by.clone().unwrap_or_else(|| "auto".into()),
                opt(&d.replaced),
                opt(&d.reason),
            ]);
        }
        t.to_string()
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Reads the pipeline, lets `edit` change one environment's spec, and
/// applies the result as a new revision based on the one read (a concurrent
/// change makes the server refuse rather than lose it).
async fn edit_environment(
    client: &Client,
    service: &str,
    env: &str,
    edit: impl FnOnce(&mut tug_core::pipeline::EnvironmentSpec) -> anyhow::Result<()>,
) -> anyhow::Result<tug_api::PipelineView> {
    let service = ServiceName::parse(service)?;
    let current = client.pipeline(&service).await?;
    let mut spec = current.pipeline.to_spec();
    let known: Vec<String> = spec.environments.iter().map(|e| e.name.clone()).collect();
    let Some(e) = spec.environments.iter_mut().find(|e| e.name == env) else {
        anyhow::bail!(
            "service {service} has no environment {env}; its environments are {}",
            known.join(", ")
        );
    };
    edit(e)?;
    let text = toml::to_string(&spec)?;
    // Validate here too so the message names the problem before a request.
    Pipeline::parse(&text)?;
    Ok(client.apply_pipeline(&service, &text, Some(current.revision)).await?)
}

pub async fn policy(client: &Client, out: Output, c: PolicyCommand) -> anyhow::Result<ExitCode> {
    match c {
        PolicyCommand::List { service } => {
            let v = client.pipeline(&ServiceName::parse(&service)?).await?;
            let mut rows: Vec<(String, String, String)> = Vec::new();
            for e in &v.pipeline.environments {
                let env = e.name.to_string();
                if let Some(up) = &e.upstream {
                    rows.push((env.clone(), "upstream".into(), up.to_string()));
                }
                if let Some(b) = &e.auto_release {
                    rows.push((env.clone(), "auto-release".into(), b.clone()));
                }
                if let Some(r) = &e.branch_restriction {
                    rows.push((env.clone(), "branch-restriction".into(), r.to_string()));
                }
                if let Some(s) = e.soak {
                    rows.push((env.clone(), "soak".into(), tug_core::format_duration(s)));
                }
                if e.approvals > 0 {
                    rows.push((env.clone(), "approvals".into(), e.approvals.to_string()));
                }
                if let Some(t) = e.approval_timeout {
                    rows.push((env.clone(), "approval-timeout".into(), tug_core::format_duration(t)));
                }
                for f in &e.freeze {
                    rows.push((env.clone(), "freeze".into(), f.to_string()));
                }
                if e.private {
                    rows.push((env.clone(), "private".into(), "true".into()));
                }
                if let Some(share) = e.soak_healthy {
                    rows.push((env.clone(), "soak-healthy".into(), format!("{share}%")));
                }
                if let Some(r) = &e.rollout {
                    let mut text = r.strategy.to_string();
                    text.push_str(&format!("; halt after {} failure(s)", r.halt_after_failures));
                    if r.auto_rollback {
                        text.push_str(", then roll back");
                    }
                    rows.push((env.clone(), "rollout".into(), text));
                }
                for w in &e.maintenance {
                    rows.push((env.clone(), "maintenance".into(), w.to_string()));
                }
                if let Some(c) = &e.compatible_with {
                    rows.push((
                        env.clone(),
                        "compatible-with".into(),
                        format!("{} (at most {} major version(s) ahead)", c.service, c.max_major_skew),
                    ));
                }
            }
            let listed: Vec<serde_json::Value> = rows
                .iter()
                .map(|(e, p, v)| serde_json::json!({"environment": e, "policy": p, "value": v}))
                .collect();
            print(out, &listed, |_| {
                let mut t = table(&["ENV", "POLICY", "VALUE"]);
                for (e, p, v) in &rows {
                    t.add_row(vec![e.clone(), p.clone(), v.clone()]);
                }
                format!(
                    "{t}\npipeline revision {} (server-wide rules apply on top and cannot be changed here)",
                    v.revision
                )
            })?;
        }
        PolicyCommand::Apply(a) => {
            let a = *a;
            let v = edit_environment(client, &a.service, &a.env, |e| {
                if let Some(b) = a.auto_release {
                    e.auto_release = Some(tug_core::pipeline::AutoReleaseSpec { branch: b });
                }
                if let Some(r) = a.branch_restriction {
                    e.branch_restriction = Some(r);
                }
                if let Some(s) = a.soak {
                    e.soak = Some(s);
                }
                if let Some(n) = a.approvals {
                    e.approvals = n;
                }
                if let Some(t) = a.approval_timeout {
                    e.approval_timeout = Some(t);
                }
                if let Some(f) = a.freeze {
                    e.freeze.push(tug_core::pipeline::FreezeSpec {
                        weekly: Some(f),
                        tz: a.tz.clone(),
                        ..Default::default()
                    });
                }
                if let Some(m) = a.maintenance {
                    e.maintenance.push(tug_core::pipeline::FreezeSpec {
                        weekly: Some(m),
                        tz: a.tz.clone(),
                        ..Default::default()
                    });
                }
                if let Some(s) = a.soak_healthy {
                    e.soak_healthy = Some(s);
                }
                if let (Some(service), Some(max_major_skew)) = (a.compatible_with, a.max_major_skew) {
                    e.compatible_with = Some(tug_core::pipeline::CompatibilitySpec {
                        service,
                        max_major_skew,
                    });
                }
                if let Some(p) = a.private {
                    e.private = p;
                }
                Ok(())
            })
            .await?;
            print(out, &v, |v| {
                format!("Policies of {} applied: pipeline revision {}.", a.env, v.revision)
            })?;
        }
        PolicyCommand::Delete { service, env, policy } => {
            let v = edit_environment(client, &service, &env, |e| {
                let had = match policy.as_str() {
                    "auto-release" => e.auto_release.take().is_some(),
                    "branch-restriction" => e.branch_restriction.take().is_some(),
                    "soak" => e.soak.take().is_some(),
                    "approvals" => std::mem::take(&mut e.approvals) > 0,
                    "approval-timeout" => e.approval_timeout.take().is_some(),
                    "freeze" => !std::mem::take(&mut e.freeze).is_empty(),
                    "private" => std::mem::take(&mut e.private),
                    "soak-healthy" => e.soak_healthy.take().is_some(),
                    "rollout" => e.rollout.take().is_some(),
                    "maintenance" => !std::mem::take(&mut e.maintenance).is_empty(),
                    "compatible-with" => e.compatible_with.take().is_some(),
                    other => anyhow::bail!(
                        "unknown policy {other:?}: use auto-release, branch-restriction, soak, soak-healthy, approvals, approval-timeout, freeze, private, rollout, maintenance or compatible-with"
                    ),
                };
                if !had {
                    anyhow::bail!("{env} has no {policy} policy; see tug policy list {service}");
                }
                Ok(())
            })
            .await?;
            print(out, &v, |v| {
                format!("Policy {policy} removed from {env}: pipeline revision {}.", v.revision)
            })?;
        }
        PolicyCommand::Resume { service, env } => {
            let env = EnvName::parse(&env)?;
            client.resume_auto_release(&ServiceName::parse(&service)?, &env).await?;
            let answer = serde_json::json!({"service": service, "environment": env, "auto_release_held": false});
            print(out, &answer, |_| {
                format!("Auto-release into {env} of {service} resumed.")
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn version(client: &Client, out: Output, c: crate::cli::VersionCommand) -> anyhow::Result<ExitCode> {
    let crate::cli::VersionCommand::Next {
        service,
        cloud,
        major,
        minor,
        patch,
        commit,
    } = c;
    let bump = match (cloud, major, minor, patch) {
        (true, ..) => "cloud",
        (_, true, ..) => "major",
        (_, _, true, _) => "minor",
        (_, _, _, true) => "patch",
        _ => anyhow::bail!("say which version: --cloud --commit SHA, --major, --minor or --patch"),
    };
    let next = client
        .next_version(&ServiceName::parse(&service)?, bump, commit.as_deref())
        .await?;
    print(out, &next, |n| n.tag.clone())?;
    Ok(ExitCode::SUCCESS)
}

pub async fn diff(client: &Client, out: Output, service: &str, from: &str, to: &str) -> anyhow::Result<ExitCode> {
    let d = client.diff(&ServiceName::parse(service)?, from, to).await?;
    print(out, &d, |d| {
        let side = |label: &str, b: &tug_api::BuildSummary| {
            format!(
                "{label:<5} {} {} ({}@{})",
                b.id,
                b.version,
                b.source.branch.as_deref().unwrap_or("-"),
                b.source.commit.as_deref().unwrap_or("-")
            )
        };
        let mut s = format!("{}\n{}\n", side("from", &d.from), side("to", &d.to));
        if let Some(url) = &d.source.compare_url {
            s.push_str(&format!("source {url}\n"));
        } else if d.source.old_commit != d.source.new_commit {
            s.push_str(&format!(
                "source {}..{}\n",
                d.source.old_commit.as_deref().unwrap_or("-"),
                d.source.new_commit.as_deref().unwrap_or("-")
            ));
        }
        if d.changes.is_empty() {
            s.push_str(&format!("No artifact changed ({} the same).", d.unchanged));
            return s;
        }
        let mut t = table(&["CHANGE", "ARTIFACT", "OLD DIGEST", "NEW DIGEST", "SIZE"]);
        for c in &d.changes {
            let size = match (c.old_size, c.new_size) {
                (Some(o), Some(n)) => format!("{} -> {}", crate::output::bytes(o), crate::output::bytes(n)),
                (None, Some(n)) => crate::output::bytes(n),
                (Some(o), None) => crate::output::bytes(o),
                (None, None) => "-".into(),
            };
            t.add_row(vec![
                format!("{:?}", c.change).to_lowercase(),
                c.name.to_string(),
                c.old_digest.map(|d| d.short()).unwrap_or_else(|| "-".into()),
                c.new_digest.map(|d| d.short()).unwrap_or_else(|| "-".into()),
                size,
            ]);
        }
        s.push_str(&format!("{t}\n{} changed, {} the same.", d.changes.len(), d.unchanged));
        s
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn watch(
    client: &Client,
    out: Output,
    service: Option<String>,
    since: Option<i64>,
    count: Option<usize>,
) -> anyhow::Result<ExitCode> {
    use futures::StreamExt;
    if let Some(s) = &service {
        ServiceName::parse(s)?;
    }
    let events = client.events(&tug_api::EventQuery { service, since }).await?;
    let mut events = std::pin::pin!(events);
    let mut seen = 0;
    while let Some(e) = events.next().await {
        let e = e?;
        match out {
            Output::Json => println!("{}", serde_json::to_string(&e)?),
            Output::Table => {
                let mut details: Vec<String> = Vec::new();
                if let Some(obj) = e.payload.as_object() {
                    for key in ["environment", "build", "version", "kind", "state", "revision"] {
                        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
                            details.push(format!(
                                "{key}={}",
                                v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
                            ));
                        }
                    }
                }
                println!(
                    "{} {:<20} {:<10} {:<10} {}",
                    time(&e.at),
                    e.kind,
                    e.service.as_ref().map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                    e.actor.as_deref().unwrap_or("auto"),
                    details.join(" ")
                );
            }
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn agents(
    client: &Client,
    out: Output,
    service: Option<String>,
    env: Option<String>,
) -> anyhow::Result<ExitCode> {
    let agents = client.agents(service.as_deref(), env.as_deref()).await?;
    print(out, &agents, |agents| {
        let mut t = table(&[
            "SERVICE",
            "ENV",
            "HOST",
            "AGENT",
            "PLATFORM",
            "BUILD",
            "STATE",
            "LAST SEEN",
        ]);
        for a in agents {
            let r = &a.report;
            let mut state = r.state.to_string();
            if let Some(why) = &r.waiting {
                state.push_str(&format!(" ({})", why.chars().take(60).collect::<String>()));
            }
            if let Some(e) = &r.error {
                state.push_str(&format!(": {}", e.chars().take(60).collect::<String>()));
            }
            if let Some(exit) = &r.exit {
                state.push_str(&format!("; --exec {exit} at {}", time(&exit.at)));
            }
            t.add_row(vec![
                r.service.to_string(),
                r.environment.to_string(),
                r.hostname.clone(),
                r.agent_id.chars().take(13).collect(),
                r.platform.to_string(),
                opt(&r.build),
                state,
                format!("{}{}", time(&a.last_seen), if a.stale { " (stale)" } else { "" }),
            ]);
        }
        format!("{t}\n{} agents", agents.len())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn rollout(client: &Client, out: Output, c: RolloutCommand) -> anyhow::Result<ExitCode> {
    let r = match c {
        RolloutCommand::Status { service, env } => {
            client
                .rollout(&ServiceName::parse(&service)?, &EnvName::parse(&env)?)
                .await?
        }
        RolloutCommand::Halt { service, env, reason } => {
            client
                .halt_rollout(&ServiceName::parse(&service)?, &EnvName::parse(&env)?, &reason)
                .await?
        }
        RolloutCommand::Resume { service, env } => {
            client
                .resume_rollout(&ServiceName::parse(&service)?, &EnvName::parse(&env)?)
                .await?
        }
    };
    print(out, &r, |r| {
        let mut lines = vec![format!(
            "{} of {}: build {}, rollout {}",
            r.environment,
            r.service,
            opt(&r.build),
            r.state
        )];
        if let Some(s) = &r.strategy {
            let mut halt = r
                .halt_after_failures
                .map(|n| format!("; halts after {n} failure(s)"))
                .unwrap_or_default();
            if r.auto_rollback {
                halt.push_str(" and rolls back");
            }
            lines.push(format!("strategy: {s}{halt}"));
        }
        lines.push(format!(
            "agents: {} live, {} updated, {} in flight, {} granted, {} failed ({} counting towards a halt)",
            r.agents, r.updated, r.in_flight, r.granted, r.failed, r.failures
        ));
        if !r.in_maintenance {
            lines.push("outside maintenance windows: agents wait unless the build is critical".to_string());
        }
        if let Some(reason) = &r.reason {
            lines.push(format!(
                "{}: {reason}{}",
                if r.state == "halted" { "halted" } else { "last change" },
                r.changed_by.as_ref().map(|b| format!(" (by {b})")).unwrap_or_default()
            ));
        }
        lines.join("\n")
    })?;
    Ok(ExitCode::SUCCESS)
}
