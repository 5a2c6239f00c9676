//! What a pipeline says, policy by policy, and what changed between two
//! revisions of it: `production: approvals 1 → 2`, `production: + freeze
//! Sat 00:00 - Mon 06:00 Europe/Berlin`, `+ environment qa`.
//!
//! [`policies`] is the one list of an environment's policies with their
//! display text; `tug policy list` shows it and [`changes`] compares two of
//! them, so the two views always agree. [`duplicate_window`] finds a window
//! listed twice, which a new revision may not contain.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pipeline::{format_duration, EnvName, Environment, FreezeWindow, Pipeline};

/// One policy of an environment as people read it: `approvals` = `2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    /// The policy's name, as `tug policy delete --policy` takes it
    /// (`upstream` is the environment's place in the pipeline).
    pub policy: &'static str,
    pub value: String,
}

/// Policies that may hold several values (one entry per window).
const MULTI: [&str; 2] = ["freeze", "maintenance"];

/// The value of a yes/no policy when it is set.
const YES: &str = "true";

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Every policy of `env`, in a fixed order, each window on its own.
pub fn policies(env: &Environment) -> Vec<PolicyEntry> {
    let mut out = Vec::new();
    let mut add = |policy: &'static str, value: String| out.push(PolicyEntry { policy, value });
    if let Some(up) = &env.upstream {
        add("upstream", up.to_string());
    }
    if let Some(b) = &env.auto_release {
        add("auto-release", b.clone());
    }
    if let Some(r) = &env.branch_restriction {
        add("branch-restriction", r.to_string());
    }
    if let Some(s) = env.soak {
        add("soak", format_duration(s));
    }
    if env.approvals > 0 {
        add("approvals", env.approvals.to_string());
    }
    if let Some(t) = env.approval_timeout {
        add("approval-timeout", format_duration(t));
    }
    for f in &env.freeze {
        add("freeze", f.to_string());
    }
    if env.private {
        add("private", YES.to_string());
    }
    if let Some(share) = env.soak_healthy {
        add("soak-healthy", format!("{share}%"));
    }
    if let Some(r) = &env.rollout {
        let mut text = format!(
            "{}; halt after {}",
            r.strategy,
            plural(u64::from(r.halt_after_failures), "failure", "failures")
        );
        if r.auto_rollback {
            text.push_str(", then roll back");
        }
        add("rollout", text);
    }
    for w in &env.maintenance {
        add("maintenance", w.to_string());
    }
    if let Some(c) = &env.compatible_with {
        add(
            "compatible-with",
            format!(
                "{} (at most {} ahead)",
                c.service,
                plural(c.max_major_skew, "major version", "major versions")
            ),
        );
    }
    out
}

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
    for env in &new.environments {
        let name = &env.name;
        match old_envs.iter().find(|o| &o.name == name) {
            None => {
                out.push(PipelineChange::EnvironmentAdded {
                    environment: name.clone(),
                    upstream: env.upstream.clone(),
                });
                // The upstream is on the line above.
                let added = policies(env).into_iter().filter(|p| p.policy != "upstream");
                out.extend(added.map(|p| PipelineChange::PolicyAdded {
                    environment: name.clone(),
                    policy: p.policy.to_string(),
                    value: p.value,
                }));
            }
            Some(before) => out.extend(policy_changes(name, &policies(before), &policies(env))),
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

fn policy_changes(env: &EnvName, old: &[PolicyEntry], new: &[PolicyEntry]) -> Vec<PipelineChange> {
    let mut keys: Vec<&'static str> = Vec::new();
    for p in old.iter().chain(new) {
        if !keys.contains(&p.policy) {
            keys.push(p.policy);
        }
    }
    let mut out = Vec::new();
    for key in keys {
        let values = |list: &[PolicyEntry]| -> Vec<String> {
            list.iter()
                .filter(|p| p.policy == key)
                .map(|p| p.value.clone())
                .collect()
        };
        let (before, after) = (values(old), values(new));
        let added = |value: String| PipelineChange::PolicyAdded {
            environment: env.clone(),
            policy: key.to_string(),
            value,
        };
        let removed = |value: String| PipelineChange::PolicyRemoved {
            environment: env.clone(),
            policy: key.to_string(),
            value,
        };
        if MULTI.contains(&key) {
            out.extend(before.iter().filter(|v| !after.contains(v)).cloned().map(removed));
            out.extend(after.iter().filter(|v| !before.contains(v)).cloned().map(added));
            continue;
        }
        match (before.into_iter().next(), after.into_iter().next()) {
            (None, Some(v)) => out.push(added(v)),
            (Some(v), None) => out.push(removed(v)),
            (Some(old), Some(new)) if old != new => out.push(PipelineChange::PolicyChanged {
                environment: env.clone(),
                policy: key.to_string(),
                old,
                new,
            }),
            _ => {}
        }
    }
    out
}

/// A window an environment lists twice (as freeze or maintenance window),
/// described for an error message: a second copy changes nothing and only
/// hides what was meant.
pub fn duplicate_window(pipeline: &Pipeline) -> Option<String> {
    let twice = |list: &[FreezeWindow]| -> Option<FreezeWindow> {
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

    #[test]
    fn policies_read_with_correct_plurals() {
        let text = BASE.replace(
            "approvals = 1",
            "rollout = { strategy = \"rolling\", max_in_flight = 1 }\ncompatible_with = { service = \"agent\", max_major_skew = 1 }",
        );
        let p = parse(&text);
        let listed: Vec<String> = policies(&p.environments[1])
            .into_iter()
            .map(|e| format!("{}={}", e.policy, e.value))
            .collect();
        assert_eq!(
            listed,
            vec![
                "upstream=dev",
                "rollout=rolling, 1 at a time; halt after 1 failure",
                "compatible-with=agent (at most 1 major version ahead)",
            ]
        );
    }
}
