//! `tug push` and `tug pull`: the transfers, with a progress bar on a
//! terminal and a summary (or JSON) at the end.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tug_api::Build;
use tug_client::{Client, Hooks, PullReport, PushItem, PushReport};
use tug_core::{ArtifactKind, ArtifactName, DerivedFrom, Platform};

use crate::cli::{Output, PullArgs, PushArgs};
use crate::output::{self, plural, print};

/// A byte progress bar on stderr, hidden when stderr is not a terminal.
fn progress_bar() -> (ProgressBar, Hooks) {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let total_bar = bar.clone();
    let inc_bar = bar.clone();
    let hooks = Hooks {
        total: Some(Arc::new(move |n| total_bar.set_length(n))),
        progress: Some(Arc::new(move |n| inc_bar.inc(n))),
    };
    (bar, hooks)
}

#[derive(Serialize)]
struct PushOutput {
    build: String,
    #[serde(flatten)]
    report: PushReport,
    sealed: Option<Build>,
}

pub async fn push(client: &Client, out: Output, a: PushArgs) -> anyhow::Result<ExitCode> {
    if a.reference.is_some() {
        return push_reference(client, out, a).await;
    }
    let (build, paths): (String, &[String]) = if a.meta.service.is_some() {
        // One-shot: create the build from the flags; every argument is a file.
        let b = super::build::create(client, &a.meta).await?;
        (b.id.to_string(), &a.args[..])
    } else {
        if a.meta.version.is_some() || a.meta.branch.is_some() || a.meta.commit.is_some() || !a.meta.expect.is_empty() {
            bail!("build metadata flags (--version, --branch, --commit, --expect) need --service, which creates a new build");
        }
        (a.args[0].clone(), &a.args[1..])
    };
    if paths.is_empty() {
        bail!("give files or directories to push after the build id");
    }
    let kind = a.kind;
    let platform = a.platform.as_deref().map(Platform::parse).transpose()?;
    let derived_from = a
        .derived_from
        .iter()
        .map(|d| DerivedFrom::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    let files = collect(paths, a.name.as_deref())?;
    let items: Vec<PushItem> = files
        .into_iter()
        .map(|File { path, name, executable }| PushItem {
            kind: kind.unwrap_or_else(|| ArtifactKind::guess(name.as_str())),
            path,
            name,
            platform: platform.clone(),
            derived_from: derived_from.clone(),
            executable,
        })
        .collect();

    let (bar, hooks) = progress_bar();
    let report = client.push(&build, items, a.concurrency, hooks).await;
    bar.finish_and_clear();
    let report = report.with_context(|| format!("push into build {build} failed"))?;
    let sealed = seal_if(client, &build, a.seal).await?;
    let result = PushOutput { build, report, sealed };
    print(out, &result, |r| {
        let p = &r.report;
        if p.sealed_build {
            return format!(
                "Build {} is sealed: its {} files are all its own; uploaded {} blobs the store lacked ({}), {} already stored.",
                r.build,
                p.artifacts,
                p.uploaded_blobs,
                output::bytes(p.uploaded_bytes),
                p.skipped_blobs
            );
        }
        let mut s = format!(
            "Pushed {} into build {}: uploaded {} ({}), {} already stored ({} not sent); {} newly registered.",
            plural(p.artifacts as u64, "artifact"),
            r.build,
            plural(p.uploaded_blobs as u64, "blob"),
            output::bytes(p.uploaded_bytes),
            p.skipped_blobs,
            output::bytes(p.skipped_bytes),
            p.registered
        );
        if let Some(b) = &r.sealed {
            s.push_str(&format!(
                "\nBuild {} sealed: {}",
                b.id,
                b.manifest_digest.map(|d| d.to_string()).unwrap_or_default()
            ));
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A file to push and the artifact it becomes.
struct File {
    path: PathBuf,
    name: ArtifactName,
    /// Any of its executable bits is set: it is pushed as a program.
    executable: bool,
}

impl File {
    fn new(path: PathBuf, name: ArtifactName, meta: &std::fs::Metadata) -> File {
        use std::os::unix::fs::PermissionsExt;
        File {
            path,
            name,
            executable: meta.permissions().mode() & 0o111 != 0,
        }
    }
}

/// Expands the arguments into the files to push: a file is named by its
/// file name (or `--name`), a directory's files by their path inside it.
/// Two files with one name are refused before anything is sent.
fn collect(paths: &[String], name: Option<&str>) -> anyhow::Result<Vec<File>> {
    let mut files = Vec::new();
    for p in paths {
        let path = PathBuf::from(p);
        let meta = std::fs::metadata(&path).with_context(|| format!("cannot read {p}"))?;
        if meta.is_dir() {
            if name.is_some() {
                bail!("--name applies to a single file, and {p} is a directory");
            }
            walk(&path, &path, &mut files)?;
        } else if meta.is_file() {
            let n = match name {
                Some(n) => n.to_string(),
                None => path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("{p}: the file name is not UTF-8"))?
                    .to_string(),
            };
            files.push(File::new(path, ArtifactName::parse(&n)?, &meta));
        } else {
            bail!("{p} is neither a file nor a directory");
        }
    }
    if name.is_some() && files.len() > 1 {
        bail!("--name applies to a single file, and {} were given", files.len());
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    for w in files.windows(2) {
        if w[0].name == w[1].name {
            bail!(
                "{} and {} would both be artifact {}; rename one or push them into different builds",
                w[0].path.display(),
                w[1].path.display(),
                w[0].name
            );
        }
    }
    Ok(files)
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<File>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            walk(root, &path, files)?;
        } else if meta.is_file() {
            let rel = path
                .strip_prefix(root)
                .with_context(|| format!("{} is outside {}", path.display(), root.display()))?;
            let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
            let parts = parts.with_context(|| format!("{}: the path is not UTF-8", path.display()))?;
            let name = ArtifactName::parse(&parts.join("/"))?;
            files.push(File::new(path.clone(), name, &meta));
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct PullOutput {
    build: String,
    dest: String,
    #[serde(flatten)]
    report: PullReport,
}

pub async fn pull(client: &Client, out: Output, a: PullArgs) -> anyhow::Result<ExitCode> {
    let build = client.build(&a.build).await?;
    let only = a
        .artifact
        .iter()
        .map(|n| ArtifactName::parse(n))
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(&a.dest).with_context(|| format!("cannot create {}", a.dest.display()))?;
    let (bar, hooks) = progress_bar();
    let report = client.pull(&build, &only, &a.dest, hooks).await;
    bar.finish_and_clear();
    let report = report.with_context(|| format!("pull of build {} failed", build.id))?;
    let result = PullOutput {
        build: build.id.to_string(),
        dest: a.dest.display().to_string(),
        report,
    };
    print(out, &result, |r| {
        format!(
            "Pulled {} of build {} into {} ({} downloaded, {} already up to date); every digest verified.",
            plural(r.report.files as u64, "file"),
            r.build,
            r.dest,
            output::bytes(r.report.downloaded_bytes),
            r.report.up_to_date
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `tug push --reference NAME=URI --digest sha256:…`: registers an artifact
/// that is not a file (nothing is uploaded).
async fn push_reference(client: &Client, out: Output, a: PushArgs) -> anyhow::Result<ExitCode> {
    let build = if a.meta.service.is_some() {
        if !a.args.is_empty() {
            bail!("--reference registers no file: give no files with it");
        }
        super::build::create(client, &a.meta).await?.id.to_string()
    } else {
        match &a.args[..] {
            [build] => build.clone(),
            [] => bail!("give the draft build to register the reference in (or --service to create one)"),
            _ => bail!("--reference registers no file: give only the build, no files"),
        }
    };
    let (Some(reference), Some(digest)) = (&a.reference, &a.digest) else {
        bail!("--reference needs --digest sha256:…, the digest CI computed for it");
    };
    let Some((name, uri)) = reference.split_once('=') else {
        bail!("--reference {reference:?} is not NAME=URI, e.g. ami=aws:ec2:us-east-1:ami-0abc");
    };
    let spec = tug_core::ArtifactSpec {
        name: tug_core::ArtifactName::parse(name)?,
        kind: ArtifactKind::Reference,
        platform: a.platform.as_deref().map(Platform::parse).transpose()?,
        size: 0,
        digest: tug_core::Digest::parse(digest).map_err(|e| anyhow::anyhow!("--digest: {e}"))?,
        derived_from: a
            .derived_from
            .iter()
            .map(|d| DerivedFrom::parse(d))
            .collect::<Result<Vec<_>, _>>()?,
        executable: false,
        uri: Some(tug_core::ReferenceUri::parse(uri)?),
    };
    let registered = client
        .register_artifacts(&build, vec![spec])
        .await
        .with_context(|| format!("cannot register reference {name} in build {build}"))?;
    let sealed = seal_if(client, &build, a.seal).await?;
    let result = serde_json::json!({
        "build": build,
        "reference": name,
        "uri": uri,
        "registered": registered.added,
        "sealed": sealed.as_ref().map(|b| b.id.to_string()),
    });
    print(out, &result, |_| {
        let mut s = format!("Registered reference {name} -> {uri} in build {build}.");
        if let Some(b) = &sealed {
            s.push_str(&format!("\nBuild {} sealed.", b.id));
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Seals `build` when `--seal` was given.
async fn seal_if(client: &Client, build: &str, seal: bool) -> anyhow::Result<Option<Build>> {
    if !seal {
        return Ok(None);
    }
    let sealed = client
        .seal(build)
        .await
        .with_context(|| format!("cannot seal build {build}"))?;
    Ok(Some(sealed))
}
