//! What a pipeline says, policy by policy, and what changed between two
//! revisions of it: `production: approvals 1 → 2`, `production: + freeze
//! Sat 00:00 - Mon 06:00 Europe/Berlin`, `+ environment qa`.
//!
//! [`changes`] compares two revisions policy by policy, through the
//! definitions in [`crate::pipeline::policies`]: each policy's values as
//! `tug policy list` shows them, compared as one value or as a set of
//! windows as the policy says, so the listing and the history always
//! agree. [`duplicate_window`] finds a window listed twice, which a new
//! revision may not contain.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pipeline::policies::{Policy, POLICIES, UPSTREAM, YES};
use crate::pipeline::{EnvName, Environment, Pipeline, TimeWindow};

/// One difference between two revisions of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum PipelineChange {
    EnvironmentAdded {
        environment: EnvName,
        upstream: Option<EnvName>,
    },
    EnvironmentRemoved {
        environment: EnvName,
    },
    PolicyAdded {
        environment: EnvName,
        policy: String,
        value: String,
    },
    PolicyRemoved {
        environment: EnvName,
        policy: String,
        value: String,
    },
    PolicyChanged {
        environment: EnvName,
        policy: String,
        old: String,
        new: String,
    },
    /// The service's source repository (`source_repo`) was named, changed
    /// or dropped (`None`: none, before or after).
    SourceRepo {
        old: Option<String>,
        new: Option<String>,
    },
    /// The same environments, listed in another order.
    Reordered {
        old: Vec<EnvName>,
        new: Vec<EnvName>,
    },
}

/// ` 2` after a policy's name, or nothing for a yes/no policy.
fn value_text(value: &str) -> String {
    if value == YES {
        String::new()
    } else {
        format!(" {value}")
    }
}

impl fmt::Display for PipelineChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |list: &[EnvName]| list.iter().map(EnvName::as_str).collect::<Vec<_>>().join(", ");
        match self {
            PipelineChange::EnvironmentAdded { environment, upstream } => {
                write!(f, "+ environment {environment}")?;
                match upstream {
                    Some(up) => write!(f, " (from {up})"),
                    None => Ok(()),
                }
            }
            PipelineChange::EnvironmentRemoved { environment } => write!(f, "- environment {environment}"),
            PipelineChange::PolicyAdded {
                environment,
                policy,
                value,
            } => write!(f, "{environment}: + {policy}{}", value_text(value)),
            PipelineChange::PolicyRemoved {
                environment,
                policy,
                value,
            } => write!(f, "{environment}: - {policy}{}", value_text(value)),
            PipelineChange::PolicyChanged {
                environment,
                policy,
                old,
                new,
            } => write!(f, "{environment}: {policy} {old} → {new}"),
            PipelineChange::SourceRepo { old, new } => match (old, new) {
                (None, Some(new)) => write!(f, "+ source_repo {new}"),
                (Some(old), None) => write!(f, "- source_repo {old}"),
                (Some(old), Some(new)) => write!(f, "source_repo {old} → {new}"),
                (None, None) => Ok(()),
            },
            PipelineChange::Reordered { old, new } => {
                write!(f, "order of environments: {} → {}", names(old), names(new))
            }
        }
    }
}

/// The changes that make `old` into `new`; `old` is `None` for a first
/// revision, whose every environment and policy is new. Environments come
/// in `new`'s order, removed ones after them.
pub fn changes(old: Option<&Pipeline>, new: &Pipeline) -> Vec<PipelineChange> {
    let empty: &[Environment] = &[];
    let old_envs = old.map_or(empty, |p| p.environments.as_slice());
    let mut out = Vec::new();
    let source = |p: &Pipeline| p.source_repo.as_ref().map(ToString::to_string);
    let (old_source, new_source) = (old.and_then(source), source(new));
    if old_source != new_source {
        out.push(PipelineChange::SourceRepo {
            old: old_source,
            new: new_source,
        });
    }
    for env in &new.environments {
        let name = &env.name;
        match old_envs.iter().find(|o| &o.name == name) {
            None => {
                out.push(PipelineChange::EnvironmentAdded {
                    environment: name.clone(),
                    upstream: env.upstream.clone(),
                });
                // The upstream is on the line above.
                let added = POLICIES.iter().filter(|p| p.name() != UPSTREAM.name());
                for p in added {
                    out.extend(p.list(env).into_iter().map(|value| PipelineChange::PolicyAdded {
                        environment: name.clone(),
                        policy: p.name().to_string(),
                        value,
                    }));
                }
            }
            Some(before) => {
                for p in POLICIES {
                    out.extend(policy_changes(name, *p, p.list(before), p.list(env)));
                }
            }
        }
    }
    for env in old_envs {
        if new.environment(&env.name).is_none() {
            out.push(PipelineChange::EnvironmentRemoved {
                environment: env.name.clone(),
            });
        }
    }
    let kept = |from: &[Environment], other: &[Environment]| -> Vec<EnvName> {
        from.iter()
            .filter(|e| other.iter().any(|o| o.name == e.name))
            .map(|e| e.name.clone())
            .collect()
    };
    let (old_order, new_order) = (kept(old_envs, &new.environments), kept(&new.environments, old_envs));
    if old_order != new_order {
        out.push(PipelineChange::Reordered {
            old: old_order,
            new: new_order,
        });
    }
    out
}

/// How one policy of an environment changed between two revisions, from
/// its values as listed before and after.
fn policy_changes(env: &EnvName, policy: &dyn Policy, before: Vec<String>, after: Vec<String>) -> Vec<PipelineChange> {
    let added = |value: String| PipelineChange::PolicyAdded {
        environment: env.clone(),
        policy: policy.name().to_string(),
        value,
    };
    let removed = |value: String| PipelineChange::PolicyRemoved {
        environment: env.clone(),
        policy: policy.name().to_string(),
        value,
    };
    if policy.about().multi {
        let mut out: Vec<PipelineChange> = before
            .iter()
            .filter(|v| !after.contains(v))
            .cloned()
            .map(removed)
            .collect();
        out.extend(after.iter().filter(|v| !before.contains(v)).cloned().map(added));
        return out;
    }
    match (before.into_iter().next(), after.into_iter().next()) {
        (None, Some(v)) => vec![added(v)],
        (Some(v), None) => vec![removed(v)],
        (Some(old), Some(new)) if old != new => vec![PipelineChange::PolicyChanged {
            environment: env.clone(),
            policy: policy.name().to_string(),
            old,
            new,
        }],
        _ => Vec::new(),
    }
}

/// A window an environment lists twice (as freeze or maintenance window),
/// described for an error message: a second copy changes nothing and only
/// hides what was meant.
pub fn duplicate_window(pipeline: &Pipeline) -> Option<String> {
    let twice = |list: &[TimeWindow]| -> Option<TimeWindow> {
        list.iter()
            .enumerate()
            .find(|(i, w)| list[..*i].contains(w))
            .map(|(_, w)| *w)
    };
    pipeline.environments.iter().find_map(|env| {
        let found = twice(&env.freeze)
            .map(|w| ("freeze", w))
            .or_else(|| twice(&env.maintenance).map(|w| ("maintenance", w)));
        found.map(|(kind, w)| {
            format!(
                "environment {} lists {kind} window {w} twice; list each window once",
                env.name
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
service = "api"

[[environments]]
name = "dev"
auto_release = { branch = "master" }

[[environments]]
name = "production"
upstream = "dev"
approvals = 1
"#;

    fn parse(text: &str) -> Pipeline {
        Pipeline::parse(text).unwrap()
    }

    fn lines(old: Option<&str>, new: &str) -> Vec<String> {
        let old = old.map(parse);
        changes(old.as_ref(), &parse(new))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn an_identical_revision_has_no_changes() {
        assert!(lines(Some(BASE), BASE).is_empty());
    }

    #[test]
    fn a_first_revision_lists_every_environment_and_policy() {
        assert_eq!(
            lines(None, BASE),
            vec![
                "+ environment dev",
                "dev: + auto-release master",
                "+ environment production (from dev)",
                "production: + approvals 1",
            ]
        );
    }

    #[test]
    fn changed_added_and_removed_policies_and_windows_are_named() {
        let new = BASE.replace("approvals = 1", "approvals = 2\nprivate = true\nfreeze = [{ weekly = \"Sat 00:00 - Mon 06:00\", tz = \"Europe/Berlin\" }]")
            .replace("auto_release = { branch = \"master\" }\n", "")
            + "\n[[environments]]\nname = \"qa\"\nupstream = \"dev\"\n";
        assert_eq!(
            lines(Some(BASE), &new),
            vec![
                "dev: - auto-release master",
                "production: approvals 1 → 2",
                "production: + freeze Sat 00:00 - Mon 06:00 Europe/Berlin",
                "production: + private",
                "+ environment qa (from dev)",
            ]
        );
        assert_eq!(
            lines(Some(&new), BASE),
            vec![
                "dev: + auto-release master",
                "production: approvals 2 → 1",
                "production: - freeze Sat 00:00 - Mon 06:00 Europe/Berlin",
                "production: - private",
                "- environment qa",
            ]
        );
    }

    #[test]
    fn the_source_repository_named_changed_and_dropped_is_a_change() {
        let with = |url: &str| {
            BASE.replacen(
                "service = \"api\"\n",
                &format!("service = \"api\"\nsource_repo = {{ url = \"{url}\" }}\n"),
                1,
            )
        };
        let a = with("git@github.com:acme/api.git");
        let b = with("https://git.example.com/api.git");
        assert_eq!(
            lines(Some(BASE), &a),
            vec!["+ source_repo git@github.com:acme/api.git (tag env/{env})"]
        );
        assert_eq!(
            lines(Some(&a), &b),
            vec!["source_repo git@github.com:acme/api.git (tag env/{env}) → https://git.example.com/api.git (tag env/{env})"]
        );
        assert_eq!(
            lines(Some(&b), BASE),
            vec!["- source_repo https://git.example.com/api.git (tag env/{env})"]
        );
        assert!(lines(Some(&a), &a).is_empty());
    }

    #[test]
    fn a_new_order_is_a_change() {
        let swapped = r#"
service = "api"

[[environments]]
name = "production"
upstream = "dev"
approvals = 1

[[environments]]
name = "dev"
auto_release = { branch = "master" }
"#;
        assert_eq!(
            lines(Some(BASE), swapped),
            vec!["order of environments: dev, production → production, dev"]
        );
    }

    #[test]
    fn changes_serialize_with_their_kind() {
        let c = PipelineChange::PolicyChanged {
            environment: EnvName::parse("production").unwrap(),
            policy: "approvals".into(),
            old: "1".into(),
            new: "2".into(),
        };
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["change"], "policy_changed");
        assert_eq!(serde_json::from_value::<PipelineChange>(json).unwrap(), c);
    }

    #[test]
    fn a_window_listed_twice_is_found_however_it_is_spelled() {
        let twice = BASE.replace(
            "approvals = 1",
            "freeze = [{ weekly = \"Sat 00:00 - Mon 06:00\", tz = \"Europe/Berlin\" }, { weekly = \"sat 00:00 - mon 06:00\", tz = \"Europe/Berlin\" }]",
        );
        let message = duplicate_window(&parse(&twice)).unwrap();
        assert!(
            message.contains("production") && message.contains("freeze window Sat 00:00"),
            "{message}"
        );
        assert_eq!(duplicate_window(&parse(BASE)), None);
    }
}
