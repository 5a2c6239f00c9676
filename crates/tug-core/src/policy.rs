//! Whether a proposed deployment may happen: the policies of an environment
//! (and the server's rules) applied to the facts of one build at one
//! instant.
//!
//! [`evaluate`] is pure: the caller gathers the facts (is the build sealed,
//! when did it become current upstream, how many distinct approvers, what
//! time it is) and gets back a [`Verdict`]. It records nothing and asks
//! nobody; storing approvals, expiring them after `approval_timeout`, and
//! holding auto-release are the caller's business.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::pipeline::{format_duration, Environment, ServerRule};

/// Why a deployment is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployKind {
    /// An explicitly chosen build (`tug release --build|--branch`).
    Release,
    /// What runs in the upstream environment (`tug promote`).
    Promote,
    /// Back to a build that ran here before (`tug rollback`).
    Rollback,
    /// A new build of the environment's auto-release branch.
    AutoRelease,
}

impl DeployKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployKind::Release => "release",
            DeployKind::Promote => "promote",
            DeployKind::Rollback => "rollback",
            DeployKind::AutoRelease => "auto_release",
        }
    }
}

impl fmt::Display for DeployKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the policies need to know about the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildFacts<'a> {
    pub branch: Option<&'a str>,
    pub sealed: bool,
    pub yanked: bool,
    pub embargoed: bool,
    /// The build's major version (for compatibility).
    pub major: u64,
}

/// A deployment someone (or auto-release) wants to make.
#[derive(Debug, Clone, Copy)]
pub struct Proposal<'a> {
    pub kind: DeployKind,
    pub environment: &'a Environment,
    pub build: BuildFacts<'a>,
    pub now: DateTime<Utc>,
    /// When the build became current in the environment's upstream, if it
    /// did (for soak); `None` if it never ran there.
    pub in_upstream_since: Option<DateTime<Utc>>,
    /// Whether the build is (or was) deployed in the upstream environment
    /// at all: a promotion to an environment with an upstream requires it.
    pub passed_upstream: bool,
    pub server_rules: &'a [ServerRule],
    /// An admin's freeze override (the caller records the reason).
    pub override_freeze: bool,
    /// Distinct approvers so far, excluding the requester (the caller
    /// filters, and drops approvals older than `approval_timeout`).
    pub approvals: u32,
    /// A manual release put a hold on auto-release in this environment.
    pub auto_release_held: bool,
    /// With `soak_healthy`: how long the build has run in the upstream
    /// while enough of its agents reported healthy on it.
    pub upstream_healthy_for: Option<Duration>,
    /// With `compatible_with`: the oldest version among the agents of that
    /// service reporting in this environment; `None` when none report.
    pub oldest_compatible: Option<&'a crate::Version>,
    /// With a `verify` gate on the upstream: what its sampler learnt while
    /// the build ran there (a promotion only).
    pub upstream_gate: Option<GateFact<'a>>,
}

/// What is known of an upstream's metric gate for the build being
/// promoted out of it.
#[derive(Debug, Clone, Copy)]
pub struct GateFact<'a> {
    /// The upstream environment and its gate.
    pub upstream: &'a crate::EnvName,
    pub verify: &'a crate::pipeline::Verify,
    /// Since when the query's value has stayed within bounds while the
    /// build ran there; `None` when its last sample was not within bounds
    /// (or there was none).
    pub within_since: Option<DateTime<Utc>>,
    /// Why not: the last sample's error (out of bounds, no value,
    /// Prometheus unreachable), or `None` when the gate was never sampled
    /// for this build.
    pub blocked: Option<&'a str>,
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Nothing is wrong but the environment wants more approvers.
    NeedsApproval {
        have: u32,
        need: u32,
    },
    /// Every policy the deployment violates, in a fixed order.
    Refused(Vec<Violation>),
}

impl Verdict {
    /// The violations of a refusal; empty otherwise.
    pub fn violations(&self) -> &[Violation] {
        match self {
            Verdict::Refused(v) => v,
            Verdict::Allowed | Verdict::NeedsApproval { .. } => &[],
        }
    }
}

/// One policy a deployment violates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// A stable name, one of the constants on this type.
    pub policy: &'static str,
    /// Names the policy, what is wrong and what would satisfy it.
    pub message: String,
}

impl Violation {
    pub const NOT_SEALED: &'static str = "not_sealed";
    pub const YANKED: &'static str = "yanked";
    pub const EMBARGO: &'static str = "embargo";
    pub const BRANCH_RESTRICTION: &'static str = "branch_restriction";
    pub const SERVER_BRANCH_RESTRICTION: &'static str = "server_branch_restriction";
    pub const UPSTREAM: &'static str = "upstream";
    pub const SOAK: &'static str = "soak";
    pub const FREEZE: &'static str = "freeze";
    pub const AUTO_RELEASE: &'static str = "auto_release";
    pub const AUTO_RELEASE_HOLD: &'static str = "auto_release_hold";
    pub const COMPATIBILITY: &'static str = "compatibility";
    pub const VERIFY: &'static str = "verify";

    fn new(policy: &'static str, message: String) -> Violation {
        Violation {
            message: format!("{policy}: {message}"),
            policy,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Applies every policy to the proposal and collects all violations, so a
/// user fixes everything in one go rather than one refusal at a time.
/// Approvals are asked for only when nothing else is wrong: nobody should
/// approve a deployment that would be refused anyway.
pub fn evaluate(p: &Proposal) -> Verdict {
    let env = p.environment;
    let name = &env.name;
    let mut violations = Vec::new();
    let mut refuse = |policy, message| violations.push(Violation::new(policy, message));

    if !p.build.sealed {
        refuse(
            Violation::NOT_SEALED,
            "the build is still a draft and only sealed builds are deployed; seal it (tug build seal) first"
                .to_string(),
        );
    }
    if p.build.yanked {
        refuse(
            Violation::YANKED,
            "the build was yanked and is never deployed again; deploy another build".to_string(),
        );
    }
    if p.build.embargoed && !env.private {
        refuse(
            Violation::EMBARGO,
            format!("the build is under embargo and {name} is not a private environment; deploy it only to private environments until the embargo is lifted"),
        );
    }

    if let Some(restriction) = &env.branch_restriction {
        match p.build.branch {
            Some(branch) if restriction.matches(branch) => {}
            Some(branch) => refuse(
                Violation::BRANCH_RESTRICTION,
                format!("build's branch {branch:?} does not match {restriction} for {name}; widen the restriction (tug policy apply) or release a build from a matching branch"),
            ),
            None => refuse(
                Violation::BRANCH_RESTRICTION,
                format!("the build has no branch and {name} only accepts branches matching {restriction}; release a build from a matching branch"),
            ),
        }
    }
    for rule in p.server_rules.iter().filter(|r| &r.environment == name) {
        match p.build.branch {
            Some(branch) if rule.matches(branch) => {}
            Some(branch) => refuse(
                Violation::SERVER_BRANCH_RESTRICTION,
                format!("build's branch {branch:?} does not match the server rule {rule}, which no pipeline can override; release a build from a matching branch"),
            ),
            None => refuse(
                Violation::SERVER_BRANCH_RESTRICTION,
                format!("the build has no branch and the server rule {rule} only accepts matching branches; release a build from a matching branch"),
            ),
        }
    }

    // Only a promotion takes "what runs upstream", so only a promotion is
    // held to the upstream and its soak time: an explicit release names its
    // build on purpose, and a rollback must always be possible quickly.
    if p.kind == DeployKind::Promote {
        if let Some(upstream) = &env.upstream {
            if !p.passed_upstream {
                refuse(
                    Violation::UPSTREAM,
                    format!(
                        "the build has not run in {upstream}, the upstream of {name}; promote it to {upstream} first"
                    ),
                );
            } else if let Some(soak) = env.soak {
                match p.in_upstream_since {
                    None => refuse(
                        Violation::SOAK,
                        format!("{name} needs builds to soak in {upstream} for {} and it is not known since when this build has run there; promote it to {upstream} again and wait", format_duration(soak)),
                    ),
                    Some(since) => {
                        // A start in the future (clock skew between servers)
                        // counts as no soak at all rather than an error.
                        let soaked = match env.soak_healthy {
                            Some(_) => p.upstream_healthy_for.unwrap_or(Duration::ZERO),
                            None => (p.now - since).to_std().unwrap_or(Duration::ZERO),
                        };
                        let healthy = env
                            .soak_healthy
                            .map(|share| format!(" with at least {share}% of its agents healthy"))
                            .unwrap_or_default();
                        if soaked < soak {
                            let left = round_up_to_second(soak - soaked);
                            let ready = chrono::Duration::from_std(left)
                                .ok()
                                .and_then(|left| p.now.checked_add_signed(left))
                                .map(|t| format!(" (at {})", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
                                .unwrap_or_default();
                            refuse(
                                Violation::SOAK,
                                format!(
                                    "the build has run in {upstream}{healthy} for {} of the {} soak {name} requires; promote it again in {}{ready}",
                                    format_duration(soaked),
                                    format_duration(soak),
                                    format_duration(left),
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    if !p.override_freeze {
        for window in env.freezes_at(p.now) {
            refuse(
                Violation::FREEZE,
                format!("{name} is frozen ({window}); deploy after the window ends, or have an admin override the freeze with a reason"),
            );
        }
    }

    if let (Some(compat), Some(oldest)) = (&env.compatible_with, p.oldest_compatible) {
        let newest = oldest.semver().major.saturating_add(compat.max_major_skew);
        if p.build.major > newest {
            refuse(
                Violation::COMPATIBILITY,
                format!(
                    "the build's major version {} is more than {} ahead of {oldest}, the oldest {} agent reporting in {name}; upgrade those agents to {}.x or newer first",
                    p.build.major, compat.max_major_skew, compat.service, p.build.major.saturating_sub(compat.max_major_skew)
                ),
            );
        }
    }

    // A metric gate holds only promotions out of its environment, as soak
    // does; it never passes by default: no sample, an error or no value
    // all refuse.
    if let Some(gate) = p
        .upstream_gate
        .filter(|_| p.kind == DeployKind::Promote && p.passed_upstream)
    {
        let upstream = gate.upstream;
        let hold = gate.verify.hold;
        match (gate.within_since, gate.blocked) {
            (Some(since), _) => {
                let held = (p.now - since).to_std().unwrap_or(Duration::ZERO);
                if held < hold {
                    let left = round_up_to_second(hold - held);
                    refuse(
                        Violation::VERIFY,
                        format!(
                            "the metric gate of {upstream} ({}) has held for {} of {}; promote again in {}",
                            gate.verify.query,
                            format_duration(round_up_to_second(held)),
                            format_duration(hold),
                            format_duration(left),
                        ),
                    );
                }
            }
            (None, Some(why)) => refuse(
                Violation::VERIFY,
                format!("the metric gate of {upstream} blocks: {why}; the build may be promoted once the query has stayed within bounds for {}", format_duration(hold)),
            ),
            (None, None) => refuse(
                Violation::VERIFY,
                format!(
                    "the metric gate of {upstream} ({}) has not been sampled yet for this build; promote again once it has stayed within bounds for {}",
                    gate.verify.query,
                    format_duration(hold)
                ),
            ),
        }
    }

    if p.kind == DeployKind::AutoRelease {
        // The caller picks AutoRelease only for the configured branch; this
        // double-checks it so a stale pipeline cannot auto-release anything.
        match (&env.auto_release, p.build.branch) {
            (Some(want), Some(branch)) if want == branch => {}
            (Some(want), branch) => refuse(
                Violation::AUTO_RELEASE,
                format!("{name} auto-releases from branch {want}, not from {}; release the build explicitly instead", branch.map_or("a build without a branch".to_string(), |b| format!("{b:?}"))),
            ),
            (None, _) => refuse(
                Violation::AUTO_RELEASE,
                format!("{name} has no auto-release; add auto_release = {{ branch = \"…\" }} to its pipeline or release the build explicitly"),
            ),
        }
        if p.auto_release_held {
            refuse(
                Violation::AUTO_RELEASE_HOLD,
                format!("auto-release into {name} is on hold since a manual release or rollback; release the build explicitly or lift the hold (tug policy resume)"),
            );
        }
    }

    if !violations.is_empty() {
        return Verdict::Refused(violations);
    }
    if p.kind != DeployKind::Rollback && p.approvals < env.approvals {
        return Verdict::NeedsApproval {
            have: p.approvals,
            need: env.approvals,
        };
    }
    Verdict::Allowed
}

/// Rounds up so that "left" never reads `0s` while some time is left.
fn round_up_to_second(d: Duration) -> Duration {
    if d.subsec_nanos() == 0 {
        d
    } else {
        Duration::from_secs(d.as_secs().saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{EnvName, Pipeline};
    use chrono::TimeZone;

    const PIPELINE: &str = r#"
service = "teleport"
[[environments]]
name = "canary"
auto_release = { branch = "master" }
[[environments]]
name = "internal"
upstream = "canary"
soak = "1h"
[[environments]]
name = "production"
upstream = "internal"
approvals = 2
branch_restriction = "^master$"
freeze = [{ weekly = "Sat 00:00 - Mon 06:00", tz = "Europe/Berlin" }]
[[environments]]
name = "security"
private = true
"#;

    fn pipeline() -> Pipeline {
        Pipeline::parse(PIPELINE).unwrap()
    }

    fn env<'a>(p: &'a Pipeline, name: &str) -> &'a Environment {
        p.environment(&EnvName::parse(name).unwrap()).unwrap()
    }

    /// Wednesday 2026-11-25 12:00 UTC: outside every freeze window.
    fn weekday_noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    }

    /// A proposal that every policy allows, for `environment`; tests change
    /// one fact at a time.
    fn proposal<'a>(kind: DeployKind, environment: &'a Environment) -> Proposal<'a> {
        Proposal {
            kind,
            environment,
            build: BuildFacts {
                branch: Some("master"),
                sealed: true,
                yanked: false,
                embargoed: false,
                major: 14,
            },
            now: weekday_noon(),
            in_upstream_since: Some(weekday_noon() - chrono::Duration::hours(2)),
            passed_upstream: true,
            server_rules: &[],
            override_freeze: false,
            approvals: 2,
            auto_release_held: false,
            upstream_healthy_for: None,
            upstream_gate: None,
            oldest_compatible: None,
        }
    }

    fn policies(v: &Verdict) -> Vec<&'static str> {
        v.violations().iter().map(|v| v.policy).collect()
    }

    #[test]
    fn a_proposal_meeting_every_policy_is_allowed() {
        let p = pipeline();
        for name in ["canary", "internal", "production", "security"] {
            for kind in [DeployKind::Release, DeployKind::Promote, DeployKind::Rollback] {
                let verdict = evaluate(&proposal(kind, env(&p, name)));
                assert_eq!(verdict, Verdict::Allowed, "{kind} to {name}");
            }
        }
        let verdict = evaluate(&proposal(DeployKind::AutoRelease, env(&p, "canary")));
        assert_eq!(verdict, Verdict::Allowed);
    }

    #[test]
    fn only_sealed_builds_deploy() {
        let p = pipeline();
        let mut prop = proposal(DeployKind::Rollback, env(&p, "canary"));
        prop.build.sealed = false;
        let verdict = evaluate(&prop);
        assert_eq!(policies(&verdict), [Violation::NOT_SEALED]);
        assert!(verdict.violations()[0].message.contains("tug build seal"));
    }

    #[test]
    fn yanked_builds_never_deploy_not_even_by_rollback() {
        let p = pipeline();
        let mut prop = proposal(DeployKind::Rollback, env(&p, "canary"));
        prop.build.yanked = true;
        prop.override_freeze = true;
        assert_eq!(policies(&evaluate(&prop)), [Violation::YANKED]);
    }

    #[test]
    fn embargoed_builds_go_only_to_private_environments() {
        let p = pipeline();
        let mut prop = proposal(DeployKind::Release, env(&p, "canary"));
        prop.build.embargoed = true;
        let verdict = evaluate(&prop);
        assert_eq!(policies(&verdict), [Violation::EMBARGO]);
        assert!(verdict.violations()[0].message.starts_with("embargo: "));
        assert!(verdict.violations()[0]
            .message
            .contains("canary is not a private environment"));

        let mut prop = proposal(DeployKind::Release, env(&p, "security"));
        prop.build.embargoed = true;
        assert_eq!(evaluate(&prop), Verdict::Allowed);
    }

    #[test]
    fn branch_restriction_must_match() {
        let p = pipeline();
        let mut prop = proposal(DeployKind::Release, env(&p, "production"));
        prop.build.branch = Some("hotfix/x");
        let verdict = evaluate(&prop);
        assert_eq!(
            verdict,
            Verdict::Refused(vec![Violation {
                policy: "branch_restriction",
                message: "branch_restriction: build's branch \"hotfix/x\" does not match ^master$ for production; widen the restriction (tug policy apply) or release a build from a matching branch".into(),
            }])
        );

        // A build without a branch never satisfies a restriction.
        prop.build.branch = None;
        let verdict = evaluate(&prop);
        assert_eq!(policies(&verdict), [Violation::BRANCH_RESTRICTION]);
        assert!(verdict.violations()[0].message.contains("has no branch"));

        // Without a restriction, any branch (or none) is fine.
        let mut prop = proposal(DeployKind::Release, env(&p, "internal"));
        prop.build.branch = None;
        assert_eq!(evaluate(&prop), Verdict::Allowed);
    }

    #[test]
    fn server_rules_apply_to_their_environment_only() {
        let p = pipeline();
        let rules = [
            ServerRule::parse("internal=^(master|release/.*)$").unwrap(),
            ServerRule::parse("canary=^nothing$").unwrap(),
        ];
        let mut prop = proposal(DeployKind::Release, env(&p, "internal"));
        prop.server_rules = &rules;
        prop.build.branch = Some("release/v15");
        assert_eq!(evaluate(&prop), Verdict::Allowed);

        prop.build.branch = Some("feature/y");
        let verdict = evaluate(&prop);
        assert_eq!(policies(&verdict), [Violation::SERVER_BRANCH_RESTRICTION]);
        assert!(verdict.violations()[0]
            .message
            .contains("server rule internal=^(master|release/.*)$"));

        prop.build.branch = None;
        assert_eq!(policies(&evaluate(&prop)), [Violation::SERVER_BRANCH_RESTRICTION]);

        // The environment's own restriction and a server rule both apply.
        let rules = [ServerRule::parse("production=^main$").unwrap()];
        let mut prop = proposal(DeployKind::Release, env(&p, "production"));
        prop.server_rules = &rules;
        prop.build.branch = Some("main");
        assert_eq!(policies(&evaluate(&prop)), [Violation::BRANCH_RESTRICTION]);
        prop.build.branch = Some("master");
        assert_eq!(policies(&evaluate(&prop)), [Violation::SERVER_BRANCH_RESTRICTION]);
    }

    #[test]
    fn promotion_needs_the_upstream() {
        let p = pipeline();
        let mut prop = proposal(DeployKind::Promote, env(&p, "internal"));
        prop.passed_upstream = false;
        prop.in_upstream_since = None;
        let verdict = evaluate(&prop);
        assert_eq!(policies(&verdict), [Violation::UPSTREAM]);
        assert!(verdict.violations()[0]
            .message
            .contains("has not run in canary, the upstream of internal; promote it to canary first"));

        // An explicit release and a rollback skip the upstream.
        for kind in [DeployKind::Release, DeployKind::Rollback] {
            prop.kind = kind;
            assert_eq!(evaluate(&prop), Verdict::Allowed, "{kind}");
        }
        // An environment without an upstream has nothing to pass.
        let mut prop = proposal(DeployKind::Promote, env(&p, "canary"));
        prop.passed_upstream = false;
        prop.in_upstream_since = None;
        assert_eq!(evaluate(&prop), Verdict::Allowed);
    }

    #[test]
    fn promotion_waits_for_the_soak_time() {
        let p = pipeline();
        let mut prop = proposal(DeployKind::Promote, env(&p, "internal"));
        prop.in_upstream_since = Some(prop.now - chrono::Duration::minutes(20));
        let verdict = evaluate(&prop);
        assert_eq!(policies(&verdict), [Violation::SOAK]);
        assert_eq!(
            verdict.violations()[0].message,
            "soak: the build has run in canary for 20m of the 1h soak internal requires; promote it again in 40m (at 2026-11-25T12:40:00Z)"
        );

        // Less than a second left still says so.
        prop.in_upstream_since = Some(prop.now - chrono::Duration::hours(1) + chrono::Duration::milliseconds(1));
        assert!(evaluate(&prop).violations()[0].message.contains("again in 1s"));

        // Exactly the soak time is enough.
        prop.in_upstream_since = Some(prop.now - chrono::Duration::hours(1));
        assert_eq!(evaluate(&prop), Verdict::Allowed);

        // A start in the future (clock skew) counts as no soak yet.
        prop.in_upstream_since = Some(prop.now + chrono::Duration::minutes(5));
        assert!(evaluate(&prop).violations()[0].message.contains("for 0s of the 1h"));

        // Ran upstream but nobody knows since when: not soaked.
        prop.in_upstream_since = None;
        assert_eq!(policies(&evaluate(&prop)), [Violation::SOAK]);

        // Release and rollback skip the soak.
        prop.in_upstream_since = Some(prop.now);
        for kind in [DeployKind::Release, DeployKind::Rollback] {
            prop.kind = kind;
            assert_eq!(evaluate(&prop), Verdict::Allowed, "{kind}");
        }
    }

    #[test]
    fn freeze_windows_refuse_unless_overridden() {
        let p = pipeline();
        // Saturday 2026-11-28 10:00 UTC is inside the Berlin weekend freeze.
        let saturday = Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap();
        for kind in [DeployKind::Release, DeployKind::Promote, DeployKind::Rollback] {
            let mut prop = proposal(kind, env(&p, "production"));
            prop.now = saturday;
            prop.in_upstream_since = Some(saturday - chrono::Duration::days(1));
            let verdict = evaluate(&prop);
            assert_eq!(policies(&verdict), [Violation::FREEZE], "{kind}");
            assert_eq!(
                verdict.violations()[0].message,
                "freeze: production is frozen (Sat 00:00 - Mon 06:00 Europe/Berlin); deploy after the window ends, or have an admin override the freeze with a reason"
            );
            prop.override_freeze = true;
            assert_eq!(evaluate(&prop), Verdict::Allowed, "{kind}");
        }
    }

    #[test]
    fn auto_release_respects_the_hold_and_its_branch() {
        let p = pipeline();
        let mut prop = proposal(DeployKind::AutoRelease, env(&p, "canary"));
        prop.auto_release_held = true;
        let verdict = evaluate(&prop);
        assert_eq!(policies(&verdict), [Violation::AUTO_RELEASE_HOLD]);
        assert!(verdict.violations()[0].message.contains("on hold"));

        // The hold stops only auto-release.
        prop.kind = DeployKind::Release;
        assert_eq!(evaluate(&prop), Verdict::Allowed);

        let mut prop = proposal(DeployKind::AutoRelease, env(&p, "canary"));
        prop.build.branch = Some("develop");
        assert_eq!(policies(&evaluate(&prop)), [Violation::AUTO_RELEASE]);
        let prop = proposal(DeployKind::AutoRelease, env(&p, "internal"));
        let verdict = evaluate(&prop);
        assert_eq!(policies(&verdict), [Violation::AUTO_RELEASE]);
        assert!(verdict.violations()[0].message.contains("internal has no auto-release"));
    }

    #[test]
    fn approvals_are_asked_only_when_nothing_else_is_wrong() {
        let p = pipeline();
        let prod = env(&p, "production");
        let mut prop = proposal(DeployKind::Promote, prod);
        prop.approvals = 1;
        assert_eq!(evaluate(&prop), Verdict::NeedsApproval { have: 1, need: 2 });
        prop.kind = DeployKind::Release;
        prop.approvals = 0;
        assert_eq!(evaluate(&prop), Verdict::NeedsApproval { have: 0, need: 2 });
        assert!(evaluate(&prop).violations().is_empty());

        // Something else wrong: refused, approvals not mentioned.
        prop.build.branch = Some("feature");
        assert_eq!(policies(&evaluate(&prop)), [Violation::BRANCH_RESTRICTION]);

        // A rollback never waits for approvers.
        let mut prop = proposal(DeployKind::Rollback, prod);
        prop.approvals = 0;
        assert_eq!(evaluate(&prop), Verdict::Allowed);
    }

    #[test]
    fn auto_release_into_an_environment_with_approvals_needs_them() {
        let p = Pipeline::parse(
            "service = \"api\"\n[[environments]]\nname = \"staging\"\nauto_release = { branch = \"main\" }\napprovals = 1\n",
        )
        .unwrap();
        let staging = &p.environments[0];
        let mut prop = proposal(DeployKind::AutoRelease, staging);
        prop.build.branch = Some("main");
        prop.approvals = 0;
        assert_eq!(evaluate(&prop), Verdict::NeedsApproval { have: 0, need: 1 });
    }

    #[test]
    fn every_violation_is_collected() {
        let p = pipeline();
        let rules = [ServerRule::parse("production=^master$").unwrap()];
        let saturday = Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap();
        let prop = Proposal {
            kind: DeployKind::Promote,
            environment: env(&p, "production"),
            build: BuildFacts {
                branch: Some("hotfix/x"),
                sealed: false,
                yanked: true,
                embargoed: true,
                major: 14,
            },
            now: saturday,
            in_upstream_since: None,
            passed_upstream: false,
            server_rules: &rules,
            override_freeze: false,
            approvals: 0,
            auto_release_held: true,
            upstream_healthy_for: None,
            upstream_gate: None,
            oldest_compatible: None,
        };
        let verdict = evaluate(&prop);
        assert_eq!(
            policies(&verdict),
            [
                Violation::NOT_SEALED,
                Violation::YANKED,
                Violation::EMBARGO,
                Violation::BRANCH_RESTRICTION,
                Violation::SERVER_BRANCH_RESTRICTION,
                Violation::UPSTREAM,
                Violation::FREEZE,
            ]
        );
        for v in verdict.violations() {
            assert!(v.message.starts_with(&format!("{}: ", v.policy)), "{v}");
        }
        let json = serde_json::to_value(&verdict.violations()[1]).unwrap();
        assert_eq!(json["policy"], "yanked");
    }

    #[test]
    fn deploy_kinds_have_stable_names() {
        for (kind, name) in [
            (DeployKind::Release, "release"),
            (DeployKind::Promote, "promote"),
            (DeployKind::Rollback, "rollback"),
            (DeployKind::AutoRelease, "auto_release"),
        ] {
            assert_eq!(kind.to_string(), name);
            assert_eq!(serde_json::to_value(kind).unwrap(), name);
            assert_eq!(serde_json::from_value::<DeployKind>(name.into()).unwrap(), kind);
        }
    }

    fn one_env(extra: &str) -> Pipeline {
        Pipeline::parse(&format!(
            "service = \"teleport\"\n[[environments]]\nname = \"trials\"\n[[environments]]\nname = \"production\"\nupstream = \"trials\"\n{extra}\n"
        ))
        .unwrap()
    }

    #[test]
    fn compatibility_refuses_a_build_too_far_ahead_of_the_oldest_agent() {
        let p = one_env("compatible_with = { service = \"teleport-agent\", max_major_skew = 1 }");
        let prod = env(&p, "production");
        let v13 = crate::Version::parse("13.4.2").unwrap();
        let v12 = crate::Version::parse("12.0.0").unwrap();
        let mut prop = proposal(DeployKind::Release, prod);
        prop.approvals = 0;
        prop.build.major = 14;
        prop.oldest_compatible = Some(&v13);
        assert_eq!(evaluate(&prop), Verdict::Allowed, "one major ahead is within the skew");
        prop.oldest_compatible = Some(&v12);
        let verdict = evaluate(&prop);
        assert_eq!(policies(&verdict), ["compatibility"]);
        let message = &verdict.violations()[0].message;
        assert!(
            message.contains("12.0.0") && message.contains("teleport-agent") && message.contains("13.x"),
            "{message}"
        );
        // No agent of that service reports: nothing to be incompatible with.
        prop.oldest_compatible = None;
        assert_eq!(evaluate(&prop), Verdict::Allowed);
    }

    #[test]
    fn healthy_soak_counts_only_healthy_time() {
        let p = one_env("soak = \"1h\"\nsoak_healthy = \"90%\"");
        let prod = env(&p, "production");
        let mut prop = proposal(DeployKind::Promote, prod);
        prop.approvals = 0;
        // Two hours in the upstream, but only 20 minutes of them healthy.
        prop.upstream_healthy_for = Some(Duration::from_secs(20 * 60));
        let verdict = evaluate(&prop);
        assert_eq!(policies(&verdict), ["soak"]);
        let message = &verdict.violations()[0].message;
        assert!(
            message.contains("90% of its agents healthy") && message.contains("20m of the 1h"),
            "{message}"
        );
        prop.upstream_healthy_for = None;
        assert_eq!(policies(&evaluate(&prop)), ["soak"], "no healthy time at all");
        prop.upstream_healthy_for = Some(Duration::from_secs(3600));
        assert_eq!(evaluate(&prop), Verdict::Allowed);
    }

    #[test]
    fn a_metric_gate_holds_promotions_until_it_has_held_and_never_passes_by_default() {
        let p = Pipeline::parse(
            "service = \"api\"\n[[environments]]\nname = \"staging\"\n\
             verify = { prometheus = \"http://127.0.0.1:9090\", query = \"errors\", max = 0.01, for = \"10m\" }\n\
             [[environments]]\nname = \"prod\"\nupstream = \"staging\"\n",
        )
        .unwrap();
        let staging = env(&p, "staging");
        let prod = env(&p, "prod");
        let verify = staging.verify.as_ref().unwrap();
        let mut prop = proposal(DeployKind::Promote, prod);
        let gate = |within_since, blocked| GateFact {
            upstream: &staging.name,
            verify,
            within_since,
            blocked,
        };
        let now = weekday_noon();
        prop.upstream_gate = Some(gate(Some(now - chrono::Duration::minutes(10)), None));
        assert_eq!(evaluate(&prop), Verdict::Allowed, "ten minutes within bounds is enough");
        prop.upstream_gate = Some(gate(Some(now - chrono::Duration::seconds(599)), None));
        let verdict = evaluate(&prop);
        assert_eq!(policies(&verdict), ["verify"]);
        assert!(
            verdict.violations()[0].message.contains("in 1s"),
            "{}",
            verdict.violations()[0].message
        );
        prop.upstream_gate = Some(gate(None, Some("query errors returned 0.5, above max 0.01")));
        let verdict = evaluate(&prop);
        assert_eq!(policies(&verdict), ["verify"]);
        assert!(verdict.violations()[0].message.contains("returned 0.5"), "{verdict:?}");
        prop.upstream_gate = Some(gate(None, None));
        assert_eq!(policies(&evaluate(&prop)), ["verify"], "never sampled: refused");
        // A release names its build on purpose and a rollback must be quick.
        for kind in [DeployKind::Release, DeployKind::Rollback] {
            prop.kind = kind;
            assert_eq!(evaluate(&prop), Verdict::Allowed, "{kind}");
        }
    }
}
