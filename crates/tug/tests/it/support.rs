//! The real `tug` binary as a server on `127.0.0.1:0` in a temporary data
//! directory, and the same binary as a CLI run in a clean environment.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TUG: &str = env!("CARGO_BIN_EXE_tug");

/// Which database and blob store a server uses.
#[derive(Clone)]
pub enum Backend {
    /// The embedded defaults: SQLite and a directory under the data dir.
    Embedded,
    /// PostgreSQL and S3 (SeaweedFS) from the test command.
    Shared { database: String, s3: tug_testkit::S3Env },
}

impl Backend {
    pub async fn postgres_s3() -> Backend {
        Backend::Shared {
            database: tug_testkit::postgres_database().await,
            s3: tug_testkit::s3_env(),
        }
    }
}

pub struct TestServer {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub admin_token: String,
    backend: Backend,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// What a CLI run printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts failure and returns stderr.
    #[track_caller]
    pub fn fails(&self) -> &str {
        assert_ne!(
            self.code, 0,
            "command should have failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stderr
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(Backend::Embedded, &[]).await
    }

    pub async fn start_with(backend: Backend, extra: &[&str]) -> TestServer {
        TestServer::start_in(tempfile::tempdir().unwrap(), backend, extra, &[])
    }

    /// Starts in `dir` (where a `tug.toml` is read), with extra flags and
    /// environment variables.
    pub fn start_in(dir: tempfile::TempDir, backend: Backend, extra: &[&str], env: &[(&str, &str)]) -> TestServer {
        let mut s = TestServer {
            url: String::new(),
            dir,
            admin_token: String::new(),
            backend,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
        };
        s.spawn();
        s.admin_token = match std::fs::read_to_string(s.data_dir().join("admin.token")) {
            Ok(t) => t.trim().to_string(),
            Err(_) => String::new(),
        };
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("tug-data")
    }

    /// The database this server uses, for a test that changes it behind
    /// the server's back.
    pub fn database_url(&self) -> String {
        match &self.backend {
            Backend::Embedded => format!("sqlite://{}/tug.db", self.data_dir().display()),
            Backend::Shared { database, .. } => database.clone(),
        }
    }

    /// A second server on the same database and store (Shared backends) or
    /// the same data directory.
    pub async fn sibling(&self) -> TestServer {
        let mut s = TestServer::start_with(self.backend.clone(), &[]).await;
        s.admin_token = self.admin_token.clone();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(TUG);
        cmd.arg("server")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir());
        cmd.args(&self.extra).current_dir(self.dir.path());
        clean_env(&mut cmd, self.dir.path());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Backend::Shared { database, s3 } = &self.backend {
            cmd.arg("--database")
                .arg(database)
                .arg("--blob-store")
                .arg(s3.address());
            cmd.env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
                .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key);
        }
        std::fs::create_dir_all(self.dir.path()).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        cmd.stdout(Stdio::piped()).stderr(log);
        let mut child = cmd.spawn().expect("spawn tug server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let first = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("tug server did not start; log:\n{}", self.log())
        });
        let url = first
            .strip_prefix("Tugboat listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_string();
        self.url = url;
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server with SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server running");
        let pid = c.id().to_string();
        Command::new("kill").arg("-TERM").arg(&pid).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn client(&self) -> tug_client::Client {
        tug_client::Client::new(&self.url, Some(self.admin_token.clone())).unwrap()
    }

    pub fn client_with(&self, token: &str) -> tug_client::Client {
        tug_client::Client::new(&self.url, Some(token.to_string())).unwrap()
    }

    /// Runs the CLI as the admin, in `cwd`.
    pub fn tug(&self, cwd: &Path, args: &[&str]) -> Run {
        self.tug_as(&self.admin_token, cwd, args)
    }

    /// Runs the CLI with `token` (empty: no token at all).
    pub fn tug_as(&self, token: &str, cwd: &Path, args: &[&str]) -> Run {
        self.tug_env(token, cwd, &[], args)
    }

    /// The CLI as `tug_as` runs it, with stdout and stderr piped, not yet
    /// started: for tests that handle its pipes themselves.
    pub fn command(&self, token: &str, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
        let mut cmd = Command::new(TUG);
        cmd.args(args).current_dir(cwd);
        clean_env(&mut cmd, cwd);
        cmd.env("TUG_SERVER", &self.url);
        if !token.is_empty() {
            cmd.env("TUG_TOKEN", token);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// Runs the CLI as `tug_as` does, with extra environment variables.
    pub fn tug_env(&self, token: &str, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
        let out = self.command(token, cwd, env, args).output().expect("run tug");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A raw HTTP request builder with the admin token.
    pub fn http(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// No `TUG_*`, `AWS_*` or `HOME` from the developer's environment.
fn clean_env(cmd: &mut Command, home: &Path) {
    cmd.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("HOME", home);
    cmd.env("RUST_LOG", "info");
}

/// Polls `f` until it returns `Some`, for up to `secs` seconds.
pub fn eventually<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not reached within {secs}s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `files` (relative name, contents) under `dir`.
pub fn write_files(dir: &Path, files: &[(&str, &[u8])]) {
    for (name, body) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

pub fn digest_of(bytes: &[u8]) -> tug_core::Digest {
    tug_core::Digest::of(bytes)
}

/// A child process killed when the test ends, passed or not.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scenario as two tests: `$sqlite` on the embedded SQLite and directory,
/// `$postgres` on PostgreSQL and S3 from the test command.
macro_rules! on_both {
    ($scenario:ident, $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $scenario(&$crate::support::TestServer::start().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let backend = $crate::support::Backend::postgres_s3().await;
            $scenario(&$crate::support::TestServer::start_with(backend, &[]).await).await;
        }
    };
}

/// Runs `$scenario(backend)` as the tests `$scenario::sqlite` (the
/// embedded defaults) and `$scenario::postgres` (PostgreSQL and S3).
macro_rules! on_both_backends {
    ($scenario:ident) => {
        mod $scenario {
            use crate::support::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$scenario(Backend::Embedded).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$scenario(Backend::postgres_s3().await).await;
            }
        }
    };
}
