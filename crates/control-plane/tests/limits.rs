//! Per-client-address rate limits (through a trusted proxy) on the matchmaking
//! endpoints and `/realtime`, and `/metrics` moved to its own listener.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::num::NonZeroU32;

use common::Harness;
use matchplane_control_plane::Config;
use matchplane_edge::ratelimit::RateLimit;
use serde_json::{Value, json};

/// 2 per second, burst 4; the test process (127.0.0.1) is a trusted proxy so
/// each request can name its client in `X-Forwarded-For`.
fn limited_config() -> Config {
    let mut config = Config::ephemeral_for_tests();
    config.rate_limit = RateLimit::PerSecond(NonZeroU32::new(2).unwrap());
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    config
}

async fn status_as(harness: &Harness, client: &str) -> reqwest::Response {
    harness
        .http
        .get(harness.url("/v1/matchmaking/status/no-such-ticket"))
        .header("x-forwarded-for", client)
        .send()
        .await
        .unwrap()
}

async fn assert_rate_limited(response: reqwest::Response) {
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    assert!(body["error"]["message"].is_string());
}

/// Sends until the client's bucket runs dry; returns the refusal.
async fn exhaust(harness: &Harness, client: &str) -> reqwest::Response {
    // The burst (4) always passes; a refill of 2 per second cannot keep up with 40 requests.
    for sent in 0..40 {
        let response = status_as(harness, client).await;
        if response.status().as_u16() == 429 {
            assert!(sent >= 4, "refused within the burst, after {sent}");
            return response;
        }
        assert_eq!(response.status().as_u16(), 404);
    }
    panic!("40 requests from {client} were never rate limited");
}

#[tokio::test]
async fn a_burst_from_one_client_gets_429_and_other_clients_are_unaffected() {
    let harness = Harness::start_with(limited_config()).await;
    let refused = exhaust(&harness, "203.0.113.7").await;
    assert_rate_limited(refused).await;

    // The same bucket covers enqueue and cancel.
    let enqueue = harness
        .http
        .post(harness.url("/v1/matchmaking/enqueue"))
        .header("x-forwarded-for", "203.0.113.7")
        .json(&json!({"queueKey": "q", "members": ["p1"]}))
        .send()
        .await
        .unwrap();
    assert_rate_limited(enqueue).await;
    let cancel = harness
        .http
        .post(harness.url("/v1/matchmaking/cancel"))
        .header("x-forwarded-for", "203.0.113.7")
        .json(&json!({"ticketId": "t"}))
        .send()
        .await
        .unwrap();
    assert_rate_limited(cancel).await;

    // Another client behind the same proxy has its own bucket.
    assert_eq!(
        status_as(&harness, "203.0.113.8").await.status().as_u16(),
        404
    );
    // Health is not limited.
    let health = harness
        .http
        .get(harness.url("/health"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    harness.cp.shutdown().await;
}

#[tokio::test]
async fn new_realtime_sockets_are_limited_before_the_upgrade() {
    let harness = Harness::start_with(limited_config()).await;
    let url = format!("ws://{}/realtime", harness.cp.local_addr());
    let request = |client: &str| {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )
            .unwrap();
        request
            .headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        request
    };
    let _ = exhaust(&harness, "203.0.113.9").await;
    match tokio_tungstenite::connect_async(request("203.0.113.9")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            assert!(response.headers().contains_key("retry-after"));
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "RATE_LIMITED");
        }
        other => panic!("expected a 429 before the upgrade, got {other:?}"),
    }
    let (socket, _) = tokio_tungstenite::connect_async(request("203.0.113.10"))
        .await
        .expect("another client still opens a socket");
    drop(socket);
    harness.cp.shutdown().await;
}

#[tokio::test]
async fn rate_limit_off_never_refuses() {
    let harness = Harness::start().await;
    for _ in 0..60 {
        assert_eq!(
            status_as(&harness, "203.0.113.11").await.status().as_u16(),
            404
        );
    }
    harness.cp.shutdown().await;
}

#[tokio::test]
async fn metrics_bind_moves_metrics_off_the_public_listener() {
    let mut config = Config::ephemeral_for_tests();
    config.metrics_bind = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let harness = Harness::start_with(config).await;
    let metrics_addr = harness.cp.metrics_addr().expect("a metrics listener");
    assert_ne!(metrics_addr, harness.cp.local_addr());

    let (status, body) = harness.get("/metrics").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "NOT_FOUND");

    let metrics = harness
        .http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    assert!(metrics.text().await.unwrap().contains("# TYPE"));
    let other = harness
        .http
        .get(format!("http://{metrics_addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 404);

    let (status, _) = harness.get("/health").await;
    assert_eq!(status, 200);
    harness.cp.shutdown().await;
}

#[tokio::test]
async fn metrics_stay_on_the_public_listener_by_default() {
    let harness = Harness::start().await;
    assert!(harness.cp.metrics_addr().is_none());
    let response = harness
        .http
        .get(harness.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    harness.cp.shutdown().await;
}
