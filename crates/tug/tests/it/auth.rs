//! Tokens and roles: every API call but /healthz needs a token; a missing or
//! wrong token is 401, a missing role 403, a revoked token is refused at once.

use std::os::unix::fs::PermissionsExt;

use reqwest::Method;

use crate::support::{write_files, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_writes_a_private_admin_token_that_the_cli_finds() {
    let server = TestServer::start().await;
    let path = server.data_dir().join("admin.token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(server.admin_token.starts_with("tug_"));
    // No TUG_TOKEN: the CLI run next to tug-data/ reads the admin token.
    let run = server.tug_as("", server.dir.path(), &["service", "create", "api"]);
    run.ok();
    // Elsewhere, without a token, the server says what to send.
    let elsewhere = tempfile::tempdir().unwrap();
    let err = server
        .tug_as("", elsewhere.path(), &["service", "list"])
        .fails()
        .to_string();
    assert!(
        err.contains("unauthenticated") && err.contains("Authorization: Bearer"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_and_revoked_tokens_get_401_missing_roles_403() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    server.tug(w, &["service", "create", "web"]).ok();

    let health = reqwest::get(format!("{}/healthz", server.url)).await.unwrap();
    assert_eq!(health.status(), 200, "healthz needs no token");

    for (auth, code) in [
        (None, "unauthenticated"),
        (Some("Bearer tug_wrong"), "invalid_token"),
        (Some("Basic abc"), "invalid_token"),
    ] {
        let mut req = reqwest::Client::new().get(format!("{}/v1/services", server.url));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["code"], code);
        assert!(body["message"].as_str().unwrap().len() > 10);
    }

    let ci = server
        .tug(
            w,
            &[
                "token",
                "create",
                "--name",
                "ci-api",
                "--role",
                "ci",
                "--service",
                "api",
                "--output",
                "json",
            ],
        )
        .json();
    let ci = ci["secret"].as_str().unwrap().to_string();
    let viewer = server
        .tug(
            w,
            &[
                "token", "create", "--name", "dash", "--role", "viewer", "--output", "json",
            ],
        )
        .json();
    let viewer = viewer["secret"].as_str().unwrap().to_string();

    // The ci token works for its service…
    write_files(w, &[("app.bin", b"app")]);
    server
        .tug_as(&ci, w, &["push", "--service", "api", "--version", "1.0.0", "app.bin"])
        .ok();
    // …not for another one, and it manages no tokens.
    let err = server
        .tug_as(&ci, w, &["push", "--service", "web", "--version", "1.0.0", "app.bin"])
        .fails()
        .to_string();
    assert!(err.contains("out_of_scope") && err.contains("HTTP 403"), "{err}");
    let err = server.tug_as(&ci, w, &["token", "list"]).fails().to_string();
    assert!(err.contains("forbidden") && err.contains("HTTP 403"), "{err}");
    // A viewer reads but does not write.
    server.tug_as(&viewer, w, &["build", "list", "--service", "api"]).ok();
    let err = server
        .tug_as(
            &viewer,
            w,
            &["build", "create", "--service", "api", "--version", "1.0.0"],
        )
        .fails()
        .to_string();
    assert!(err.contains("HTTP 403") && err.contains("role viewer"), "{err}");
    let res = server
        .client_with(&viewer)
        .put_blob_bytes(&crate::support::digest_of(b"x"), b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(res.status(), Some(403));

    // Revocation takes effect on the very next request.
    server.tug_as(&ci, w, &["build", "list", "--service", "api"]).ok();
    server.tug(w, &["token", "revoke", "ci-api"]).ok();
    let err = server
        .tug_as(&ci, w, &["build", "list", "--service", "api"])
        .fails()
        .to_string();
    assert!(err.contains("token_revoked") && err.contains("HTTP 401"), "{err}");
    let tokens = server.tug(w, &["token", "list", "--output", "json"]).json();
    let revoked = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci-api")
        .unwrap();
    assert!(revoked["revoked_at"].is_string());
    assert!(
        !server
            .tug(w, &["token", "list", "--output", "json"])
            .stdout
            .contains(&ci),
        "secrets are never listed"
    );

    // Tokens are stored hashed: the secret is nowhere in the database file.
    let db = std::fs::read(server.data_dir().join("tug.db")).unwrap();
    assert!(!db.windows(viewer.len()).any(|w| w == viewer.as_bytes()));

    // The last admin token cannot be revoked.
    let err = server.tug(w, &["token", "revoke", "admin"]).fails().to_string();
    assert!(err.contains("last_admin"), "{err}");
    // Unknown role and duplicate names are refused clearly.
    let err = server
        .tug(w, &["token", "create", "--name", "x", "--role", "root"])
        .fails()
        .to_string();
    assert!(err.contains("possible values: admin, ci"), "{err}");
    let err = server
        .tug(w, &["token", "create", "--name", "dash", "--role", "viewer"])
        .fails()
        .to_string();
    assert!(err.contains("token_exists"), "{err}");
    let res = server.http(Method::DELETE, "/v1/tokens/nobody").send().await.unwrap();
    assert_eq!(res.status(), 404);
}
