//! Scale-out with real processes: control planes of several roles sharing one
//! real `redis-server`, and replicas behind the project's nginx template.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../control-plane/tests/common/redis_server.rs"]
mod redis_server;
mod support;

use std::path::Path;
use std::time::Duration;

use redis_server::RedisServer;
use serde_json::{Value, json};
use support::nginx::start_nginx;
use support::*;

const WITHIN: Duration = Duration::from_secs(30);

async fn replica(redis: &RedisServer, extra: &[&str]) -> (Proc, tempfile::TempDir) {
    redis_replica(&redis.url(), extra).await
}

async fn wait_live_on(base: &str, server_id: &str) {
    wait_servers(base, WITHIN, |servers| {
        servers
            .iter()
            .any(|s| s["serverId"] == server_id && s["state"] == "live")
    })
    .await;
}

#[tokio::test]
async fn api_and_matcher_processes_with_the_seed_rule_push_one_land_to_both_sockets() {
    let redis = RedisServer::start();
    let (api, _api_dir) = replica(&redis, &["--role", "api", "--queue-key-rule", "seed"]).await;
    let (matcher, _matcher_dir) =
        replica(&redis, &["--role", "matcher", "--queue-key-rule", "seed"]).await;
    // `standard` is not a built-in land type; `counter:2v2` under the seed
    // rule is the same shape: one group of two players per land.
    let _gs = game_server(
        &api.http(),
        &["--server-id", "gs-seed", "--lands", "counter"],
    )
    .await;
    wait_live_on(&api.http(), "gs-seed").await;

    // The matcher serves no API: everything goes through the api process.
    let (status, _) = get(&format!("{}/v1/matchmaking/status/x", matcher.http())).await;
    assert_eq!(status, 404);

    let realtime = format!("ws://{}/realtime", api.addr);
    let mut first = ws(&realtime).await;
    let mut second = ws(&realtime).await;
    send(
        &mut first,
        json!({"action": "enqueue", "queueKey": "counter:2v2", "members": ["p1"]}),
    )
    .await;
    send(
        &mut second,
        json!({"action": "enqueue", "queueKey": "counter:2v2", "members": ["p2"]}),
    )
    .await;
    let one = next_of(&mut first, "match.assigned").await;
    let two = next_of(&mut second, "match.assigned").await;
    let land = one["data"]["assignment"]["landId"].as_str().unwrap();
    assert!(land.starts_with("counter:"), "{one}");
    assert_eq!(two["data"]["assignment"]["landId"], land, "{two}");
    assert_eq!(two["data"]["assignment"]["serverId"], "gs-seed", "{two}");
    assert_ne!(one["data"]["ticketId"], two["data"]["ticketId"]);

    // The matcher made the match, the api process none.
    let matched = |metrics: &str| {
        metrics
            .lines()
            .find(|line| line.starts_with("matchplane_matches_assigned_total "))
            .and_then(|line| line.split_whitespace().last())
            .map(str::to_owned)
    };
    let api_metrics = reqwest::get(format!("{}/metrics", api.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let matcher_metrics = reqwest::get(format!("{}/metrics", matcher.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(matched(&api_metrics).as_deref(), Some("0"), "{api_metrics}");
    assert_eq!(
        matched(&matcher_metrics).as_deref(),
        Some("1"),
        "{matcher_metrics}"
    );
}

async fn jwks(replica: &Proc) -> Value {
    let (status, body) = get(&format!("{}/.well-known/jwks.json", replica.http())).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body["keys"].as_array().unwrap().is_empty(), "{body}");
    body
}

/// Polls until every replica serves the same JWKS, and returns it.
async fn same_jwks_everywhere(replicas: &[Proc], within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut all = Vec::new();
        for replica in replicas {
            all.push(jwks(replica).await);
        }
        if all.iter().all(|keys| *keys == all[0]) {
            return all.swap_remove(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas serve different JWKS: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn three_replicas_behind_nginx_share_the_queue_and_the_jwks() {
    let redis = RedisServer::start();
    let mut replicas = Vec::new();
    let mut _dirs = Vec::new();
    for _ in 0..3 {
        let (proc, dir) = replica(&redis, &["--role", "all"]).await;
        replicas.push(proc);
        _dirs.push(dir);
    }
    let lb_port = free_port();
    let addrs: Vec<&str> = replicas.iter().map(|r| r.addr.as_str()).collect();
    // No game server behind /game/ is used here; the render script needs one.
    let lb = start_nginx(
        lb_port,
        &args(&[
            "--control-plane",
            &addrs.join(","),
            "--game-server",
            &replicas[0].addr,
        ]),
    )
    .await;

    // The rendered upstream lists every replica: nginx spreads requests over all three.
    let mut answering = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (status, cluster) = admin_get(&format!("{}/match/v1/admin/cluster", lb.base())).await;
        assert_eq!(status, 200, "{cluster}");
        assert_eq!(
            cluster["replicas"].as_array().unwrap().len(),
            3,
            "{cluster}"
        );
        answering.insert(cluster["replicaId"].as_str().unwrap().to_owned());
        if answering.len() == 3 {
            break;
        }
    }
    assert_eq!(
        answering.len(),
        3,
        "replicas answering through nginx: {answering:?}"
    );
    let _gs = game_server(
        &format!("{}/match", lb.base()),
        &["--server-id", "gs-lb", "--lands", "counter"],
    )
    .await;
    // Heartbeats land on whichever replica nginx picks; every replica sees the server.
    for replica in &replicas {
        wait_live_on(&replica.http(), "gs-lb").await;
    }

    // JWKS identical everywhere, through the LB too.
    let before = same_jwks_everywhere(&replicas, Duration::from_secs(5)).await;
    let (status, through_lb) = get(&format!("{}/match/.well-known/jwks.json", lb.base())).await;
    assert_eq!(status, 200);
    assert_eq!(through_lb, before);

    // Three players per land: tickets enqueued round-robin on the replicas,
    // each watched on the next replica. Whichever replica holds the queue's
    // lease matches tickets stored by the others (the event feed), and every
    // socket hears the assignment made elsewhere.
    const QUEUE: &str = "counter:3";
    let players: Vec<String> = (0..6).map(|i| format!("player-{i}")).collect();
    let mut watchers = Vec::new();
    for (i, player) in players.iter().enumerate() {
        let ticket = enqueue(
            &replicas[i % 3].http(),
            json!({"queueKey": QUEUE, "members": [player]}),
        )
        .await;
        let watcher = &replicas[(i + 1) % 3];
        let socket = ws(&format!("ws://{}/realtime?ticketId={ticket}", watcher.addr)).await;
        watchers.push((ticket, socket));
    }
    let mut lands = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (ticket, socket) in &mut watchers {
        let assigned = next_of(socket, "match.assigned").await;
        assert_eq!(assigned["data"]["ticketId"], ticket.as_str(), "{assigned}");
        let assignment = &assigned["data"]["assignment"];
        assert_eq!(assignment["serverId"], "gs-lb", "{assigned}");
        // The push matches what every replica stores.
        for replica in &replicas {
            let stored = poll_assignment(&replica.http(), ticket, WITHIN).await;
            assert_eq!(stored["landId"], assignment["landId"]);
        }
        lands
            .entry(assignment["landId"].as_str().unwrap().to_owned())
            .or_default()
            .push(ticket.clone());
    }
    assert_eq!(lands.len(), 2, "two lands of three: {lands:?}");
    assert!(
        lands.values().all(|tickets| tickets.len() == 3),
        "{lands:?}"
    );

    // A rotation on one replica reaches the others.
    let (status, body) = admin_post(
        &format!("{}/v1/admin/keys/rotate", replicas[1].http()),
        &json!({}),
    )
    .await;
    assert!((200..300).contains(&status), "rotate: {status} {body}");
    let rotated_here = jwks(&replicas[1]).await;
    assert_ne!(
        rotated_here, before,
        "the rotating replica changed its keys"
    );
    let after = same_jwks_everywhere(&replicas, Duration::from_secs(5)).await;
    assert_eq!(after, rotated_here);
    // The previous key stays published beside the new one.
    let (before_kids, after_kids) = (kids(&before), kids(&after));
    assert!(
        before_kids.iter().all(|kid| after_kids.contains(kid)),
        "{before_kids:?} → {after_kids:?}"
    );
    assert!(after_kids.len() > before_kids.len(), "{after_kids:?}");
}

#[tokio::test]
async fn replicas_left_to_generate_credentials_share_the_first_ones() {
    let redis = RedisServer::start();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        // No credentials in flags or the environment: each replica would
        // generate its own into its data dir.
        let dir = tempfile::tempdir().unwrap();
        let all = args(&[
            "control-plane",
            "--port",
            "0",
            "--redis-url",
            &redis.url(),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]);
        let proc = spawn_with_env(&all, "control plane listening", "info", &[]).await;
        replicas.push((proc, dir));
    }
    let read = |dir: &Path, name: &str| {
        let path = dir.join(name);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        std::fs::read_to_string(path).unwrap().trim().to_owned()
    };
    let (first, first_dir) = &replicas[0];
    let (second, second_dir) = &replicas[1];
    for name in ["admin-token", "registration-token"] {
        assert_eq!(
            read(first_dir.path(), name),
            read(second_dir.path(), name),
            "{name} differs between the replicas' data dirs"
        );
    }

    // The first replica's admin token opens the second's admin API.
    let admin = read(first_dir.path(), "admin-token");
    let url = format!("{}/v1/admin/cluster", second.http());
    let reply = call(reqwest::Method::GET, &url, Some(&admin), None).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let reply = call(reqwest::Method::GET, &url, Some("not-the-token"), None).await;
    assert_eq!(reply.status, 401, "{:?}", reply.body);

    // A game server given the first replica's registration token registers
    // with the second and is live on both.
    let registration = first_dir.path().join("registration-token");
    let all = args(&[
        "game-server",
        "--port",
        "0",
        "--control-plane-url",
        &second.http(),
        "--registration-token-file",
        registration.to_str().unwrap(),
        "--server-id",
        "gs-shared-credentials",
        "--heartbeat-interval",
        "1s",
    ]);
    let _gs = spawn_with_env(&all, "game server listening", "info", &[]).await;
    for replica in [first, second] {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let url = format!("{}/v1/admin/servers", replica.http());
            let reply = call(reqwest::Method::GET, &url, Some(&admin), None).await;
            assert_eq!(reply.status, 200, "{:?}", reply.body);
            if reply.body["servers"].as_array().is_some_and(|servers| {
                servers
                    .iter()
                    .any(|s| s["serverId"] == "gs-shared-credentials" && s["state"] == "live")
            }) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never live on {}: {:?}",
                replica.addr,
                reply.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
