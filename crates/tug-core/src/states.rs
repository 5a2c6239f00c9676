//! The state machines' states: an agent's, a rollout's, a deployment
//! request's, and an approver's decision. Each has one text form, used by
//! the wire (serde) and by the database alike; reading anything else is an
//! error, never a default.

/// Defines a state enum with its one text form: `as_str`, `parse`
/// (`None` for any other text), `Display` and serde, all from one table.
macro_rules! states {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The one text form, on the wire and in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The state named `s`; `None` for anything else (never a
            /// default).
            pub fn parse(s: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

states! {
    /// An agent's state.
    AgentState {
        Idle => "idle",
        /// The channel names a build the agent may not take yet (outside a
        /// maintenance window, or before the rollout lets it go); the
        /// report's `waiting` says why. What it runs keeps running.
        Waiting => "waiting",
        Downloading => "downloading",
        Activating => "activating",
        Healthy => "healthy",
        Failed => "failed",
    }
}

states! {
    /// The stored state of a deployment's paced rollout.
    RolloutState {
        /// Agents are granted the build as the pacing allows.
        Rolling => "rolling",
        /// No more agents are granted the build until someone resumes it.
        Halted => "halted",
    }
}

states! {
    /// Where an environment's rollout stands, as `tug rollout status`
    /// shows it: the stored state and what the agents' reports add.
    RolloutPhase {
        /// The environment runs nothing.
        Idle => "idle",
        /// No rollout is set (or the deployment is a rollback): every agent
        /// takes the build at once.
        Unpaced => "unpaced",
        Rolling => "rolling",
        Halted => "halted",
        /// Every live agent is healthy on the build.
        Done => "done",
    }
}

states! {
    /// The state of a deployment that waits for approvals.
    RequestState {
        Pending => "pending",
        Deployed => "deployed",
        Rejected => "rejected",
        Expired => "expired",
        /// A newer auto-release request of the environment replaced it.
        Superseded => "superseded",
    }
}

states! {
    /// What an approver decided about a deployment request.
    Decision {
        Approve => "approve",
        Reject => "reject",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_reads_back_from_its_text_and_nothing_else_does() {
        for s in AgentState::ALL {
            assert_eq!(AgentState::parse(s.as_str()), Some(*s));
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        for s in RequestState::ALL {
            assert_eq!(RequestState::parse(s.as_str()), Some(*s));
        }
        assert_eq!(Decision::parse("approve"), Some(Decision::Approve));
        assert_eq!(RolloutState::parse("halted"), Some(RolloutState::Halted));
        assert_eq!(AgentState::parse("Healthy"), None);
        assert_eq!(RequestState::parse(""), None);
        assert!(serde_json::from_str::<AgentState>("\"sleeping\"").is_err());
    }
}
