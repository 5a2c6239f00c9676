//! What a token may see: the one rule that turns a token's role and scope
//! and a build's facts into a [`Sight`]: the whole build, only that "an
//! embargoed build" runs somewhere, or nothing at all. `tug-service`
//! gathers the facts and asks here for every build, deployment, request,
//! event, channel, blob, agent and rollout it returns; nothing else
//! decides.
//!
//! The rule:
//! - A token scoped to a service sees nothing of any other service, whatever
//!   its role. A token scoped to an environment (agents only) follows only
//!   that environment.
//! - A build that is not embargoed is seen whole by every token in scope.
//! - An embargoed build is seen whole by admins, approvers, the token that
//!   created it (by token id: a later token of the same name is another
//!   token), and agent tokens scoped to a private environment of its
//!   service that it was deployed into. Everyone else in scope learns only
//!   that an environment runs "an embargoed build".
//! - An agent token not scoped to an environment sees no embargoed build:
//!   it could follow every environment, and the embargo exception is for
//!   the agents of the private environment only.
//!
//! This module does no I/O: the caller passes the facts.

use crate::{EnvName, Role, ServiceName};

/// The token asking, as far as access is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader<'a> {
    pub token_id: &'a str,
    pub role: Role,
    /// The one service the token may act on, if scoped.
    pub service: Option<&'a ServiceName>,
    /// The one environment of that service an agent token may follow, if
    /// scoped.
    pub environment: Option<&'a EnvName>,
}

/// What access depends on about one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildAccess<'a> {
    pub service: &'a ServiceName,
    pub embargoed: bool,
    /// The id of the token that created the build.
    pub created_by_token: Option<&'a str>,
    /// The private environments of the build's service that it was
    /// deployed into. Only an agent token scoped to an environment needs
    /// this fact ([`Reader::needs_private_deployments`]); for every other
    /// reader it may be left empty.
    pub private_deployments: &'a [EnvName],
}

/// How much of a build a reader may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sight {
    /// Everything: id, version, source, digests, reasons.
    Full,
    /// Only that it is an embargoed build: where a view is about an
    /// environment (status, history, diff, channel, rollouts, agents) it
    /// says the environment runs "an embargoed build"; where a view is
    /// about the build itself (show, manifest, blobs, its events and
    /// approval requests) the build does not exist.
    Embargoed,
    /// Nothing: the build belongs to a service outside the token's scope.
    OutOfScope,
}

impl Sight {
    pub fn is_full(self) -> bool {
        self == Sight::Full
    }
}

/// Why a token's scope is refused when the token is created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("an admin token cannot be scoped to a service: it manages every service and all tokens")]
    ScopedAdmin,
    #[error("a metrics token cannot be scoped to a service: it reads the metrics of the whole server")]
    ScopedMetrics,
    #[error("an environment scope needs a service scope: pass --service as well as --env")]
    EnvironmentWithoutService,
    #[error("only agent tokens take an environment scope; a {0} token is scoped by service only")]
    EnvironmentForRole(Role),
}

/// Checks the scope a new token asks for.
pub fn check_scope(role: Role, service: Option<&ServiceName>, environment: Option<&EnvName>) -> Result<(), ScopeError> {
    match (role, service, environment) {
        (Role::Admin, Some(_), _) => Err(ScopeError::ScopedAdmin),
        (Role::Metrics, Some(_), _) => Err(ScopeError::ScopedMetrics),
        (_, None, Some(_)) => Err(ScopeError::EnvironmentWithoutService),
        (Role::Agent, _, _) | (_, _, None) => Ok(()),
        (role, Some(_), Some(_)) => Err(ScopeError::EnvironmentForRole(role)),
    }
}

impl Reader<'_> {
    /// Whether the token's scope covers `service`.
    pub fn in_scope(&self, service: &ServiceName) -> bool {
        self.service.is_none_or(|s| s == service)
    }

    /// Whether the token's scope covers following `env` of `service`
    /// (its channel, the blobs it names, reports from it).
    pub fn may_follow(&self, service: &ServiceName, env: &EnvName) -> bool {
        self.in_scope(service) && self.environment.is_none_or(|e| e == env)
    }

    /// Whether every embargoed build in scope is visible to this token.
    pub fn sees_every_embargoed_build(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Approver)
    }

    /// Whether every build of every service is visible to this token, so
    /// no fact need be gathered.
    pub fn sees_everything(&self) -> bool {
        self.sees_every_embargoed_build() && self.service.is_none() && self.environment.is_none()
    }

    /// Whether [`BuildAccess::private_deployments`] matters for this token.
    pub fn needs_private_deployments(&self) -> bool {
        self.role == Role::Agent && self.service.is_some() && self.environment.is_some()
    }

    /// How much of `build` this token may see.
    pub fn sight(&self, build: &BuildAccess<'_>) -> Sight {
        if !self.in_scope(build.service) {
            return Sight::OutOfScope;
        }
        if !build.embargoed || self.sees_every_embargoed_build() {
            return Sight::Full;
        }
        if build.created_by_token == Some(self.token_id) {
            return Sight::Full;
        }
        let follows_its_private_environment = self.needs_private_deployments()
            && self.service == Some(build.service)
            && self.environment.is_some_and(|e| build.private_deployments.contains(e));
        if follows_its_private_environment {
            Sight::Full
        } else {
            Sight::Embargoed
        }
    }
}

/// How much of `build` a caller without a token (Teleport's public
/// updater endpoints) may see: an embargoed build is never named there.
pub fn public_sight(build: &BuildAccess<'_>) -> Sight {
    if build.embargoed {
        Sight::Embargoed
    } else {
        Sight::Full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(s: &str) -> ServiceName {
        ServiceName::parse(s).unwrap()
    }

    fn env(s: &str) -> EnvName {
        EnvName::parse(s).unwrap()
    }

    /// Every role, scoped or not, against a build of `api` that is or is
    /// not embargoed, created by `ci-1` or another token, deployed into the
    /// private `sec` or not: the expected sight written out as a table.
    #[test]
    fn every_role_scope_embargo_and_private_deployment() {
        let api = service("api");
        let web = service("web");
        let sec = env("sec");
        let dev = env("dev");
        let none: [EnvName; 0] = [];
        let in_sec = [sec.clone()];
        use Sight::*;

        // (role, token id, service scope, env scope) and the sight of an
        // embargoed build of api [not deployed anywhere private, deployed
        // into sec], and whether a plain build of api is seen whole.
        type Case<'a> = (
            Role,
            &'a str,
            Option<&'a ServiceName>,
            Option<&'a EnvName>,
            [Sight; 2],
            Sight,
        );
        let cases: Vec<Case> = vec![
            (Role::Admin, "a", None, None, [Full, Full], Full),
            (Role::Approver, "p", None, None, [Full, Full], Full),
            (Role::Approver, "p", Some(&api), None, [Full, Full], Full),
            (
                Role::Approver,
                "p",
                Some(&web),
                None,
                [OutOfScope, OutOfScope],
                OutOfScope,
            ),
            (Role::Viewer, "v", None, None, [Embargoed, Embargoed], Full),
            (Role::Viewer, "v", Some(&api), None, [Embargoed, Embargoed], Full),
            (
                Role::Viewer,
                "v",
                Some(&web),
                None,
                [OutOfScope, OutOfScope],
                OutOfScope,
            ),
            (Role::Deployer, "d", None, None, [Embargoed, Embargoed], Full),
            (
                Role::Deployer,
                "d",
                Some(&web),
                None,
                [OutOfScope, OutOfScope],
                OutOfScope,
            ),
            // The creating token, scoped or not; another ci token is not it.
            (Role::Ci, "ci-1", None, None, [Full, Full], Full),
            (Role::Ci, "ci-1", Some(&api), None, [Full, Full], Full),
            (Role::Ci, "ci-2", Some(&api), None, [Embargoed, Embargoed], Full),
            (Role::Ci, "ci-2", Some(&web), None, [OutOfScope, OutOfScope], OutOfScope),
            // Agents: only one scoped to the private environment the build
            // went into sees it.
            (Role::Agent, "g", None, None, [Embargoed, Embargoed], Full),
            (Role::Agent, "g", Some(&api), None, [Embargoed, Embargoed], Full),
            (Role::Agent, "g", Some(&api), Some(&sec), [Embargoed, Full], Full),
            (Role::Agent, "g", Some(&api), Some(&dev), [Embargoed, Embargoed], Full),
            (
                Role::Agent,
                "g",
                Some(&web),
                Some(&sec),
                [OutOfScope, OutOfScope],
                OutOfScope,
            ),
            // A malformed scope (environment without service) never widens.
            (Role::Agent, "g", None, Some(&sec), [Embargoed, Embargoed], Full),
        ];
        for (role, id, scope, env_scope, embargoed, plain) in cases {
            let reader = Reader {
                token_id: id,
                role,
                service: scope,
                environment: env_scope,
            };
            for (deployed, want) in [&none[..], &in_sec[..]].into_iter().zip(embargoed) {
                let build = BuildAccess {
                    service: &api,
                    embargoed: true,
                    created_by_token: Some("ci-1"),
                    private_deployments: deployed,
                };
                assert_eq!(
                    reader.sight(&build),
                    want,
                    "{reader:?} embargoed, deployed {deployed:?}"
                );
            }
            let build = BuildAccess {
                service: &api,
                embargoed: false,
                created_by_token: Some("ci-1"),
                private_deployments: &none,
            };
            assert_eq!(reader.sight(&build), plain, "{reader:?} plain build");
        }
    }

    #[test]
    fn a_build_without_a_recorded_creator_is_nobodys() {
        let api = service("api");
        let build = BuildAccess {
            service: &api,
            embargoed: true,
            created_by_token: None,
            private_deployments: &[],
        };
        let reader = Reader {
            token_id: "",
            role: Role::Ci,
            service: None,
            environment: None,
        };
        assert_eq!(reader.sight(&build), Sight::Embargoed);
    }

    #[test]
    fn scopes_bind_following() {
        let api = service("api");
        let (sec, dev) = (env("sec"), env("dev"));
        let agent = Reader {
            token_id: "g",
            role: Role::Agent,
            service: Some(&api),
            environment: Some(&sec),
        };
        assert!(agent.may_follow(&api, &sec));
        assert!(!agent.may_follow(&api, &dev));
        assert!(!agent.may_follow(&service("web"), &sec));
        assert!(agent.needs_private_deployments());
        let viewer = Reader {
            environment: None,
            role: Role::Viewer,
            ..agent
        };
        assert!(viewer.may_follow(&api, &dev));
        assert!(!viewer.in_scope(&service("web")));
        assert!(!viewer.needs_private_deployments());
        let admin = Reader {
            token_id: "a",
            role: Role::Admin,
            service: None,
            environment: None,
        };
        assert!(admin.sees_everything());
        assert!(!Reader {
            service: Some(&api),
            ..admin
        }
        .sees_everything());
        assert!(!viewer.sees_everything());
    }

    #[test]
    fn token_scopes_are_checked_at_creation() {
        let api = service("api");
        let sec = env("sec");
        assert_eq!(check_scope(Role::Agent, Some(&api), Some(&sec)), Ok(()));
        assert_eq!(check_scope(Role::Deployer, Some(&api), None), Ok(()));
        assert_eq!(check_scope(Role::Admin, None, None), Ok(()));
        assert_eq!(check_scope(Role::Admin, Some(&api), None), Err(ScopeError::ScopedAdmin));
        assert_eq!(
            check_scope(Role::Agent, None, Some(&sec)),
            Err(ScopeError::EnvironmentWithoutService)
        );
        assert_eq!(
            check_scope(Role::Viewer, Some(&api), Some(&sec)),
            Err(ScopeError::EnvironmentForRole(Role::Viewer))
        );
    }

    #[test]
    fn public_endpoints_never_name_an_embargoed_build() {
        let api = service("api");
        let mut build = BuildAccess {
            service: &api,
            embargoed: true,
            created_by_token: None,
            private_deployments: &[],
        };
        assert_eq!(public_sight(&build), Sight::Embargoed);
        build.embargoed = false;
        assert_eq!(public_sight(&build), Sight::Full);
    }
}
