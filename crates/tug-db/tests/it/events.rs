//! Repository tests of the event log: events commit with the change they
//! describe and take consecutive ids in commit order, each chained to the
//! one before; a reader tailing "every event after id N" while many
//! transactions append at once sees every id exactly once, in order, with
//! no gap.

use std::collections::BTreeSet;

use chrono::Utc;
use tug_core::audit::{self, Walk};
use tug_core::ServiceName;
use tug_db::{Db, NewEvent};

fn event(text: &str) -> NewEvent {
    NewEvent {
        at: Utc::now(),
        kind: "service.created".into(),
        service: None,
        build: None,
        actor: None,
        payload: format!("{{\"n\":\"{text}\"}}"),
    }
}

/// Walks the whole log against its head; the number of events.
async fn verify(db: &Db) -> u64 {
    let head = db.event_head().await.unwrap();
    let rows = db.events_after(0, None, 100_000).await.unwrap();
    let mut walk = Walk::new();
    for r in &rows {
        walk.step(&r.chained()).unwrap();
    }
    walk.finish(head.id, &head.hash.unwrap()).unwrap()
}

crate::db_test!(
    events_commit_with_their_change_in_order_and_chained,
    |db: Db| async move {
        let head = db.event_head().await.unwrap();
        assert_eq!(
            (head.id, head.hash),
            (0, Some(audit::genesis())),
            "a new log starts at genesis"
        );

        let api = ServiceName::parse("api").unwrap();
        let mut tx = db.begin().await.unwrap();
        assert!(tx.create_service(&api, Utc::now()).await.unwrap());
        let last = tx.commit(&[event("a"), event("b"), event("c")]).await.unwrap();
        assert_eq!(last, Some(3));
        assert_eq!(db.record(&[event("d")]).await.unwrap(), Some(4));

        // A transaction dropped without its commit leaves neither the change
        // nor an id behind.
        let web = ServiceName::parse("web").unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.create_service(&web, Utc::now()).await.unwrap();
        drop(tx);
        assert!(!db.service_exists(&web).await.unwrap());
        assert_eq!(db.record(&[event("e")]).await.unwrap(), Some(5));

        let rows = db.events_after(0, None, 100).await.unwrap();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        assert_eq!(rows[1].prev_hash, rows[0].hash);
        assert_eq!(rows[0].prev_hash, Some(audit::genesis()));
        assert_eq!(
            rows[2].hash,
            Some(audit::link(&rows[1].hash.unwrap(), 3, "{\"n\":\"c\"}"))
        );
        assert_eq!(verify(&db).await, 5);
        assert_eq!(db.last_event_id().await.unwrap(), 5);
        assert_eq!(db.events_after(3, None, 100).await.unwrap().len(), 2);
    }
);

crate::db_test!(
    a_reader_tailing_the_log_never_skips_an_event_while_many_write,
    |db: Db| async move {
        const WRITERS: usize = 8;
        const EACH: usize = 20;
        // Each transaction appends one to three events.
        let per = |i: usize| 1 + i % 3;
        let total: usize = WRITERS * (0..EACH).map(per).sum::<usize>();
        let start = db.last_event_id().await.unwrap();

        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let db = db.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..EACH {
                    let mut tx = db.begin().await.unwrap();
                    let name = ServiceName::parse(&format!("s{w}-{i}")).unwrap();
                    tx.create_service(&name, Utc::now()).await.unwrap();
                    // Let the others run between the change and its events.
                    tokio::task::yield_now().await;
                    let events: Vec<NewEvent> = (0..per(i)).map(|k| event(&format!("{w}/{i}/{k}"))).collect();
                    tx.commit(&events).await.unwrap();
                }
            }));
        }

        let mut last = start;
        let mut seen = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while seen.len() < total {
            assert!(
                tokio::time::Instant::now() < deadline,
                "read {} of {total} events",
                seen.len()
            );
            for r in db.events_after(last, None, 7).await.unwrap() {
                assert_eq!(r.id, last + 1, "after event {last} the reader got event {}", r.id);
                last = r.id;
                assert!(seen.insert(r.payload.clone()), "event {} read twice", r.id);
            }
            tokio::task::yield_now().await;
        }
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(last, start + total as i64);
        assert!(db.events_after(last, None, 10).await.unwrap().is_empty());
        assert_eq!(verify(&db).await, total as u64);
    }
);

crate::db_test!(
    an_events_id_is_taken_at_its_commit_not_when_its_transaction_began,
    |db: Db| async move {
        // The first transaction begins first and commits last: its event
        // comes after the other's, so a reader that has read up to the
        // other's id can never be passed by it.
        let early = db.begin().await.unwrap();
        let late = db.begin().await.unwrap();
        assert_eq!(late.commit(&[event("late")]).await.unwrap(), Some(1));
        assert_eq!(early.commit(&[event("early")]).await.unwrap(), Some(2));
        let rows = db.events_after(0, None, 10).await.unwrap();
        let order: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
        assert_eq!(order, ["{\"n\":\"late\"}", "{\"n\":\"early\"}"]);
        assert_eq!(verify(&db).await, 2);
    }
);
