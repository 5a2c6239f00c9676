//! The command line: every subcommand and flag, as clap derives them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tug",
    version,
    about = "Tugboat: builds in a content-addressed store, moved through environments"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The Tugboat server to talk to.
    #[arg(long, global = true, env = "TUG_SERVER", default_value = "http://127.0.0.1:7700")]
    pub server: String,
    /// API token; defaults to the local admin token in ./tug-data/admin.token.
    #[arg(long, global = true, env = "TUG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Tugboat server.
    Server(ServerArgs),
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage services (admin).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Create, seal, show and list builds.
    #[command(subcommand)]
    Build(BuildCommand),
    /// Upload files into a draft build (only blobs the server lacks travel).
    Push(PushArgs),
    /// Download a build's artifacts, verifying every digest.
    Pull(PullArgs),
    /// Apply and show a service's pipeline of environments.
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Put a build into an environment.
    Release(ReleaseArgs),
    /// Take what runs upstream into an environment (no byte is copied).
    Promote(PromoteArgs),
    /// Put the previous (or a named earlier) build back into an environment.
    Rollback(RollbackArgs),
    /// Approve a deployment waiting for approvals.
    Approve(DecideArgs),
    /// Reject a deployment waiting for approvals.
    Reject(DecideArgs),
    /// What every environment of a service runs.
    Status { service: String },
    /// The deployment log of an environment, newest first.
    History {
        service: String,
        #[arg(long = "env")]
        env: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// What changed between two environments (or two builds) of a service.
    Diff {
        service: String,
        /// An environment, or a build id or manifest digest.
        #[arg(long)]
        from: String,
        /// An environment, or a build id or manifest digest.
        #[arg(long)]
        to: String,
    },
    /// Print events as they happen (deployments, approvals, builds, pipelines).
    Watch {
        /// Only this service's events.
        #[arg(long)]
        service: Option<String>,
        /// Replay events after this id first.
        #[arg(long)]
        since: Option<i64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Follow an environment's channel on this machine: fetch, verify,
    /// switch atomically, (re)start, health-check, roll back, report.
    Agent(AgentArgs),
    /// Agents with their build, state and last heartbeat.
    Agents {
        #[arg(long)]
        service: Option<String>,
        #[arg(long = "env")]
        env: Option<String>,
    },
    /// Version helpers.
    #[command(subcommand)]
    Version(VersionCommand),
    /// Policy actions.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Paced rollouts to an environment's agents: status, halt, resume.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Re-hash every stored blob and report those that no longer match, with the builds that need them.
    Fsck {
        /// Move corrupt blobs aside so that pushing the right file stores them again.
        #[arg(long)]
        repair: bool,
    },
    /// Abandon stale drafts and delete blobs no build refers to.
    Gc(GcArgs),
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Configuration file (default: ./tug.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the SQLite database, the blobs and the admin token live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long)]
    pub database: Option<String>,
    /// Blob store: a directory, or s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION (credentials from AWS_*).
    #[arg(long)]
    pub blob_store: Option<String>,
    /// The largest blob accepted, in bytes.
    #[arg(long)]
    pub max_blob_size: Option<u64>,
    /// A server-wide branch restriction no pipeline can override, e.g.
    /// production=^master$ (repeatable).
    #[arg(long = "server-rule", value_name = "ENV=REGEX")]
    pub server_rules: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown only once).
    Create {
        #[arg(long)]
        name: String,
        /// admin, ci, deployer, approver, agent or viewer.
        #[arg(long)]
        role: String,
        /// Limit the token to one service's builds.
        #[arg(long)]
        service: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by name or id; it is refused at once.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create { name: String },
    /// List services.
    List,
}

#[derive(Debug, Args, Clone, Default)]
pub struct BuildMeta {
    /// The service this build belongs to.
    #[arg(long)]
    pub service: Option<String>,
    /// Semantic version (default: 0.0.0-g<commit> when --commit is given).
    #[arg(long)]
    pub version: Option<String>,
    #[arg(long)]
    pub branch: Option<String>,
    #[arg(long)]
    pub commit: Option<String>,
    #[arg(long)]
    pub tag: Option<String>,
    #[arg(long)]
    pub repo: Option<String>,
    #[arg(long)]
    pub author: Option<String>,
    #[arg(long)]
    pub message: Option<String>,
    #[arg(long)]
    pub ci_url: Option<String>,
    /// Digest of the image the build ran in.
    #[arg(long)]
    pub builder_image: Option<String>,
    /// An artifact that must be present before sealing (repeatable).
    #[arg(long = "expect", value_name = "NAME")]
    pub expect: Vec<String>,
    /// A security release: visible to admins and approvers only and
    /// deployable to private environments only, until unembargoed.
    #[arg(long)]
    pub embargo: bool,
}

#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// Create a draft build and print its id.
    Create(BuildMeta),
    /// Seal a draft: it gets its manifest digest and never changes again.
    Seal { build: String },
    /// Forbid any further deployment of a sealed build.
    Yank {
        build: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a build's embargo (admin).
    Unembargo { build: String },
    /// Mark a sealed build critical: agents install it at once.
    MarkCritical { build: String },
    /// Show a build (by id or manifest digest) and its artifacts.
    Show {
        build: String,
        /// Print the derivation graph (source → tarball → deb → image).
        #[arg(long)]
        graph: bool,
    },
    /// List builds of a service, newest first.
    List {
        #[arg(long)]
        service: String,
        #[arg(long)]
        branch: Option<String>,
        #[arg(long)]
        version: Option<String>,
        /// draft, sealed or abandoned.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// created (newest first) or version (highest semantic version first).
        #[arg(long, default_value = "created")]
        sort: String,
    },
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The draft build, then files or directories. With --service, all
    /// arguments are files and a new build is created first.
    #[arg(required = true, value_name = "BUILD|PATH")]
    pub args: Vec<String>,
    #[command(flatten)]
    pub meta: BuildMeta,
    /// Seal the build after the push.
    #[arg(long)]
    pub seal: bool,
    /// Artifact kind for every file (default: guessed from the name).
    #[arg(long)]
    pub kind: Option<String>,
    /// Platform for every file, e.g. linux/amd64.
    #[arg(long)]
    pub platform: Option<String>,
    /// What these files were made from: an artifact name or a digest (repeatable).
    #[arg(long = "derived-from", value_name = "NAME|DIGEST")]
    pub derived_from: Vec<String>,
    /// Artifact name for a single file (default: its file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Blobs uploaded at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Build id or manifest digest.
    pub build: String,
    /// Only this artifact (repeatable).
    #[arg(long)]
    pub artifact: Vec<String>,
    /// Directory to write into.
    #[arg(short = 'o', long = "out", default_value = ".")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep blobs younger than this many seconds (default: the server's gc_grace_secs).
    #[arg(long)]
    pub grace: Option<u64>,
    /// Abandon drafts untouched for this many seconds (default: the server's draft_max_age_secs).
    #[arg(long)]
    pub draft_max_age: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Validate and store a pipeline file; the service is named inside it.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Print a service's pipeline.
    Show { service: String },
    /// Every revision of a service's pipeline: who applied it and when.
    History { service: String },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// How far the current build's rollout to the environment's agents is.
    Status {
        service: String,
        #[arg(long = "env")]
        env: String,
    },
    /// Stop the rollout: no further agent takes the build.
    Halt {
        service: String,
        #[arg(long = "env")]
        env: String,
        /// Why: recorded and shown with the rollout.
        #[arg(long)]
        reason: String,
    },
    /// Let a halted rollout go on; the failures so far no longer count.
    Resume {
        service: String,
        #[arg(long = "env")]
        env: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Lift the auto-release hold a manual release put on an environment.
    Resume {
        service: String,
        #[arg(long = "env")]
        env: String,
    },
    /// Every policy of a service's environments, and the server-wide rules.
    List { service: String },
    /// Set policies on one environment (a new pipeline revision).
    Apply(Box<PolicyApplyArgs>),
    /// Remove one policy from an environment (a new pipeline revision).
    Delete {
        service: String,
        #[arg(long = "env")]
        env: String,
        /// auto-release, branch-restriction, soak, soak-healthy, approvals, approval-timeout, freeze, private,
        /// rollout, maintenance or compatible-with.
        #[arg(long)]
        policy: String,
    },
}

#[derive(Debug, Args)]
pub struct PolicyApplyArgs {
    pub service: String,
    #[arg(long = "env")]
    pub env: String,
    /// Release every sealed build of this branch into the environment.
    #[arg(long)]
    pub auto_release: Option<String>,
    /// A regex the build's branch must match.
    #[arg(long)]
    pub branch_restriction: Option<String>,
    /// How long a build must have run upstream, e.g. 1h.
    #[arg(long)]
    pub soak: Option<String>,
    /// Distinct approvals needed.
    #[arg(long)]
    pub approvals: Option<u32>,
    /// How long a deployment waits for approvals, e.g. 24h.
    #[arg(long)]
    pub approval_timeout: Option<String>,
    /// Add a weekly freeze window, e.g. "Sat 00:00 - Mon 06:00" (with --tz).
    #[arg(long)]
    pub freeze: Option<String>,
    /// Time zone of --freeze and --maintenance (default UTC).
    #[arg(long)]
    pub tz: Option<String>,
    /// Add a maintenance window, e.g. "Mon-Fri 02:00 - 04:00" (with --tz):
    /// agents update only inside maintenance windows, unless the build is critical.
    #[arg(long)]
    pub maintenance: Option<String>,
    /// Count soak time only while this share of the upstream's agents are healthy, e.g. 90%.
    #[arg(long)]
    pub soak_healthy: Option<String>,
    /// Refuse builds too far ahead of the oldest agent of this service in the environment.
    #[arg(long, requires = "max_major_skew")]
    pub compatible_with: Option<String>,
    /// How many major versions a build may be ahead of that oldest agent.
    #[arg(long, requires = "compatible_with")]
    pub max_major_skew: Option<u64>,
    /// Make the environment private (the only kind embargoed builds enter).
    #[arg(long)]
    pub private: Option<bool>,
}

#[derive(Debug, Args, Clone)]
pub struct OverrideArgs {
    /// Deploy through a freeze window (admin only; needs --reason).
    #[arg(long = "override")]
    pub override_freeze: bool,
    /// Why: recorded with the deployment.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    pub service: String,
    #[arg(long = "env")]
    pub env: String,
    /// A build id or manifest digest.
    #[arg(long, group = "which")]
    pub build: Option<String>,
    /// The newest sealed build of this branch.
    #[arg(long, group = "which")]
    pub branch: Option<String>,
    /// The newest sealed build with this version.
    #[arg(long, group = "which")]
    pub version: Option<String>,
    #[command(flatten)]
    pub flags: OverrideArgs,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    pub service: String,
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub flags: OverrideArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    pub service: String,
    #[arg(long = "env")]
    pub env: String,
    /// An earlier build of the environment (default: the previous one).
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub flags: OverrideArgs,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    pub service: String,
    #[arg(long = "env")]
    pub env: String,
    /// The build whose deployment waits (id or manifest digest).
    #[arg(long)]
    pub build: String,
}

#[derive(Debug, Subcommand)]
pub enum VersionCommand {
    /// Print the next version of a service.
    Next {
        #[arg(long)]
        service: String,
        /// A cloud version v<major>.0.0-cloud.<UTC time>.<commit> (RFD 134); needs --commit.
        #[arg(long, group = "bump", requires = "commit")]
        cloud: bool,
        #[arg(long, group = "bump")]
        major: bool,
        #[arg(long, group = "bump")]
        minor: bool,
        #[arg(long, group = "bump")]
        patch: bool,
        #[arg(long)]
        commit: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[arg(long)]
    pub service: String,
    #[arg(long = "env")]
    pub env: String,
    /// Where releases, the blob cache and the agent's state live.
    #[arg(long)]
    pub dir: PathBuf,
    /// Platform whose artifacts to fetch (default: this machine's, e.g. linux/amd64).
    #[arg(long)]
    pub platform: Option<String>,
    /// A command to run and supervise from the current release (restarted on update).
    #[arg(long)]
    pub exec: Option<String>,
    /// A command whose exit status 0 means healthy.
    #[arg(long, conflicts_with = "health_url")]
    pub health_cmd: Option<String>,
    /// A URL that answers 2xx when healthy.
    #[arg(long)]
    pub health_url: Option<String>,
    /// A command run after each switch (instead of or before --exec).
    #[arg(long)]
    pub on_activate: Option<String>,
    /// How long a new release has to become healthy, in seconds.
    #[arg(long, default_value_t = 30)]
    pub health_timeout: u64,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 10)]
    pub heartbeat: u64,
}
