//! The command line: every subcommand and flag, as clap derives them.
//!
//! One flag name means one thing in every command (`--output` is always
//! the format, `--dest` where files go, `--env` an environment); every
//! flag and argument says what it is for (a test walks the tree), and
//! flags with a fixed set of values offer them to `--help` and to the shell
//! completions `tug completions` writes.

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{value_parser, Arg, ArgAction, ArgGroup, ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use tug_core::pipeline::policies::{Flag, ValueKind};
use tug_core::pipeline::{FlagValues, POLICIES};
use tug_core::{ArtifactKind, Role};

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

/// Options every command takes, listed under their own heading.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// The Tugboat server to talk to.
    #[arg(
        long,
        global = true,
        env = "TUG_SERVER",
        default_value = "http://127.0.0.1:7700",
        value_name = "URL"
    )]
    pub server: String,
    /// API token; defaults to the local admin token in ./tug-data/admin.token.
    #[arg(long, global = true, env = "TUG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table, value_name = "FORMAT")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and sentences for people, fitted to the terminal (or $COLUMNS).
    Table,
    /// JSON for scripts: the server's answer as it is.
    Json,
}

/// What each role may do, for `--role`'s list of values.
fn role_help(role: Role) -> &'static str {
    match role {
        Role::Admin => "everything: tokens, services, pipelines, fsck, gc",
        Role::Ci => "create, fill and seal builds",
        Role::Deployer => "release, promote, roll back, yank",
        Role::Approver => "approve or reject waiting deployments",
        Role::Agent => "follow a channel and report, nothing else",
        Role::Viewer => "read everything, change nothing",
        Role::Metrics => "scrape /metrics (Prometheus), nothing else",
    }
}

/// `--role`: the role names, each with what it may do.
fn role_parser() -> impl TypedValueParser<Value = Role> {
    PossibleValuesParser::new(Role::ALL.map(|r| PossibleValue::new(r.as_str()).help(role_help(r))))
        .try_map(|s| s.parse::<Role>())
}

/// `--kind`: the artifact kinds.
fn kind_parser() -> impl TypedValueParser<Value = ArtifactKind> {
    PossibleValuesParser::new(ArtifactKind::ALL.map(ArtifactKind::as_str)).try_map(|s| s.parse::<ArtifactKind>())
}

/// `--policy`: the policies `tug policy delete` removes, as `tug policy
/// list` names them.
fn policy_name_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(POLICIES.iter().map(|p| p.name()))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Tugboat server.
    Server(ServerArgs),
    /// Print a shell completion script: tug completions bash > ~/.local/share/bash-completion/completions/tug
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage services (admin).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Send events to HTTP endpoints and Slack, signed (admin).
    #[command(subcommand)]
    Webhook(WebhookCommand),
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
    Status {
        /// The service.
        service: String,
    },
    /// The deployment log of an environment, newest first.
    History {
        /// The service.
        service: String,
        /// The environment whose deployments to list.
        #[arg(long = "env")]
        env: String,
        /// Show at most this many deployments.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// What changed between two environments (or two builds) of a service.
    Diff {
        /// The service.
        service: String,
        /// An environment, or a build (id, short id or manifest digest).
        #[arg(long)]
        from: String,
        /// An environment, or a build (id, short id or manifest digest).
        #[arg(long)]
        to: String,
    },
    /// Print events as they happen (deployments, approvals, builds, pipelines).
    Watch {
        /// Only this service's events.
        #[arg(long)]
        service: Option<String>,
        /// Replay events after this id first.
        #[arg(long, value_name = "ID")]
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
        /// Only agents of this service.
        #[arg(long)]
        service: Option<String>,
        /// Only agents following this environment.
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
    /// The audit log (admin): verify the event log's hash chain, export it.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the event log's hash chain; name the first event that was
    /// changed or whose predecessor is missing (exit status 1).
    Verify,
    /// Write the event log as JSON lines: every event whole, with its hashes.
    Export {
        /// Only events after this id, or recorded at or after this time
        /// (RFC 3339, e.g. 2026-11-22T00:00:00Z).
        #[arg(long, value_name = "ID|TIME")]
        since: Option<String>,
        /// Only this service's events.
        #[arg(long)]
        service: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Configuration file (default: ./tug.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the SQLite database, the blobs and the admin token live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:7700).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Blob store: a directory, or s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION (credentials from AWS_*).
    #[arg(long)]
    pub blob_store: Option<String>,
    /// The largest blob accepted, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_blob_size: Option<u64>,
    /// A server-wide branch restriction no pipeline can override, e.g.
    /// production=^master$ (repeatable).
    #[arg(long = "server-rule", value_name = "ENV=REGEX")]
    pub server_rules: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Create a webhook and print its secret (shown only once).
    Create {
        /// Where events are POSTed (http or https, no credentials in it).
        #[arg(long)]
        url: String,
        /// Only this service's events.
        #[arg(long)]
        service: Option<String>,
        /// Event kinds and patterns, comma-separated
        /// (deployment,approval.*,rollout.halted); default every event
        /// (slack: those it has a message for).
        #[arg(long)]
        events: Option<String>,
        /// standard (Standard Webhooks signatures), github (also
        /// X-Hub-Signature-256) or slack (Block Kit messages).
        #[arg(long, default_value = "standard", value_parser = webhook_kind)]
        kind: tug_core::webhook::WebhookKind,
    },
    /// List webhooks (never their secrets).
    List,
    /// Delete a webhook: nothing more is sent to it.
    Delete {
        /// The webhook's id or a unique prefix of it.
        id: String,
    },
    /// What became of the events sent to a webhook, newest first.
    Deliveries {
        /// The webhook's id or a unique prefix of it.
        id: String,
    },
    /// Send one delivery again now, with the same webhook-id.
    Redeliver {
        /// The delivery's id (msg_…, as tug webhook deliveries shows it).
        delivery: String,
    },
}

fn webhook_kind(s: &str) -> Result<tug_core::webhook::WebhookKind, String> {
    tug_core::webhook::WebhookKind::parse(s).ok_or_else(|| format!("unknown kind {s:?}: use standard, github or slack"))
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown only once).
    Create {
        /// A name for people to recognise the token by (unique among active tokens).
        #[arg(long)]
        name: String,
        /// What the token may do.
        #[arg(long, value_parser = role_parser())]
        role: Role,
        /// Limit the token to one service: it sees and acts on nothing
        /// else, whatever its role (not for admin tokens).
        #[arg(long)]
        service: Option<String>,
        /// Limit an agent token to one environment of --service: it
        /// follows only that one (the agents of a private environment need
        /// this to see the embargoed builds deployed there).
        #[arg(long, requires = "service")]
        env: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by name or id; it is refused at once.
    Revoke {
        /// The token's name, its id, or a unique prefix of its id (as tug token list shows it).
        #[arg(value_name = "NAME|ID")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create {
        /// The service's name: lowercase letters, digits, '-' or '_'.
        name: String,
    },
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
    /// The source branch the build was made from.
    #[arg(long)]
    pub branch: Option<String>,
    /// The source commit (its full sha).
    #[arg(long)]
    pub commit: Option<String>,
    /// The source tag, if the build was made from one.
    #[arg(long)]
    pub tag: Option<String>,
    /// The source repository's URL.
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,
    /// Who wrote the commit.
    #[arg(long)]
    pub author: Option<String>,
    /// The commit message.
    #[arg(long)]
    pub message: Option<String>,
    /// The CI run that made the build.
    #[arg(long, value_name = "URL")]
    pub ci_url: Option<String>,
    /// Digest of the image the build ran in.
    #[arg(long, value_name = "DIGEST")]
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
    Seal {
        /// The draft (id, short id or manifest digest).
        build: String,
    },
    /// Forbid any further deployment of a sealed build.
    Yank {
        /// The build (id, short id or manifest digest).
        build: String,
        /// Why: recorded with the yank and shown with the build.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a build's embargo (admin).
    Unembargo {
        /// The build (id, short id or manifest digest).
        build: String,
    },
    /// Mark a sealed build critical: agents install it at once.
    MarkCritical {
        /// The build (id, short id or manifest digest).
        build: String,
    },
    /// Show a build and its artifacts.
    Show {
        /// The build (id, short id or manifest digest).
        build: String,
        /// Print the derivation graph (source → tarball → deb → image).
        #[arg(long)]
        graph: bool,
    },
    /// List builds of a service, newest first.
    List {
        /// The service whose builds to list.
        #[arg(long)]
        service: String,
        /// Only builds of this branch.
        #[arg(long)]
        branch: Option<String>,
        /// Only builds with this version.
        #[arg(long)]
        version: Option<String>,
        /// Only builds in this state.
        #[arg(long, value_parser = ["draft", "sealed", "abandoned"])]
        state: Option<String>,
        /// Show at most this many builds.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// created (newest first) or version (highest semantic version first).
        #[arg(long, default_value = "created", value_parser = ["created", "version"])]
        sort: String,
    },
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The draft build, then files or directories. With --service, all
    /// arguments are files and a new build is created first.
    #[arg(required_unless_present = "reference", value_name = "BUILD|PATH")]
    pub args: Vec<String>,
    /// Register an artifact that is not a file: NAME=URI, an address
    /// outside the store (aws:ec2:us-east-1:ami-0abc…,
    /// registry.example.com/app@sha256:…). Needs --digest; give no files.
    #[arg(long, value_name = "NAME=URI", requires = "digest")]
    pub reference: Option<String>,
    /// The digest CI computed for the --reference (sha256:…).
    #[arg(long, value_name = "DIGEST", requires = "reference")]
    pub digest: Option<String>,
    #[command(flatten)]
    pub meta: BuildMeta,
    /// Seal the build after the push.
    #[arg(long)]
    pub seal: bool,
    /// Artifact kind for every file (default: guessed from the name).
    #[arg(long, value_parser = kind_parser())]
    pub kind: Option<ArtifactKind>,
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
    /// The build (id, short id or manifest digest).
    pub build: String,
    /// Only this artifact (repeatable).
    #[arg(long, value_name = "NAME")]
    pub artifact: Vec<String>,
    /// Directory to write the files into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dest: PathBuf,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep blobs younger than this many seconds (default: the server's gc_grace_secs).
    #[arg(long, value_name = "SECS")]
    pub grace: Option<u64>,
    /// Abandon drafts untouched for this many seconds (default: the server's draft_max_age_secs).
    #[arg(long, value_name = "SECS")]
    pub draft_max_age: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Validate and store a pipeline file; the service is named inside it.
    /// A file identical to the current pipeline stores no revision.
    Apply {
        /// The pipeline file (TOML), e.g. pipeline.toml.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Print a service's pipeline.
    Show {
        /// The service.
        service: String,
    },
    /// Every revision of a service's pipeline: who applied it, when, and what it changed.
    History {
        /// The service.
        service: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// How far the current build's rollout to the environment's agents is.
    Status {
        /// The service.
        service: String,
        /// The environment whose rollout to show.
        #[arg(long = "env")]
        env: String,
    },
    /// Stop the rollout: no further agent takes the build.
    Halt {
        /// The service.
        service: String,
        /// The environment whose rollout to halt.
        #[arg(long = "env")]
        env: String,
        /// Why: recorded and shown with the rollout.
        #[arg(long)]
        reason: String,
    },
    /// Let a halted rollout go on; the failures so far no longer count.
    Resume {
        /// The service.
        service: String,
        /// The environment whose rollout to resume.
        #[arg(long = "env")]
        env: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Lift the auto-release hold a manual release put on an environment.
    Resume {
        /// The service.
        service: String,
        /// The environment whose auto-release to resume.
        #[arg(long = "env")]
        env: String,
    },
    /// Every policy of a service's environments, and the server-wide rules.
    List {
        /// The service.
        service: String,
    },
    /// Set policies on one environment (a new pipeline revision); refused
    /// when it would change nothing.
    Apply(Box<PolicyApplyArgs>),
    /// Remove one policy from an environment (a new pipeline revision).
    Delete {
        /// The service.
        service: String,
        /// The environment to remove the policy from.
        #[arg(long = "env")]
        env: String,
        /// The policy to remove (every window, for freeze and maintenance).
        #[arg(long, value_parser = policy_name_parser())]
        policy: String,
    },
}

#[derive(Debug, Args)]
pub struct PolicyApplyArgs {
    /// The service.
    pub service: String,
    /// The environment to set policies on.
    #[arg(long = "env")]
    pub env: String,
    #[command(flatten)]
    pub policies: PolicyFlags,
}

/// The flags of `tug policy apply` that set policies, built from the
/// policy definitions (`tug_core::pipeline::policies`): each policy's flag
/// with its value's name, parser and help, and the flags that qualify one
/// (`--tz`, `--max-major-skew`), each given only with the policies it
/// qualifies. Parsing, `--help` and completions all come from there.
#[derive(Debug, Clone, Default)]
pub struct PolicyFlags(pub FlagValues);

/// Every flag of the policies, each once: the policies' own, then the
/// companions.
fn policy_flags() -> Vec<Flag> {
    let mut flags: Vec<Flag> = POLICIES.iter().map(|p| p.flag()).collect();
    for companion in POLICIES.iter().flat_map(|p| p.about().companions) {
        if !flags.contains(&companion.flag) {
            flags.push(companion.flag);
        }
    }
    flags
}

fn policy_arg(flag: Flag) -> Arg {
    let arg = Arg::new(flag.long)
        .long(flag.long)
        .value_name(flag.value_name)
        .help(flag.help)
        .action(ArgAction::Set);
    match flag.kind {
        ValueKind::Text => arg.value_parser(value_parser!(String)),
        ValueKind::U32 => arg.value_parser(value_parser!(u32)),
        ValueKind::U64 => arg.value_parser(value_parser!(u64)),
        ValueKind::Bool => arg.value_parser(value_parser!(bool)),
    }
}

impl Args for PolicyFlags {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for flag in policy_flags() {
            let mut arg = policy_arg(flag);
            match POLICIES.iter().find(|p| p.name() == flag.long) {
                // A policy's flag needs the companions it cannot do without.
                Some(policy) => {
                    for companion in policy.about().companions.iter().filter(|c| c.required) {
                        arg = arg.requires(companion.flag.long);
                    }
                }
                // A companion needs one of the policies it qualifies.
                None => {
                    let qualified = POLICIES
                        .iter()
                        .filter(|p| p.about().companions.iter().any(|c| c.flag == flag))
                        .map(|p| p.name());
                    let group = format!("{}-policies", flag.long);
                    cmd = cmd.group(ArgGroup::new(group.clone()).args(qualified).multiple(true));
                    arg = arg.requires(group);
                }
            }
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        PolicyFlags::augment_args(cmd)
    }
}

impl FromArgMatches for PolicyFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut values = FlagValues::new();
        for flag in policy_flags() {
            // The value as written: its parser has checked it (and that it
            // is UTF-8); the policy reads it.
            let Some(raw) = matches.get_raw(flag.long).and_then(|mut v| v.next()) else {
                continue;
            };
            let text = raw.to_str().ok_or_else(|| {
                clap::Error::raw(
                    clap::error::ErrorKind::InvalidUtf8,
                    format!("--{} is not UTF-8", flag.long),
                )
            })?;
            values.insert(flag.long, text);
        }
        Ok(PolicyFlags(values))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = PolicyFlags::from_arg_matches(matches)?;
        Ok(())
    }
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
    /// The service.
    pub service: String,
    /// The environment to release into.
    #[arg(long = "env")]
    pub env: String,
    /// The build (id, short id or manifest digest).
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
    /// The service.
    pub service: String,
    /// The environment to promote into (from its upstream).
    #[arg(long, value_name = "ENV")]
    pub to: String,
    #[command(flatten)]
    pub flags: OverrideArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The service.
    pub service: String,
    /// The environment to roll back.
    #[arg(long = "env")]
    pub env: String,
    /// An earlier build of the environment (id, short id or manifest digest; default: the previous one).
    #[arg(long, value_name = "BUILD")]
    pub to: Option<String>,
    #[command(flatten)]
    pub flags: OverrideArgs,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The service.
    pub service: String,
    /// The environment the deployment waits to enter.
    #[arg(long = "env")]
    pub env: String,
    /// The build whose deployment waits (id, short id or manifest digest).
    #[arg(long)]
    pub build: String,
}

#[derive(Debug, Subcommand)]
pub enum VersionCommand {
    /// Print the next version of a service.
    Next {
        /// The service.
        #[arg(long)]
        service: String,
        /// A cloud version v<major>.0.0-cloud.<UTC time>.<commit> (RFD 134); needs --commit.
        #[arg(long, group = "bump", requires = "commit")]
        cloud: bool,
        /// The newest stable version with its major number raised.
        #[arg(long, group = "bump")]
        major: bool,
        /// The newest stable version with its minor number raised.
        #[arg(long, group = "bump")]
        minor: bool,
        /// The newest stable version with its patch number raised.
        #[arg(long, group = "bump")]
        patch: bool,
        /// The source commit a cloud version names.
        #[arg(long)]
        commit: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The service whose builds to run.
    #[arg(long)]
    pub service: String,
    /// The environment to follow.
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
    #[arg(long, value_name = "URL")]
    pub health_url: Option<String>,
    /// A command run after each switch (instead of or before --exec).
    #[arg(long)]
    pub on_activate: Option<String>,
    /// How long a new release has to become healthy, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub health_timeout: u64,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub heartbeat: u64,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every argument of `cmd` and its subcommands without a help text, as
    /// `tug server --listen`.
    fn without_help(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() && sub.get_name() != "help" {
                out.push(format!("{path} {} (the command)", sub.get_name()));
            }
            without_help(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_command_flag_and_argument_has_help() {
        let mut missing = Vec::new();
        without_help(&Cli::command(), "tug", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn one_flag_name_means_one_kind_of_value_everywhere() {
        // The value name a long flag takes, per command; a flag name used
        // with two different value names (`--out DIR` beside `--output
        // FORMAT` was one) reads as two meanings.
        fn walk(
            cmd: &clap::Command,
            seen: &mut std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        ) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_action(), clap::ArgAction::Help | clap::ArgAction::Version);
                let Some(long) = arg.get_long().filter(|_| !builtin) else {
                    continue;
                };
                let value = if arg.get_action().takes_values() {
                    arg.get_value_names()
                        .map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" "))
                        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
                } else {
                    "(flag)".to_string()
                };
                seen.entry(long.to_string()).or_default().insert(value);
            }
            for sub in cmd.get_subcommands() {
                walk(sub, seen);
            }
        }
        let mut seen = Default::default();
        walk(&Cli::command(), &mut seen);
        let clashes: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
        // `--to` is the destination in both: an environment for promote and
        // diff, a build (of that environment) for rollback. `--since` is
        // where reading the event log starts: after an event id for watch,
        // after an id or from a time for the audit export.
        let allowed = ["to", "since"];
        let clashes: Vec<_> = clashes
            .into_iter()
            .filter(|(k, _)| !allowed.contains(&k.as_str()))
            .collect();
        assert!(clashes.is_empty(), "flags with two meanings: {clashes:#?}");
        assert!(!seen.contains_key("out"), "--out beside --output");
    }
}
