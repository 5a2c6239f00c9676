//! The event log as the use cases speak it: every change is made in a
//! database transaction ([`tug_db::Tx`]) that commits with the events
//! describing it ([`Tugboat::commit`]), so a change is never without its
//! event and an event never without its change. Events are
//! [`tug_api::Event`]s built from the service's own types.
//!
//! Every event is recorded, embargoed builds' too; what a reader sees of one
//! is decided when it is read ([`Tugboat::events`]), by the access rule: an
//! event about a build the reader may not see vanishes when it is about the
//! build itself (its life, its approvals) and keeps only what concerns the
//! environment otherwise (a deployment or rollout of "an embargoed build"),
//! so lifting an embargo shows its whole history.

use chrono::{DateTime, Utc};
use tug_api::{Actor, Approval, Change, Event, EventBuild, EventSource, EventToken};
use tug_core::records::{BuildRecord, DeploymentRequest, TokenRecord};
use tug_core::{Action, BuildId, ServiceName};
use tug_db::{EventRow, NewEvent, Tx};

use crate::access::Sights;
use crate::{Error, Principal, Result, Tugboat};

/// A page of events: those the reader may see, and the id of the last
/// event read (seen or not), where the next page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub last: i64,
}

/// What the log stores of an event: its canonical JSON and the columns
/// readers filter on, all derived from the event itself.
pub fn recordable(e: &Event) -> NewEvent {
    NewEvent {
        at: e.at,
        kind: e.kind().to_string(),
        service: e.service.clone(),
        build: e.change.build().map(|b| b.id.clone()),
        actor: e.actor.as_ref().map(|a| a.name.to_string()),
        payload: e.canonical_json(),
    }
}

/// [`parse_row`] for a reader, not the verifier: an event that does not
/// read back is a corrupt log.
pub(crate) fn read_row(row: &EventRow) -> Result<Event> {
    parse_row(row).map_err(|why| Error::corrupt(format!("event {}: {why}; run tug audit verify", row.id)))
}

/// A recorded event read back: its JSON parsed, its id set, and its stored
/// columns checked against it (a column edited behind the server's back
/// would change what readers may see).
pub(crate) fn parse_row(row: &EventRow) -> std::result::Result<Event, String> {
    let mut event: Event = serde_json::from_str(&row.payload).map_err(|e| format!("its JSON is not an event ({e})"))?;
    // The columns `recordable` would derive, compared without writing the
    // JSON again (verification reads every event).
    let stored = [
        ("at", event.at.timestamp_millis() == row.at.timestamp_millis()),
        ("kind", event.kind() == row.kind),
        ("service", event.service == row.service),
        ("build_id", event.change.build().map(|b| &b.id) == row.build.as_ref()),
        (
            "actor",
            event.actor.as_ref().map(|a| a.name.as_str()) == row.actor.as_deref(),
        ),
    ];
    if let Some((column, _)) = stored.iter().find(|(_, same)| !same) {
        return Err(format!("its stored column {column} does not match its JSON"));
    }
    event.id = row.id;
    Ok(event)
}

/// Who made a change.
pub(crate) fn actor(who: &Principal) -> Actor {
    Actor {
        name: who.name.clone(),
        role: who.role,
    }
}

/// A build as events name it.
pub(crate) fn event_build(b: &BuildRecord) -> EventBuild {
    EventBuild {
        id: b.id.clone(),
        version: b.version.clone(),
        manifest_digest: b.manifest_digest,
        source: EventSource::from(&b.source),
        embargoed: b.embargoed,
    }
}

/// A token as events name it.
pub(crate) fn event_token(t: &TokenRecord) -> EventToken {
    EventToken {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role,
        service: t.service.clone(),
        environment: t.environment.clone(),
    }
}

/// A deployment request as approval events name it.
pub(crate) fn approval(r: &DeploymentRequest, build: &BuildRecord) -> Approval {
    Approval {
        environment: r.environment.clone(),
        build: event_build(build),
        request: Some(r.id.clone()),
        deployment_kind: crate::deploy::deployment_kind(r.kind, true),
        requested_by: r.requested_by.clone(),
        expires_at: r.expires_at,
        override_freeze: r.override_freeze,
        reason: r.reason.clone(),
    }
}

impl Tugboat {
    /// A new event of the current schema, at the clock's current
    /// millisecond (the precision the log's `at` column keeps).
    pub(crate) fn event(&self, service: Option<&ServiceName>, actor: Option<Actor>, change: Change) -> Event {
        Event::new(millisecond(self.now()), service.cloned(), actor, change)
    }

    /// An event `who` made about build `b`.
    pub(crate) fn build_event(
        &self,
        who: &Principal,
        b: &BuildRecord,
        change: impl FnOnce(EventBuild) -> Change,
    ) -> Event {
        self.event(Some(&b.service), Some(actor(who)), change(event_build(b)))
    }

    /// Commits a transaction with the events that describe its changes:
    /// both are stored, or neither (a failure to record the events undoes
    /// the change). Wakes this server's change watcher and its consumers.
    pub(crate) async fn commit(&self, tx: Tx, events: &[Event]) -> Result<()> {
        if self.commit_unannounced(tx, events).await? {
            self.recorded.notify_one();
        }
        Ok(())
    }

    /// [`Tugboat::commit`] without waking the change watcher, for a caller
    /// that has more to do first and wakes it itself; consumers are woken.
    /// Whether any event was recorded.
    pub(crate) async fn commit_unannounced(&self, tx: Tx, events: &[Event]) -> Result<bool> {
        let records: Vec<NewEvent> = events.iter().map(recordable).collect();
        let Some(last) = tx.commit(&records).await? else {
            return Ok(false);
        };
        self.appended.send_if_modified(|seen| {
            let newer = last > *seen;
            if newer {
                *seen = last;
            }
            newer
        });
        Ok(true)
    }

    /// Records events that describe no other change.
    pub(crate) async fn record(&self, events: &[Event]) -> Result<()> {
        self.commit(self.db.begin().await?, events).await
    }

    /// Events after `after` that the caller may see, oldest first: of its
    /// service when scoped (asking for another service is refused). Events
    /// about a build the caller may not see are left out when they are
    /// about the build itself (created, sealed, approvals…) and keep only
    /// what concerns the environment otherwise (a deployment of "an
    /// embargoed build").
    pub async fn events(
        &self,
        who: &Principal,
        after: i64,
        service: Option<&ServiceName>,
        limit: u32,
    ) -> Result<EventPage> {
        let service = self.listing_scope(who, Action::Read, service)?;
        let rows = self.db.events_after(after, service.as_ref(), limit).await?;
        let last = rows.last().map_or(after, |r| r.id);
        let events = rows.iter().map(read_row).collect::<Result<Vec<_>>>()?;
        let events = self.shape_events(who, events).await?;
        Ok(EventPage { events, last })
    }

    /// `events` as `who` may see them: those about a build it may not see
    /// left out or stripped of it (see [`Tugboat::events`]). The caller
    /// chose events in the reader's scope.
    pub(crate) async fn shape_events(&self, who: &Principal, events: Vec<Event>) -> Result<Vec<Event>> {
        let named: Vec<BuildId> = events.iter().flat_map(builds_named).collect();
        let sights = self.sights(who, named).await?;
        Ok(events.into_iter().filter_map(|e| shape(e, &sights)).collect())
    }

    /// Refuses a watcher before its stream starts: it may not read events,
    /// or asks for a service outside its scope.
    pub fn check_watch(&self, who: &Principal, service: Option<&ServiceName>) -> Result<()> {
        self.listing_scope(who, Action::Read, service).map(|_| ())
    }

    /// The id of the newest event, where a watcher that wants only new
    /// events starts.
    pub async fn last_event_id(&self, who: &Principal) -> Result<i64> {
        self.require(who, Action::Read)?;
        Ok(self.db.last_event_id().await?)
    }
}

/// `t` without what is finer than a millisecond.
fn millisecond(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Every build an event names: its own and, for a deployment, the one it
/// replaced.
fn builds_named(e: &Event) -> impl Iterator<Item = BuildId> + '_ {
    let replaced = match &e.change {
        Change::Deployment(d) => d.replaced.clone(),
        _ => None,
    };
    e.change.build().map(|b| b.id.clone()).into_iter().chain(replaced)
}

/// One event as the reader sees it, or `None` when it is about a build the
/// reader may not see.
fn shape(mut e: Event, sights: &Sights) -> Option<Event> {
    let own_hidden = e.change.build().is_some_and(|b| !sights.full(&b.id));
    if own_hidden && e.change.is_about_the_build() {
        return None;
    }
    e.embargoed = own_hidden;
    match &mut e.change {
        Change::Deployment(d) => {
            if own_hidden {
                d.build = None;
                // A reason may name the build.
                d.reason = None;
            }
            if d.replaced.as_ref().is_some_and(|r| !sights.full(r)) {
                d.replaced = None;
                d.replaced_embargoed = true;
                d.reason = None;
            }
        }
        Change::RolloutProgress { build, agent, .. } if own_hidden => {
            *build = None;
            agent.error = None;
        }
        Change::RolloutHalted { build, reason, .. } if own_hidden => {
            *build = None;
            *reason = None;
        }
        Change::RolloutResumed { build, .. } if own_hidden => *build = None,
        Change::RolloutRollbackFailed { build, error, .. } if own_hidden => {
            *build = None;
            *error = None;
        }
        _ => {}
    }
    Some(e)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tug_api::{Deployed, DeploymentKind, EventAgent};
    use tug_core::{EnvName, Role, Sight, TokenName, Version};

    use super::*;

    fn build(n: u8) -> EventBuild {
        EventBuild {
            id: BuildId::parse(&format!("0190aaaa-0000-7000-8000-0000000000{n:02x}")).unwrap(),
            version: Version::parse("1.0.0").unwrap(),
            manifest_digest: None,
            source: EventSource::default(),
            embargoed: true,
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

    fn deployment(build: EventBuild, replaced: Option<BuildId>) -> Event {
        event(Change::Deployment(Deployed {
            environment: EnvName::parse("sec").unwrap(),
            build: Some(build),
            deployment_kind: DeploymentKind::Release,
            seq: 2,
            replaced,
            replaced_embargoed: false,
            override_freeze: false,
            reason: Some("names the fix".into()),
            requested_by: Some("alice".into()),
            approved_by: vec![],
        }))
    }

    /// Sights where build 1 is hidden and build 2 is whole.
    fn sights() -> Sights {
        Sights(HashMap::from([
            (build(1).id, Sight::Embargoed),
            (build(2).id, Sight::Full),
        ]))
    }

    #[test]
    fn an_event_about_a_hidden_build_itself_vanishes() {
        for change in [
            Change::BuildSealed { build: build(1) },
            Change::BuildCreated { build: build(1) },
        ] {
            assert_eq!(shape(event(change), &sights()), None);
        }
        assert!(shape(event(Change::BuildSealed { build: build(2) }), &sights()).is_some());
    }

    #[test]
    fn a_deployment_of_a_hidden_build_keeps_only_the_environment() {
        let shown = shape(deployment(build(1), Some(build(2).id)), &sights()).unwrap();
        assert!(shown.embargoed);
        let Change::Deployment(d) = &shown.change else { panic!() };
        assert_eq!((d.build.as_ref(), d.reason.as_ref()), (None, None));
        assert_eq!(d.environment.as_str(), "sec");
        assert_eq!(d.replaced, Some(build(2).id), "the replaced build is visible");
        // The replaced build hidden, the deployed one visible.
        let shown = shape(deployment(build(2), Some(build(1).id)), &sights()).unwrap();
        assert!(!shown.embargoed);
        let Change::Deployment(d) = &shown.change else { panic!() };
        assert_eq!((d.replaced.as_ref(), d.replaced_embargoed), (None, true));
        assert_eq!(d.reason, None, "a reason may name the hidden build");
        assert!(d.build.is_some());
    }

    #[test]
    fn a_stored_column_that_disagrees_with_the_json_is_named() {
        let e = deployment(build(2), None);
        let r = recordable(&e);
        let row = EventRow {
            id: 7,
            at: r.at,
            kind: r.kind,
            service: r.service,
            build: r.build,
            actor: r.actor,
            payload: r.payload,
            prev_hash: None,
            hash: None,
        };
        assert_eq!(parse_row(&row).unwrap().id, 7);
        type Edit = fn(&mut EventRow);
        let edits: [(&str, Edit); 5] = [
            ("at", |r| r.at += chrono::Duration::milliseconds(1)),
            ("kind", |r| r.kind = "build.sealed".into()),
            ("service", |r| r.service = None),
            ("build_id", |r| r.build = Some(build(1).id)),
            ("actor", |r| r.actor = Some("mallory".into())),
        ];
        for (column, edit) in edits {
            let mut edited = row.clone();
            edit(&mut edited);
            let why = parse_row(&edited).unwrap_err();
            assert!(why.contains(&format!("column {column} ")), "{column}: {why}");
        }
    }

    #[test]
    fn a_rollout_event_of_a_hidden_build_drops_what_may_name_it() {
        let progress = event(Change::RolloutProgress {
            environment: EnvName::parse("sec").unwrap(),
            build: Some(build(1)),
            seq: 2,
            agent: EventAgent {
                id: "a1".into(),
                hostname: "h".into(),
                state: tug_core::states::AgentState::Failed,
                error: Some("build 0190aaaa failed".into()),
            },
        });
        let shown = shape(progress, &sights()).unwrap();
        let Change::RolloutProgress { build, agent, .. } = &shown.change else {
            panic!()
        };
        assert!(shown.embargoed && build.is_none() && agent.error.is_none());
        assert_eq!(agent.state, tug_core::states::AgentState::Failed);
    }
}
