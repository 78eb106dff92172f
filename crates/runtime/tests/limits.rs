//! New game sockets are rate limited per client address (through a trusted
//! load balancer) with 429 + `Retry-After` before the upgrade.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, test_limits};
use matchplane_contracts::forwarded::TrustedProxies;
use matchplane_edge::ratelimit::RateLimit;
use matchplane_runtime::counter::Counter;
use matchplane_runtime::{DevAuthenticator, GameServerConfig, LandRegistry};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

async fn start(rate_limit: RateLimit) -> TestServer {
    let config = GameServerConfig {
        server_id: "limited".into(),
        limits: test_limits(),
        shutdown_timeout: Duration::from_secs(5),
        trusted_proxies: TrustedProxies::new(vec![
            TrustedProxies::parse_entry("127.0.0.1").unwrap(),
        ]),
        rate_limit,
        ..GameServerConfig::default()
    };
    TestServer::start_with_config(
        LandRegistry::new().register::<Counter>("counter", ()),
        Arc::new(DevAuthenticator),
        config,
    )
    .await
}

async fn open_as(
    server: &TestServer,
    client: &str,
    player: usize,
) -> Result<(), tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>> {
    let url = server.url("counter", &format!("landId=l1&playerId=p{player}"));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => {
            drop(socket);
            Ok(())
        }
        Err(WsError::Http(response)) => Err(*response),
        Err(other) => panic!("unexpected connect failure: {other}"),
    }
}

#[tokio::test]
async fn a_burst_of_new_sockets_from_one_client_gets_429_before_the_upgrade() {
    // 1 per second, burst 2.
    let server = start(RateLimit::PerSecond(NonZeroU32::MIN)).await;
    let mut refusal = None;
    for attempt in 0..20 {
        match open_as(&server, "198.51.100.1", attempt).await {
            Ok(()) => {}
            Err(response) => {
                assert!(attempt >= 2, "refused within the burst, at {attempt}");
                refusal = Some(response);
                break;
            }
        }
    }
    let refusal = refusal.expect("20 new sockets from one client were never limited");
    assert_eq!(refusal.status().as_u16(), 429);
    let retry_after: u64 = refusal.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = serde_json::from_slice(refusal.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    assert!(body["error"]["message"].is_string());

    // Another client behind the same load balancer is unaffected.
    assert!(open_as(&server, "198.51.100.2", 100).await.is_ok());
    let health = server.get_json("/health").await;
    assert_eq!(health["status"], "ok");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn rate_limit_off_admits_every_new_socket() {
    let server = start(RateLimit::Off).await;
    for attempt in 0..30 {
        assert!(open_as(&server, "198.51.100.3", attempt).await.is_ok());
    }
    server.shutdown().await.unwrap();
}
