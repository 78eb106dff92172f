//! The play page (`/play`, `/play/sdk.js`) and `--cors-origin`, against a real
//! server on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Harness;
use matchplane_control_plane::Config;
use matchplane_control_plane::config::Role;
use reqwest::Method;
use reqwest::header::{HeaderMap, ORIGIN};
use serde_json::Value;

const ALLOWED: &str = "http://127.0.0.1:5173";

#[tokio::test]
async fn the_play_page_is_served_with_the_sdk_it_imports() {
    let h = Harness::start().await;
    let response = h.http.get(h.url("/play")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let headers = response.headers().clone();
    let content_type = headers[reqwest::header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let policy = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self' 'sha256-",
        "connect-src 'self' ws: wss:",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} missing: {policy}");
    }
    let html = response.text().await.unwrap();
    for stable in [
        r#"id="play-app""#,
        r#"data-testid="player-name""#,
        r#"data-testid="mode-solo""#,
        r#"data-testid="mode-bots""#,
        r#"data-testid="queue-button""#,
        r#"data-testid="canvas""#,
        r#"data-testid="upgrade-damage""#,
        r#"data-testid="upgrade-range""#,
        r#"data-testid="end-screen""#,
        r#"data-testid="play-again""#,
    ] {
        assert!(html.contains(stable), "{stable} missing from the page");
    }
    // Nothing from elsewhere; the SDK is imported relative to the page.
    assert!(!html.contains("<script src"), "external script");
    assert!(!html.contains("https://"), "absolute URL in the page");
    assert!(html.contains(r#"from "./play/sdk.js""#));

    let response = h.http.get(h.url("/play/sdk.js")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/javascript"),
        "{content_type}"
    );
    let sdk = response.text().await.unwrap();
    assert!(sdk.contains("export class MatchmakingClient"));
    assert!(sdk.contains("export class LandConnection"));
}

#[tokio::test]
async fn a_matcher_only_replica_serves_no_play_page() {
    let mut config = Config::ephemeral_for_tests();
    config.role = Role::Matcher;
    let h = Harness::start_with(config).await;
    for path in ["/play", "/play/sdk.js"] {
        let response = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "NOT_FOUND", "{path}");
    }
}

async fn preflight(h: &Harness, origin: &str) -> (u16, HeaderMap) {
    let response = h
        .http
        .request(Method::OPTIONS, h.url("/v1/matchmaking/enqueue"))
        .header(ORIGIN, origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.headers().clone())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.to_str().unwrap())
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let mut config = Config::ephemeral_for_tests();
    config.cors_origins = vec![ALLOWED.to_owned(), "https://game.example".to_owned()];
    let h = Harness::start_with(config).await;

    let (status, headers) = preflight(&h, ALLOWED).await;
    assert!((200..300).contains(&status), "preflight answered {status}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    let methods = header(&headers, "access-control-allow-methods").unwrap();
    for method in ["GET", "POST", "DELETE"] {
        assert!(methods.contains(method), "{methods}");
    }
    let allowed_headers = header(&headers, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed_headers.contains("authorization") && allowed_headers.contains("content-type"));
    assert_eq!(header(&headers, "access-control-max-age"), Some("600"));

    // Another origin learns nothing: the browser then refuses the call.
    let (_, headers) = preflight(&h, "http://evil.example").await;
    assert_eq!(header(&headers, "access-control-allow-origin"), None);

    // The actual request carries the header too (and the API still answers normally).
    let response = h
        .http
        .get(h.url("/v1/matchmaking/status/no-such-ticket"))
        .header(ORIGIN, ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        Some(ALLOWED)
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TICKET_NOT_FOUND");
}

#[tokio::test]
async fn without_cors_origins_no_cors_headers_are_sent() {
    let h = Harness::start().await;
    let (status, headers) = preflight(&h, ALLOWED).await;
    assert_eq!(status, 405, "a preflight is just an OPTIONS request");
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    let response = h
        .http
        .get(h.url("/health"))
        .header(ORIGIN, ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        None
    );
}
