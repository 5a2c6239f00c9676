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

// Limits on what a pipeline may hold. Every environment costs the server
// work on each status, history and deployment, so a client must not be able
// to make that work unbounded; each limit is far above what a real
// pipeline needs and is named in the error that refuses it.

/// The largest pipeline file a client may submit, in bytes.
pub const MAX_PIPELINE_BYTES: usize = 256 * 1024;

/// The most environments one pipeline may have.
pub const MAX_ENVIRONMENTS: usize = 100;

/// The most freeze windows, and separately the most maintenance windows,
/// one environment may have.
pub const MAX_WINDOWS: usize = 50;

/// The longest branch restriction or server rule pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// How large a compiled branch restriction may grow, in bytes. A short
/// pattern such as `(a{100}){100}` compiles to a large program; the
/// `regex` crate refuses it above this size instead of building it.
const MAX_COMPILED_PATTERN: usize = 256 * 1024;

/// The longest auto-release branch name, in bytes (as for a build's branch).
pub const MAX_BRANCH_BYTES: usize = 255;

/// The longest soak or approval timeout: a year. Longer is a typo
/// (`99999999d`), and instants that far ahead are not representable.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The longest parser message quoted in an error: TOML errors quote the
/// offending line, which may be as long as the file.
const MAX_QUOTED: usize = 1000;

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
    #[error("the pipeline file is {size} bytes: at most {MAX_PIPELINE_BYTES} bytes (256 KiB) are accepted")]
    TooLarge { size: usize },
    #[error("the pipeline has {count} environments: at most {MAX_ENVIRONMENTS} are allowed per pipeline")]
    TooManyEnvironments { count: usize },
    #[error("environment {env} has {count} {field} windows: at most {MAX_WINDOWS} are allowed per environment; merge adjacent windows")]
    TooManyWindows {
        env: EnvName,
        field: &'static str,
        count: usize,
    },
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
    #[error(
        "environment {env}: {field} {value:?} is too long: at most {} (a year) is allowed",
        format_duration(MAX_DURATION)
    )]
    DurationTooLong {
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
    #[error("environment {env}: maintenance window {window} is invalid: {why}")]
    Maintenance { env: EnvName, window: String, why: String },
    #[error("environment {env}: rollout is invalid: {why}")]
    Rollout { env: EnvName, why: String },
    #[error("environment {env}: soak_healthy {value:?} is invalid: {why}")]
    SoakHealthy { env: EnvName, value: String, why: String },
    #[error("environment {env}: compatible_with is invalid: {why}")]
    Compatibility { env: EnvName, why: String },
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
    /// The share of the upstream's agents that must report healthy on the
    /// build for soak time to count: `"90%"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_healthy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// When agents may update (critical builds excepted); same forms as
    /// freeze windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<FreezeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatible_with: Option<CompatibilitySpec>,
}

/// `rollout = { strategy = "canary", count = 2, then = "rolling",
/// max_in_flight = "25%", halt_after_failures = 1, auto_rollback = true }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    pub strategy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<CountOrShare>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt_after_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto_rollback: bool,
}

/// A number of agents (`3`) or a share of them (`"25%"`), as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CountOrShare {
    Count(u32),
    Text(String),
}

/// `compatible_with = { service = "teleport-agent", max_major_skew = 1 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompatibilitySpec {
    pub service: String,
    pub max_major_skew: u64,
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
    /// Compiles `pattern`; the error says why it is not acceptable (a
    /// syntax error, or a pattern longer than [`MAX_PATTERN_BYTES`] or too
    /// large once compiled).
    pub fn new(pattern: &str) -> Result<BranchRestriction, String> {
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(format!(
                "it is {} bytes long: at most {MAX_PATTERN_BYTES} are allowed",
                pattern.len()
            ));
        }
        let regex = regex::RegexBuilder::new(pattern)
            .size_limit(MAX_COMPILED_PATTERN)
            .dfa_size_limit(MAX_COMPILED_PATTERN)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(BranchRestriction {
            source: pattern.to_string(),
            regex,
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
            .map_err(|e| bad(format!("{:?} is not a valid regular expression: {e}", shown(pattern))))?;
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
    /// On each of `days` from `start` to `end` in the wall-clock time of
    /// `tz` ("Mon-Fri 02:00 - 04:00"); when `end` comes before `start` the
    /// window runs past midnight into the next day.
    Daily {
        /// Bit `n` is the weekday `n` days from Monday.
        days: u8,
        start: NaiveTime,
        end: NaiveTime,
        tz: Tz,
    },
    /// Once, from `from` (included) to `until` (excluded).
    Once { from: DateTime<Utc>, until: DateTime<Utc> },
}

const ALL_DAYS: u8 = 0b111_1111;

fn day_bit(d: Weekday) -> u8 {
    1 << d.num_days_from_monday()
}

/// Reads `Mon-Fri`, `Sat,Sun`, `Mon,Wed-Fri` or `Fri-Mon` (a range wraps
/// over the week's end).
fn parse_days(text: &str) -> Result<u8, String> {
    let weekday = |t: &str| -> Result<Weekday, String> {
        t.trim().parse().map_err(|_| {
            format!(
                "{:?} is not a weekday: use Mon, Tue, Wed, Thu, Fri, Sat or Sun",
                shown(t)
            )
        })
    };
    let mut days = 0;
    for item in text.split(',') {
        match item.split_once('-') {
            None => days |= day_bit(weekday(item)?),
            Some((from, to)) => {
                let (mut d, to) = (weekday(from)?, weekday(to)?);
                days |= day_bit(d);
                while d != to {
                    d = d.succ();
                    days |= day_bit(d);
                }
            }
        }
    }
    Ok(days)
}

/// `Mon-Fri`, `Sat,Sun`, … as [`parse_days`] reads them; empty for every day.
fn days_text(days: u8) -> String {
    if days == ALL_DAYS {
        return String::new();
    }
    let mut parts = Vec::new();
    let mut n = 0;
    while n < 7 {
        if days & (1 << n) == 0 {
            n += 1;
            continue;
        }
        let start = n;
        while n + 1 < 7 && days & (1 << (n + 1)) != 0 {
            n += 1;
        }
        let name = |i: u32| weekday_text(Weekday::try_from(i as u8).unwrap_or(Weekday::Mon));
        parts.push(if n > start {
            format!("{}-{}", name(start), name(n))
        } else {
            name(start).to_string()
        });
        n += 1;
    }
    parts.join(",")
}

fn parse_time(time: &str) -> Result<NaiveTime, String> {
    let valid_shape = time.len() == 5 && time.as_bytes()[2] == b':';
    NaiveTime::parse_from_str(time, "%H:%M")
        .ok()
        .filter(|_| valid_shape)
        .ok_or_else(|| format!("{:?} is not a time of day: use 24-hour HH:MM, e.g. 06:00", shown(time)))
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
            "{:?} is not a weekday and a time: write e.g. \"Sat 00:00\"",
            shown(text)
        ));
    };
    // chrono reads Mon..Sun and Monday..Sunday, in any case.
    let day: Weekday = day.parse().map_err(|_| {
        format!(
            "{:?} is not a weekday: use Mon, Tue, Wed, Thu, Fri, Sat or Sun",
            shown(day)
        )
    })?;
    Ok((day, parse_time(time)?))
}

fn parse_instant(field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!(
                "{field} {:?} is not an RFC 3339 time ({e}): write e.g. 2026-12-24T00:00:00Z",
                shown(text)
            )
        })
}

impl FreezeWindow {
    /// Reads a recurring window in time zone `tz` (an IANA name such as
    /// `Europe/Berlin`, or `UTC`): one span of the week, `"Sat 00:00 - Mon
    /// 06:00"`, or the same hours on some days, `"Mon-Fri 02:00 - 04:00"`,
    /// `"Sat,Sun 10:00 - 12:00"`, `"22:00 - 02:00"` (every day).
    pub fn weekly(text: &str, tz: &str) -> Result<FreezeWindow, String> {
        // The two ends are split at the '-' after the start's time of day; a
        // '-' before it belongs to a range of days ("Mon-Fri").
        let split = text
            .char_indices()
            .filter(|(_, c)| *c == '-')
            .map(|(i, _)| i)
            .find(|&i| text[..i].trim_end().ends_with(|c: char| c.is_ascii_digit()))
            .or_else(|| text.find('-'))
            .ok_or_else(|| {
                format!(
                    "{:?} has no '-': write e.g. \"Sat 00:00 - Mon 06:00\" or \"Mon-Fri 02:00 - 04:00\"",
                    shown(text)
                )
            })?;
        let (start, end) = (text[..split].trim(), text[split + 1..].trim());
        let tz = || -> Result<Tz, String> {
            tz.parse().map_err(|_| {
                format!(
                    "{:?} is not a known time zone: use an IANA name such as Europe/Berlin, or UTC",
                    shown(tz)
                )
            })
        };
        if end.split_whitespace().count() == 1 {
            // The same hours on some days (or every day).
            let (days, time) = match start.rsplit_once(char::is_whitespace) {
                Some((days, time)) => (parse_days(days.trim())?, time),
                None => (ALL_DAYS, start),
            };
            let (start, end) = (parse_time(time)?, parse_time(end)?);
            if start == end {
                return Err("it starts and ends at the same time".to_string());
            }
            return Ok(FreezeWindow::Daily {
                days,
                start,
                end,
                tz: tz()?,
            });
        }
        let start = parse_day_time(start)?;
        let end = parse_day_time(end)?;
        if start == end {
            return Err("it starts and ends at the same time".to_string());
        }
        Ok(FreezeWindow::Weekly { start, end, tz: tz()? })
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
            FreezeWindow::Daily { days, start, end, tz } => FreezeSpec {
                weekly: Some(
                    format!(
                        "{} {} - {}",
                        days_text(*days),
                        start.format("%H:%M"),
                        end.format("%H:%M")
                    )
                    .trim_start()
                    .to_string(),
                ),
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
            FreezeWindow::Daily { days, start, end, tz } => {
                let local = at.with_timezone(tz);
                let (today, time) = (day_bit(local.weekday()), local.time());
                if start < end {
                    days & today != 0 && *start <= time && time < *end
                } else {
                    // Past midnight: the window began on the day before.
                    (days & today != 0 && time >= *start)
                        || (days & day_bit(local.weekday().pred()) != 0 && time < *end)
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
            FreezeWindow::Weekly { .. } | FreezeWindow::Daily { .. } => {
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
    /// Soak time counts only while at least this share (percent) of the
    /// upstream's agents report healthy on the build.
    pub soak_healthy: Option<u8>,
    /// How agents take a new build; `None` is all at once, unpaced.
    pub rollout: Option<Rollout>,
    /// Agents update only inside these windows, unless the build is
    /// critical; none means at any time.
    pub maintenance: Vec<FreezeWindow>,
    pub compatible_with: Option<Compatibility>,
}

/// How the agents of an environment take a new build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub strategy: Strategy,
    /// Failed agents (their health check or activation failed) that halt
    /// the rollout: no further agent may update.
    pub halt_after_failures: u32,
    /// Deploy the previous build when the rollout halts on failures.
    pub auto_rollback: bool,
}

/// Which agents may update, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    AllAtOnce,
    /// At most `max_in_flight` agents updating (granted, not yet healthy)
    /// at a time.
    Rolling {
        max_in_flight: Share,
    },
    /// `count` agents first, then the rest by `then` once those are
    /// healthy on the build.
    Canary {
        count: u32,
        then: Box<Strategy>,
    },
}

/// A number of agents or a percentage of an environment's agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    Count(u32),
    Percent(u8),
}

impl Share {
    /// How many of `total` agents: a percentage rounds up, and is never
    /// less than one agent.
    pub fn of(self, total: u64) -> u64 {
        match self {
            Share::Count(n) => u64::from(n),
            // Split so that no product overflows, whatever `total` is:
            // ceil(total * p / 100) = (total / 100) * p + ceil((total % 100) * p / 100).
            Share::Percent(p) => {
                let p = u64::from(p);
                ((total / 100).saturating_mul(p))
                    .saturating_add(((total % 100) * p).div_ceil(100))
                    .max(1)
            }
        }
    }

    fn to_spec(self) -> CountOrShare {
        match self {
            Share::Count(n) => CountOrShare::Count(n),
            Share::Percent(p) => CountOrShare::Text(format!("{p}%")),
        }
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Share::Count(n) => write!(f, "{n}"),
            Share::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Reads `"25%"` (1 to 100).
fn parse_percent(text: &str) -> Result<u8, String> {
    text.trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<u8>().ok())
        .filter(|p| (1..=100).contains(p))
        .ok_or_else(|| format!("{:?} is not a percentage from 1% to 100%, e.g. \"25%\"", shown(text)))
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::AllAtOnce => f.write_str("all-at-once"),
            Strategy::Rolling { max_in_flight } => write!(f, "rolling, {max_in_flight} at a time"),
            Strategy::Canary { count, then } => write!(f, "canary of {count}, then {then}"),
        }
    }
}

impl Rollout {
    fn from_spec(spec: &RolloutSpec) -> Result<Rollout, String> {
        let in_flight = |strategy: &str| -> Result<Share, String> {
            match &spec.max_in_flight {
                None => Err(format!(
                    "{strategy} needs max_in_flight: a number of agents or a share, e.g. \"25%\""
                )),
                Some(CountOrShare::Count(0)) => Err("max_in_flight must be at least 1".to_string()),
                Some(CountOrShare::Count(n)) => Ok(Share::Count(*n)),
                Some(CountOrShare::Text(t)) => Ok(Share::Percent(parse_percent(t)?)),
            }
        };
        let simple = |name: &str, field: &str| -> Result<Strategy, String> {
            match name {
                "all-at-once" => {
                    if spec.max_in_flight.is_some() {
                        return Err(format!("max_in_flight applies to rolling, not to {field} all-at-once"));
                    }
                    Ok(Strategy::AllAtOnce)
                }
                "rolling" => Ok(Strategy::Rolling {
                    max_in_flight: in_flight("rolling")?,
                }),
                other => Err(format!(
                    "{field} {:?} is not a strategy: use \"all-at-once\", \"rolling\" or \"canary\"",
                    shown(other)
                )),
            }
        };
        let strategy = match spec.strategy.as_str() {
            "canary" => {
                let count = spec
                    .count
                    .filter(|n| *n > 0)
                    .ok_or("canary needs count, the number of agents to update first (at least 1)")?;
                let then = spec.then.as_deref().unwrap_or("all-at-once");
                if then == "canary" {
                    return Err("then must be \"all-at-once\" or \"rolling\"".to_string());
                }
                Strategy::Canary {
                    count,
                    then: Box::new(simple(then, "then")?),
                }
            }
            other => {
                if spec.count.is_some() || spec.then.is_some() {
                    return Err("count and then apply only to strategy \"canary\"".to_string());
                }
                simple(other, "strategy")?
            }
        };
        let halt_after_failures = match spec.halt_after_failures {
            Some(0) => return Err("halt_after_failures must be at least 1".to_string()),
            Some(n) => n,
            None => 1,
        };
        Ok(Rollout {
            strategy,
            halt_after_failures,
            auto_rollback: spec.auto_rollback,
        })
    }

    fn to_spec(&self) -> RolloutSpec {
        let (strategy, count, then, max_in_flight) = match &self.strategy {
            Strategy::AllAtOnce => ("all-at-once", None, None, None),
            Strategy::Rolling { max_in_flight } => ("rolling", None, None, Some(max_in_flight.to_spec())),
            Strategy::Canary { count, then } => match then.as_ref() {
                Strategy::Rolling { max_in_flight } => {
                    ("canary", Some(*count), Some("rolling"), Some(max_in_flight.to_spec()))
                }
                _ => ("canary", Some(*count), Some("all-at-once"), None),
            },
        };
        RolloutSpec {
            strategy: strategy.to_string(),
            count,
            then: then.map(str::to_string),
            max_in_flight,
            halt_after_failures: Some(self.halt_after_failures),
            auto_rollback: self.auto_rollback,
        }
    }
}

/// Builds of this environment may be at most `max_major_skew` major
/// versions ahead of the oldest agent of `service` reporting in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compatibility {
    pub service: ServiceName,
    pub max_major_skew: u64,
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
                let bad = branch.trim().is_empty()
                    || branch.len() > MAX_BRANCH_BYTES
                    || branch.chars().any(|c| c.is_control() || c.is_whitespace());
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
            Some(text) => match parse_duration(text) {
                None => Err(PipelineError::Duration {
                    env: env(),
                    field,
                    value: shown(text),
                }),
                Some(d) if d > MAX_DURATION => Err(PipelineError::DurationTooLong {
                    env: env(),
                    field,
                    value: shown(text),
                }),
                Some(d) => Ok(Some(d)),
            },
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
            Some(pattern) => Some(BranchRestriction::new(pattern).map_err(|message| PipelineError::Regex {
                env: env(),
                pattern: shown(pattern),
                message,
            })?),
        };

        for (field, windows) in [("freeze", &spec.freeze), ("maintenance", &spec.maintenance)] {
            if windows.len() > MAX_WINDOWS {
                return Err(PipelineError::TooManyWindows {
                    env: env(),
                    field,
                    count: windows.len(),
                });
            }
        }
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

        let maintenance = spec
            .maintenance
            .iter()
            .map(|w| {
                FreezeWindow::from_spec(w).map_err(|why| PipelineError::Maintenance {
                    env: env(),
                    window: freeze_spec_text(w),
                    why,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let soak_healthy = match &spec.soak_healthy {
            None => None,
            Some(text) => {
                let bad = |why: String| PipelineError::SoakHealthy {
                    env: env(),
                    value: shown(text),
                    why,
                };
                if soak.is_none() || upstream.is_none() {
                    return Err(bad(
                        "it applies to a soak in the upstream: set upstream and soak as well".to_string(),
                    ));
                }
                Some(parse_percent(text).map_err(bad)?)
            }
        };

        let rollout = match &spec.rollout {
            None => None,
            Some(r) => Some(Rollout::from_spec(r).map_err(|why| PipelineError::Rollout { env: env(), why })?),
        };

        let compatible_with = match &spec.compatible_with {
            None => None,
            Some(c) => Some(Compatibility {
                service: ServiceName::parse(&c.service).map_err(|e| PipelineError::Compatibility {
                    env: env(),
                    why: e.to_string(),
                })?,
                max_major_skew: c.max_major_skew,
            }),
        };

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
            soak_healthy,
            rollout,
            maintenance,
            compatible_with,
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
            soak_healthy: self.soak_healthy.map(|p| format!("{p}%")),
            rollout: self.rollout.as_ref().map(Rollout::to_spec),
            maintenance: self.maintenance.iter().map(FreezeWindow::to_spec).collect(),
            compatible_with: self.compatible_with.as_ref().map(|c| CompatibilitySpec {
                service: c.service.to_string(),
                max_major_skew: c.max_major_skew,
            }),
        }
    }

    /// Whether agents may update at `at`: inside a maintenance window, or
    /// at any time when there is none.
    pub fn in_maintenance(&self, at: DateTime<Utc>) -> bool {
        self.maintenance.is_empty() || self.maintenance.iter().any(|w| w.contains(at))
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
        let spec: PipelineSpec = toml::from_str(text).map_err(|e| {
            let message = e.to_string();
            if message.chars().count() > MAX_QUOTED {
                PipelineError::Toml(message.chars().take(MAX_QUOTED).chain(['…']).collect())
            } else {
                PipelineError::Toml(message)
            }
        })?;
        Pipeline::from_spec(&spec)
    }

    /// Reads and validates a pipeline file a client submits: a file larger
    /// than [`MAX_PIPELINE_BYTES`] is refused before it is read. Stored
    /// pipelines are read with [`Pipeline::parse`]: their canonical form
    /// may be longer than the file that was applied.
    pub fn parse_submitted(text: &str) -> Result<Pipeline, PipelineError> {
        if text.len() > MAX_PIPELINE_BYTES {
            return Err(PipelineError::TooLarge { size: text.len() });
        }
        Pipeline::parse(text)
    }

    /// Validates a pipeline as written. Errors come in file order, one at a
    /// time: the first environment that is wrong is named.
    pub fn from_spec(spec: &PipelineSpec) -> Result<Pipeline, PipelineError> {
        let service = ServiceName::parse(&spec.service).map_err(PipelineError::Service)?;
        if spec.environments.is_empty() {
            return Err(PipelineError::NoEnvironments);
        }
        if spec.environments.len() > MAX_ENVIRONMENTS {
            return Err(PipelineError::TooManyEnvironments {
                count: spec.environments.len(),
            });
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
            let windows = |key: &str, list: &[FreezeSpec]| -> String {
                if list.is_empty() {
                    return String::new();
                }
                let windows: Vec<String> = list
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
                format!("{key} = [{}]\n", windows.join(", "))
            };
            out.push_str(&windows("freeze", &env.freeze));
            if env.private {
                out.push_str("private = true\n");
            }
            if let Some(share) = &env.soak_healthy {
                out.push_str(&format!("soak_healthy = {}\n", string(share)));
            }
            if let Some(r) = &env.rollout {
                let mut parts = vec![format!("strategy = {}", string(&r.strategy))];
                if let Some(n) = r.count {
                    parts.push(format!("count = {n}"));
                }
                if let Some(then) = &r.then {
                    parts.push(format!("then = {}", string(then)));
                }
                match &r.max_in_flight {
                    Some(CountOrShare::Count(n)) => parts.push(format!("max_in_flight = {n}")),
                    Some(CountOrShare::Text(t)) => parts.push(format!("max_in_flight = {}", string(t))),
                    None => {}
                }
                if let Some(n) = r.halt_after_failures {
                    parts.push(format!("halt_after_failures = {n}"));
                }
                if r.auto_rollback {
                    parts.push("auto_rollback = true".to_string());
                }
                out.push_str(&format!("rollout = {{ {} }}\n", parts.join(", ")));
            }
            out.push_str(&windows("maintenance", &env.maintenance));
            if let Some(c) = &env.compatible_with {
                out.push_str(&format!(
                    "compatible_with = {{ service = {}, max_major_skew = {} }}\n",
                    string(&c.service),
                    c.max_major_skew
                ));
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
    fn limits_on_what_a_pipeline_holds_are_named() {
        let windows = |key: &str, n: usize| {
            let list = vec!["{ weekly = \"Sat 00:00 - Sun 00:00\" }"; n].join(", ");
            one_env(&format!("{key} = [{list}]"))
        };
        Pipeline::parse(&windows("freeze", MAX_WINDOWS)).unwrap();
        let err = parse_err(&windows("freeze", MAX_WINDOWS + 1));
        assert_eq!(
            err.to_string(),
            "environment production has 51 freeze windows: at most 50 are allowed per environment; merge adjacent windows"
        );
        let err = parse_err(&windows("maintenance", MAX_WINDOWS + 1));
        assert!(
            matches!(
                err,
                PipelineError::TooManyWindows {
                    field: "maintenance",
                    ..
                }
            ),
            "{err}"
        );

        let long = "a".repeat(MAX_PATTERN_BYTES + 1);
        let err = parse_err(&one_env(&format!("branch_restriction = \"{long}\"")));
        assert!(err.to_string().contains("at most 1024 are allowed"), "{err}");
        // Short to write, huge once compiled.
        let err = parse_err(&one_env("branch_restriction = \"(a{100}){100}\""));
        assert!(err.to_string().contains("size limit"), "{err}");
        let err = ServerRule::parse(&format!("production={long}")).unwrap_err();
        assert!(err.to_string().contains("at most 1024 are allowed"), "{err}");

        let branch = "b".repeat(MAX_BRANCH_BYTES + 1);
        let err = parse_err(&one_env(&format!("auto_release = {{ branch = \"{branch}\" }}")));
        assert!(matches!(err, PipelineError::AutoReleaseBranch { .. }), "{err}");

        let big = format!("{}\n# {}\n", one_env(""), "x".repeat(MAX_PIPELINE_BYTES));
        assert!(
            Pipeline::parse(&big).is_ok(),
            "stored pipelines are not held to the file limit"
        );
        let err = Pipeline::parse_submitted(&big).unwrap_err();
        assert!(matches!(err, PipelineError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn toml_errors_quote_at_most_a_thousand_characters() {
        let err = parse_err(&format!("service = \"api\" {}", "x".repeat(100_000)));
        assert!(err.to_string().chars().count() < 1100, "{}", err.to_string().len());
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

    fn parse_env(extra: &str) -> Result<Pipeline, PipelineError> {
        Pipeline::parse(&format!(
            "service = \"web\"\n[[environments]]\nname = \"trials\"\n[[environments]]\nname = \"production\"\nupstream = \"trials\"\n{extra}\n"
        ))
    }

    #[test]
    fn daily_windows_cover_the_same_hours_on_their_days() {
        let w = FreezeWindow::weekly("Mon-Fri 02:00 - 04:00", "UTC").unwrap();
        // 2026-11-23 is a Monday.
        assert!(w.contains(utc(2026, 11, 23, 2, 0)));
        assert!(w.contains(utc(2026, 11, 27, 3, 59)), "Friday");
        assert!(!w.contains(utc(2026, 11, 23, 4, 0)), "the end is excluded");
        assert!(!w.contains(utc(2026, 11, 28, 3, 0)), "Saturday");
        assert_eq!(w.to_string(), "Mon-Fri 02:00 - 04:00 UTC");
        // Past midnight: Friday 22:00 to Saturday 02:00 belongs to Friday.
        let w = FreezeWindow::weekly("Fri 22:00 - 02:00", "UTC").unwrap();
        assert!(w.contains(utc(2026, 11, 28, 1, 0)));
        assert!(!w.contains(utc(2026, 11, 27, 1, 0)), "Friday 01:00 follows Thursday");
        let every_day = FreezeWindow::weekly("22:00 - 02:00", "Europe/Berlin").unwrap();
        assert!(every_day.contains(utc(2026, 11, 25, 22, 30)), "23:30 in Berlin");
        assert!(!every_day.contains(utc(2026, 11, 25, 20, 30)));
        let w = FreezeWindow::weekly("Sat,Sun 10:00 - 12:00", "UTC").unwrap();
        assert!(w.contains(utc(2026, 11, 29, 11, 0)) && !w.contains(utc(2026, 11, 27, 11, 0)));
        assert_eq!(w.to_spec().weekly.as_deref(), Some("Sat-Sun 10:00 - 12:00"));
        let w = FreezeWindow::weekly("Fri-Mon 10:00 - 12:00", "UTC").unwrap();
        assert!(w.contains(utc(2026, 11, 23, 11, 0)) && !w.contains(utc(2026, 11, 24, 11, 0)));
        for (text, why) in [
            ("Mon-Fro 02:00 - 04:00", "\"Fro\" is not a weekday"),
            ("Mon-Fri 02:00 - 4pm", "is not a time of day"),
            ("Mon 02:00 - 02:00", "same time"),
        ] {
            let err = FreezeWindow::weekly(text, "UTC").unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
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
}
