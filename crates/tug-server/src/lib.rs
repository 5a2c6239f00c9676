//! Tugboat's HTTP server: routes, authentication, the JSON error body and
//! the configuration. Handlers parse and authenticate, call one use case of
//! `tug-service` and shape the answer; rules live in the service and core.
//!
//! Only this crate knows about axum.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use tug_service::{Settings, Tugboat};

mod backends;
pub mod config;
mod error;
mod extract;
mod json_errors;
mod routes;

pub use backends::s3_credentials_from;
pub use config::{Config, Layer};
pub use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub tugboat: Tugboat,
    pub max_json_body: usize,
    /// The stamp of every environment's channel (what its answers are
    /// computed from), read from the database by a poller: cached answers
    /// are valid while their stamp stands, and long-polls wake when it
    /// moves, so they see changes made through any server sharing the
    /// database, whether or not an event said so.
    pub channels: tokio::sync::watch::Receiver<Arc<tug_service::ChannelStamps>>,
    /// How many tokens were ever revoked, updated by the same poller: held
    /// long-polls and event streams look their token up again when it
    /// moves, so a revocation through any server ends them within moments
    /// at the cost of one query per interval for the whole server.
    pub revocations: tokio::sync::watch::Receiver<i64>,
    /// Answers of Teleport's public version/critical endpoints, each with
    /// the stamp of the environment it was computed at.
    pub public_answers: PublicAnswers,
    /// Channel answers per service/env/platform, with the stamp of the
    /// environment they were computed at.
    pub channel_answers: ChannelAnswers,
    /// Held while a channel answer is computed: a change wakes every
    /// long-poll of a channel at once, and one of them reads the database
    /// while the others wait for its answer.
    pub channel_flights: Flights,
    /// The signed indexes of recent APT suite generations.
    pub apt: routes::apt::Cache,
}

impl AppState {
    /// The state of a server over `tugboat`, with its change watcher
    /// started (it ends when the state's last clone is dropped). Servers
    /// and in-process tests build their state here, so a test drives the
    /// same router a server serves.
    pub fn new(tugboat: Tugboat, max_json_body: usize) -> AppState {
        let (channels, revocations) = watch_changes(tugboat.clone());
        AppState {
            tugboat,
            max_json_body,
            channels,
            revocations,
            public_answers: Default::default(),
            channel_answers: Default::default(),
            channel_flights: Default::default(),
            apt: Default::default(),
        }
    }
}

/// See [`AppState::channel_answers`].
pub type ChannelAnswers =
    Arc<std::sync::RwLock<std::collections::HashMap<String, (tug_service::ChannelStamp, Arc<routes::agents::Answer>)>>>;

/// See [`AppState::public_answers`].
pub type PublicAnswers = Arc<std::sync::RwLock<std::collections::HashMap<String, (tug_service::ChannelStamp, String)>>>;

/// One lock per key, taken by the request that computes the key's answer
/// so that the requests that need the same answer at the same moment wait
/// for it instead of each computing it. See [`AppState::channel_flights`].
#[derive(Clone, Default)]
pub struct Flights(Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

/// Holds a key of [`Flights`] until dropped.
pub struct Flight {
    flights: Flights,
    key: String,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Flights {
    /// Waits until no other request holds `key`, then holds it. The caller
    /// looks in its cache again: the holder before it may have filled it.
    pub async fn hold(&self, key: &str) -> Flight {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.to_string())
            .or_default()
            .clone();
        Flight {
            flights: self.clone(),
            key: key.to_string(),
            _held: lock.lock_owned().await,
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        // Forget the key when nobody else holds or waits for it: the map and
        // this flight own the only references to its lock. (A waiter that
        // gives up leaves the key to the next flight of it to forget.)
        let mut locks = self.flights.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if locks.get(&self.key).is_some_and(|l| Arc::strong_count(l) <= 2) {
            locks.remove(&self.key);
        }
    }
}

/// The router over `tugboat` with the change poller that feeds its caches,
/// long-polls and event streams: what [`start`] serves, for use in-process
/// as well (a test sends it requests without a socket). Call it within a
/// tokio runtime: the poller is a task, which ends when the router is gone.
pub fn app(tugboat: Tugboat, max_json_body: usize) -> Router {
    router(AppState::new(tugboat, max_json_body))
}

pub fn router(state: AppState) -> Router {
    let blobs = Router::new()
        .route(
            "/v1/blobs/{digest}",
            get(routes::blobs::get)
                .head(routes::blobs::head)
                .put(routes::blobs::put),
        )
        // Blob bodies stream to the store and are limited by max_blob_size
        // there, not by the JSON limit.
        .layer(DefaultBodyLimit::disable());
    let api = Router::new()
        .route("/healthz", get(routes::health))
        .route("/metrics", get(routes::metrics::scrape))
        .route(
            "/v1/services",
            get(routes::services::list).post(routes::services::create),
        )
        .route("/v1/tokens", get(routes::tokens::list).post(routes::tokens::create))
        .route("/v1/tokens/{name}", delete(routes::tokens::revoke))
        .route("/v1/blobs/missing", post(routes::blobs::missing))
        .route("/v1/builds", get(routes::builds::list).post(routes::builds::create))
        .route("/v1/builds/{build}", get(routes::builds::show))
        .route("/v1/builds/{build}/manifest", get(routes::builds::manifest))
        .route("/v1/builds/{build}/artifacts", post(routes::builds::register))
        .route("/v1/builds/{build}/seal", post(routes::builds::seal))
        .route("/v1/builds/{build}/yank", post(routes::builds::yank))
        .route("/v1/builds/{build}/unembargo", post(routes::builds::unembargo))
        .route("/v1/builds/{build}/critical", post(routes::builds::mark_critical))
        .route(
            "/v1/services/{service}/pipeline",
            get(routes::deploy::show_pipeline).put(routes::deploy::apply_pipeline),
        )
        .route(
            "/v1/services/{service}/pipeline/history",
            get(routes::deploy::pipeline_history),
        )
        .route("/v1/services/{service}/release", post(routes::deploy::release))
        .route("/v1/services/{service}/promote", post(routes::deploy::promote))
        .route("/v1/services/{service}/rollback", post(routes::deploy::rollback))
        .route("/v1/services/{service}/approve", post(routes::deploy::approve))
        .route("/v1/services/{service}/reject", post(routes::deploy::reject))
        .route("/v1/services/{service}/status", get(routes::deploy::status))
        .route("/v1/services/{service}/next-version", get(routes::deploy::next_version))
        .route("/v1/services/{service}/diff", get(routes::deploy::diff))
        .route(
            "/v1/services/{service}/environments/{env}/history",
            get(routes::deploy::history),
        )
        .route(
            "/v1/services/{service}/environments/{env}/resume",
            post(routes::deploy::resume),
        )
        .route("/v1/events", get(routes::events::stream))
        .route("/v1/channels/{service}/{env}", get(routes::agents::channel))
        .route(
            "/v1/webapi/automaticupgrades/channel/{service}/{env}/version",
            get(routes::agents::teleport_version),
        )
        .route(
            "/v1/webapi/automaticupgrades/channel/{service}/{env}/critical",
            get(routes::agents::teleport_critical),
        )
        .route("/v1/agents/report", post(routes::agents::report))
        .route("/v1/agents", get(routes::agents::list))
        .route("/v1/services/{service}/rollout", get(routes::agents::rollout_status))
        .route("/v1/services/{service}/rollout/halt", post(routes::agents::halt))
        .route("/v1/services/{service}/rollout/resume", post(routes::agents::resume))
        .route("/v1/admin/fsck", post(routes::admin::fsck))
        .route("/v1/admin/gc", post(routes::admin::gc))
        .route("/v1/audit/verify", get(routes::audit::verify))
        .route("/v1/audit/export", get(routes::audit::export))
        .route(
            "/v1/webhooks",
            get(routes::webhooks::list).post(routes::webhooks::create),
        )
        .route("/v1/webhooks/{id}", delete(routes::webhooks::delete))
        .route("/v1/webhooks/{id}/deliveries", get(routes::webhooks::deliveries))
        .route(
            "/v1/webhooks/deliveries/{delivery}/redeliver",
            post(routes::webhooks::redeliver),
        )
        .layer(DefaultBodyLimit::max(state.max_json_body))
        .merge(blobs)
        .merge(routes::oci::router())
        .merge(routes::catalog::router())
        .merge(routes::apt::router())
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.tugboat.clone(),
            routes::metrics::track,
        ))
        .with_state(state);
    // Around the whole API, so that these layers see every answer as the
    // client gets it: a layer on the routes themselves runs inside each
    // route, before axum adds the `Allow` header to a 405.
    Router::new()
        .fallback_service(api)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(json_errors::panicked))
        .layer(axum::middleware::from_fn(json_errors::ensure_json))
}

/// A started server.
pub struct Started {
    pub addr: SocketAddr,
    /// Set when this start created the first admin token.
    pub admin_token_path: Option<PathBuf>,
    listener: tokio::net::TcpListener,
    router: Router,
    tugboat: Tugboat,
    header_read_timeout: Duration,
    /// The consumers this server runs while it holds their lease.
    consumers: Vec<Box<dyn tug_service::Consumer>>,
    /// The families of consumers (one per webhook, say) it runs likewise.
    families: Vec<std::sync::Arc<dyn tug_service::ConsumerFamily>>,
    lease: tug_service::LeaseOptions,
    /// How often the metric gates are sampled.
    verify_interval: Duration,
}

/// Checks the configuration, binds the listener, then opens the database
/// and the store (running migrations and removing what interrupted uploads
/// left) and creates the first admin token on a new installation. `env`
/// holds the variables the binary read (`AWS_*` credentials for an S3
/// store).
///
/// The socket comes first: a server that cannot listen (the port is taken,
/// the address is wrong) stops before it creates anything on disk.
pub async fn start(config: &Config, env: &std::collections::HashMap<String, String>) -> anyhow::Result<Started> {
    config.validate()?;
    let listener = listen(config.listen).await?;
    create_data_dir(&config.data_dir)?;
    let tugboat = backends::open(config, env, settings(config)).await?;
    start_with(config, listener, tugboat).await
}

/// The service's settings from the configuration.
fn settings(config: &Config) -> Settings {
    // A request fits in a third of the lease, as a consumer's handling must.
    let webhook_timeout =
        Duration::from_millis(config.webhook_timeout_ms).min(Duration::from_secs(config.consumer_lease_secs) / 3);
    Settings {
        max_blob_size: config.max_blob_size,
        draft_max_age: Duration::from_secs(config.draft_max_age_secs),
        gc_grace: Duration::from_secs(config.gc_grace_secs),
        server_rules: config.server_rules.clone(),
        approval_timeout: Duration::from_secs(config.approval_timeout_secs),
        webhooks: tug_service::WebhookSettings {
            timeout: webhook_timeout,
            connect_timeout: webhook_timeout.min(Duration::from_secs(1)),
            retry_for: Duration::from_secs(config.webhook_retry_secs),
            backoff_initial: Duration::from_millis(config.webhook_backoff_initial_ms),
            backoff_max: Duration::from_secs(config.webhook_backoff_max_secs),
            lease: Duration::from_secs(config.consumer_lease_secs),
        },
        upload_dir: config.data_dir.join("uploads"),
        apt: tug_service::AptSettings {
            key_file: Some(config.data_dir.join("apt").join("signing-key.asc")),
            // Checked to be 1 to 100 when the configuration is read.
            keep: usize::try_from(config.apt_keep).unwrap_or(1),
        },
        ..Settings::default()
    }
}

/// Binds `addr`, saying what to do when it cannot.
async fn listen(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use std::io::ErrorKind;
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let why = match e.kind() {
            ErrorKind::AddrInUse => "the address is in use (is another tug server running?)".to_string(),
            ErrorKind::AddrNotAvailable => "the address is not one of this machine's".to_string(),
            ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges)".to_string(),
            _ => e.to_string(),
        };
        anyhow::anyhow!("cannot listen on {addr}: {why}; choose another with --listen ADDR or TUG_LISTEN")
    })
}

/// Creates the data directory readable by its owner only (mode 0700,
/// whatever the umask), since it holds the database, the blobs and the
/// first admin token. An existing directory is left as it is, with a
/// warning if other users may enter it: changing the mode of a directory
/// someone chose is theirs to do.
fn create_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let context = || format!("cannot create data directory {}", dir.display());
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => anyhow::bail!(
            "data directory {} is not a directory; choose another with --data-dir DIR or TUG_DATA_DIR",
            dir.display()
        ),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "data directory {} has mode {mode:04o}: other users may read its database and blobs; \
                     restrict it with chmod 700 {}",
                    dir.display(),
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(context)?;
            // The mode given at creation is narrowed by the umask; set it
            // exactly.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(context)
        }
        Err(e) => Err(e).with_context(context),
    }
}

async fn start_with(config: &Config, listener: tokio::net::TcpListener, tugboat: Tugboat) -> anyhow::Result<Started> {
    // Before anything is appended: the log's old events come first in its
    // chain.
    tugboat
        .chain_old_events()
        .await
        .context("cannot chain the events recorded before the event log had a hash chain")?;
    let mut admin_token_path = None;
    if let Some(secret) = tugboat
        .bootstrap_admin()
        .await
        .context("cannot create the first admin token")?
    {
        let path = config.admin_token_path();
        write_secret(&path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
        admin_token_path = Some(path);
    }
    let mut consumers: Vec<Box<dyn tug_service::Consumer>> = Vec::new();
    if let Some(path) = &config.event_sink {
        let sink = tug_service::EventSink::open(path).with_context(|| {
            format!(
                "cannot open the event sink {} (tug.toml key event_sink, environment variable TUG_EVENT_SINK): \
                 give a file in an existing directory the server may write",
                path.display()
            )
        })?;
        consumers.push(Box::new(sink));
    }
    let families: Vec<std::sync::Arc<dyn tug_service::ConsumerFamily>> = vec![
        // One sender per webhook.
        std::sync::Arc::new(tug_service::WebhookFamily),
        // One writer per git repository a pipeline names (GitOps commits
        // and source-repository tags).
        std::sync::Arc::new(tug_service::GitWriters::new(
            config.git.settings(&config.data_dir)?,
            Duration::from_secs(config.consumer_lease_secs),
        )),
    ];
    let addr = listener.local_addr()?;
    let router = app(tugboat.clone(), config.max_json_body);
    Ok(Started {
        addr,
        admin_token_path,
        listener,
        router,
        tugboat,
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
        consumers,
        families,
        lease: tug_service::LeaseOptions::new(
            Duration::from_secs(config.consumer_lease_secs),
            std::env::var("HOSTNAME").ok().as_deref(),
        ),
        verify_interval: Duration::from_millis(config.verify_interval_ms),
    })
}

impl Started {
    pub fn tugboat(&self) -> &Tugboat {
        &self.tugboat
    }

    /// Serves until `shutdown` resolves, then finishes requests in flight.
    ///
    /// Connections are served by hyper's HTTP/1.1 connection builder
    /// rather than `axum::serve`, which offers no header-read timeout: a
    /// client that does not send a request's headers within the timeout,
    /// or keeps a connection idle between requests that long, is
    /// disconnected, so idle and half-open connections cannot pile up. A
    /// long-poll is unaffected: its headers arrived, and its answer may
    /// take as long as it waits.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Started {
            mut listener,
            router,
            tugboat,
            header_read_timeout,
            consumers,
            families,
            lease,
            verify_interval,
            ..
        } = self;
        // The routes are resolved once here and every connection shares
        // them (cloning a `Router<()>` clones a pointer). `axum::serve` of a
        // bare `Router` would rebuild the route table for every accepted
        // connection (`with_state` on a clone) and the connection would keep
        // its copy: about 37 KiB of heap per connection, most of what a held
        // long-poll cost.
        let router = router.with_state(());
        // Auto-release reconciliation and approval expiry: at once (a seal
        // whose release a crash lost is released now) and then periodically.
        let sweeper = tokio::spawn(tugboat.clone().sweeper(tug_service::SWEEP_EVERY));
        let verifier = tokio::spawn(tugboat.clone().verifier(verify_interval));
        // The consumers run beside the requests, never on their path.
        let (stop_consumers, stop) = tokio::sync::watch::channel(false);
        let consumers: Vec<_> = consumers
            .into_iter()
            .map(|c| tokio::spawn(tugboat.clone().run_consumer(c, lease.clone(), stop.clone())))
            .chain(
                families
                    .into_iter()
                    .map(|f| tokio::spawn(tugboat.clone().run_consumer_family(f, lease.clone(), stop.clone()))),
            )
            .collect();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .keep_alive(true);
        let connections = hyper_util::server::graceful::GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, _peer) = tokio::select! {
                // axum's accept retries on transient errors (too many open
                // files) instead of ending the server.
                accepted = axum::serve::Listener::accept(&mut listener) => accepted,
                () = &mut shutdown => break,
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            let connection = connections.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    // Clients that hang up or time out end here; nothing for
                    // the operator to do.
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        // No new connections; the open ones finish the request they serve.
        drop(listener);
        connections.shutdown().await;
        sweeper.abort();
        verifier.abort();
        // Stopping consumers give their leases up, so a server sharing the
        // database takes them over at once; one that does not stop in time
        // is cut off (its lease expires).
        let _ = stop_consumers.send(true);
        for c in consumers {
            if tokio::time::timeout(CONSUMER_STOP, c).await.is_err() {
                tracing::warn!("a consumer did not stop in time");
            }
        }
        tugboat.close().await;
        Ok(())
    }
}

/// How long a stopping server waits for its consumers to finish what they
/// are writing and give their leases up.
const CONSUMER_STOP: Duration = Duration::from_secs(5);

/// How often the server looks for changes made through any server.
const CHANGE_POLL: Duration = Duration::from_millis(200);

/// The stamps of every environment's channel, as the change poller
/// publishes them.
type Stamps = tokio::sync::watch::Receiver<Arc<tug_service::ChannelStamps>>;

/// Starts the poller that publishes the stamp of every environment's
/// channel and the number of revoked tokens. Two queries per interval for
/// the whole server, however many long-polls wait, and at once when this
/// server records an event or revokes a token; it ends when every receiver
/// is gone. The stamps are read from the environments themselves, not from
/// the event log, so a change whose event is late or lost reaches every
/// answer all the same.
fn watch_changes(tugboat: Tugboat) -> (Stamps, tokio::sync::watch::Receiver<i64>) {
    let (tx, rx) = tokio::sync::watch::channel(Arc::default());
    let (revoked_tx, revoked_rx) = tokio::sync::watch::channel(0);
    let recorded = tugboat.recorded();
    tokio::spawn(async move {
        loop {
            match tugboat.channel_stamps().await {
                Ok(stamps) => {
                    tx.send_if_modified(|seen| {
                        let moved = **seen != stamps;
                        if moved {
                            *seen = Arc::new(stamps);
                        }
                        moved
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the environments' channels"),
            }
            match tugboat.revocation_count().await {
                Ok(n) => {
                    revoked_tx.send_if_modified(|seen| std::mem::replace(seen, n) != n);
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the revoked tokens"),
            }
            if tx.is_closed() && revoked_tx.is_closed() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(CHANGE_POLL) => {}
                () = recorded.notified() => {}
            }
        }
    });
    (rx, revoked_rx)
}

/// Writes a secret readable by its owner only (mode 0600), atomically.
fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_request_fits_in_a_third_of_the_consumer_lease() {
        let mut c = Config::default();
        assert_eq!(settings(&c).webhooks.timeout, Duration::from_secs(2));
        c.consumer_lease_secs = 2;
        c.webhook_timeout_ms = 5000;
        let s = settings(&c).webhooks;
        assert!(s.timeout * 3 <= Duration::from_secs(2), "{:?}", s.timeout);
        assert!(s.connect_timeout <= s.timeout);
        assert_eq!(s.lease, Duration::from_secs(2));
    }
}
