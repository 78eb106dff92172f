//! The control plane's REST contract against a real server on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use common::Harness;
use matchplane_control_plane::store::{
    CancelOutcome, CommitOutcome, CreateOutcome, MatchCommit, MemoryStore, QueueCounts,
    ReleaseOutcome, ReleaseRequest, ServerRecord, Store, StoreError, TicketRecord,
};
use matchplane_control_plane::{Config, ControlPlane, SigningAlgorithm};
use serde_json::{Value, json};

#[tokio::test]
async fn health_reports_ok_with_detail() {
    let h = Harness::start().await;
    let (status, body) = h.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["store"], "memory");
    assert!(
        body["currentKid"]
            .as_str()
            .is_some_and(|kid| !kid.is_empty())
    );
}

#[tokio::test]
async fn enqueue_status_and_cancel_happy_path() {
    let h = Harness::start().await;
    let ticket = h
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["alice"], "groupSize": 1}))
        .await;
    let status = h.status(&ticket).await;
    assert_eq!(status["ticketId"], ticket.as_str());
    assert_eq!(status["status"], "queued");
    assert!(status.get("assignment").is_none());

    let (code, reply) = h
        .post("/v1/matchmaking/cancel", json!({"ticketId": ticket}))
        .await;
    assert_eq!(code, 201);
    assert_eq!(reply["cancelled"], true);
    assert_eq!(h.status(&ticket).await["status"], "cancelled");
    // Cancelling again reports it was not queued.
    let (code, reply) = h
        .post("/v1/matchmaking/cancel", json!({"ticketId": ticket}))
        .await;
    assert_eq!(code, 201);
    assert_eq!(reply["cancelled"], false);
}

async fn assert_error(h: &Harness, response: (u16, Value), status: u16, code: &str) {
    let (got_status, body) = response;
    assert_eq!(got_status, status, "body: {body}");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    // Whatever the client sent, the server stays healthy.
    assert_eq!(h.get("/health").await.0, 200);
}

#[tokio::test]
async fn matchmaking_validation_errors_have_codes() {
    let h = Harness::start().await;
    let enqueue = "/v1/matchmaking/enqueue";
    let cases = [
        (json!({"members": ["a"]}), "QUEUE_KEY_REQUIRED"),
        (
            json!({"queueKey": "", "members": ["a"]}),
            "QUEUE_KEY_REQUIRED",
        ),
        (
            json!({"queueKey": "hero defense", "members": ["a"]}),
            "INVALID_QUEUE_KEY",
        ),
        (
            json!({"queueKey": "q/../x", "members": ["a"]}),
            "INVALID_QUEUE_KEY",
        ),
        (json!({"queueKey": "q"}), "MEMBERS_REQUIRED"),
        (json!({"queueKey": "q", "members": []}), "MEMBERS_REQUIRED"),
        (
            json!({"queueKey": "q", "members": ["a", "b"], "groupSize": 3}),
            "GROUP_SIZE_MISMATCH",
        ),
        (
            json!({"queueKey": "q", "members": ["a", "a"]}),
            "DUPLICATE_MEMBER",
        ),
        (json!({"queueKey": "q", "members": [""]}), "INVALID_MEMBER"),
        (
            json!({"queueKey": "q", "members": ["x".repeat(129)]}),
            "FIELD_TOO_LONG",
        ),
        (
            json!({"queueKey": "q".repeat(129), "members": ["a"]}),
            "FIELD_TOO_LONG",
        ),
        (
            json!({"queueKey": "q", "members": (0..17).map(|i| format!("p{i}")).collect::<Vec<_>>()}),
            "TOO_MANY_MEMBERS",
        ),
        (
            json!({"queueKey": "q", "members": ["a"], "latencies": {"eu": 999_999}}),
            "INVALID_LATENCY",
        ),
        (json!({"queueKey": 42, "members": ["a"]}), "INVALID_REQUEST"),
        (json!({"queueKey": "q", "members": "a"}), "INVALID_REQUEST"),
        (json!(["not", "an", "object"]), "INVALID_REQUEST"),
        // A party of 2 can never fit a team of 1.
        (
            json!({"queueKey": "hero-defense:1v1", "members": ["a", "b"]}),
            "TICKET_TOO_LARGE",
        ),
        (
            json!({"queueKey": "hero-defense:3", "members": ["a", "b", "c", "d"]}),
            "TICKET_TOO_LARGE",
        ),
    ];
    for (body, code) in cases {
        assert_error(&h, h.post(enqueue, body).await, 400, code).await;
    }

    assert_error(
        &h,
        h.get("/v1/matchmaking/status/nope").await,
        404,
        "TICKET_NOT_FOUND",
    )
    .await;
    assert_error(
        &h,
        h.post("/v1/matchmaking/cancel", json!({"ticketId": "nope"}))
            .await,
        404,
        "TICKET_NOT_FOUND",
    )
    .await;
    assert_error(
        &h,
        h.post("/v1/matchmaking/cancel", json!({})).await,
        400,
        "TICKET_ID_REQUIRED",
    )
    .await;
    assert_error(&h, h.get("/v1/nothing-here").await, 404, "NOT_FOUND").await;
}

#[tokio::test]
async fn malformed_oversized_and_wrong_content_type_bodies() {
    let h = Harness::start().await;
    let url = h.url("/v1/matchmaking/enqueue");
    let send = |body: Vec<u8>, content_type: &'static str| {
        let request = h
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    assert_error(
        &h,
        send(b"{\"queueKey\": ".to_vec(), "application/json").await,
        400,
        "INVALID_JSON",
    )
    .await;
    assert_error(
        &h,
        send(b"\xff\xfe garbage".to_vec(), "application/json").await,
        400,
        "INVALID_JSON",
    )
    .await;
    assert_error(
        &h,
        send(b"queueKey=q".to_vec(), "text/plain").await,
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;
    let big = format!(
        r#"{{"queueKey":"q","members":["a"],"constraints":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    assert_error(
        &h,
        send(big.into_bytes(), "application/json").await,
        413,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    // Provisioning answers in its own envelope.
    let response = h
        .http
        .post(h.url("/v1/provisioning/servers/register"))
        .bearer_auth(h.cp.registration_token())
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "INVALID_JSON");
    assert_eq!(body["error"]["retryable"], false);
    // And nothing was lost or broken: a normal request still works.
    h.enqueue(json!({"queueKey": "q", "members": ["a"]})).await;
}

/// A heartbeat lists every open land: 1,666 hero-defense lands (≈ 75 KB) once went
/// past the general body limit, the heartbeats were refused with 413 and the control
/// plane expired a live server with all its matches.
#[tokio::test]
async fn a_heartbeat_listing_thousands_of_lands_is_accepted() {
    let h = Harness::start().await;
    let land_ids: Vec<String> = (0..5_000)
        .map(|n| format!("hero-defense:01JDQ0Z8P6W1Y0000000000{n:05}"))
        .collect();
    let heartbeat = json!({
        "serverId": "busy", "host": "127.0.0.1", "port": 9000, "landType": "hero-defense",
        "landIds": land_ids,
    });
    let body = serde_json::to_vec(&heartbeat).unwrap();
    assert!(body.len() > 3 * 64 * 1024, "{} bytes", body.len());
    h.register(heartbeat.clone()).await;
    let (status, servers) = h.get("/v1/admin/servers").await;
    assert_eq!(status, 200);
    assert_eq!(servers["servers"][0]["openLands"], 5_000, "{servers}");

    // The larger limit is for registered callers only: no token, no body read.
    let anonymous = h
        .http
        .post(h.url("/v1/provisioning/servers/register"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    // And it is still a limit: past --max-register-body-bytes (8 MiB) is a 413.
    let huge = format!(
        r#"{{"serverId":"busy","host":"127.0.0.1","port":9000,"landType":"hero-defense","region":"{}"}}"#,
        "x".repeat(8 * 1024 * 1024)
    );
    let refused = h
        .http
        .post(h.url("/v1/provisioning/servers/register"))
        .bearer_auth(h.cp.registration_token())
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 413);
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "PAYLOAD_TOO_LARGE", "{answer}");
}

#[tokio::test]
async fn provisioning_errors_use_the_seed_envelope() {
    let h = Harness::start().await;
    let register = "/v1/provisioning/servers/register";
    let cases = [
        (
            json!({"host": "h", "port": 1, "landType": "t"}),
            "SERVER_ID_REQUIRED",
        ),
        (
            json!({"serverId": "s", "port": 1, "landType": "t"}),
            "INVALID_SERVER",
        ),
        (
            json!({"serverId": "s", "host": "h", "landType": "t"}),
            "INVALID_SERVER",
        ),
        (
            json!({"serverId": "s", "host": "h", "port": 1}),
            "INVALID_SERVER",
        ),
        (
            json!({"serverId": "s", "host": "h", "port": 1, "landType": "a:b"}),
            "INVALID_SERVER",
        ),
        (
            json!({"serverId": "s", "host": "h", "port": 1, "landType": "t", "connectScheme": "ftp"}),
            "INVALID_SERVER",
        ),
        (
            json!({"serverId": "s", "host": "h", "port": 1, "landType": "t", "connectPathPrefix": "gs1"}),
            "INVALID_SERVER",
        ),
        (
            json!({"serverId": "s", "host": "h", "port": "x", "landType": "t"}),
            "INVALID_REQUEST",
        ),
    ];
    for (body, code) in cases {
        let (status, reply) = h.post(register, body).await;
        assert_eq!(status, 400, "{reply}");
        assert_eq!(reply["success"], false);
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert_eq!(reply["error"]["retryable"], false);
    }
    let (status, reply) = h.delete("/v1/provisioning/servers/ghost").await;
    assert_eq!(status, 404);
    assert_eq!(reply["success"], false);
    assert_eq!(reply["error"]["code"], "SERVER_NOT_FOUND");
}

#[tokio::test]
async fn register_heartbeat_and_deregister() {
    // Not the default, so the answer must come from the configuration.
    let mut config = Config::ephemeral_for_tests();
    config.heartbeat_interval = Duration::from_millis(1_500);
    let h = Harness::start_with(config).await;
    let answer = h
        .register(json!({
            "serverId": "game-1", "host": "0.0.0.0", "port": 8080, "landType": "hero-defense",
            "landTypes": ["counter"], "region": "eu",
            "capacity": {"maxLands": 10, "maxPlayers": 100}, "load": {"lands": 1, "players": 4}
        }))
        .await;
    // The game server adopts this interval, so the two cannot drift apart.
    assert_eq!(
        answer,
        json!({"success": true, "heartbeatIntervalMs": 1_500})
    );
    let (status, body) = h.get("/v1/admin/servers").await;
    assert_eq!(status, 200);
    let server = &body["servers"][0];
    assert_eq!(server["serverId"], "game-1");
    assert_eq!(server["landTypes"], json!(["hero-defense", "counter"]));
    assert_eq!(server["state"], "live");
    assert_eq!(server["capacity"]["maxLands"], 10);
    assert_eq!(server["load"]["players"], 4);
    let registered_at = server["registeredAt"].clone();

    // Heartbeat: same call, later; last-seen moves, registration time stays.
    h.clock.advance(Duration::from_secs(5));
    let answer = h.register(json!({"serverId": "game-1", "host": "0.0.0.0", "port": 8080, "landType": "hero-defense", "draining": true}))
        .await;
    assert_eq!(answer["heartbeatIntervalMs"], 1_500);
    let (_, body) = h.get("/v1/admin/servers").await;
    assert_eq!(body["servers"][0]["registeredAt"], registered_at);
    assert_eq!(body["servers"][0]["state"], "draining");
    assert_eq!(body["servers"][0]["lastSeenAgoMs"], 0);

    let (status, reply) = h.delete("/v1/provisioning/servers/game-1").await;
    assert_eq!(status, 200);
    assert_eq!(reply, json!({"success": true}));
    let (_, body) = h.get("/v1/admin/servers").await;
    assert_eq!(body["servers"], json!([]));
}

#[tokio::test]
async fn two_solo_tickets_in_1v1_share_a_land_and_tokens_verify() {
    // With the periodic tick an hour away, only arrival-time matching can assign.
    let mut config = Config::ephemeral_for_tests();
    config.match_tick = Duration::from_secs(3600);
    let h = Harness::start_with(config).await;
    h.register_server("game-1", "hero-defense").await;
    let alice = h
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["alice"], "groupSize": 1}))
        .await;
    let bob = h
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["bob"], "groupSize": 1}))
        .await;
    let a = h.wait_for(&alice, "assigned").await["assignment"].clone();
    let b = h.wait_for(&bob, "assigned").await["assignment"].clone();

    assert_eq!(a["landId"], b["landId"]);
    assert_eq!(a["serverId"], "game-1");
    assert_eq!(a["matchId"], b["matchId"]);
    assert_ne!(a["assignmentId"], b["assignmentId"]);
    assert_ne!(a["team"], b["team"]);
    let land_id = a["landId"].as_str().unwrap();
    assert!(land_id.starts_with("hero-defense:"));
    assert_eq!(
        a["connectUrl"],
        format!("ws://127.0.0.1:9000/game/hero-defense?landId={land_id}")
    );
    assert!(a["expiresAt"].as_str().unwrap().ends_with('Z'));

    let claims = h.verify(a["matchToken"].as_str().unwrap()).await;
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.player_id, "alice");
    assert_eq!(claims.members, vec!["alice".to_owned()]);
    assert_eq!(claims.land_id, land_id);
    assert_eq!(claims.land_type, "hero-defense");
    assert_eq!(claims.server_id, "game-1");
    assert_eq!(claims.assignment_id, a["assignmentId"].as_str().unwrap());
    assert_eq!(claims.jti, claims.assignment_id);
    assert_eq!(claims.iss, "matchplane");
    assert_eq!(claims.aud, "matchplane-game");
    assert_eq!(claims.exp - claims.iat, 60);
    assert_eq!(claims.match_id.as_deref(), a["matchId"].as_str());
    let roster: BTreeSet<String> = claims.roster.iter().flatten().cloned().collect();
    assert_eq!(
        roster,
        BTreeSet::from(["alice".to_owned(), "bob".to_owned()])
    );
    let header = jsonwebtoken::decode_header(a["matchToken"].as_str().unwrap()).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);

    let (_, summary) = h.get("/v1/admin/queue/summary").await;
    let queue = &summary["queues"][0];
    assert_eq!(queue["queueKey"], "hero-defense:1v1");
    assert_eq!(queue["assigned"], 2);
    assert_eq!(queue["queued"], 0);
    assert_eq!(queue["timeToMatch"]["samples"], 2);
    assert_eq!(queue["queuedWait"]["samples"], 0);
}

#[tokio::test]
async fn spent_match_tokens_are_dropped_and_never_shown_again() {
    let store = Arc::new(MemoryStore::new());
    let h = Harness::start_with_store(Config::ephemeral_for_tests(), store.clone()).await;
    h.register_server("game-1", "hero-defense").await;
    let mut tickets = Vec::new();
    for player in ["alice", "bob"] {
        tickets.push(
            h.enqueue(json!({"queueKey": "hero-defense:1v1", "members": [player]}))
                .await,
        );
    }
    let assigned = h.wait_for(&tickets[0], "assigned").await;
    let token = assigned["assignment"]["matchToken"].as_str().unwrap();
    assert!(!token.is_empty());

    // Expired (60 s), but within the grace a verifier's leeway may still use.
    h.clock.advance(Duration::from_secs(60 + 59));
    assert_eq!(h.status(&tickets[0]).await, assigned);

    h.clock.advance(Duration::from_secs(2));
    let mut spent = assigned.clone();
    spent["assignment"]["matchToken"] = json!("");
    assert_eq!(h.status(&tickets[0]).await, spent, "only the token goes");
    // The housekeeping pass (every 30 s of the clock) drops it from the store too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored = store.ticket(&tickets[1]).await.unwrap().unwrap();
        let assignment = stored.assignment.unwrap();
        if assignment.match_token.is_empty() {
            assert_eq!(assignment.land_id, assigned["assignment"]["landId"]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never dropped");
        h.clock.advance(Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn party_members_each_get_a_token() {
    let h = Harness::start().await;
    h.register_server("game-1", "hero-defense").await;
    let party = h
        .enqueue(json!({"queueKey": "hero-defense:2v2", "members": ["p1", "p2"], "groupSize": 2}))
        .await;
    let other = h
        .enqueue(json!({"queueKey": "hero-defense:2v2", "members": ["q1", "q2"], "groupSize": 2}))
        .await;
    let assignment = h.wait_for(&party, "assigned").await["assignment"].clone();
    h.wait_for(&other, "assigned").await;
    let tokens = assignment["memberTokens"]
        .as_object()
        .expect("memberTokens");
    assert_eq!(tokens.len(), 2);
    assert_eq!(assignment["matchToken"], tokens["p1"]);
    for member in ["p1", "p2"] {
        let claims = h.verify(tokens[member].as_str().unwrap()).await;
        assert_eq!(claims.sub, member);
        assert_eq!(claims.members, vec!["p1".to_owned(), "p2".to_owned()]);
        // A party is one team: its members are never split.
        assert!(
            claims
                .roster
                .iter()
                .any(|team| team.contains(&"p1".to_owned()) && team.contains(&"p2".to_owned()))
        );
    }
}

#[tokio::test]
async fn connect_url_uses_connect_host_port_scheme_and_prefix() {
    let h = Harness::start().await;
    h.register(json!({
        "serverId": "behind-lb", "host": "10.0.0.7", "port": 8080, "landType": "counter",
        "connectHost": "game.example.com", "connectPort": 443
    }))
    .await;
    let t = h
        .enqueue(json!({"queueKey": "counter", "members": ["solo"]}))
        .await;
    let a = h.wait_for(&t, "assigned").await["assignment"].clone();
    let land_id = a["landId"].as_str().unwrap();
    assert_eq!(
        a["connectUrl"],
        format!("wss://game.example.com/game/counter?landId={land_id}")
    );

    h.register(json!({
        "serverId": "behind-lb", "host": "10.0.0.7", "port": 8080, "landType": "counter",
        "connectHost": "lb.local", "connectPort": 8443, "connectScheme": "wss", "connectPathPrefix": "/gs/2"
    }))
    .await;
    let t = h
        .enqueue(json!({"queueKey": "counter", "members": ["solo2"]}))
        .await;
    let a = h.wait_for(&t, "assigned").await["assignment"].clone();
    let land_id = a["landId"].as_str().unwrap();
    assert_eq!(
        a["connectUrl"],
        format!("wss://lb.local:8443/gs/2/game/counter?landId={land_id}")
    );
}

#[tokio::test]
async fn dedup_by_group_id() {
    let h = Harness::start().await;
    let body = json!({"queueKey": "hero-defense:3v3", "groupId": "party-7", "members": ["a", "b"], "groupSize": 2});
    let first = h.enqueue(body.clone()).await;
    let second = h.enqueue(body.clone()).await;
    assert_eq!(first, second);
    h.clock.advance(Duration::from_secs(5));
    let (_, summary) = h.get("/v1/admin/queue/summary").await;
    assert_eq!(summary["queues"][0]["queued"], 1);
    assert_eq!(summary["queues"][0]["oldestWaitMs"], 5000);
    assert_eq!(summary["queues"][0]["queuedWait"]["samples"], 1);
    assert_eq!(summary["queues"][0]["queuedWait"]["p99Ms"], 5000);
    // Once the ticket is cancelled the group may queue again, as a new ticket.
    h.post("/v1/matchmaking/cancel", json!({"ticketId": first}))
        .await;
    let third = h.enqueue(body).await;
    assert_ne!(third, first);
}

#[tokio::test]
async fn cancel_after_assignment_reports_false() {
    let h = Harness::start().await;
    h.register_server("game-1", "counter").await;
    let t = h
        .enqueue(json!({"queueKey": "counter", "members": ["a"]}))
        .await;
    h.wait_for(&t, "assigned").await;
    let (code, reply) = h
        .post("/v1/matchmaking/cancel", json!({"ticketId": t}))
        .await;
    assert_eq!(code, 201);
    assert_eq!(reply["cancelled"], false);
    assert_eq!(h.status(&t).await["status"], "assigned");
}

#[tokio::test]
async fn no_server_keeps_tickets_queued_until_one_registers() {
    let h = Harness::start().await;
    let t = h
        .enqueue(json!({"queueKey": "counter", "members": ["a"]}))
        .await;
    tokio::time::sleep(Duration::from_millis(350)).await; // a few matcher ticks
    assert_eq!(h.status(&t).await["status"], "queued");
    h.register_server("game-1", "counter").await;
    h.wait_for(&t, "assigned").await;
}

#[tokio::test]
async fn expired_and_draining_servers_get_no_lands() {
    let h = Harness::start().await;
    h.register_server("game-1", "counter").await;
    h.clock.advance(Duration::from_secs(91));
    let t = h
        .enqueue(json!({"queueKey": "counter", "members": ["a"]}))
        .await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(h.status(&t).await["status"], "queued");
    let (_, servers) = h.get("/v1/admin/servers").await;
    assert_eq!(servers["servers"][0]["state"], "lost");

    h.register(json!({"serverId": "game-1", "host": "127.0.0.1", "port": 9000, "landType": "counter", "draining": true}))
        .await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(h.status(&t).await["status"], "queued");

    // A heartbeat without draining brings it back.
    h.register_server("game-1", "counter").await;
    h.wait_for(&t, "assigned").await;
}

#[tokio::test]
async fn queued_tickets_expire_after_the_ticket_ttl() {
    let h = Harness::start().await;
    let t = h
        .enqueue(json!({"queueKey": "hero-defense:5v5", "members": ["a"]}))
        .await;
    h.clock.advance(Duration::from_secs(599));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(h.status(&t).await["status"], "queued");
    h.clock.advance(Duration::from_secs(2));
    h.wait_for(&t, "expired").await;
    let (_, reply) = h
        .post("/v1/matchmaking/cancel", json!({"ticketId": t}))
        .await;
    assert_eq!(reply["cancelled"], false);
    // An expired ticket no longer holds its group.
    let (_, summary) = h.get("/v1/admin/queue/summary").await;
    assert_eq!(summary["queues"][0]["expired"], 1);
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_verifiable() {
    let h = Harness::start().await;
    h.register_server("game-1", "counter").await;
    let before = h
        .enqueue(json!({"queueKey": "counter", "members": ["a"]}))
        .await;
    let old_token = h.wait_for(&before, "assigned").await["assignment"]["matchToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_kid = jsonwebtoken::decode_header(&old_token)
        .unwrap()
        .kid
        .unwrap();

    let (status, reply) = h.post("/v1/admin/keys/rotate", json!({})).await;
    assert_eq!(status, 200);
    let new_kid = reply["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);

    let after = h
        .enqueue(json!({"queueKey": "counter", "members": ["b"]}))
        .await;
    let new_token = h.wait_for(&after, "assigned").await["assignment"]["matchToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .unwrap(),
        new_kid
    );
    let jwks = h.jwks().await;
    assert_eq!(jwks.keys.len(), 2);
    common::verify_with(&jwks, &old_token);
    common::verify_with(&jwks, &new_token);

    // Once the old key's tokens have expired it drops out of the JWKS.
    h.clock.advance(Duration::from_secs(121));
    let kids: Vec<String> = h.jwks().await.keys.into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, vec![new_kid]);
}

#[tokio::test]
async fn eddsa_is_selectable() {
    let mut config = Config::ephemeral_for_tests();
    config.signing.algorithm = SigningAlgorithm::EdDsa;
    let h = Harness::start_with(config).await;
    h.register_server("game-1", "counter").await;
    let t = h
        .enqueue(json!({"queueKey": "counter", "members": ["a"]}))
        .await;
    let token = h.wait_for(&t, "assigned").await["assignment"]["matchToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().alg,
        jsonwebtoken::Algorithm::EdDSA
    );
    let jwks = h.jwks().await;
    assert_eq!(jwks.keys[0].kty, "OKP");
    assert_eq!(jwks.keys[0].alg, "EdDSA");
    assert_eq!(h.verify(&token).await.sub, "a");
}

/// A store whose backend is gone: every call fails as unavailable.
struct BrokenStore;

fn gone<T>() -> Result<T, StoreError> {
    Err(StoreError::Unavailable("disk on fire".to_owned()))
}

#[async_trait]
impl Store for BrokenStore {
    fn kind(&self) -> &'static str {
        "broken"
    }
    async fn create_ticket(&self, _: TicketRecord, _: u64) -> Result<CreateOutcome, StoreError> {
        gone()
    }
    async fn ticket(&self, _: &str) -> Result<Option<TicketRecord>, StoreError> {
        gone()
    }
    async fn cancel_ticket(&self, _: &str, _: u64) -> Result<CancelOutcome, StoreError> {
        gone()
    }
    async fn commit_matches(
        &self,
        _: Vec<MatchCommit>,
        _: u64,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        gone()
    }
    async fn expire_tickets(
        &self,
        _: Vec<String>,
        _: u64,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        gone()
    }
    async fn queued_tickets(&self) -> Result<Vec<TicketRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn assigned_on_server(&self, _: &str) -> Result<Vec<TicketRecord>, StoreError> {
        gone()
    }
    async fn release_assignments(
        &self,
        _: Vec<ReleaseRequest>,
        _: u64,
    ) -> Result<Vec<ReleaseOutcome>, StoreError> {
        gone()
    }
    async fn purge_finished(&self, _: u64, _: u64) -> Result<u64, StoreError> {
        gone()
    }
    async fn put_server(&self, _: ServerRecord) -> Result<(), StoreError> {
        gone()
    }
    async fn remove_server(&self, _: &str) -> Result<bool, StoreError> {
        gone()
    }
    async fn servers(&self) -> Result<Vec<ServerRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn queue_counts(&self) -> Result<Vec<QueueCounts>, StoreError> {
        gone()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        gone()
    }
}

#[tokio::test]
async fn store_outage_is_503_with_retryable_codes() {
    let cp = ControlPlane::builder(Config::ephemeral_for_tests())
        .store(Arc::new(BrokenStore))
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = cp.base_url();
    let response = http
        .post(format!("{base}/v1/matchmaking/enqueue"))
        .json(&json!({"queueKey": "q", "members": ["a"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "STORE_UNAVAILABLE");

    let response = http
        .get(format!("{base}/v1/matchmaking/status/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);

    let response = http
        .post(format!("{base}/v1/provisioning/servers/register"))
        .bearer_auth(cp.registration_token())
        .json(&json!({"serverId": "s", "host": "h", "port": 1, "landType": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "STORE_UNAVAILABLE");
    assert_eq!(body["error"]["retryable"], true);

    let response = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    cp.shutdown().await;
}

#[tokio::test]
async fn abandoned_allocations_surface_in_admin_and_metrics() {
    let h = Harness::start().await;
    let heartbeat = json!({"serverId": "game-1", "host": "127.0.0.1", "port": 9000, "landType": "counter",
        "capacity": {"maxLands": 5}, "load": {"lands": 0, "players": 0}, "landIds": []});
    h.register(heartbeat.clone()).await;
    let t = h
        .enqueue(json!({"queueKey": "counter", "members": ["a"]}))
        .await;
    let land_id = h.wait_for(&t, "assigned").await["assignment"]["landId"].clone();
    let (_, servers) = h.get("/v1/admin/servers").await;
    assert_eq!(servers["servers"][0]["pendingLandIds"], json!([land_id]));
    assert_eq!(servers["servers"][0]["allocatedSinceHeartbeat"], 1);

    // The assignment expires and the next heartbeats still do not list the land.
    h.clock.advance(Duration::from_secs(61));
    h.register(heartbeat).await;
    let (_, servers) = h.get("/v1/admin/servers").await;
    assert_eq!(servers["servers"][0]["abandonedLands"], 1);
    assert_eq!(servers["servers"][0]["pendingLandIds"], json!([]));

    let response = h.http.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    for line in [
        "matchplane_abandoned_lands_total 1",
        "matchplane_tickets_enqueued_total 1",
        "matchplane_tickets_assigned_total 1",
        "matchplane_matches_assigned_total 1",
        "matchplane_time_to_match_seconds_count 1",
        "matchplane_live_servers 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn capacity_one_servers_take_one_match_each_and_a_third_waits() {
    let h = Harness::start().await;
    for server in ["game-a", "game-b"] {
        h.register(json!({"serverId": server, "host": "127.0.0.1", "port": 9000, "landType": "hero-defense",
            "capacity": {"maxLands": 1}, "load": {"lands": 0, "players": 0}, "landIds": []}))
            .await;
    }
    let mut tickets = Vec::new();
    for player in ["a1", "a2", "b1", "b2", "c1", "c2"] {
        tickets.push(
            h.enqueue(json!({"queueKey": "hero-defense:1v1", "members": [player]}))
                .await,
        );
    }
    let first = h.wait_for(&tickets[0], "assigned").await["assignment"]["serverId"].clone();
    let second = h.wait_for(&tickets[2], "assigned").await["assignment"]["serverId"].clone();
    assert_ne!(first, second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.status(&tickets[4]).await["status"], "queued");
    assert_eq!(h.status(&tickets[5]).await["status"], "queued");
}

#[tokio::test]
async fn a_player_waits_in_one_queued_ticket_at_a_time() {
    let h = Harness::start().await;
    let enqueue = "/v1/matchmaking/enqueue";
    let queue = "hero-defense:5v5";
    let first = h
        .enqueue(json!({"queueKey": queue, "groupId": "solo-p1", "members": ["p1"]}))
        .await;
    // Alone under another group, or inside someone else's party: 409 naming the ticket.
    for body in [
        json!({"queueKey": queue, "members": ["p1"]}),
        json!({"queueKey": "hero-defense:3v3", "groupId": "other", "members": ["p1"]}),
        json!({"queueKey": queue, "groupId": "party", "members": ["p2", "p1"]}),
    ] {
        let (status, reply) = h.post(enqueue, body.clone()).await;
        assert_error(&h, (status, reply.clone()), 409, "PLAYER_ALREADY_QUEUED").await;
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("p1") && message.contains(&first),
            "{message}"
        );
    }
    // The refused party claimed nobody: p2 may queue on its own.
    h.enqueue(json!({"queueKey": queue, "members": ["p2"]}))
        .await;
    // An idempotent retry of the original request still gets its ticket.
    let retry = h
        .enqueue(json!({"queueKey": queue, "groupId": "solo-p1", "members": ["p1"]}))
        .await;
    assert_eq!(retry, first);
    // Cancelled: the player may queue again straight away.
    h.post("/v1/matchmaking/cancel", json!({"ticketId": first}))
        .await;
    let again = h
        .enqueue(json!({"queueKey": queue, "members": ["p1"]}))
        .await;
    assert_ne!(again, first);
}

#[tokio::test]
async fn a_matched_player_can_requeue_at_once_and_is_never_matched_against_itself() {
    let h = Harness::start().await;
    h.register_server("game-1", "hero-defense").await;
    let queue = "hero-defense:1v1";
    let a = h
        .enqueue(json!({"queueKey": queue, "members": ["me"]}))
        .await;
    // The issue's self-match: the same player twice in a 1v1 queue.
    let (status, reply) = h
        .post(
            "/v1/matchmaking/enqueue",
            json!({"queueKey": queue, "members": ["me"]}),
        )
        .await;
    assert_error(&h, (status, reply), 409, "PLAYER_ALREADY_QUEUED").await;
    let b = h
        .enqueue(json!({"queueKey": queue, "members": ["you"]}))
        .await;
    let assigned = h.wait_for(&a, "assigned").await;
    h.wait_for(&b, "assigned").await;
    let claims = h
        .verify(assigned["assignment"]["matchToken"].as_str().unwrap())
        .await;
    let roster: Vec<String> = claims.roster.concat();
    assert_eq!(roster.len(), 2);
    assert!(roster.contains(&"me".to_owned()) && roster.contains(&"you".to_owned()));
    // Assigned is no longer queued: the player requeues straight after the match.
    let next = h
        .enqueue(json!({"queueKey": queue, "members": ["me"]}))
        .await;
    assert_ne!(next, a);
}

#[tokio::test]
async fn another_owner_reusing_a_group_id_gets_its_own_ticket() {
    let h = Harness::start().await;
    let queue = "hero-defense:5v5";
    let alice = h
        .enqueue(json!({"queueKey": queue, "groupId": "party-1", "members": ["alice"]}))
        .await;
    let mallory = h
        .enqueue(json!({"queueKey": queue, "groupId": "party-1", "members": ["mallory"]}))
        .await;
    assert_ne!(
        mallory, alice,
        "a groupId never hands out another owner's ticket"
    );
    // Both tickets are queued, each with its own members.
    assert_eq!(h.status(&alice).await["status"], "queued");
    assert_eq!(h.status(&mallory).await["status"], "queued");
    let (_, summary) = h.get("/v1/admin/queue/summary").await;
    assert_eq!(summary["queues"][0]["queued"], 2);
}

const ONE_PROFILE: &str = r#"
[[queue]]
key = "hero-defense:ranked"
teams = 2
team_size = 1
"#;

#[tokio::test]
async fn unknown_queue_keys_are_404_when_profiles_are_configured() {
    let mut config = Config::ephemeral_for_tests();
    config.engine = matchplane_matchmaker::EngineConfig::from_toml_str(ONE_PROFILE).unwrap();
    let h = Harness::start_with(config.clone()).await;
    h.enqueue(json!({"queueKey": "hero-defense:ranked", "members": ["a"]}))
        .await;
    for key in ["hero-defense:3v3", "hero-defense:ranked:eu", "hero-defense"] {
        assert_error(
            &h,
            h.post(
                "/v1/matchmaking/enqueue",
                json!({"queueKey": key, "members": ["b"]}),
            )
            .await,
            404,
            "QUEUE_NOT_FOUND",
        )
        .await;
    }

    config.open_queues = true;
    let open = Harness::start_with(config).await;
    open.enqueue(json!({"queueKey": "hero-defense:3v3", "members": ["b"]}))
        .await;
    // Without profiles every key is open, as before.
    let plain = Harness::start().await;
    plain
        .enqueue(json!({"queueKey": "anything:2v2", "members": ["c"]}))
        .await;
}

#[tokio::test]
async fn oversized_constraints_and_fields_are_refused_before_they_are_stored() {
    let h = Harness::start().await;
    let enqueue = "/v1/matchmaking/enqueue";
    let deep = (0..9).fold(json!(1), |inner, _| json!([inner]));
    let many_bytes: serde_json::Map<String, Value> = (0..32)
        .map(|i| (format!("{i:0100}"), json!("v".repeat(100))))
        .collect();
    let cases = [
        // The issue's 63 KB constraints: under the body limit, over the constraints cap.
        (
            json!({"queueKey": "q", "members": ["a"], "constraints": {"blob": "x".repeat(63 * 1024)}}),
            "CONSTRAINTS_TOO_LARGE",
        ),
        (
            json!({"queueKey": "q", "members": ["a"], "constraints": deep}),
            "CONSTRAINTS_TOO_LARGE",
        ),
        (
            json!({"queueKey": "q", "members": ["a"], "stringArgs": many_bytes}),
            "FIELD_TOO_LONG",
        ),
        (
            json!({"queueKey": "q", "members": ["a"], "tags": (0..33).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
            "TOO_MANY_FIELDS",
        ),
        (
            json!({"queueKey": "q", "members": ["a"], "attributes": {"skill": 1e13}}),
            "INVALID_ATTRIBUTE",
        ),
        (
            json!({"queueKey": "q", "members": ["a"], "attributes": {"skill": -1e300}}),
            "INVALID_ATTRIBUTE",
        ),
    ];
    for (body, code) in cases {
        assert_error(&h, h.post(enqueue, body).await, 400, code).await;
    }
    let (_, summary) = h.get("/v1/admin/queue/summary").await;
    assert_eq!(
        summary["queues"].as_array().map_or(0, Vec::len),
        0,
        "nothing was stored: {summary}"
    );
    // At the bounds it is accepted.
    let at_depth = (0..8).fold(json!(1), |inner, _| json!([inner]));
    h.enqueue(json!({"queueKey": "q", "members": ["a"], "constraints": at_depth, "attributes": {"skill": 1e12}}))
        .await;
}

#[tokio::test]
async fn finished_tickets_are_purged_past_a_count_cap_as_well_as_the_retention() {
    let mut config = Config::ephemeral_for_tests();
    config.limits.max_finished_tickets = 2;
    let h = Harness::start_with(config).await;
    let mut cancelled = Vec::new();
    for player in ["f1", "f2", "f3", "f4"] {
        let id = h
            .enqueue(json!({"queueKey": "hero-defense:5v5", "members": [player]}))
            .await;
        h.post("/v1/matchmaking/cancel", json!({"ticketId": id}))
            .await;
        h.clock.advance(Duration::from_millis(10));
        cancelled.push(id);
    }
    let waiting = h
        .enqueue(json!({"queueKey": "hero-defense:5v5", "members": ["w"]}))
        .await;
    // Well inside the 1 h retention, but past the housekeeping interval.
    h.clock.advance(Duration::from_secs(31));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = h
            .get(&format!("/v1/matchmaking/status/{}", cancelled[1]))
            .await;
        if status == 404 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.get(&format!("/v1/matchmaking/status/{}", cancelled[0]))
            .await
            .0,
        404
    );
    for kept in &cancelled[2..] {
        assert_eq!(h.status(kept).await["status"], "cancelled");
    }
    assert_eq!(h.status(&waiting).await["status"], "queued");
}

#[tokio::test]
async fn a_player_whose_ticket_just_expired_is_matched_in_a_new_one_before_the_expiry_tick() {
    let mut config = Config::ephemeral_for_tests();
    // No periodic tick during the test: the old ticket is past its expiry but
    // not yet marked expired, the window the store already lets the player through.
    config.match_tick = Duration::from_secs(3600);
    let h = Harness::start_with(config).await;
    let queue = "hero-defense:1v1";
    let old = h
        .enqueue(json!({"queueKey": queue, "members": ["late"]}))
        .await;
    h.clock.advance(Duration::from_secs(601));
    h.register_server("game-1", "hero-defense").await;
    assert_eq!(h.status(&old).await["status"], "queued");
    let fresh = h
        .enqueue(json!({"queueKey": queue, "members": ["late"]}))
        .await;
    assert_ne!(fresh, old);
    let rival = h
        .enqueue(json!({"queueKey": queue, "members": ["rival"]}))
        .await;
    let assigned = h.wait_for(&fresh, "assigned").await;
    h.wait_for(&rival, "assigned").await;
    let claims = h
        .verify(assigned["assignment"]["matchToken"].as_str().unwrap())
        .await;
    assert_eq!(claims.roster.concat().len(), 2);
    assert_ne!(h.status(&old).await["status"], "assigned");
}

/// The memory store, except that a purge waits until the test lets it go: a
/// housekeeping pass that takes as long as a busy store's can.
struct SlowPurgeStore {
    inner: MemoryStore,
    purge_started: tokio::sync::Notify,
    purge_may_finish: tokio::sync::Semaphore,
}

#[async_trait]
impl Store for SlowPurgeStore {
    fn kind(&self) -> &'static str {
        "slow-purge"
    }
    async fn create_ticket(
        &self,
        ticket: TicketRecord,
        now: u64,
    ) -> Result<CreateOutcome, StoreError> {
        self.inner.create_ticket(ticket, now).await
    }
    async fn ticket(&self, ticket_id: &str) -> Result<Option<TicketRecord>, StoreError> {
        self.inner.ticket(ticket_id).await
    }
    async fn cancel_ticket(&self, ticket_id: &str, now: u64) -> Result<CancelOutcome, StoreError> {
        self.inner.cancel_ticket(ticket_id, now).await
    }
    async fn commit_matches(
        &self,
        matches: Vec<MatchCommit>,
        now: u64,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        self.inner.commit_matches(matches, now).await
    }
    async fn expire_tickets(
        &self,
        ticket_ids: Vec<String>,
        now: u64,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        self.inner.expire_tickets(ticket_ids, now).await
    }
    async fn queued_tickets(&self) -> Result<Vec<TicketRecord>, StoreError> {
        self.inner.queued_tickets().await
    }
    async fn assigned_on_server(&self, server_id: &str) -> Result<Vec<TicketRecord>, StoreError> {
        self.inner.assigned_on_server(server_id).await
    }
    async fn release_assignments(
        &self,
        releases: Vec<ReleaseRequest>,
        now: u64,
    ) -> Result<Vec<ReleaseOutcome>, StoreError> {
        self.inner.release_assignments(releases, now).await
    }
    async fn purge_finished(&self, before: u64, keep_at_most: u64) -> Result<u64, StoreError> {
        self.purge_started.notify_one();
        let _permit = self.purge_may_finish.acquire().await;
        self.inner.purge_finished(before, keep_at_most).await
    }
    async fn put_server(&self, server: ServerRecord) -> Result<(), StoreError> {
        self.inner.put_server(server).await
    }
    async fn remove_server(&self, server_id: &str) -> Result<bool, StoreError> {
        self.inner.remove_server(server_id).await
    }
    async fn servers(&self) -> Result<Vec<ServerRecord>, StoreError> {
        self.inner.servers().await
    }
    async fn queue_counts(&self) -> Result<Vec<QueueCounts>, StoreError> {
        self.inner.queue_counts().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// Housekeeping's purge of finished tickets runs beside the matching loop: a
/// long pass (every ticket finished in the last 30 s, most of a second at
/// 10,000 tickets/s) used to hold up every match until it was done.
#[tokio::test]
async fn matches_form_while_a_purge_of_finished_tickets_runs() {
    let store = Arc::new(SlowPurgeStore {
        inner: MemoryStore::new(),
        purge_started: tokio::sync::Notify::new(),
        purge_may_finish: tokio::sync::Semaphore::new(0),
    });
    let h = Harness::start_with_store(Config::ephemeral_for_tests(), store.clone()).await;
    let finished = h
        .enqueue(json!({"queueKey": "hero-defense:5v5", "members": ["gone"]}))
        .await;
    h.post("/v1/matchmaking/cancel", json!({"ticketId": finished}))
        .await;
    // Past the housekeeping interval and the retention: the next pass purges.
    h.clock.advance(Duration::from_secs(2 * 3600));
    tokio::time::timeout(Duration::from_secs(10), store.purge_started.notified())
        .await
        .expect("a housekeeping pass starts");

    h.register_server("game-1", "hero-defense").await;
    let alice = h
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["alice"]}))
        .await;
    h.enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["bob"]}))
        .await;
    h.wait_for(&alice, "assigned").await;
    assert_eq!(h.status(&finished).await["status"], "cancelled");

    store.purge_may_finish.add_permits(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.get(&format!("/v1/matchmaking/status/{finished}")).await.0 != 404 {
        assert!(tokio::time::Instant::now() < deadline, "never purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
