//! Signing keys shared through a real Redis: every replica serves the same
//! JWKS and signs with the same current key, a rotation on one replica
//! reaches the others, concurrent rotations lose no key, and a restart
//! keeps the keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::Harness;
use matchplane_control_plane::{Config, CredentialSource, StorageConfig};
use redis_server::RedisServer;
use serde_json::json;

/// Both replicas accept the same admin token, as replicas behind one
/// balancer must; otherwise each would generate its own.
const ADMIN_TOKEN: &str = "admin-token-shared-by-every-replica";

fn redis_config(redis: &RedisServer, data_dir: &Path) -> Config {
    let mut config = Config::ephemeral_for_tests();
    config.storage = StorageConfig::Redis {
        url: redis.url(),
        data_dir: data_dir.to_owned(),
    };
    config.admin_token = CredentialSource::Value(ADMIN_TOKEN.to_owned());
    config
}

async fn replica(redis: &RedisServer, data_dir: &Path) -> Harness {
    Harness::start_with(redis_config(redis, data_dir)).await
}

/// The JWKS exactly as served, to compare replicas byte for byte.
async fn jwks_body(h: &Harness) -> String {
    let response = h
        .http
        .get(h.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

async fn kids(h: &Harness) -> BTreeSet<String> {
    h.jwks().await.keys.into_iter().map(|key| key.kid).collect()
}

async fn rotate(h: &Harness) -> String {
    let (status, reply) = h.post("/v1/admin/keys/rotate", json!({})).await;
    assert_eq!(status, 200, "{reply}");
    reply["kid"].as_str().expect("kid").to_owned()
}

async fn current_kid(h: &Harness) -> String {
    let (status, health) = h.get("/health").await;
    assert_eq!(status, 200, "{health}");
    health["currentKid"]
        .as_str()
        .expect("currentKid")
        .to_owned()
}

/// Waits (the poll is every second) until `b` serves exactly `a`'s JWKS and
/// current kid.
async fn wait_until_same_keys(a: &Harness, b: &Harness) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (body_a, body_b) = (jwks_body(a).await, jwks_body(b).await);
        if body_a == body_b && current_kid(a).await == current_kid(b).await {
            return body_a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas still disagree on the keys:\n{body_a}\n{body_b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_one_jwks_and_follow_a_rotation_made_on_another() {
    let redis = RedisServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&redis, dir_a.path()).await;
    let b = replica(&redis, dir_b.path()).await;

    assert_eq!(jwks_body(&a).await, jwks_body(&b).await);
    let first_kid = current_kid(&a).await;
    assert_eq!(current_kid(&b).await, first_kid);
    assert!(
        !dir_b.path().join("keys").exists(),
        "with Redis, no private key is written to the data dir"
    );

    let new_kid = rotate(&a).await;
    assert_ne!(new_kid, first_kid);
    assert_eq!(
        current_kid(&a).await,
        new_kid,
        "the rotating replica at once"
    );
    wait_until_same_keys(&a, &b).await;
    assert_eq!(current_kid(&b).await, new_kid);
    assert_eq!(
        kids(&b).await,
        BTreeSet::from([first_kid.clone(), new_kid.clone()]),
        "the old key stays published for the tokens it signed"
    );

    // A token minted by B now carries the new kid and verifies against A's JWKS.
    b.register_server("game-1", "hero-defense").await;
    let alice = b
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["alice"], "groupSize": 1}))
        .await;
    let bob = b
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["bob"], "groupSize": 1}))
        .await;
    for (ticket, player) in [(alice, "alice"), (bob, "bob")] {
        let assignment = b.wait_for(&ticket, "assigned").await["assignment"].clone();
        let token = assignment["matchToken"].as_str().expect("matchToken");
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
        let claims = common::verify_with(&a.jwks().await, token);
        assert_eq!(claims.player_id, player);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_on_two_replicas_lose_no_key() {
    let redis = RedisServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&redis, dir_a.path()).await;
    let b = replica(&redis, dir_b.path()).await;
    let mut published = BTreeSet::from([current_kid(&a).await]);

    for round in 0..5 {
        let (kid_a, kid_b) = tokio::join!(rotate(&a), rotate(&b));
        assert_ne!(kid_a, kid_b);
        published.insert(kid_a.clone());
        published.insert(kid_b.clone());
        wait_until_same_keys(&a, &b).await;
        let current = current_kid(&a).await;
        assert!(
            current == kid_a || current == kid_b,
            "round {round}: current {current} is neither rotation's key"
        );
        assert_eq!(
            kids(&a).await,
            published,
            "round {round}: every rotated-in key is still published"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_keeps_the_keys() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let first = replica(&redis, dir.path()).await;
    let old_kid = current_kid(&first).await;
    let new_kid = rotate(&first).await;
    let jwks = jwks_body(&first).await;
    first.cp.shutdown().await;

    // A new process, even with an empty data dir, signs with the same keys.
    let other_dir = tempfile::tempdir().unwrap();
    let again = replica(&redis, other_dir.path()).await;
    assert_eq!(current_kid(&again).await, new_kid);
    assert_eq!(jwks_body(&again).await, jwks);
    assert_eq!(kids(&again).await, BTreeSet::from([old_kid, new_kid]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_replica_on_redis_publishes_the_data_dirs_keys() {
    // A control plane that ran on its data dir before moving to Redis keeps
    // its keys, so tokens it already handed out stay verifiable.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut durable = Config::ephemeral_for_tests();
    durable.storage = StorageConfig::Durable {
        data_dir: dir.path().to_owned(),
    };
    let before = Harness::start_with(durable).await;
    let kid = current_kid(&before).await;
    before.cp.shutdown().await;

    let on_redis = replica(&redis, dir.path()).await;
    assert_eq!(current_kid(&on_redis).await, kid);
    let other_dir = tempfile::tempdir().unwrap();
    let second = replica(&redis, other_dir.path()).await;
    assert_eq!(current_kid(&second).await, kid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_lost_by_redis_is_published_again() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&redis, dir.path()).await;
    rotate(&a).await;
    let jwks = jwks_body(&a).await;

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let removed: u64 = redis::cmd("DEL")
        .arg("{matchplane}:keyring")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the keyring lives at {{matchplane}}:keyring");

    let keyring = a.cp.state().issuer.keyring();
    assert!(
        !keyring.refresh().await.unwrap(),
        "its own keys, nothing new"
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg("{matchplane}:keyring")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists, "the replica published its keys again");
    // A replica started now gets those same keys, not fresh ones.
    let other_dir = tempfile::tempdir().unwrap();
    let b = replica(&redis, other_dir.path()).await;
    assert_eq!(jwks_body(&b).await, jwks);
}
