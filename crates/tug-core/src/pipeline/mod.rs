//! A service's pipeline: the environments a build moves through and the
//! policies that guard each of them, as written in the pipeline file and in
//! its validated form.
//!
//! [`PipelineSpec`] is the file exactly as written (TOML, unknown fields
//! refused); [`Pipeline`] is what the rest of Tugboat works with, built only
//! by [`Pipeline::parse`] / [`Pipeline::from_spec`], which check every name,
//! upstream, duration, regular expression and window and say which
//! environment is wrong. The JSON form of a [`Pipeline`] (for the API) is the
//! same shape as the file, so what `tug policy list` prints can be applied
//! again.
//!
//! By concern: [`spec`] (the file format and its canonical TOML writer),
//! [`policies`] (each policy defined once: its name, key, flag, checks,
//! listing, how it is applied and deleted), [`environment`] (one validated
//! stage), [`duration`], [`window`] (the time windows of freezes and
//! maintenance), [`rollout`], and [`validation`] (limits, errors, cycles,
//! server rules). Everything is also reachable from here, as before the
//! split.
//!
//! This module does not decide whether a deployment may happen: that is
//! [`crate::policy::evaluate`]. It reads no clock: windows are asked about
//! an instant the caller passes in.

pub mod duration;
pub mod environment;
pub mod gitops;
pub mod policies;
pub mod rollout;
pub mod spec;
pub mod validation;
pub mod verify;
pub mod window;

#[cfg(test)]
pub(crate) mod testing;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use duration::{format_duration, parse_duration};
pub use environment::{BranchRestriction, Compatibility, EnvName, Environment};
pub use gitops::{GitOps, GitOpsSpec, Layout, RepoUrl, SourceRepo, SourceRepoSpec};
pub use policies::{ApplyError, FlagValues, Policy, PolicyEntry, POLICIES};
pub use rollout::{Rollout, Share, Strategy};
pub use spec::{
    AutoReleaseSpec, CompatibilitySpec, CountOrShare, EnvironmentSpec, PipelineSpec, RolloutSpec, WindowSpec,
};
pub use validation::{
    PipelineError, ServerRule, MAX_APPROVALS, MAX_BRANCH_BYTES, MAX_DURATION, MAX_ENVIRONMENTS, MAX_PATTERN_BYTES,
    MAX_PIPELINE_BYTES, MAX_WINDOWS,
};
pub use verify::{Verify, VerifySpec};
pub use window::TimeWindow;

use crate::names::ServiceName;

/// A service's validated pipeline: its environments in file order, each
/// upstream naming another environment of it, without cycles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub service: ServiceName,
    /// The service's source repository, whose environment tags follow
    /// what each environment runs.
    pub source_repo: Option<SourceRepo>,
    pub environments: Vec<Environment>,
}

impl Pipeline {
    /// Reads and validates a pipeline file.
    pub fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        let spec: PipelineSpec = toml::from_str(text).map_err(|e| validation::toml_error(&e))?;
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
        validation::check_count(spec.environments.len())?;
        let environments = spec
            .environments
            .iter()
            .map(Environment::from_spec)
            .collect::<Result<Vec<_>, _>>()?;
        validation::check_upstreams(&environments)?;
        let source_repo = spec
            .source_repo
            .as_ref()
            .map(SourceRepo::from_spec)
            .transpose()
            .map_err(|(field, why)| PipelineError::SourceRepo { field, why })?;
        Ok(Pipeline {
            service,
            source_repo,
            environments,
        })
    }

    /// The pipeline as written in a file.
    pub fn to_spec(&self) -> PipelineSpec {
        PipelineSpec {
            service: self.service.to_string(),
            source_repo: self.source_repo.as_ref().map(SourceRepo::to_spec),
            environments: self.environments.iter().map(Environment::to_spec).collect(),
        }
    }

    /// The pipeline file in its canonical form, the way people write it
    /// (see [`spec::write_toml`]); [`Pipeline::parse`] reads it back to an
    /// equal pipeline.
    pub fn to_toml(&self) -> String {
        spec::write_toml(&self.to_spec())
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
    use std::time::Duration;

    use super::testing::{env, one_env, parse_err, EXAMPLE};
    use super::*;
    use crate::names::NameError;

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
    fn public_environments_are_never_private() {
        let p = Pipeline::parse("service = \"api\"\n[[environments]]\nname = \"stable\"\npublic = true\n").unwrap();
        assert!(p.environment(&env("stable")).unwrap().public);
        let err = parse_err("service = \"api\"\n[[environments]]\nname = \"stable\"\npublic = true\nprivate = true\n");
        assert_eq!(err, PipelineError::PublicAndPrivate("stable".into()));
        assert!(err.to_string().contains("both public and private"), "{err}");
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
}
