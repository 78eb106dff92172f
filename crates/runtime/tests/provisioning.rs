//! The provisioning agent against a stand-in control plane that requires the
//! registration token, like the real one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, post};
use common::{TestServer, leave};
use matchplane_contracts::provisioning::Capacity;
use matchplane_runtime::counter::Counter;
use matchplane_runtime::{
    LandRegistry, LandSettings, ProvisioningAgent, ProvisioningError, ProvisioningSettings, Secret,
};
use parking_lot::Mutex;
use serde_json::{Value, json};

const TOKEN: &str = "registration-token-0123456789";

/// Every call the stand-in saw: (method, whether it carried the right token).
type Calls = Arc<Mutex<Vec<(&'static str, bool)>>>;

fn answer(method: &'static str, headers: &HeaderMap, calls: &Calls) -> (StatusCode, Json<Value>) {
    let authorized = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    calls.lock().push((method, authorized));
    if authorized {
        (StatusCode::OK, Json(json!({"success": true})))
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"success": false, "error": {"code": "UNAUTHENTICATED",
                "message": "a registration token is required", "retryable": false}}),
            ),
        )
    }
}

async fn stand_in(calls: Calls) -> String {
    let on_register = Arc::clone(&calls);
    let on_delete = calls;
    let app = axum::Router::new()
        .route(
            "/v1/provisioning/servers/register",
            post(move |headers: HeaderMap| {
                let calls = Arc::clone(&on_register);
                async move { answer("register", &headers, &calls) }
            }),
        )
        .route(
            "/v1/provisioning/servers/{server_id}",
            delete(move |headers: HeaderMap| {
                let calls = Arc::clone(&on_delete);
                async move { answer("delete", &headers, &calls) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn settings(url: String, token: Option<&str>) -> ProvisioningSettings {
    ProvisioningSettings {
        control_plane_url: url,
        server_id: "test-server".to_owned(),
        host: "127.0.0.1".to_owned(),
        port: 1,
        connect_host: None,
        connect_port: None,
        connect_scheme: None,
        connect_path_prefix: None,
        region: None,
        capacity: Capacity {
            max_lands: Some(10),
            max_players: Some(10),
        },
        heartbeat_interval: Duration::from_millis(200),
        instance_id: "instance-1".to_owned(),
        registration_token: token.map(|token| Secret::new(token, "registration token").unwrap()),
    }
}

fn registry() -> LandRegistry {
    let settings = LandSettings {
        tick_rate_hz: 0.0,
        sync_rate_hz: None,
        max_players: 4,
        dispose_after_empty: Duration::from_secs(3600),
        reconnect_grace: Duration::from_secs(10),
    };
    LandRegistry::new().register_with_settings::<Counter>("counter", (), settings)
}

#[tokio::test]
async fn register_heartbeat_and_deregister_carry_the_token_and_draining_ends_with_the_last_land() {
    let calls = Calls::default();
    let url = stand_in(Arc::clone(&calls)).await;
    let server = TestServer::start(registry()).await;
    let agent = Arc::new(ProvisioningAgent::new(
        settings(url, Some(TOKEN)),
        server.server.manager().clone(),
    ));
    assert!(
        !format!("{:?}", agent.settings()).contains(TOKEN),
        "Debug must not show the token"
    );
    agent.heartbeat(false).await.unwrap();

    let ann = server.connect("counter", "busy", "ann").await;
    let bob = server.connect("counter", "idle", "bob").await;
    leave(bob).await;
    // Lands would live an hour after emptying and the drain timeout is a minute: the
    // drain must end as soon as the last player leaves, not when either runs out.
    let draining = tokio::spawn({
        let agent = Arc::clone(&agent);
        async move { agent.drain(Duration::from_secs(60)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!draining.is_finished(), "ann is still playing");
    leave(ann).await;
    let finished = tokio::time::timeout(Duration::from_secs(10), draining)
        .await
        .expect("drain ends once the last land is gone")
        .unwrap();
    assert!(finished);

    let calls = calls.lock().clone();
    assert!(calls.iter().all(|(_, authorized)| *authorized), "{calls:?}");
    assert_eq!(calls.first().map(|call| call.0), Some("register"));
    assert_eq!(calls.last().map(|call| call.0), Some("delete"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_a_credential_error_with_a_hint_and_no_secret() {
    let calls = Calls::default();
    let url = stand_in(Arc::clone(&calls)).await;
    let server = TestServer::start(registry()).await;
    let wrong = "not-the-registration-token";
    for token in [None, Some(wrong)] {
        let agent = ProvisioningAgent::new(
            settings(url.clone(), token),
            server.server.manager().clone(),
        );
        for result in [agent.heartbeat(false).await, agent.deregister().await] {
            let err = result.unwrap_err();
            let ProvisioningError::Credential { status, code, .. } = &err else {
                panic!("expected a credential error, got {err:?}");
            };
            assert_eq!((*status, code.as_str()), (401, "UNAUTHENTICATED"));
            let text = err.to_string();
            assert!(text.contains("--registration-token"), "{text}");
            assert!(!text.contains(wrong) && !format!("{err:?}").contains(wrong));
        }
    }
    assert_eq!(calls.lock().len(), 4);
    server.shutdown().await.unwrap();
}

/// Answers every register with `heartbeatIntervalMs: asked` (none when 0) and records the bodies.
async fn interval_stand_in(asked: Arc<AtomicU64>, bodies: Arc<Mutex<Vec<Value>>>) -> String {
    let app = axum::Router::new().route(
        "/v1/provisioning/servers/register",
        post(move |Json(body): Json<Value>| {
            let asked = Arc::clone(&asked);
            let bodies = Arc::clone(&bodies);
            async move {
                bodies.lock().push(body);
                match asked.load(Ordering::SeqCst) {
                    0 => Json(json!({"success": true})),
                    ms => Json(json!({"success": true, "heartbeatIntervalMs": ms})),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_agent_sends_its_instance_id_and_adopts_the_control_planes_heartbeat_interval() {
    let asked = Arc::new(AtomicU64::new(150));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let url = interval_stand_in(Arc::clone(&asked), Arc::clone(&bodies)).await;
    let server = TestServer::start(registry()).await;
    let mut configured = settings(url, None);
    // Far longer than the test: a second heartbeat can only come from the adopted interval.
    configured.heartbeat_interval = Duration::from_secs(600);
    let agent = Arc::new(ProvisioningAgent::new(
        configured,
        server.server.manager().clone(),
    ));
    assert_eq!(agent.heartbeat_interval(), Duration::from_secs(600));

    let heartbeats = agent.spawn();
    tokio::time::timeout(Duration::from_secs(20), async {
        while bodies.lock().len() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("heartbeats follow the control plane's 150 ms, not the flag's 10 min");
    heartbeats.abort();
    assert_eq!(agent.heartbeat_interval(), Duration::from_millis(150));
    for body in bodies.lock().iter() {
        assert_eq!(body["instanceId"], "instance-1", "{body}");
        assert_eq!(body["serverId"], "test-server", "{body}");
    }

    // Bounded: neither a busy loop nor a silence past any TTL.
    asked.store(1, Ordering::SeqCst);
    agent.heartbeat(false).await.unwrap();
    assert_eq!(agent.heartbeat_interval(), Duration::from_millis(100));
    asked.store(3_600_000, Ordering::SeqCst);
    agent.heartbeat(false).await.unwrap();
    assert_eq!(agent.heartbeat_interval(), Duration::from_secs(60));
    // An answer that names no interval (an older control plane) keeps the one in force.
    asked.store(0, Ordering::SeqCst);
    agent.heartbeat(false).await.unwrap();
    assert_eq!(agent.heartbeat_interval(), Duration::from_secs(60));
    server.shutdown().await.unwrap();
}
