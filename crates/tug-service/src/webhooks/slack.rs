//! Slack messages: the Block Kit message a webhook of kind `slack` posts
//! for an event, from the event as the webhook may see it (an embargoed
//! build appears as "an embargoed build"). Only the events people act on
//! have a message: a deployment done (a freeze override said so), a
//! deployment that failed (a halted rollout, a rollback that could not be
//! made), an approval needed. Every other event has none and is not sent.

use serde_json::{json, Value};
use tug_api::{Change, Event, EventBuild};

/// The message for `e`, or `None` when its kind has none.
pub fn message(e: &Event) -> Option<Value> {
    let service = e.service.as_ref().map_or("(no service)", |s| s.as_str());
    let who = e
        .actor
        .as_ref()
        .map_or_else(|| "Tugboat".to_string(), |a| a.name.to_string());
    let (title, mut fields, detail) = match &e.change {
        Change::Deployment(d) => {
            let title = if d.override_freeze {
                format!(
                    ":rotating_light: Freeze override: {service} {} deployed to {} through a freeze window",
                    version(d.build.as_ref()),
                    d.environment
                )
            } else {
                format!(
                    ":rocket: {service} {} deployed to {}",
                    version(d.build.as_ref()),
                    d.environment
                )
            };
            let mut fields = vec![
                field("Service", service),
                field("Environment", d.environment.as_str()),
                field("Version", &version(d.build.as_ref())),
                field("Kind", d.deployment_kind.as_str()),
                field("By", &who),
            ];
            if let Some(by) = &d.requested_by {
                fields.push(field("Requested by", by));
            }
            if let Some(link) = d.build.as_ref().and_then(commit) {
                fields.push(field("Commit", &link));
            }
            (title, fields, d.reason.clone())
        }
        Change::ApprovalRequested(a) => {
            let title = format!(
                ":raised_hand: Approval needed: {service} {} to {}",
                a.build.version, a.environment
            );
            let mut fields = vec![
                field("Service", service),
                field("Environment", a.environment.as_str()),
                field("Version", &a.build.version.to_string()),
                field("Requested by", &a.requested_by),
                field("Who may approve", "a token with the approver or admin role"),
            ];
            if a.override_freeze {
                fields.push(field("Freeze override", "asked for by an admin"));
            }
            if let Some(link) = commit(&a.build) {
                fields.push(field("Commit", &link));
            }
            let command = format!(
                "Approve with `tug approve {service} --env {} --build {}`",
                a.environment, a.build.id
            );
            (title, fields, Some(command))
        }
        Change::RolloutHalted {
            environment,
            build,
            reason,
            ..
        } => (
            format!(
                ":octagonal_sign: Deployment failed: the rollout of {service} {} in {environment} halted",
                version(build.as_ref())
            ),
            vec![
                field("Service", service),
                field("Environment", environment.as_str()),
                field("Version", &version(build.as_ref())),
                field("By", &who),
            ],
            reason.clone(),
        ),
        Change::RolloutRollbackFailed {
            environment,
            build,
            error,
        } => (
            format!(
                ":x: Deployment failed: {service} {} in {environment} could not be rolled back",
                version(build.as_ref())
            ),
            vec![
                field("Service", service),
                field("Environment", environment.as_str()),
                field("Version", &version(build.as_ref())),
            ],
            error.clone(),
        ),
        _ => return None,
    };
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": title}}),
        json!({"type": "section", "fields": std::mem::take(&mut fields)}),
    ];
    if let Some(detail) = detail {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": detail}]}));
    }
    Some(json!({"text": title, "blocks": blocks}))
}

fn field(name: &str, value: &str) -> Value {
    json!({"type": "mrkdwn", "text": format!("*{name}*\n{value}")})
}

fn version(b: Option<&EventBuild>) -> String {
    b.map_or_else(|| "an embargoed build".to_string(), |b| b.version.to_string())
}

/// A link to the build's commit when its source names a web repository
/// and a commit (`https://github.com/o/r` and `abc123`), else the commit
/// alone.
fn commit(b: &EventBuild) -> Option<String> {
    let commit = b.source.commit.as_deref()?;
    match b.source.repo.as_deref() {
        Some(repo) if repo.starts_with("https://") || repo.starts_with("http://") => {
            let repo = repo.trim_end_matches('/').trim_end_matches(".git");
            Some(format!("<{repo}/commit/{commit}|{}>", &commit[..commit.len().min(12)]))
        }
        _ => Some(commit.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use tug_api::{Actor, Approval, Deployed, DeploymentKind, EventSource};
    use tug_core::{BuildId, EnvName, Role, ServiceName, TokenName, Version};

    use super::*;

    fn build() -> EventBuild {
        EventBuild {
            id: BuildId::parse("0192b1c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d").unwrap(),
            version: Version::parse("1.4.0").unwrap(),
            manifest_digest: None,
            source: EventSource {
                repo: Some("https://github.com/acme/api.git".into()),
                commit: Some("0123456789abcdef0123".into()),
                ..EventSource::default()
            },
            embargoed: false,
        }
    }

    fn event(change: Change) -> Event {
        Event::new(
            Utc::now(),
            Some(ServiceName::parse("api").unwrap()),
            Some(Actor {
                name: TokenName::parse("alice").unwrap(),
                role: Role::Deployer,
            }),
            change,
        )
    }

    fn deployed(build: Option<EventBuild>, override_freeze: bool) -> Event {
        event(Change::Deployment(Deployed {
            environment: EnvName::parse("prod").unwrap(),
            build,
            deployment_kind: DeploymentKind::Promote,
            seq: 3,
            replaced: None,
            replaced_embargoed: false,
            override_freeze,
            reason: None,
            requested_by: None,
            approved_by: vec![],
        }))
    }

    fn texts(m: &Value) -> String {
        m.to_string()
    }

    #[test]
    fn a_deployment_names_service_env_version_who_and_links_the_commit() {
        let m = message(&deployed(Some(build()), false)).unwrap();
        assert_eq!(m["text"], ":rocket: api 1.4.0 deployed to prod");
        assert_eq!(m["blocks"][0]["type"], "section");
        let all = texts(&m);
        assert!(
            all.contains("https://github.com/acme/api/commit/0123456789abcdef0123|0123456789ab"),
            "{all}"
        );
        assert!(all.contains("*By*\\nalice"), "{all}");
    }

    #[test]
    fn an_embargoed_build_is_only_named_so_and_a_freeze_override_says_so() {
        let m = message(&deployed(None, true)).unwrap();
        let all = texts(&m);
        assert!(m["text"]
            .as_str()
            .unwrap()
            .starts_with(":rotating_light: Freeze override"));
        assert!(
            all.contains("an embargoed build") && !all.contains("1.4.0") && !all.contains("commit"),
            "{all}"
        );
    }

    #[test]
    fn an_approval_names_who_may_approve_and_the_command() {
        let m = message(&event(Change::ApprovalRequested(Approval {
            environment: EnvName::parse("prod").unwrap(),
            build: build(),
            request: Some("r1".into()),
            deployment_kind: DeploymentKind::Promote,
            requested_by: "bob".into(),
            expires_at: None,
            override_freeze: false,
            reason: None,
        })))
        .unwrap();
        let all = texts(&m);
        assert!(all.contains("approver or admin"), "{all}");
        assert!(
            all.contains("tug approve api --env prod --build 0192b1c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d"),
            "{all}"
        );
    }

    #[test]
    fn other_kinds_have_no_message() {
        assert!(message(&event(Change::ServiceCreated {})).is_none());
        assert!(message(&event(Change::BuildSealed { build: build() })).is_none());
    }
}
