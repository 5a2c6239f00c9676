//! Repository tests of consumer leases: one holder at a time, taken over
//! only once expired, and a holder whose lease was taken over can neither
//! renew it nor move the cursor (the fence).

use chrono::{Duration, Utc};
use tug_db::Db;

crate::db_test!(
    a_consumer_lease_has_one_holder_and_a_holder_that_lost_it_cannot_move_the_cursor,
    |db: Db| async move {
        let now = Utc::now();
        let later = now + Duration::seconds(10);
        let a = db
            .take_consumer_lease("sink", "a", now, later, true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.cursor, 0, "a new consumer starts before the first event");
        assert_eq!(
            db.take_consumer_lease("sink", "b", now, later, true).await.unwrap(),
            None,
            "a running lease is not taken"
        );
        assert!(db.renew_consumer_lease(&a, Some(7), later).await.unwrap());

        // a stalls past its expiry; b takes over where the cursor stands.
        let after = later + Duration::seconds(1);
        let b = db
            .take_consumer_lease("sink", "b", after, after + Duration::seconds(10), true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.cursor, 7);
        assert!(b.epoch > a.epoch);
        assert!(
            !db.renew_consumer_lease(&a, Some(9), after).await.unwrap(),
            "the old holder is fenced off"
        );
        assert!(!db.renew_consumer_lease(&a, None, after).await.unwrap());
        let rows = db.consumers().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].cursor, rows[0].holder.as_deref()), (7, Some("b")));

        // Given up, the lease is free at once; the old tenure stays fenced
        // even when its holder takes the lease again.
        db.release_consumer_lease(&b).await.unwrap();
        let a2 = db
            .take_consumer_lease("sink", "a", after, later, true)
            .await
            .unwrap()
            .unwrap();
        assert!(!db.renew_consumer_lease(&a, Some(9), after).await.unwrap());
        assert!(db.renew_consumer_lease(&a2, Some(9), after).await.unwrap());
        assert_eq!(db.consumers().await.unwrap()[0].cursor, 9);
    }
);
