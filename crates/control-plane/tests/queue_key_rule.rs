//! `--queue-key-rule`: how a queue key without a profile becomes teams, end to
//! end through the API, the matcher and `/realtime`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Harness, Socket, next_event};
use futures_util::SinkExt;
use matchplane_control_plane::Config;
use matchplane_matchmaker::QueueKeyRule;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn start(rule: QueueKeyRule) -> Harness {
    let mut config = Config::ephemeral_for_tests();
    config.engine.key_rule = rule;
    let h = Harness::start_with(config).await;
    h.register_server("game-1", "standard").await;
    h
}

/// Sends the `enqueue` action and returns the ticket's `match.assigned` data,
/// allowing the `enqueued` and `subscribed` messages that come before it.
async fn enqueue_and_await_assignment(socket: &mut Socket, member: &str) -> Value {
    let action = json!({"action": "enqueue", "queueKey": "standard:2v2", "members": [member]});
    socket
        .send(Message::Text(action.to_string().into()))
        .await
        .expect("send");
    let enqueued = next_event(socket).await;
    assert_eq!(enqueued["type"], "enqueued", "{enqueued}");
    let ticket = enqueued["data"]["ticketId"].as_str().unwrap().to_owned();
    loop {
        let event = next_event(socket).await;
        match event["type"].as_str() {
            Some("subscribed") => assert_eq!(event["data"]["ticketId"], ticket.as_str()),
            Some("match.assigned") => {
                assert_eq!(event["data"]["ticketId"], ticket.as_str(), "{event}");
                return event["data"].clone();
            }
            _ => panic!("unexpected event {event}"),
        }
    }
}

#[tokio::test]
async fn seed_rule_puts_two_solos_of_2v2_in_one_land_over_realtime() {
    let h = start(QueueKeyRule::Seed).await;
    let mut alice_socket = h.realtime("").await;
    let mut bob_socket = h.realtime("").await;
    let (alice, bob) = tokio::join!(
        enqueue_and_await_assignment(&mut alice_socket, "alice"),
        enqueue_and_await_assignment(&mut bob_socket, "bob"),
    );

    let (a, b) = (&alice["assignment"], &bob["assignment"]);
    assert_eq!(a["landId"], b["landId"], "{alice} {bob}");
    assert!(
        a["landId"].as_str().unwrap().starts_with("standard:"),
        "{a}"
    );
    assert_eq!(a["matchId"], b["matchId"]);
    assert_eq!(a["serverId"], "game-1");
    // One group per land: both players are on the same (only) team.
    assert_eq!(a["team"], b["team"]);
    assert_eq!(
        h.verify(a["matchToken"].as_str().unwrap()).await.sub,
        "alice"
    );
    assert_eq!(h.verify(b["matchToken"].as_str().unwrap()).await.sub, "bob");
    let polled = h.status(alice["ticketId"].as_str().unwrap()).await;
    assert_eq!(polled["status"], "assigned");
    assert_eq!(&polled["assignment"], a);
}

#[tokio::test]
async fn teams_rule_keeps_2v2_as_two_teams_of_two() {
    let h = start(QueueKeyRule::Teams).await;
    let alice = h
        .enqueue(json!({"queueKey": "standard:2v2", "members": ["alice"]}))
        .await;
    let bob = h
        .enqueue(json!({"queueKey": "standard:2v2", "members": ["bob"]}))
        .await;
    // Several match ticks pass: two players are only half of a 2v2.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.status(&alice).await["status"], "queued");
    assert_eq!(h.status(&bob).await["status"], "queued");

    let carol = h
        .enqueue(json!({"queueKey": "standard:2v2", "members": ["carol"]}))
        .await;
    let dave = h
        .enqueue(json!({"queueKey": "standard:2v2", "members": ["dave"]}))
        .await;
    let mut assignments = Vec::new();
    for ticket in [&alice, &bob, &carol, &dave] {
        assignments.push(h.wait_for(ticket, "assigned").await["assignment"].clone());
    }
    assert!(
        assignments
            .iter()
            .all(|a| a["landId"] == assignments[0]["landId"])
    );
    let mut teams: Vec<u64> = assignments
        .iter()
        .map(|a| a["team"].as_u64().unwrap())
        .collect();
    teams.sort_unstable();
    assert_eq!(teams, vec![0, 0, 1, 1]);
}

#[tokio::test]
async fn seed_rule_refuses_impossible_group_sizes_with_400() {
    let h = start(QueueKeyRule::Seed).await;
    for key in [
        "standard:0",
        "standard:0v0",
        "standard:5000",
        "standard:2v99999999999",
    ] {
        let (status, reply) = h
            .post(
                "/v1/matchmaking/enqueue",
                json!({"queueKey": key, "members": ["alice"]}),
            )
            .await;
        assert_eq!(status, 400, "{key}: {reply}");
        assert_eq!(
            reply["error"]["code"], "INVALID_QUEUE_KEY",
            "{key}: {reply}"
        );
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1..=1000"),
            "{reply}"
        );
    }
    // A party larger than the group is refused like any too-large party.
    let (status, reply) = h
        .post(
            "/v1/matchmaking/enqueue",
            json!({"queueKey": "standard:2v2", "members": ["a", "b", "c"]}),
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["code"], "TICKET_TOO_LARGE");
    // Anything not of the form `NvM` or `N` is one ticket per land.
    let solo = h
        .enqueue(json!({"queueKey": "standard:ranked", "members": ["alice"]}))
        .await;
    let land = h.wait_for(&solo, "assigned").await["assignment"]["landId"].clone();
    assert!(land.as_str().unwrap().starts_with("standard:"), "{land}");
    assert_eq!(h.get("/health").await.0, 200);
}

#[tokio::test]
async fn teams_rule_reads_out_of_range_modes_as_solo_as_before() {
    let h = start(QueueKeyRule::Teams).await;
    let solo = h
        .enqueue(json!({"queueKey": "standard:5000", "members": ["alice"]}))
        .await;
    h.wait_for(&solo, "assigned").await;
}
