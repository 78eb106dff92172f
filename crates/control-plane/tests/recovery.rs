//! A lost game server: suspect, lost, its stranded tickets requeued (or failed),
//! `ticket.requeued` / `match.lost` pushed, and a restart releasing the old instance.
//! Time is a manual clock; the matching loop ticks for real.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Harness, Socket, next_event};
use matchplane_control_plane::Config;
use serde_json::{Value, json};

fn server(id: &str, instance: &str, open_lands: &[&str]) -> Value {
    json!({"serverId": id, "instanceId": instance, "host": "127.0.0.1", "port": 9000,
        "landType": "counter", "landIds": open_lands})
}

async fn pair(h: &Harness) -> (String, String) {
    let a = h
        .enqueue(json!({"queueKey": "counter:1v1", "members": ["alice"]}))
        .await;
    let b = h
        .enqueue(json!({"queueKey": "counter:1v1", "members": ["bob"]}))
        .await;
    (a, b)
}

/// A 1v1 pair matched on gs-1 (instance i1) that nobody has joined yet, and a
/// `/realtime` socket on alice's ticket, already past its `match.assigned`.
struct MatchedOnGs1 {
    alice: String,
    bob: String,
    first: Value,
    socket: Socket,
}

async fn pair_matched_on_gs1(h: &Harness) -> MatchedOnGs1 {
    h.register(server("gs-1", "i1", &[])).await;
    let (alice, bob) = pair(h).await;
    let first = h.wait_for(&alice, "assigned").await;
    assert_eq!(first["assignment"]["serverId"], "gs-1");
    let mut socket = h.realtime(&format!("?ticketId={alice}")).await;
    assert_eq!(next_event(&mut socket).await["type"], "match.assigned");
    MatchedOnGs1 {
        alice,
        bob,
        first,
        socket,
    }
}

async fn metrics(h: &Harness) -> String {
    h.http
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Nothing more is pushed within several matcher ticks (it ticks every 100 ms).
async fn assert_no_more_events(socket: &mut Socket) {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let next_text = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => return text,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    };
    if let Ok(text) = tokio::time::timeout(Duration::from_millis(500), next_text).await {
        panic!("unexpected event: {text}");
    }
}

/// Every assigned ticket in the store points at a distinct assignment: no ticket
/// (and no player) is in two live assignments.
async fn assert_single_assignments(h: &Harness, tickets: &[&str]) {
    let mut players: HashMap<String, String> = HashMap::new();
    for ticket in tickets {
        let status = h.status(ticket).await;
        if status["status"] != "assigned" {
            continue;
        }
        let land = status["assignment"]["landId"].as_str().unwrap().to_owned();
        let claims = h
            .verify(status["assignment"]["matchToken"].as_str().unwrap())
            .await;
        assert!(
            players.insert(claims.player_id.clone(), land).is_none(),
            "{} is in two assignments",
            claims.player_id
        );
    }
}

#[tokio::test]
async fn unjoined_tickets_of_a_lost_server_are_requeued_then_matched_elsewhere() {
    let h = Harness::start().await;
    let MatchedOnGs1 {
        alice,
        bob,
        first,
        mut socket,
    } = pair_matched_on_gs1(&h).await;
    let claims = h
        .verify(first["assignment"]["matchToken"].as_str().unwrap())
        .await;
    assert_eq!(claims.server_instance_id.as_deref(), Some("i1"));

    // Late by more than two heartbeats: suspect (no new lands), not yet lost.
    h.clock.advance(Duration::from_millis(4_500));
    let (_, servers) = h.get("/v1/admin/servers").await;
    assert_eq!(servers["servers"][0]["state"], "suspect", "{servers}");
    assert_eq!(h.status(&alice).await["status"], "assigned");

    // Past the TTL: lost. A second server is up by then.
    h.clock.advance(Duration::from_millis(2_000));
    h.register(server("gs-2", "j1", &[])).await;
    let requeued = next_event(&mut socket).await;
    assert_eq!(
        requeued,
        json!({"type": "ticket.requeued", "v": 1,
            "data": {"ticketId": alice, "reason": "server_lost"}})
    );
    let again = next_event(&mut socket).await;
    assert_eq!(again["type"], "match.assigned", "{again}");
    assert_eq!(again["data"]["assignment"]["serverId"], "gs-2");
    let status = h.wait_for(&bob, "assigned").await;
    assert_eq!(status["assignment"]["serverId"], "gs-2");
    // Same place in line as before: the original enqueue time is kept.
    assert_eq!(h.status(&alice).await["enqueuedAt"], first["enqueuedAt"]);
    assert_single_assignments(&h, &[&alice, &bob]).await;
    let (_, servers) = h.get("/v1/admin/servers").await;
    let gs1 = servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["serverId"] == "gs-1")
        .unwrap()
        .clone();
    assert_eq!(gs1["state"], "lost");
    assert!(gs1["lastSeenAgoMs"].as_u64().unwrap() >= 6_000);
    let metrics = metrics(&h).await;
    assert!(
        metrics.contains("matchplane_tickets_requeued_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("matchplane_servers_lost_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn unjoined_tickets_of_a_server_that_deregisters_are_requeued_then_matched_elsewhere() {
    let h = Harness::start().await;
    let MatchedOnGs1 {
        alice,
        bob,
        first,
        mut socket,
    } = pair_matched_on_gs1(&h).await;
    h.register(server("gs-2", "j1", &[])).await;
    // gs-3 drains and leaves holding nothing: a clean exit, not a loss.
    h.register(server("gs-3", "k1", &[])).await;
    let (status, _) = h.delete("/v1/provisioning/servers/gs-3").await;
    assert_eq!(status, 200);
    // gs-1 drains and leaves while its allocation is still pending (nobody joined).
    let mut draining = server("gs-1", "i1", &[]);
    draining["draining"] = json!(true);
    h.register(draining).await;
    let (status, reply) = h.delete("/v1/provisioning/servers/gs-1").await;
    assert_eq!((status, reply), (200, json!({"success": true})));

    let requeued = next_event(&mut socket).await;
    assert_eq!(
        requeued,
        json!({"type": "ticket.requeued", "v": 1,
            "data": {"ticketId": alice, "reason": "server_lost"}})
    );
    let again = next_event(&mut socket).await;
    assert_eq!(again["type"], "match.assigned", "{again}");
    assert_eq!(again["data"]["assignment"]["serverId"], "gs-2");
    assert_ne!(
        again["data"]["assignment"]["landId"],
        first["assignment"]["landId"]
    );
    let status = h.wait_for(&bob, "assigned").await;
    assert_eq!(status["assignment"]["serverId"], "gs-2");
    assert_eq!(h.status(&alice).await["enqueuedAt"], first["enqueuedAt"]);
    assert_single_assignments(&h, &[&alice, &bob]).await;
    let (_, servers) = h.get("/v1/admin/servers").await;
    let ids: Vec<&Value> = servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["serverId"])
        .collect();
    assert_eq!(ids, [&json!("gs-2")], "{servers}");
    let metrics = metrics(&h).await;
    assert!(
        metrics.contains("matchplane_tickets_requeued_total 2"),
        "{metrics}"
    );
    // The matcher handled gs-3's exit before gs-1's: only gs-1 counts as lost.
    assert!(
        metrics.contains("matchplane_servers_lost_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn players_in_a_lost_land_get_match_lost_and_a_new_match() {
    let h = Harness::start().await;
    h.register(server("gs-1", "i1", &[])).await;
    let (alice, bob) = pair(&h).await;
    let first = h.wait_for(&alice, "assigned").await;
    let land = first["assignment"]["landId"].as_str().unwrap().to_owned();
    // The players joined: the server reports the land open.
    h.register(server("gs-1", "i1", &[&land])).await;
    let mut socket = h.realtime(&format!("?ticketId={bob}")).await;
    assert_eq!(next_event(&mut socket).await["type"], "match.assigned");

    h.clock.advance(Duration::from_secs(7));
    h.register(server("gs-2", "j1", &[])).await;
    let lost = next_event(&mut socket).await;
    assert_eq!(
        lost,
        json!({"type": "match.lost", "v": 1,
            "data": {"ticketId": bob, "landId": land, "reason": "server_lost"}})
    );
    let again = next_event(&mut socket).await;
    assert_eq!(again["type"], "match.assigned");
    assert_eq!(again["data"]["assignment"]["serverId"], "gs-2");
    assert_ne!(again["data"]["assignment"]["landId"], land.as_str());
    h.wait_for(&alice, "assigned").await;
    assert_single_assignments(&h, &[&alice, &bob]).await;
    let metrics = metrics(&h).await;
    assert!(
        metrics.contains("matchplane_matches_lost_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_requeueing_off_stranded_tickets_fail_with_the_reason() {
    let mut config = Config::ephemeral_for_tests();
    config.requeue_joined = false;
    let h = Harness::start_with(config).await;
    h.register(server("gs-1", "i1", &[])).await;
    let (alice, _bob) = pair(&h).await;
    let land = h.wait_for(&alice, "assigned").await["assignment"]["landId"]
        .as_str()
        .unwrap()
        .to_owned();
    h.register(server("gs-1", "i1", &[&land])).await;
    let mut socket = h.realtime(&format!("?ticketId={alice}")).await;
    assert_eq!(next_event(&mut socket).await["type"], "match.assigned");
    h.clock.advance(Duration::from_secs(7));
    assert_eq!(next_event(&mut socket).await["type"], "match.lost");
    let failed = next_event(&mut socket).await;
    assert_eq!(
        failed,
        json!({"type": "ticket.failed", "v": 1,
            "data": {"ticketId": alice, "reason": "server_lost"}})
    );
    let status = h.status(&alice).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["reason"], "server_lost");
    // A failed ticket frees its players at once.
    h.enqueue(json!({"queueKey": "counter:1v1", "members": ["alice"]}))
        .await;
}

#[tokio::test]
async fn with_requeue_on_server_loss_off_unjoined_tickets_fail_and_players_may_requeue() {
    let mut config = Config::ephemeral_for_tests();
    config.requeue_on_server_loss = false;
    let h = Harness::start_with(config).await;
    let MatchedOnGs1 {
        alice,
        bob,
        mut socket,
        ..
    } = pair_matched_on_gs1(&h).await;
    h.clock.advance(Duration::from_secs(7));
    // A live server is up: had the tickets been requeued, they would be matched on it.
    h.register(server("gs-2", "j1", &[])).await;

    // Straight to `ticket.failed`: no `ticket.requeued`, no `match.lost` before it.
    let failed = next_event(&mut socket).await;
    assert_eq!(
        failed,
        json!({"type": "ticket.failed", "v": 1,
            "data": {"ticketId": alice, "reason": "server_lost"}})
    );
    assert_no_more_events(&mut socket).await;
    for ticket in [&alice, &bob] {
        let status = h.status(ticket).await;
        assert_eq!(status["status"], "failed", "{status}");
        assert_eq!(status["reason"], "server_lost", "{status}");
    }
    let metrics = metrics(&h).await;
    assert!(
        metrics.contains("matchplane_tickets_requeued_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("matchplane_matches_lost_total 0"),
        "{metrics}"
    );

    // Failed tickets free their players: they queue again and are matched on gs-2.
    let (alice_again, bob_again) = pair(&h).await;
    for ticket in [&alice_again, &bob_again] {
        let status = h.wait_for(ticket, "assigned").await;
        assert_eq!(status["assignment"]["serverId"], "gs-2");
    }
    assert_no_more_events(&mut socket).await;
}

#[tokio::test]
async fn a_restarted_server_releases_what_its_previous_instance_held() {
    let h = Harness::start().await;
    let MatchedOnGs1 {
        alice,
        bob,
        first,
        mut socket,
    } = pair_matched_on_gs1(&h).await;
    // Same id, new process: no TTL wait, the old instance's allocations are void.
    h.register(server("gs-1", "i2", &[])).await;
    assert_eq!(next_event(&mut socket).await["type"], "ticket.requeued");
    let again = next_event(&mut socket).await;
    assert_eq!(again["type"], "match.assigned");
    assert_ne!(
        again["data"]["assignment"]["landId"],
        first["assignment"]["landId"]
    );
    let token = again["data"]["assignment"]["matchToken"].as_str().unwrap();
    assert_eq!(
        h.verify(token).await.server_instance_id.as_deref(),
        Some("i2")
    );
    h.wait_for(&bob, "assigned").await;
    assert_single_assignments(&h, &[&alice, &bob]).await;
}

#[tokio::test]
async fn a_match_that_already_ended_is_not_requeued_when_its_server_goes() {
    let h = Harness::start().await;
    h.register(server("gs-1", "i1", &[])).await;
    let (alice, bob) = pair(&h).await;
    let land = h.wait_for(&alice, "assigned").await["assignment"]["landId"]
        .as_str()
        .unwrap()
        .to_owned();
    // The players joined (the land was reported open), played, and the land closed —
    // all within the assignment's lifetime.
    h.register(server("gs-1", "i1", &[&land])).await;
    h.register(server("gs-1", "i1", &[])).await;
    let mut socket = h.realtime(&format!("?ticketId={alice}")).await;
    assert_eq!(next_event(&mut socket).await["type"], "match.assigned");
    h.clock.advance(Duration::from_secs(7));
    h.register(server("gs-2", "j1", &[])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for ticket in [&alice, &bob] {
        let status = h.status(ticket).await;
        assert_eq!(status["status"], "assigned", "{status}");
        assert_eq!(status["assignment"]["landId"], land.as_str());
    }
    let metrics = metrics(&h).await;
    assert!(
        metrics.contains("matchplane_tickets_requeued_total 0"),
        "{metrics}"
    );
}
