//! APT repositories per environment, driven by Debian's own `apt-get`,
//! `dpkg-deb` and `gpgv` with a private configuration (their own state,
//! cache, sources and keyring under a temporary directory), so the
//! machine's APT setup is neither read nor changed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Backend, TestServer};

const PIPELINE: &str = r#"
service = "api"

[[environments]]
name = "stable"
public = true

[[environments]]
name = "internal"

[[environments]]
name = "beta"
public = true
"#;

/// Builds `<pkg>_<version>_<arch>.deb` in `dir` with `dpkg-deb`; it
/// installs `/usr/share/<pkg>/VERSION` holding `version`.
pub fn deb(dir: &Path, pkg: &str, version: &str, arch: &str) -> PathBuf {
    let root = dir.join(format!("{pkg}_{version}_{arch}.tree"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/share").join(pkg)).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {pkg}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Tugboat Tests <tests@example.com>\nDescription: a test package\n a longer description\n"
        ),
    )
    .unwrap();
    std::fs::write(root.join("usr/share").join(pkg).join("VERSION"), version).unwrap();
    let out = dir.join(format!("{pkg}_{version}_{arch}.deb"));
    let run = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&out)
        .output()
        .expect("dpkg-deb is installed");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    out
}

/// Pushes the packages of `version` (amd64, arm64 and an `all` one) as a
/// sealed build; returns its id.
fn push_version(server: &TestServer, w: &Path, version: &str) -> String {
    let dir = w.join(version);
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        deb(&dir, "hello", version, "amd64"),
        deb(&dir, "hello", version, "arm64"),
        deb(&dir, "hello-data", version, "all"),
    ];
    let mut args = vec![
        "push",
        "--service",
        "api",
        "--version",
        version,
        "--seal",
        "--output",
        "json",
    ];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let out = server.tug(w, &args).json();
    out["build"].as_str().unwrap().to_string()
}

/// An `apt-get` with its own configuration in a temporary directory.
struct Apt {
    dir: tempfile::TempDir,
}

impl Apt {
    /// A configuration whose one source is `http://<base>/apt/api <env>`,
    /// trusting the key served at `key.gpg` only, with `auth` as apt's
    /// `auth.conf` (machine, password) when given.
    fn new(base: &str, env: &str, key: &[u8], auth: Option<&str>) -> Apt {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [
            "state/lists/partial",
            "cache/archives/partial",
            "parts",
            "trusted.d",
            "prefs.d",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("key.gpg"), key).unwrap();
        std::fs::write(d.join("status"), "").unwrap();
        std::fs::write(
            d.join("sources.list"),
            format!("deb [signed-by={}/key.gpg] {base}/apt/api {env} main\n", d.display()),
        )
        .unwrap();
        std::fs::write(d.join("auth.conf"), auth.unwrap_or("")).unwrap();
        let p = d.display();
        std::fs::write(
            d.join("apt.conf"),
            format!(
                r#"Dir::Etc::main "/dev/null";
Dir::Etc::parts "{p}/parts";
Dir::Etc::sourcelist "{p}/sources.list";
Dir::Etc::sourceparts "-";
Dir::Etc::trusted "{p}/trusted.gpg";
Dir::Etc::trustedparts "{p}/trusted.d";
Dir::Etc::preferences "{p}/prefs";
Dir::Etc::preferencesparts "{p}/prefs.d";
Dir::Etc::netrc "{p}/auth.conf";
Dir::State "{p}/state";
Dir::State::status "{p}/status";
Dir::Cache "{p}/cache";
Dir::Log "{p}/log";
Debug::NoLocking "1";
APT::Architecture "amd64";
APT::Architectures {{ "amd64"; }};
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::Retries "0";
"#
            ),
        )
        .unwrap();
        Apt { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `program` (apt-get, apt-cache) with this configuration in its
    /// directory; returns (success, stdout + stderr).
    fn run(&self, program: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(program)
            .args(args)
            .current_dir(self.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("APT_CONFIG", self.path().join("apt.conf"))
            .env("LC_ALL", "C")
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    #[track_caller]
    fn ok(&self, program: &str, args: &[&str]) -> String {
        let (ok, text) = self.run(program, args);
        assert!(ok, "{program} {args:?} failed:\n{text}");
        text
    }

    /// `apt-get update`, which must succeed without a warning.
    #[track_caller]
    fn update(&self) -> String {
        let text = self.ok("apt-get", &["update"]);
        assert!(
            !text.contains("W:") && !text.contains("E:"),
            "apt-get update warned:\n{text}"
        );
        text
    }

    /// Downloads `spec` (`hello`, `hello=1.0`) and unpacks it with
    /// `dpkg-deb -x`; returns the VERSION file it installs.
    #[track_caller]
    fn fetch(&self, spec: &str) -> String {
        let out = self.path().join("downloads");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let text = self.ok(
            "apt-get",
            &[
                "download",
                spec,
                "-o",
                &format!("Dir::Cache::archives={}", out.display()),
            ],
        );
        let debs: Vec<PathBuf> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        assert_eq!(debs.len(), 1, "{text}\n{debs:?}");
        let root = self.path().join("root");
        let _ = std::fs::remove_dir_all(&root);
        let x = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&debs[0])
            .arg(&root)
            .output()
            .unwrap();
        assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
        std::fs::remove_file(&debs[0]).unwrap();
        let pkg = spec.split('=').next().unwrap();
        std::fs::read_to_string(root.join("usr/share").join(pkg).join("VERSION")).unwrap()
    }
}

async fn get(url: &str) -> (u16, Vec<u8>) {
    let res = reqwest::get(url).await.unwrap();
    (res.status().as_u16(), res.bytes().await.unwrap().to_vec())
}

/// Service `api` with its pipeline, and version 1.0.0 released to
/// `stable`; returns that build's id.
fn released(server: &TestServer, w: &Path) -> String {
    server.tug(w, &["service", "create", "api"]).ok();
    apply(server, w, PIPELINE);
    let v1 = push_version(server, w, "1.0.0");
    server
        .tug(w, &["release", "api", "--env", "stable", "--build", &v1])
        .ok();
    v1
}

fn apply(server: &TestServer, w: &Path, pipeline: &str) {
    std::fs::write(w.join("p.toml"), pipeline).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "p.toml"]).ok();
}

/// The core path: packages pushed into builds are served as a signed
/// repository that apt-get accepts; a promotion changes what it sees; an
/// older kept version can be pinned.
async fn apt_get_installs_from_a_channel(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let v1 = released(&server, w);

    let (status, key) = get(&format!("{}/apt/api/key.gpg", server.url)).await;
    assert_eq!(status, 200);
    let apt = Apt::new(&server.url, "stable", &key, None);
    apt.update();
    assert_eq!(apt.fetch("hello"), "1.0.0");
    assert_eq!(apt.fetch("hello-data"), "1.0.0");

    // The armored key is the same key (what `gpg --dearmor` makes of it).
    let (status, armored) = get(&format!("{}/apt/api/key.asc", server.url)).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&armored).starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));

    // The InRelease a client read before a promotion keeps naming indexes
    // that answer by hash, with the packages of that generation.
    let (_, before) = get(&format!("{}/apt/api/dists/stable/InRelease", server.url)).await;
    let before = String::from_utf8(before).unwrap();
    let v2 = push_version(&server, w, "2.0.0");
    server
        .tug(w, &["release", "api", "--env", "stable", "--build", &v2])
        .ok();
    let (_, after) = get(&format!("{}/apt/api/dists/stable/InRelease", server.url)).await;
    assert_ne!(String::from_utf8(after).unwrap(), before);
    let old_index = before
        .lines()
        .find(|l| l.ends_with(" main/binary-amd64/Packages"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let (status, old) = get(&format!(
        "{}/apt/api/dists/stable/main/binary-amd64/by-hash/SHA256/{old_index}",
        server.url
    ))
    .await;
    assert_eq!(status, 200);
    let old = String::from_utf8(old).unwrap();
    assert!(
        old.contains("Version: 1.0.0") && !old.contains("Version: 2.0.0"),
        "{old}"
    );

    apt.update();
    assert_eq!(apt.fetch("hello"), "2.0.0");
    // The previous build is kept: its version can be pinned.
    let policy = apt.ok("apt-cache", &["madison", "hello"]);
    assert!(policy.contains("1.0.0") && policy.contains("2.0.0"), "{policy}");
    assert_eq!(apt.fetch("hello=1.0.0"), "1.0.0");

    // The internal environment is not public: not found without a token,
    // served with one as apt's Basic credentials.
    server
        .tug(w, &["release", "api", "--env", "internal", "--build", &v1])
        .ok();
    let anonymous = Apt::new(&server.url, "internal", &key, None);
    let (ok, text) = anonymous.run("apt-get", &["update"]);
    assert!(!ok || text.contains("404"), "{text}");
    assert!(text.contains("404"), "{text}");
    let reader = server
        .tug(
            w,
            &[
                "token",
                "create",
                "--name",
                "apt-reader",
                "--role",
                "agent",
                "--service",
                "api",
                "--output",
                "json",
            ],
        )
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let machine = format!("machine {}/apt/api login apt password {reader}\n", server.url);
    let member = Apt::new(&server.url, "internal", &key, Some(&machine));
    member.update();
    assert_eq!(member.fetch("hello"), "1.0.0");
}

on_both_backends!(apt_get_installs_from_a_channel);

/// A small HTTP/1.1 proxy in front of the server that changes one byte of
/// every answer whose path ends with `suffix`: what a tampering mirror
/// would serve.
async fn tampering_proxy(upstream: String, suffix: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let res = reqwest::get(format!("{upstream}{path}")).await.unwrap();
                let status = res.status().as_u16();
                let mut body = res.bytes().await.unwrap().to_vec();
                if status == 200 && path.ends_with(suffix) && !body.is_empty() {
                    let i = body.len() / 2;
                    // A letter in a signed text stays a letter; any byte
                    // of a package changes its hash.
                    body[i] = if body[i] == b'a' { b'b' } else { b'a' };
                }
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_get_refuses_a_tampered_release_or_package() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    released(&server, w);
    let (_, key) = get(&format!("{}/apt/api/key.gpg", server.url)).await;

    // A changed InRelease: its signature no longer verifies.
    let proxy = tampering_proxy(server.url.clone(), "/InRelease").await;
    let apt = Apt::new(&proxy, "stable", &key, None);
    let (ok, text) = apt.run("apt-get", &["update"]);
    assert!(!ok || text.contains("E:") || text.contains("W:"), "{text}");
    assert!(text.contains("signature") || text.contains("BADSIG"), "{text}");
    let cached = apt.ok("apt-cache", &["madison", "hello"]);
    assert!(!cached.contains("1.0.0"), "nothing of a bad release is used:\n{cached}");

    // The same text, verified by gpgv against the key: fine as served,
    // refused once changed.
    let (_, in_release) = get(&format!("{}/apt/api/dists/stable/InRelease", server.url)).await;
    let gpgv = |bytes: &[u8]| {
        let f = apt.path().join("InRelease.check");
        std::fs::write(&f, bytes).unwrap();
        Command::new("gpgv")
            .arg("--keyring")
            .arg(apt.path().join("key.gpg"))
            .arg(&f)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(gpgv(&in_release));
    // A suite with nothing in it is signed as well.
    let (status, empty) = get(&format!("{}/apt/api/dists/beta/InRelease", server.url)).await;
    assert_eq!(status, 200);
    assert!(gpgv(&empty), "{}", String::from_utf8_lossy(&empty));
    let mut changed = in_release.clone();
    let at = String::from_utf8_lossy(&changed).find("Suite: stable").unwrap() + "Suite: s".len();
    changed[at] = b'T';
    assert!(!gpgv(&changed));

    // A changed package: apt's hash check refuses it.
    let proxy = tampering_proxy(server.url.clone(), ".deb").await;
    let apt = Apt::new(&proxy, "stable", &key, None);
    apt.update();
    let (ok, text) = apt.run("apt-get", &["download", "hello"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("Hash Sum mismatch") || text.contains("hash sum mismatch"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packages_and_paths_get_clear_errors() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    released(&server, w);

    // A .deb that is not one is refused, naming the artifact, and the
    // build keeps nothing of it.
    std::fs::write(w.join("fake_1.0_amd64.deb"), b"not really a package").unwrap();
    let id = server
        .tug(w, &["build", "create", "--service", "api", "--version", "0.9.0"])
        .ok()
        .trim()
        .to_string();
    let err = server.tug(w, &["push", &id, "fake_1.0_amd64.deb"]).fails().to_string();
    assert!(
        err.contains("not_a_debian_package") && err.contains("fake_1.0_amd64.deb") && err.contains("HTTP 422"),
        "{err}"
    );
    let shown = server.tug(w, &["build", "show", &id, "--output", "json"]).json();
    assert_eq!(shown["artifacts"].as_array().map(Vec::len), Some(0), "{shown}");
    // Given another kind, the same file is an ordinary artifact.
    server
        .tug(w, &["push", &id, "fake_1.0_amd64.deb", "--kind", "other"])
        .ok();

    let base = format!("{}/apt/api", server.url);
    let (status, release) = get(&format!("{base}/dists/stable/Release")).await;
    assert_eq!(status, 200);
    let release = String::from_utf8(release).unwrap();
    for line in [
        "Suite: stable",
        "Codename: stable",
        "Components: main",
        "Architectures: amd64 arm64",
        "Acquire-By-Hash: yes",
    ] {
        assert!(release.contains(line), "{line} missing:\n{release}");
    }
    let (status, packages) = get(&format!("{base}/dists/stable/main/binary-arm64/Packages")).await;
    assert_eq!(status, 200);
    let packages = String::from_utf8(packages).unwrap();
    assert!(
        packages.contains("Package: hello-data")
            && packages.contains("Architecture: arm64")
            && !packages.contains("amd64"),
        "{packages}"
    );
    let filename = packages
        .lines()
        .find_map(|l| l.strip_prefix("Filename: "))
        .unwrap()
        .to_string();

    for (path, status) in [
        ("/dists/stable/main/binary-s390x/Packages", 404),
        ("/dists/stable/main/binary-amd64/by-hash/SHA256/00", 404),
        ("/dists/nope/InRelease", 404),
        ("/dists/internal/InRelease", 404),
        ("/dists/stable/../../../etc/passwd", 404),
        ("/dists/stable/main/binary-amd64/%2e%2e/Packages", 404),
        ("/pool/stable/../internal/x.deb", 404),
    ] {
        let (got, body) = get(&format!("{base}{path}")).await;
        assert_eq!(got, status, "{path}: {}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{path}: not JSON"));
        assert!(v["code"].is_string() && v["message"].is_string(), "{path}: {v}");
    }
    let (got, _) = get(&format!("{}/apt/Not_A_Service/dists/stable/InRelease", server.url)).await;
    assert_eq!(got, 400);

    // Packages are served with Range; a range past the end is 416 with
    // the size.
    let client = reqwest::Client::new();
    let whole = client.get(format!("{base}/{filename}")).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    let size = whole.bytes().await.unwrap().len();
    let part = client
        .get(format!("{base}/{filename}"))
        .header("Range", "bytes=0-7")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(&part.bytes().await.unwrap()[..], b"!<arch>\n");
    let past = client
        .get(format!("{base}/{filename}"))
        .header("Range", format!("bytes={}-", size + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 416);
    assert_eq!(
        past.headers()["content-range"].to_str().unwrap(),
        format!("bytes */{size}")
    );
    // A token that is not a token is refused; one for another service
    // finds nothing here.
    let (got, _) = {
        let res = client
            .get(format!("{base}/dists/stable/InRelease"))
            .basic_auth("apt", Some("tug_nope"))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), ())
    };
    assert_eq!(got, 401);
}

/// An embargoed build's packages never reach a caller who may not see it:
/// an environment made public while it runs one serves an empty (signed)
/// suite without a token, and the build's packages to a token that sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embargoed_build_is_never_in_a_public_suite() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let v1 = released(&server, w);
    // Embargoed builds go to private environments only.
    apply(
        &server,
        w,
        &PIPELINE.replace("name = \"internal\"", "name = \"internal\"\nprivate = true"),
    );
    let dir = w.join("fix");
    std::fs::create_dir_all(&dir).unwrap();
    let fix = deb(&dir, "hello", "1.0.1", "amd64");
    let out = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--version",
                "1.0.1",
                "--embargo",
                "--seal",
                "--output",
                "json",
                fix.to_str().unwrap(),
            ],
        )
        .json();
    let fix_build = out["build"].as_str().unwrap().to_string();
    server
        .tug(w, &["release", "api", "--env", "internal", "--build", &v1])
        .ok();
    server
        .tug(w, &["release", "api", "--env", "internal", "--build", &fix_build])
        .ok();
    apply(
        &server,
        w,
        &PIPELINE.replace("name = \"internal\"", "name = \"internal\"\npublic = true"),
    );

    let base = format!("{}/apt/api/dists/internal", server.url);
    let (status, release) = get(&format!("{base}/Release")).await;
    assert_eq!(status, 200);
    let release = String::from_utf8(release).unwrap();
    assert!(release.contains("Date: Thu, 01 Jan 1970"), "{release}");
    assert!(!release.contains("binary-amd64"), "{release}");
    let (status, _) = get(&format!("{base}/main/binary-amd64/Packages")).await;
    assert_eq!(status, 404);
    let (_, key) = get(&format!("{}/apt/api/key.gpg", server.url)).await;
    let anonymous = Apt::new(&server.url, "internal", &key, None);
    anonymous.update();
    let (_, listed) = anonymous.run("apt-cache", &["madison", "hello"]);
    assert!(!listed.contains("1.0."), "{listed}");

    // The admin sees the build and the one before it.
    let admin = format!(
        "machine {}/apt/api login apt password {}\n",
        server.url, server.admin_token
    );
    let member = Apt::new(&server.url, "internal", &key, Some(&admin));
    member.update();
    assert_eq!(member.fetch("hello"), "1.0.1");
    let pool = format!("{}/apt/api/pool/internal/{fix_build}/hello_1.0.1_amd64.deb", server.url);
    assert_eq!(get(&pool).await.0, 404, "not without a token");
}
