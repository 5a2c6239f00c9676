//! A state a client names that Tugboat does not know is refused with a 400
//! that says which states there are, never read as some default.

use reqwest::Method;
use serde_json::Value;

use crate::support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_build_state_in_a_listing_is_refused() {
    let server = TestServer::start().await;
    for state in ["sleeping", "Sealed", ""] {
        let res = server
            .http(Method::GET, &format!("/v1/builds?state={state}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "{state:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "invalid_query", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("{state:?}")) && message.contains("draft, sealed or abandoned"),
            "{body}"
        );
    }
    let res = server
        .http(Method::GET, "/v1/builds?state=sealed")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}
