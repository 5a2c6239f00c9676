//! Repository tests of the metric gates' samples: a sample within bounds
//! starts the gate's clock and later ones keep it, any other clears it, a
//! sample older than the stored one changes nothing (two servers sampling
//! at once agree), and each deployment has a gate of its own.

use chrono::{DateTime, Duration, Utc};
use tug_core::{BuildId, EnvName};
use tug_db::{Db, GateSample};

use crate::builds::service;

fn staging() -> EnvName {
    EnvName::parse("staging").unwrap()
}

fn build() -> BuildId {
    BuildId::parse("01900000-0000-7000-8000-000000000001").unwrap()
}

fn within(at: DateTime<Utc>, value: f64) -> GateSample {
    GateSample {
        at,
        value: Some(value),
        error: None,
    }
}

fn out(at: DateTime<Utc>, value: Option<f64>, why: &str) -> GateSample {
    GateSample {
        at,
        value,
        error: Some(why.into()),
    }
}

async fn save(db: &Db, seq: i64, sample: &GateSample) {
    db.save_gate_sample(&service(), &staging(), seq, &build(), sample)
        .await
        .unwrap();
}

crate::db_test!(gate_samples_keep_the_earliest_time_within_bounds, |db: Db| async move {
    let t0 = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let at = |s: i64| t0 + Duration::seconds(s);
    assert!(db.gate(&service(), &staging(), 1).await.unwrap().is_none());

    save(&db, 1, &within(at(0), 0.0)).await;
    save(&db, 1, &within(at(15), 0.001)).await;
    let g = db.gate(&service(), &staging(), 1).await.unwrap().unwrap();
    assert_eq!(
        g.within_since,
        Some(at(0)),
        "the clock runs from the first sample within bounds"
    );
    assert_eq!(g.last, within(at(15), 0.001));
    assert_eq!(g.build, build());

    // Out of bounds: the clock stops; an error without a value too.
    save(&db, 1, &out(at(30), Some(5.0), "returned 5, above max 0.5")).await;
    let g = db.gate(&service(), &staging(), 1).await.unwrap().unwrap();
    assert_eq!(g.within_since, None);
    assert_eq!(g.last.value, Some(5.0));
    save(&db, 1, &within(at(45), 0.0)).await;
    save(&db, 1, &out(at(60), None, "Prometheus is unreachable")).await;
    let g = db.gate(&service(), &staging(), 1).await.unwrap().unwrap();
    assert_eq!((g.within_since, g.last.value), (None, None));
    assert_eq!(g.last.error.as_deref(), Some("Prometheus is unreachable"));

    // A sample taken before the stored one (a slower server's) changes
    // nothing; the clock restarts at the next sample within bounds.
    save(&db, 1, &within(at(50), 0.0)).await;
    assert_eq!(
        db.gate(&service(), &staging(), 1).await.unwrap().unwrap().within_since,
        None
    );
    save(&db, 1, &within(at(75), 0.0)).await;
    save(&db, 1, &out(at(70), Some(9.0), "late")).await;
    let g = db.gate(&service(), &staging(), 1).await.unwrap().unwrap();
    assert_eq!(g.within_since, Some(at(75)));

    // The next deployment's gate starts afresh; the newest is current.
    save(&db, 2, &out(at(80), Some(1.0), "above")).await;
    assert_eq!(
        db.gate(&service(), &staging(), 1).await.unwrap().unwrap().within_since,
        Some(at(75))
    );
    let current = db.current_gates().await.unwrap();
    assert_eq!(current.len(), 1);
    assert_eq!((current[0].seq, current[0].within_since), (2, None));
});

crate::db_test!(concurrent_gate_samples_agree, |db: Db| async move {
    let t0 = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    // Eight servers sample every second for ten seconds, in any order:
    // the gate ends with the newest sample and the first time within
    // bounds.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                for s in 0..10 {
                    save(&db, 1, &within(t0 + Duration::seconds(s), s as f64 / 100.0)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let g = db.gate(&service(), &staging(), 1).await.unwrap().unwrap();
    assert_eq!(g.within_since, Some(t0));
    assert_eq!(g.last, within(t0 + Duration::seconds(9), 0.09));
});
