//! The rollout grant rule: given a paced rollout's strategy, whether it is
//! halted and how the environment's live agents stand, may an agent take
//! the build now, and if not, why.
//!
//! This module only decides. The service reads the counts and records the
//! grants in one database transaction that holds the rollout's lock, so
//! that decisions taken at once on several servers never exceed the
//! strategy's limits; see `tug-service`'s grants module.

use std::fmt;

use crate::{BuildId, EnvName, Share, Strategy};

/// The live agents of an environment (heard from recently) as pacing sees
/// them, for one deployment's build.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutCounts {
    pub agents: i64,
    /// Allowed to take the build.
    pub granted: i64,
    /// Healthy on the build (granted or not).
    pub healthy: i64,
    /// Granted and healthy on the build.
    pub granted_healthy: i64,
    /// Granted, neither healthy on the build nor given up on it.
    pub in_flight: i64,
    /// Gave up on the build (activation or health check failed).
    pub failed: i64,
}

impl RolloutCounts {
    /// The counts once one more agent is granted the build.
    #[must_use]
    pub fn with_one_more_granted(self) -> RolloutCounts {
        RolloutCounts {
            granted: self.granted.saturating_add(1),
            in_flight: self.in_flight.saturating_add(1),
            ..self
        }
    }
}

/// The agent asking for the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asking {
    /// It already runs the build (it may always "update" to it).
    pub on_build: bool,
    /// It was granted the build before (a grant is kept).
    pub granted: bool,
}

/// Why an agent must wait for the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// The rollout was halted, by a person or by failures: nobody new goes.
    Halted { reason: String },
    /// As many agents are updating as `max_in_flight` allows.
    InFlight { in_flight: i64, max_in_flight: Share },
    /// The canaries are not all healthy on the build yet.
    Canaries { count: u32, healthy: i64 },
}

impl Wait {
    /// What the agent is told, naming the build and environment.
    pub fn message(&self, build: &BuildId, env: &EnvName) -> String {
        match self {
            Wait::Halted { reason } => format!("the rollout of build {build} to {env} is halted: {reason}"),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wait::Halted { reason } => write!(f, "the rollout is halted: {reason}"),
            Wait::InFlight {
                in_flight,
                max_in_flight,
            } => write!(
                f,
                "{in_flight} agent(s) are updating, the most max_in_flight ({max_in_flight}) allows; \
                 waiting for them to report healthy"
            ),
            Wait::Canaries { count, healthy } => write!(
                f,
                "waiting for the {count} canary agent(s) to report healthy ({healthy} so far)"
            ),
        }
    }
}

/// Whether `asking` may take the build now. An agent on the build or
/// granted before may always go; nobody new goes while the rollout is
/// `halted` (with its reason); otherwise the strategy decides on `counts`.
pub fn may_go(strategy: &Strategy, halted: Option<&str>, asking: Asking, counts: &RolloutCounts) -> Result<(), Wait> {
    if asking.on_build || asking.granted {
        return Ok(());
    }
    if let Some(reason) = halted {
        return Err(Wait::Halted {
            reason: reason.to_string(),
        });
    }
    decide(strategy, counts)
}

/// Whether one more agent, neither on the build nor granted, may take it
/// under `strategy`.
pub fn decide(strategy: &Strategy, counts: &RolloutCounts) -> Result<(), Wait> {
    match strategy {
        Strategy::AllAtOnce => Ok(()),
        Strategy::Rolling { max_in_flight } => {
            let limit = max_in_flight.of(u64::try_from(counts.agents).unwrap_or(0));
            if u64::try_from(counts.in_flight).unwrap_or(0) < limit {
                Ok(())
            } else {
                Err(Wait::InFlight {
                    in_flight: counts.in_flight,
                    max_in_flight: *max_in_flight,
                })
            }
        }
        Strategy::Canary { count, then } => {
            // `count` canaries must be healthy on the build before the
            // rest follow; a canary that fails (below the halt threshold)
            // is replaced by another.
            let wanted = i64::from(*count);
            if counts.granted_healthy >= wanted {
                return decide(then, counts);
            }
            if counts.granted_healthy.saturating_add(counts.in_flight) < wanted {
                return Ok(());
            }
            Err(Wait::Canaries {
                count: *count,
                healthy: counts.granted_healthy,
            })
        }
    }
}

/// How many of `asking` agents (none on the build or granted), taken in
/// order, may go now, and why the others wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub admitted: usize,
    /// Set when not every asking agent was admitted.
    pub wait: Option<Wait>,
}

/// Decides for `asking` agents at once, as if each asked in turn and was
/// granted when allowed: the rule of [`may_go`] applied with the counts
/// each grant changes.
pub fn admit(strategy: &Strategy, halted: Option<&str>, counts: &RolloutCounts, asking: usize) -> Admission {
    let nobody = Asking {
        on_build: false,
        granted: false,
    };
    let mut counts = *counts;
    for admitted in 0..asking {
        if let Err(wait) = may_go(strategy, halted, nobody, &counts) {
            return Admission {
                admitted,
                wait: Some(wait),
            };
        }
        counts = counts.with_one_more_granted();
    }
    Admission {
        admitted: asking,
        wait: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(agents: i64, granted: i64, granted_healthy: i64, in_flight: i64) -> RolloutCounts {
        RolloutCounts {
            agents,
            granted,
            healthy: granted_healthy,
            granted_healthy,
            in_flight,
            failed: 0,
        }
    }

    const NEW: Asking = Asking {
        on_build: false,
        granted: false,
    };

    fn rolling(max_in_flight: Share) -> Strategy {
        Strategy::Rolling { max_in_flight }
    }

    fn canary(count: u32, then: Strategy) -> Strategy {
        Strategy::Canary {
            count,
            then: Box::new(then),
        }
    }

    #[test]
    fn all_at_once_lets_every_agent_go() {
        let s = Strategy::AllAtOnce;
        assert_eq!(decide(&s, &counts(1000, 999, 0, 999)), Ok(()));
        assert_eq!(
            admit(&s, None, &counts(10, 0, 0, 0), 10),
            Admission {
                admitted: 10,
                wait: None
            }
        );
    }

    #[test]
    fn rolling_keeps_at_most_max_in_flight_updating() {
        let s = rolling(Share::Percent(25));
        // 8 agents: 25% is 2 at a time.
        assert_eq!(decide(&s, &counts(8, 1, 0, 1)), Ok(()));
        assert_eq!(
            decide(&s, &counts(8, 2, 0, 2)),
            Err(Wait::InFlight {
                in_flight: 2,
                max_in_flight: Share::Percent(25)
            })
        );
        assert_eq!(decide(&s, &counts(8, 3, 1, 1)), Ok(()), "one finished: a place is free");
    }

    #[test]
    fn rolling_by_count_ignores_how_many_agents_there_are() {
        let s = rolling(Share::Count(2));
        assert_eq!(decide(&s, &counts(0, 0, 0, 0)), Ok(()), "an agent not counted yet");
        assert_eq!(decide(&s, &counts(1000, 1, 0, 1)), Ok(()));
        assert!(decide(&s, &counts(1000, 2, 0, 2)).is_err());
        assert!(decide(&s, &counts(3, 5, 0, 3)).is_err(), "more in flight than allowed");
    }

    #[test]
    fn rolling_by_percent_rounds_up_and_lets_at_least_one_go() {
        let s = rolling(Share::Percent(10));
        assert_eq!(
            decide(&s, &counts(0, 0, 0, 0)),
            Ok(()),
            "no agent counted yet: one may go"
        );
        assert!(decide(&s, &counts(0, 1, 0, 1)).is_err());
        // 10% of 11 agents rounds up to 2.
        assert_eq!(decide(&s, &counts(11, 1, 0, 1)), Ok(()));
        assert!(decide(&s, &counts(11, 2, 0, 2)).is_err());
    }

    #[test]
    fn canary_waits_for_its_canaries_then_goes_on() {
        let s = canary(2, rolling(Share::Count(1)));
        assert_eq!(decide(&s, &counts(6, 0, 0, 0)), Ok(()));
        assert_eq!(decide(&s, &counts(6, 1, 0, 1)), Ok(()));
        let waiting = decide(&s, &counts(6, 2, 1, 1)).unwrap_err();
        assert_eq!(waiting, Wait::Canaries { count: 2, healthy: 1 });
        assert!(waiting.to_string().contains("canary"), "{waiting}");
        assert_eq!(decide(&s, &counts(6, 2, 2, 0)), Ok(()), "canaries healthy: rolling");
        assert!(decide(&s, &counts(6, 3, 2, 1)).is_err(), "rolling one at a time");
        // One canary failed (below the halt threshold): another replaces it.
        assert_eq!(decide(&s, &counts(6, 2, 1, 0)), Ok(()));
        assert!(decide(&s, &counts(6, 3, 1, 1)).is_err());
    }

    #[test]
    fn canary_then_all_at_once_releases_everyone_after_the_canaries() {
        let s = canary(1, Strategy::AllAtOnce);
        assert!(decide(&s, &counts(6, 1, 0, 1)).is_err());
        assert_eq!(decide(&s, &counts(6, 4, 1, 3)), Ok(()));
    }

    #[test]
    fn nested_canaries_each_wait_for_their_own_count() {
        let s = canary(1, canary(3, rolling(Share::Count(1))));
        assert_eq!(decide(&s, &counts(10, 0, 0, 0)), Ok(()));
        assert!(decide(&s, &counts(10, 1, 0, 1)).is_err(), "the first canary");
        // Then 3 canaries in all, the first one included.
        assert_eq!(decide(&s, &counts(10, 1, 1, 0)), Ok(()));
        assert_eq!(decide(&s, &counts(10, 2, 1, 1)), Ok(()));
        assert_eq!(
            decide(&s, &counts(10, 2, 1, 1).with_one_more_granted()),
            Err(Wait::Canaries { count: 3, healthy: 1 })
        );
        assert!(decide(&s, &counts(10, 4, 3, 1)).is_err(), "then one at a time");
        assert_eq!(decide(&s, &counts(10, 4, 4, 0)), Ok(()));
    }

    #[test]
    fn agents_on_the_build_or_granted_go_whatever_the_counts_and_halts() {
        let s = rolling(Share::Count(1));
        let full = counts(10, 5, 0, 5);
        for asking in [
            Asking {
                on_build: true,
                granted: false,
            },
            Asking {
                on_build: false,
                granted: true,
            },
        ] {
            assert_eq!(may_go(&s, None, asking, &full), Ok(()));
            assert_eq!(may_go(&s, Some("bad build"), asking, &full), Ok(()));
        }
        assert!(may_go(&s, None, NEW, &full).is_err());
    }

    #[test]
    fn a_halted_rollout_lets_nobody_new_go_under_any_strategy() {
        for s in [
            Strategy::AllAtOnce,
            rolling(Share::Count(5)),
            canary(2, Strategy::AllAtOnce),
        ] {
            let wait = may_go(&s, Some("2 agents failed"), NEW, &counts(10, 0, 0, 0)).unwrap_err();
            assert_eq!(
                wait,
                Wait::Halted {
                    reason: "2 agents failed".into()
                }
            );
            let build = BuildId::parse("0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f01").unwrap();
            let env = EnvName::parse("prod").unwrap();
            assert_eq!(
                wait.message(&build, &env),
                format!("the rollout of build {build} to prod is halted: 2 agents failed")
            );
            assert_eq!(admit(&s, Some("x"), &counts(10, 0, 0, 0), 3).admitted, 0);
        }
    }

    #[test]
    fn admitting_many_at_once_fills_exactly_the_free_places() {
        let s = rolling(Share::Count(500));
        let a = admit(&s, None, &counts(10_000, 480, 0, 480), 9_000);
        assert_eq!(a.admitted, 20);
        assert_eq!(
            a.wait,
            Some(Wait::InFlight {
                in_flight: 500,
                max_in_flight: Share::Count(500)
            })
        );
        assert_eq!(admit(&s, None, &counts(10_000, 500, 0, 500), 10).admitted, 0);
        assert_eq!(
            admit(&s, None, &counts(10_000, 0, 0, 0), 7),
            Admission {
                admitted: 7,
                wait: None
            },
            "fewer asking than places"
        );
    }

    #[test]
    fn admitting_canaries_at_once_stops_at_the_canary_count() {
        let s = canary(2, rolling(Share::Count(3)));
        let a = admit(&s, None, &counts(20, 0, 0, 0), 20);
        assert_eq!(a.admitted, 2);
        assert_eq!(a.wait, Some(Wait::Canaries { count: 2, healthy: 0 }));
        // Both healthy: up to 3 in flight.
        assert_eq!(admit(&s, None, &counts(20, 2, 2, 0), 20).admitted, 3);
    }

    #[test]
    fn admission_agrees_with_asking_one_at_a_time() {
        let strategies = [
            Strategy::AllAtOnce,
            rolling(Share::Count(3)),
            rolling(Share::Percent(30)),
            canary(2, rolling(Share::Count(2))),
            canary(1, canary(2, Strategy::AllAtOnce)),
        ];
        for s in &strategies {
            for start in [counts(10, 0, 0, 0), counts(10, 3, 2, 1), counts(10, 4, 1, 3)] {
                let mut c = start;
                let mut one_by_one = 0;
                while one_by_one < 10 && decide(s, &c).is_ok() {
                    c = c.with_one_more_granted();
                    one_by_one += 1;
                }
                assert_eq!(admit(s, None, &start, 10).admitted, one_by_one, "{s:?} from {start:?}");
            }
        }
    }
}
