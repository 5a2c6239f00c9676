//! Bad input gets a 4xx with a JSON `{code, message}` that says what to do,
//! and leaves no partial state.

use std::io::{Read, Write};

use reqwest::Method;
use serde_json::json;

use crate::support::{digest_of, write_files, TestServer};

async fn error(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.expect("error bodies are JSON");
    (
        status,
        body["code"].as_str().unwrap().to_string(),
        body["message"].as_str().unwrap().to_string(),
    )
}

async fn new_draft(server: &TestServer) -> String {
    server
        .client()
        .create_service(&tug_core::ServiceName::parse("api").unwrap())
        .await
        .unwrap();
    let res = server
        .http(Method::POST, "/v1/builds")
        .json(&json!({"service": "api", "version": "1.0.0", "source": {"branch": "master"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_unknown_fields_and_bad_values() {
    let server = TestServer::start().await;
    new_draft(&server).await;
    let post = |path: &str, body: &str| {
        server
            .http(Method::POST, path)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let (s, code, msg) = error(post("/v1/builds", "{\"service\": ").await.unwrap()).await;
    assert_eq!((s, code.as_str()), (400, "malformed_json"), "{msg}");
    let (s, code, msg) = error(
        post("/v1/builds", r#"{"service":"api","version":"1.0.0","colour":"red"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "invalid_request"));
    assert!(msg.contains("unknown field `colour`"), "{msg}");
    let (s, _, msg) = error(
        post("/v1/builds", r#"{"service":"api","version":"one"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert!(msg.contains("not a semantic version"), "{msg}");
    let (s, code, msg) = error(
        post("/v1/builds", r#"{"service":"nope","version":"1.0.0"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code.as_str()), (404, "service_not_found"));
    assert!(msg.contains("tug service create nope"), "{msg}");
    let (s, code, _) = error(
        post("/v1/builds", r#"{"service":"API!","version":"1.0.0"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "invalid_request"));
    let (s, code, _) = error(
        server
            .http(Method::GET, "/v1/builds?service=nope")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code.as_str()), (404, "service_not_found"));
    let (s, code, _) = error(server.http(Method::GET, "/v1/builds?limit=lots").send().await.unwrap()).await;
    assert_eq!((s, code.as_str()), (400, "invalid_query"));
    let (s, code, _) = error(
        server
            .http(Method::GET, "/v1/builds/0190c3f2-6a2b-7d4e-9f10-2b3c4d5e6f70")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code.as_str()), (404, "build_not_found"));
    let (s, code, _) = error(
        server
            .http(Method::GET, "/v1/builds/..%2F..%2Fetc%2Fpasswd")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "invalid_request"));
    let (s, code, _) = error(server.http(Method::GET, "/v2/nothing").send().await.unwrap()).await;
    assert_eq!((s, code.as_str()), (404, "not_found"));
    // A JSON body over the limit is refused from its declared length, before
    // it is read: the client hears 413 after sending only the first bytes.
    // (Sending all 20 MiB through a client races the server's close.)
    let addr = server.url.trim_start_matches("http://").to_string();
    let token = server.admin_token.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /v1/blobs/missing HTTP/1.1\r\nHost: tug\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"digests\":[\"",
            20 << 20
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&vec![b'a'; 64 << 10]).unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"body_too_large\""), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_names_are_checked_and_nothing_partial_is_registered() {
    let server = TestServer::start().await;
    let id = new_draft(&server).await;
    let client = server.client();
    client.put_blob_bytes(&digest_of(b"ok"), b"ok".to_vec()).await.unwrap();
    let spec = |name: &str| json!({"name": name, "kind": "binary", "size": 2, "digest": digest_of(b"ok").to_string()});
    let long = "a".repeat(256);
    for (name, why) in [
        ("/etc/passwd", "absolute"),
        ("../../etc/passwd", "'..'"),
        ("a//b", "empty segment"),
        ("bad\u{7}name", "control character"),
        (long.as_str(), "255 bytes"),
    ] {
        let res = server
            .http(Method::POST, &format!("/v1/builds/{id}/artifacts"))
            .json(&json!({"artifacts": [spec("good.bin"), spec(name)]}))
            .send()
            .await
            .unwrap();
        let (s, code, msg) = error(res).await;
        assert_eq!((s, code.as_str()), (400, "invalid_request"), "{name}");
        assert!(msg.contains(why), "{name}: {msg}");
    }
    // Duplicates within one request.
    let res = server
        .http(Method::POST, &format!("/v1/builds/{id}/artifacts"))
        .json(&json!({"artifacts": [spec("x.bin"), spec("x.bin")]}))
        .send()
        .await
        .unwrap();
    let (s, _, msg) = error(res).await;
    assert_eq!(s, 400);
    assert!(msg.contains("appears twice"), "{msg}");
    // A blob that was never uploaded, or a wrong size.
    let res = server
        .http(Method::POST, &format!("/v1/builds/{id}/artifacts"))
        .json(&json!({"artifacts": [spec("good.bin"), {"name": "ghost.bin", "size": 1, "digest": digest_of(b"ghost").to_string()}]}))
        .send()
        .await
        .unwrap();
    let (s, code, _) = error(res).await;
    assert_eq!((s, code.as_str()), (422, "blob_missing"));
    let res = server
        .http(Method::POST, &format!("/v1/builds/{id}/artifacts"))
        .json(&json!({"artifacts": [{"name": "liar.bin", "size": 99, "digest": digest_of(b"ok").to_string()}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error(res).await.1, "size_mismatch");
    // None of the refused requests registered anything.
    assert_eq!(client.build(&id).await.unwrap().artifacts.unwrap().len(), 0);

    // The CLI refuses bad names before uploading.
    let w = tempfile::tempdir().unwrap();
    write_files(w.path(), &[("f.bin", b"f")]);
    let err = server
        .tug(w.path(), &["push", &id, "f.bin", "--name", "../f.bin"])
        .fails()
        .to_string();
    assert!(err.contains("'..'"), "{err}");
    let err = server
        .tug(w.path(), &["push", &id, "f.bin", "--platform", "linux"])
        .fails()
        .to_string();
    assert!(err.contains("os/arch"), "{err}");

    // A same-name artifact with other content is a conflict; the same one is fine.
    client
        .register_artifacts(&id, vec![serde_json::from_value(spec("good.bin")).unwrap()])
        .await
        .unwrap();
    let again = client
        .register_artifacts(&id, vec![serde_json::from_value(spec("good.bin")).unwrap()])
        .await
        .unwrap();
    assert_eq!(again.added, 0);
    client.put_blob_bytes(&digest_of(b"no"), b"no".to_vec()).await.unwrap();
    let other = json!({"name": "good.bin", "size": 2, "digest": digest_of(b"no").to_string()});
    let err = client
        .register_artifacts(&id, vec![serde_json::from_value(other).unwrap()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("duplicate_artifact"));

    // Once sealed, nothing changes.
    client.seal(&id).await.unwrap();
    let err = client
        .register_artifacts(&id, vec![serde_json::from_value(spec("late.bin")).unwrap()])
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(409), Some("build_not_draft")));
    let resealed = client.seal(&id).await.unwrap();
    assert_eq!(
        resealed.state,
        tug_core::BuildState::Sealed,
        "sealing twice returns the sealed build"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digests_oversized_and_truncated_uploads_store_nothing() {
    let server = TestServer::start_with(crate::support::Backend::Embedded, &["--max-blob-size", "1000"]).await;
    let client = server.client();
    let claimed = digest_of(b"what I promised");
    let res = server
        .http(Method::PUT, &format!("/v1/blobs/{claimed}"))
        .body("what I sent")
        .send()
        .await
        .unwrap();
    let (s, code, msg) = error(res).await;
    assert_eq!((s, code.as_str()), (400, "digest_mismatch"));
    assert!(msg.contains(&digest_of(b"what I sent").to_string()), "{msg}");
    assert_eq!(client.head_blob(&claimed).await.unwrap(), None);

    let res = server
        .http(Method::PUT, "/v1/blobs/sha256:1234")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error(res).await.1, "invalid_digest");
    let res = server
        .http(Method::PUT, "/v1/blobs/..%2F..%2Fetc%2Fpasswd")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error(res).await.1, "invalid_digest");

    // Over the limit by Content-Length, and by a chunked body with none.
    let big = vec![1u8; 1001];
    let res = server
        .http(Method::PUT, &format!("/v1/blobs/{}", digest_of(&big)))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let (s, code, msg) = error(res).await;
    assert_eq!((s, code.as_str()), (413, "body_too_large"));
    assert!(msg.contains("1000"), "{msg}");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![1u8; 600]), Ok(vec![1u8; 401])];
    let res = server
        .http(Method::PUT, &format!("/v1/blobs/{}", digest_of(&big)))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(error(res).await.0, 413);
    assert_eq!(client.head_blob(&digest_of(&big)).await.unwrap(), None);

    // A client that promises 500 bytes, sends 100 and hangs up.
    let body = vec![9u8; 500];
    let digest = digest_of(&body);
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        sock,
        "PUT /v1/blobs/{digest} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 500\r\n\r\n",
        server.admin_token
    )
    .unwrap();
    sock.write_all(&body[..100]).unwrap();
    sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = sock.read_to_string(&mut answer);
    assert_eq!(
        client.head_blob(&digest).await.unwrap(),
        None,
        "a truncated upload is not visible"
    );
    let tmp = server.data_dir().join("tmp");
    crate::support::eventually(10, || {
        (std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0) == 0).then_some(())
    });
    // The whole body afterwards is accepted.
    assert!(client.put_blob_bytes(&digest, body).await.unwrap().created);
}
