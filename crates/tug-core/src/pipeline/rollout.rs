//! How the agents of an environment take a new build: all at once, a few
//! at a time (rolling), or a canary group first; how many failures halt the
//! rollout and whether it then rolls back.
//!
//! This module reads and writes the rollout policy; which agent may update
//! at a given moment is decided elsewhere, from these values.

use std::fmt;

use super::spec::{CountOrShare, RolloutSpec};
use crate::names::shown;

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
pub(crate) fn parse_percent(text: &str) -> Result<u8, String> {
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
    /// Reads a rollout as written; the error says what is wrong, for
    /// [`super::PipelineError::Rollout`] to name the environment.
    pub(crate) fn from_spec(spec: &RolloutSpec) -> Result<Rollout, String> {
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

    /// The rollout as written in the pipeline file.
    pub(crate) fn to_spec(&self) -> RolloutSpec {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_agents_rounds_up_and_is_never_none() {
        assert_eq!(Share::Percent(25).of(10), 3);
        assert_eq!(Share::Percent(1).of(5), 1);
        assert_eq!(Share::Percent(1).of(0), 1);
        assert_eq!(Share::Count(2).of(100), 2);
        assert_eq!(Share::Percent(100).of(u64::MAX), u64::MAX);
    }

    #[test]
    fn rollouts_round_trip_through_their_spec() {
        for spec in [
            RolloutSpec {
                strategy: "all-at-once".into(),
                ..RolloutSpec::default()
            },
            RolloutSpec {
                strategy: "rolling".into(),
                max_in_flight: Some(CountOrShare::Text("25%".into())),
                halt_after_failures: Some(2),
                ..RolloutSpec::default()
            },
            RolloutSpec {
                strategy: "canary".into(),
                count: Some(2),
                then: Some("rolling".into()),
                max_in_flight: Some(CountOrShare::Count(3)),
                auto_rollback: true,
                ..RolloutSpec::default()
            },
        ] {
            let rollout = Rollout::from_spec(&spec).unwrap();
            assert_eq!(Rollout::from_spec(&rollout.to_spec()).unwrap(), rollout, "{spec:?}");
        }
        let canary = Rollout::from_spec(&RolloutSpec {
            strategy: "canary".into(),
            count: Some(2),
            ..RolloutSpec::default()
        })
        .unwrap();
        assert_eq!(canary.strategy.to_string(), "canary of 2, then all-at-once");
        assert_eq!(
            canary.halt_after_failures, 1,
            "halts on the first failure unless told otherwise"
        );
    }
}
