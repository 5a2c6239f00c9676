//! `TestApp`: Tugboat's router served in-process over a fresh database
//! (SQLite in a temporary directory, or a PostgreSQL database of its own)
//! and a filesystem blob store, with a clock the test sets. Between the
//! unit tests and the tests of the real binary: the rules that depend on
//! the time (soak, approval expiry, freeze and maintenance windows) are
//! tested at the moments that matter without waiting for them.
//!
//! The server runs no sweeper: a test sweeps when it wants the sweep done
//! ([`TestApp::sweep`]), at the time its clock says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use futures::TryStreamExt;
use tug_api::{AuditExportQuery, Event};
use tug_client::Client;
use tug_core::{BuildId, EnvName, Role, ServiceName, TokenName};
use tug_server::AppState;
use tug_service::{Settings, Tugboat};

/// The two databases Tugboat runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A clock that stands still until the test sets or advances it.
#[derive(Clone)]
pub struct TestClock(Arc<Mutex<DateTime<Utc>>>);

impl TestClock {
    pub fn at(t: DateTime<Utc>) -> TestClock {
        TestClock(Arc::new(Mutex::new(t)))
    }

    pub fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }

    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).expect("a test's step fits a chrono duration");
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *t += by;
    }

    /// The clock as the service takes it.
    fn source(&self) -> tug_service::Clock {
        let clock = self.clone();
        Arc::new(move || clock.now())
    }
}

/// How a [`TestApp`] is set up before it starts.
pub struct Builder {
    dialect: Dialect,
    now: DateTime<Utc>,
    settings: Settings,
}

impl Builder {
    /// The server's `approval_timeout` (environments may set their own).
    pub fn approval_timeout(mut self, timeout: Duration) -> Builder {
        self.settings.approval_timeout = timeout;
        self
    }

    pub async fn start(self) -> TestApp {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let database_url = match self.dialect {
            Dialect::Sqlite => format!("sqlite://{}", dir.path().join("tug.db").display()),
            Dialect::Postgres => tug_testkit::postgres_database().await,
        };
        let db = tug_db::Db::connect(&database_url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {database_url}: {e}"));
        let store = tug_store::open(&dir.path().join("blobs").display().to_string(), None).expect("a blob store");
        let clock = TestClock::at(self.now);
        let settings = Settings {
            upload_dir: dir.path().join("uploads"),
            ..self.settings
        };
        let tugboat = Tugboat::new(db, store, settings).with_clock(clock.source());
        let admin = tugboat
            .bootstrap_admin()
            .await
            .expect("the first admin token")
            .expect("a new database has no admin yet");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let router = tug_server::router(AppState::new(tugboat.clone(), 1 << 20));
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("the in-process server runs");
        });
        TestApp {
            tugboat,
            clock,
            addr,
            admin,
            server,
            _dir: dir,
        }
    }
}

/// A server in this process, its clock and its admin token.
pub struct TestApp {
    /// The use cases behind the router (to sweep, say).
    pub tugboat: Tugboat,
    pub clock: TestClock,
    addr: SocketAddr,
    admin: String,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestApp {
    /// A server on `dialect`, its clock at the present moment.
    pub fn builder(dialect: Dialect) -> Builder {
        Builder {
            dialect,
            // Whole seconds, as the event log's times are whole milliseconds.
            now: Utc::now().trunc_subsecs(0),
            settings: Settings::default(),
        }
    }

    pub async fn start(dialect: Dialect) -> TestApp {
        TestApp::builder(dialect).start().await
    }

    /// The server's base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The admin token's secret.
    pub fn admin_secret(&self) -> &str {
        &self.admin
    }

    /// A client with the admin token.
    pub fn admin(&self) -> Client {
        self.client_with(&self.admin)
    }

    pub fn client_with(&self, secret: &str) -> Client {
        Client::new(&format!("http://{}", self.addr), Some(secret.to_string())).expect("a client")
    }

    /// A new token's secret.
    pub async fn token(&self, name: &str, role: Role) -> String {
        let name = TokenName::parse(name).expect("a token name");
        self.admin()
            .create_token(name, role, None)
            .await
            .expect("a new token")
            .secret
    }

    /// Creates the service `pipeline` names and applies `pipeline` to it.
    pub async fn service(&self, pipeline: &str) -> ServiceName {
        let spec: toml::Table = pipeline.parse().expect("a pipeline in TOML");
        let name = spec["service"].as_str().expect("the pipeline names its service");
        let service = ServiceName::parse(name).expect("a service name");
        let admin = self.admin();
        admin.create_service(&service).await.expect("a new service");
        admin
            .apply_pipeline(&service, pipeline, None)
            .await
            .expect("the pipeline applies");
        service
    }

    /// A sealed build of `service` from `branch`, one artifact whose bytes
    /// name its version.
    pub async fn sealed(&self, service: &ServiceName, branch: &str, version: &str) -> BuildId {
        let client = self.admin();
        let build = client
            .create_build(&tug_api::CreateBuild {
                service: service.clone(),
                version: tug_core::Version::parse(version).expect("a version"),
                source: tug_core::BuildSource {
                    branch: Some(branch.into()),
                    ..Default::default()
                },
                ci: Default::default(),
                expected: vec![],
                embargoed: false,
            })
            .await
            .expect("a draft");
        let body = format!("{service} {version}").into_bytes();
        let digest = tug_core::Digest::of(&body);
        let size = body.len() as u64;
        client
            .put_blob_bytes(&digest, body)
            .await
            .expect("the artifact's bytes");
        let spec = tug_core::ArtifactSpec {
            name: tug_core::ArtifactName::parse("app.bin").expect("an artifact name"),
            kind: tug_core::ArtifactKind::Binary,
            platform: None,
            size,
            digest,
            derived_from: vec![],
            executable: false,
            uri: None,
        };
        client
            .register_artifacts(build.id.as_str(), vec![spec])
            .await
            .expect("the artifact registers");
        client.seal(build.id.as_str()).await.expect("the build seals");
        build.id
    }

    /// Releases `build` to `env` as the admin.
    pub async fn release(&self, service: &ServiceName, env: &str, build: &BuildId) -> tug_api::DeployResult {
        self.admin()
            .release(
                service,
                &tug_api::Release {
                    environment: env_name(env),
                    build: Some(build.to_string()),
                    branch: None,
                    version: None,
                    flags: Default::default(),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("release of {build} to {env}: {e}"))
    }

    /// Promotes to `env` with `client`, as asked (without a freeze
    /// override).
    pub async fn promote(
        &self,
        client: &Client,
        service: &ServiceName,
        env: &str,
    ) -> tug_client::Result<tug_api::DeployResult> {
        let req = tug_api::Promote {
            to: env_name(env),
            flags: Default::default(),
        };
        client.promote(service, &req).await
    }

    /// What the sweeper does when it wakes: expire the requests due by the
    /// clock and reconcile auto-releases.
    pub async fn sweep(&self) {
        self.tugboat.sweep().await.expect("the sweep runs");
    }

    /// The events of `kind` in the audit log, oldest first.
    pub async fn events(&self, kind: &str) -> Vec<Event> {
        let records: Vec<_> = self
            .admin()
            .audit_export(&AuditExportQuery::default())
            .await
            .expect("the audit export")
            .try_collect()
            .await
            .expect("every record of the audit export");
        records
            .into_iter()
            .map(|r| r.event)
            .filter(|e| e.kind() == kind)
            .collect()
    }
}

pub fn env_name(env: &str) -> EnvName {
    EnvName::parse(env).expect("an environment name")
}

/// A UTC instant written as RFC 3339.
pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

/// Runs each named `async fn(Dialect)` once on SQLite and once on
/// PostgreSQL, as tests `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! on_both_dialects {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::app::Dialect::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::app::Dialect::Postgres).await;
                }
            }
        )*
    };
}
