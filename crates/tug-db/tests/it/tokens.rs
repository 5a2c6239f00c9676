//! Repository tests of tokens: lookup by hash, unique active names,
//! revocation, service scope.

use chrono::Utc;
use tug_core::{Role, ServiceName, TokenName};
use tug_db::{Db, Error, NewToken};

fn token(name: &str, role: Role, hash: &str) -> NewToken {
    NewToken {
        id: uuid::Uuid::now_v7().to_string(),
        name: TokenName::parse(name).unwrap(),
        role,
        service: None,
        secret_hash: hash.to_string(),
        created_at: Utc::now(),
        created_by: Some("admin".into()),
    }
}

crate::db_test!(tokens_are_found_by_hash_and_revoked, |db: Db| async move {
    assert_eq!(db.count_active_admin_tokens().await.unwrap(), 0);
    db.insert_token(&token("admin", Role::Admin, "h1")).await.unwrap();
    db.insert_token(&token("ci-main", Role::Ci, "h2")).await.unwrap();
    assert_eq!(db.count_active_admin_tokens().await.unwrap(), 1);
    let found = db.token_by_hash("h2").await.unwrap().unwrap();
    assert_eq!(
        (found.name.as_str(), found.role, found.revoked_at),
        ("ci-main", Role::Ci, None)
    );
    assert!(db.token_by_hash("nope").await.unwrap().is_none());

    let err = db
        .insert_token(&token("ci-main", Role::Viewer, "h3"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TokenNameTaken(_)), "{err}");

    let revoked = db.revoke_token("ci-main", Utc::now()).await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(db.token_by_hash("h2").await.unwrap().unwrap().revoked_at.is_some());
    assert!(
        db.revoke_token("ci-main", Utc::now()).await.unwrap().is_none(),
        "revoking twice finds nothing active"
    );
    // The name is free again once revoked.
    db.insert_token(&token("ci-main", Role::Ci, "h4")).await.unwrap();
    assert_eq!(db.list_tokens().await.unwrap().len(), 3);
});

crate::db_test!(scoped_token_needs_an_existing_service, |db: Db| async move {
    let mut t = token("ci-api", Role::Ci, "h1");
    t.service = Some(ServiceName::parse("api").unwrap());
    assert!(matches!(
        db.insert_token(&t).await.unwrap_err(),
        Error::ServiceNotFound(_)
    ));
    db.create_service(&ServiceName::parse("api").unwrap(), Utc::now())
        .await
        .unwrap();
    db.insert_token(&t).await.unwrap();
    assert_eq!(
        db.token_by_hash("h1").await.unwrap().unwrap().service.unwrap().as_str(),
        "api"
    );
});
