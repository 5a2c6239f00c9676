//! `tug pipeline`, `tug release`, `tug promote`, `tug rollback`, `tug
//! approve`, `tug reject`, `tug status`, `tug history`, `tug policy`.

use std::process::ExitCode;

use anyhow::Context;
use tug_api::{Decide, DeployFlags, DeployResult, Deployment, PendingDeployment, Promote, Release, Rollback};
use tug_client::Client;
use tug_core::pipeline::{policies, EnvironmentSpec, POLICIES};
use tug_core::states::{Decision, RequestState, RolloutPhase};
use tug_core::{EnvName, Pipeline, ServiceName, Version};

use crate::cli::{
    DecideArgs, Output, OverrideArgs, PipelineCommand, PolicyCommand, PromoteArgs, ReleaseArgs, RollbackArgs,
    RolloutCommand,
};
use crate::output::{self, col, keep, opt, plural, print, short, text, time, Table};

fn flags(a: OverrideArgs) -> DeployFlags {
    DeployFlags {
        override_freeze: a.override_freeze,
        reason: a.reason,
    }
}

/// What the CLI says of a build embargoed from the token asking.
const EMBARGOED: &str = "an embargoed build";

/// A deployment's build for a table cell: its short id, or "an embargoed
/// build" when it is embargoed from the token.
fn build_cell(d: &Deployment) -> String {
    match (&d.build, d.embargoed) {
        (_, true) => EMBARGOED.to_string(),
        (Some(b), false) => short(d.summary.as_ref().map_or("", |s| s.short_id.as_str()), b),
        (None, false) => "-".into(),
    }
}

/// `0190c3f2-6a2 1.4.0 (master@4f2a9c1e)` for a deployment's build.
fn build_line(d: &Deployment) -> String {
    if d.embargoed {
        return EMBARGOED.to_string();
    }
    match &d.summary {
        Some(s) => format!(
            "{} {} ({}@{})",
            short(&s.short_id, &s.id),
            s.version,
            s.source.branch.as_deref().unwrap_or("-"),
            s.source
                .commit
                .as_deref()
                .map(|c| c.chars().take(12).collect::<String>())
                .unwrap_or_else(|| "-".into())
        ),
        None => opt(&d.build),
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
            if d.replaced.is_some() || d.replaced_embargoed {
                s.push_str(&format!("\nIt replaced {}.", replaced(d)));
            }
            s
        }
        (None, Some(p)) => pending_line(p),
        (None, None) => r.status.to_string(),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `build ID`, or "an embargoed build", for what a deployment replaced.
fn replaced(d: &Deployment) -> String {
    match (&d.replaced, d.replaced_embargoed) {
        (Some(_), false) => format!("build {}", replaced_cell(d)),
        _ => replaced_cell(d),
    }
}

/// What a deployment replaced, for a table cell: a short id, "an
/// embargoed build", or `-`.
fn replaced_cell(d: &Deployment) -> String {
    match (&d.replaced, d.replaced_embargoed) {
        (_, true) => EMBARGOED.to_string(),
        (Some(b), false) => short(d.replaced_short_id.as_deref().unwrap_or_default(), b),
        (None, false) => "-".into(),
    }
}

fn pending_line(p: &PendingDeployment) -> String {
    let build = short(&p.build_short_id, &p.build);
    format!(
        "Build {build} waits for approval to go into {} ({} of {}{}). Approvers: tug approve <service> --env {} --build {build}",
        p.environment,
        p.approved_by.len(),
        plural(p.need, "approval"),
        p.expires_at.map(|t| format!(", expires {}", time(&t))).unwrap_or_default(),
        p.environment,
    )
}

pub async fn decide(client: &Client, out: Output, a: DecideArgs, decision: Decision) -> anyhow::Result<ExitCode> {
    let req = Decide {
        environment: EnvName::parse(&a.env)?,
        build: a.build,
    };
    let d = client.decide(&ServiceName::parse(&a.service)?, &req, decision).await?;
    print(out, &d, |d| match (&d.deployment, d.pending.state) {
        (Some(dep), _) => format!(
            "Approved: the last approval needed. Deployed {} into {}.",
            build_line(dep),
            dep.environment
        ),
        (None, RequestState::Rejected) => format!(
            "Rejected: build {} will not go into {}.",
            short(&d.pending.build_short_id, &d.pending.build),
            d.pending.environment
        ),
        (None, RequestState::Deployed) => format!(
            "Approved. Another approval completed the request at the same moment: build {} is deployed into {}.",
            short(&d.pending.build_short_id, &d.pending.build),
            d.pending.environment
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
            if let Some(twice) = tug_core::pipeline_changes::duplicate_window(&pipeline) {
                anyhow::bail!("{} is not a valid pipeline: {twice}", file.display());
            }
            let v = client.apply_pipeline(&pipeline.service, &text, None).await?;
            print(out, &v, |v| {
                if v.changed == Some(false) {
                    format!(
                        "Pipeline of {} unchanged: it is already exactly this (revision {}).",
                        v.service, v.revision
                    )
                } else {
                    format!(
                        "Pipeline of {} is at revision {}: {}.",
                        v.service,
                        v.revision,
                        env_chain(&v.pipeline)
                    )
                }
            })?;
        }
        PipelineCommand::History { service } => {
            let revisions = client.pipeline_history(&ServiceName::parse(&service)?).await?;
            print(out, &revisions, |revs| {
                let mut t = Table::new(&[keep("REVISION"), col("APPLIED", 2), col("BY", 1), keep("CHANGES")]);
                for r in revs {
                    let changes = if r.changes.is_empty() {
                        "(no change)".to_string()
                    } else {
                        r.changes.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("\n")
                    };
                    t.row(vec![
                        r.revision.to_string(),
                        time(&r.changed_at),
                        opt(&r.changed_by),
                        changes,
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
        let mut t = Table::new(&[
            keep("ENV"),
            keep("BUILD"),
            col("VERSION", 1),
            col("BRANCH", 4),
            col("DEPLOYED", 2),
            col("KIND", 5),
            col("BY", 6),
            col("AGENTS", 3),
            col("COMMIT", 7),
            col("AUTHOR", 8),
            text("MESSAGE", 9),
        ]);
        // What the table cannot say in a cell: one line per remark, below it.
        let mut notes: Vec<String> = Vec::new();
        for e in &s.environments {
            let env = &e.environment;
            if e.auto_release_held {
                notes.push(format!(
                    "{env} (auto-release held): a manual release holds it; tug policy resume {} --env {env}",
                    s.service
                ));
            }
            if let Some(r) = e
                .rollout
                .as_ref()
                .filter(|r| matches!(r.state, RolloutPhase::Halted | RolloutPhase::Rolling))
            {
                let why = r.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
                notes.push(format!("{env} (rollout {}){why}", r.state));
            }
            if let Some(g) = &e.gate {
                notes.push(gate_line(env, g));
            }
            for g in e.current.iter().flat_map(|d| &d.deliveries) {
                notes.push(format!(
                    "{env} ({}): {}",
                    g.target.as_str().replace('_', " "),
                    delivery_text(g)
                ));
            }
            let summary = e.current.as_ref().and_then(|d| d.summary.as_ref());
            if let Some(b) = summary.filter(|b| b.yanked) {
                notes.push(format!(
                    "{env} (yanked build running): {} was yanked; release or roll back to replace it",
                    short(&b.short_id, &b.id)
                ));
            }
            let a = &e.agents;
            let agents = if a.total == 0 {
                "-".to_string()
            } else {
                let mut text = format!("{}/{} on it, {} healthy", a.on_current, a.total, a.healthy);
                if a.failed > 0 {
                    text.push_str(&format!(", {} failed", a.failed));
                }
                if a.stale > 0 {
                    text.push_str(&format!(", {} stale", a.stale));
                }
                text
            };
            let row = match &e.current {
                None => {
                    let mut row = vec![env.to_string(), "-".into()];
                    row.extend(std::iter::repeat_n("-".to_string(), 5));
                    row.push(agents);
                    row.extend(std::iter::repeat_n("-".to_string(), 3));
                    row
                }
                Some(d) if d.embargoed => {
                    let mut row = vec![env.to_string(), EMBARGOED.to_string(), "-".into(), "-".into()];
                    row.push(time(&d.deployed_at));
                    row.push(d.kind.to_string());
                    row.push(d.requested_by.clone().unwrap_or_else(|| "auto".into()));
                    row.push(agents);
                    row.extend(std::iter::repeat_n("-".to_string(), 3));
                    row
                }
                Some(d) => {
                    let src = summary.map(|s| s.source.clone()).unwrap_or_default();
                    let version = summary.map_or_else(
                        || "-".to_string(),
                        |b| format!("{}{}", b.version, if b.yanked { " (yanked)" } else { "" }),
                    );
                    vec![
                        env.to_string(),
                        build_cell(d),
                        version,
                        opt(&src.branch),
                        time(&d.deployed_at),
                        d.kind.to_string(),
                        d.requested_by.clone().unwrap_or_else(|| "auto".into()),
                        agents,
                        commit(src.commit.as_deref()),
                        opt(&src.author),
                        src.message
                            .as_deref()
                            .and_then(|m| m.lines().next())
                            .unwrap_or("-")
                            .to_string(),
                    ]
                }
            };
            t.row(row);
        }
        let mut text = t.to_string();
        for n in notes {
            text.push('\n');
            text.push_str(&n);
        }
        text.push_str(&approval_lines(s));
        text
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Where one write of a deployment into a git repository stands.
fn delivery_text(g: &tug_api::GitDelivery) -> String {
    use tug_core::pipeline::gitops::DeliveryState;
    match g.state {
        DeliveryState::Pushed => format!("pushed {} to {}", commit(g.commit.as_deref()), g.repo),
        DeliveryState::Pending => format!("pending for {}", g.repo),
        DeliveryState::Skipped => format!("skipped: {}", g.error.as_deref().unwrap_or("-")),
        DeliveryState::Failed => format!(
            "failed ({} {}) for {}: {}{}",
            g.attempts,
            if g.attempts == 1 { "attempt" } else { "attempts" },
            g.repo,
            g.error.as_deref().unwrap_or("-"),
            g.next_attempt
                .map(|t| format!("; next try {}", time(&t)))
                .unwrap_or_default()
        ),
    }
}

/// A commit for tables: its first 12 characters.
fn commit(c: Option<&str>) -> String {
    c.map(|c| c.chars().take(12).collect()).unwrap_or_else(|| "-".into())
}

/// An environment's metric gate in one line: since when it has held and
/// the last value, or why it blocks promotions out of the environment.
fn gate_line(env: &tug_core::EnvName, g: &tug_api::Gate) -> String {
    let value = g.last_value.map(|v| format!(", last value {v}")).unwrap_or_default();
    match (&g.within_since, &g.blocked) {
        (Some(since), _) => {
            let held = (chrono::Utc::now() - *since).to_std().unwrap_or_default();
            let state = if held.as_secs() >= g.for_secs {
                "passes".to_string()
            } else {
                format!(
                    "holds for {} of {}s",
                    tug_core::format_duration(std::time::Duration::from_secs(held.as_secs())),
                    g.for_secs
                )
            };
            format!(
                "{env} (metric gate {state}): within bounds since {}{value}; {}",
                time(since),
                g.verify
            )
        }
        (None, why) => format!(
            "{env} (metric gate blocks): {}{value}; {}",
            why.as_deref().unwrap_or("not within bounds"),
            g.verify
        ),
    }
}

/// Under the status table: each environment's requests waiting for
/// approval, and those that expired since its current deployment.
fn approval_lines(s: &tug_api::Status) -> String {
    let now = chrono::Utc::now();
    let mut lines = Vec::new();
    for e in &s.environments {
        for p in &e.pending {
            let approved = if p.approved_by.is_empty() {
                String::new()
            } else {
                format!(" ({})", p.approved_by.join(", "))
            };
            let expires = p
                .expires_at
                .map(|t| {
                    let left = (t - now).to_std().unwrap_or_default();
                    format!(", expires in {}", tug_core::format_duration(left))
                })
                .unwrap_or_default();
            lines.push(format!(
                "{}: build {} waits for approval: {} of {}{approved}, requested by {}{expires}",
                e.environment,
                short(&p.build_short_id, &p.build),
                p.approved_by.len(),
                p.need,
                p.requested_by
            ));
        }
        for p in &e.expired {
            lines.push(format!(
                "{}: the request to deploy build {} expired{} with {} of {} {} (requested by {})",
                e.environment,
                short(&p.build_short_id, &p.build),
                p.expires_at.map(|t| format!(" at {}", time(&t))).unwrap_or_default(),
                p.approved_by.len(),
                p.need,
                if p.need == 1 { "approval" } else { "approvals" },
                p.requested_by
            ));
        }
    }
    if lines.is_empty() {
        String::new()
    } else {
        format!("\n{}", lines.join("\n"))
    }
}

pub async fn history(client: &Client, out: Output, service: &str, env: &str, limit: u32) -> anyhow::Result<ExitCode> {
    let h = client
        .history(&ServiceName::parse(service)?, &EnvName::parse(env)?, limit)
        .await?;
    print(out, &h.deployments, |ds| {
        let mut t = Table::new(&[
            keep("#"),
            col("WHEN", 3),
            col("KIND", 2),
            keep("BUILD"),
            col("VERSION", 1),
            col("BRANCH", 6),
            col("COMMIT", 8),
            col("BY", 5),
            col("APPROVED BY", 4),
            col("REPLACED", 7),
            text("REASON", 9),
            text("DELIVERED", 10),
        ]);
        for d in ds {
            let summary = d.summary.as_ref();
            let src = summary.map(|s| s.source.clone()).unwrap_or_default();
            t.row(vec![
                d.seq.to_string(),
                time(&d.deployed_at),
                d.kind.to_string(),
                build_cell(d),
                summary.map_or_else(|| "-".to_string(), |b| b.version.to_string()),
                opt(&src.branch),
                commit(src.commit.as_deref()),
                d.requested_by.clone().unwrap_or_else(|| "auto".into()),
                approvers(d),
                replaced_cell(d),
                opt(&d.reason),
                if d.deliveries.is_empty() {
                    "-".to_string()
                } else {
                    d.deliveries
                        .iter()
                        .map(|g| format!("{}: {}", g.target.as_str().replace('_', " "), delivery_text(g)))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            ]);
        }
        t.to_string()
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Who approved a deployment, `-` when nobody had to.
fn approvers(d: &Deployment) -> String {
    if d.approved_by.is_empty() {
        "-".into()
    } else {
        d.approved_by.join(", ")
    }
}

/// Reads the pipeline, lets `edit` change one environment's spec, and
/// applies the result as a new revision based on the one read (a concurrent
/// change makes the server refuse rather than lose it).
async fn edit_environment(
    client: &Client,
    service: &str,
    env: &str,
    edit: impl FnOnce(&mut EnvironmentSpec) -> anyhow::Result<()>,
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
    // Validate here too so the message names the problem before a request.
    let edited = Pipeline::from_spec(&spec)?;
    if let Some(twice) = tug_core::pipeline_changes::duplicate_window(&edited) {
        anyhow::bail!("{twice}");
    }
    // A revision that changes nothing is refused rather than stored: it
    // would only add a row to the history that says nothing.
    let nothing = || {
        anyhow::anyhow!(
            "nothing to change: {env} of {service} already has these policies; the pipeline stays at revision {}",
            current.revision
        )
    };
    if edited == current.pipeline {
        return Err(nothing());
    }
    let applied = client
        .apply_pipeline(&service, &edited.to_toml(), Some(current.revision))
        .await?;
    if applied.changed == Some(false) {
        return Err(nothing());
    }
    Ok(applied)
}

pub async fn policy(client: &Client, out: Output, c: PolicyCommand) -> anyhow::Result<ExitCode> {
    match c {
        PolicyCommand::List { service } => {
            let v = client.pipeline(&ServiceName::parse(&service)?).await?;
            let mut rows: Vec<serde_json::Value> = Vec::new();
            for e in &v.pipeline.environments {
                for p in policies::listing(e) {
                    rows.push(serde_json::json!({
                        "environment": e.name, "policy": p.policy, "value": p.value, "scope": "pipeline",
                    }));
                }
            }
            for r in &v.server_rules {
                rows.push(serde_json::json!({
                    "environment": r.environment,
                    "policy": "branch-restriction",
                    "value": r.branch_restriction,
                    "scope": "server",
                }));
            }
            print(out, &rows, |rows| {
                let mut t = Table::new(&[keep("ENV"), keep("POLICY"), text("VALUE", 1), col("SET BY", 2)]);
                for r in rows {
                    let field = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                    let set_by = if field("scope") == "server" {
                        "server (cannot be changed here)".to_string()
                    } else {
                        format!("pipeline revision {}", v.revision)
                    };
                    t.row(vec![field("environment"), field("policy"), field("value"), set_by]);
                }
                let mut text = if t.is_empty() {
                    format!("No policies: {} only orders its environments.", v.service)
                } else {
                    t.to_string()
                };
                text.push_str(&format!("\npipeline revision {}", v.revision));
                if v.server_rules.is_empty() {
                    text.push_str("; no server-wide rule applies");
                } else {
                    text.push_str("; server-wide rules apply on top and no pipeline can change them");
                }
                text
            })?;
        }
        PolicyCommand::Apply(a) => {
            let flags = &a.policies.0;
            if !flags.sets_a_policy() {
                anyhow::bail!("name at least one policy to set, e.g. --approvals 2 (see tug policy apply --help)");
            }
            let v = edit_environment(client, &a.service, &a.env, |e| Ok(policies::apply_flags(e, flags)?)).await?;
            print(out, &v, |v| {
                format!("Policies of {} applied: pipeline revision {}.", a.env, v.revision)
            })?;
        }
        PolicyCommand::Delete { service, env, policy } => {
            let Some(definition) = policies::policy(&policy) else {
                let names: Vec<&str> = POLICIES.iter().map(|p| p.name()).collect();
                anyhow::bail!("unknown policy {policy:?}: use one of {}", names.join(", "));
            };
            let v = edit_environment(client, &service, &env, |e| {
                if !definition.delete(e) {
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
            let resumed = client.resume_auto_release(&ServiceName::parse(&service)?, &env).await?;
            print(out, &resumed, |r| {
                let caught_up = match (&r.result, &r.refused) {
                    (
                        Some(DeployResult {
                            deployment: Some(d), ..
                        }),
                        _,
                    ) => {
                        format!("\nReleased {} into {env} (deployment {}).", build_line(d), d.seq)
                    }
                    (Some(DeployResult { pending: Some(p), .. }), _) => format!("\n{}", pending_line(p)),
                    (_, Some(e)) => format!(
                        "\nThe newest build cannot go in yet ({}); auto-release tries again periodically.",
                        e.message
                    ),
                    _ => format!("\n{env} already runs the newest build auto-release may deploy."),
                };
                format!("Auto-release into {env} of {service} resumed.{caught_up}")
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
        let side = |label: &str, b: Option<&tug_api::BuildSummary>| match b {
            Some(b) => format!(
                "{label:<5} {} {} ({}@{})",
                short(&b.short_id, &b.id),
                b.version,
                b.source.branch.as_deref().unwrap_or("-"),
                b.source.commit.as_deref().unwrap_or("-")
            ),
            None => format!("{label:<5} {EMBARGOED}"),
        };
        let mut s = format!("{}\n{}\n", side("from", d.from.as_ref()), side("to", d.to.as_ref()));
        if d.from_embargoed || d.to_embargoed {
            s.push_str("Nothing is compared with an embargoed build.");
            return s;
        }
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
        let mut t = Table::new(&[
            keep("CHANGE"),
            keep("ARTIFACT"),
            col("OLD DIGEST", 2),
            col("NEW DIGEST", 3),
            col("SIZE", 1),
        ]);
        for c in &d.changes {
            let size = match (c.old_size, c.new_size) {
                (Some(o), Some(n)) => format!("{} -> {}", crate::output::bytes(o), crate::output::bytes(n)),
                (None, Some(n)) => crate::output::bytes(n),
                (Some(o), None) => crate::output::bytes(o),
                (None, None) => "-".into(),
            };
            t.row(vec![
                format!("{:?}", c.change).to_lowercase(),
                c.name.to_string(),
                c.old_digest.map(|d| d.short()).unwrap_or_else(|| "-".into()),
                c.new_digest.map(|d| d.short()).unwrap_or_else(|| "-".into()),
                size,
            ]);
        }
        s.push_str(&format!("{t}\n"));
        for c in &d.changes {
            if c.old_uri.is_some() || c.new_uri.is_some() {
                let shown = |u: &Option<tug_core::ReferenceUri>| u.as_ref().map_or("-".into(), |u| u.to_string());
                s.push_str(&format!("{}: {} -> {}\n", c.name, shown(&c.old_uri), shown(&c.new_uri)));
            }
        }
        s.push_str(&format!("{} changed, {} the same.", d.changes.len(), d.unchanged));
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
            Output::Json => output::write(serde_json::to_string(&e)?)?,
            Output::Table => {
                output::write(format!(
                    "{} {:<20} {:<10} {:<10} {}",
                    time(&e.at),
                    e.kind(),
                    e.service.as_ref().map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                    e.actor.as_ref().map_or("auto".to_string(), |a| a.name.to_string()),
                    event_details(&e).join(" ")
                ))?;
            }
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `tug watch` shows of an event after its kind, service and actor.
fn event_details(e: &tug_api::Event) -> Vec<String> {
    use tug_api::Change;
    let mut details: Vec<String> = Vec::new();
    if e.embargoed {
        details.push(EMBARGOED.to_string());
    }
    if let Some(env) = e.change.environment() {
        details.push(format!("environment={env}"));
    }
    if let Some(b) = e.change.build() {
        details.push(format!("build={} version={}", b.id, b.version));
    }
    match &e.change {
        Change::Deployment(d) => details.push(format!("kind={} seq={}", d.deployment_kind, d.seq)),
        Change::ApprovalRequested(a)
        | Change::ApprovalApproved(a)
        | Change::ApprovalRejected(a)
        | Change::ApprovalExpired(a)
        | Change::ApprovalSuperseded(a) => details.push(format!("kind={}", a.deployment_kind)),
        Change::RolloutProgress { agent, .. } => details.push(format!("agent={} state={}", agent.id, agent.state)),
        Change::PipelineApplied { revision } => details.push(format!("revision={revision}")),
        Change::TokenCreated { token } | Change::TokenRevoked { token } => {
            details.push(format!("token={} role={}", token.name, token.role))
        }
        _ => {}
    }
    details
}

pub async fn agents(
    client: &Client,
    out: Output,
    service: Option<String>,
    env: Option<String>,
) -> anyhow::Result<ExitCode> {
    let agents = client.agents(service.as_deref(), env.as_deref()).await?;
    print(out, &agents, |agents| {
        let mut t = Table::new(&[
            col("SERVICE", 3),
            col("ENV", 2),
            keep("HOST"),
            keep("AGENT"),
            col("PLATFORM", 4),
            col("BUILD", 1),
            text("STATE", 5),
            col("LAST SEEN", 6),
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
            t.row(vec![
                r.service.to_string(),
                r.environment.to_string(),
                r.hostname.clone(),
                short(&a.short_id, &r.agent_id),
                r.platform.to_string(),
                match (&r.build, a.embargoed) {
                    (_, true) => EMBARGOED.to_string(),
                    (Some(b), false) => short(a.build_short_id.as_deref().unwrap_or_default(), b),
                    (None, false) => "-".to_string(),
                },
                state,
                format!("{}{}", time(&a.last_seen), if a.stale { " (stale)" } else { "" }),
            ]);
        }
        format!("{t}\n{}", plural(agents.len() as u64, "agent"))
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
            match (&r.build, r.embargoed) {
                (_, true) => EMBARGOED.to_string(),
                (build, false) => opt(build),
            },
            r.state
        )];
        if let Some(s) = &r.strategy {
            let mut halt = r
                .halt_after_failures
                .map(|n| format!("; halts after {}", plural(n, "failure")))
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
                if r.state == RolloutPhase::Halted {
                    "halted"
                } else {
                    "last change"
                },
                r.changed_by.as_ref().map(|b| format!(" (by {b})")).unwrap_or_default()
            ));
        }
        lines.join("\n")
    })?;
    Ok(ExitCode::SUCCESS)
}
