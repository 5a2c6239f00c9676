//! Recording and reading events. A change is recorded after it is made;
//! a failure to record is logged and does not undo the change.
//!
//! Every event is recorded, embargoed builds' too, with the build it is
//! about in its own column; what a reader sees of it is decided when it is
//! read (see [`Tugboat::events`]), so lifting an embargo makes its history
//! visible.

use serde_json::{json, Map, Value};
use tug_core::{Action, BuildId, ServiceName};
use tug_db::{BuildRow, DeploymentRow, EventRow, NewEvent, RequestRow};

use crate::access::Sights;
use crate::{Principal, Result, Tugboat};

/// One event as a reader may see it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventView {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub kind: String,
    pub service: Option<ServiceName>,
    pub actor: Option<String>,
    pub payload: Value,
    /// The build the event is about is embargoed from the reader: the
    /// payload keeps only what says nothing of it.
    pub embargoed: bool,
}

/// A page of events: those the reader may see, and the id of the last
/// event read (seen or not), where the next page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    pub events: Vec<EventView>,
    pub last: i64,
}

/// Payload fields that may name a build besides the event's own.
const OTHER_BUILDS: [&str; 2] = ["replaced", "failed_build"];

/// Payload fields that say nothing about a build: what an event about an
/// embargoed build keeps.
const ABOUT_THE_ENVIRONMENT: [&str; 7] = [
    "environment",
    "kind",
    "seq",
    "state",
    "revision",
    "agent",
    "override_freeze",
];

/// Whether an event is about the build itself (it vanishes for readers who
/// may not see the build, as the build does) rather than about an
/// environment (which then runs "an embargoed build").
fn about_the_build(kind: &str) -> bool {
    kind.starts_with("build.") || kind.starts_with("approval.")
}

impl Tugboat {
    /// Records an event. The build it is about is its payload's `build`.
    pub(crate) async fn emit(&self, kind: &str, service: Option<&ServiceName>, actor: Option<&str>, payload: Value) {
        let build = payload
            .get("build")
            .and_then(Value::as_str)
            .and_then(|b| BuildId::parse(b).ok());
        let event = NewEvent {
            at: self.now(),
            kind,
            service,
            build: build.as_ref(),
            actor,
            payload: &payload.to_string(),
        };
        if let Err(e) = self.db.append_event(&event).await {
            tracing::error!(kind, error = %e, "could not record an event");
        }
        self.recorded.notify_one();
    }

    pub(crate) async fn emit_build(&self, kind: &str, actor: Option<&str>, b: &BuildRow) {
        let payload = json!({
            "build": b.id,
            "version": b.version,
            "branch": b.source.branch,
            "commit": b.source.commit,
            "state": b.state,
            "manifest_digest": b.manifest_digest,
        });
        self.emit(kind, Some(&b.service), actor, payload).await;
    }

    pub(crate) async fn emit_deployment(&self, d: &DeploymentRow) {
        let payload = json!({
            "environment": d.environment,
            "build": d.build,
            "kind": d.kind,
            "seq": d.seq,
            "replaced": d.replaced,
            "reason": d.reason,
            "override_freeze": d.override_freeze,
        });
        self.emit("deployment", Some(&d.service), d.requested_by.as_deref(), payload)
            .await;
    }

    pub(crate) async fn emit_request(&self, kind: &str, actor: Option<&str>, r: &RequestRow) {
        let payload = json!({
            "environment": r.environment,
            "build": r.build,
            "kind": r.kind,
            "requested_by": r.requested_by,
            "state": r.state,
        });
        self.emit(kind, Some(&r.service), actor, payload).await;
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
        let payloads: Vec<Value> = rows
            .iter()
            .map(|r| serde_json::from_str(&r.payload).unwrap_or(Value::Null))
            .collect();
        let named: Vec<BuildId> = rows
            .iter()
            .zip(&payloads)
            .flat_map(|(r, p)| r.build.clone().into_iter().chain(other_builds(p)))
            .collect();
        let sights = self.sights(who, named).await?;
        let events = rows
            .into_iter()
            .zip(payloads)
            .filter_map(|(row, payload)| shape(row, payload, &sights))
            .collect();
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

fn other_builds(payload: &Value) -> impl Iterator<Item = BuildId> + '_ {
    OTHER_BUILDS
        .iter()
        .filter_map(|k| payload.get(*k).and_then(Value::as_str))
        .filter_map(|b| BuildId::parse(b).ok())
}

/// One event as the reader sees it, or `None` when it is about a build the
/// reader may not see.
fn shape(row: EventRow, payload: Value, sights: &Sights) -> Option<EventView> {
    let hidden = |b: &BuildId| !sights.full(b);
    let own_hidden = row.build.as_ref().is_some_and(hidden);
    if own_hidden && about_the_build(&row.kind) {
        return None;
    }
    let others_hidden: Vec<&str> = OTHER_BUILDS
        .into_iter()
        .filter(|k| {
            payload
                .get(*k)
                .and_then(Value::as_str)
                .and_then(|b| BuildId::parse(b).ok())
                .is_some_and(|b| hidden(&b))
        })
        .collect();
    let payload = if own_hidden {
        let mut kept: Map<String, Value> = ABOUT_THE_ENVIRONMENT
            .iter()
            .filter_map(|k| payload.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        kept.insert("embargoed".into(), Value::Bool(true));
        Value::Object(kept)
    } else if !others_hidden.is_empty() {
        let mut p = payload;
        if let Some(obj) = p.as_object_mut() {
            for k in others_hidden {
                obj.insert(k.to_string(), Value::Null);
                obj.insert(format!("{k}_embargoed"), Value::Bool(true));
            }
            // A reason or error may name the hidden build.
            obj.remove("reason");
            obj.remove("error");
        }
        p
    } else {
        payload
    };
    Some(EventView {
        id: row.id,
        at: row.at,
        kind: row.kind,
        service: row.service,
        actor: row.actor,
        payload,
        embargoed: own_hidden,
    })
}
