//! A service's pipeline: the environments a build moves through and the
//! policies that guard each of them, as written in the pipeline file and in
//! its validated form.
//!
//! [`PipelineSpec`] is the file exactly as written (TOML, unknown fields
//! refused); [`Pipeline`] is what the rest of Tugboat works with, built only
//! by [`Pipeline::parse`] / [`Pipeline::from_spec`], which check every name,
//! upstream, duration, regular expression and freeze window and say which
//! environment is wrong. The JSON form of a [`Pipeline`] (for the API) is the
//! same shape as the file, so what `tug policy list` prints can be applied
//! again.
//!
//! This module does not decide whether a deployment may happen: that is
//! [`crate::policy::evaluate`]. It reads no clock: freeze windows are asked
//! about an instant the caller passes in.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveTime, SecondsFormat, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::names::{is_slug, shown, string_newtype, NameError, ServiceName};

/// The most approvals an environment may require. More than this is almost
/// certainly a typo, and would make the environment impossible to deploy to
/// in a small team.
pub const MAX_APPROVALS: u32 = 10;

/// The name of one stage of a pipeline: `canary`, `production`, … Same rules
/// as a service name: 1 to 63 lowercase letters, digits, '-' or '_',
/// starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvName(String);
string_newtype!(EnvName, |s| {
    if is_slug(s) {
        Ok(())
    } else {
        Err(NameError::Environment(shown(s)))
    }
});

/// Why a pipeline file, or a server rule, was refused. Every variant names
/// the environment at fault and says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error("the pipeline file is invalid: {0}")]
    Toml(String),
    #[error("the pipeline's {0}")]
    Service(NameError),
    #[error("{0}")]
    EnvironmentName(NameError),
    #[error("the pipeline has no environment: add at least one [[environments]] table with a name")]
    NoEnvironments,
    #[error("environment {env} is defined more than once: environment names must be unique within a pipeline")]
    DuplicateEnvironment { env: EnvName },
    #[error("environment {env}: upstream {upstream:?} is not a valid environment name: use 1 to 63 lowercase letters, digits, '-' or '_'")]
    InvalidUpstream { env: EnvName, upstream: String },
    #[error("environment {env}: upstream {upstream} is not an environment of this pipeline: define it or correct the upstream")]
    UnknownUpstream { env: EnvName, upstream: EnvName },
    #[error("environment {env} is its own upstream: remove the upstream or name the environment it is promoted from")]
    SelfUpstream { env: EnvName },
    #[error("environments form an upstream cycle: {}; a pipeline must start somewhere, so remove one of these upstreams", cycle_text(.cycle))]
    UpstreamCycle {
        /// The environments in promotion order, the first repeated at the end.
        cycle: Vec<EnvName>,
    },
    #[error("environment {env}: branch_restriction {pattern:?} is not a valid regular expression: {message}")]
    Regex {
        env: EnvName,
        pattern: String,
        message: String,
    },
    #[error("environment {env}: {field} {value:?} is invalid: use e.g. 30m, 1h, 2d, 1h30m")]
    Duration {
        env: EnvName,
        field: &'static str,
        value: String,
    },
    #[error("environment {env}: freeze window {window} is invalid: {why}")]
    Freeze { env: EnvName, window: String, why: String },
    #[error("environment {env} requires {approvals} approvals: at most {MAX_APPROVALS} are allowed")]
    TooManyApprovals { env: EnvName, approvals: u32 },
    #[error("environment {env}: auto_release branch {branch:?} is not a branch name: write e.g. auto_release = {{ branch = \"master\" }}")]
    AutoReleaseBranch { env: EnvName, branch: String },
    #[error("environment {env}: auto-release from branch {branch} conflicts with branch_restriction {restriction}: auto-release from a branch the restriction allows, or widen the restriction")]
    AutoReleaseConflict {
        env: EnvName,
        branch: String,
        restriction: String,
    },
    #[error("environment {env}: auto-release from branch {branch} conflicts with the server rule {rule}, which no pipeline can override: auto-release from a branch it allows, or ask a server admin")]
    ServerRuleConflict { env: EnvName, branch: String, rule: String },
    #[error("server rule {rule:?} is invalid: {why}; write it as ENVIRONMENT=REGEX, e.g. production=^master$")]
    ServerRule { rule: String, why: String },
}

fn cycle_text(cycle: &[EnvName]) -> String {
    cycle.iter().map(EnvName::as_str).collect::<Vec<_>>().join(" -> ")
}

// ---------------------------------------------------------------------------
// The file as written.

/// A pipeline file as written, before validation. Names, durations, patterns
/// and windows are plain strings here so that validation can say which
/// environment holds the bad value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub service: String,
    #[serde(default)]
    pub environments: Vec<EnvironmentSpec>,
}

/// One `[[environments]]` table as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_release: Option<AutoReleaseSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub approvals: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_restriction: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<FreezeSpec>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub private: bool,
}

/// `auto_release = { branch = "master" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoReleaseSpec {
    pub branch: String,
}

/// One freeze window as written: either `{ weekly = "Sat 00:00 - Mon 06:00",
/// tz = "Europe/Berlin" }` (tz defaults to UTC) or `{ from = "…", until =
/// "…" }` with RFC 3339 instants.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

// ---------------------------------------------------------------------------
// Durations.

/// Parses a duration written as whole days, hours, minutes and seconds, in
/// that order, each at most once: `30s`, `30m`, `1h`, `2d`, `1h30m`. Zero is
/// refused: every duration in a pipeline (soak, approval timeout) means
/// "wait this long", and a zero there is a mistake.
pub fn parse_duration(text: &str) -> Option<Duration> {
    const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];
    let mut rest = text;
    let mut total: u64 = 0;
    // Index into UNITS of the next unit allowed; units must descend so that
    // "1h30m" has one spelling and "30m1h" is refused as a likely typo.
    let mut next_unit = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return None;
        }
        let (number, after) = rest.split_at(digits);
        let number: u64 = number.parse().ok()?;
        let unit = after.chars().next()?;
        let position = UNITS[next_unit..].iter().position(|(u, _)| *u == unit)?;
        let seconds = UNITS[next_unit + position].1;
        next_unit += position + 1;
        total = total.checked_add(number.checked_mul(seconds)?)?;
        rest = &after[unit.len_utf8()..];
    }
    if total == 0 {
        return None;
    }
    Some(Duration::from_secs(total))
}

/// Writes a duration the way [`parse_duration`] reads it, in its shortest
/// canonical form (`90m` becomes `1h30m`). Fractions of a second are
/// dropped; zero is `0s`.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
        let n = secs / size;
        secs %= size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push(unit);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Branch restrictions and server rules.

/// A regular expression a build's branch must match. The expression is
/// searched, not anchored, as `grep` does: write `^master$` to mean exactly
/// `master`. Compared, printed and serialized as its source text.
#[derive(Clone)]
pub struct BranchRestriction {
    source: String,
    regex: Regex,
}

impl BranchRestriction {
    pub fn new(pattern: &str) -> Result<BranchRestriction, regex::Error> {
        Ok(BranchRestriction {
            source: pattern.to_string(),
            regex: Regex::new(pattern)?,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn regex(&self) -> &Regex {
        &self.regex
    }

    pub fn matches(&self, branch: &str) -> bool {
        self.regex.is_match(branch)
    }
}

impl PartialEq for BranchRestriction {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for BranchRestriction {}

impl fmt::Debug for BranchRestriction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BranchRestriction").field(&self.source).finish()
    }
}

impl fmt::Display for BranchRestriction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for BranchRestriction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for BranchRestriction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BranchRestriction::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A server-wide branch restriction for every service's environment of one
/// name, which no pipeline can loosen: `production=^master$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRule {
    pub environment: EnvName,
    pub restriction: BranchRestriction,
}

impl ServerRule {
    pub fn parse(text: &str) -> Result<ServerRule, PipelineError> {
        let bad = |why: String| PipelineError::ServerRule { rule: shown(text), why };
        let (env, pattern) = text.split_once('=').ok_or_else(|| bad("it has no '='".to_string()))?;
        let environment = EnvName::parse(env.trim()).map_err(|e| bad(e.to_string()))?;
        let restriction = BranchRestriction::new(pattern)
            .map_err(|e| bad(format!("{pattern:?} is not a valid regular expression: {e}")))?;
        Ok(ServerRule {
            environment,
            restriction,
        })
    }

    pub fn matches(&self, branch: &str) -> bool {
        self.restriction.matches(branch)
    }
}

impl fmt::Display for ServerRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.environment, self.restriction)
    }
}

impl FromStr for ServerRule {
    type Err = PipelineError;
    fn from_str(s: &str) -> Result<Self, PipelineError> {
        ServerRule::parse(s)
    }
}

impl Serialize for ServerRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServerRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ServerRule::parse(&s).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Freeze windows.

/// A time during which nothing is deployed to an environment (unless an admin
/// overrides the freeze).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeWindow {
    /// Every week from `start` to `end`, in the wall-clock time of `tz`, so
    /// "Sat 00:00 - Mon 06:00 Europe/Berlin" follows Berlin's daylight saving
    /// time. When `end` comes before `start` in the week (Monday first) the
    /// window wraps over the week's end.
    Weekly {
        start: (Weekday, NaiveTime),
        end: (Weekday, NaiveTime),
        tz: Tz,
    },
    /// Once, from `from` (included) to `until` (excluded).
    Once { from: DateTime<Utc>, until: DateTime<Utc> },
}

fn weekday_text(d: Weekday) -> &'static str {
    match d {
        Weekday::Mon => "Mon",
        Weekday::Tue => "Tue",
        Weekday::Wed => "Wed",
        Weekday::Thu => "Thu",
        Weekday::Fri => "Fri",
        Weekday::Sat => "Sat",
        Weekday::Sun => "Sun",
    }
}

/// Seconds since Monday 00:00 of a weekday and time of day.
fn week_second(day: Weekday, time: NaiveTime) -> u32 {
    day.num_days_from_monday() * 86_400 + time.num_seconds_from_midnight()
}

fn parse_day_time(text: &str) -> Result<(Weekday, NaiveTime), String> {
    let mut parts = text.split_whitespace();
    let (Some(day), Some(time), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "{text:?} is not a weekday and a time: write e.g. \"Sat 00:00\""
        ));
    };
    // chrono reads Mon..Sun and Monday..Sunday, in any case.
    let day: Weekday = day
        .parse()
        .map_err(|_| format!("{day:?} is not a weekday: use Mon, Tue, Wed, Thu, Fri, Sat or Sun"))?;
    let valid_shape = time.len() == 5 && time.as_bytes()[2] == b':';
    let time = NaiveTime::parse_from_str(time, "%H:%M")
        .ok()
        .filter(|_| valid_shape)
        .ok_or_else(|| format!("{time:?} is not a time of day: use 24-hour HH:MM, e.g. 06:00"))?;
    Ok((day, time))
}

fn parse_instant(field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{field} {text:?} is not an RFC 3339 time ({e}): write e.g. 2026-12-24T00:00:00Z"))
}

impl FreezeWindow {
    /// Reads `"Sat 00:00 - Mon 06:00"` in time zone `tz` (an IANA name such
    /// as `Europe/Berlin`, or `UTC`).
    pub fn weekly(text: &str, tz: &str) -> Result<FreezeWindow, String> {
        let (start, end) = text
            .split_once('-')
            .ok_or_else(|| format!("{text:?} has no '-': write e.g. \"Sat 00:00 - Mon 06:00\""))?;
        let start = parse_day_time(start)?;
        let end = parse_day_time(end)?;
        if start == end {
            return Err("it starts and ends at the same time".to_string());
        }
        let tz: Tz = tz
            .parse()
            .map_err(|_| format!("{tz:?} is not a known time zone: use an IANA name such as Europe/Berlin, or UTC"))?;
        Ok(FreezeWindow::Weekly { start, end, tz })
    }

    /// Reads a freeze window as written in the pipeline file.
    pub fn from_spec(spec: &FreezeSpec) -> Result<FreezeWindow, String> {
        match (&spec.weekly, &spec.from, &spec.until) {
            (Some(weekly), None, None) => {
                FreezeWindow::weekly(weekly, spec.tz.as_deref().unwrap_or("UTC"))
            }
            (None, Some(from), Some(until)) => {
                if spec.tz.is_some() {
                    return Err("tz applies only to weekly windows; write from and until with an offset, e.g. 2026-12-24T00:00:00+01:00".to_string());
                }
                let from = parse_instant("from", from)?;
                let until = parse_instant("until", until)?;
                if from >= until {
                    return Err("from must be before until".to_string());
                }
                Ok(FreezeWindow::Once { from, until })
            }
            (None, None, None) => Err(
                "it has neither weekly nor from and until: write { weekly = \"Sat 00:00 - Mon 06:00\", tz = \"Europe/Berlin\" } or { from = \"…\", until = \"…\" }"
                    .to_string(),
            ),
            (None, Some(_), None) | (None, None, Some(_)) => {
                Err("a one-off window needs both from and until".to_string())
            }
            (Some(_), _, _) => {
                Err("it has both weekly and from/until: write them as two windows".to_string())
            }
        }
    }

    /// The window as written in the pipeline file.
    pub fn to_spec(&self) -> FreezeSpec {
        match self {
            FreezeWindow::Weekly { start, end, tz } => FreezeSpec {
                weekly: Some(format!(
                    "{} {} - {} {}",
                    weekday_text(start.0),
                    start.1.format("%H:%M"),
                    weekday_text(end.0),
                    end.1.format("%H:%M")
                )),
                tz: Some(tz.name().to_string()),
                ..FreezeSpec::default()
            },
            FreezeWindow::Once { from, until } => FreezeSpec {
                from: Some(from.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
                until: Some(until.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
                ..FreezeSpec::default()
            },
        }
    }

    /// Whether `at` falls inside the window (start included, end excluded).
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        match self {
            FreezeWindow::Weekly { start, end, tz } => {
                // Compare in the zone's wall-clock time: a window written as
                // "Sat 00:00" means midnight in Berlin in summer and winter.
                let local = at.with_timezone(tz);
                let now = week_second(local.weekday(), local.time());
                let start = week_second(start.0, start.1);
                let end = week_second(end.0, end.1);
                if start < end {
                    start <= now && now < end
                } else {
                    now >= start || now < end
                }
            }
            FreezeWindow::Once { from, until } => *from <= at && at < *until,
        }
    }
}

impl fmt::Display for FreezeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = self.to_spec();
        match self {
            FreezeWindow::Weekly { .. } => {
                write!(f, "{} {}", spec.weekly.unwrap_or_default(), spec.tz.unwrap_or_default())
            }
            FreezeWindow::Once { .. } => write!(
                f,
                "{} - {}",
                spec.from.unwrap_or_default(),
                spec.until.unwrap_or_default()
            ),
        }
    }
}

impl Serialize for FreezeWindow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_spec().serialize(s)
    }
}

impl<'de> Deserialize<'de> for FreezeWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = FreezeSpec::deserialize(d)?;
        FreezeWindow::from_spec(&spec).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Environments and pipelines.

/// One validated stage of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub name: EnvName,
    /// The environment builds are promoted from.
    pub upstream: Option<EnvName>,
    /// The branch whose new sealed builds are released here automatically.
    pub auto_release: Option<String>,
    /// How long a build must have been current in the upstream before it
    /// may be promoted here.
    pub soak: Option<Duration>,
    /// Distinct approvers (other than the requester) a deployment needs.
    pub approvals: u32,
    /// How long an approval stays valid; enforced by whoever stores
    /// approvals, since evaluation only counts the valid ones.
    pub approval_timeout: Option<Duration>,
    pub branch_restriction: Option<BranchRestriction>,
    pub freeze: Vec<FreezeWindow>,
    /// Private environments may receive embargoed (security) builds.
    pub private: bool,
}

impl Environment {
    /// Validates one environment on its own; the checks that need the whole
    /// pipeline (duplicates, upstreams that exist, cycles) are in
    /// [`Pipeline::from_spec`].
    pub fn from_spec(spec: &EnvironmentSpec) -> Result<Environment, PipelineError> {
        let name = EnvName::parse(&spec.name).map_err(PipelineError::EnvironmentName)?;
        let env = || name.clone();

        let upstream = match &spec.upstream {
            None => None,
            Some(up) => {
                let up = EnvName::parse(up).map_err(|_| PipelineError::InvalidUpstream {
                    env: env(),
                    upstream: shown(up),
                })?;
                if up == name {
                    return Err(PipelineError::SelfUpstream { env: env() });
                }
                Some(up)
            }
        };

        let auto_release = match &spec.auto_release {
            None => None,
            Some(AutoReleaseSpec { branch }) => {
                let bad = branch.trim().is_empty() || branch.chars().any(|c| c.is_control() || c.is_whitespace());
                if bad {
                    return Err(PipelineError::AutoReleaseBranch {
                        env: env(),
                        branch: shown(branch),
                    });
                }
                Some(branch.clone())
            }
        };

        let duration = |field: &'static str, value: &Option<String>| match value {
            None => Ok(None),
            Some(text) => parse_duration(text).map(Some).ok_or_else(|| PipelineError::Duration {
                env: env(),
                field,
                value: shown(text),
            }),
        };
        let soak = duration("soak", &spec.soak)?;
        let approval_timeout = duration("approval_timeout", &spec.approval_timeout)?;

        if spec.approvals > MAX_APPROVALS {
            return Err(PipelineError::TooManyApprovals {
                env: env(),
                approvals: spec.approvals,
            });
        }

        let branch_restriction = match &spec.branch_restriction {
            None => None,
            Some(pattern) => Some(BranchRestriction::new(pattern).map_err(|e| PipelineError::Regex {
                env: env(),
                pattern: shown(pattern),
                message: e.to_string(),
            })?),
        };

        let freeze = spec
            .freeze
            .iter()
            .map(|w| {
                FreezeWindow::from_spec(w).map_err(|why| PipelineError::Freeze {
                    env: env(),
                    window: freeze_spec_text(w),
                    why,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        // Auto-release that its own restriction refuses would fail on every
        // push; say so when the file is applied rather than at 3 a.m.
        if let (Some(branch), Some(restriction)) = (&auto_release, &branch_restriction) {
            if !restriction.matches(branch) {
                return Err(PipelineError::AutoReleaseConflict {
                    env: env(),
                    branch: branch.clone(),
                    restriction: restriction.to_string(),
                });
            }
        }

        Ok(Environment {
            name,
            upstream,
            auto_release,
            soak,
            approvals: spec.approvals,
            approval_timeout,
            branch_restriction,
            freeze,
            private: spec.private,
        })
    }

    /// The environment as written in the pipeline file.
    pub fn to_spec(&self) -> EnvironmentSpec {
        EnvironmentSpec {
            name: self.name.to_string(),
            upstream: self.upstream.as_ref().map(EnvName::to_string),
            auto_release: self
                .auto_release
                .as_ref()
                .map(|b| AutoReleaseSpec { branch: b.clone() }),
            soak: self.soak.map(format_duration),
            approvals: self.approvals,
            approval_timeout: self.approval_timeout.map(format_duration),
            branch_restriction: self.branch_restriction.as_ref().map(|r| r.as_str().to_string()),
            freeze: self.freeze.iter().map(FreezeWindow::to_spec).collect(),
            private: self.private,
        }
    }

    /// The freeze windows in force at `at`, in file order.
    pub fn freezes_at(&self, at: DateTime<Utc>) -> impl Iterator<Item = &FreezeWindow> {
        self.freeze.iter().filter(move |w| w.contains(at))
    }
}

/// How a window that failed to parse is named in the error: as written.
fn freeze_spec_text(spec: &FreezeSpec) -> String {
    match (&spec.weekly, &spec.from, &spec.until) {
        (Some(weekly), _, _) => format!("{:?}", shown(weekly)),
        (None, from, until) => format!(
            "from {:?} until {:?}",
            shown(from.as_deref().unwrap_or("")),
            shown(until.as_deref().unwrap_or(""))
        ),
    }
}

impl Serialize for Environment {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_spec().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Environment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = EnvironmentSpec::deserialize(d)?;
        Environment::from_spec(&spec).map_err(serde::de::Error::custom)
    }
}

/// A service's validated pipeline: its environments in file order, each
/// upstream naming another environment of it, without cycles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub service: ServiceName,
    pub environments: Vec<Environment>,
}

impl Pipeline {
    /// Reads and validates a pipeline file.
    pub fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        let spec: PipelineSpec = toml::from_str(text).map_err(|e| PipelineError::Toml(e.to_string()))?;
        Pipeline::from_spec(&spec)
    }

    /// Validates a pipeline as written. Errors come in file order, one at a
    /// time: the first environment that is wrong is named.
    pub fn from_spec(spec: &PipelineSpec) -> Result<Pipeline, PipelineError> {
        let service = ServiceName::parse(&spec.service).map_err(PipelineError::Service)?;
        if spec.environments.is_empty() {
            return Err(PipelineError::NoEnvironments);
        }
        let environments = spec
            .environments
            .iter()
            .map(Environment::from_spec)
            .collect::<Result<Vec<_>, _>>()?;

        let mut index: HashMap<&EnvName, usize> = HashMap::new();
        for (i, env) in environments.iter().enumerate() {
            if index.insert(&env.name, i).is_some() {
                return Err(PipelineError::DuplicateEnvironment { env: env.name.clone() });
            }
        }
        // Every upstream as an index, so the cycle search below cannot fail.
        let mut upstream: Vec<Option<usize>> = Vec::with_capacity(environments.len());
        for env in &environments {
            upstream.push(match &env.upstream {
                None => None,
                Some(up) => Some(*index.get(up).ok_or_else(|| PipelineError::UnknownUpstream {
                    env: env.name.clone(),
                    upstream: up.clone(),
                })?),
            });
        }
        if let Some(cycle) = find_cycle(&upstream) {
            return Err(PipelineError::UpstreamCycle {
                cycle: cycle.into_iter().map(|i| environments[i].name.clone()).collect(),
            });
        }

        Ok(Pipeline { service, environments })
    }

    /// The pipeline as written in a file.
    pub fn to_spec(&self) -> PipelineSpec {
        PipelineSpec {
            service: self.service.to_string(),
            environments: self.environments.iter().map(Environment::to_spec).collect(),
        }
    }

    /// The pipeline file, written by hand rather than by `toml::to_string` so
    /// that it reads like the files people write (inline tables for
    /// `auto_release` and `freeze`); [`Pipeline::parse`] reads it back to an
    /// equal pipeline.
    pub fn to_toml(&self) -> String {
        fn string(s: &str) -> String {
            toml::Value::String(s.to_string()).to_string()
        }
        fn inline(fields: &[(&str, &Option<String>)]) -> String {
            let parts: Vec<String> = fields
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} = {}", string(v))))
                .collect();
            format!("{{ {} }}", parts.join(", "))
        }

        let spec = self.to_spec();
        let mut out = format!("service = {}\n", string(&spec.service));
        for env in &spec.environments {
            out.push_str("\n[[environments]]\n");
            out.push_str(&format!("name = {}\n", string(&env.name)));
            if let Some(up) = &env.upstream {
                out.push_str(&format!("upstream = {}\n", string(up)));
            }
            if let Some(auto) = &env.auto_release {
                out.push_str(&format!("auto_release = {{ branch = {} }}\n", string(&auto.branch)));
            }
            if let Some(soak) = &env.soak {
                out.push_str(&format!("soak = {}\n", string(soak)));
            }
            if env.approvals > 0 {
                out.push_str(&format!("approvals = {}\n", env.approvals));
            }
            if let Some(timeout) = &env.approval_timeout {
                out.push_str(&format!("approval_timeout = {}\n", string(timeout)));
            }
            if let Some(restriction) = &env.branch_restriction {
                out.push_str(&format!("branch_restriction = {}\n", string(restriction)));
            }
            if !env.freeze.is_empty() {
                let windows: Vec<String> = env
                    .freeze
                    .iter()
                    .map(|w| {
                        inline(&[
                            ("weekly", &w.weekly),
                            ("tz", &w.tz),
                            ("from", &w.from),
                            ("until", &w.until),
                        ])
                    })
                    .collect();
                out.push_str(&format!("freeze = [{}]\n", windows.join(", ")));
            }
            if env.private {
                out.push_str("private = true\n");
            }
        }
        out
    }

    pub fn environment(&self, name: &EnvName) -> Option<&Environment> {
        self.environments.iter().find(|e| &e.name == name)
    }

    /// The first environment in file order: where a pipeline's builds enter.
    /// `None` only for a pipeline built by hand without environments.
    pub fn first(&self) -> Option<&Environment> {
        self.environments.first()
    }

    /// The environment `name` is promoted from.
    pub fn upstream_of(&self, name: &EnvName) -> Option<&Environment> {
        self.environment(name)?
            .upstream
            .as_ref()
            .and_then(|up| self.environment(up))
    }

    /// The environments promoted from `name`, in file order.
    pub fn downstream_of(&self, name: &EnvName) -> impl Iterator<Item = &Environment> + '_ {
        // Owned so that the iterator borrows only the pipeline.
        let name = name.clone();
        self.environments
            .iter()
            .filter(move |e| e.upstream.as_ref() == Some(&name))
    }

    /// Refuses a pipeline that auto-releases into an environment from a
    /// branch that a server rule for that environment forbids.
    pub fn check_server_rules(&self, rules: &[ServerRule]) -> Result<(), PipelineError> {
        for env in &self.environments {
            let Some(branch) = &env.auto_release else {
                continue;
            };
            for rule in rules.iter().filter(|r| r.environment == env.name) {
                if !rule.matches(branch) {
                    return Err(PipelineError::ServerRuleConflict {
                        env: env.name.clone(),
                        branch: branch.clone(),
                        rule: rule.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The first upstream cycle, as indices in promotion order (upstream first)
/// starting at the environment that comes first in the file and ending with
/// it again. Each environment has at most one upstream, so following
/// upstreams from every environment finds every cycle.
fn find_cycle(upstream: &[Option<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Seen {
        No,
        OnPath,
        Done,
    }
    let mut seen = vec![Seen::No; upstream.len()];
    for start in 0..upstream.len() {
        let mut path = Vec::new();
        let mut at = Some(start);
        while let Some(i) = at {
            match seen[i] {
                Seen::Done => break,
                Seen::OnPath => {
                    let pos = path.iter().position(|&p| p == i).unwrap_or(0);
                    // Following upstreams walks against the promotion
                    // direction; reverse to print "a -> b" as "b is promoted
                    // from a".
                    let mut cycle: Vec<usize> = path[pos..].iter().rev().copied().collect();
                    let first = (0..cycle.len()).min_by_key(|&k| cycle[k]).unwrap_or(0);
                    cycle.rotate_left(first);
                    cycle.push(cycle[0]);
                    return Some(cycle);
                }
                Seen::No => {
                    seen[i] = Seen::OnPath;
                    path.push(i);
                    at = upstream[i];
                }
            }
        }
        for i in path {
            seen[i] = Seen::Done;
        }
    }
    None
}

impl Serialize for Pipeline {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_spec().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Pipeline {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = PipelineSpec::deserialize(d)?;
        Pipeline::from_spec(&spec).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const EXAMPLE: &str = r#"
service = "teleport"
[[environments]]
name = "canary"
auto_release = { branch = "master" }
[[environments]]
name = "internal"
upstream = "canary"
soak = "1h"
[[environments]]
name = "trials"
upstream = "internal"
approvals = 1
approval_timeout = "24h"
[[environments]]
name = "production"
upstream = "trials"
approvals = 2
branch_restriction = "^master$"
freeze = [
  { weekly = "Sat 00:00 - Mon 06:00", tz = "Europe/Berlin" },
  { from = "2026-12-24T00:00:00Z", until = "2026-12-27T00:00:00Z" },
]
[[environments]]
name = "security"
private = true
"#;

    fn env(name: &str) -> EnvName {
        EnvName::parse(name).unwrap()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    /// Parses text that must be refused.
    fn parse_err(text: &str) -> PipelineError {
        Pipeline::parse(text).unwrap_err()
    }

    fn one_env(fields: &str) -> String {
        format!("service = \"api\"\n[[environments]]\nname = \"production\"\n{fields}\n")
    }

    #[test]
    fn example_pipeline_parses() {
        let p = Pipeline::parse(EXAMPLE).unwrap();
        assert_eq!(p.service.as_str(), "teleport");
        let names: Vec<&str> = p.environments.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["canary", "internal", "trials", "production", "security"]);
        assert_eq!(p.first().unwrap().name, env("canary"));
        let canary = p.environment(&env("canary")).unwrap();
        assert_eq!(canary.auto_release.as_deref(), Some("master"));
        assert_eq!(canary.upstream, None);
        let internal = p.environment(&env("internal")).unwrap();
        assert_eq!(internal.upstream, Some(env("canary")));
        assert_eq!(internal.soak, Some(Duration::from_secs(3600)));
        let trials = p.environment(&env("trials")).unwrap();
        assert_eq!(trials.approvals, 1);
        assert_eq!(trials.approval_timeout, Some(Duration::from_secs(86_400)));
        let production = p.environment(&env("production")).unwrap();
        assert_eq!(production.approvals, 2);
        assert_eq!(production.branch_restriction.as_ref().unwrap().as_str(), "^master$");
        assert_eq!(production.freeze.len(), 2);
        assert_eq!(production.freeze[0].to_string(), "Sat 00:00 - Mon 06:00 Europe/Berlin");
        assert_eq!(
            production.freeze[1].to_string(),
            "2026-12-24T00:00:00Z - 2026-12-27T00:00:00Z"
        );
        assert!(p.environment(&env("security")).unwrap().private);
        assert!(p.environment(&env("nope")).is_none());
        assert_eq!(p.upstream_of(&env("trials")).unwrap().name, env("internal"));
        assert!(p.upstream_of(&env("canary")).is_none());
        let down: Vec<_> = p.downstream_of(&env("canary")).map(|e| e.name.as_str()).collect();
        assert_eq!(down, ["internal"]);
    }

    #[test]
    fn example_pipeline_round_trips_through_toml_and_json() {
        let p = Pipeline::parse(EXAMPLE).unwrap();
        let text = p.to_toml();
        assert_eq!(Pipeline::parse(&text).unwrap(), p, "{text}");
        assert!(text.contains("auto_release = { branch = \"master\" }"), "{text}");
        assert!(
            text.contains(r#"freeze = [{ weekly = "Sat 00:00 - Mon 06:00", tz = "Europe/Berlin" }, { from = "2026-12-24T00:00:00Z", until = "2026-12-27T00:00:00Z" }]"#),
            "{text}"
        );

        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["environments"][1]["soak"], "1h");
        assert_eq!(json["environments"][2]["approval_timeout"], "1d");
        assert_eq!(json["environments"][3]["branch_restriction"], "^master$");
        assert_eq!(json["environments"][3]["freeze"][0]["tz"], "Europe/Berlin");
        assert_eq!(json["environments"][0]["auto_release"]["branch"], "master");
        let back: Pipeline = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);

        let env_json = serde_json::to_value(&p.environments[1]).unwrap();
        assert_eq!(
            env_json,
            serde_json::json!({"name": "internal", "upstream": "canary", "soak": "1h"})
        );
    }

    #[test]
    fn to_toml_escapes_what_needs_escaping() {
        let p = Pipeline::parse(&one_env(
            r#"branch_restriction = '^(master|release/v\d+)$'
auto_release = { branch = "release/v1" }"#,
        ))
        .unwrap();
        assert_eq!(Pipeline::parse(&p.to_toml()).unwrap(), p);
    }

    #[test]
    fn toml_errors_and_unknown_fields() {
        let err = parse_err("service = ");
        assert!(matches!(err, PipelineError::Toml(_)), "{err}");
        let err = parse_err(&one_env("soak_time = \"1h\""));
        assert!(err.to_string().contains("unknown field `soak_time`"), "{err}");
        let err = parse_err("service = \"api\"\nextra = 1\n");
        assert!(err.to_string().contains("unknown field `extra`"), "{err}");
        let err = parse_err(&one_env(
            "freeze = [{ weekly = \"Sat 00:00 - Mon 06:00\", zone = \"UTC\" }]",
        ));
        assert!(err.to_string().contains("unknown field `zone`"), "{err}");
        let err = parse_err(&one_env("approvals = -1"));
        assert!(matches!(err, PipelineError::Toml(_)), "{err}");
    }

    #[test]
    fn invalid_names() {
        let err = parse_err("service = \"Tele port\"\n[[environments]]\nname = \"a\"\n");
        assert!(matches!(err, PipelineError::Service(_)), "{err}");
        assert!(err.to_string().contains("\"Tele port\""), "{err}");

        let err = parse_err("service = \"api\"\n[[environments]]\nname = \"Prod\"\n");
        assert_eq!(
            err,
            PipelineError::EnvironmentName(NameError::Environment("Prod".into()))
        );
        assert!(
            err.to_string().starts_with("environment name \"Prod\" is invalid"),
            "{err}"
        );

        let err = parse_err(&one_env("upstream = \"Canary\""));
        assert!(matches!(err, PipelineError::InvalidUpstream { .. }), "{err}");
        assert!(err.to_string().contains("environment production"), "{err}");

        let err = parse_err("service = \"api\"\n");
        assert_eq!(err, PipelineError::NoEnvironments);
        for bad in ["", "-x", "a.b", &"a".repeat(64)] {
            assert!(EnvName::parse(bad).is_err(), "{bad:?}");
        }
        EnvName::parse("eu-west_1").unwrap();
    }

    #[test]
    fn duplicate_environment() {
        let err = parse_err(
            "service = \"api\"\n[[environments]]\nname = \"a\"\n[[environments]]\nname = \"b\"\n[[environments]]\nname = \"a\"\n",
        );
        assert_eq!(err, PipelineError::DuplicateEnvironment { env: env("a") });
        assert!(err.to_string().contains("environment a is defined more than once"));
    }

    #[test]
    fn unknown_and_self_upstream() {
        let err = parse_err(&one_env("upstream = \"staging\""));
        assert_eq!(
            err,
            PipelineError::UnknownUpstream {
                env: env("production"),
                upstream: env("staging")
            }
        );
        assert!(
            err.to_string().contains("upstream staging is not an environment"),
            "{err}"
        );

        let err = parse_err(&one_env("upstream = \"production\""));
        assert_eq!(err, PipelineError::SelfUpstream { env: env("production") });
        assert!(err.to_string().contains("production is its own upstream"), "{err}");
    }

    #[test]
    fn upstream_cycles_are_named() {
        let text = r#"
service = "teleport"
[[environments]]
name = "canary"
upstream = "internal"
[[environments]]
name = "internal"
upstream = "canary"
"#;
        let err = parse_err(text);
        assert!(
            err.to_string().contains("upstream cycle: canary -> internal -> canary"),
            "{err}"
        );

        // A longer cycle, entered from an environment outside it, is named
        // in promotion order from the environment that comes first in the
        // file.
        let text = r#"
service = "teleport"
[[environments]]
name = "dev"
upstream = "trials"
[[environments]]
name = "production"
upstream = "internal"
[[environments]]
name = "internal"
upstream = "canary"
[[environments]]
name = "canary"
upstream = "production"
[[environments]]
name = "trials"
upstream = "canary"
"#;
        let err = parse_err(text);
        assert_eq!(
            err,
            PipelineError::UpstreamCycle {
                cycle: ["production", "canary", "internal", "production"].map(env).to_vec()
            }
        );
        assert_eq!(find_cycle(&[None, Some(0), Some(1), Some(0)]), None);
    }

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
    fn durations_parse_and_format_canonically() {
        for (text, secs, canonical) in [
            ("30s", 30, "30s"),
            ("30m", 1800, "30m"),
            ("1h", 3600, "1h"),
            ("2d", 172_800, "2d"),
            ("1h30m", 5400, "1h30m"),
            ("90m", 5400, "1h30m"),
            ("1d2h3m4s", 93_784, "1d2h3m4s"),
            ("48h", 172_800, "2d"),
            ("0h5m", 300, "5m"),
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(d, Duration::from_secs(secs), "{text}");
            assert_eq!(format_duration(d), canonical, "{text}");
        }
        for bad in [
            "",
            "1",
            "h",
            "1x",
            "1h1h",
            "30m1h",
            "1 h",
            " 1h",
            "1h ",
            "-1h",
            "+1h",
            "1.5h",
            "0s",
            "0h0m",
            "1H",
            "99999999999999999d",
            "1hh",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s");
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
    fn server_rules() {
        let rule = ServerRule::parse("production=^master$").unwrap();
        assert_eq!(rule.environment, env("production"));
        assert!(rule.matches("master") && !rule.matches("main"));
        assert_eq!(rule.to_string(), "production=^master$");
        assert_eq!(serde_json::to_value(&rule).unwrap(), "production=^master$");
        let back: ServerRule = serde_json::from_str("\"production=^master$\"").unwrap();
        assert_eq!(back, rule);
        // The regex may itself contain '='.
        let eq = ServerRule::parse("staging=^a=b$").unwrap();
        assert!(eq.matches("a=b"));

        for (bad, why) in [
            ("production", "no '='"),
            ("Prod=^master$", "environment name"),
            ("production=^(master", "not a valid regular expression"),
        ] {
            let err = ServerRule::parse(bad).unwrap_err();
            assert!(matches!(err, PipelineError::ServerRule { .. }), "{bad}");
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }

        let pipeline = Pipeline::parse(
            "service = \"api\"\n[[environments]]\nname = \"production\"\nauto_release = { branch = \"develop\" }\n[[environments]]\nname = \"dev\"\nauto_release = { branch = \"develop\" }\n",
        )
        .unwrap();
        let err = pipeline.check_server_rules(std::slice::from_ref(&rule)).unwrap_err();
        assert_eq!(
            err,
            PipelineError::ServerRuleConflict {
                env: env("production"),
                branch: "develop".into(),
                rule: "production=^master$".into()
            }
        );
        assert!(
            err.to_string()
                .contains("conflicts with the server rule production=^master$"),
            "{err}"
        );
        // Rules for other environments, and environments without
        // auto-release, are not affected.
        let dev_ok = ServerRule::parse("dev=^develop$").unwrap();
        pipeline.check_server_rules(&[dev_ok]).unwrap();
        Pipeline::parse(EXAMPLE).unwrap().check_server_rules(&[rule]).unwrap();
    }

    #[test]
    fn weekly_freeze_wraps_over_the_week_end() {
        let w = FreezeWindow::weekly("Sat 00:00 - Mon 06:00", "UTC").unwrap();
        // 2026-11-20 is a Friday.
        assert!(!w.contains(utc(2026, 11, 20, 23, 59)));
        assert!(w.contains(utc(2026, 11, 21, 0, 0))); // Sat
        assert!(w.contains(utc(2026, 11, 22, 12, 0))); // Sun
        assert!(w.contains(utc(2026, 11, 23, 5, 59))); // Mon
        assert!(!w.contains(utc(2026, 11, 23, 6, 0)));
        assert!(!w.contains(utc(2026, 11, 25, 12, 0))); // Wed

        // Within one week, and full day names in any case.
        let w = FreezeWindow::weekly("friday 16:00-monday 08:00", "UTC").unwrap();
        assert_eq!(w.to_string(), "Fri 16:00 - Mon 08:00 UTC");
        let w = FreezeWindow::weekly("Tue 09:00 - Tue 10:00", "UTC").unwrap();
        assert!(w.contains(utc(2026, 11, 24, 9, 30)));
        assert!(!w.contains(utc(2026, 11, 24, 10, 0)));
        assert!(!w.contains(utc(2026, 11, 17, 8, 59)));
        // Ending before it starts on the same day covers almost the whole week.
        let w = FreezeWindow::weekly("Tue 10:00 - Tue 09:00", "UTC").unwrap();
        assert!(w.contains(utc(2026, 11, 20, 12, 0)));
        assert!(!w.contains(utc(2026, 11, 24, 9, 30)));
    }

    #[test]
    fn weekly_freeze_follows_daylight_saving_time() {
        let w = FreezeWindow::weekly("Sat 00:00 - Mon 06:00", "Europe/Berlin").unwrap();
        // Winter (CET, UTC+1): Saturday 00:00 in Berlin is Friday 23:00 UTC.
        assert!(!w.contains(utc(2026, 1, 9, 22, 59)));
        assert!(w.contains(utc(2026, 1, 9, 23, 0)));
        assert!(w.contains(utc(2026, 1, 12, 4, 59)));
        assert!(!w.contains(utc(2026, 1, 12, 5, 0)));
        // Summer (CEST, UTC+2): it starts at Friday 22:00 UTC.
        assert!(!w.contains(utc(2026, 7, 10, 21, 59)));
        assert!(w.contains(utc(2026, 7, 10, 22, 0)));
        assert!(!w.contains(utc(2026, 7, 13, 4, 0)));
        // The weekend of the switch to summer time (Sunday 2026-03-29,
        // 02:00 CET becomes 03:00 CEST): Saturday starts at UTC+1, Monday
        // ends at UTC+2.
        assert!(w.contains(utc(2026, 3, 27, 23, 0)));
        assert!(w.contains(utc(2026, 3, 29, 1, 30)));
        assert!(w.contains(utc(2026, 3, 30, 3, 59)));
        assert!(!w.contains(utc(2026, 3, 30, 4, 0)));
    }

    #[test]
    fn one_off_freeze() {
        let spec = FreezeSpec {
            from: Some("2026-12-24T00:00:00+01:00".into()),
            until: Some("2026-12-27T00:00:00Z".into()),
            ..FreezeSpec::default()
        };
        let w = FreezeWindow::from_spec(&spec).unwrap();
        assert_eq!(w.to_string(), "2026-12-23T23:00:00Z - 2026-12-27T00:00:00Z");
        assert!(!w.contains(utc(2026, 12, 23, 22, 59)));
        assert!(w.contains(utc(2026, 12, 23, 23, 0)));
        assert!(w.contains(utc(2026, 12, 26, 23, 59)));
        assert!(!w.contains(utc(2026, 12, 27, 0, 0)));
        let json = serde_json::to_value(w).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"from": "2026-12-23T23:00:00Z", "until": "2026-12-27T00:00:00Z"})
        );
        assert_eq!(serde_json::from_value::<FreezeWindow>(json).unwrap(), w);
    }

    #[test]
    fn environment_freezes_at() {
        let p = Pipeline::parse(EXAMPLE).unwrap();
        let prod = p.environment(&env("production")).unwrap();
        // Christmas 2026 is a Friday: only the one-off window.
        let xmas = utc(2026, 12, 25, 12, 0);
        assert_eq!(prod.freezes_at(xmas).count(), 1);
        // Saturday 2026-12-26 is in both.
        assert_eq!(prod.freezes_at(utc(2026, 12, 26, 12, 0)).count(), 2);
        assert_eq!(prod.freezes_at(utc(2026, 12, 30, 12, 0)).count(), 0);
    }

    #[test]
    fn branch_restriction_compares_by_text() {
        let a = BranchRestriction::new("^master$").unwrap();
        let b = BranchRestriction::new("^master$").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, BranchRestriction::new("^main$").unwrap());
        assert_eq!(format!("{a:?}"), "BranchRestriction(\"^master$\")");
        // Searched, not anchored, like grep.
        assert!(BranchRestriction::new("release/").unwrap().matches("x/release/v1"));
    }
}
