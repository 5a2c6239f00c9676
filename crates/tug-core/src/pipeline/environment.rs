//! One stage of a pipeline as the rest of Tugboat uses it: its name, its
//! upstream and its policies in checked types ([`Environment`]), with the
//! value types of the policies that have no module of their own (branch
//! restrictions, compatibility).
//!
//! An environment is read from and written to its file form policy by
//! policy, through [`super::policies::POLICIES`]; the checks that need the
//! whole pipeline are in [`super::validation`].

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::policies::POLICIES;
use super::rollout::Rollout;
use super::spec::EnvironmentSpec;
use super::validation::{PipelineError, MAX_COMPILED_PATTERN, MAX_PATTERN_BYTES};
use super::window::TimeWindow;
use crate::names::{is_slug, shown, string_newtype, NameError, ServiceName};

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
    pub freeze: Vec<TimeWindow>,
    /// Private environments may receive embargoed (security) builds.
    pub private: bool,
    /// Soak time counts only while at least this share (percent) of the
    /// upstream's agents report healthy on the build.
    pub soak_healthy: Option<u8>,
    /// How agents take a new build; `None` is all at once, unpaced.
    pub rollout: Option<Rollout>,
    /// Agents update only inside these windows, unless the build is
    /// critical; none means at any time.
    pub maintenance: Vec<TimeWindow>,
    pub compatible_with: Option<Compatibility>,
    /// A metric gate on promotions out of this environment and on its
    /// paced rollouts.
    pub verify: Option<super::verify::Verify>,
    /// The GitOps repository every deployment here is written into.
    pub gitops: Option<super::gitops::GitOps>,
    /// Public environments are published without a token: the release
    /// catalog, stable download links, anonymous registry pulls and APT
    /// repositories. Never private at the same time.
    pub public: bool,
}

/// Builds of this environment may be at most `max_major_skew` major
/// versions ahead of the oldest agent of `service` reporting in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compatibility {
    pub service: ServiceName,
    pub max_major_skew: u64,
}

impl Environment {
    /// An environment named `name` without any policy: no upstream, no
    /// auto-release, deployable at any time without approval.
    pub fn new(name: EnvName) -> Environment {
        Environment {
            name,
            upstream: None,
            auto_release: None,
            soak: None,
            approvals: 0,
            approval_timeout: None,
            branch_restriction: None,
            freeze: Vec::new(),
            private: false,
            soak_healthy: None,
            rollout: None,
            maintenance: Vec::new(),
            compatible_with: None,
            verify: None,
            gitops: None,
            public: false,
        }
    }

    /// Validates one environment on its own, policy by policy in the order
    /// of [`POLICIES`]; the checks that need the whole pipeline
    /// (duplicates, upstreams that exist, cycles) are in
    /// [`super::Pipeline::from_spec`].
    pub fn from_spec(spec: &EnvironmentSpec) -> Result<Environment, PipelineError> {
        let name = EnvName::parse(&spec.name).map_err(PipelineError::EnvironmentName)?;
        let mut env = Environment::new(name);
        for policy in POLICIES {
            policy.read(spec, &mut env)?;
        }
        Ok(env)
    }

    /// The environment as written in the pipeline file.
    pub fn to_spec(&self) -> EnvironmentSpec {
        let mut spec = EnvironmentSpec {
            name: self.name.to_string(),
            ..EnvironmentSpec::default()
        };
        for policy in POLICIES {
            policy.write(self, &mut spec);
        }
        spec
    }

    /// Whether agents may update at `at`: inside a maintenance window, or
    /// at any time when there is none.
    pub fn in_maintenance(&self, at: DateTime<Utc>) -> bool {
        self.maintenance.is_empty() || self.maintenance.iter().any(|w| w.contains(at))
    }

    /// The freeze windows in force at `at`, in file order.
    pub fn freezes_at(&self, at: DateTime<Utc>) -> impl Iterator<Item = &TimeWindow> {
        self.freeze.iter().filter(move |w| w.contains(at))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::{env, utc, EXAMPLE};
    use crate::pipeline::Pipeline;

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
