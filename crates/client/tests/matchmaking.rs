//! The matchmaking half of the SDK against a real control plane and game server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Planes, PrefixProxy, fast_hero_defense, init_tracing};
use matchplane_client::contracts::ErrorCode;
use matchplane_client::contracts::matchmaking::{EnqueueRequest, TicketStatus};
use matchplane_client::contracts::realtime::RealtimeEvent;
use matchplane_client::{
    Delivery, LandConnection, MAX_TICKETS_PER_SOCKET, MatchmakingClient, MatchmakingError,
    PollBackoff,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn push_delivers_assignments_that_admit_every_player() {
    init_tracing();
    let planes = Planes::start(fast_hero_defense()).await;
    let client = MatchmakingClient::new(planes.cp_url());
    let alice = client.enqueue_solo("counter:1v1", "alice").await.unwrap();
    assert_eq!(alice.status, TicketStatus::Queued);

    let waiting = {
        let client = client.clone();
        let ticket = alice.ticket_id.clone();
        tokio::spawn(async move { client.wait_for_assignment_via(&ticket, WAIT).await })
    };
    let bob = client.enqueue_solo("counter:1v1", "bob").await.unwrap();
    let (alice_assignment, via) = waiting.await.unwrap().unwrap();
    assert_eq!(via, Delivery::Push);
    let bob_assignment = client
        .wait_for_assignment(&bob.ticket_id, WAIT)
        .await
        .unwrap();
    assert_eq!(alice_assignment.land_id, bob_assignment.land_id);
    assert_eq!(alice_assignment.match_id, bob_assignment.match_id);
    // What push delivered is what status reports.
    let status = client.status(&alice.ticket_id).await.unwrap();
    assert_eq!(status.status, TicketStatus::Assigned);
    assert_eq!(status.assignment.as_ref(), Some(&alice_assignment));

    // The tokens get both players into the same land, verified against the JWKS.
    let alice_land = LandConnection::connect(&alice_assignment, "alice")
        .await
        .unwrap();
    let bob_land = LandConnection::connect(&bob_assignment, "bob")
        .await
        .unwrap();
    assert_eq!(alice_land.land_id(), alice_assignment.land_id);
    assert_eq!(bob_land.player_id(), "bob");
    alice_land
        .wait_for_state(|state| state["players"]["bob"].is_number(), WAIT)
        .await
        .unwrap();
    assert_eq!(
        alice_land
            .action("add", json!({"amount": 3}))
            .await
            .unwrap(),
        json!({"count": 3})
    );
    bob_land
        .wait_for_state(|state| state["count"] == 3, WAIT)
        .await
        .unwrap();
    alice_land.leave().await;
    bob_land.leave().await;
    planes.stop().await;
}

#[tokio::test]
async fn polling_takes_over_behind_an_lb_without_websockets() {
    init_tracing();
    let planes = Planes::start(fast_hero_defense()).await;
    let lb = PrefixProxy::start(&planes.cp_url()).await;
    let client = MatchmakingClient::new(lb.base_url()).with_poll_backoff(PollBackoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        factor: 2.0,
    });
    assert!(client.realtime_url().ends_with("/match/realtime"));
    let ann = client.enqueue_solo("counter:1v1", "ann").await.unwrap();
    let waiting = {
        let client = client.clone();
        let ticket = ann.ticket_id.clone();
        tokio::spawn(async move { client.wait_for_assignment_via(&ticket, WAIT).await })
    };
    // Let the first polls find the ticket still queued.
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.enqueue_solo("counter:1v1", "ben").await.unwrap();
    let (assignment, via) = waiting.await.unwrap().unwrap();
    assert_eq!(via, Delivery::Poll);
    assert!(assignment.land_id.starts_with("counter:"));

    // Push disabled on purpose polls too, even where the socket works.
    let direct = MatchmakingClient::new(planes.cp_url()).with_push(false);
    let (again, via) = direct
        .wait_for_assignment_via(&ann.ticket_id, WAIT)
        .await
        .unwrap();
    assert_eq!((again, via), (assignment, Delivery::Poll));
    planes.stop().await;
}

#[tokio::test]
async fn waits_end_with_typed_errors() {
    init_tracing();
    let planes = Planes::start(fast_hero_defense()).await;
    let client = MatchmakingClient::new(planes.cp_url());

    let lonely = client.enqueue_solo("counter:2v2", "lonely").await.unwrap();
    let err = client
        .wait_for_assignment(&lonely.ticket_id, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, MatchmakingError::Timeout { .. }), "{err:?}");

    let waiting = {
        let client = client.clone();
        let ticket = lonely.ticket_id.clone();
        tokio::spawn(async move { client.wait_for_assignment(&ticket, WAIT).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cancelled = client.cancel(&lonely.ticket_id).await.unwrap();
    assert!(cancelled.cancelled);
    assert_eq!(
        waiting.await.unwrap().unwrap_err(),
        MatchmakingError::Cancelled {
            ticket_id: lonely.ticket_id.clone()
        }
    );
    // Polling reaches the same verdict.
    let err = client
        .clone()
        .with_push(false)
        .wait_for_assignment(&lonely.ticket_id, WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, MatchmakingError::Cancelled { .. }), "{err:?}");

    let err = client.status("no-such-ticket").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TicketNotFound));
    let err = client
        .wait_for_assignment("no-such-ticket", WAIT)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TicketNotFound));

    let err = client
        .enqueue(&EnqueueRequest {
            queue_key: Some("bad key!".into()),
            members: Some(vec!["x".into()]),
            ..EnqueueRequest::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MatchmakingError::Api {
                status: 400,
                code: Some(ErrorCode::InvalidQueueKey),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    let unreachable = MatchmakingClient::new("http://127.0.0.1:1");
    let err = unreachable.status("t").await.unwrap_err();
    assert!(matches!(err, MatchmakingError::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
    let err = unreachable
        .enqueue_solo("counter:1v1", "p")
        .await
        .unwrap_err();
    assert!(matches!(err, MatchmakingError::Transport { .. }), "{err:?}");
    // A base that is not a URL: the enqueue says so, with the URL it tried.
    let garbled = MatchmakingClient::new("not a url");
    let err = garbled.enqueue_solo("counter:1v1", "p").await.unwrap_err();
    assert!(matches!(err, MatchmakingError::Transport { .. }), "{err:?}");
    assert!(err.to_string().contains("not a url"), "{err}");
    planes.stop().await;
}

#[tokio::test]
async fn one_socket_watches_many_tickets() {
    init_tracing();
    let planes = Planes::start(fast_hero_defense()).await;
    let client = MatchmakingClient::new(planes.cp_url());
    let mut watch = client.watch().await.unwrap();
    let mut tickets = Vec::new();
    for i in 0..MAX_TICKETS_PER_SOCKET {
        let ticket = client
            .enqueue_solo("counter:1v1", &format!("p{i}"))
            .await
            .unwrap();
        watch.subscribe(&ticket.ticket_id).unwrap();
        tickets.push(ticket.ticket_id);
    }
    let mut assigned = std::collections::BTreeSet::new();
    while assigned.len() < tickets.len() {
        match tokio::time::timeout(WAIT, watch.next_event())
            .await
            .unwrap()
        {
            Some(RealtimeEvent::MatchAssigned(pushed)) => {
                assigned.insert(pushed.ticket_id);
            }
            Some(RealtimeEvent::Subscribed(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: std::collections::BTreeSet<_> = tickets.into_iter().collect();
    assert_eq!(assigned, expected);

    // Over the socket too: the answer names the new ticket, now watched by this socket.
    watch
        .subscriber()
        .enqueue(EnqueueRequest {
            queue_key: Some("counter:1v1".into()),
            members: Some(vec!["late".into()]),
            ..EnqueueRequest::default()
        })
        .unwrap();
    match tokio::time::timeout(WAIT, watch.next_event())
        .await
        .unwrap()
    {
        Some(RealtimeEvent::Enqueued(ticket)) => assert_eq!(ticket.status, TicketStatus::Queued),
        other => panic!("unexpected {other:?}"),
    }
    watch.close().await;
    planes.stop().await;
}
