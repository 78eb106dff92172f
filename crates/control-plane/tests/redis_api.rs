//! The REST journey on a control plane whose store is a real Redis
//! (`StorageConfig::Redis`): what one box does on redb, it does on Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use common::Harness;
use matchplane_control_plane::{Config, StorageConfig};
use redis_server::RedisServer;
use serde_json::json;

async fn harness_on(redis: &RedisServer, data_dir: &std::path::Path) -> Harness {
    let mut config = Config::ephemeral_for_tests();
    config.storage = StorageConfig::Redis {
        url: redis.url(),
        data_dir: data_dir.to_owned(),
    };
    Harness::start_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_match_status_and_cancel_on_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let h = harness_on(&redis, dir.path()).await;
    let (code, health) = h.get("/health").await;
    assert_eq!(code, 200, "{health}");

    h.register_server("game-1", "hero-defense").await;
    let alice = h
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["alice"], "groupSize": 1}))
        .await;
    // The same player cannot wait twice, across the shared store.
    let (code, reply) = h
        .post(
            "/v1/matchmaking/enqueue",
            json!({"queueKey": "hero-defense:1v1", "members": ["alice"], "groupSize": 1, "groupId": "other"}),
        )
        .await;
    assert_eq!(code, 409, "{reply}");
    assert_eq!(reply["error"]["code"], "PLAYER_ALREADY_QUEUED");

    let bob = h
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["bob"], "groupSize": 1}))
        .await;
    let a = h.wait_for(&alice, "assigned").await["assignment"].clone();
    let b = h.wait_for(&bob, "assigned").await["assignment"].clone();
    assert_eq!(a["landId"], b["landId"]);
    assert_eq!(a["serverId"], "game-1");
    let claims = h.verify(a["matchToken"].as_str().unwrap()).await;
    assert_eq!(claims.player_id, "alice");

    let carol = h
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["carol"], "groupSize": 1}))
        .await;
    let (code, reply) = h
        .post("/v1/matchmaking/cancel", json!({"ticketId": carol}))
        .await;
    assert_eq!((code, &reply["cancelled"]), (201, &json!(true)), "{reply}");
    assert_eq!(h.status(&carol).await["status"], "cancelled");

    let (_, summary) = h.get("/v1/admin/queue/summary").await;
    let queue = &summary["queues"][0];
    assert_eq!(queue["assigned"], 2, "{summary}");
    assert_eq!(queue["cancelled"], 1, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_resumes_the_queue_from_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let first = harness_on(&redis, dir.path()).await;
    let alice = first
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["alice"], "groupSize": 1}))
        .await;
    first.cp.shutdown().await;

    // Another process on the same Redis: the queued ticket is there and matches.
    let second = harness_on(&redis, dir.path()).await;
    second.register_server("game-1", "hero-defense").await;
    assert_eq!(second.status(&alice).await["status"], "queued");
    let bob = second
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["bob"], "groupSize": 1}))
        .await;
    second.wait_for(&alice, "assigned").await;
    second.wait_for(&bob, "assigned").await;
}
