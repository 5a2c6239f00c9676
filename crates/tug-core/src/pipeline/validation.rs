//! What a pipeline may hold and why one is refused: the limits that keep a
//! server's work bounded, the errors that name the environment at fault,
//! the checks that need the whole pipeline (unique names, upstreams that
//! exist, no cycle) and the server-wide rules no pipeline can loosen.
//!
//! The checks of one policy on its own are in [`super::policies`], next to
//! the rest of the policy's definition.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration::format_duration;
use super::environment::{BranchRestriction, EnvName, Environment};
use super::Pipeline;
use crate::names::{shown, NameError};

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
pub(crate) const MAX_COMPILED_PATTERN: usize = 256 * 1024;

/// The longest auto-release branch name, in bytes (as for a build's branch).
pub const MAX_BRANCH_BYTES: usize = 255;

/// The longest soak or approval timeout: a year. Longer is a typo
/// (`99999999d`), and instants that far ahead are not representable.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The longest parser message quoted in an error: TOML errors quote the
/// offending line, which may be as long as the file.
const MAX_QUOTED: usize = 1000;

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
    #[error("environment {0} is both public and private: a private environment receives embargoed builds, which are never published; set one of them")]
    PublicAndPrivate(String),
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
    #[error("environment {env}: verify.{field} is invalid: {why}")]
    Verify {
        env: EnvName,
        field: &'static str,
        why: String,
    },
    #[error("environment {env}: gitops {field} is invalid: {why}")]
    GitOps {
        env: EnvName,
        field: &'static str,
        why: String,
    },
    #[error("source_repo {field} is invalid: {why}")]
    SourceRepo { field: &'static str, why: String },
}

fn cycle_text(cycle: &[EnvName]) -> String {
    cycle.iter().map(EnvName::as_str).collect::<Vec<_>>().join(" -> ")
}

/// A TOML parser's error as a [`PipelineError`], cut to [`MAX_QUOTED`]
/// characters.
pub(crate) fn toml_error(e: &toml::de::Error) -> PipelineError {
    let message = e.to_string();
    if message.chars().count() > MAX_QUOTED {
        PipelineError::Toml(message.chars().take(MAX_QUOTED).chain(['…']).collect())
    } else {
        PipelineError::Toml(message)
    }
}

/// Checks the number of environments as written, before any is read: at
/// least one, at most [`MAX_ENVIRONMENTS`].
pub(crate) fn check_count(count: usize) -> Result<(), PipelineError> {
    if count == 0 {
        return Err(PipelineError::NoEnvironments);
    }
    if count > MAX_ENVIRONMENTS {
        return Err(PipelineError::TooManyEnvironments { count });
    }
    Ok(())
}

/// Checks that environment names are unique, that every upstream names an
/// environment of the pipeline, and that upstreams form no cycle.
pub(crate) fn check_upstreams(environments: &[Environment]) -> Result<(), PipelineError> {
    let mut index: HashMap<&EnvName, usize> = HashMap::new();
    for (i, env) in environments.iter().enumerate() {
        if index.insert(&env.name, i).is_some() {
            return Err(PipelineError::DuplicateEnvironment { env: env.name.clone() });
        }
    }
    // Every upstream as an index, so the cycle search below cannot fail.
    let mut upstream: Vec<Option<usize>> = Vec::with_capacity(environments.len());
    for env in environments {
        upstream.push(match &env.upstream {
            None => None,
            Some(up) => Some(*index.get(up).ok_or_else(|| PipelineError::UnknownUpstream {
                env: env.name.clone(),
                upstream: up.clone(),
            })?),
        });
    }
    match find_cycle(&upstream) {
        Some(cycle) => Err(PipelineError::UpstreamCycle {
            cycle: cycle.into_iter().map(|i| environments[i].name.clone()).collect(),
        }),
        None => Ok(()),
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

impl Pipeline {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::{env, one_env, parse_err, EXAMPLE};

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
}
