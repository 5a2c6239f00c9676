//! The pipeline file as written, and its canonical TOML form.
//!
//! These types are the file format: TOML (or the same shape in JSON),
//! unknown fields refused. Names, durations, patterns and windows are plain
//! strings here so that validation can say which environment holds a bad
//! value; [`super::Pipeline::from_spec`] turns them into checked types.
//! Each field of [`EnvironmentSpec`] after `name` is one policy's key, in
//! the order of [`super::policies::POLICIES`] (a test holds the two
//! together), so the writer needs to know nothing about any policy.

use serde::{Deserialize, Serialize};

/// A pipeline file as written, before validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub service: String,
    /// The service's source repository, whose environment tags follow
    /// what each environment runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_repo: Option<super::gitops::SourceRepoSpec>,
    #[serde(default)]
    pub environments: Vec<EnvironmentSpec>,
}

/// One `[[environments]]` table as written: its name, then one field per
/// policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_release: Option<AutoReleaseSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_restriction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub approvals: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<WindowSpec>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub private: bool,
    /// Published without a token (release catalog, download links,
    /// registry and APT pulls).
    #[serde(default, skip_serializing_if = "is_false")]
    pub public: bool,
    /// The share of the upstream's agents that must report healthy on the
    /// build for soak time to count: `"90%"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_healthy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// When agents may update (critical builds excepted); same forms as
    /// freeze windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<WindowSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatible_with: Option<CompatibilitySpec>,
    /// A metric gate: a Prometheus query that must stay within bounds
    /// before a build is promoted out of this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<super::verify::VerifySpec>,
    /// The GitOps repository every deployment of the environment is
    /// written into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitops: Option<super::gitops::GitOpsSpec>,
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

/// One time window (a freeze or a maintenance window) as written: either
/// `{ weekly = "Sat 00:00 - Mon 06:00", tz = "Europe/Berlin" }` (tz defaults
/// to UTC) or `{ from = "…", until = "…" }` with RFC 3339 instants.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
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

/// The pipeline file as people write it: one `[[environments]]` table per
/// environment, each policy on one line with its value inline
/// (`auto_release = { branch = "master" }`, `freeze = [{ … }, { … }]`),
/// rather than the nested tables `toml::to_string` would write.
/// [`super::Pipeline::parse`] reads it back to an equal pipeline.
///
/// `spec` is that of a validated pipeline ([`super::Pipeline::to_spec`]),
/// whose every value TOML can hold.
pub(super) fn write_toml(spec: &PipelineSpec) -> String {
    let mut out = format!("service = {}\n", toml::Value::String(spec.service.clone()));
    if let Some(source) = &spec.source_repo {
        let value = toml::Value::try_from(source).expect("a source repository holds only strings");
        out.push_str(&format!("source_repo = {value}\n"));
    }
    for env in &spec.environments {
        out.push_str("\n[[environments]]\n");
        // The table keeps the fields' order (toml's `preserve_order`).
        let table = toml::Table::try_from(env)
            .expect("a validated environment holds only strings, booleans and integers TOML can hold");
        for (key, value) in table {
            // A value's Display is its inline TOML form.
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::pipeline::testing::{one_env, parse_err, EXAMPLE};
    use crate::pipeline::{Pipeline, PipelineError};

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
}
