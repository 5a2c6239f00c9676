//! Repository tests of builds and artifacts: drafts, idempotent and
//! conflicting registrations, sealing, concurrency, listing, abandonment.

use chrono::{Duration, Utc};
use tug_core::{
    ArtifactKind, ArtifactName, ArtifactSpec, BuildId, BuildManifest, BuildSource, BuildState, CiRun, DerivedFrom,
    Digest, Draft, Platform, SealError, ServiceName, Version,
};
use tug_db::{BuildFilter, Db, Error, NewBuild};

pub(crate) fn service() -> ServiceName {
    ServiceName::parse("api").unwrap()
}

pub(crate) async fn draft(db: &Db, branch: &str, version: &str, expected: &[&str]) -> BuildId {
    crate::in_tx!(db, |tx| tx.create_service(&service(), Utc::now()).await).unwrap();
    let id = BuildId::parse(&uuid::Uuid::now_v7().to_string()).unwrap();
    crate::in_tx!(db, |tx| tx
        .insert_build(&NewBuild {
            id: id.clone(),
            service: service(),
            version: Version::parse(version).unwrap(),
            source: BuildSource {
                branch: Some(branch.into()),
                commit: Some("abc".into()),
                ..Default::default()
            },
            ci: CiRun::default(),
            expected: expected.iter().map(|e| ArtifactName::parse(e).unwrap()).collect(),
            created_at: Utc::now(),
            created_by: Some("ci".into()),
            created_by_token: None,
            embargoed: false,
        })
        .await)
    .unwrap();
    id
}

pub(crate) fn spec(name: &str, body: &str, from: &[&str]) -> ArtifactSpec {
    ArtifactSpec {
        name: ArtifactName::parse(name).unwrap(),
        kind: ArtifactKind::guess(name),
        platform: Some(Platform::parse("linux/amd64").unwrap()),
        size: body.len() as u64,
        digest: Digest::of(body.as_bytes()),
        derived_from: from.iter().map(|f| DerivedFrom::parse(f).unwrap()).collect(),
        executable: false,
        uri: None,
    }
}

fn seal_with(
    db: &Db,
    id: &BuildId,
) -> impl std::future::Future<Output = tug_db::Result<Result<tug_db::BuildRow, SealError>>> {
    seal_at(db, id, Utc::now())
}

/// Seals `id` as if at `at`.
pub(crate) fn seal_at(
    db: &Db,
    id: &BuildId,
    at: chrono::DateTime<Utc>,
) -> impl std::future::Future<Output = tug_db::Result<Result<tug_db::BuildRow, SealError>>> {
    let db = db.clone();
    let id = id.clone();
    async move {
        crate::in_tx!(db, |tx| tx
            .seal_build(&id, at, |b, artifacts| {
                BuildManifest::seal(Draft {
                    id: &b.id,
                    service: &b.service,
                    version: &b.version,
                    source: &b.source,
                    ci: &b.ci,
                    created_at: &b.created_at.to_rfc3339(),
                    expected: &b.expected,
                    artifacts,
                })
            })
            .await)
    }
}

crate::db_test!(unknown_service_is_refused, |db: Db| async move {
    let err = crate::in_tx!(db, |tx| tx
        .insert_build(&NewBuild {
            id: BuildId::parse(&uuid::Uuid::now_v7().to_string()).unwrap(),
            service: ServiceName::parse("nope").unwrap(),
            version: Version::parse("1.0.0").unwrap(),
            source: BuildSource::default(),
            ci: CiRun::default(),
            expected: vec![],
            created_at: Utc::now(),
            created_by: None,
            created_by_token: None,
            embargoed: false,
        })
        .await)
    .unwrap_err();
    assert!(matches!(err, Error::ServiceNotFound(_)), "{err}");
});

crate::db_test!(artifacts_are_idempotent_and_duplicates_refused, |db: Db| async move {
    let id = draft(&db, "master", "1.4.0", &[]).await;
    let a = spec("linux-amd64/app.tar.gz", "tar", &[]);
    assert_eq!(
        db.add_artifacts(&id, std::slice::from_ref(&a), Utc::now())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        db.add_artifacts(&id, std::slice::from_ref(&a), Utc::now())
            .await
            .unwrap(),
        0,
        "a retried push is accepted"
    );
    let other = spec("linux-amd64/app.tar.gz", "different", &[]);
    let err = db
        .add_artifacts(&id, &[spec("b.deb", "deb", &[]), other], Utc::now())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateArtifact { .. }), "{err}");
    // All or nothing: b.deb from the refused batch is not there.
    let names: Vec<String> = db
        .artifacts(&id)
        .await
        .unwrap()
        .iter()
        .map(|a| a.name.to_string())
        .collect();
    assert_eq!(names, vec!["linux-amd64/app.tar.gz"]);
});

crate::db_test!(seal_checks_expected_and_freezes_the_build, |db: Db| async move {
    let id = draft(&db, "master", "1.4.0", &["app.tar.gz", "app.deb"]).await;
    db.add_artifacts(&id, &[spec("app.tar.gz", "tar", &[])], Utc::now())
        .await
        .unwrap();
    let refused = seal_with(&db, &id).await.unwrap().unwrap_err();
    assert_eq!(
        refused,
        SealError::MissingExpected(vec![ArtifactName::parse("app.deb").unwrap()])
    );
    assert_eq!(db.build(&id).await.unwrap().unwrap().state, BuildState::Draft);

    db.add_artifacts(&id, &[spec("app.deb", "deb", &["app.tar.gz"])], Utc::now())
        .await
        .unwrap();
    let sealed = seal_with(&db, &id).await.unwrap().unwrap();
    assert_eq!(sealed.state, BuildState::Sealed);
    let digest = sealed.manifest_digest.unwrap();
    assert_eq!(Digest::of(sealed.manifest.as_ref().unwrap().as_bytes()), digest);
    assert_eq!(db.build_by_manifest(&digest).await.unwrap().unwrap().id, id);

    let err = db
        .add_artifacts(&id, &[spec("late.rpm", "rpm", &[])], Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotDraft {
                state: BuildState::Sealed,
                ..
            }
        ),
        "{err}"
    );
    let err = seal_with(&db, &id).await.unwrap_err();
    assert!(matches!(err, Error::NotDraft { .. }), "{err}");
    let missing = BuildId::parse("0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70").unwrap();
    assert!(matches!(
        seal_with(&db, &missing).await.unwrap_err(),
        Error::BuildNotFound(_)
    ));
});

crate::db_test!(many_jobs_push_into_one_draft_at_once, |db: Db| async move {
    let id = draft(&db, "master", "1.4.0", &[]).await;
    let mut tasks = Vec::new();
    for job in 0..8 {
        let db = db.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let name = format!("job{job}/file{i}");
                db.add_artifacts(&id, &[spec(&name, &name, &[])], Utc::now())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(db.artifacts(&id).await.unwrap().len(), 80);
    let sealed = seal_with(&db, &id).await.unwrap().unwrap();
    assert_eq!(sealed.artifact_count, 80);
});

crate::db_test!(list_filters_by_branch_version_and_state, |db: Db| async move {
    let a = draft(&db, "master", "1.4.0", &[]).await;
    let _b = draft(&db, "release-1", "1.3.2", &[]).await;
    let c = draft(&db, "master", "1.5.0", &[]).await;
    let all = db
        .list_builds(&BuildFilter {
            service: Some(service()),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].id, c, "newest first");
    let master = db
        .list_builds(&BuildFilter {
            service: Some(service()),
            branch: Some("master".into()),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        master.iter().map(|b| b.id.clone()).collect::<Vec<_>>(),
        vec![c.clone(), a.clone()]
    );
    let v = db
        .list_builds(&BuildFilter {
            version: Some(Version::parse("1.4.0").unwrap()),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].id, a);
    let limited = db
        .list_builds(&BuildFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
});

crate::db_test!(
    stale_drafts_are_abandoned_and_release_their_blobs,
    |db: Db| async move {
        let stale = draft(&db, "master", "1.4.0", &[]).await;
        db.add_artifacts(&stale, &[spec("a.bin", "only-in-stale", &[])], Utc::now())
            .await
            .unwrap();
        let kept = draft(&db, "master", "1.4.1", &[]).await;
        db.add_artifacts(&kept, &[spec("a.bin", "kept", &[])], Utc::now())
            .await
            .unwrap();
        seal_with(&db, &kept).await.unwrap().unwrap();

        let abandoned = db
            .abandon_stale_drafts(Utc::now() + Duration::seconds(1))
            .await
            .unwrap();
        assert_eq!(abandoned, vec![stale.clone()], "sealed builds are never abandoned");
        assert_eq!(db.build(&stale).await.unwrap().unwrap().state, BuildState::Abandoned);
        let referenced = db.referenced_digests().await.unwrap();
        assert!(referenced.contains(&Digest::of(b"kept")));
        assert!(!referenced.contains(&Digest::of(b"only-in-stale")));
        assert!(db.is_referenced(&Digest::of(b"kept")).await.unwrap());

        db.claim_blobs(&[Digest::of(b"x")], Utc::now()).await.unwrap();
        db.claim_blobs(&[Digest::of(b"x")], Utc::now()).await.unwrap();
        assert!(db
            .claimed_since(Utc::now() - Duration::seconds(60))
            .await
            .unwrap()
            .contains(&Digest::of(b"x")));
        db.forget_claim(&Digest::of(b"x")).await.unwrap();
        assert!(db
            .claimed_since(Utc::now() - Duration::seconds(60))
            .await
            .unwrap()
            .is_empty());
    }
);
