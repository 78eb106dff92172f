//! The server registry shared through Redis: a heartbeat any replica receives
//! keeps the server alive for all of them, a silence makes it lost on all of
//! them and its stranded tickets are released once; and `/v1/admin/cluster`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Harness, Socket, next_event};
use futures_util::StreamExt as _;
use matchplane_control_plane::{Clock as _, Config, CredentialSource, Role, StorageConfig};
use redis_server::RedisServer;
use serde_json::{Value, json};

const QUEUE: &str = "hero-defense:1v1";

async fn replica(redis: &RedisServer, role: Role) -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::ephemeral_for_tests();
    config.storage = StorageConfig::Redis {
        url: redis.url(),
        data_dir: dir.path().to_owned(),
    };
    config.role = role;
    config.admin_token = CredentialSource::Value("admin-token-for-the-registry-tests".into());
    config.registration_token =
        CredentialSource::Value("registration-token-for-the-registry-tests".into());
    (Harness::start_with(config).await, dir)
}

/// Both replicas' manual clocks show the same time from here on.
fn same_time(a: &Harness, b: &Harness) {
    let (ta, tb) = (a.clock.now_ms(), b.clock.now_ms());
    if ta < tb {
        a.clock.advance(Duration::from_millis(tb - ta));
    } else {
        b.clock.advance(Duration::from_millis(ta - tb));
    }
}

fn advance(replicas: &[&Harness], by: Duration) {
    for h in replicas {
        h.clock.advance(by);
    }
}

fn heartbeat() -> Value {
    json!({"serverId": "game-1", "host": "127.0.0.1", "port": 9000, "landType": "hero-defense",
        "instanceId": "i1", "landIds": []})
}

/// The replica's view of game-1.
async fn seen(h: &Harness) -> Option<Value> {
    let (code, list) = h.get("/v1/admin/servers").await;
    assert_eq!(code, 200, "{list}");
    list["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|server| server["serverId"] == "game-1")
        .cloned()
}

/// Waits until the replica sees game-1 in `state`, heard `ago_ms` ago.
async fn eventually_seen(h: &Harness, state: &str, ago_ms: Option<u64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let view = seen(h).await;
        if let Some(view) = &view
            && view["state"] == state
            && ago_ms.is_none_or(|ago| view["lastSeenAgoMs"] == ago)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "game-1 never {state} (ago {ago_ms:?}): {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A socket watching the assigned `ticket_id`, past its greeting (the assignment).
async fn watch(h: &Harness, ticket_id: &str) -> Socket {
    let mut socket = h.realtime(&format!("?ticketId={ticket_id}")).await;
    let first = next_event(&mut socket).await;
    assert_eq!(first["type"], "match.assigned", "{first}");
    socket
}

/// The next event that is not the assignment this socket may still report.
async fn next_after_assignment(socket: &mut Socket) -> Value {
    loop {
        let event = next_event(socket).await;
        if event["type"] != "match.assigned" {
            return event;
        }
    }
}

async fn quiet(socket: &mut Socket) {
    let got = tokio::time::timeout(Duration::from_millis(500), socket.next()).await;
    assert!(got.is_err(), "expected silence, got {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_through_any_replica_keep_a_server_alive_on_all_and_its_loss_is_handled_once() {
    let redis = RedisServer::start();
    let (a, _a_dir) = replica(&redis, Role::All).await;
    let (b, _b_dir) = replica(&redis, Role::All).await;
    same_time(&a, &b);

    // Registered through A only: B learns it from the shared registry.
    a.register(heartbeat()).await;
    eventually_seen(&b, "live", Some(0)).await;

    // Each replica hears every other heartbeat, 5 s apart: on its own it
    // would see the server silent past two intervals (suspect); shared, both
    // see every heartbeat as it happens.
    for via in [&b, &a, &b, &a] {
        advance(&[&a, &b], Duration::from_millis(2_500));
        via.register(heartbeat()).await;
        eventually_seen(&a, "live", Some(0)).await;
        eventually_seen(&b, "live", Some(0)).await;
    }

    // Tickets enqueued on B are placed on the server B only heard of.
    let first = b
        .enqueue(json!({"queueKey": QUEUE, "members": ["p1"]}))
        .await;
    let second = b
        .enqueue(json!({"queueKey": QUEUE, "members": ["p2"]}))
        .await;
    let assigned = b.wait_for(&first, "assigned").await;
    assert_eq!(assigned["assignment"]["serverId"], "game-1", "{assigned}");
    b.wait_for(&second, "assigned").await;
    let mut sockets = Vec::new();
    for ticket in [&first, &second] {
        sockets.push(watch(&a, ticket).await);
        sockets.push(watch(&b, ticket).await);
    }

    // The server goes silent past its TTL (6 s) on both replicas.
    advance(&[&a, &b], Duration::from_secs(7));
    eventually_seen(&a, "lost", None).await;
    eventually_seen(&b, "lost", None).await;

    // Each socket hears ticket.requeued once, whichever replica released it.
    for socket in &mut sockets {
        let event = next_after_assignment(socket).await;
        assert_eq!(event["type"], "ticket.requeued", "{event}");
        assert_eq!(event["data"]["reason"], "server_lost", "{event}");
    }
    for socket in &mut sockets {
        quiet(socket).await;
    }
    for ticket in [&first, &second] {
        assert_eq!(a.status(ticket).await["status"], "queued");
    }
    let requeued =
        a.cp.state()
            .metrics
            .tickets_requeued
            .load(Ordering::Relaxed)
            + b.cp
                .state()
                .metrics
                .tickets_requeued
                .load(Ordering::Relaxed);
    assert_eq!(requeued, 2, "stranded tickets released exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistration_through_one_replica_reaches_the_others() {
    let redis = RedisServer::start();
    let (a, _a_dir) = replica(&redis, Role::All).await;
    let (b, _b_dir) = replica(&redis, Role::Api).await;
    same_time(&a, &b);
    b.register(heartbeat()).await;
    eventually_seen(&a, "live", Some(0)).await;
    let (code, reply) = b.delete("/v1/provisioning/servers/game-1").await;
    assert_eq!(code, 200, "{reply}");
    // A forgets a server missing from the store once it has not heard it for a while.
    advance(&[&a, &b], Duration::from_secs(6));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen(&a).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A still lists game-1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_lists_every_replica_with_its_role() {
    let redis = RedisServer::start();
    let (a, _a_dir) = replica(&redis, Role::All).await;
    let (b, _b_dir) = replica(&redis, Role::Api).await;
    same_time(&a, &b);

    let response = a.http.get(a.url("/v1/admin/cluster")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{body}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let view = loop {
        let (code, view) = b.get("/v1/admin/cluster").await;
        assert_eq!(code, 200, "{view}");
        if view["replicas"].as_array().unwrap().len() == 2 {
            break view;
        }
        assert!(tokio::time::Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let a_id = a.cp.state().cluster.replica_id().to_owned();
    let b_id = b.cp.state().cluster.replica_id().to_owned();
    assert_ne!(a_id, b_id);
    assert_eq!(view["replicaId"], b_id.as_str(), "{view}");
    let role_of = |id: &str| {
        view["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|replica| replica["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing from {view}"))
    };
    let on_a = role_of(&a_id);
    assert_eq!(on_a["role"], "all", "{view}");
    assert_eq!(on_a["address"], a.cp.local_addr().to_string(), "{view}");
    assert!(on_a["lastSeenAgoMs"].as_u64().unwrap() < 30_000, "{view}");
    assert_eq!(role_of(&b_id)["role"], "api", "{view}");
    assert!(view["leases"].is_array(), "{view}");
    assert_eq!(view["redis"]["connected"], true, "{view}");
    assert_eq!(view["redis"]["url"], redis.url(), "{view}");

    // A replica that shuts down leaves the view at once.
    b.cp.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, view) = a.get("/v1/admin/cluster").await;
        let ids: Vec<&str> = view["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|replica| replica["id"].as_str())
            .collect();
        if ids == [a_id.as_str()] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn on_one_box_the_cluster_is_this_replica_alone() {
    let h = Harness::start().await;
    let (code, view) = h.get("/v1/admin/cluster").await;
    assert_eq!(code, 200, "{view}");
    let id = h.cp.state().cluster.replica_id().to_owned();
    assert_eq!(
        view,
        json!({
            "replicaId": id,
            "replicas": [{
                "id": id,
                "role": "all",
                "address": h.cp.local_addr().to_string(),
                "lastSeenMs": h.clock.now_ms(),
                "lastSeenAgoMs": 0,
            }],
            "leases": [],
            "redis": null,
        })
    );
    let response = h.http.get(h.url("/v1/admin/cluster")).send().await.unwrap();
    assert_eq!(response.status(), 401);
}
