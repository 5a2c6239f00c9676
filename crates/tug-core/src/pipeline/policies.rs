//! Each policy of an environment, defined once.
//!
//! A policy is one unit type implementing [`Policy`]: its name (as `tug
//! policy list` shows it, `tug policy delete --policy` takes it and `tug
//! policy apply` spells its flag), its key in the pipeline file, its flag's
//! value and help, how it is read from the file (with its checks) and
//! written back, how it is listed, set from the command line and deleted,
//! and whether it holds one value or several. [`POLICIES`] lists them in
//! the one order used everywhere: the file's fields, the listing, the
//! changes between revisions and the flags.
//!
//! The command line builds its flags from these definitions (the crate
//! depends on no CLI library: a [`Flag`] only describes one); the file
//! format is [`super::spec::EnvironmentSpec`], whose fields a test holds to
//! the keys here.

use std::collections::BTreeMap;
use std::time::Duration;

use super::duration::{format_duration, parse_duration};
use super::environment::{BranchRestriction, Compatibility, EnvName, Environment};
use super::gitops::{GitOps, GitOpsSpec};
use super::rollout::{parse_percent, Rollout};
use super::spec::{AutoReleaseSpec, CompatibilitySpec, EnvironmentSpec, RolloutSpec, WindowSpec};
use super::validation::{PipelineError, MAX_APPROVALS, MAX_BRANCH_BYTES, MAX_DURATION, MAX_WINDOWS};
use super::verify::{Verify, VerifySpec};
use super::window::{self, TimeWindow};
use crate::names::{shown, ServiceName};

/// How a flag's value is written. The command line picks its parser (and
/// so its message for a value of the wrong kind) from this; the policy
/// checks everything else when the pipeline is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Text,
    /// A whole number that fits in 32 bits.
    U32,
    /// A whole number that fits in 64 bits.
    U64,
    /// `true` or `false`.
    Bool,
}

/// One flag of `tug policy apply`, described for the command line to
/// build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    /// The flag without its leading `--`.
    pub long: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
    pub kind: ValueKind,
}

/// A flag that qualifies a policy's own flag and is given only with it:
/// `--tz` for windows, `--max-major-skew` for `--compatible-with`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Companion {
    pub flag: Flag,
    /// Whether the policy's flag needs it too.
    pub required: bool,
}

/// The time zone of the weekly windows `--freeze` and `--maintenance` add.
const TZ: Companion = Companion {
    flag: Flag {
        long: "tz",
        value_name: "ZONE",
        help: "Time zone of --freeze and --maintenance (default UTC), e.g. Europe/Berlin",
        kind: ValueKind::Text,
    },
    required: false,
};

/// How far ahead of the oldest agent `--compatible-with` lets a build be.
const MAX_MAJOR_SKEW: Companion = Companion {
    flag: Flag {
        long: "max-major-skew",
        value_name: "N",
        help: "How many major versions a build may be ahead of that oldest agent",
        kind: ValueKind::U64,
    },
    required: true,
};

/// The values of the flags given to `tug policy apply`, by long name, as
/// written (the command line has already checked each value's kind).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagValues(BTreeMap<String, String>);

impl FlagValues {
    pub fn new() -> FlagValues {
        FlagValues::default()
    }

    pub fn insert(&mut self, long: &str, value: &str) {
        self.0.insert(long.to_string(), value.to_string());
    }

    pub fn get(&self, long: &str) -> Option<&str> {
        self.0.get(long).map(String::as_str)
    }

    /// Whether any policy's own flag is given (a companion alone sets
    /// nothing).
    pub fn sets_a_policy(&self) -> bool {
        POLICIES.iter().any(|p| self.get(p.name()).is_some())
    }
}

/// Why `tug policy apply` cannot set what its flags say, before anything
/// is sent: the value cannot be read, or it would change nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("--{flag} {value:?} is invalid: {why}")]
    Value {
        flag: &'static str,
        value: String,
        why: String,
    },
    #[error("{kind} window: {why}")]
    Window { kind: &'static str, why: String },
    #[error("nothing to change: {env} already has {kind} window {window}")]
    WindowTwice {
        env: String,
        kind: &'static str,
        window: TimeWindow,
    },
}

/// What a policy is called and how its flag is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct About {
    /// The name `tug policy list` shows, `tug policy delete --policy`
    /// takes and `tug policy apply` spells its flag with.
    pub name: &'static str,
    /// The key in an `[[environments]]` table of the pipeline file: the
    /// name, with `_` for `-`.
    pub key: &'static str,
    /// How the flag's value is named in `--help`.
    pub value_name: &'static str,
    /// What the flag sets, for `--help` and completions.
    pub help: &'static str,
    pub kind: ValueKind,
    /// The flags that qualify the policy's flag.
    pub companions: &'static [Companion],
    /// Whether the policy holds several values (windows), listed one per
    /// line and compared between revisions as a set; otherwise one value,
    /// which a revision adds, removes or changes.
    pub multi: bool,
}

/// One policy of an environment. Each method concerns only this policy's
/// field of the file form and of [`Environment`].
pub trait Policy: Sync {
    /// What the policy is called, and how its flag is written.
    fn about(&self) -> About;

    /// The name `tug policy list` shows, `tug policy delete --policy`
    /// takes and `tug policy apply` spells its flag with.
    fn name(&self) -> &'static str {
        self.about().name
    }

    /// The key of the policy in an `[[environments]]` table of the
    /// pipeline file.
    fn key(&self) -> &'static str {
        self.about().key
    }

    /// The flag of `tug policy apply` that sets the policy.
    fn flag(&self) -> Flag {
        let about = self.about();
        Flag {
            long: about.name,
            value_name: about.value_name,
            help: about.help,
            kind: about.kind,
        }
    }

    /// Reads and checks the policy as written into `env`, whose earlier
    /// policies in [`POLICIES`] are already read (a check may depend on
    /// them: `soak-healthy` needs a soak and an upstream).
    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError>;

    /// Writes the policy of `env` into its file form.
    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec);

    /// The policy's values as `tug policy list` shows them; none when it is
    /// not set.
    fn list(&self, env: &Environment) -> Vec<String>;

    /// Sets the policy from its flag's `value` (and its companions' among
    /// `flags`). The pipeline is validated afterwards as a whole.
    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, flags: &FlagValues) -> Result<(), ApplyError>;

    /// Removes the policy (every window of a window policy); whether it was
    /// set.
    fn delete(&self, spec: &mut EnvironmentSpec) -> bool;
}

/// Every policy, in the one order of the file's fields, the listing, the
/// changes between revisions and the flags.
pub static POLICIES: &[&dyn Policy] = &[
    &UpstreamPolicy,
    &AutoReleasePolicy,
    &BranchRestrictionPolicy,
    &SoakPolicy,
    &ApprovalsPolicy,
    &ApprovalTimeoutPolicy,
    &FreezePolicy,
    &PrivatePolicy,
    &PublicPolicy,
    &SoakHealthyPolicy,
    &RolloutPolicy,
    &MaintenancePolicy,
    &CompatibleWithPolicy,
    &VerifyPolicy,
    &GitOpsPolicy,
];

/// The environment's place in the pipeline, listed with its policies; a
/// new environment shows it on its own line.
pub static UPSTREAM: &dyn Policy = &UpstreamPolicy;

/// The value a yes/no policy is listed with when it is set.
pub(crate) const YES: &str = "true";

/// The policy called `name`.
pub fn policy(name: &str) -> Option<&'static dyn Policy> {
    POLICIES.iter().copied().find(|p| p.name() == name)
}

/// One value of a policy of an environment as people read it:
/// `approvals` = `2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    pub policy: &'static str,
    pub value: String,
}

/// Every policy of `env` that is set, in the order of [`POLICIES`], each
/// window its own entry.
pub fn listing(env: &Environment) -> Vec<PolicyEntry> {
    POLICIES
        .iter()
        .flat_map(|p| {
            p.list(env).into_iter().map(|value| PolicyEntry {
                policy: p.name(),
                value,
            })
        })
        .collect()
}

/// Sets on `spec` every policy whose flag is among `flags`, in the order
/// of [`POLICIES`].
pub fn apply_flags(spec: &mut EnvironmentSpec, flags: &FlagValues) -> Result<(), ApplyError> {
    for policy in POLICIES {
        if let Some(value) = flags.get(policy.name()) {
            policy.apply(spec, value, flags)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Helpers the definitions share.

/// A value as `tug policy list` shows it, when set.
fn listed<T>(value: Option<T>, text: impl FnOnce(T) -> String) -> Vec<String> {
    value.map(text).into_iter().collect()
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Reads a duration policy, at most [`MAX_DURATION`].
fn read_duration(
    env: &EnvName,
    field: &'static str,
    value: Option<&String>,
) -> Result<Option<Duration>, PipelineError> {
    let Some(text) = value else {
        return Ok(None);
    };
    match parse_duration(text) {
        None => Err(PipelineError::Duration {
            env: env.clone(),
            field,
            value: shown(text),
        }),
        Some(d) if d > MAX_DURATION => Err(PipelineError::DurationTooLong {
            env: env.clone(),
            field,
            value: shown(text),
        }),
        Some(d) => Ok(Some(d)),
    }
}

/// Reads a window policy: at most [`MAX_WINDOWS`], each valid; `bad`
/// makes the error that names a window as written and why it is wrong.
fn read_windows(
    env: &EnvName,
    field: &'static str,
    specs: &[WindowSpec],
    bad: fn(EnvName, String, String) -> PipelineError,
) -> Result<Vec<TimeWindow>, PipelineError> {
    if specs.len() > MAX_WINDOWS {
        return Err(PipelineError::TooManyWindows {
            env: env.clone(),
            field,
            count: specs.len(),
        });
    }
    specs
        .iter()
        .map(|w| TimeWindow::from_spec(w).map_err(|why| bad(env.clone(), window::written(w), why)))
        .collect()
}

/// Adds a weekly or daily window (in time zone `tz`, default UTC) unless
/// an equal one is there: the same window twice changes nothing.
fn add_window(
    env: &str,
    kind: &'static str,
    list: &mut Vec<WindowSpec>,
    weekly: &str,
    tz: Option<&str>,
) -> Result<(), ApplyError> {
    let spec = WindowSpec {
        weekly: Some(weekly.to_string()),
        tz: tz.map(str::to_string),
        ..WindowSpec::default()
    };
    let window = TimeWindow::from_spec(&spec).map_err(|why| ApplyError::Window { kind, why })?;
    if list.iter().any(|w| TimeWindow::from_spec(w).is_ok_and(|w| w == window)) {
        return Err(ApplyError::WindowTwice {
            env: env.to_string(),
            kind,
            window,
        });
    }
    list.push(spec);
    Ok(())
}

/// A flag's value of a kind the command line has already checked.
fn parsed<T: std::str::FromStr>(flag: &'static str, value: &str) -> Result<T, ApplyError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ApplyError::Value {
        flag,
        value: shown(value),
        why: e.to_string(),
    })
}

/// Reads `--rollout`'s `KEY=VALUE,…`: the keys and values of `rollout =
/// { … }` in the pipeline file, without quotes, so one vocabulary serves
/// both. Whole numbers and `true`/`false` are read as such, everything else
/// as text; the file form's own reader then says what is missing.
fn parse_rollout_flag(text: &str) -> Result<RolloutSpec, String> {
    use ValueRead::Auto;
    parse_key_values(
        text,
        &[
            ("strategy", Auto),
            ("count", Auto),
            ("then", Auto),
            ("max_in_flight", Auto),
            ("halt_after_failures", Auto),
            ("auto_rollback", Auto),
        ],
    )
}

/// How [`parse_key_values`] reads a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueRead {
    /// As text, whatever it looks like (a URL, a query, a path).
    Text,
    /// As a number (a bound).
    Number,
    /// A whole number or `true`/`false` as such, anything else as text.
    Auto,
}

/// Reads `KEY=VALUE,…` into the file form of a table policy (`--rollout`,
/// `--verify`, `--gitops`), whose keys are `keys`. A value may hold commas
/// and `=` (a query's `sum by (a, b) (x{c="d"})`): it ends only where
/// `,KEY=` of one of the keys begins.
fn parse_key_values<T: serde::de::DeserializeOwned>(text: &str, keys: &[(&str, ValueRead)]) -> Result<T, String> {
    let mut table = toml::Table::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("{:?} is not KEY=VALUE", shown(rest)))?;
        let key = key.trim();
        let Some(&(_, read)) = keys.iter().find(|(k, _)| *k == key) else {
            let names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            return Err(format!("unknown key {:?}: use {}", shown(key), names.join(", ")));
        };
        // The first comma followed by another key and its `=`: one of
        // `keys`, or, after a value that is not text (which never holds a
        // comma), any word, so that an unknown key is named as such.
        let starts_key = |next: &str| {
            let next = next.trim_start();
            let word = next
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("");
            let is_key = |k: &str| next.strip_prefix(k).is_some_and(|r| r.trim_start().starts_with('='));
            keys.iter().any(|(k, _)| is_key(k)) || (read != ValueRead::Text && !word.is_empty() && is_key(word))
        };
        let end = after
            .match_indices(',')
            .map(|(i, _)| i)
            .find(|&i| starts_key(&after[i + 1..]))
            .unwrap_or(after.len());
        let value = after[..end].trim();
        rest = after[end..].trim_start_matches(',').trim();
        let value = match read {
            ValueRead::Text => toml::Value::String(value.to_string()),
            ValueRead::Number => toml::Value::Float(
                value
                    .parse::<f64>()
                    .map_err(|_| format!("{key} {:?} is not a number", shown(value)))?,
            ),
            ValueRead::Auto => {
                if let Ok(n) = value.parse::<i64>() {
                    toml::Value::Integer(n)
                } else if let Ok(b) = value.parse::<bool>() {
                    toml::Value::Boolean(b)
                } else {
                    toml::Value::String(value.to_string())
                }
            }
        };
        if table.insert(key.to_string(), value).is_some() {
            return Err(format!("{} is given twice", shown(key)));
        }
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())
}

// ---------------------------------------------------------------------------
// The policies.

struct UpstreamPolicy;

impl Policy for UpstreamPolicy {
    fn about(&self) -> About {
        About {
            name: "upstream",
            key: "upstream",
            value_name: "ENV",
            help: "The environment builds are promoted from",
            kind: ValueKind::Text,
            companions: &[],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        let Some(up) = &spec.upstream else {
            return Ok(());
        };
        let up = EnvName::parse(up).map_err(|_| PipelineError::InvalidUpstream {
            env: env.name.clone(),
            upstream: shown(up),
        })?;
        if up == env.name {
            return Err(PipelineError::SelfUpstream { env: env.name.clone() });
        }
        env.upstream = Some(up);
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.upstream = env.upstream.as_ref().map(EnvName::to_string);
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(env.upstream.as_ref(), EnvName::to_string)
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, _: &FlagValues) -> Result<(), ApplyError> {
        spec.upstream = Some(value.to_string());
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        spec.upstream.take().is_some()
    }
}

struct AutoReleasePolicy;

impl Policy for AutoReleasePolicy {
    fn about(&self) -> About {
        About {
            name: "auto-release",
            key: "auto_release",
            value_name: "BRANCH",
            help: "Release every sealed build of this branch into the environment",
            kind: ValueKind::Text,
            companions: &[],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        let Some(AutoReleaseSpec { branch }) = &spec.auto_release else {
            return Ok(());
        };
        let bad = branch.trim().is_empty()
            || branch.len() > MAX_BRANCH_BYTES
            || branch.chars().any(|c| c.is_control() || c.is_whitespace());
        if bad {
            return Err(PipelineError::AutoReleaseBranch {
                env: env.name.clone(),
                branch: shown(branch),
            });
        }
        env.auto_release = Some(branch.clone());
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.auto_release = env.auto_release.as_ref().map(|b| AutoReleaseSpec { branch: b.clone() });
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(env.auto_release.as_ref(), String::clone)
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, _: &FlagValues) -> Result<(), ApplyError> {
        spec.auto_release = Some(AutoReleaseSpec {
            branch: value.to_string(),
        });
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        spec.auto_release.take().is_some()
    }
}

struct BranchRestrictionPolicy;

impl Policy for BranchRestrictionPolicy {
    fn about(&self) -> About {
        About {
            name: "branch-restriction",
            key: "branch_restriction",
            value_name: "REGEX",
            help: "A regex the build's branch must match",
            kind: ValueKind::Text,
            companions: &[],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        let Some(pattern) = &spec.branch_restriction else {
            return Ok(());
        };
        let restriction = BranchRestriction::new(pattern).map_err(|message| PipelineError::Regex {
            env: env.name.clone(),
            pattern: shown(pattern),
            message,
        })?;
        // Auto-release that its own restriction refuses would fail on every
        // push; say so when the file is applied rather than at 3 a.m.
        if let Some(branch) = &env.auto_release {
            if !restriction.matches(branch) {
                return Err(PipelineError::AutoReleaseConflict {
                    env: env.name.clone(),
                    branch: branch.clone(),
                    restriction: restriction.to_string(),
                });
            }
        }
        env.branch_restriction = Some(restriction);
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.branch_restriction = env.branch_restriction.as_ref().map(|r| r.as_str().to_string());
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(env.branch_restriction.as_ref(), BranchRestriction::to_string)
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, _: &FlagValues) -> Result<(), ApplyError> {
        spec.branch_restriction = Some(value.to_string());
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        spec.branch_restriction.take().is_some()
    }
}

struct SoakPolicy;

impl Policy for SoakPolicy {
    fn about(&self) -> About {
        About {
            name: "soak",
            key: "soak",
            value_name: "DURATION",
            help: "How long a build must have run upstream, e.g. 1h",
            kind: ValueKind::Text,
            companions: &[],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        env.soak = read_duration(&env.name, self.key(), spec.soak.as_ref())?;
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.soak = env.soak.map(format_duration);
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(env.soak, format_duration)
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, _: &FlagValues) -> Result<(), ApplyError> {
        spec.soak = Some(value.to_string());
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        spec.soak.take().is_some()
    }
}

struct ApprovalsPolicy;

impl Policy for ApprovalsPolicy {
    fn about(&self) -> About {
        About {
            name: "approvals",
            key: "approvals",
            value_name: "N",
            help: "Distinct approvals needed (0: none)",
            kind: ValueKind::U32,
            companions: &[],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        if spec.approvals > MAX_APPROVALS {
            return Err(PipelineError::TooManyApprovals {
                env: env.name.clone(),
                approvals: spec.approvals,
            });
        }
        env.approvals = spec.approvals;
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.approvals = env.approvals;
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(Some(env.approvals).filter(|n| *n > 0), |n| n.to_string())
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, _: &FlagValues) -> Result<(), ApplyError> {
        spec.approvals = parsed(self.name(), value)?;
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        std::mem::take(&mut spec.approvals) > 0
    }
}

struct ApprovalTimeoutPolicy;

impl Policy for ApprovalTimeoutPolicy {
    fn about(&self) -> About {
        About {
            name: "approval-timeout",
            key: "approval_timeout",
            value_name: "DURATION",
            help: "How long a deployment waits for approvals, e.g. 24h",
            kind: ValueKind::Text,
            companions: &[],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        env.approval_timeout = read_duration(&env.name, self.key(), spec.approval_timeout.as_ref())?;
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.approval_timeout = env.approval_timeout.map(format_duration);
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(env.approval_timeout, format_duration)
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, _: &FlagValues) -> Result<(), ApplyError> {
        spec.approval_timeout = Some(value.to_string());
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        spec.approval_timeout.take().is_some()
    }
}

struct FreezePolicy;

impl Policy for FreezePolicy {
    fn about(&self) -> About {
        About {
            name: "freeze",
            key: "freeze",
            value_name: "WINDOW",
            help: "Add a weekly freeze window, e.g. \"Sat 00:00 - Mon 06:00\" (with --tz)",
            kind: ValueKind::Text,
            companions: &[TZ],
            multi: true,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        env.freeze = read_windows(&env.name, self.key(), &spec.freeze, |env, window, why| {
            PipelineError::Freeze { env, window, why }
        })?;
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.freeze = env.freeze.iter().map(TimeWindow::to_spec).collect();
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        env.freeze.iter().map(TimeWindow::to_string).collect()
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, flags: &FlagValues) -> Result<(), ApplyError> {
        add_window(&spec.name, self.key(), &mut spec.freeze, value, flags.get(TZ.flag.long))
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        !std::mem::take(&mut spec.freeze).is_empty()
    }
}

struct PrivatePolicy;

impl Policy for PrivatePolicy {
    fn about(&self) -> About {
        About {
            name: "private",
            key: "private",
            value_name: "true|false",
            help: "Make the environment private (the only kind embargoed builds enter), or not",
            kind: ValueKind::Bool,
            companions: &[],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        env.private = spec.private;
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.private = env.private;
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(Some(YES).filter(|_| env.private), str::to_string)
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, _: &FlagValues) -> Result<(), ApplyError> {
        spec.private = parsed(self.name(), value)?;
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        std::mem::take(&mut spec.private)
    }
}

struct PublicPolicy;

impl Policy for PublicPolicy {
    fn about(&self) -> About {
        About {
            name: "public",
            key: "public",
            value_name: "true|false",
            help: "Publish the environment without a token (release catalog, download links, registry and APT pulls), or not",
            kind: ValueKind::Bool,
            companions: &[],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        if spec.public && env.private {
            return Err(PipelineError::PublicAndPrivate(spec.name.clone()));
        }
        env.public = spec.public;
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.public = env.public;
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(Some(YES).filter(|_| env.public), str::to_string)
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, _: &FlagValues) -> Result<(), ApplyError> {
        spec.public = parsed(self.name(), value)?;
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        std::mem::take(&mut spec.public)
    }
}

struct SoakHealthyPolicy;

impl Policy for SoakHealthyPolicy {
    fn about(&self) -> About {
        About {
            name: "soak-healthy",
            key: "soak_healthy",
            value_name: "PERCENT",
            help: "Count soak time only while this share of the upstream's agents are healthy, e.g. 90%",
            kind: ValueKind::Text,
            companions: &[],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        let Some(text) = &spec.soak_healthy else {
            return Ok(());
        };
        let bad = |why: String| PipelineError::SoakHealthy {
            env: env.name.clone(),
            value: shown(text),
            why,
        };
        if env.soak.is_none() || env.upstream.is_none() {
            return Err(bad(
                "it applies to a soak in the upstream: set upstream and soak as well".to_string(),
            ));
        }
        env.soak_healthy = Some(parse_percent(text).map_err(bad)?);
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.soak_healthy = env.soak_healthy.map(|p| format!("{p}%"));
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(env.soak_healthy, |p| format!("{p}%"))
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, _: &FlagValues) -> Result<(), ApplyError> {
        spec.soak_healthy = Some(value.to_string());
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        spec.soak_healthy.take().is_some()
    }
}

struct RolloutPolicy;

impl Policy for RolloutPolicy {
    fn about(&self) -> About {
        About {
            name: "rollout",
            key: "rollout",
            value_name: "KEY=VALUE,...",
            help: "How agents take a new build, as the keys of rollout in the pipeline file: \
         strategy=rolling,max_in_flight=25% or strategy=canary,count=2,then=rolling,max_in_flight=3 \
         (and halt_after_failures=N, auto_rollback=true)",
            kind: ValueKind::Text,
            companions: &[],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        let Some(rollout) = &spec.rollout else {
            return Ok(());
        };
        env.rollout = Some(Rollout::from_spec(rollout).map_err(|why| PipelineError::Rollout {
            env: env.name.clone(),
            why,
        })?);
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.rollout = env.rollout.as_ref().map(Rollout::to_spec);
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(env.rollout.as_ref(), |r| {
            let mut text = format!(
                "{}; halt after {}",
                r.strategy,
                plural(u64::from(r.halt_after_failures), "failure", "failures")
            );
            if r.auto_rollback {
                text.push_str(", then roll back");
            }
            text
        })
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, _: &FlagValues) -> Result<(), ApplyError> {
        let rollout = parse_rollout_flag(value).map_err(|why| ApplyError::Value {
            flag: self.name(),
            value: shown(value),
            why: format!("{why}; write e.g. strategy=rolling,max_in_flight=25%"),
        })?;
        spec.rollout = Some(rollout);
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        spec.rollout.take().is_some()
    }
}

struct MaintenancePolicy;

impl Policy for MaintenancePolicy {
    fn about(&self) -> About {
        About {
            name: "maintenance",
            key: "maintenance",
            value_name: "WINDOW",
            help: "Add a maintenance window, e.g. \"Mon-Fri 02:00 - 04:00\" (with --tz): agents update only inside \
         maintenance windows, unless the build is critical",
            kind: ValueKind::Text,
            companions: &[TZ],
            multi: true,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        env.maintenance = read_windows(&env.name, self.key(), &spec.maintenance, |env, window, why| {
            PipelineError::Maintenance { env, window, why }
        })?;
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.maintenance = env.maintenance.iter().map(TimeWindow::to_spec).collect();
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        env.maintenance.iter().map(TimeWindow::to_string).collect()
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, flags: &FlagValues) -> Result<(), ApplyError> {
        add_window(
            &spec.name,
            self.key(),
            &mut spec.maintenance,
            value,
            flags.get(TZ.flag.long),
        )
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        !std::mem::take(&mut spec.maintenance).is_empty()
    }
}

struct CompatibleWithPolicy;

impl Policy for CompatibleWithPolicy {
    fn about(&self) -> About {
        About {
            name: "compatible-with",
            key: "compatible_with",
            value_name: "SERVICE",
            help: "Refuse builds too far ahead of the oldest agent of this service in the environment",
            kind: ValueKind::Text,
            companions: &[MAX_MAJOR_SKEW],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        let Some(c) = &spec.compatible_with else {
            return Ok(());
        };
        let bad = |why: String| PipelineError::Compatibility {
            env: env.name.clone(),
            why,
        };
        let service = ServiceName::parse(&c.service).map_err(|e| bad(e.to_string()))?;
        // TOML integers are signed 64-bit: a larger skew could not be
        // written to the pipeline file.
        if i64::try_from(c.max_major_skew).is_err() {
            return Err(bad(format!("max_major_skew must be at most {}", i64::MAX)));
        }
        env.compatible_with = Some(Compatibility {
            service,
            max_major_skew: c.max_major_skew,
        });
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.compatible_with = env.compatible_with.as_ref().map(|c| CompatibilitySpec {
            service: c.service.to_string(),
            max_major_skew: c.max_major_skew,
        });
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(env.compatible_with.as_ref(), |c| {
            format!(
                "{} (at most {} ahead)",
                c.service,
                plural(c.max_major_skew, "major version", "major versions")
            )
        })
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, flags: &FlagValues) -> Result<(), ApplyError> {
        let skew = MAX_MAJOR_SKEW.flag.long;
        let Some(max_major_skew) = flags.get(skew) else {
            return Err(ApplyError::Value {
                flag: self.name(),
                value: shown(value),
                why: format!("say how many major versions ahead with --{skew}"),
            });
        };
        spec.compatible_with = Some(CompatibilitySpec {
            service: value.to_string(),
            max_major_skew: parsed(skew, max_major_skew)?,
        });
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        spec.compatible_with.take().is_some()
    }
}

struct VerifyPolicy;

impl Policy for VerifyPolicy {
    fn about(&self) -> About {
        About {
            name: "verify",
            key: "verify",
            value_name: "KEY=VALUE,...",
            help: "A metric gate, as the keys of verify in the pipeline file: \
         prometheus=http://127.0.0.1:9090,query=sum(rate(errors_total[5m])),max=0.01,for=10m (and min=N): \
         builds are promoted out of this environment only after the query stayed within bounds that long, \
         and a value out of bounds halts a paced rollout here",
            kind: ValueKind::Text,
            companions: &[],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        let Some(verify) = &spec.verify else {
            return Ok(());
        };
        env.verify = Some(Verify::from_spec(verify).map_err(|(field, why)| PipelineError::Verify {
            env: env.name.clone(),
            field,
            why,
        })?);
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.verify = env.verify.as_ref().map(Verify::to_spec);
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(env.verify.as_ref(), Verify::to_string)
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, _: &FlagValues) -> Result<(), ApplyError> {
        spec.verify = Some(parse_verify_flag(value).map_err(|why| ApplyError::Value {
            flag: self.name(),
            value: shown(value),
            why: format!("{why}; write e.g. prometheus=http://127.0.0.1:9090,query=up,min=1,for=10m"),
        })?);
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        spec.verify.take().is_some()
    }
}

/// Reads `--verify`'s `KEY=VALUE,…`; `max` and `min` are numbers.
fn parse_verify_flag(text: &str) -> Result<VerifySpec, String> {
    use ValueRead::{Number, Text};
    parse_key_values(
        text,
        &[
            ("prometheus", Text),
            ("query", Text),
            ("max", Number),
            ("min", Number),
            ("for", Text),
        ],
    )
}

struct GitOpsPolicy;

impl Policy for GitOpsPolicy {
    fn about(&self) -> About {
        About {
            name: "gitops",
            key: "gitops",
            value_name: "KEY=VALUE,...",
            help: "Write each deployment into a GitOps repository: repo=URL,branch=main,path=clusters/{env}/{service},layout=manifests|kustomize",
            kind: ValueKind::Text,
            companions: &[],
            multi: false,
        }
    }

    fn read(&self, spec: &EnvironmentSpec, env: &mut Environment) -> Result<(), PipelineError> {
        let Some(gitops) = &spec.gitops else {
            return Ok(());
        };
        env.gitops = Some(GitOps::from_spec(gitops).map_err(|(field, why)| PipelineError::GitOps {
            env: env.name.clone(),
            field,
            why,
        })?);
        Ok(())
    }

    fn write(&self, env: &Environment, spec: &mut EnvironmentSpec) {
        spec.gitops = env.gitops.as_ref().map(GitOps::to_spec);
    }

    fn list(&self, env: &Environment) -> Vec<String> {
        listed(env.gitops.as_ref(), GitOps::to_string)
    }

    fn apply(&self, spec: &mut EnvironmentSpec, value: &str, _: &FlagValues) -> Result<(), ApplyError> {
        use ValueRead::Text;
        let keys = [("repo", Text), ("branch", Text), ("path", Text), ("layout", Text)];
        let gitops: GitOpsSpec = parse_key_values(value, &keys).map_err(|why| ApplyError::Value {
            flag: self.name(),
            value: shown(value),
            why: format!("{why}; write e.g. repo=https://git.example.com/config.git,path=clusters/{{env}}/{{service}},layout=manifests"),
        })?;
        spec.gitops = Some(gitops);
        Ok(())
    }

    fn delete(&self, spec: &mut EnvironmentSpec) -> bool {
        spec.gitops.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::{env, one_env, parse_env, parse_err, utc};
    use crate::pipeline::{CountOrShare, Pipeline, PipelineSpec, Share, Strategy};

    #[test]
    fn invalid_regex_names_environment_and_cause() {
        let err = parse_err(&one_env("branch_restriction = \"^(master\""));
        let PipelineError::Regex {
            env: e,
            pattern,
            message,
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(e, &env("production"));
        assert_eq!(pattern, "^(master");
        assert!(message.contains("unclosed group"), "{message}");
        assert!(
            err.to_string().contains("environment production: branch_restriction"),
            "{err}"
        );
    }

    #[test]
    fn invalid_durations() {
        let err = parse_err(&one_env("soak = \"1x\""));
        assert_eq!(
            err.to_string(),
            "environment production: soak \"1x\" is invalid: use e.g. 30m, 1h, 2d, 1h30m"
        );
        let err = parse_err(&one_env("approval_timeout = \"soon\""));
        assert!(
            matches!(
                err,
                PipelineError::Duration {
                    field: "approval_timeout",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn approval_timeout_of_99999999d_is_refused_when_applied() {
        // Accepted before, it made every release into the environment
        // panic computing when the approval request expires.
        let err = parse_err(&one_env("approvals = 1\napproval_timeout = \"99999999d\""));
        assert_eq!(
            err.to_string(),
            "environment production: approval_timeout \"99999999d\" is too long: at most 365d (a year) is allowed"
        );
        let err = parse_err(&one_env("upstream = \"x\"\nsoak = \"366d\""));
        assert!(
            matches!(err, PipelineError::DurationTooLong { field: "soak", .. }),
            "{err}"
        );
        let p = Pipeline::parse(&one_env("approvals = 1\napproval_timeout = \"365d\"")).unwrap();
        assert_eq!(p.environments[0].approval_timeout, Some(MAX_DURATION));
    }

    #[test]
    fn too_many_approvals() {
        Pipeline::parse(&one_env("approvals = 10")).unwrap();
        let err = parse_err(&one_env("approvals = 11"));
        assert_eq!(
            err,
            PipelineError::TooManyApprovals {
                env: env("production"),
                approvals: 11
            }
        );
        assert!(err.to_string().contains("at most 10"), "{err}");
    }

    #[test]
    fn auto_release_conflicting_with_its_own_restriction() {
        let err = parse_err(&one_env(
            "auto_release = { branch = \"develop\" }\nbranch_restriction = \"^master$\"",
        ));
        assert_eq!(
            err.to_string(),
            "environment production: auto-release from branch develop conflicts with branch_restriction ^master$: auto-release from a branch the restriction allows, or widen the restriction"
        );
        Pipeline::parse(&one_env(
            "auto_release = { branch = \"master\" }\nbranch_restriction = \"^master$\"",
        ))
        .unwrap();
        let err = parse_err(&one_env("auto_release = { branch = \"\" }"));
        assert!(matches!(err, PipelineError::AutoReleaseBranch { .. }), "{err}");
    }

    #[test]
    fn invalid_freeze_windows() {
        let cases = [
            (
                r#"{ weekly = "Sun 00:00 - Mon 06:00", tz = "Europe/Berln" }"#,
                "not a known time zone",
            ),
            (r#"{ weekly = "Sam 00:00 - Mon 06:00" }"#, "\"Sam\" is not a weekday"),
            (r#"{ weekly = "Sat 0:00 - Mon 06:00" }"#, "not a time of day"),
            (r#"{ weekly = "Sat 24:00 - Mon 06:00" }"#, "not a time of day"),
            (r#"{ weekly = "Sat 00:00 - Mon 06:00:00" }"#, "not a time of day"),
            (r#"{ weekly = "Sat 00:00 Mon 06:00" }"#, "has no '-'"),
            (r#"{ weekly = "Sat - Mon 06:00" }"#, "not a weekday and a time"),
            (r#"{ weekly = "Sat 06:00 - Sat 06:00" }"#, "same time"),
            (
                r#"{ from = "2026-12-27T00:00:00Z", until = "2026-12-24T00:00:00Z" }"#,
                "from must be before until",
            ),
            (
                r#"{ from = "2026-12-24T00:00:00Z", until = "2026-12-24T00:00:00Z" }"#,
                "from must be before until",
            ),
            (
                r#"{ from = "2026-12-24", until = "2026-12-27T00:00:00Z" }"#,
                "not an RFC 3339 time",
            ),
            (r#"{ from = "2026-12-24T00:00:00Z" }"#, "needs both from and until"),
            (r#"{}"#, "neither weekly nor from and until"),
            (r#"{ tz = "UTC" }"#, "neither weekly nor from and until"),
            (
                r#"{ weekly = "Sat 00:00 - Mon 06:00", from = "2026-12-24T00:00:00Z", until = "2026-12-27T00:00:00Z" }"#,
                "both weekly and from/until",
            ),
            (
                r#"{ from = "2026-12-24T00:00:00Z", until = "2026-12-27T00:00:00Z", tz = "UTC" }"#,
                "tz applies only to weekly",
            ),
        ];
        for (window, why) in cases {
            let err = parse_err(&one_env(&format!("freeze = [{window}]")));
            assert!(matches!(err, PipelineError::Freeze { .. }), "{window}: {err}");
            let text = err.to_string();
            assert!(text.starts_with("environment production: freeze window"), "{text}");
            assert!(text.contains(why), "{window}: {text}");
        }
    }

    #[test]
    fn rollouts_maintenance_and_compatibility_parse_and_round_trip() {
        let p = parse_env(
            "soak = \"1h\"\nsoak_healthy = \"90%\"\nrollout = { strategy = \"canary\", count = 2, then = \"rolling\", max_in_flight = \"25%\", halt_after_failures = 1, auto_rollback = true }\nmaintenance = [{ weekly = \"Mon-Fri 02:00 - 04:00\", tz = \"UTC\" }]\ncompatible_with = { service = \"teleport-agent\", max_major_skew = 1 }",
        )
        .unwrap();
        let prod = p.environment(&EnvName::parse("production").unwrap()).unwrap();
        let rollout = prod.rollout.as_ref().unwrap();
        assert_eq!(
            rollout.strategy,
            Strategy::Canary {
                count: 2,
                then: Box::new(Strategy::Rolling {
                    max_in_flight: Share::Percent(25)
                })
            }
        );
        assert!(rollout.auto_rollback);
        assert_eq!(prod.soak_healthy, Some(90));
        assert_eq!(prod.compatible_with.as_ref().unwrap().max_major_skew, 1);
        assert!(prod.in_maintenance(utc(2026, 11, 23, 3, 0)));
        assert!(!prod.in_maintenance(utc(2026, 11, 23, 5, 0)));
        assert_eq!(Pipeline::parse(&p.to_toml()).unwrap(), p);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Pipeline>(&json).unwrap(), p);

        let p = parse_env("rollout = { strategy = \"rolling\", max_in_flight = 3 }").unwrap();
        let prod = p.environment(&EnvName::parse("production").unwrap()).unwrap();
        let rollout = prod.rollout.as_ref().unwrap();
        assert_eq!(
            rollout.halt_after_failures, 1,
            "halts on the first failure unless told otherwise"
        );
        assert!(!rollout.auto_rollback);
        assert!(prod.in_maintenance(utc(2026, 11, 23, 5, 0)), "no window: any time");
        assert_eq!(Pipeline::parse(&p.to_toml()).unwrap(), p);
        assert_eq!(Share::Percent(25).of(10), 3);
        assert_eq!(Share::Percent(1).of(5), 1);
        assert_eq!(Share::Count(2).of(100), 2);
    }

    #[test]
    fn bad_rollouts_and_policies_are_named() {
        for (extra, want) in [
            ("rollout = { strategy = \"yolo\" }", "\"yolo\" is not a strategy"),
            ("rollout = { strategy = \"rolling\" }", "rolling needs max_in_flight"),
            (
                "rollout = { strategy = \"rolling\", max_in_flight = \"250%\" }",
                "not a percentage",
            ),
            ("rollout = { strategy = \"rolling\", max_in_flight = 0 }", "at least 1"),
            ("rollout = { strategy = \"canary\" }", "canary needs count"),
            (
                "rollout = { strategy = \"canary\", count = 1, then = \"canary\" }",
                "then must be",
            ),
            (
                "rollout = { strategy = \"all-at-once\", count = 2 }",
                "only to strategy \"canary\"",
            ),
            (
                "rollout = { strategy = \"all-at-once\", max_in_flight = 2 }",
                "max_in_flight applies to rolling",
            ),
            (
                "rollout = { strategy = \"rolling\", max_in_flight = 1, halt_after_failures = 0 }",
                "halt_after_failures must be at least 1",
            ),
            (
                "rollout = { strategy = \"rolling\", max_in_flight = 1, pace = 2 }",
                "unknown field",
            ),
            ("maintenance = [{ weekly = \"Mon-Fri 02:00\" }]", "maintenance window"),
            ("soak_healthy = \"90%\"", "set upstream and soak"),
            ("soak = \"1h\"\nsoak_healthy = \"ninety\"", "not a percentage"),
            (
                "compatible_with = { service = \"Teleport Agent\", max_major_skew = 1 }",
                "compatible_with is invalid",
            ),
            ("compatible_with = { service = \"a\", max_major_skew = -1 }", "invalid"),
        ] {
            let err = parse_env(extra).unwrap_err().to_string();
            assert!(err.contains(want), "{extra}: {err}");
            if !want.contains("unknown field") && !extra.contains("-1") {
                assert!(err.contains("production"), "{extra}: {err}");
            }
        }
    }

    /// Flags as given on the command line: (long name, value).
    type Given = &'static [(&'static str, &'static str)];

    /// For each policy, flags of `tug policy apply` that set it on the
    /// `production` environment of [`pipeline_for_flags`], and how it is
    /// then listed.
    const EXAMPLES: &[(&str, Given, &[&str])] = &[
        ("upstream", &[("upstream", "trials")], &["trials"]),
        ("auto-release", &[("auto-release", "master")], &["master"]),
        (
            "branch-restriction",
            &[("branch-restriction", "^master$")],
            &["^master$"],
        ),
        ("soak", &[("soak", "90m")], &["1h30m"]),
        ("approvals", &[("approvals", "2")], &["2"]),
        ("approval-timeout", &[("approval-timeout", "24h")], &["1d"]),
        (
            "freeze",
            &[("freeze", "Sat 00:00 - Mon 06:00"), ("tz", "Europe/Berlin")],
            &["Sat 00:00 - Mon 06:00 Europe/Berlin"],
        ),
        ("private", &[("private", "true")], &["true"]),
        ("public", &[("public", "true")], &["true"]),
        ("soak-healthy", &[("soak-healthy", "90%")], &["90%"]),
        (
            "rollout",
            &[(
                "rollout",
                "strategy=canary,count=2,then=rolling,max_in_flight=25%,auto_rollback=true",
            )],
            &["canary of 2, then rolling, 25% at a time; halt after 1 failure, then roll back"],
        ),
        (
            "maintenance",
            &[("maintenance", "Mon-Fri 02:00 - 04:00")],
            &["Mon-Fri 02:00 - 04:00 UTC"],
        ),
        (
            "compatible-with",
            &[("compatible-with", "teleport-agent"), ("max-major-skew", "1")],
            &["teleport-agent (at most 1 major version ahead)"],
        ),
        (
            "verify",
            &[(
                "verify",
                "prometheus=http://127.0.0.1:9090,query=sum by (job, le) (rate(errors_total{code=\"500\"}[5m])),max=0.01,for=10m",
            )],
            &["sum by (job, le) (rate(errors_total{code=\"500\"}[5m])) at http://127.0.0.1:9090 at most 0.01 for 10m"],
        ),
        (
            "gitops",
            &[(
                "gitops",
                "repo=https://git.example.com/config.git,path=clusters/{env}/{service},layout=manifests",
            )],
            &["https://git.example.com/config.git main clusters/{env}/{service} (manifests)"],
        ),
    ];

    /// `trials`, and `production` promoted from it with a soak (which
    /// `soak-healthy` needs).
    fn pipeline_for_flags() -> PipelineSpec {
        Pipeline::parse(
            "service = \"api\"\n[[environments]]\nname = \"trials\"\n[[environments]]\nname = \"production\"\nupstream = \"trials\"\nsoak = \"1h\"\n",
        )
        .unwrap()
        .to_spec()
    }

    fn flags(given: &[(&str, &str)]) -> FlagValues {
        let mut flags = FlagValues::new();
        for (long, value) in given {
            flags.insert(long, value);
        }
        flags
    }

    fn listed(spec: &PipelineSpec, name: &str) -> Vec<String> {
        let p = Pipeline::from_spec(spec).unwrap();
        policy(name).unwrap().list(&p.environments[1])
    }

    #[test]
    fn every_policy_has_one_name_key_and_flag() {
        let names: Vec<&str> = POLICIES.iter().map(|p| p.name()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for p in POLICIES {
            assert_eq!(p.key(), p.name().replace('-', "_"), "{}", p.name());
            assert_eq!(p.flag().long, p.name());
            let help = p.about().help;
            assert!(!help.is_empty() && !help.ends_with('.'), "{}", p.name());
            for c in p.about().companions {
                assert!(policy(c.flag.long).is_none(), "--{} is a policy's flag", c.flag.long);
            }
        }
        assert_eq!(UPSTREAM.name(), "upstream");
        assert!(policy("nope").is_none());
    }

    #[test]
    fn the_fields_of_the_file_are_the_policies_keys_in_their_order() {
        let mut spec = pipeline_for_flags();
        for (_, given, _) in EXAMPLES {
            apply_flags(&mut spec.environments[1], &flags(given)).unwrap();
        }
        // An environment cannot be both public and private: this one is
        // public, every other key is set.
        spec.environments[1].private = false;
        let table = toml::Table::try_from(&spec.environments[1]).unwrap();
        let keys: Vec<&str> = table.keys().map(String::as_str).collect();
        let want: Vec<&str> = std::iter::once("name")
            .chain(POLICIES.iter().map(|p| p.key()).filter(|k| *k != "private"))
            .collect();
        assert_eq!(keys, want, "every field is a policy's key, in the order of POLICIES");
        // And the canonical file writes each, in that order, and reads back.
        let p = Pipeline::from_spec(&spec).unwrap();
        let text = p.to_toml();
        let written: Vec<&str> = text
            .split("[[environments]]")
            .nth(2)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
            .collect();
        assert_eq!(written, want, "{text}");
        assert_eq!(Pipeline::parse(&text).unwrap(), p);
    }

    #[test]
    fn every_policy_is_applied_listed_and_deleted_through_its_definition() {
        for p in POLICIES {
            let (_, given, want) = EXAMPLES
                .iter()
                .find(|(name, ..)| *name == p.name())
                .unwrap_or_else(|| panic!("no example for {}: add one to EXAMPLES", p.name()));
            let mut spec = pipeline_for_flags();
            // The base already has an upstream and a soak (for
            // soak-healthy): start without the policy under test.
            p.delete(&mut spec.environments[1]);
            assert!(listed(&spec, p.name()).is_empty(), "{}", p.name());
            assert!(flags(given).sets_a_policy(), "{}", p.name());
            apply_flags(&mut spec.environments[1], &flags(given)).unwrap();
            assert_eq!(listed(&spec, p.name()), *want, "{}", p.name());
            let entries = listing(&Pipeline::from_spec(&spec).unwrap().environments[1]);
            assert!(entries.iter().any(|e| e.policy == p.name()), "{}", p.name());
            assert!(p.delete(&mut spec.environments[1]), "{}", p.name());
            assert!(listed(&spec, p.name()).is_empty(), "{}", p.name());
            assert!(!p.delete(&mut spec.environments[1]), "{}: deleted twice", p.name());
        }
        assert_eq!(EXAMPLES.len(), POLICIES.len(), "an example for a policy that is gone");
    }

    #[test]
    fn a_companion_alone_sets_nothing() {
        assert!(!flags(&[("tz", "UTC")]).sets_a_policy());
        assert!(!FlagValues::new().sets_a_policy());
        let mut spec = pipeline_for_flags();
        let err = apply_flags(&mut spec.environments[1], &flags(&[("compatible-with", "agent")])).unwrap_err();
        assert!(err.to_string().contains("--max-major-skew"), "{err}");
    }

    #[test]
    fn windows_are_added_once() {
        let mut spec = pipeline_for_flags();
        let freeze = flags(&[("freeze", "Sat 00:00 - Mon 06:00"), ("tz", "Europe/Berlin")]);
        apply_flags(&mut spec.environments[1], &freeze).unwrap();
        let err = apply_flags(&mut spec.environments[1], &freeze).unwrap_err();
        assert_eq!(
            err.to_string(),
            "nothing to change: production already has freeze window Sat 00:00 - Mon 06:00 Europe/Berlin"
        );
        let err = apply_flags(
            &mut spec.environments[1],
            &flags(&[("maintenance", "Mon-Fry 02:00 - 04:00")]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("maintenance window: \"Fry\" is not a weekday"),
            "{err}"
        );
        assert_eq!(spec.environments[1].freeze.len(), 1);
        assert!(spec.environments[1].maintenance.is_empty());
    }

    #[test]
    fn the_rollout_flag_takes_the_keys_of_the_file() {
        let rollout = |text: &str| {
            let mut spec = pipeline_for_flags();
            apply_flags(&mut spec.environments[1], &flags(&[("rollout", text)]))
                .map(|()| spec.environments[1].rollout.clone().unwrap())
        };
        assert_eq!(
            rollout("strategy=rolling, max_in_flight=3, halt_after_failures=2").unwrap(),
            RolloutSpec {
                strategy: "rolling".into(),
                max_in_flight: Some(CountOrShare::Count(3)),
                halt_after_failures: Some(2),
                ..RolloutSpec::default()
            }
        );
        assert_eq!(rollout("strategy=all-at-once").unwrap().strategy, "all-at-once");
        for (bad, why) in [
            ("rolling", "is not KEY=VALUE"),
            ("strategy=rolling,pace=2", "unknown key \"pace\""),
            ("max_in_flight=2", "missing field `strategy`"),
            ("strategy=rolling,strategy=canary", "strategy is given twice"),
            ("strategy=canary,count=-1", "-1"),
        ] {
            let err = rollout(bad).unwrap_err().to_string();
            assert!(err.starts_with("--rollout "), "{bad}: {err}");
            assert!(err.contains(why), "{bad}: {err}");
        }
        // What the flag accepts as text, the pipeline's checks judge.
        let mut spec = pipeline_for_flags();
        apply_flags(&mut spec.environments[1], &flags(&[("rollout", "strategy=yolo")])).unwrap();
        let err = Pipeline::from_spec(&spec).unwrap_err();
        assert!(err.to_string().contains("\"yolo\" is not a strategy"), "{err}");
    }

    #[test]
    fn a_skew_the_file_cannot_hold_is_refused() {
        let err = parse_env("compatible_with = { service = \"a\", max_major_skew = 1 }").map(|_| ());
        assert!(err.is_ok());
        let mut spec = pipeline_for_flags();
        let given = flags(&[("compatible-with", "agent"), ("max-major-skew", &u64::MAX.to_string())]);
        apply_flags(&mut spec.environments[1], &given).unwrap();
        let err = Pipeline::from_spec(&spec).unwrap_err();
        assert!(
            err.to_string()
                .contains("max_major_skew must be at most 9223372036854775807"),
            "{err}"
        );
    }

    #[test]
    fn policies_read_with_correct_plurals() {
        let p = parse_env(
            "rollout = { strategy = \"rolling\", max_in_flight = 1 }\ncompatible_with = { service = \"agent\", max_major_skew = 1 }",
        )
        .unwrap();
        let listed: Vec<String> = listing(&p.environments[1])
            .into_iter()
            .map(|e| format!("{}={}", e.policy, e.value))
            .collect();
        assert_eq!(
            listed,
            vec![
                "upstream=trials",
                "rollout=rolling, 1 at a time; halt after 1 failure",
                "compatible-with=agent (at most 1 major version ahead)",
            ]
        );
    }
}
