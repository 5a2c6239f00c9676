//! Recording and reading events. A change is recorded after it is made;
//! a failure to record is logged and does not undo the change.

use serde_json::{json, Value};
use tug_core::{Action, ServiceName};
use tug_db::{BuildRow, DeploymentRow, EventRow, RequestRow};

use crate::{Principal, Result, Tugboat};

impl Tugboat {
    pub(crate) async fn emit(&self, kind: &str, service: Option<&ServiceName>, actor: Option<&str>, payload: Value) {
        if let Err(e) = self
            .db
            .append_event(self.now(), kind, service, actor, &payload.to_string())
            .await
        {
            tracing::error!(kind, error = %e, "could not record an event");
        }
        self.recorded.notify_one();
    }

    /// Events of builds that are not embargoed (watchers must not learn of
    /// a security release before it is public).
    pub(crate) async fn emit_build(&self, kind: &str, actor: Option<&str>, b: &BuildRow) {
        if b.embargoed {
            return;
        }
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

    /// Events after `after` (of one service, or all), oldest first.
    pub async fn events(
        &self,
        who: &Principal,
        after: i64,
        service: Option<&ServiceName>,
        limit: u32,
    ) -> Result<Vec<EventRow>> {
        self.require(who, Action::Read)?;
        Ok(self.db.events_after(after, service, limit).await?)
    }

    /// The id of the newest event, where a watcher that wants only new
    /// events starts.
    pub async fn last_event_id(&self, who: &Principal) -> Result<i64> {
        self.require(who, Action::Read)?;
        Ok(self.db.last_event_id().await?)
    }
}
