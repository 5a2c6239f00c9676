//! `tug build create|seal|show|list`.

use std::process::ExitCode;

use anyhow::{bail, Context};
use tug_api::{Build, BuildQuery, CreateBuild};
use tug_client::Client;
use tug_core::{ArtifactName, BuildSource, CiRun, Digest, ServiceName, Version};

use crate::cli::{BuildCommand, BuildMeta, Output};
use crate::output::{self, col, keep, opt, plural, print, short, text, time, Table};

pub async fn run(client: &Client, out: Output, c: BuildCommand) -> anyhow::Result<ExitCode> {
    match c {
        BuildCommand::Create(meta) => {
            let build = create(client, &meta).await?;
            print(out, &build, |b| b.id.to_string())?;
        }
        BuildCommand::Yank { build, reason } => {
            let b = client.yank(&build, reason).await?;
            print(out, &b, |b| {
                format!(
                    "Build {} yanked: it will not be deployed again.",
                    short(&b.short_id, &b.id)
                )
            })?;
        }
        BuildCommand::MarkCritical { build } => {
            let b = client.mark_critical(&build).await?;
            print(out, &b, |b| {
                format!(
                    "Build {} is critical: agents install it at once.",
                    short(&b.short_id, &b.id)
                )
            })?;
        }
        BuildCommand::Unembargo { build } => {
            let b = client.unembargo(&build).await?;
            print(out, &b, |b| {
                format!(
                    "Build {} unembargoed: visible to everyone, deployable anywhere.",
                    short(&b.short_id, &b.id)
                )
            })?;
        }
        BuildCommand::Seal { build } => {
            let b = client.seal(&build).await?;
            print(out, &b, |b| {
                format!(
                    "Build {} sealed: {}",
                    short(&b.short_id, &b.id),
                    b.manifest_digest.map(|d| d.to_string()).unwrap_or_default()
                )
            })?;
        }
        BuildCommand::Show { build, graph } => {
            let b = client.build(&build).await?;
            if graph && out == Output::Table {
                output::write(graph_lines(&b).join("\n"))?;
            } else {
                print(out, &b, show)?;
            }
        }
        BuildCommand::List {
            service,
            branch,
            version,
            state,
            limit,
            sort,
        } => {
            let q = BuildQuery {
                service: Some(service),
                branch,
                version,
                state,
                limit: Some(limit),
                sort: Some(sort),
            };
            let builds = client.list_builds(&q).await?;
            print(out, &builds, |builds| {
                let mut t = Table::new(&[
                    keep("ID"),
                    col("VERSION", 1),
                    col("STATE", 2),
                    text("BRANCH", 3),
                    col("COMMIT", 5),
                    col("ARTIFACTS", 6),
                    col("CREATED", 4),
                    col("MANIFEST", 7),
                ]);
                for b in builds {
                    t.row(vec![
                        short(&b.short_id, &b.id),
                        b.version.to_string(),
                        b.state.to_string(),
                        opt(&b.source.branch),
                        b.source
                            .commit
                            .as_deref()
                            .map(|c| c.chars().take(12).collect())
                            .unwrap_or_else(|| "-".into()),
                        b.artifact_count.to_string(),
                        time(&b.created_at),
                        b.manifest_digest.map(|d| d.short()).unwrap_or_else(|| "-".into()),
                    ]);
                }
                t.to_string()
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates a draft from the metadata flags.
pub async fn create(client: &Client, meta: &BuildMeta) -> anyhow::Result<Build> {
    let Some(service) = &meta.service else {
        bail!("--service is required: which service is this a build of?");
    };
    // Checked before anything is sent: an unset $GIT_SHA must not become a
    // build with an empty commit.
    if let Some(commit) = &meta.commit {
        tug_core::CommitId::parse(commit)?;
    }
    let version = match (&meta.version, &meta.commit) {
        (Some(v), _) => Version::parse(v)?,
        (None, Some(commit)) => {
            let short: String = commit.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
            Version::parse(&format!("0.0.0-g{short}"))
                .context("cannot derive a version from --commit; pass --version")?
        }
        (None, None) => bail!("--version is required (or --commit, to use 0.0.0-g<commit>)"),
    };
    let req = CreateBuild {
        service: ServiceName::parse(service)?,
        version,
        source: BuildSource {
            author: meta.author.clone(),
            branch: meta.branch.clone(),
            commit: meta.commit.clone(),
            message: meta.message.clone(),
            repo: meta.repo.clone(),
            tag: meta.tag.clone(),
        },
        ci: CiRun {
            builder_image: meta
                .builder_image
                .as_deref()
                .map(Digest::parse)
                .transpose()
                .context("--builder-image")?,
            url: meta.ci_url.clone(),
        },
        expected: meta
            .expect
            .iter()
            .map(|e| ArtifactName::parse(e))
            .collect::<Result<_, _>>()?,
        embargoed: meta.embargo,
    };
    Ok(client.create_build(&req).await?)
}

fn show(b: &Build) -> String {
    let mut s = String::new();
    let mut kv = |k: &str, v: String| s.push_str(&format!("{k:<10} {v}\n"));
    kv("build", b.id.to_string());
    if !b.short_id.is_empty() {
        kv("short id", b.short_id.clone());
    }
    kv("service", b.service.to_string());
    kv("version", b.version.to_string());
    kv("state", b.state.to_string());
    if b.embargoed {
        kv(
            "embargo",
            "yes: visible to admins and approvers, deployable to private environments only".into(),
        );
    }
    if let Some(t) = &b.yanked_at {
        kv(
            "yanked",
            format!("{} by {} ({})", time(t), opt(&b.yanked_by), opt(&b.yank_reason)),
        );
    }
    kv("manifest", opt(&b.manifest_digest));
    kv("repo", opt(&b.source.repo));
    kv("branch", opt(&b.source.branch));
    kv("commit", opt(&b.source.commit));
    if b.source.tag.is_some() {
        kv("tag", opt(&b.source.tag));
    }
    kv("author", opt(&b.source.author));
    if let Some(m) = &b.source.message {
        kv("message", m.lines().next().unwrap_or_default().to_string());
    }
    kv("ci", opt(&b.ci.url));
    if b.ci.builder_image.is_some() {
        kv("builder", opt(&b.ci.builder_image));
    }
    kv("created", format!("{} by {}", time(&b.created_at), opt(&b.created_by)));
    if let Some(t) = &b.sealed_at {
        kv("sealed", time(t));
    }
    let artifacts = b.artifacts.clone().unwrap_or_default();
    let missing: Vec<&str> = b
        .expected
        .iter()
        .filter(|e| !artifacts.iter().any(|a| &a.name == *e))
        .map(|e| e.as_str())
        .collect();
    if !missing.is_empty() {
        kv("missing", missing.join(", "));
    }
    let mut t = Table::new(&[
        keep("ARTIFACT"),
        col("KIND", 2),
        col("PLATFORM", 3),
        col("SIZE", 1),
        col("DIGEST", 4),
    ]);
    for a in &artifacts {
        t.row(vec![
            a.name.to_string(),
            a.kind.to_string(),
            opt(&a.platform),
            output::bytes(a.size),
            a.digest.to_string(),
        ]);
    }
    s.push_str(&format!("\n{}\n{t}", plural(artifacts.len() as u64, "artifact")));
    // A reference's address is too long for the table: each gets a line.
    for a in &artifacts {
        if let Some(uri) = &a.uri {
            s.push_str(&format!("\n{} -> {uri}", a.name));
        }
    }
    s
}

fn graph_lines(b: &Build) -> Vec<String> {
    let mut source = String::from("source");
    if let Some(repo) = &b.source.repo {
        source.push(' ');
        source.push_str(repo);
    }
    if let Some(commit) = &b.source.commit {
        source.push('@');
        source.push_str(commit);
    }
    if let Some(branch) = &b.source.branch {
        source.push_str(&format!(" ({branch})"));
    }
    tug_core::graph::render(&source, &b.artifacts.clone().unwrap_or_default())
}
