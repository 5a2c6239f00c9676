//! The registry's rules that depend on the time: a registry bearer token
//! is good for five minutes of the server's clock, and gc removes upload
//! sessions a day old, not younger ones.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::app::{Dialect, TestApp};

const PIPELINE: &str = "service = \"web\"\n\n[[environments]]\nname = \"dev\"\n";

async fn send(app: &TestApp, method: Method, path: &str, auth: Auth<'_>) -> reqwest::Response {
    let req = reqwest::Client::new().request(method, format!("{}{path}", app.url()));
    let req = match auth {
        Auth::Basic(secret) => req.basic_auth("x", Some(secret)),
        Auth::Bearer(token) => req.bearer_auth(token),
    };
    req.send().await.expect("an answer")
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Basic(&'a str),
    Bearer(&'a str),
}

async fn registry_tokens_expire_after_five_minutes(dialect: Dialect) {
    let app = TestApp::start(dialect).await;
    app.service(PIPELINE).await;
    let admin = Auth::Basic(app.admin_secret());
    let res = send(
        &app,
        Method::GET,
        "/v2/token?service=tugboat&scope=repository:web/app:pull",
        admin,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["expires_in"], 300);
    let token = body["token"].as_str().unwrap().to_string();
    let tags = "/v2/web/app/tags/list";
    assert_eq!(
        send(&app, Method::GET, tags, Auth::Bearer(&token)).await.status(),
        StatusCode::OK
    );
    app.clock.advance(Duration::from_secs(300));
    assert_eq!(
        send(&app, Method::GET, tags, Auth::Bearer(&token)).await.status(),
        StatusCode::OK
    );
    app.clock.advance(Duration::from_secs(1));
    let res = send(&app, Method::GET, tags, Auth::Bearer(&token)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    assert!(
        body["errors"][0]["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
}

async fn gc_removes_upload_sessions_a_day_old(dialect: Dialect) {
    let app = TestApp::start(dialect).await;
    app.service(PIPELINE).await;
    let admin = Auth::Basic(app.admin_secret());
    let res = send(&app, Method::POST, "/v2/web/app/blobs/uploads/", admin).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let session = res.headers()["location"].to_str().unwrap().to_string();
    let gc = tug_api::GcRequest {
        dry_run: false,
        draft_max_age_secs: None,
        grace_secs: Some(0),
    };
    app.clock.advance(Duration::from_secs(23 * 3600));
    app.admin().gc(&gc).await.unwrap();
    assert_eq!(
        send(&app, Method::GET, &session, admin).await.status(),
        StatusCode::NO_CONTENT
    );
    app.clock.advance(Duration::from_secs(3601));
    app.admin().gc(&gc).await.unwrap();
    let res = send(&app, Method::GET, &session, admin).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");
}

crate::on_both_dialects!(
    registry_tokens_expire_after_five_minutes,
    gc_removes_upload_sessions_a_day_old
);
