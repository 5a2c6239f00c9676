//! A family of consumers that changes while the server runs: consumers
//! start when their name is listed and stop when it is not, and a consumer
//! that fails part-way through a page resumes after what it handled,
//! after the wait it asked for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tug_api::AuditRecord;
use tug_core::ServiceName;
use tug_service::{Consumer, ConsumerError, ConsumerFamily, LeaseOptions, Tugboat};

use crate::app::{Dialect, TestApp};

/// What each consumer received, by name, in order.
type Received = Arc<Mutex<HashMap<String, Vec<i64>>>>;

struct Family {
    names: Arc<Mutex<Vec<String>>>,
    received: Received,
}

#[async_trait::async_trait]
impl ConsumerFamily for Family {
    fn family(&self) -> &str {
        "test"
    }

    async fn names(&self, _: &Tugboat) -> tug_service::Result<Vec<String>> {
        Ok(self.names.lock().unwrap().clone())
    }

    fn make(&self, _: &Tugboat, name: &str) -> Box<dyn Consumer> {
        Box::new(Recorder {
            name: name.to_string(),
            received: self.received.clone(),
            // The consumer named "flaky" fails once, after handling the
            // first event of a page of two or more.
            failed: name != "flaky",
        })
    }
}

struct Recorder {
    name: String,
    received: Received,
    failed: bool,
}

#[async_trait::async_trait]
impl Consumer for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&mut self, records: &[AuditRecord]) -> Result<(), ConsumerError> {
        let mut received = self.received.lock().unwrap();
        let mine = received.entry(self.name.clone()).or_default();
        if !self.failed && records.len() >= 2 {
            self.failed = true;
            mine.push(records[0].event.id);
            return Err(ConsumerError::new("the endpoint failed")
                .handled_through(records[0].event.id)
                .retry_after(Duration::from_millis(300)));
        }
        mine.extend(records.iter().map(|r| r.event.id));
        Ok(())
    }
}

async fn consumers_start_stop_and_resume_after_what_they_handled(dialect: Dialect) {
    let app = TestApp::start(dialect).await;
    let admin = app.admin();
    for i in 0..3 {
        admin
            .create_service(&ServiceName::parse(&format!("svc{i}")).unwrap())
            .await
            .unwrap();
    }
    let names = Arc::new(Mutex::new(vec!["steady".to_string(), "flaky".to_string()]));
    let received: Received = Arc::default();
    let family = Arc::new(Family {
        names: names.clone(),
        received: received.clone(),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(app.tugboat.clone().run_consumer_family(
        family,
        LeaseOptions::new(Duration::from_secs(10), None),
        stopped,
    ));
    let got = |name: &str| received.lock().unwrap().get(name).cloned().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got("steady").len() < 3 || got("flaky").len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", received.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both saw every event once, in order: the flaky one resumed after the
    // event it had handled, not from its cursor before the page.
    assert_eq!(got("steady"), got("flaky"));
    let ids = got("steady");
    assert!(ids.windows(2).all(|w| w[0] + 1 == w[1]), "{ids:?}");

    // A consumer no longer listed stops; the others go on.
    names.lock().unwrap().retain(|n| n != "flaky");
    app.tugboat.consumers_changed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = got("flaky").len();
    admin
        .create_service(&ServiceName::parse("later").unwrap())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got("steady").len() < ids.len() + 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(got("flaky").len(), before, "a stopped consumer was fed events");

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the family stops")
        .unwrap();
}

crate::on_both_dialects!(consumers_start_stop_and_resume_after_what_they_handled);
