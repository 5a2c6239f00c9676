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

/// A recorded event read back: its JSON parsed, its id set, and its stored
/// columns checked against it (a column edited behind the server's back
/// would change what readers may see).
pub(crate) fn parse_row(row: &EventRow) -> std::result::Result<Event, String> {
    let mut event: Event = serde_json::from_str(&row.payload).map_err(|e| format!("its JSON is not an event ({e})"))?;
    let derived = recordable(&event);
    let stored = [
        ("at", derived.at.timestamp_millis() == row.at.timestamp_millis()),
        ("kind", derived.kind == row.kind),
        ("service", derived.service == row.service),
        ("build_id", derived.build == row.build),
        ("actor", derived.actor == row.actor),
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
    /// the change). Wakes this server's change watcher.
    pub(crate) async fn commit(&self, tx: Tx, events: &[Event]) -> Result<()> {
        let records: Vec<NewEvent> = events.iter().map(recordable).collect();
        tx.commit(&records).await?;
        if !events.is_empty() {
            self.recorded.notify_one();
        }
        Ok(())
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
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            match parse_row(row) {
                Ok(e) => events.push(e),
                Err(why) => return Err(Error::corrupt(format!("event {}: {why}; run tug audit verify", row.id))),
            }
        }
        let named: Vec<BuildId> = events.iter().flat_map(builds_named).collect();
        let sights = self.sights(who, named).await?;
        let events = events.into_iter().filter_map(|e| shape(e, &sights)).collect();
        Ok(EventPage { events, last })
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
