//! The server's one typed configuration, layered: built-in defaults <
//! `tug.toml` < `TUG_*` environment variables < command-line flags. The
//! caller hands in the file's text and the environment, so this module reads
//! nothing itself and tests build configurations in code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// A complete configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; `None` means `<data_dir>/tug.db`.
    pub database: Option<String>,
    /// A path or `s3://…`; `None` means the data directory itself
    /// (blobs under `<data_dir>/blobs/sha256/`).
    pub blob_store: Option<String>,
    pub max_blob_size: u64,
    pub max_json_body: usize,
    pub draft_max_age_secs: u64,
    pub gc_grace_secs: u64,
    /// How many builds an environment ran (the current one included) its
    /// APT suite lists, so an older version can be pinned.
    pub apt_keep: u64,
    /// Server-wide branch restrictions (`production=^master$`) that no
    /// service's pipeline can override.
    pub server_rules: Vec<tug_core::ServerRule>,
    /// How long a deployment waits for approvals when its environment sets
    /// no `approval_timeout`.
    pub approval_timeout_secs: u64,
    /// How long a client may take to send a request's headers; a
    /// connection that has not sent them by then, or that stays idle
    /// between requests that long, is closed.
    pub header_read_timeout_secs: u64,
    /// A file the event sink appends every event to, as JSON lines.
    pub event_sink: Option<PathBuf>,
    /// How long a server's lease on a consumer (the event sink) runs
    /// unless renewed: how long a dead server's consumers wait before
    /// another server sharing the database takes them over.
    pub consumer_lease_secs: u64,
    /// How often the metric gates (`verify`) query Prometheus, in
    /// milliseconds.
    pub verify_interval_ms: u64,
    /// How long one webhook request may take, answer included; at most a
    /// third of the consumer lease is used, as a consumer's handling must
    /// fit in it.
    pub webhook_timeout_ms: u64,
    /// How long a failing webhook delivery is retried before it is
    /// dead-lettered.
    pub webhook_retry_secs: u64,
    /// The wait after a webhook delivery's first failure, doubled after
    /// each further one…
    pub webhook_backoff_initial_ms: u64,
    /// …up to this.
    pub webhook_backoff_max_secs: u64,
    /// Who commits into git repositories, and with which credentials
    /// (`[git]`).
    pub git: GitConfig,
}

/// `[git]`: the identity of GitOps commits and the credentials for
/// repositories, never taken from pipeline files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    /// `Name <email>`; default `Tugboat <tugboat@localhost>`.
    pub author: Option<String>,
    #[serde(default)]
    pub credentials: Vec<GitCredentialConfig>,
}

/// `[[git.credentials]]`: for repositories whose address starts with
/// `prefix`, a token file (HTTPS) or an SSH key file. Only the files'
/// paths are configured, so `Debug` shows no secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitCredentialConfig {
    pub prefix: String,
    pub token_file: Option<PathBuf>,
    /// The user name the token is sent with (default `x-access-token`).
    pub username: Option<String>,
    pub ssh_key_file: Option<PathBuf>,
}

impl GitConfig {
    /// The service's git settings; the error names the key at fault.
    pub fn settings(&self, data_dir: &std::path::Path) -> Result<tug_service::GitSettings, ConfigError> {
        let mut settings = tug_service::GitSettings {
            work_dir: data_dir.join("git"),
            ..tug_service::GitSettings::default()
        };
        if let Some(author) = &self.author {
            let parsed = author
                .split_once('<')
                .and_then(|(name, rest)| Some((name.trim(), rest.strip_suffix('>')?.trim())))
                .filter(|(name, email)| !name.is_empty() && email.contains('@') && !email.contains(['<', '>']));
            let Some((name, email)) = parsed else {
                return Err(ConfigError::Invalid {
                    key: "git.author",
                    why: format!("{author:?} is not \"Name <email>\""),
                });
            };
            settings.author_name = name.to_string();
            settings.author_email = email.to_string();
        }
        for c in &self.credentials {
            if c.prefix.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "git.credentials.prefix",
                    why: "give the start of the repository addresses it is for, e.g. https://git.example.com/".into(),
                });
            }
            let secret = match (&c.token_file, &c.ssh_key_file) {
                (Some(file), None) => tug_service::GitSecret::Token {
                    file: file.clone(),
                    username: c.username.clone().unwrap_or_else(|| "x-access-token".into()),
                },
                (None, Some(file)) if c.username.is_none() => tug_service::GitSecret::SshKey { file: file.clone() },
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "git.credentials",
                        why: format!(
                            "{}: give either token_file (with an optional username) or ssh_key_file",
                            c.prefix
                        ),
                    })
                }
            };
            settings.credentials.push(tug_service::GitCredential {
                prefix: c.prefix.clone(),
                secret,
            });
        }
        Ok(settings)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            data_dir: PathBuf::from("tug-data"),
            database: None,
            blob_store: None,
            max_blob_size: 64 << 30,
            max_json_body: 16 << 20,
            draft_max_age_secs: 7 * 24 * 3600,
            gc_grace_secs: 3600,
            apt_keep: 3,
            server_rules: Vec::new(),
            approval_timeout_secs: 24 * 3600,
            header_read_timeout_secs: 10,
            event_sink: None,
            consumer_lease_secs: 10,
            verify_interval_ms: 15_000,
            webhook_timeout_ms: 2000,
            webhook_retry_secs: 24 * 3600,
            webhook_backoff_initial_ms: 1000,
            webhook_backoff_max_secs: 3600,
            git: GitConfig::default(),
        }
    }
}

/// Secrets (a database password) never reach logs through `Debug`.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database", &self.database.as_deref().map(redact))
            .field("blob_store", &self.blob_store)
            .field("max_blob_size", &self.max_blob_size)
            .field("max_json_body", &self.max_json_body)
            .field("draft_max_age_secs", &self.draft_max_age_secs)
            .field("gc_grace_secs", &self.gc_grace_secs)
            .field("apt_keep", &self.apt_keep)
            .field("server_rules", &self.server_rules)
            .field("approval_timeout_secs", &self.approval_timeout_secs)
            .field("header_read_timeout_secs", &self.header_read_timeout_secs)
            .field("event_sink", &self.event_sink)
            .field("consumer_lease_secs", &self.consumer_lease_secs)
            .field("verify_interval_ms", &self.verify_interval_ms)
            .field("webhook_timeout_ms", &self.webhook_timeout_ms)
            .field("webhook_retry_secs", &self.webhook_retry_secs)
            .field("webhook_backoff_initial_ms", &self.webhook_backoff_initial_ms)
            .field("webhook_backoff_max_secs", &self.webhook_backoff_max_secs)
            .field("git", &self.git)
            .finish()
    }
}

/// The database URL with any password replaced, for logs and messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &userinfo[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// One layer: every field optional. Also the shape of `tug.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database: Option<String>,
    pub blob_store: Option<String>,
    pub max_blob_size: Option<u64>,
    pub max_json_body: Option<usize>,
    pub draft_max_age_secs: Option<u64>,
    pub gc_grace_secs: Option<u64>,
    pub apt_keep: Option<u64>,
    pub server_rules: Option<Vec<tug_core::ServerRule>>,
    pub approval_timeout_secs: Option<u64>,
    pub header_read_timeout_secs: Option<u64>,
    pub event_sink: Option<PathBuf>,
    pub consumer_lease_secs: Option<u64>,
    pub verify_interval_ms: Option<u64>,
    pub webhook_timeout_ms: Option<u64>,
    pub webhook_retry_secs: Option<u64>,
    pub webhook_backoff_initial_ms: Option<u64>,
    pub webhook_backoff_max_secs: Option<u64>,
    pub git: Option<GitConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    File { path: String, source: toml::de::Error },
    #[error("environment variable {var}={value:?} is invalid: {why}")]
    Env { var: String, value: String, why: String },
    #[error("{key} is invalid: {why}")]
    Invalid { key: &'static str, why: String },
    #[error("{key} = {value} is out of range: use {range} (tug.toml key {key}, environment variable {var})")]
    OutOfRange {
        key: &'static str,
        var: &'static str,
        value: u64,
        range: String,
    },
}

/// The longest age a `*_secs` setting about stored data may give: a
/// century, far beyond any real retention, and far from the edge of the
/// representable instants that ages are subtracted from.
pub const MAX_AGE_SECS: u64 = 100 * 365 * 86_400;

/// The shortest header-read timeout. It also closes idle keep-alive
/// connections, and Tugboat's own clients drop theirs after 4 s idle: a
/// shorter timeout would close connections they are about to reuse.
pub const MIN_HEADER_READ_TIMEOUT_SECS: u64 = 5;

/// The longest header-read timeout: longer lets idle and slow clients hold
/// connections for no good reason.
pub const MAX_HEADER_READ_TIMEOUT_SECS: u64 = 300;

/// The longest consumer lease: a dead server's consumers wait that long
/// before another server takes them over.
pub const MAX_CONSUMER_LEASE_SECS: u64 = 600;

/// The shortest interval between two samples of the metric gates: faster
/// would only load Prometheus.
pub const MIN_VERIFY_INTERVAL_MS: u64 = 100;

/// The longest interval between two samples of the metric gates (an hour).
pub const MAX_VERIFY_INTERVAL_MS: u64 = 3_600_000;

/// The largest JSON body limit. Bodies are read into memory whole.
pub const MAX_JSON_BODY: u64 = 1 << 30;

impl Layer {
    /// Parses `tug.toml`; unknown keys are refused.
    pub fn from_toml(path: &str, text: &str) -> Result<Layer, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::File {
            path: path.to_string(),
            source,
        })
    }

    /// Reads the `TUG_*` variables out of `env`.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Layer, ConfigError> {
        fn num<T: std::str::FromStr>(env: &HashMap<String, String>, var: &str) -> Result<Option<T>, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            env.get(var)
                .map(|v| {
                    v.parse::<T>().map_err(|e| ConfigError::Env {
                        var: var.into(),
                        value: v.clone(),
                        why: e.to_string(),
                    })
                })
                .transpose()
        }
        Ok(Layer {
            listen: num(env, "TUG_LISTEN")?,
            data_dir: env.get("TUG_DATA_DIR").map(PathBuf::from),
            database: env.get("TUG_DATABASE").cloned(),
            blob_store: env.get("TUG_BLOB_STORE").cloned(),
            max_blob_size: num(env, "TUG_MAX_BLOB_SIZE")?,
            max_json_body: num(env, "TUG_MAX_JSON_BODY")?,
            draft_max_age_secs: num(env, "TUG_DRAFT_MAX_AGE_SECS")?,
            gc_grace_secs: num(env, "TUG_GC_GRACE_SECS")?,
            apt_keep: num(env, "TUG_APT_KEEP")?,
            approval_timeout_secs: num(env, "TUG_APPROVAL_TIMEOUT_SECS")?,
            header_read_timeout_secs: num(env, "TUG_HEADER_READ_TIMEOUT_SECS")?,
            event_sink: env.get("TUG_EVENT_SINK").map(PathBuf::from),
            consumer_lease_secs: num(env, "TUG_CONSUMER_LEASE_SECS")?,
            verify_interval_ms: num(env, "TUG_VERIFY_INTERVAL_MS")?,
            webhook_timeout_ms: num(env, "TUG_WEBHOOK_TIMEOUT_MS")?,
            webhook_retry_secs: num(env, "TUG_WEBHOOK_RETRY_SECS")?,
            webhook_backoff_initial_ms: num(env, "TUG_WEBHOOK_BACKOFF_INITIAL_MS")?,
            webhook_backoff_max_secs: num(env, "TUG_WEBHOOK_BACKOFF_MAX_SECS")?,
            // The author alone has a variable; credentials are files named
            // in tug.toml.
            git: env.get("TUG_GIT_AUTHOR").map(|a| GitConfig {
                author: Some(a.clone()),
                credentials: Vec::new(),
            }),
            server_rules: env
                .get("TUG_SERVER_RULES")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|r| !r.is_empty())
                        .map(|r| {
                            tug_core::ServerRule::parse(r).map_err(|e| ConfigError::Env {
                                var: "TUG_SERVER_RULES".into(),
                                value: v.clone(),
                                why: e.to_string(),
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?,
        })
    }
}

impl Config {
    /// Applies a layer on top: its set fields win.
    pub fn apply(mut self, l: Layer) -> Config {
        if let Some(v) = l.listen {
            self.listen = v;
        }
        if let Some(v) = l.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = l.database {
            self.database = Some(v);
        }
        if let Some(v) = l.blob_store {
            self.blob_store = Some(v);
        }
        if let Some(v) = l.max_blob_size {
            self.max_blob_size = v;
        }
        if let Some(v) = l.max_json_body {
            self.max_json_body = v;
        }
        if let Some(v) = l.draft_max_age_secs {
            self.draft_max_age_secs = v;
        }
        if let Some(v) = l.gc_grace_secs {
            self.gc_grace_secs = v;
        }
        if let Some(v) = l.apt_keep {
            self.apt_keep = v;
        }
        if let Some(v) = l.server_rules {
            self.server_rules = v;
        }
        if let Some(v) = l.approval_timeout_secs {
            self.approval_timeout_secs = v;
        }
        if let Some(v) = l.header_read_timeout_secs {
            self.header_read_timeout_secs = v;
        }
        if let Some(v) = l.event_sink {
            self.event_sink = Some(v);
        }
        if let Some(v) = l.consumer_lease_secs {
            self.consumer_lease_secs = v;
        }
        if let Some(v) = l.verify_interval_ms {
            self.verify_interval_ms = v;
        }
        if let Some(v) = l.webhook_timeout_ms {
            self.webhook_timeout_ms = v;
        }
        if let Some(v) = l.webhook_retry_secs {
            self.webhook_retry_secs = v;
        }
        if let Some(v) = l.webhook_backoff_initial_ms {
            self.webhook_backoff_initial_ms = v;
        }
        if let Some(v) = l.webhook_backoff_max_secs {
            self.webhook_backoff_max_secs = v;
        }
        if let Some(v) = l.git {
            // A layer's author replaces; its credentials, when it has any,
            // replace the whole list.
            if v.author.is_some() {
                self.git.author = v.author;
            }
            if !v.credentials.is_empty() {
                self.git.credentials = v.credentials;
            }
        }
        self
    }

    /// Refuses values that are out of range, naming the key and its range:
    /// every duration and size here is used in arithmetic on times and
    /// sizes, which must never overflow.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let secs = |max: u64| format!("0 to {max} seconds");
        let checks: [(&'static str, &'static str, u64, u64, u64, String); 13] = [
            (
                "max_blob_size",
                "TUG_MAX_BLOB_SIZE",
                self.max_blob_size,
                1,
                u64::MAX,
                "at least 1 byte".into(),
            ),
            (
                "max_json_body",
                "TUG_MAX_JSON_BODY",
                self.max_json_body as u64,
                1024,
                MAX_JSON_BODY,
                format!("1024 to {MAX_JSON_BODY} bytes"),
            ),
            (
                "draft_max_age_secs",
                "TUG_DRAFT_MAX_AGE_SECS",
                self.draft_max_age_secs,
                0,
                MAX_AGE_SECS,
                secs(MAX_AGE_SECS),
            ),
            (
                "gc_grace_secs",
                "TUG_GC_GRACE_SECS",
                self.gc_grace_secs,
                0,
                MAX_AGE_SECS,
                secs(MAX_AGE_SECS),
            ),
            (
                "apt_keep",
                "TUG_APT_KEEP",
                self.apt_keep,
                1,
                100,
                "1 to 100 builds".to_string(),
            ),
            (
                "approval_timeout_secs",
                "TUG_APPROVAL_TIMEOUT_SECS",
                self.approval_timeout_secs,
                1,
                tug_core::pipeline::MAX_DURATION.as_secs(),
                format!("1 to {} seconds (a year)", tug_core::pipeline::MAX_DURATION.as_secs()),
            ),
            (
                "header_read_timeout_secs",
                "TUG_HEADER_READ_TIMEOUT_SECS",
                self.header_read_timeout_secs,
                MIN_HEADER_READ_TIMEOUT_SECS,
                MAX_HEADER_READ_TIMEOUT_SECS,
                format!("{MIN_HEADER_READ_TIMEOUT_SECS} to {MAX_HEADER_READ_TIMEOUT_SECS} seconds"),
            ),
            (
                "consumer_lease_secs",
                "TUG_CONSUMER_LEASE_SECS",
                self.consumer_lease_secs,
                1,
                MAX_CONSUMER_LEASE_SECS,
                format!("1 to {MAX_CONSUMER_LEASE_SECS} seconds"),
            ),
            (
                "verify_interval_ms",
                "TUG_VERIFY_INTERVAL_MS",
                self.verify_interval_ms,
                MIN_VERIFY_INTERVAL_MS,
                MAX_VERIFY_INTERVAL_MS,
                format!("{MIN_VERIFY_INTERVAL_MS} to {MAX_VERIFY_INTERVAL_MS} milliseconds"),
            ),
            (
                "webhook_timeout_ms",
                "TUG_WEBHOOK_TIMEOUT_MS",
                self.webhook_timeout_ms,
                100,
                60_000,
                "100 to 60000 milliseconds".into(),
            ),
            (
                "webhook_retry_secs",
                "TUG_WEBHOOK_RETRY_SECS",
                self.webhook_retry_secs,
                0,
                tug_core::pipeline::MAX_DURATION.as_secs(),
                format!("0 to {} seconds (a year)", tug_core::pipeline::MAX_DURATION.as_secs()),
            ),
            (
                "webhook_backoff_initial_ms",
                "TUG_WEBHOOK_BACKOFF_INITIAL_MS",
                self.webhook_backoff_initial_ms,
                10,
                3_600_000,
                "10 to 3600000 milliseconds".into(),
            ),
            (
                "webhook_backoff_max_secs",
                "TUG_WEBHOOK_BACKOFF_MAX_SECS",
                self.webhook_backoff_max_secs,
                1,
                86_400,
                "1 to 86400 seconds".into(),
            ),
        ];
        for (key, var, value, min, max, range) in checks {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::OutOfRange { key, var, value, range });
            }
        }
        self.git.settings(&self.data_dir)?;
        Ok(())
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("tug.db").display()))
    }

    /// The blob store address in force.
    pub fn blob_store_address(&self) -> String {
        self.blob_store
            .clone()
            .unwrap_or_else(|| self.data_dir.display().to_string())
    }

    /// Where the first admin token is written.
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let file = Layer::from_toml(
            "tug.toml",
            "listen = \"127.0.0.1:8000\"\ndata_dir = \"/srv/tug\"\nmax_blob_size = 10",
        )
        .unwrap();
        let env: HashMap<String, String> = [("TUG_LISTEN".to_string(), "127.0.0.1:9000".to_string())]
            .into_iter()
            .collect();
        let flags = Layer {
            max_blob_size: Some(20),
            ..Default::default()
        };
        let c = Config::default()
            .apply(file)
            .apply(Layer::from_env(&env).unwrap())
            .apply(flags);
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.data_dir, PathBuf::from("/srv/tug"));
        assert_eq!(c.max_blob_size, 20);
        assert_eq!(c.database_url(), "sqlite:///srv/tug/tug.db");
        assert_eq!(c.blob_store_address(), "/srv/tug");
    }

    #[test]
    fn server_rules_come_from_the_file_or_the_environment() {
        let file = Layer::from_toml("tug.toml", "server_rules = [\"production=^master$\"]").unwrap();
        let c = Config::default().apply(file);
        assert_eq!(c.server_rules.len(), 1);
        assert_eq!(c.server_rules[0].to_string(), "production=^master$");
        let env: HashMap<String, String> = [(
            "TUG_SERVER_RULES".to_string(),
            "production=^master$, trials=^(master|release/.*)$".to_string(),
        )]
        .into_iter()
        .collect();
        assert_eq!(
            Config::default()
                .apply(Layer::from_env(&env).unwrap())
                .server_rules
                .len(),
            2
        );
        let bad: HashMap<String, String> = [("TUG_SERVER_RULES".to_string(), "production=^(master".to_string())]
            .into_iter()
            .collect();
        assert!(Layer::from_env(&bad)
            .unwrap_err()
            .to_string()
            .contains("TUG_SERVER_RULES"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let err = Layer::from_toml("tug.toml", "lisen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `lisen`"), "{err}");
        let env: HashMap<String, String> = [("TUG_MAX_BLOB_SIZE".to_string(), "lots".to_string())]
            .into_iter()
            .collect();
        let err = Layer::from_env(&env).unwrap_err();
        assert!(err.to_string().contains("TUG_MAX_BLOB_SIZE"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_key_and_range() {
        Config::default().validate().unwrap();
        let env: HashMap<String, String> = [("TUG_HEADER_READ_TIMEOUT_SECS".to_string(), "5".to_string())]
            .into_iter()
            .collect();
        let c = Config::default().apply(Layer::from_env(&env).unwrap());
        assert_eq!(c.header_read_timeout_secs, 5);
        c.validate().unwrap();
        for (toml, key) in [
            ("header_read_timeout_secs = 4", "header_read_timeout_secs"),
            ("header_read_timeout_secs = 301", "header_read_timeout_secs"),
            ("approval_timeout_secs = 8639999913600", "approval_timeout_secs"),
            ("approval_timeout_secs = 0", "approval_timeout_secs"),
            ("gc_grace_secs = 9000000000000", "gc_grace_secs"),
            ("apt_keep = 0", "apt_keep"),
            ("apt_keep = 101", "apt_keep"),
            ("draft_max_age_secs = 9223372036854775807", "draft_max_age_secs"),
            ("max_json_body = 0", "max_json_body"),
            ("consumer_lease_secs = 0", "consumer_lease_secs"),
            ("consumer_lease_secs = 601", "consumer_lease_secs"),
            ("max_blob_size = 0", "max_blob_size"),
            ("webhook_timeout_ms = 99", "webhook_timeout_ms"),
            ("webhook_timeout_ms = 60001", "webhook_timeout_ms"),
            ("webhook_retry_secs = 99999999999", "webhook_retry_secs"),
            ("webhook_backoff_initial_ms = 1", "webhook_backoff_initial_ms"),
            ("webhook_backoff_max_secs = 0", "webhook_backoff_max_secs"),
        ] {
            let c = Config::default().apply(Layer::from_toml("tug.toml", toml).unwrap());
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{key} = ")) && err.contains("out of range"),
                "{toml}: {err}"
            );
            assert!(err.contains(&format!("TUG_{}", key.to_uppercase())), "{err}");
        }
    }

    #[test]
    fn git_identity_and_credentials() {
        let file = Layer::from_toml(
            "tug.toml",
            "[git]\nauthor = \"Release Bot <bot@example.com>\"\n[[git.credentials]]\nprefix = \"https://git.example.com/\"\ntoken_file = \"/etc/tug/git-token\"\n[[git.credentials]]\nprefix = \"ssh://\"\nssh_key_file = \"/etc/tug/id\"\n",
        )
        .unwrap();
        let c = Config::default().apply(file);
        let s = c.git.settings(std::path::Path::new("/srv/tug")).unwrap();
        assert_eq!(
            (s.author_name.as_str(), s.author_email.as_str()),
            ("Release Bot", "bot@example.com")
        );
        assert_eq!(s.credentials.len(), 2);
        assert_eq!(s.work_dir, PathBuf::from("/srv/tug/git"));
        let env: HashMap<String, String> = [("TUG_GIT_AUTHOR".to_string(), "Ops <ops@example.com>".to_string())]
            .into_iter()
            .collect();
        let c = c.apply(Layer::from_env(&env).unwrap());
        assert_eq!(c.git.author.as_deref(), Some("Ops <ops@example.com>"));
        assert_eq!(c.git.credentials.len(), 2, "the variable keeps the file's credentials");
        for (toml, key) in [
            ("[git]\nauthor = \"nobody\"", "git.author is invalid"),
            (
                "[[git.credentials]]\nprefix = \"https://x/\"\ntoken_file = \"/a\"\nssh_key_file = \"/b\"",
                "git.credentials is invalid",
            ),
            (
                "[[git.credentials]]\nprefix = \"\"\ntoken_file = \"/a\"",
                "git.credentials.prefix",
            ),
        ] {
            let c = Config::default().apply(Layer::from_toml("tug.toml", toml).unwrap());
            let err = c.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{toml}: {err}");
        }
        let err = Layer::from_toml("tug.toml", "[[git.credentials]]\nprefix = \"x\"\ntoken = \"s3cret\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `token`"), "{err}");
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let c = Config {
            database: Some("postgres://tug:hunter2@db/tug".into()),
            ..Default::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://tug:***@db/tug"), "{shown}");
    }
}
