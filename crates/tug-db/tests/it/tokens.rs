//! Repository tests of tokens: lookup by hash and id, unique active names,
//! revocation (and the last admin, under a race), service and environment
//! scope.

use chrono::Utc;
use tug_core::{EnvName, Role, ServiceName, TokenName};
use tug_db::{Db, Error, NewToken, Revocation};

fn token(name: &str, role: Role, hash: &str) -> NewToken {
    NewToken {
        id: uuid::Uuid::now_v7().to_string(),
        name: TokenName::parse(name).unwrap(),
        role,
        service: None,
        environment: None,
        secret_hash: hash.to_string(),
        created_at: Utc::now(),
        created_by: Some("admin".into()),
    }
}

crate::db_test!(tokens_are_found_by_hash_and_revoked, |db: Db| async move {
    assert_eq!(db.count_active_admin_tokens().await.unwrap(), 0);
    crate::in_tx!(db, |tx| tx.insert_token(&token("admin", Role::Admin, "h1")).await).unwrap();
    crate::in_tx!(db, |tx| tx.insert_token(&token("ci-main", Role::Ci, "h2")).await).unwrap();
    assert_eq!(db.count_active_admin_tokens().await.unwrap(), 1);
    let found = db.token_by_hash("h2").await.unwrap().unwrap();
    assert_eq!(
        (found.name.as_str(), found.role, found.revoked_at),
        ("ci-main", Role::Ci, None)
    );
    assert!(db.token_by_hash("nope").await.unwrap().is_none());

    let err = crate::in_tx!(db, |tx| tx.insert_token(&token("ci-main", Role::Viewer, "h3")).await).unwrap_err();
    assert!(matches!(err, Error::TokenNameTaken(_)), "{err}");

    let id = found.id.clone();
    assert_eq!(db.token_by_id(&id).await.unwrap().unwrap().name.as_str(), "ci-main");
    let Revocation::Revoked(revoked) = crate::in_tx!(db, |tx| tx.revoke_token(&id, Utc::now()).await).unwrap() else {
        panic!("not revoked")
    };
    assert!(revoked.revoked_at.is_some());
    assert!(db.token_by_hash("h2").await.unwrap().unwrap().revoked_at.is_some());
    assert!(
        matches!(
            crate::in_tx!(db, |tx| tx.revoke_token(&id, Utc::now()).await).unwrap(),
            Revocation::AlreadyRevoked(t) if t.revoked_at.is_some()
        ),
        "revoking twice changes nothing"
    );
    assert_eq!(
        crate::in_tx!(db, |tx| tx.revoke_token("nobody", Utc::now()).await).unwrap(),
        Revocation::NotFound
    );
    // The name is free again once revoked.
    crate::in_tx!(db, |tx| tx.insert_token(&token("ci-main", Role::Ci, "h4")).await).unwrap();
    assert_eq!(db.list_tokens().await.unwrap().len(), 3);
});

crate::db_test!(scoped_token_needs_an_existing_service, |db: Db| async move {
    let mut t = token("ci-api", Role::Ci, "h1");
    t.service = Some(ServiceName::parse("api").unwrap());
    assert!(matches!(
        crate::in_tx!(db, |tx| tx.insert_token(&t).await).unwrap_err(),
        Error::ServiceNotFound(_)
    ));
    crate::in_tx!(db, |tx| tx
        .create_service(&ServiceName::parse("api").unwrap(), Utc::now())
        .await)
    .unwrap();
    crate::in_tx!(db, |tx| tx.insert_token(&t).await).unwrap();
    assert_eq!(
        db.token_by_hash("h1").await.unwrap().unwrap().service.unwrap().as_str(),
        "api"
    );
});

crate::db_test!(agent_tokens_carry_an_environment_scope, |db: Db| async move {
    crate::in_tx!(db, |tx| tx
        .create_service(&ServiceName::parse("api").unwrap(), Utc::now())
        .await)
    .unwrap();
    let mut t = token("fleet-sec", Role::Agent, "h1");
    t.service = Some(ServiceName::parse("api").unwrap());
    t.environment = Some(EnvName::parse("sec").unwrap());
    crate::in_tx!(db, |tx| tx.insert_token(&t).await).unwrap();
    let found = db.token_by_hash("h1").await.unwrap().unwrap();
    assert_eq!(found.environment.unwrap().as_str(), "sec");
});

// Two admins revoke each other at the same moment, round after round: the
// check that one admin remains and the revocation are one atomic step, so
// exactly one of the two wins each round and one admin is always left.
crate::db_test!(
    last_admin_survives_two_admins_revoking_each_other,
    |db: Db| async move {
        let mut a = token("a", Role::Admin, "a");
        let mut b = token("b", Role::Admin, "b");
        crate::in_tx!(db, |tx| tx.insert_token(&a).await).unwrap();
        crate::in_tx!(db, |tx| tx.insert_token(&b).await).unwrap();
        for round in 0..30 {
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
            let revoke = |id: String| {
                let (db, barrier) = (db.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    crate::in_tx!(db, |tx| tx.revoke_token(&id, Utc::now()).await).unwrap()
                })
            };
            let (x, y) = (revoke(a.id.clone()), revoke(b.id.clone()));
            let outcomes = [x.await.unwrap(), y.await.unwrap()];
            let won = outcomes.iter().filter(|o| matches!(o, Revocation::Revoked(_))).count();
            let refused = outcomes.iter().filter(|o| **o == Revocation::LastAdmin).count();
            assert_eq!((won, refused), (1, 1), "round {round}: {outcomes:?}");
            assert_eq!(db.count_active_admin_tokens().await.unwrap(), 1, "round {round}");
            // The survivor and a new admin are the next round's pair.
            let survivor = if matches!(outcomes[0], Revocation::Revoked(_)) {
                b
            } else {
                a
            };
            let fresh = token(&format!("n{round}"), Role::Admin, &format!("n{round}"));
            crate::in_tx!(db, |tx| tx.insert_token(&fresh).await).unwrap();
            (a, b) = (survivor, fresh);
        }
    }
);
