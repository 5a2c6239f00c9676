//! Every policy through the real CLI: it has a flag of `tug policy apply`
//! (in `--help` and in the shell completions), a key in the pipeline file,
//! a line in `tug policy list`, a change in `tug pipeline history`, and it
//! round-trips: applied, listed, deleted, gone. The policies are taken from
//! their definitions, so a new policy without an example here fails.

use std::path::Path;

use serde_json::Value;
use tug_core::pipeline::POLICIES;

use crate::support::TestServer;

/// `trials`, and `production` promoted from it after a soak (which
/// `--soak-healthy` needs).
const BASE: &str = r#"
service = "api"

[[environments]]
name = "trials"

[[environments]]
name = "production"
upstream = "trials"
soak = "1h"
"#;

/// For each policy: the flags that set it on `production`, and the values
/// `tug policy list` then shows for it.
const EXAMPLES: &[(&str, &[&str], &[&str])] = &[
    ("upstream", &["--upstream", "trials"], &["trials"]),
    ("auto-release", &["--auto-release", "master"], &["master"]),
    (
        "branch-restriction",
        &["--branch-restriction", "^master$"],
        &["^master$"],
    ),
    ("soak", &["--soak", "90m"], &["1h30m"]),
    ("approvals", &["--approvals", "2"], &["2"]),
    ("approval-timeout", &["--approval-timeout", "24h"], &["1d"]),
    (
        "freeze",
        &["--freeze", "Sat 00:00 - Mon 06:00", "--tz", "Europe/Berlin"],
        &["Sat 00:00 - Mon 06:00 Europe/Berlin"],
    ),
    ("private", &["--private", "true"], &["true"]),
    ("public", &["--public", "true"], &["true"]),
    ("soak-healthy", &["--soak-healthy", "90%"], &["90%"]),
    (
        "rollout",
        &["--rollout", "strategy=rolling,max_in_flight=25%,halt_after_failures=2"],
        &["rolling, 25% at a time; halt after 2 failures"],
    ),
    (
        "maintenance",
        &["--maintenance", "Mon-Fri 02:00 - 04:00", "--tz", "UTC"],
        &["Mon-Fri 02:00 - 04:00 UTC"],
    ),
    (
        "compatible-with",
        &["--compatible-with", "teleport-agent", "--max-major-skew", "1"],
        &["teleport-agent (at most 1 major version ahead)"],
    ),
    (
        "verify",
        &[
            "--verify",
            "prometheus=http://127.0.0.1:9090,query=sum(rate(errors_total[5m])),max=0.01,for=10m",
        ],
        &["sum(rate(errors_total[5m])) at http://127.0.0.1:9090 at most 0.01 for 10m"],
    ),
    (
        "gitops",
        &[
            "--gitops",
            "repo=https://git.example.com/config.git,path=clusters/{env}/{service},layout=manifests",
        ],
        &["https://git.example.com/config.git main clusters/{env}/{service} (manifests)"],
    ),
];

/// The values `tug policy list` shows for `policy` on `production`.
fn listed(server: &TestServer, w: &Path, policy: &str) -> Vec<String> {
    let rows = server.tug(w, &["policy", "list", "api", "--output", "json"]).json();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["environment"] == "production" && r["policy"] == policy && r["scope"] == "pipeline")
        .map(|r| r["value"].as_str().unwrap().to_string())
        .collect()
}

/// The changes of the newest pipeline revision.
fn newest_changes(server: &TestServer, w: &Path) -> Vec<Value> {
    let history = server
        .tug(w, &["pipeline", "history", "api", "--output", "json"])
        .json();
    history[0]["changes"].as_array().unwrap().clone()
}

async fn every_policy_has_a_flag_a_key_a_listing_and_round_trips(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    std::fs::write(w.join("base.toml"), BASE).unwrap();
    let help = server.tug(w, &["policy", "apply", "--help"]).ok().to_string();
    let completions = server.tug(w, &["completions", "bash"]).ok().to_string();
    let delete_help = server.tug(w, &["policy", "delete", "--help"]).ok().to_string();

    for policy in POLICIES {
        let name = policy.name();
        let (_, flags, values) = EXAMPLES
            .iter()
            .find(|(n, ..)| *n == name)
            .unwrap_or_else(|| panic!("no example for policy {name}: add one to EXAMPLES"));
        let flag = format!("--{name}");
        assert!(
            help.contains(&format!("{flag} <")),
            "{flag} in tug policy apply --help:\n{help}"
        );
        assert!(completions.contains(&flag), "{flag} in the bash completions");
        assert!(
            delete_help.contains(name),
            "{name} among tug policy delete --policy's values"
        );

        // From the base pipeline without the policy (the base has an
        // upstream and a soak, which are deleted like any policy).
        server.tug(w, &["pipeline", "apply", "-f", "base.toml"]).ok();
        if !listed(server, w, name).is_empty() {
            server
                .tug(w, &["policy", "delete", "api", "--env", "production", "--policy", name])
                .ok();
        }
        assert!(listed(server, w, name).is_empty(), "{name}");

        let mut apply = vec!["policy", "apply", "api", "--env", "production"];
        apply.extend_from_slice(flags);
        server.tug(w, &apply).ok();
        assert_eq!(listed(server, w, name), *values, "{name}");
        let key = format!("\n{} = ", policy.key());
        let shown = server.tug(w, &["pipeline", "show", "api"]).ok().to_string();
        assert!(shown.contains(&key), "{name} is written as {key:?}:\n{shown}");
        let added: Vec<Value> = newest_changes(server, w)
            .into_iter()
            .filter(|c| c["policy"] == name)
            .collect();
        assert_eq!(added.len(), 1, "{name}: {added:?}");
        assert_eq!(added[0]["change"], "policy_added", "{name}");

        server
            .tug(w, &["policy", "delete", "api", "--env", "production", "--policy", name])
            .ok();
        assert!(listed(server, w, name).is_empty(), "{name}");
        let shown = server.tug(w, &["pipeline", "show", "api"]).ok().to_string();
        assert!(!shown.contains(&key), "{name} deleted:\n{shown}");
        assert!(
            newest_changes(server, w)
                .iter()
                .any(|c| c["policy"] == name && c["change"] == "policy_removed"),
            "{name}"
        );
        let err = server
            .tug(w, &["policy", "delete", "api", "--env", "production", "--policy", name])
            .fails()
            .to_string();
        assert!(err.contains(&format!("production has no {name} policy")), "{err}");
    }
    assert_eq!(EXAMPLES.len(), POLICIES.len(), "an example for a policy that is gone");
}

on_both!(
    every_policy_has_a_flag_a_key_a_listing_and_round_trips,
    every_policy_has_a_flag_a_key_a_listing_and_round_trips_on_sqlite,
    every_policy_has_a_flag_a_key_a_listing_and_round_trips_on_postgres
);

/// Regression: `tug policy list` showed a rollout and an upstream, and
/// `tug policy delete` removed a rollout, but no flag of `tug policy apply`
/// set either; both are now applied like every other policy, and a bad
/// rollout is refused with what to write, changing nothing.
async fn rollout_and_upstream_were_listed_but_could_not_be_applied(server: &TestServer) {
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    std::fs::write(w.join("base.toml"), BASE.replace("upstream = \"trials\"\n", "")).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "base.toml"]).ok();

    server
        .tug(
            w,
            &[
                "policy",
                "apply",
                "api",
                "--env",
                "production",
                "--upstream",
                "trials",
                "--rollout",
                "strategy=canary,count=2,then=rolling,max_in_flight=3,auto_rollback=true",
            ],
        )
        .ok();
    let view = server.tug(w, &["pipeline", "show", "api", "--output", "json"]).json();
    let production = &view["pipeline"]["environments"][1];
    assert_eq!(production["upstream"], "trials");
    assert_eq!(
        production["rollout"],
        serde_json::json!({"strategy": "canary", "count": 2, "then": "rolling", "max_in_flight": 3, "halt_after_failures": 1, "auto_rollback": true})
    );
    let revision = view["revision"].clone();

    for (rollout, why) in [
        ("strategy=rolling,pace=2", "unknown key \"pace\""),
        ("rolling", "is not KEY=VALUE"),
        ("strategy=rolling", "rolling needs max_in_flight"),
    ] {
        let err = server
            .tug(
                w,
                &["policy", "apply", "api", "--env", "production", "--rollout", rollout],
            )
            .fails()
            .to_string();
        assert!(err.contains(why), "{rollout}: {err}");
    }
    let err = server
        .tug(
            w,
            &["policy", "apply", "api", "--env", "trials", "--upstream", "production"],
        )
        .fails()
        .to_string();
    assert!(err.contains("upstream cycle"), "{err}");
    let view = server.tug(w, &["pipeline", "show", "api", "--output", "json"]).json();
    assert_eq!(view["revision"], revision, "refusals change nothing");
}

on_both!(
    rollout_and_upstream_were_listed_but_could_not_be_applied,
    rollout_and_upstream_were_listed_but_could_not_be_applied_on_sqlite,
    rollout_and_upstream_were_listed_but_could_not_be_applied_on_postgres
);
