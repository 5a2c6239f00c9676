//! `kill -9` of the server during an upload leaves no visible blob and no
//! half-registered artifact; leftovers are removed at the next start.

use std::io::Write;

use crate::support::{digest_of, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_upload_leaves_nothing_visible() {
    let mut server = TestServer::start().await;
    let client = server.client();
    client
        .create_service(&tug_core::ServiceName::parse("api").unwrap())
        .await
        .unwrap();
    let body = vec![5u8; 4 << 20];
    let digest = digest_of(&body);

    // Half the body arrives, then the server dies mid-upload.
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        sock,
        "PUT /v1/blobs/{digest} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        server.admin_token,
        body.len()
    )
    .unwrap();
    sock.write_all(&body[..2 << 20]).unwrap();
    let tmp = server.data_dir().join("tmp");
    // Wait until the upload's temporary file exists, so the kill really
    // lands mid-write.
    crate::support::eventually(20, || {
        let n = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
        (n > 0).then_some(())
    });
    server.kill9();
    assert!(
        std::fs::read_dir(&tmp).unwrap().count() > 0,
        "the killed upload left a temporary file behind"
    );
    drop(sock);

    server.restart();
    let client = server.client();
    assert_eq!(
        client.head_blob(&digest).await.unwrap(),
        None,
        "no half-written blob is visible"
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "leftovers are removed at start"
    );
    assert!(
        server.log().contains("removed leftovers of interrupted uploads"),
        "{}",
        server.log()
    );

    // Registering the artifact whose blob never landed is refused, so the
    // draft holds nothing half-done; a fresh push then works.
    let w = tempfile::tempdir().unwrap();
    let id = server
        .tug(w.path(), &["build", "create", "--service", "api", "--version", "1.0.0"])
        .ok()
        .trim()
        .to_string();
    let err = client
        .register_artifacts(
            &id,
            vec![tug_core::ArtifactSpec {
                name: tug_core::ArtifactName::parse("big.bin").unwrap(),
                kind: tug_core::ArtifactKind::Binary,
                platform: None,
                size: body.len() as u64,
                digest,
                derived_from: vec![],
                executable: false,
                uri: None,
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("blob_missing"));
    assert_eq!(client.build(&id).await.unwrap().artifact_count, 0);
    std::fs::write(w.path().join("big.bin"), &body).unwrap();
    server.tug(w.path(), &["push", &id, "big.bin"]).ok();
    assert_eq!(client.head_blob(&digest).await.unwrap(), Some(body.len() as u64));
}
