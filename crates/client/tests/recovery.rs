//! The SDK when a game server is lost: `ticket.requeued` / `match.lost` / `ticket.failed`
//! over `/realtime`, status `failed`, and `join_land` re-checking a ticket whose land
//! refuses connections. A small stand-in control plane scripts what the real one says
//! after losing a server; the land that finally admits the player is a real game server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::routing::get;
use common::Game;
use matchplane_client::{
    ConnectOptions, Delivery, JoinError, LandError, MatchmakingClient, MatchmakingError,
    RecoveryPolicy,
};
use serde_json::{Value, json};

const TICKET: &str = "t-1";

#[derive(Default)]
struct Script {
    /// Answers of `GET /v1/matchmaking/status/:id`, in order; the last one repeats.
    statuses: Mutex<VecDeque<Value>>,
    status_calls: AtomicUsize,
    /// What every `/realtime` socket is sent once it opens (it then stays open).
    pushes: Mutex<Vec<Value>>,
}

async fn stand_in(script: Arc<Script>) -> String {
    let on_status = Arc::clone(&script);
    let on_realtime = script;
    let app = axum::Router::new()
        .route(
            "/v1/matchmaking/status/{ticket_id}",
            get(move || {
                let script = Arc::clone(&on_status);
                async move {
                    script.status_calls.fetch_add(1, Ordering::SeqCst);
                    let mut statuses = script.statuses.lock().unwrap();
                    let answer = if statuses.len() > 1 {
                        statuses.pop_front()
                    } else {
                        statuses.front().cloned()
                    };
                    Json(answer.unwrap_or(Value::Null))
                }
            }),
        )
        .route(
            "/realtime",
            get(move |upgrade: WebSocketUpgrade| {
                let pushes = on_realtime.pushes.lock().unwrap().clone();
                async move {
                    upgrade.on_upgrade(move |mut socket| async move {
                        for mut push in pushes {
                            push["v"] = json!(1);
                            if socket.send(Message::text(push.to_string())).await.is_err() {
                                return;
                            }
                        }
                        while let Some(Ok(_)) = socket.recv().await {}
                    })
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn assignment(id: &str, connect_url: &str, land_id: &str) -> Value {
    json!({"assignmentId": id, "matchToken": "token", "connectUrl": connect_url, "landId": land_id,
        "serverId": "game-1", "expiresAt": "2099-01-01T00:00:00Z"})
}

fn assigned(assignment: &Value) -> Value {
    json!({"type": "match.assigned", "data": {"ticketId": TICKET, "assignment": assignment}})
}

fn requeued() -> Value {
    json!({"type": "ticket.requeued", "data": {"ticketId": TICKET, "reason": "server_lost"}})
}

/// A `ws://` URL on a port nobody listens on: connections are refused, as a killed
/// server's are.
fn refusing_url(land_id: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("ws://127.0.0.1:{port}/game/counter?playerId=p1&landId={land_id}")
}

fn fast_policy() -> RecoveryPolicy {
    RecoveryPolicy {
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        same_land_attempts: 3,
        reassignment_timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn a_requeued_or_lost_match_keeps_the_wait_going_until_the_next_assignment() {
    let script = Arc::new(Script::default());
    let next = assignment("a-2", "ws://127.0.0.1:1/game/counter", "counter:new");
    *script.pushes.lock().unwrap() = vec![
        requeued(),
        json!({"type": "match.lost", "data": {"ticketId": TICKET, "landId": "counter:old", "reason": "server_lost"}}),
        assigned(&next),
    ];
    let client = MatchmakingClient::new(stand_in(script).await);
    let (found, delivery) = client
        .wait_for_assignment_via(TICKET, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(found.land_id, "counter:new");
    assert_eq!(delivery, Delivery::Push);
}

#[tokio::test]
async fn a_failed_ticket_is_a_typed_error_pushed_or_polled() {
    let script = Arc::new(Script::default());
    *script.pushes.lock().unwrap() = vec![
        json!({"type": "ticket.failed", "data": {"ticketId": TICKET, "reason": "server_lost"}}),
    ];
    script
        .statuses
        .lock()
        .unwrap()
        .push_back(json!({"ticketId": TICKET, "status": "failed", "reason": "server_lost"}));
    let client = MatchmakingClient::new(stand_in(Arc::clone(&script)).await);
    let expected = MatchmakingError::Failed {
        ticket_id: TICKET.to_owned(),
        reason: "server_lost".to_owned(),
    };
    let pushed = client
        .wait_for_assignment(TICKET, Duration::from_secs(10))
        .await;
    assert_eq!(pushed.unwrap_err(), expected);
    let polled = client
        .clone()
        .with_push(false)
        .wait_for_assignment(TICKET, Duration::from_secs(10))
        .await;
    assert_eq!(polled.unwrap_err(), expected);
    assert!(script.status_calls.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn join_land_rechecks_a_refusing_land_and_follows_the_new_assignment() {
    common::init_tracing();
    let game = Game::dev(common::fast_hero_defense()).await;
    let dead = assignment("a-1", &refusing_url("counter:old"), "counter:old");
    let live = assignment(
        "a-2",
        &format!(
            "ws://{}/game/counter?playerId=p1&landId=counter:new",
            game.addr
        ),
        "counter:new",
    );
    let script = Arc::new(Script::default());
    // The control plane first still names the dead land (it has not noticed yet), then
    // requeues the ticket and matches it again on a live server.
    script.statuses.lock().unwrap().extend([
        json!({"ticketId": TICKET, "status": "assigned", "assignment": dead}),
        json!({"ticketId": TICKET, "status": "queued"}),
    ]);
    *script.pushes.lock().unwrap() = vec![requeued(), assigned(&live)];
    let client = MatchmakingClient::new(stand_in(Arc::clone(&script)).await);

    let joined = client
        .join_land(
            TICKET,
            serde_json::from_value(dead).unwrap(),
            "p1",
            ConnectOptions::default(),
            &fast_policy(),
        )
        .await
        .unwrap();
    assert_eq!(joined.assignment.land_id, "counter:new");
    assert_eq!(joined.reassignments, 1);
    assert_eq!(joined.connection.land_id(), "counter:new");
    assert_eq!(script.status_calls.load(Ordering::SeqCst), 2);
    joined.connection.leave().await;
    game.stop().await;
}

#[tokio::test]
async fn join_land_gives_up_after_bounded_retries_of_the_same_land() {
    let dead = assignment("a-1", &refusing_url("counter:old"), "counter:old");
    let script = Arc::new(Script::default());
    script
        .statuses
        .lock()
        .unwrap()
        .push_back(json!({"ticketId": TICKET, "status": "assigned", "assignment": dead}));
    let client = MatchmakingClient::new(stand_in(Arc::clone(&script)).await);
    let err = client
        .join_land(
            TICKET,
            serde_json::from_value(dead).unwrap(),
            "p1",
            ConnectOptions::default(),
            &fast_policy(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, JoinError::Land(LandError::Connect { .. })),
        "{err:?}"
    );
    // Three attempts, a re-check between each two.
    assert_eq!(script.status_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn join_land_stops_when_the_ticket_failed() {
    let dead = assignment("a-1", &refusing_url("counter:old"), "counter:old");
    let script = Arc::new(Script::default());
    script
        .statuses
        .lock()
        .unwrap()
        .push_back(json!({"ticketId": TICKET, "status": "failed", "reason": "server_lost"}));
    let client = MatchmakingClient::new(stand_in(Arc::clone(&script)).await);
    let err = client
        .join_land(
            TICKET,
            serde_json::from_value(dead).unwrap(),
            "p1",
            ConnectOptions::default(),
            &fast_policy(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        JoinError::Matchmaking(MatchmakingError::Failed {
            ticket_id: TICKET.to_owned(),
            reason: "server_lost".to_owned(),
        })
    );
}
