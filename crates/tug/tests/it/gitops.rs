//! GitOps repositories and source-repository tags through the real binary
//! and the real `git`: bare repositories over `file://` and over HTTP (`git
//! http-backend` behind a server that checks the token), the `manifests`
//! tree rendered by `kubectl kustomize`, the `kustomize` layout keeping the
//! rest of its file, files of the previous build removed, a `pre-receive`
//! hook that refuses (shown, retried, landing once the hook is gone, while
//! other environments go on), 50 services promoted at once into one
//! repository (every commit lands once), a replayed consumer committing
//! nothing twice, environment tags moved and pushed, and bad input refused
//! at apply naming the field.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::deploy::apply;
use crate::support::{eventually, write_files, Backend, TestServer};

/// Runs git with a fixed identity and no user configuration; its output.
#[track_caller]
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "Dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new bare repository `name` under `dir`, branch `main`.
pub fn bare(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    git(dir, &["init", "-q", "--bare", "-b", "main", path.to_str().unwrap()]);
    path
}

pub fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// A server whose GitOps commits are authored by the release bot, with
/// extra `tug.toml` text.
pub fn git_server(backend: Backend, toml: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tug.toml"),
        format!("[git]\nauthor = \"Release Bot <bot@example.com>\"\n{toml}"),
    )
    .unwrap();
    TestServer::start_in(dir, backend, &[], &[])
}

/// The commits of `branch`, newest first: (sha, subject, deployment trailer).
pub fn commits(repo: &Path, branch: &str) -> Vec<(String, String, String)> {
    let out = Command::new("git")
        .args([
            "log",
            "--format=%H%x09%s%x09%(trailers:key=Tugboat-Deployment,valueonly,separator=)",
            branch,
        ])
        .current_dir(repo)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut p = l.splitn(3, '\t');
            let mut next = || p.next().unwrap_or("").trim().to_string();
            (next(), next(), next())
        })
        .collect()
}

/// Waits until `repo`'s `branch` has a commit of deployment `key`; its sha.
pub fn landed(repo: &Path, branch: &str, key: &str, secs: u64) -> String {
    eventually(secs, || {
        commits(repo, branch).into_iter().find(|c| c.2 == key).map(|c| c.0)
    })
}

/// Creates, fills with the files of `dir` and seals a build of `service`;
/// its id.
pub fn build_of(
    server: &TestServer,
    w: &Path,
    service: &str,
    version: &str,
    commit: &str,
    dir: &str,
    kind: Option<&str>,
) -> String {
    let id = server
        .tug(
            w,
            &[
                "build",
                "create",
                "--service",
                service,
                "--version",
                version,
                "--branch",
                "master",
                "--commit",
                commit,
            ],
        )
        .ok()
        .trim()
        .to_string();
    let mut push = vec!["push", id.as_str(), dir];
    if let Some(kind) = kind {
        push.extend(["--kind", kind]);
    }
    server.tug(w, &push).ok();
    server.tug(w, &["build", "seal", &id]).ok();
    id
}

const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: api\n  template:\n    metadata:\n      labels:\n        app: api\n    spec:\n      containers:\n      - name: api\n        image: ghcr.io/acme/api:VERSION\n";
const SERVICE: &str =
    "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\nspec:\n  selector:\n    app: api\n  ports:\n  - port: 80\n";

/// `kubectl kustomize` of `path` in a checkout of `repo`'s main.
fn kustomize(repo: &Path, work: &Path, path: &str) -> String {
    let checkout = work.join("checkout");
    let _ = std::fs::remove_dir_all(&checkout);
    git(
        work,
        &["clone", "-q", repo.to_str().unwrap(), checkout.to_str().unwrap()],
    );
    let out = Command::new("kubectl")
        .args(["kustomize", path])
        .current_dir(&checkout)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(server: &TestServer, w: &Path, service: &str) -> Value {
    server.tug(w, &["status", service, "--output", "json"]).json()
}

/// The deliveries of the environment `env`'s current deployment.
fn deliveries(server: &TestServer, w: &Path, service: &str, env: &str) -> Vec<Value> {
    let s = status(server, w, service);
    s["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == env)
        .and_then(|e| e["current"]["deliveries"].as_array().cloned())
        .unwrap_or_default()
}

/// The source repository: a bare repository with two commits on main;
/// their shas, oldest first.
fn source_repo(dir: &Path) -> (PathBuf, [String; 2]) {
    let repo = bare(dir, "source.git");
    let work = dir.join("source-work");
    git(dir, &["clone", "-q", repo.to_str().unwrap(), work.to_str().unwrap()]);
    let mut shas = Vec::new();
    for n in 1..=2 {
        std::fs::write(work.join("main.go"), format!("package main // {n}\n")).unwrap();
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", &format!("change {n}")]);
        shas.push(git(&work, &["rev-parse", "HEAD"]).trim().to_string());
    }
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    (repo, [shas[0].clone(), shas[1].clone()])
}

async fn manifests_are_written_rendered_and_tagged(backend: Backend) {
    let server = &git_server(backend, "");
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let config = bare(w, "config.git");
    let (source, shas) = source_repo(w);
    server.tug(w, &["service", "create", "api"]).ok();
    apply(
        server,
        w,
        &format!(
            "service = \"api\"\nsource_repo = {{ url = \"{}\" }}\n\
             [[environments]]\nname = \"dev\"\ngitops = {{ repo = \"{c}\", path = \"clusters/{{env}}/{{service}}\", layout = \"manifests\" }}\n\
             [[environments]]\nname = \"prod\"\nupstream = \"dev\"\ngitops = {{ repo = \"{c}\", path = \"clusters/{{env}}/{{service}}\", layout = \"manifests\" }}\n",
            file_url(&source),
            c = file_url(&config)
        ),
    )
    .ok();
    // The history names the source repository and each environment's
    // repository as what the revision set.
    let history = server.tug(w, &["pipeline", "history", "api"]).ok().to_string();
    assert!(
        history.contains(&format!("+ source_repo {} (tag env/{{env}})", file_url(&source))),
        "{history}"
    );
    assert!(history.contains("dev: + gitops"), "{history}");
    write_files(
        w,
        &[
            ("m1/deploy.yaml", DEPLOY.replace("VERSION", "1.0.0").as_bytes()),
            ("m1/svc.yaml", SERVICE.as_bytes()),
            ("m2/deploy.yaml", DEPLOY.replace("VERSION", "1.1.0").as_bytes()),
        ],
    );
    let b1 = build_of(server, w, "api", "1.0.0", &shas[0], "m1", None);
    let b2 = build_of(server, w, "api", "1.1.0", &shas[1], "m2", None);

    server
        .tug(
            w,
            &["release", "api", "--build", &b1, "--env", "dev", "--reason", "first"],
        )
        .ok();
    let first = landed(&config, "main", "api/dev/1", 30);
    let rendered = kustomize(&config, w, "clusters/dev/api");
    assert!(rendered.contains("kind: Deployment"), "{rendered}");
    assert!(rendered.contains("kind: Service"), "{rendered}");
    assert!(rendered.contains("image: ghcr.io/acme/api:1.0.0"), "{rendered}");
    // The commit: its author from the configuration, its message naming
    // everything, with both trailers.
    let message = git(&config, &["log", "-1", "--format=%an <%ae>%n%B", &first]);
    assert!(
        message.starts_with("Release Bot <bot@example.com>\napi dev: release 1.0.0"),
        "{message}"
    );
    for want in [
        format!("Build: {b1}"),
        "By: admin".to_string(),
        "Why: first".to_string(),
        format!("Tugboat-Build: {b1}"),
        "Tugboat-Deployment: api/dev/1".to_string(),
        "Manifest: sha256:".to_string(),
    ] {
        assert!(message.contains(&want), "{want}: {message}");
    }
    // The source tag names the build's commit.
    eventually(30, || {
        (git(&source, &["tag", "--list", "env/dev"]).trim() == "env/dev").then_some(())
    });
    assert_eq!(git(&source, &["rev-parse", "env/dev^{commit}"]).trim(), shas[0]);

    // The next build lacks svc.yaml: it goes.
    server.tug(w, &["release", "api", "--build", &b2, "--env", "dev"]).ok();
    landed(&config, "main", "api/dev/2", 30);
    let rendered = kustomize(&config, w, "clusters/dev/api");
    assert!(!rendered.contains("kind: Service"), "{rendered}");
    assert!(rendered.contains("image: ghcr.io/acme/api:1.1.0"), "{rendered}");
    let files = git(&config, &["ls-tree", "-r", "--name-only", "main"]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["clusters/dev/api/deploy.yaml", "clusters/dev/api/kustomization.yaml"]
    );
    eventually(30, || {
        (git(&source, &["rev-parse", "env/dev^{commit}"]).trim() == shas[1]).then_some(())
    });

    // Promotion and rollback are deployments too.
    server.tug(w, &["promote", "api", "--to", "prod"]).ok();
    landed(&config, "main", "api/prod/1", 30);
    server.tug(w, &["rollback", "api", "--env", "dev"]).ok();
    landed(&config, "main", "api/dev/3", 30);
    assert!(kustomize(&config, w, "clusters/dev/api").contains("kind: Service"));
    eventually(30, || {
        (git(&source, &["rev-parse", "env/dev^{commit}"]).trim() == shas[0]
            && git(&source, &["rev-parse", "env/prod^{commit}"]).trim() == shas[1])
            .then_some(())
    });

    // Status and history show the commits.
    let shown = eventually(30, || {
        let d = deliveries(server, w, "api", "dev");
        (d.len() == 2 && d.iter().all(|g| g["state"] == "pushed")).then_some(d)
    });
    let gitops = shown.iter().find(|g| g["target"] == "gitops").unwrap();
    assert_eq!(gitops["commit"], landed(&config, "main", "api/dev/3", 1));
    assert_eq!(gitops["repo"], file_url(&config));
    let tag = shown.iter().find(|g| g["target"] == "source_tag").unwrap();
    assert_eq!(tag["commit"], shas[0]);
    let table = server.tug(w, &["status", "api"]).ok().to_string();
    assert!(table.contains("dev (gitops): pushed "), "{table}");
    let history = server
        .tug(w, &["history", "api", "--env", "dev", "--output", "json"])
        .json();
    let seqs: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            d["deliveries"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g["target"] == "gitops" && g["commit"].is_string()))
        })
        .map(|d| d["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 2, 1], "{history}");

    // Each deployment is one commit, once.
    let all = commits(&config, "main");
    assert_eq!(all.len(), 4, "{all:?}");
}

on_both_backends!(manifests_are_written_rendered_and_tagged);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kustomize_layout_edits_only_the_images() {
    let server = git_server(Backend::Embedded, "");
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let config = bare(w, "config.git");
    let seed = w.join("seed");
    git(w, &["clone", "-q", config.to_str().unwrap(), seed.to_str().unwrap()]);
    let original = r#"# Production api: edited by hand, images by Tugboat.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - deploy.yaml   # the workload
images:
  # Ours.
  - name: ghcr.io/acme/api
    newTag: "1.0.0"
  - name: redis   # not ours: left alone
    newTag: "7"
namePrefix: prod-
"#;
    write_files(
        &seed,
        &[
            ("apps/api/kustomization.yaml", original.as_bytes()),
            ("apps/api/deploy.yaml", DEPLOY.replace("VERSION", "1.0.0").as_bytes()),
            ("README.md", b"config\n"),
        ],
    );
    git(&seed, &["add", "."]);
    git(&seed, &["commit", "-q", "-m", "seed"]);
    git(&seed, &["push", "-q", "origin", "HEAD:main"]);

    server.tug(w, &["service", "create", "api"]).ok();
    apply(
        &server,
        w,
        &format!(
            "service = \"api\"\n[[environments]]\nname = \"prod\"\ngitops = {{ repo = \"{}\", path = \"apps/{{service}}\", layout = \"kustomize\" }}\n",
            file_url(&config)
        ),
    )
    .ok();
    write_files(w, &[("img/api", b"an oci image, as far as this test goes")]);
    let b = build_of(&server, w, "api", "2.0.0", "abcdef12", "img", Some("oci"));
    server.tug(w, &["release", "api", "--build", &b, "--env", "prod"]).ok();
    landed(&config, "main", "api/prod/1", 30);
    let written = git(&config, &["show", "main:apps/api/kustomization.yaml"]);
    let digest = crate::support::digest_of(b"an oci image, as far as this test goes").to_string();
    assert_eq!(
        written,
        original.replace(
            "    newTag: \"1.0.0\"\n",
            &format!("    newTag: \"1.0.0\"\n    digest: {digest}\n")
        )
    );
    let rendered = kustomize(&config, w, "apps/api");
    assert!(
        rendered.contains(&format!("image: ghcr.io/acme/api:1.0.0@{digest}")),
        "{rendered}"
    );
    assert!(rendered.contains("name: prod-api"), "{rendered}");
    assert_eq!(git(&config, &["show", "main:README.md"]), "config\n");
}

/// A hook that refuses every push touching `clusters/prod/`.
const REFUSE_PROD: &str = "#!/bin/sh\nwhile read old new ref; do\n  if [ \"$old\" = 0000000000000000000000000000000000000000 ]; then range=$new; else range=$old..$new; fi\n  if git log --name-only --format= $range | grep -q '^clusters/prod/'; then\n    echo 'prod is frozen by the change board' >&2\n    exit 1\n  fi\ndone\nexit 0\n";

async fn a_refused_push_is_shown_retried_and_lands(backend: Backend) {
    let server = &git_server(backend, "");
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let config = bare(w, "config.git");
    let other = bare(w, "other.git");
    let hook = config.join("hooks/pre-receive");
    std::fs::write(&hook, REFUSE_PROD).unwrap();
    Command::new("chmod").arg("+x").arg(&hook).status().unwrap();
    for service in ["api", "web"] {
        server.tug(w, &["service", "create", service]).ok();
    }
    let env = |name: &str, repo: &Path| {
        format!(
            "[[environments]]\nname = \"{name}\"\ngitops = {{ repo = \"{}\", path = \"clusters/{{env}}/{{service}}\", layout = \"manifests\" }}\n",
            file_url(repo)
        )
    };
    apply(
        server,
        w,
        &format!("service = \"api\"\n{}{}", env("prod", &config), env("dev", &config)),
    )
    .ok();
    apply(server, w, &format!("service = \"web\"\n{}", env("prod", &other))).ok();
    write_files(w, &[("m/deploy.yaml", DEPLOY.replace("VERSION", "1").as_bytes())]);
    let api = build_of(server, w, "api", "1.0.0", "aaaa1111", "m", None);
    let web = build_of(server, w, "web", "1.0.0", "bbbb2222", "m", None);

    server
        .tug(w, &["release", "api", "--build", &api, "--env", "prod"])
        .ok();
    let failed = eventually(30, || {
        deliveries(server, w, "api", "prod")
            .into_iter()
            .find(|g| g["state"] == "failed")
    });
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("prod is frozen by the change board"),
        "{failed}"
    );
    assert!(failed["next_attempt"].is_string(), "{failed}");
    let table = server.tug(w, &["status", "api"]).ok().to_string();
    assert!(table.contains("prod (gitops): failed ("), "{table}");
    assert!(table.contains("next try"), "{table}");

    // Meanwhile another environment of the same repository and another
    // repository go on.
    server.tug(w, &["release", "api", "--build", &api, "--env", "dev"]).ok();
    server
        .tug(w, &["release", "web", "--build", &web, "--env", "prod"])
        .ok();
    landed(&config, "main", "api/dev/1", 30);
    landed(&other, "main", "web/prod/1", 30);
    assert!(commits(&config, "main").iter().all(|c| c.2 != "api/prod/1"));

    // Once the hook is gone, the refused deployment lands, once.
    std::fs::remove_file(&hook).unwrap();
    landed(&config, "main", "api/prod/1", 60);
    let d = eventually(30, || {
        deliveries(server, w, "api", "prod")
            .into_iter()
            .find(|g| g["state"] == "pushed")
    });
    assert!(d["attempts"].as_i64().unwrap() >= 2, "{d}");
    let keys: Vec<String> = commits(&config, "main").into_iter().map(|c| c.2).collect();
    assert_eq!(keys.iter().filter(|k| *k == "api/prod/1").count(), 1, "{keys:?}");
}

on_both_backends!(a_refused_push_is_shown_retried_and_lands);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gitops_and_source_repositories_are_refused_naming_the_field() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let env = |gitops: &str| format!("service = \"api\"\n[[environments]]\nname = \"prod\"\ngitops = {{ {gitops} }}\n");
    for (text, want) in [
        (
            env("repo = \"https://bot:s3cret@git.example.com/c.git\", path = \"a\", layout = \"manifests\""),
            "environment prod: gitops repo is invalid: it holds credentials",
        ),
        (
            env("repo = \"ftp://git.example.com/c.git\", path = \"a\", layout = \"manifests\""),
            "environment prod: gitops repo is invalid",
        ),
        (
            env("repo = \"https://git.example.com/c.git\", path = \"../a\", layout = \"manifests\""),
            "environment prod: gitops path is invalid",
        ),
        (
            env("repo = \"https://git.example.com/c.git\", path = \"/{cluster}\", layout = \"manifests\""),
            "environment prod: gitops path is invalid",
        ),
        (
            env("repo = \"https://git.example.com/c.git\", path = \"a\", layout = \"helm\""),
            "environment prod: gitops layout is invalid",
        ),
        (
            env("repo = \"https://git.example.com/c.git\", branch = \"a..b\", path = \"a\", layout = \"manifests\""),
            "environment prod: gitops branch is invalid",
        ),
        (
            "service = \"api\"\nsource_repo = { url = \"https://git.example.com/api.git\", tag = \"env/{region}\" }\n[[environments]]\nname = \"prod\"\n".to_string(),
            "source_repo tag is invalid",
        ),
    ] {
        let err = apply(&server, w, &text).fails().to_string();
        assert!(err.contains(want), "{text}: {err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
    // Nothing was stored.
    let shown = server.tug(w, &["pipeline", "show", "api"]).fails().to_string();
    assert!(shown.contains("no pipeline"), "{shown}");
    // The flag of `tug policy apply` takes the same keys.
    apply(&server, w, "service = \"api\"\n[[environments]]\nname = \"prod\"\n").ok();
    let err = server
        .tug(
            w,
            &[
                "policy",
                "apply",
                "api",
                "--env",
                "prod",
                "--gitops",
                "repo=https://git.example.com/c.git,path=a,layout=yaml",
            ],
        )
        .fails()
        .to_string();
    assert!(err.contains("gitops layout is invalid"), "{err}");
    server
        .tug(
            w,
            &[
                "policy",
                "apply",
                "api",
                "--env",
                "prod",
                "--gitops",
                "repo=https://git.example.com/c.git,path=clusters/{env},layout=kustomize",
            ],
        )
        .ok();
    let shown = server.tug(w, &["pipeline", "show", "api"]).ok().to_string();
    assert!(
        shown.contains("gitops = { repo = \"https://git.example.com/c.git\", branch = \"main\", path = \"clusters/{env}\", layout = \"kustomize\" }"),
        "{shown}"
    );
}

/// Services promoted at once into one repository.
const SERVICES: usize = 50;

/// Service `s{i}`: `dev` and `prod` (promoted from dev), both written into
/// `config`, with a build released into dev.
fn one_of_many(server: &TestServer, w: &Path, config: &Path, i: usize) {
    let service = format!("s{i}");
    let dir = w.join(&service);
    std::fs::create_dir_all(&dir).unwrap();
    server.tug(&dir, &["service", "create", &service]).ok();
    let env = |name: &str, up: &str| {
        format!(
            "[[environments]]\nname = \"{name}\"\n{up}gitops = {{ repo = \"{}\", path = \"clusters/{{env}}/{{service}}\", layout = \"manifests\" }}\n",
            file_url(config)
        )
    };
    std::fs::write(
        dir.join("pipeline.toml"),
        format!(
            "service = \"{service}\"\n{}{}",
            env("dev", ""),
            env("prod", "upstream = \"dev\"\n")
        ),
    )
    .unwrap();
    server.tug(&dir, &["pipeline", "apply", "-f", "pipeline.toml"]).ok();
    write_files(&dir, &[("m/deploy.yaml", DEPLOY.replace("api", &service).as_bytes())]);
    let b = build_of(server, &dir, &service, "1.0.0", "abcd1234", "m", None);
    server
        .tug(&dir, &["release", &service, "--build", &b, "--env", "dev"])
        .ok();
}

/// Runs `f(i)` for `0..n` on `threads` threads at once.
fn at_once(n: usize, threads: usize, f: impl Fn(usize) + Sync) {
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = &f;
            s.spawn(move || {
                for i in (t..n).step_by(threads) {
                    f(i);
                }
            });
        }
    });
}

async fn fifty_concurrent_promotions_land_once_each(backend: Backend) {
    let server = &git_server(backend, "");
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let config = bare(w, "config.git");
    at_once(SERVICES, 8, |i| one_of_many(server, w, &config, i));
    for i in 0..SERVICES {
        landed(&config, "main", &format!("s{i}/dev/1"), 60);
    }
    // Someone else writes the repository meanwhile: Tugboat's pushes lose
    // races to theirs and must apply again on the new head.
    let other = w.join("other");
    git(w, &["clone", "-q", config.to_str().unwrap(), other.to_str().unwrap()]);
    std::thread::scope(|s| {
        s.spawn(|| {
            for n in 0..10 {
                std::fs::write(other.join(format!("notes-{n}.md")), "by hand\n").unwrap();
                git(&other, &["add", "."]);
                git(&other, &["commit", "-q", "-m", &format!("by hand {n}")]);
                // Their own non-fast-forwards: rebase and push again.
                eventually(60, || {
                    let _ = Command::new("git")
                        .args(["pull", "-q", "--rebase", "origin", "main"])
                        .current_dir(&other)
                        .env("GIT_CONFIG_GLOBAL", "/dev/null")
                        .env("GIT_AUTHOR_NAME", "Dev")
                        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
                        .env("GIT_COMMITTER_NAME", "Dev")
                        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
                        .status();
                    Command::new("git")
                        .args(["push", "-q", "origin", "HEAD:main"])
                        .current_dir(&other)
                        .env("GIT_CONFIG_GLOBAL", "/dev/null")
                        .status()
                        .unwrap()
                        .success()
                        .then_some(())
                });
            }
        });
        at_once(SERVICES, SERVICES, |i| {
            let service = format!("s{i}");
            server
                .tug(&w.join(&service), &["promote", &service, "--to", "prod"])
                .ok();
        });
    });
    for i in 0..SERVICES {
        landed(&config, "main", &format!("s{i}/prod/1"), 60);
    }
    let all = commits(&config, "main");
    let mut keys: Vec<&str> = all.iter().map(|c| c.2.as_str()).filter(|k| !k.is_empty()).collect();
    assert_eq!(keys.len(), 2 * SERVICES, "each deployment once: {keys:?}");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 2 * SERVICES, "no deployment twice");
    let by_hand = all.iter().filter(|c| c.1.starts_with("by hand")).count();
    assert_eq!(by_hand, 10, "nobody's commit is lost");
    // Every service's tree is there, under its own path.
    let files = git(&config, &["ls-tree", "-r", "--name-only", "main"]);
    for i in 0..SERVICES {
        assert!(files.contains(&format!("clusters/prod/s{i}/deploy.yaml")), "s{i}");
    }
}

on_both_backends!(fifty_concurrent_promotions_land_once_each);

/// The deliveries are forgotten as done and the consumer's cursor set
/// back, as a crash between the push and the records would leave them:
/// the server finds its commits by their trailer and writes none twice.
async fn a_replayed_consumer_commits_nothing_twice(backend: Backend) {
    use sqlx::Connection;
    let mut server = git_server(backend, "");
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let config = bare(w, "config.git");
    let (source, shas) = source_repo(w);
    server.tug(w, &["service", "create", "api"]).ok();
    apply(
        &server,
        w,
        &format!(
            "service = \"api\"\nsource_repo = {{ url = \"{}\" }}\n[[environments]]\nname = \"dev\"\ngitops = {{ repo = \"{}\", path = \"dev\", layout = \"manifests\" }}\n",
            file_url(&source),
            file_url(&config)
        ),
    )
    .ok();
    write_files(w, &[("m/deploy.yaml", DEPLOY.as_bytes())]);
    let b1 = build_of(&server, w, "api", "1.0.0", &shas[0], "m", None);
    let b2 = build_of(&server, w, "api", "1.0.1", &shas[1], "m", None);
    for b in [&b1, &b2] {
        server.tug(w, &["release", "api", "--build", b, "--env", "dev"]).ok();
    }
    let first = landed(&config, "main", "api/dev/1", 30);
    let second = landed(&config, "main", "api/dev/2", 30);
    eventually(30, || {
        (git(&source, &["rev-parse", "env/dev^{commit}"]).trim() == shas[1]).then_some(())
    });
    eventually(30, || {
        let d = deliveries(&server, w, "api", "dev");
        (d.len() == 2 && d.iter().all(|g| g["state"] == "pushed")).then_some(())
    });

    server.kill9();
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&server.database_url()).await.unwrap();
    sqlx::raw_sql(
        "UPDATE gitops_deliveries SET state = 'pending', commit_sha = NULL; \
         UPDATE consumers SET cursor = 0, holder = NULL, lease_until = 0 WHERE name LIKE 'git:%'",
    )
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
    server.restart();
    // The consumer reads every event again; each deployment is found in
    // the branch by its trailer, recorded with its commit, never repeated.
    let d = eventually(30, || {
        let d = deliveries(&server, w, "api", "dev");
        (d.len() == 2 && d.iter().all(|g| g["state"] == "pushed")).then_some(d)
    });
    assert_eq!(
        d.iter().find(|g| g["target"] == "gitops").unwrap()["commit"],
        second.as_str()
    );
    let history = server
        .tug(w, &["history", "api", "--env", "dev", "--output", "json"])
        .json();
    let first_shown = history.as_array().unwrap().iter().find(|h| h["seq"] == 1).unwrap()["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["target"] == "gitops")
        .unwrap()["commit"]
        .clone();
    assert_eq!(first_shown, first.as_str());
    let keys: Vec<String> = commits(&config, "main").into_iter().map(|c| c.2).collect();
    assert_eq!(keys, ["api/dev/2", "api/dev/1"]);
    // The tag was moved again in order and ends where it was.
    assert_eq!(git(&source, &["rev-parse", "env/dev^{commit}"]).trim(), shas[1]);
}

on_both_backends!(a_replayed_consumer_commits_nothing_twice);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_the_token_comes_from_the_configuration_and_never_shows() {
    const TOKEN: &str = "t0ken-s3cret-42";
    let root = tempfile::tempdir().unwrap();
    let config = bare(root.path(), "config.git");
    bare(root.path(), "closed.git");
    let http = tug_testkit::GitHttpServer::start(root.path(), "x-access-token", TOKEN);
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("git-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let server = git_server(
        Backend::Embedded,
        &format!(
            "[[git.credentials]]\nprefix = \"{}config.git\"\ntoken_file = \"{}\"\n",
            http.url,
            token_file.display()
        ),
    );
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let env = |name: &str, repo: &str| {
        format!(
            "[[environments]]\nname = \"{name}\"\ngitops = {{ repo = \"{}{repo}\", path = \"{{env}}\", layout = \"manifests\" }}\n",
            http.url
        )
    };
    apply(
        &server,
        w,
        &format!(
            "service = \"api\"\n{}{}",
            env("dev", "config.git"),
            env("prod", "closed.git")
        ),
    )
    .ok();
    write_files(w, &[("m/deploy.yaml", DEPLOY.as_bytes())]);
    let b = build_of(&server, w, "api", "1.0.0", "abcd1234", "m", None);
    server.tug(w, &["release", "api", "--build", &b, "--env", "dev"]).ok();
    server.tug(w, &["release", "api", "--build", &b, "--env", "prod"]).ok();
    landed(&config, "main", "api/dev/1", 30);
    assert!(http.served.load(std::sync::atomic::Ordering::SeqCst) > 0);
    // The repository the credentials do not cover is refused, and says so.
    let failed = eventually(30, || {
        deliveries(&server, w, "api", "prod")
            .into_iter()
            .find(|g| g["state"] == "failed")
    });
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("could not read Username"), "{error}");
    assert!(http.refused.load(std::sync::atomic::Ordering::SeqCst) > 0);
    // The token is in no answer, listing or log.
    let shown = [
        server.tug(w, &["status", "api", "--output", "json"]).ok().to_string(),
        server
            .tug(w, &["history", "api", "--env", "dev", "--output", "json"])
            .ok()
            .to_string(),
        server.tug(w, &["pipeline", "show", "api"]).ok().to_string(),
        server.tug(w, &["audit", "export"]).ok().to_string(),
        server.log(),
        git(&config, &["log", "--format=%B", "main"]),
    ];
    for text in shown {
        assert!(!text.contains(TOKEN), "the token shows:\n{text}");
    }
}

/// An embargoed build: its commit is written into the private
/// environment's GitOps repository (the environment must run it) but its
/// source commit is not tagged, and a viewer, who may not see the build,
/// sees none of its deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embargoed_builds_deliveries_are_as_hidden_as_the_build() {
    let server = git_server(Backend::Embedded, "");
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let config = bare(w, "config.git");
    let (source, shas) = source_repo(w);
    server.tug(w, &["service", "create", "api"]).ok();
    apply(
        &server,
        w,
        &format!(
            "service = \"api\"\nsource_repo = {{ url = \"{}\" }}\n[[environments]]\nname = \"sec\"\nprivate = true\ngitops = {{ repo = \"{}\", path = \"sec\", layout = \"manifests\" }}\n",
            file_url(&source),
            file_url(&config)
        ),
    )
    .ok();
    write_files(w, &[("fix/deploy.yaml", DEPLOY.as_bytes())]);
    let out = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--embargo",
                "--seal",
                "--commit",
                &shas[1],
                "--version",
                "9.9.9",
                "--output",
                "json",
                "fix",
            ],
        )
        .json();
    let fix = out["build"].as_str().unwrap().to_string();
    server.tug(w, &["release", "api", "--build", &fix, "--env", "sec"]).ok();
    landed(&config, "main", "api/sec/1", 30);
    let shown = eventually(30, || {
        let d = deliveries(&server, w, "api", "sec");
        (d.len() == 2 && d.iter().all(|g| g["state"] != "pending" && g["state"] != "failed")).then_some(d)
    });
    let tag = shown.iter().find(|g| g["target"] == "source_tag").unwrap();
    assert_eq!(tag["state"], "skipped");
    assert!(tag["error"].as_str().unwrap().contains("embargoed"), "{tag}");
    assert!(git(&source, &["tag", "--list"]).trim().is_empty());

    let viewer = server
        .tug(
            w,
            &[
                "token", "create", "--name", "watcher", "--role", "viewer", "--output", "json",
            ],
        )
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let status = server.tug_as(&viewer, w, &["status", "api", "--output", "json"]).json();
    let sec = &status["environments"][0]["current"];
    assert_eq!(sec["embargoed"], true, "{status}");
    assert!(sec.get("deliveries").is_none(), "{status}");
    let history = server
        .tug_as(&viewer, w, &["history", "api", "--env", "sec", "--output", "json"])
        .json();
    assert!(history[0].get("deliveries").is_none(), "{history}");
    let table = server.tug_as(&viewer, w, &["status", "api"]).ok().to_string();
    assert!(!table.contains("(gitops)"), "{table}");
}

/// A writer runs while some pipeline names its repository: dropped by the
/// last pipeline naming it, the repository gets no commit for the
/// deployments meanwhile; named again, it is written from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_dropped_and_named_again_is_written_from_then_on() {
    let server = git_server(Backend::Embedded, "");
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let config = bare(w, "config.git");
    server.tug(w, &["service", "create", "api"]).ok();
    let with = format!(
        "service = \"api\"\n[[environments]]\nname = \"dev\"\ngitops = {{ repo = \"{}\", path = \"dev\", layout = \"manifests\" }}\n",
        file_url(&config)
    );
    let without = "service = \"api\"\n[[environments]]\nname = \"dev\"\n";
    write_files(w, &[("m/deploy.yaml", DEPLOY.as_bytes())]);
    let builds: Vec<String> = ["1.0.0", "1.0.1", "1.0.2"]
        .iter()
        .map(|v| build_of(&server, w, "api", v, &"a".repeat(40), "m", None))
        .collect();
    apply(&server, w, &with).ok();
    server
        .tug(w, &["release", "api", "--build", &builds[0], "--env", "dev"])
        .ok();
    landed(&config, "main", "api/dev/1", 30);
    apply(&server, w, without).ok();
    server
        .tug(w, &["release", "api", "--build", &builds[1], "--env", "dev"])
        .ok();
    apply(&server, w, &with).ok();
    server
        .tug(w, &["release", "api", "--build", &builds[2], "--env", "dev"])
        .ok();
    landed(&config, "main", "api/dev/3", 30);
    let keys: Vec<String> = commits(&config, "main").into_iter().map(|c| c.2).collect();
    assert_eq!(keys, ["api/dev/3", "api/dev/1"]);
}
