//! Where a deployment is written outside Tugboat: an environment's GitOps
//! config repository (`gitops = { repo, branch, path, layout }`) and a
//! service's source repository, whose environment tags follow what each
//! environment runs (`source_repo = { url, tag }`).
//!
//! This module checks what the pipeline file says (repository addresses,
//! branch and tag names, path templates, layouts) and holds the pure parts
//! of writing: the path and tag for one service and environment, the
//! `kustomization.yaml` of the `manifests` layout, the edit of a
//! kustomization's `images:` for the `kustomize` layout, and the commit
//! message with its trailers. Running `git` is the service's.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::shown;

/// The longest repository address, path template, branch or tag, in bytes.
pub const MAX_GIT_TEXT: usize = 1024;

/// The default branch a GitOps repository is written on.
pub const DEFAULT_BRANCH: &str = "main";

/// The default environment tag of a source repository.
pub const DEFAULT_TAG: &str = "env/{env}";

/// `gitops = { repo = "…", branch = "main", path = "clusters/{env}/{service}",
/// layout = "manifests" }` as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitOpsSpec {
    pub repo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    pub path: String,
    pub layout: String,
}

/// `source_repo = { url = "…", tag = "env/{env}" }` as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRepoSpec {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A git repository's address: `https://`, `http://`, `ssh://`, `file://`
/// or the scp-like `user@host:path`, without a password or token in it
/// (credentials come from the server's configuration), so it may be shown
/// anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoUrl(String);

impl RepoUrl {
    /// Checks `text`; the error says why it is refused.
    pub fn parse(text: &str) -> Result<RepoUrl, String> {
        if text.is_empty() || text.len() > MAX_GIT_TEXT {
            return Err(format!("give 1 to {MAX_GIT_TEXT} bytes"));
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("it holds spaces or control characters".into());
        }
        if text.starts_with('-') {
            return Err("it starts with '-'".into());
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return scp_like(text).map(|()| RepoUrl(text.to_string()));
        };
        let scheme = scheme.to_ascii_lowercase();
        if !["https", "http", "ssh", "file"].contains(&scheme.as_str()) {
            return Err(format!(
                "scheme {scheme:?} is not one of https, http, ssh, file (or write user@host:path)"
            ));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if scheme == "file" {
            if !authority.is_empty() || path.is_empty() {
                return Err("write a local repository as file:///absolute/path".into());
            }
            return Ok(RepoUrl(text.to_string()));
        }
        if let Some((user, host)) = authority.rsplit_once('@') {
            if scheme != "ssh" {
                return Err(
                    "it holds credentials: give tokens in the server's [[git.credentials]], never in the URL".into(),
                );
            }
            if user.contains(':') || user.is_empty() {
                return Err("it holds a password: give an ssh_key_file in the server's [[git.credentials]]".into());
            }
            check_host(host)?;
        } else {
            check_host(authority)?;
        }
        if path.is_empty() {
            return Err("it names no repository path".into());
        }
        Ok(RepoUrl(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_host(host: &str) -> Result<(), String> {
    let name = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c)) {
        return Err(format!("host {:?} is invalid", shown(host)));
    }
    Ok(())
}

/// `user@host:path` as ssh understands it (git's scp-like syntax).
fn scp_like(text: &str) -> Result<(), String> {
    let bad = || "write https://…, http://…, ssh://…, file:///… or user@host:path".to_string();
    let (user_host, path) = text.split_once(':').ok_or_else(bad)?;
    let (user, host) = user_host.split_once('@').ok_or_else(bad)?;
    if user.is_empty() || path.is_empty() || path.starts_with('/') && path.len() == 1 {
        return Err(bad());
    }
    check_host(host)
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an environment's deployment is written into its GitOps repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// The build's `manifest` artifacts under the path, with a generated
    /// `kustomization.yaml` listing them.
    Manifests,
    /// The `images:` of the `kustomization.yaml` at the path get the
    /// digests of the build's `oci` artifacts; the rest of the file stays.
    Kustomize,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Manifests => "manifests",
            Layout::Kustomize => "kustomize",
        }
    }

    pub fn parse(text: &str) -> Option<Layout> {
        match text {
            "manifests" => Some(Layout::Manifests),
            "kustomize" => Some(Layout::Kustomize),
            _ => None,
        }
    }
}

/// A relative path in a repository with `{env}` and `{service}` as its only
/// placeholders, normalised (no empty, `.` or `..` component, no leading
/// or trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathTemplate(String);

impl PathTemplate {
    pub fn parse(text: &str) -> Result<PathTemplate, String> {
        if text.is_empty() || text.len() > MAX_GIT_TEXT {
            return Err(format!("give 1 to {MAX_GIT_TEXT} bytes"));
        }
        if text.starts_with('/') {
            return Err("it must be relative to the repository: remove the leading '/'".into());
        }
        if text.chars().any(|c| c.is_control() || c == '\\') {
            return Err("it holds control characters or '\\'".into());
        }
        check_placeholders(text, &["{env}", "{service}"])?;
        let mut parts = Vec::new();
        for part in text.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err("it may not hold '..'".into()),
                ".git" => return Err("it may not write into .git".into()),
                p => parts.push(p),
            }
        }
        if parts.is_empty() {
            return Err("it names the repository's root: give a directory for the environment".into());
        }
        Ok(PathTemplate(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path for one service and environment (names are slugs, so the
    /// result stays relative and normalised).
    pub fn render(&self, service: &str, env: &str) -> String {
        self.0.replace("{env}", env).replace("{service}", service)
    }
}

/// Refuses any `{…}` but the `allowed` placeholders, and stray braces.
fn check_placeholders(text: &str, allowed: &[&str]) -> Result<(), String> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open..];
        let Some(close) = after.find('}') else {
            return Err("it holds a '{' without '}'".into());
        };
        let placeholder = &after[..=close];
        if !allowed.contains(&placeholder) {
            return Err(format!(
                "placeholder {:?} is unknown: use {}",
                shown(placeholder),
                allowed.join(" and ")
            ));
        }
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err("it holds a '}' without '{'".into());
    }
    Ok(())
}

/// Whether `name` is a valid git branch or tag name (`git check-ref-format`'s
/// rules, a little stricter).
fn check_ref_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with('-')
        || name.starts_with('/')
        || name.ends_with('/')
        || name.ends_with('.')
        || name.ends_with(".lock")
        || name.contains("..")
        || name.contains("//")
        || name.contains("@{")
        || name == "@"
        || name.split('/').any(|c| c.starts_with('.'))
        || name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        Err(format!("{:?} is not a valid git ref name", shown(name)))
    } else {
        Ok(())
    }
}

/// A tag name with `{env}` (and `{service}`) placeholders, valid as a git
/// tag whatever environment fills it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagTemplate(String);

impl TagTemplate {
    pub fn parse(text: &str) -> Result<TagTemplate, String> {
        check_placeholders(text, &["{env}", "{service}"])?;
        // Environment and service names are slugs: filling the
        // placeholders with one checks every name.
        check_ref_name(&text.replace("{env}", "e").replace("{service}", "s"))?;
        Ok(TagTemplate(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn render(&self, service: &str, env: &str) -> String {
        self.0.replace("{env}", env).replace("{service}", service)
    }
}

/// An environment's GitOps repository, checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GitOps {
    pub repo: RepoUrl,
    pub branch: String,
    pub path: PathTemplate,
    pub layout: Layout,
}

impl GitOps {
    /// Checks `spec`; the error names the field and why.
    pub fn from_spec(spec: &GitOpsSpec) -> Result<GitOps, (&'static str, String)> {
        let repo = RepoUrl::parse(&spec.repo).map_err(|why| ("repo", why))?;
        let branch = spec.branch.clone().unwrap_or_else(|| DEFAULT_BRANCH.to_string());
        check_ref_name(&branch).map_err(|why| ("branch", why))?;
        let path = PathTemplate::parse(&spec.path).map_err(|why| ("path", why))?;
        let layout = Layout::parse(&spec.layout).ok_or_else(|| {
            (
                "layout",
                format!("{:?} is not a layout: use manifests or kustomize", shown(&spec.layout)),
            )
        })?;
        Ok(GitOps {
            repo,
            branch,
            path,
            layout,
        })
    }

    pub fn to_spec(&self) -> GitOpsSpec {
        GitOpsSpec {
            repo: self.repo.to_string(),
            branch: Some(self.branch.clone()),
            path: self.path.as_str().to_string(),
            layout: self.layout.as_str().to_string(),
        }
    }
}

impl fmt::Display for GitOps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} ({})",
            self.repo,
            self.branch,
            self.path.as_str(),
            self.layout.as_str()
        )
    }
}

/// A service's source repository, checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceRepo {
    pub url: RepoUrl,
    pub tag: TagTemplate,
}

impl SourceRepo {
    pub fn from_spec(spec: &SourceRepoSpec) -> Result<SourceRepo, (&'static str, String)> {
        let url = RepoUrl::parse(&spec.url).map_err(|why| ("url", why))?;
        let tag = TagTemplate::parse(spec.tag.as_deref().unwrap_or(DEFAULT_TAG)).map_err(|why| ("tag", why))?;
        Ok(SourceRepo { url, tag })
    }

    pub fn to_spec(&self) -> SourceRepoSpec {
        SourceRepoSpec {
            url: self.url.to_string(),
            tag: Some(self.tag.as_str().to_string()),
        }
    }
}

/// As the pipeline's history names it: `git@github.com:acme/api.git (tag
/// env/{env})`.
impl fmt::Display for SourceRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (tag {})", self.url, self.tag.as_str())
    }
}

/// The name of the file the `manifests` layout generates and the
/// `kustomize` layout edits.
pub const KUSTOMIZATION: &str = "kustomization.yaml";

/// The `kustomization.yaml` of the `manifests` layout: every file written,
/// in name order.
pub fn manifests_kustomization(build: &str, files: &[String]) -> String {
    let mut files: Vec<&String> = files.iter().collect();
    files.sort();
    let mut out = format!(
        "# Written by Tugboat for build {build}: the build's manifests.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
    );
    for f in files {
        out.push_str(&format!("- {}\n", yaml_scalar(f)));
    }
    out
}

/// A plain scalar when it is safe, else a double-quoted one.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./@+".contains(c))
        && !s.starts_with(['-', '.', '@']);
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// The file name an artifact of kind `manifest` is written under: its name
/// with `/` kept (directories under the path), `.yaml` added when it has no
/// YAML extension. `None`: the name would leave the path or hide the
/// generated kustomization.
pub fn manifest_file(artifact: &str) -> Option<String> {
    if artifact
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == ".." || c == ".git")
    {
        return None;
    }
    let file = if artifact.ends_with(".yaml") || artifact.ends_with(".yml") {
        artifact.to_string()
    } else {
        format!("{artifact}.yaml")
    };
    (file != KUSTOMIZATION).then_some(file)
}

/// An OCI artifact of a build, for the `kustomize` layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The artifact's name.
    pub name: String,
    /// Its digest, `sha256:…`.
    pub digest: String,
}

impl Image {
    /// The image name an artifact stands for: its name, and when that is a
    /// path, the last component (`images/api` → `api`).
    fn short(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }

    /// Whether the artifact names a registry itself (`registry.example.com/team/api`):
    /// its first component holds a dot or a port. Then the entry's `newName`
    /// is set to it.
    fn new_name(&self) -> Option<&str> {
        let first = self.name.split('/').next()?;
        (self.name.contains('/') && (first.contains('.') || first.contains(':'))).then_some(&self.name)
    }

    /// Whether the image entry named `entry` is this artifact's: the same
    /// name, or the same last path component (`ghcr.io/acme/api` is the
    /// artifact `api` or `images/api`).
    fn matches(&self, entry: &str) -> bool {
        entry == self.name || entry.rsplit('/').next() == Some(self.short())
    }
}

/// Why the `images:` of a kustomization cannot be edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KustomizeError {
    #[error("{KUSTOMIZATION} has no top-level images: list; add one entry per image Tugboat should pin")]
    NoImages,
    #[error("{KUSTOMIZATION} writes images: in a form Tugboat does not edit (use a block list of mappings, one `- name: …` per image)")]
    Unsupported,
    #[error("no image entry of {KUSTOMIZATION} matches an oci artifact of the build ({artifacts}); name the entries after the artifacts")]
    NoMatch { artifacts: String },
}

/// Sets `digest` (and `newName`, when the artifact names a registry) of
/// every entry of the top-level `images:` list that an artifact of
/// `images` matches, editing only those lines: comments, order, quoting and
/// every other key stay as they were. An entry no artifact matches is left
/// alone; it is an error when none matches at all.
pub fn set_images(text: &str, images: &[Image]) -> Result<String, KustomizeError> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("images:"))
        .ok_or(KustomizeError::NoImages)?;
    let value = lines[start]["images:".len()..].trim();
    if !(value.is_empty() || value.starts_with('#')) {
        return Err(KustomizeError::Unsupported);
    }
    // The list runs until the next line at column 0 that is neither a list
    // item, a comment nor blank.
    let mut end = start + 1;
    while end < lines.len() {
        let l = lines[end];
        let t = l.trim_start();
        let top = !l.starts_with([' ', '\t']);
        if top && !(t.starts_with('-') || t.starts_with('#') || t.trim().is_empty()) {
            break;
        }
        end += 1;
    }
    // Split the list into items: each starts with "- " at the list's indent.
    let mut items: Vec<(usize, usize)> = Vec::new();
    let mut indent: Option<usize> = None;
    for (i, l) in lines.iter().enumerate().take(end).skip(start + 1) {
        let t = l.trim_start();
        if t.starts_with('#') || t.trim().is_empty() {
            continue;
        }
        let at = l.len() - t.len();
        if t.starts_with("- ") || t.trim_end() == "-" {
            match indent {
                None => indent = Some(at),
                Some(i0) if i0 != at => {
                    if at < i0 {
                        return Err(KustomizeError::Unsupported);
                    }
                    continue;
                }
                Some(_) => {}
            }
            if let Some(last) = items.last_mut() {
                last.1 = i;
            }
            items.push((i, end));
        } else if indent.is_none() || at <= indent.unwrap_or(0) {
            return Err(KustomizeError::Unsupported);
        }
    }
    if items.is_empty() {
        return Err(KustomizeError::Unsupported);
    }
    let mut out: Vec<String> = lines[..items[0].0].iter().map(|s| s.to_string()).collect();
    let mut matched = false;
    for (from, to) in items {
        let item = &lines[from..to];
        let edited = edit_item(item, images);
        matched |= edited.is_some();
        out.extend(edited.unwrap_or_else(|| item.iter().map(|s| s.to_string()).collect()));
    }
    if !matched {
        return Err(KustomizeError::NoMatch {
            artifacts: images.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
        });
    }
    out.extend(lines[end..].iter().map(|s| s.to_string()));
    Ok(out.concat())
}

/// A `key: value` line of an item (the first line after its `- `): the
/// key, its value (unquoted) and the column the key starts at.
fn key_value(line: &str, first: bool) -> Option<(&str, String, usize)> {
    let t = line.trim_start();
    let (t, col) = if first {
        let rest = t.strip_prefix('-')?.trim_start();
        (rest, line.len() - rest.len())
    } else {
        (t, line.len() - t.len())
    };
    let (key, value) = t.split_once(':')?;
    if key.is_empty() || key.contains(' ') {
        return None;
    }
    let value = value.split(" #").next().unwrap_or("").trim();
    let value = value.trim_matches(|c| c == '"' || c == '\'').to_string();
    Some((key, value, col))
}

/// The item with its digest (and newName) set, or `None` when no image
/// matches it.
fn edit_item(item: &[&str], images: &[Image]) -> Option<Vec<String>> {
    let mut key_col = None;
    let mut name = None;
    for (i, l) in item.iter().enumerate() {
        if let Some((key, value, col)) = key_value(l, i == 0) {
            if i == 0 {
                key_col = Some(col);
            }
            if key == "name" && Some(col) == key_col.or(Some(col)) {
                name = Some(value);
            }
        }
    }
    let key_col = key_col?;
    let name = name?;
    let image = images.iter().find(|im| im.matches(&name))?;
    let mut out: Vec<String> = item.iter().map(|s| s.to_string()).collect();
    let eol = if item.last().is_some_and(|l| l.ends_with('\n')) {
        "\n"
    } else {
        ""
    };
    let mut set = |key: &str, value: &str| {
        let found = out
            .iter()
            .enumerate()
            .find_map(|(i, l)| key_value(l, i == 0).and_then(|(k, _, col)| (k == key && col == key_col).then_some(i)));
        match found {
            Some(i) => {
                let line = &out[i];
                let prefix_end = line.find(&format!("{key}:")).unwrap_or(0) + key.len() + 1;
                let comment = line[prefix_end..]
                    .find(" #")
                    .map(|c| line[prefix_end + c..].trim_end().to_string());
                let nl = if line.ends_with('\n') { "\n" } else { "" };
                out[i] = format!("{} {}{}{}", &line[..prefix_end], value, comment.unwrap_or_default(), nl);
            }
            None => {
                // After the item's last line that is not blank or a comment.
                let last = out
                    .iter()
                    .rposition(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                    .unwrap_or(0);
                if !out[last].ends_with('\n') {
                    out[last].push('\n');
                }
                let line = format!("{}{key}: {value}{eol}", " ".repeat(key_col));
                out.insert(last + 1, line);
            }
        }
    };
    if let Some(new_name) = image.new_name() {
        set("newName", new_name);
    }
    set("digest", &image.digest);
    Some(out)
}

/// What is written into a git repository for a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryTarget {
    /// A commit into the environment's GitOps repository.
    Gitops,
    /// The environment tag of the service's source repository.
    SourceTag,
}

impl DeliveryTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryTarget::Gitops => "gitops",
            DeliveryTarget::SourceTag => "source_tag",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryTarget> {
        match text {
            "gitops" => Some(DeliveryTarget::Gitops),
            "source_tag" => Some(DeliveryTarget::SourceTag),
            _ => None,
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not tried yet.
    Pending,
    /// Tried and refused or unreachable; tried again at its next attempt.
    Failed,
    /// In the repository.
    Pushed,
    /// Nothing to write (a build without a source commit); the error says
    /// why.
    Skipped,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Failed => "failed",
            DeliveryState::Pushed => "pushed",
            DeliveryState::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryState> {
        match text {
            "pending" => Some(DeliveryState::Pending),
            "failed" => Some(DeliveryState::Failed),
            "pushed" => Some(DeliveryState::Pushed),
            "skipped" => Some(DeliveryState::Skipped),
            _ => None,
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a GitOps commit is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFacts<'a> {
    pub service: &'a str,
    pub env: &'a str,
    pub version: &'a str,
    pub build: &'a str,
    pub manifest_digest: Option<&'a str>,
    /// The deployment's kind: `release`, `promote`, …
    pub kind: &'a str,
    pub actor: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub deployment: &'a str,
}

/// The trailer that names the build a commit deploys.
pub const BUILD_TRAILER: &str = "Tugboat-Build";
/// The trailer that names the deployment a commit carries out: unique, so
/// a redelivered deployment is found in the branch and not written twice.
pub const DEPLOYMENT_TRAILER: &str = "Tugboat-Deployment";

/// A deployment's unique name in trailers: `service/env/seq`.
pub fn deployment_key(service: &str, env: &str, seq: i64) -> String {
    format!("{service}/{env}/{seq}")
}

/// The commit message of one deployment: a subject, what it deploys, who
/// and why, and the trailers.
pub fn commit_message(f: &CommitFacts<'_>) -> String {
    let one_line = |s: &str| s.replace(['\n', '\r'], " ");
    let mut out = format!("{} {}: {} {} ({})\n\n", f.service, f.env, f.kind, f.version, f.build);
    out.push_str(&format!(
        "Service: {}\nEnvironment: {}\nVersion: {}\n",
        f.service, f.env, f.version
    ));
    out.push_str(&format!("Build: {}\n", f.build));
    if let Some(d) = f.manifest_digest {
        out.push_str(&format!("Manifest: {d}\n"));
    }
    out.push_str(&format!("Kind: {}\n", f.kind));
    out.push_str(&format!(
        "By: {}\n",
        f.actor.map(one_line).unwrap_or_else(|| "tugboat".into())
    ));
    if let Some(r) = f.reason.filter(|r| !r.trim().is_empty()) {
        out.push_str(&format!("Why: {}\n", one_line(r)));
    }
    out.push_str(&format!(
        "\n{BUILD_TRAILER}: {}\n{DEPLOYMENT_TRAILER}: {}\n",
        f.build, f.deployment
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_addresses() {
        for ok in [
            "https://git.example.com/config.git",
            "http://127.0.0.1:8080/config.git",
            "ssh://git@git.internal/config.git",
            "ssh://git@git.internal:2222/team/config.git",
            "git@github.com:acme/config.git",
            "file:///srv/git/config.git",
        ] {
            RepoUrl::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("https://user:secret@git.example.com/c.git", "credentials"),
            ("https://token@git.example.com/c.git", "credentials"),
            ("ssh://git:pw@host/c.git", "password"),
            ("ftp://host/c.git", "scheme"),
            ("file://host/c.git", "file:///"),
            ("https://git.example.com", "no repository path"),
            ("https:///c.git", "host"),
            ("/srv/git/c.git", "write https"),
            ("-uhttps://x/y", "'-'"),
            ("https://git example.com/c", "spaces"),
            ("", "1 to"),
        ] {
            let err = RepoUrl::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn path_templates() {
        let p = PathTemplate::parse("clusters//{env}/./{service}/").unwrap();
        assert_eq!(p.as_str(), "clusters/{env}/{service}");
        assert_eq!(p.render("api", "prod"), "clusters/prod/api");
        for (bad, why) in [
            ("/abs", "leading"),
            ("a/../b", ".."),
            ("{cluster}/x", "unknown"),
            ("a/{env", "without"),
            ("a/env}", "without"),
            (".", "root"),
            (".git/x", ".git"),
        ] {
            let err = PathTemplate::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn tags_and_branches() {
        assert_eq!(
            TagTemplate::parse("env/{env}").unwrap().render("api", "prod"),
            "env/prod"
        );
        assert_eq!(
            TagTemplate::parse("{service}-{env}").unwrap().render("api", "prod"),
            "api-prod"
        );
        for bad in ["env/{cluster}", "env..x/{env}", "env/{env}.lock", "env {env}", "", "-x"] {
            assert!(TagTemplate::parse(bad).is_err(), "{bad}");
        }
        let spec = GitOpsSpec {
            repo: "file:///r".into(),
            branch: Some("bad..branch".into()),
            path: "a".into(),
            layout: "manifests".into(),
        };
        assert_eq!(GitOps::from_spec(&spec).unwrap_err().0, "branch");
        let spec = GitOpsSpec {
            branch: None,
            layout: "helm".into(),
            ..spec
        };
        let (field, why) = GitOps::from_spec(&spec).unwrap_err();
        assert_eq!(field, "layout");
        assert!(why.contains("manifests or kustomize"), "{why}");
        let spec = GitOpsSpec {
            layout: "kustomize".into(),
            ..spec
        };
        assert_eq!(GitOps::from_spec(&spec).unwrap().branch, "main");
    }

    #[test]
    fn the_manifests_kustomization_lists_the_files_in_order() {
        let k = manifests_kustomization("b1", &["svc.yaml".into(), "deploy.yaml".into(), "a b.yaml".into()]);
        assert!(
            k.ends_with("resources:\n- \"a b.yaml\"\n- deploy.yaml\n- svc.yaml\n"),
            "{k}"
        );
        assert_eq!(manifest_file("deploy"), Some("deploy.yaml".into()));
        assert_eq!(manifest_file("k8s/svc.yml"), Some("k8s/svc.yml".into()));
        assert_eq!(manifest_file("kustomization.yaml"), None);
        assert_eq!(manifest_file("../x.yaml"), None);
    }

    const KUSTOMIZATION_TEXT: &str = r#"# The api in production.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - deployment.yaml   # keep
images:
  # The api itself.
  - name: ghcr.io/acme/api
    newTag: "1.0"   # pinned by hand
    digest: sha256:0000
  - name: redis   # not ours
    newTag: "7"
  - name: worker
namePrefix: prod-
"#;

    #[test]
    fn images_are_edited_in_place() {
        let images = [
            Image {
                name: "api".into(),
                digest: "sha256:aaaa".into(),
            },
            Image {
                name: "registry.example.com/team/worker".into(),
                digest: "sha256:bbbb".into(),
            },
        ];
        let out = set_images(KUSTOMIZATION_TEXT, &images).unwrap();
        let want = KUSTOMIZATION_TEXT
            .replace("digest: sha256:0000", "digest: sha256:aaaa")
            .replace(
                "  - name: worker\n",
                "  - name: worker\n    newName: registry.example.com/team/worker\n    digest: sha256:bbbb\n",
            );
        assert_eq!(out, want);
        // Setting the same digests again changes nothing.
        assert_eq!(set_images(&out, &images).unwrap(), out);
    }

    #[test]
    fn images_at_column_zero_and_refusals() {
        let text = "images:\n- name: api\n  newTag: v1\nresources:\n- a.yaml\n";
        let out = set_images(
            text,
            &[Image {
                name: "api".into(),
                digest: "sha256:cc".into(),
            }],
        )
        .unwrap();
        assert_eq!(
            out,
            "images:\n- name: api\n  newTag: v1\n  digest: sha256:cc\nresources:\n- a.yaml\n"
        );
        let none = [Image {
            name: "other".into(),
            digest: "sha256:dd".into(),
        }];
        assert!(matches!(set_images(text, &none), Err(KustomizeError::NoMatch { .. })));
        assert_eq!(set_images("resources: []\n", &none), Err(KustomizeError::NoImages));
        assert_eq!(
            set_images("images: [{name: api}]\n", &none),
            Err(KustomizeError::Unsupported)
        );
    }

    #[test]
    fn the_commit_message_names_everything_with_trailers() {
        let m = commit_message(&CommitFacts {
            service: "api",
            env: "prod",
            version: "1.2.0",
            build: "0190-b",
            manifest_digest: Some("sha256:ab"),
            kind: "promote",
            actor: Some("alice"),
            reason: Some("ship\nit"),
            deployment: &deployment_key("api", "prod", 7),
        });
        assert!(m.starts_with("api prod: promote 1.2.0 (0190-b)\n\n"), "{m}");
        assert!(m.contains("Manifest: sha256:ab\n"), "{m}");
        assert!(m.contains("By: alice\nWhy: ship it\n"), "{m}");
        assert!(
            m.ends_with("\nTugboat-Build: 0190-b\nTugboat-Deployment: api/prod/7\n"),
            "{m}"
        );
    }

    #[test]
    fn the_pipeline_file_holds_both_and_names_the_field_at_fault() {
        use crate::pipeline::Pipeline;
        let text = "service = \"api\"\nsource_repo = { url = \"git@github.com:acme/api.git\" }\n[[environments]]\nname = \"prod\"\ngitops = { repo = \"file:///srv/config.git\", path = \"clusters/{env}/{service}\", layout = \"kustomize\" }\n";
        let p = Pipeline::parse(text).unwrap();
        assert_eq!(p.source_repo.as_ref().unwrap().tag.as_str(), DEFAULT_TAG);
        let gitops = p.environments[0].gitops.as_ref().unwrap();
        assert_eq!(gitops.layout, Layout::Kustomize);
        assert_eq!(gitops.path.render("api", "prod"), "clusters/prod/api");
        let canonical = p.to_toml();
        assert!(
            canonical.starts_with(
                "service = \"api\"\nsource_repo = { url = \"git@github.com:acme/api.git\", tag = \"env/{env}\" }\n"
            ),
            "{canonical}"
        );
        assert_eq!(Pipeline::parse(&canonical).unwrap(), p);
        for (bad, want) in [
            (
                "repo = \"https://u:p@h/c.git\"",
                "environment prod: gitops repo is invalid",
            ),
            ("path = \"../x\"", "environment prod: gitops path is invalid"),
            ("layout = \"helm\"", "environment prod: gitops layout is invalid"),
        ] {
            let key = bad.split(' ').next().unwrap();
            let line = text.lines().find(|l| l.starts_with("gitops")).unwrap().to_string();
            let start = line.find(&format!("{key} = ")).unwrap();
            let end = start + line[start..].find("\",").map_or(line[start..].len() - 2, |e| e + 1);
            let broken = text.replace(&line, &format!("{}{}{}", &line[..start], bad, &line[end..]));
            let err = Pipeline::parse(&broken).unwrap_err().to_string();
            assert!(err.starts_with(want), "{bad}: {err}");
        }
        let err = Pipeline::parse(&text.replace("env/{env}", "x").replace(
            "source_repo = { url = \"git@github.com:acme/api.git\" }",
            "source_repo = { url = \"git@github.com:acme/api.git\", tag = \"env/{cluster}\" }",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("source_repo tag is invalid"), "{err}");
    }
}
