//! What the pipeline modules' unit tests share: an example pipeline and
//! short ways to parse, name and time things.

use chrono::{DateTime, TimeZone, Utc};

use super::{EnvName, Pipeline, PipelineError};

pub(crate) const EXAMPLE: &str = r#"
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

pub(crate) fn env(name: &str) -> EnvName {
    EnvName::parse(name).unwrap()
}

pub(crate) fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// Parses text that must be refused.
pub(crate) fn parse_err(text: &str) -> PipelineError {
    Pipeline::parse(text).unwrap_err()
}

/// A pipeline of one environment, `production`, with `fields`.
pub(crate) fn one_env(fields: &str) -> String {
    format!("service = \"api\"\n[[environments]]\nname = \"production\"\n{fields}\n")
}

/// A pipeline of `trials` and `production` (promoted from trials), the
/// latter with `extra`.
pub(crate) fn parse_env(extra: &str) -> Result<Pipeline, PipelineError> {
    Pipeline::parse(&format!(
        "service = \"web\"\n[[environments]]\nname = \"trials\"\n[[environments]]\nname = \"production\"\nupstream = \"trials\"\n{extra}\n"
    ))
}
