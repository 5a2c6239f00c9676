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

/// Which roles may use which route: every authenticated route, asked by a
/// token of every role. A role the route is not for gets 403 `forbidden`;
/// the others get past the role check (whatever the request then comes
/// to). Roles are written by letter: Admin, Ci, Deployer, aPprover,
/// aGent, Viewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_the_roles_that_may_not_use_it() {
    use serde_json::json;
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "web"]).ok();
    std::fs::write(
        w.join("p.toml"),
        "service = \"web\"\n\n[[environments]]\nname = \"dev\"\npublic = true\n\n[[environments]]\nname = \"prod\"\nupstream = \"dev\"\n",
    )
    .unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "p.toml"]).ok();
    let spec = server.tug(w, &["pipeline", "show", "web", "--output", "json"]).json()["spec"]
        .as_str()
        .unwrap()
        .to_string();
    let body = b"web 1.0.0".to_vec();
    let blob = crate::support::digest_of(&body);
    let build = crate::agents::sealed(&server, "web", "1.0.0", &[("app", None, body)]).await;
    server
        .tug(w, &["release", "web", "--env", "dev", "--build", &build])
        .ok();
    let draft = server
        .tug(
            w,
            &[
                "build",
                "create",
                "--service",
                "web",
                "--version",
                "2.0.0",
                "--output",
                "json",
            ],
        )
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let roles = [
        ('A', server.admin_token.clone()),
        ('C', token(&server, w, "ci")),
        ('D', token(&server, w, "deployer")),
        ('P', token(&server, w, "approver")),
        ('G', token(&server, w, "agent")),
        ('V', token(&server, w, "viewer")),
        ('M', token(&server, w, "metrics")),
    ];
    let env = json!({"environment": "dev"});
    let report = json!({
        "agent_id": "a1", "hostname": "h", "platform": "linux/amd64", "agent_version": "1",
        "service": "web", "environment": "dev", "build": null, "state": "idle",
    });
    let routes: Vec<(&str, Method, String, Option<serde_json::Value>)> = vec![
        ("ACDPV", Method::GET, "/v1/services".into(), None),
        ("A", Method::POST, "/v1/services".into(), Some(json!({"name": "other"}))),
        ("A", Method::GET, "/v1/tokens".into(), None),
        (
            "A",
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({"name": "m", "role": "viewer"})),
        ),
        ("A", Method::DELETE, "/v1/tokens/nobody".into(), None),
        (
            "AC",
            Method::POST,
            "/v1/blobs/missing".into(),
            Some(json!({"digests": [blob]})),
        ),
        ("ACDPGV", Method::GET, format!("/v1/blobs/{blob}"), None),
        ("ACDPGV", Method::HEAD, format!("/v1/blobs/{blob}"), None),
        ("AC", Method::PUT, format!("/v1/blobs/{blob}"), None),
        ("ACDPV", Method::GET, "/v1/builds?service=web".into(), None),
        (
            "AC",
            Method::POST,
            "/v1/builds".into(),
            Some(json!({"service": "web", "version": "3.0.0"})),
        ),
        ("ACDPV", Method::GET, format!("/v1/builds/{build}"), None),
        ("ACDPV", Method::GET, format!("/v1/builds/{build}/manifest"), None),
        (
            "AC",
            Method::POST,
            format!("/v1/builds/{draft}/artifacts"),
            Some(json!({"artifacts": []})),
        ),
        ("AC", Method::POST, format!("/v1/builds/{draft}/seal"), None),
        ("AD", Method::POST, format!("/v1/builds/{draft}/yank"), Some(json!({}))),
        ("A", Method::POST, format!("/v1/builds/{build}/unembargo"), None),
        ("AD", Method::POST, format!("/v1/builds/{draft}/critical"), None),
        ("ACDPV", Method::GET, "/v1/services/web/pipeline".into(), None),
        (
            "A",
            Method::PUT,
            "/v1/services/web/pipeline".into(),
            Some(json!({"spec": spec})),
        ),
        ("ACDPV", Method::GET, "/v1/services/web/pipeline/history".into(), None),
        (
            "AD",
            Method::POST,
            "/v1/services/web/release".into(),
            Some(json!({"environment": "dev", "build": build})),
        ),
        (
            "AD",
            Method::POST,
            "/v1/services/web/promote".into(),
            Some(json!({"to": "prod"})),
        ),
        (
            "AD",
            Method::POST,
            "/v1/services/web/rollback".into(),
            Some(env.clone()),
        ),
        (
            "AP",
            Method::POST,
            "/v1/services/web/approve".into(),
            Some(json!({"environment": "dev", "build": build})),
        ),
        (
            "AP",
            Method::POST,
            "/v1/services/web/reject".into(),
            Some(json!({"environment": "dev", "build": build})),
        ),
        ("ACDPV", Method::GET, "/v1/services/web/status".into(), None),
        (
            "ACDPV",
            Method::GET,
            "/v1/services/web/next-version?bump=patch".into(),
            None,
        ),
        (
            "ACDPV",
            Method::GET,
            "/v1/services/web/diff?from=dev&to=dev".into(),
            None,
        ),
        (
            "ACDPV",
            Method::GET,
            "/v1/services/web/environments/dev/history".into(),
            None,
        ),
        (
            "AD",
            Method::POST,
            "/v1/services/web/environments/dev/resume".into(),
            None,
        ),
        ("ACDPV", Method::GET, "/v1/events?since=0".into(), None),
        (
            "ACDPGV",
            Method::GET,
            "/v1/channels/web/dev?platform=linux/amd64".into(),
            None,
        ),
        ("AG", Method::POST, "/v1/agents/report".into(), Some(report)),
        ("ACDPV", Method::GET, "/v1/agents".into(), None),
        ("ACDPV", Method::GET, "/v1/services/web/rollout?env=dev".into(), None),
        (
            "AD",
            Method::POST,
            "/v1/services/web/rollout/halt".into(),
            Some(json!({"environment": "dev", "reason": "r"})),
        ),
        (
            "AD",
            Method::POST,
            "/v1/services/web/rollout/resume".into(),
            Some(env.clone()),
        ),
        ("A", Method::POST, "/v1/admin/fsck".into(), None),
        ("A", Method::POST, "/v1/admin/gc".into(), Some(json!({"dry_run": true}))),
        ("A", Method::GET, "/v1/audit/verify".into(), None),
        ("A", Method::GET, "/v1/audit/export?since=0".into(), None),
        ("AM", Method::GET, "/metrics".into(), None),
        ("A", Method::GET, "/v1/webhooks".into(), None),
        (
            "A",
            Method::POST,
            "/v1/webhooks".into(),
            Some(json!({"url": "http://127.0.0.1:9/hook", "events": "deployment"})),
        ),
        ("A", Method::DELETE, "/v1/webhooks/nobody".into(), None),
        ("A", Method::GET, "/v1/webhooks/nobody/deliveries".into(), None),
        ("ACDPGVM", Method::GET, "/apt/web/key.asc".into(), None),
        ("ACDPGVM", Method::GET, "/apt/web/key.gpg".into(), None),
        ("ACDPGV", Method::GET, "/apt/web/dists/dev/InRelease".into(), None),
        (
            "ACDPGV",
            Method::GET,
            "/apt/web/dists/dev/main/binary-amd64/Packages".into(),
            None,
        ),
        (
            "ACDPGV",
            Method::GET,
            format!("/apt/web/pool/dev/{build}/app.deb"),
            None,
        ),
        (
            "A",
            Method::POST,
            "/v1/webhooks/deliveries/msg_nobody_1/redeliver".into(),
            None,
        ),
    ];
    for (allowed, method, path, body) in &routes {
        for (role, secret) in &roles {
            let (status, text) = crate::access::call(&server, secret, method.clone(), path, body.clone()).await;
            if allowed.contains(*role) {
                assert!(
                    status != 401 && status != 403,
                    "{role} {method} {path}: {status} {text}"
                );
            } else {
                assert_eq!(status, 403, "{role} {method} {path}: {text}");
                if *method != Method::HEAD {
                    assert!(text.contains("forbidden"), "{role} {method} {path}: {text}");
                }
            }
        }
    }
    // The registry answers role refusals in the OCI specification's form
    // (403 DENIED); a Tugboat token is accepted there as a bearer token.
    let registry: Vec<(&str, Method, String)> = vec![
        ("ACDPV", Method::GET, "/v2/".into()),
        ("ACDPV", Method::GET, "/v2/web/app/tags/list".into()),
        ("ACDPV", Method::GET, "/v2/web/app/manifests/dev".into()),
        ("ACDPV", Method::HEAD, format!("/v2/web/app/blobs/{blob}")),
        ("ACDPV", Method::GET, format!("/v2/web/app/referrers/{blob}")),
        ("AC", Method::POST, "/v2/web/app/blobs/uploads/".into()),
        ("AC", Method::PUT, "/v2/web/app/manifests/x".into()),
        ("AC", Method::DELETE, "/v2/web/app/manifests/x".into()),
        (
            "AC",
            Method::GET,
            "/v2/web/app/blobs/uploads/01a22d6a-2761-7750-94cf-762c877ab9da".into(),
        ),
    ];
    for (allowed, method, path) in &registry {
        for (role, secret) in &roles {
            let (status, text) = crate::access::call(&server, secret, method.clone(), path, None).await;
            if allowed.contains(*role) || path == "/v2/" {
                assert!(
                    status != 401 && status != 403,
                    "{role} {method} {path}: {status} {text}"
                );
            } else {
                assert_eq!(status, 403, "{role} {method} {path}: {text}");
                if *method != Method::HEAD {
                    assert!(text.contains("DENIED"), "{role} {method} {path}: {text}");
                }
            }
        }
        // Without credentials: a challenge, except for the token endpoint.
        let res = reqwest::Client::new()
            .request(method.clone(), format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "anonymous {method} {path}");
        assert!(
            res.headers().contains_key("www-authenticate"),
            "anonymous {method} {path}"
        );
    }
    let anonymous = reqwest::get(format!(
        "{}/v2/token?service=tugboat&scope=repository:web/app:pull",
        server.url
    ))
    .await
    .unwrap();
    assert_eq!(
        anonymous.status(),
        200,
        "an anonymous registry token (public pulls only)"
    );
    // The public endpoints need no token.
    for what in ["version", "critical"] {
        let url = format!("{}/v1/webapi/automaticupgrades/channel/web/dev/{what}", server.url);
        assert_eq!(reqwest::get(url).await.unwrap().status(), 200);
    }
    // The release catalog answers without a token, and the same (status
    // and body) with any token: a token shows nothing more there.
    for (method, path) in [
        (Method::GET, "/v1/releases/web"),
        (Method::GET, "/releases/web"),
        (Method::GET, "/dl/web/1.0.0/app"),
        (Method::HEAD, "/dl/web/1.0.0/app"),
        (Method::GET, "/dl/web/dev/latest/app"),
        (Method::HEAD, "/dl/web/dev/latest/app"),
    ] {
        let res = reqwest::Client::new()
            .request(method.clone(), format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "anonymous {method} {path}");
        let anonymous = res.bytes().await.unwrap();
        for (role, secret) in &roles {
            let (status, text) = crate::access::call(&server, secret, method.clone(), path, None).await;
            assert_eq!(status, 200, "{role} {method} {path}: {text}");
            assert_eq!(text.as_bytes(), &anonymous[..], "{role} {method} {path}");
        }
    }
    // Without a token, APT serves the key and public environments only
    // (dev is public, prod is not).
    for (path, status) in [
        ("/apt/web/key.asc", 200),
        ("/apt/web/dists/dev/InRelease", 200),
        ("/apt/web/dists/prod/Release", 404),
    ] {
        let url = format!("{}{path}", server.url);
        assert_eq!(reqwest::get(url).await.unwrap().status(), status, "{path}");
    }
}

fn token(server: &TestServer, w: &std::path::Path, role: &str) -> String {
    let t = server
        .tug(
            w,
            &[
                "token",
                "create",
                "--name",
                &format!("matrix-{role}"),
                "--role",
                role,
                "--output",
                "json",
            ],
        )
        .json();
    t["secret"].as_str().unwrap().to_string()
}
