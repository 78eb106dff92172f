//! Several control-plane replicas on one real Redis: the cluster event feed
//! carries tickets to every matcher and events to every replica's sockets,
//! `--role api` / `--role matcher` split the work, and a replica that stopped
//! reading the feed catches up (or resyncs after a gap).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Harness, Socket, next_event};
use futures_util::{SinkExt as _, StreamExt as _};
use matchplane_contracts::matchmaking::{Assignment, TicketStatus};
use matchplane_control_plane::store::{
    FeedEvent, FeedRead, MatchCommit, RedisStore, Release, ReleaseRequest, Store, TicketRecord,
};
use matchplane_control_plane::{Config, CredentialSource, Role, StorageConfig};
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
    // Replicas share their credentials, as behind one load balancer.
    config.admin_token = CredentialSource::Value("admin-token-for-the-cluster-tests".into());
    config.registration_token =
        CredentialSource::Value("registration-token-for-the-cluster-tests".into());
    (Harness::start_with(config).await, dir)
}

async fn enqueue(h: &Harness, player: &str) -> String {
    h.enqueue(json!({"queueKey": QUEUE, "members": [player]}))
        .await
}

/// A socket watching `ticket_id`, past its `subscribed` (still queued) greeting.
async fn watch_queued(h: &Harness, ticket_id: &str) -> Socket {
    let mut socket = h.realtime(&format!("?ticketId={ticket_id}")).await;
    let first = next_event(&mut socket).await;
    assert_eq!(first["type"], "subscribed", "{first}");
    assert_eq!(first["data"]["status"], "queued", "{first}");
    socket
}

/// Asserts the socket says nothing for a while.
async fn quiet(socket: &mut Socket) {
    let got = tokio::time::timeout(Duration::from_millis(400), socket.next()).await;
    assert!(got.is_err(), "expected silence, got {got:?}");
}

/// Tickets per queue that a replica's matcher holds.
async fn pooled(h: &Harness) -> BTreeMap<String, usize> {
    h.cp.state()
        .matcher
        .waits()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, waits)| !waits.queued.is_empty())
        .map(|(queue, waits)| (queue, waits.queued.len()))
        .collect()
}

async fn eventually_pooled(h: &Harness, wanted: &[(&str, usize)]) {
    let wanted: BTreeMap<String, usize> = wanted
        .iter()
        .map(|(queue, count)| ((*queue).to_owned(), *count))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pooled = pooled(h).await;
        if pooled == wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "matcher pool {pooled:?}, wanted {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A queue nobody fills here: its tickets stay queued.
const BIG_QUEUE: &str = "hero-defense:2v2";

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_on_two_replicas_match_and_both_replicas_sockets_hear_it() {
    let redis = RedisServer::start();
    let (a, _a_dir) = replica(&redis, Role::All).await;
    let (b, _b_dir) = replica(&redis, Role::All).await;
    // Each replica allocates from its own registry.
    a.register_server("game-1", "hero-defense").await;
    b.register_server("game-1", "hero-defense").await;

    let bob = enqueue(&b, "bob").await;
    let mut bob_on_a = watch_queued(&a, &bob).await;
    // A's matcher can only pair alice with bob through the feed, and whichever
    // replica matches, the other one's socket hears it through the feed.
    let alice = enqueue(&a, "alice").await;
    let mut alice_on_b = b.realtime(&format!("?ticketId={alice}")).await;

    let pushed = next_event(&mut bob_on_a).await;
    assert_eq!(pushed["type"], "match.assigned", "{pushed}");
    assert_eq!(pushed["data"]["ticketId"], bob.as_str());
    let mut alice_event = next_event(&mut alice_on_b).await;
    if alice_event["type"] == "subscribed" {
        alice_event = next_event(&mut alice_on_b).await;
    }
    assert_eq!(alice_event["type"], "match.assigned", "{alice_event}");
    assert_eq!(
        alice_event["data"]["assignment"]["landId"],
        pushed["data"]["assignment"]["landId"]
    );
    // Both replicas read the same truth; exactly one match was stored.
    assert_eq!(
        a.status(&alice).await["assignment"],
        b.status(&alice).await["assignment"]
    );
    let (_, summary) = a.get("/v1/admin/queue/summary").await;
    assert_eq!(summary["queues"][0]["assigned"], 2, "{summary}");
    // Neither matcher still holds a ticket that left the queue.
    eventually("both pools empty", || {
        a.cp.state().matcher.queued() == 0 && b.cp.state().matcher.queued() == 0
    })
    .await;
    let delivered = a.cp.state().metrics.feed_entries.load(Ordering::Relaxed)
        + b.cp.state().metrics.feed_entries.load(Ordering::Relaxed);
    assert!(delivered >= 2, "feed entries delivered: {delivered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_one_replica_reaches_a_socket_on_another() {
    let redis = RedisServer::start();
    let (a, _a_dir) = replica(&redis, Role::All).await;
    // B only serves the API: A is the one matcher, so it holds every
    // queue's lease and tracks every queued ticket.
    let (b, _b_dir) = replica(&redis, Role::Api).await;
    let carol = enqueue(&b, "carol").await;
    let mut carol_on_a = watch_queued(&a, &carol).await;
    // A's matcher learned the ticket from the feed...
    eventually("A holds carol", || a.cp.state().matcher.queued() == 1).await;

    let (code, reply) = b
        .post("/v1/matchmaking/cancel", json!({"ticketId": carol}))
        .await;
    assert_eq!(code, 201, "{reply}");
    let pushed = next_event(&mut carol_on_a).await;
    assert_eq!(
        pushed,
        json!({"type": "ticket.cancelled", "v": 1, "data": {"ticketId": carol}})
    );
    // ...and dropped it when it was cancelled elsewhere.
    eventually("A dropped carol", || a.cp.state().matcher.queued() == 0).await;
}

async fn send(socket: &mut Socket, value: Value) {
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            value.to_string().into(),
        ))
        .await
        .unwrap();
}

/// Reads until `match.assigned` (an enqueue answers `enqueued`, maybe `subscribed`).
async fn assigned_after_enqueue(socket: &mut Socket) -> Value {
    loop {
        let event = next_event(socket).await;
        match event["type"].as_str() {
            Some("enqueued" | "subscribed") => continue,
            Some("match.assigned") => return event,
            _ => panic!("unexpected {event}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_replica_and_a_matcher_replica_share_the_work() {
    let redis = RedisServer::start();
    let (api, _api_dir) = replica(&redis, Role::Api).await;
    // The server record reaches the matcher through the store it loads at start.
    api.register_server("game-1", "hero-defense").await;
    let (matcher, _matcher_dir) = replica(&redis, Role::Matcher).await;

    // The matcher serves health and metrics only.
    let (code, health) = matcher.get("/health").await;
    assert_eq!(code, 200, "{health}");
    // Which replica answered, and as what, for a load balancer or an operator.
    assert_eq!(health["role"], "matcher", "{health}");
    assert_eq!(
        health["replicaId"],
        matcher.cp.state().cluster.replica_id(),
        "{health}"
    );
    assert_eq!(health["store"], "redis", "{health}");
    let metrics = matcher
        .http
        .get(matcher.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    for path in [
        "/v1/matchmaking/status/anything",
        "/.well-known/jwks.json",
        "/v1/admin/queue/summary",
    ] {
        let (code, reply) = matcher.get(path).await;
        assert_eq!(code, 404, "{path}: {reply}");
        assert_eq!(reply["error"]["code"], "NOT_FOUND", "{path}: {reply}");
    }
    let (code, reply) = matcher
        .post(
            "/v1/matchmaking/enqueue",
            json!({"queueKey": QUEUE, "members": ["x"]}),
        )
        .await;
    assert_eq!((code, &reply["error"]["code"]), (404, &json!("NOT_FOUND")));
    let (code, health) = api.get("/health").await;
    assert_eq!(code, 200);
    assert_eq!(health["role"], "api", "{health}");
    assert_eq!(
        health["replicaId"],
        api.cp.state().cluster.replica_id(),
        "{health}"
    );
    assert_ne!(
        health["replicaId"],
        json!(matcher.cp.state().cluster.replica_id())
    );
    let (code, reply) = api
        .post(
            "/v1/internal/backfill",
            json!({"queueKey": QUEUE, "landId": "hero-defense:x", "serverId": "game-1", "openSlots": [1]}),
        )
        .await;
    assert_eq!(
        (code, &reply["error"]["code"]),
        (404, &json!("NOT_FOUND")),
        "{reply}"
    );

    let mut first = api.realtime("").await;
    let mut second = api.realtime("").await;
    send(
        &mut first,
        json!({"action": "enqueue", "queueKey": QUEUE, "members": ["solo-1"]}),
    )
    .await;
    send(
        &mut second,
        json!({"action": "enqueue", "queueKey": QUEUE, "members": ["solo-2"]}),
    )
    .await;
    let one = assigned_after_enqueue(&mut first).await;
    let two = assigned_after_enqueue(&mut second).await;
    let land = one["data"]["assignment"]["landId"].as_str().unwrap();
    assert!(land.starts_with("hero-defense:"), "{one}");
    assert_eq!(two["data"]["assignment"]["landId"], land, "{two}");
    assert_ne!(one["data"]["ticketId"], two["data"]["ticketId"]);
    // The api replica matched nothing itself. The matcher counts a match
    // after its commit returns, which can be after the api replica already
    // pushed it from the feed: wait for the count, then check it is one.
    let matcher_metrics = &matcher.cp.state().metrics;
    eventually("the matcher counts its match", || {
        matcher_metrics.matches_assigned.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(matcher_metrics.matches_assigned.load(Ordering::Relaxed), 1);
    let api_metrics = &api.cp.state().metrics;
    assert_eq!(api_metrics.matches_assigned.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stopped_reading_the_feed_catches_up() {
    let redis = RedisServer::start();
    let (a, _a_dir) = replica(&redis, Role::All).await;
    // B only serves the API: A is the one matcher, so it holds every
    // queue's lease and tracks every queued ticket.
    let (b, _b_dir) = replica(&redis, Role::Api).await;
    let dan = enqueue(&b, "dan").await;
    let mut dan_on_a = watch_queued(&a, &dan).await;
    eventually_pooled(&a, &[(QUEUE, 1)]).await;

    a.cp.pause_event_feed(true);
    let (code, _) = b
        .post("/v1/matchmaking/cancel", json!({"ticketId": dan}))
        .await;
    assert_eq!(code, 201);
    let erin = b
        .enqueue(json!({"queueKey": BIG_QUEUE, "members": ["erin"]}))
        .await;
    quiet(&mut dan_on_a).await;
    assert_eq!(pooled(&a).await, BTreeMap::from([(QUEUE.to_owned(), 1)]));

    a.cp.pause_event_feed(false);
    let pushed = next_event(&mut dan_on_a).await;
    assert_eq!(pushed["type"], "ticket.cancelled", "{pushed}");
    eventually_pooled(&a, &[(BIG_QUEUE, 1)]).await;
    assert_eq!(
        a.cp.state().metrics.feed_resyncs.load(Ordering::Relaxed),
        0,
        "caught up from the position, no resync"
    );
    assert_eq!(a.status(&erin).await["status"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_feed_makes_the_replica_resync() {
    let redis = RedisServer::start();
    let (a, _a_dir) = replica(&redis, Role::All).await;
    // B only serves the API: A is the one matcher, so it holds every
    // queue's lease and tracks every queued ticket.
    let (b, _b_dir) = replica(&redis, Role::Api).await;
    let fay = enqueue(&b, "fay").await;
    let mut fay_on_a = watch_queued(&a, &fay).await;
    eventually_pooled(&a, &[(QUEUE, 1)]).await;

    a.cp.pause_event_feed(true);
    let (code, _) = b
        .post("/v1/matchmaking/cancel", json!({"ticketId": fay}))
        .await;
    assert_eq!(code, 201);
    b.enqueue(json!({"queueKey": BIG_QUEUE, "members": ["gil"]}))
        .await;
    // Everything A has not read is trimmed away, as if it lagged past MAXLEN.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("XTRIM")
        .arg("{matchplane}:events")
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();

    a.cp.pause_event_feed(false);
    // The socket re-reads what it watches; the matcher reloads the queue.
    let pushed = next_event(&mut fay_on_a).await;
    assert_eq!(pushed["type"], "ticket.cancelled", "{pushed}");
    // Fay, cancelled in the gap, left the pool; gil, enqueued in it, joined.
    eventually_pooled(&a, &[(BIG_QUEUE, 1)]).await;
    assert_eq!(a.cp.state().metrics.feed_resyncs.load(Ordering::Relaxed), 1);
    // And it follows the feed again afterwards.
    let hal = enqueue(&b, "hal").await;
    let mut hal_on_a = watch_queued(&a, &hal).await;
    b.post("/v1/matchmaking/cancel", json!({"ticketId": hal}))
        .await;
    assert_eq!(next_event(&mut hal_on_a).await["type"], "ticket.cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_resumes_after_a_redis_restart_with_aof() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start_durable(dir.path());
    let (a, _a_dir) = replica(&redis, Role::All).await;
    let (b, _b_dir) = replica(&redis, Role::All).await;
    let ivy = enqueue(&b, "ivy").await;
    let mut ivy_on_a = watch_queued(&a, &ivy).await;

    redis.restart();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port));
    // B's connection comes back on its own; its first requests may fail meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, reply) = b
            .post("/v1/matchmaking/cancel", json!({"ticketId": ivy}))
            .await;
        if code == 201 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{code} {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pushed = next_event(&mut ivy_on_a).await;
    assert_eq!(pushed["type"], "ticket.cancelled", "{pushed}");
    assert_eq!(
        a.cp.state().metrics.feed_resyncs.load(Ordering::Relaxed),
        0,
        "the position survived the restart (AOF)"
    );
}

fn record(id: &str, now: u64) -> TicketRecord {
    TicketRecord {
        group_id: id.to_owned(),
        ..TicketRecord::queued(
            id.to_owned(),
            "q".to_owned(),
            vec![format!("{id}-player")],
            now,
            now + 600_000,
        )
    }
}

fn assignment(id: &str) -> Assignment {
    Assignment {
        assignment_id: id.to_owned(),
        match_token: "token".to_owned(),
        connect_url: "ws://127.0.0.1:1/game/q".to_owned(),
        land_id: format!("q:{id}"),
        server_id: "gs".to_owned(),
        expires_at: "1970-01-01T00:01:00Z".to_owned(),
        member_tokens: BTreeMap::new(),
        match_id: Some("m".to_owned()),
        team: Some(0),
    }
}

/// Every state change is in the feed, with what a consumer needs, in order;
/// a replica does not read back its own entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_change_appends_its_event_to_the_feed() {
    let redis = RedisServer::start();
    let writer = RedisStore::connect(&redis.url(), "feedtest").await.unwrap();
    let reader = RedisStore::connect(&redis.url(), "feedtest").await.unwrap();
    let mut feed = reader.event_feed().unwrap();
    let start = feed.mark().await.unwrap();
    let now = 1_000_000;
    for id in ["a", "b", "c", "d", "e"] {
        writer.create_ticket(record(id, now), now).await.unwrap();
    }
    // The reader's own change is not read back.
    reader.create_ticket(record("own", now), now).await.unwrap();
    writer.cancel_ticket("c", now + 1).await.unwrap();
    writer
        .expire_tickets(vec!["d".to_owned()], now + 2)
        .await
        .unwrap();
    let commit = |ids: &[&str]| MatchCommit {
        assignments: ids
            .iter()
            .map(|id| ((*id).to_owned(), assignment(&format!("as-{id}"))))
            .collect(),
        assignment_expires_at: now + 60_000,
        server_instance_id: None,
    };
    writer
        .commit_matches(vec![commit(&["a", "b"]), commit(&["e"])], now + 3)
        .await
        .unwrap();
    let release = |id: &str, release: Release, joined: Option<&str>| ReleaseRequest {
        ticket_id: id.to_owned(),
        assignment_id: format!("as-{id}"),
        release,
        joined_land: joined.map(str::to_owned),
    };
    writer
        .release_assignments(
            vec![
                release(
                    "a",
                    Release::Requeue {
                        expires_at: now + 600_000,
                    },
                    Some("q:land"),
                ),
                release(
                    "b",
                    Release::Requeue {
                        expires_at: now + 600_000,
                    },
                    None,
                ),
                release(
                    "e",
                    Release::Fail {
                        reason: "server_lost".to_owned(),
                    },
                    None,
                ),
            ],
            now + 4,
        )
        .await
        .unwrap();

    let FeedRead::Entries { entries, last_id } = feed
        .read_after(&start, Duration::from_millis(100), 100)
        .await
        .unwrap()
    else {
        panic!("no gap expected");
    };
    let seen: Vec<(String, FeedEvent, bool)> = entries
        .iter()
        .map(|entry| {
            (
                entry.ticket_id.clone(),
                entry.event.clone(),
                entry.queued.is_some(),
            )
        })
        .collect();
    let lost = "server_lost".to_owned();
    let expected = vec![
        // Enqueued entries carry the ticket as created, whatever became of
        // it since (the entries after them say that).
        ("a".to_owned(), FeedEvent::Enqueued, true),
        ("b".to_owned(), FeedEvent::Enqueued, true),
        ("c".to_owned(), FeedEvent::Enqueued, true),
        ("d".to_owned(), FeedEvent::Enqueued, true),
        ("e".to_owned(), FeedEvent::Enqueued, true),
        ("c".to_owned(), FeedEvent::Cancelled, false),
        ("d".to_owned(), FeedEvent::Expired, false),
        (
            "a".to_owned(),
            FeedEvent::Assigned(Box::new(assignment("as-a"))),
            false,
        ),
        (
            "b".to_owned(),
            FeedEvent::Assigned(Box::new(assignment("as-b"))),
            false,
        ),
        (
            "e".to_owned(),
            FeedEvent::Assigned(Box::new(assignment("as-e"))),
            false,
        ),
        (
            "a".to_owned(),
            FeedEvent::MatchLost {
                land_id: "q:land".to_owned(),
                reason: lost.clone(),
            },
            true,
        ),
        (
            "b".to_owned(),
            FeedEvent::Requeued {
                reason: lost.clone(),
            },
            true,
        ),
        ("e".to_owned(), FeedEvent::Failed { reason: lost }, false),
    ];
    assert_eq!(seen, expected);
    assert!(entries.iter().all(|entry| entry.queue_key == "q"));
    for entry in entries
        .iter()
        .filter(|entry| entry.event == FeedEvent::Enqueued)
    {
        let carried = entry.queued.as_ref().unwrap();
        assert_eq!(
            (
                carried.ticket_id.as_str(),
                carried.status,
                carried.queue_key.as_str()
            ),
            (entry.ticket_id.as_str(), TicketStatus::Queued, "q")
        );
    }
    // Nothing more, and the position moves past everything read.
    let FeedRead::Entries { entries, .. } = feed
        .read_after(&last_id.unwrap(), Duration::from_millis(50), 100)
        .await
        .unwrap()
    else {
        panic!("no gap expected");
    };
    assert!(entries.is_empty());
}
