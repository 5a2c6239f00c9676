//! Roles and what each may do. Every use case asks [`Role::allows`] first;
//! what a token may then see and act on (its service and environment scope,
//! embargoed builds) is decided by [`crate::access`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including tokens, services and maintenance.
    Admin,
    /// Create, fill and seal builds (of one service when the token is scoped).
    Ci,
    /// Release and promote builds.
    Deployer,
    /// Approve deployments that a policy holds.
    Approver,
    /// Follow a channel (and the blobs it names) and report what runs;
    /// nothing else, not even read.
    Agent,
    /// Read everything, change nothing.
    Viewer,
    /// Read the server's Prometheus metrics (`/metrics`), nothing else: a
    /// scraper's token. Metrics name services and environments, so they
    /// are not public.
    Metrics,
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read builds, artifacts, blobs and services.
    Read,
    /// Create builds, upload blobs, register artifacts, seal.
    WriteBuilds,
    /// Create and list services.
    ManageServices,
    /// Create, list and revoke tokens.
    ManageTokens,
    /// fsck and gc.
    Maintain,
    /// Verify and export the whole event log (the audit trail).
    Audit,
    /// Apply pipelines and policies.
    ManagePipelines,
    /// Release, promote and roll back builds.
    Deploy,
    /// Approve or reject deployments that wait for approval.
    Approve,
    /// Read an environment's channel and the blobs it names.
    Follow,
    /// Report an agent's state.
    Report,
    /// Scrape the server's Prometheus metrics.
    ReadMetrics,
    /// Create, list and delete webhooks, and see their deliveries.
    ManageWebhooks,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Admin,
        Role::Ci,
        Role::Deployer,
        Role::Approver,
        Role::Agent,
        Role::Viewer,
        Role::Metrics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Ci => "ci",
            Role::Deployer => "deployer",
            Role::Approver => "approver",
            Role::Agent => "agent",
            Role::Viewer => "viewer",
            Role::Metrics => "metrics",
        }
    }

    pub fn allows(self, action: Action) -> bool {
        match (self, action) {
            (Role::Admin, _) => true,
            // An agent reads its channel and reports, nothing else.
            (Role::Agent, Action::Follow | Action::Report) => true,
            (Role::Agent, _) => false,
            // A scraper reads the metrics and nothing else; nobody but an
            // admin reads them besides.
            (Role::Metrics, Action::ReadMetrics) => true,
            (Role::Metrics, _) | (_, Action::ReadMetrics) => false,
            (_, Action::Read | Action::Follow) => true,
            (Role::Ci, Action::WriteBuilds) => true,
            (Role::Deployer, Action::Deploy) => true,
            (Role::Approver, Action::Approve) => true,
            (Role::Ci | Role::Deployer | Role::Approver | Role::Viewer, _) => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            format!("unknown role {s:?}: use one of admin, ci, deployer, approver, agent, viewer, metrics")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admin_and_ci_write_builds() {
        let writers: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| r.allows(Action::WriteBuilds))
            .collect();
        assert_eq!(writers, vec![Role::Admin, Role::Ci]);
        let readers: Vec<Role> = Role::ALL.into_iter().filter(|r| r.allows(Action::Read)).collect();
        assert_eq!(
            readers,
            vec![Role::Admin, Role::Ci, Role::Deployer, Role::Approver, Role::Viewer]
        );
        assert!(Role::ALL
            .iter()
            .all(|r| r.allows(Action::Follow) != (*r == Role::Metrics)));
        let reporters: Vec<Role> = Role::ALL.into_iter().filter(|r| r.allows(Action::Report)).collect();
        assert_eq!(reporters, vec![Role::Admin, Role::Agent]);
        for a in [
            Action::ManageTokens,
            Action::ManageServices,
            Action::Maintain,
            Action::Audit,
            Action::ManageWebhooks,
        ] {
            let allowed: Vec<Role> = Role::ALL.into_iter().filter(|r| r.allows(a)).collect();
            assert_eq!(allowed, vec![Role::Admin], "{a:?}");
        }
    }

    #[test]
    fn deployers_deploy_and_approvers_approve() {
        let deployers: Vec<Role> = Role::ALL.into_iter().filter(|r| r.allows(Action::Deploy)).collect();
        assert_eq!(deployers, vec![Role::Admin, Role::Deployer]);
        let approvers: Vec<Role> = Role::ALL.into_iter().filter(|r| r.allows(Action::Approve)).collect();
        assert_eq!(approvers, vec![Role::Admin, Role::Approver]);
    }

    #[test]
    fn only_admin_and_metrics_read_metrics_and_metrics_nothing_else() {
        let scrapers: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| r.allows(Action::ReadMetrics))
            .collect();
        assert_eq!(scrapers, vec![Role::Admin, Role::Metrics]);
        for a in [
            Action::Read,
            Action::WriteBuilds,
            Action::ManageServices,
            Action::ManageTokens,
            Action::Maintain,
            Action::Audit,
            Action::ManagePipelines,
            Action::Deploy,
            Action::Approve,
            Action::Follow,
            Action::Report,
        ] {
            assert!(!Role::Metrics.allows(a), "{a:?}");
        }
    }

    #[test]
    fn roles_parse() {
        assert_eq!("ci".parse::<Role>().unwrap(), Role::Ci);
        assert!("root".parse::<Role>().unwrap_err().contains("use one of"));
    }
}
