//! `/realtime`: assignment push over a real WebSocket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Harness;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(h: &Harness, query: &str) -> Socket {
    let url = format!("ws://{}/realtime{query}", h.cp.local_addr());
    tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect")
        .0
}

/// Next JSON text message (skipping pings), or panic after a few seconds.
async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("no socket error");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("json"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

async fn send(socket: &mut Socket, value: Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .expect("send");
}

#[tokio::test]
async fn push_arrives_when_the_match_forms() {
    let h = Harness::start().await;
    h.register_server("game-1", "hero-defense").await;
    let alice = h
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["alice"]}))
        .await;
    let mut socket = connect(&h, &format!("?ticketId={alice}")).await;
    let first = next(&mut socket).await;
    assert_eq!(
        first,
        json!({"type": "subscribed", "v": 1, "data": {"ticketId": alice, "status": "queued"}})
    );

    h.enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["bob"]}))
        .await;
    let pushed = next(&mut socket).await;
    assert_eq!(pushed["type"], "match.assigned");
    assert_eq!(pushed["v"], 1);
    assert_eq!(pushed["data"]["ticketId"], alice.as_str());
    // The push carries exactly what polling returns.
    assert_eq!(
        pushed["data"]["assignment"],
        h.status(&alice).await["assignment"]
    );
}

#[tokio::test]
async fn already_assigned_ticket_is_pushed_at_once() {
    let h = Harness::start().await;
    h.register_server("game-1", "counter").await;
    let t = h
        .enqueue(json!({"queueKey": "counter", "members": ["solo"]}))
        .await;
    let polled = h.wait_for(&t, "assigned").await;
    let mut socket = connect(&h, &format!("?ticketId={t}")).await;
    let pushed = next(&mut socket).await;
    assert_eq!(pushed["type"], "match.assigned");
    assert_eq!(pushed["data"]["assignment"], polled["assignment"]);
}

#[tokio::test]
async fn many_sockets_watch_one_ticket() {
    let h = Harness::start().await;
    h.register_server("game-1", "hero-defense").await;
    let t = h
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["a"]}))
        .await;
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let mut socket = connect(&h, &format!("?ticketId={t}")).await;
        assert_eq!(next(&mut socket).await["type"], "subscribed");
        sockets.push(socket);
    }
    h.enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["b"]}))
        .await;
    for socket in &mut sockets {
        let pushed = next(socket).await;
        assert_eq!(pushed["type"], "match.assigned");
        assert_eq!(pushed["data"]["ticketId"], t.as_str());
    }
}

#[tokio::test]
async fn enqueue_subscribe_and_heartbeat_actions() {
    let h = Harness::start().await;
    h.register_server("game-1", "hero-defense").await;
    let mut socket = connect(&h, "").await;
    send(&mut socket, json!({"action": "heartbeat"})).await;
    let beat = next(&mut socket).await;
    assert_eq!(beat["type"], "heartbeat");
    assert!(beat["data"]["serverTime"].as_u64().is_some());

    send(
        &mut socket,
        json!({"action": "enqueue", "queueKey": "hero-defense:1v1", "members": ["alice"]}),
    )
    .await;
    let enqueued = next(&mut socket).await;
    assert_eq!(enqueued["type"], "enqueued");
    let ticket = enqueued["data"]["ticketId"].as_str().unwrap().to_owned();
    assert_eq!(h.status(&ticket).await["status"], "queued");
    assert_eq!(next(&mut socket).await["type"], "subscribed");

    // A second socket enqueues the opponent and subscribes to alice's ticket too.
    let mut other = connect(&h, "").await;
    send(
        &mut other,
        json!({"action": "subscribe", "ticketId": ticket}),
    )
    .await;
    assert_eq!(next(&mut other).await["type"], "subscribed");
    send(
        &mut other,
        json!({"action": "enqueue", "queueKey": "hero-defense:1v1", "members": ["bob"]}),
    )
    .await;
    // enqueued(bob), possibly subscribed(bob) if the match had not formed by the
    // time bob's status was read, then both tickets' match.assigned.
    let mut kinds = Vec::new();
    while kinds.iter().filter(|k| *k == "match.assigned").count() < 2 {
        let message = next(&mut other).await;
        kinds.push(message["type"].as_str().unwrap().to_owned());
        assert!(kinds.len() <= 4, "{kinds:?}");
    }
    assert_eq!(kinds[0], "enqueued", "{kinds:?}");
    assert_eq!(next(&mut socket).await["type"], "match.assigned");
}

/// A subscription is always answered: one to a ticket whose final state this
/// socket was already sent gets that state again (it used to get nothing, and
/// the ticket stayed watched).
#[tokio::test]
async fn a_ticket_subscribed_again_after_its_final_state_gets_it_again() {
    let h = Harness::start().await;
    let ticket = h
        .enqueue(json!({"queueKey": "hero-defense:5v5", "members": ["a"]}))
        .await;
    let mut socket = connect(&h, &format!("?ticketId={ticket}")).await;
    assert_eq!(next(&mut socket).await["type"], "subscribed");
    h.post("/v1/matchmaking/cancel", json!({"ticketId": ticket}))
        .await;
    let cancelled = json!({"type": "ticket.cancelled", "v": 1, "data": {"ticketId": ticket}});
    assert_eq!(next(&mut socket).await, cancelled);
    for _ in 0..2 {
        send(
            &mut socket,
            json!({"action": "subscribe", "ticketId": ticket}),
        )
        .await;
        assert_eq!(next(&mut socket).await, cancelled);
    }
    send(&mut socket, json!({"action": "heartbeat"})).await;
    assert_eq!(next(&mut socket).await["type"], "heartbeat");
}

/// One socket enqueueing for many players (a lobby service, the load generator)
/// gets every assignment exactly once, well past the socket's watch limit.
/// The debug build checks on every event that what the socket keeps to
/// deduplicate belongs to tickets it still watches.
#[tokio::test]
async fn a_socket_enqueueing_for_many_players_gets_each_assignment_once() {
    let h = Harness::start().await;
    h.register_server("game-1", "counter").await;
    let mut socket = connect(&h, "").await;
    // Rounds of 20 stay under the 32 watches a socket may have pending; the
    // assigned tickets of earlier rounds are unwatched to make room.
    let (rounds, per_round) = (5, 20);
    let mut enqueued = std::collections::HashSet::new();
    let mut assigned = std::collections::HashSet::new();
    for round in 0..rounds {
        for player in 0..per_round {
            send(
                &mut socket,
                json!({"action": "enqueue", "queueKey": "counter", "members": [format!("p{round}-{player}")]}),
            )
            .await;
        }
        while assigned.len() < (round + 1) * per_round {
            let message = next(&mut socket).await;
            let ticket = message["data"]["ticketId"]
                .as_str()
                .unwrap_or_else(|| panic!("no ticket id in {message}"))
                .to_owned();
            match message["type"].as_str() {
                Some("enqueued") => assert!(enqueued.insert(ticket), "{message}"),
                Some("subscribed") => assert!(enqueued.contains(&ticket), "{message}"),
                Some("match.assigned") => {
                    assert!(enqueued.contains(&ticket), "{message}");
                    assert!(assigned.insert(ticket), "sent twice: {message}");
                }
                _ => panic!("unexpected {message}"),
            }
        }
    }
    assert_eq!(enqueued.len(), rounds * per_round);
    send(&mut socket, json!({"action": "heartbeat"})).await;
    assert_eq!(next(&mut socket).await["type"], "heartbeat");
}

#[tokio::test]
async fn a_message_longer_than_the_read_buffer_is_read_whole() {
    let h = Harness::start().await;
    let mut socket = connect(&h, "").await;
    // 40 KiB of insignificant whitespace: five times the socket's 8 KiB read buffer,
    // under the 64 KiB body limit, so it arrives over several reads.
    let padding = " ".repeat(40 * 1024);
    let text = format!(
        r#"{{"action": "enqueue",{padding}"queueKey": "hero-defense:1v1", "members": ["carol"]}}"#
    );
    socket.send(Message::Text(text.into())).await.unwrap();
    let enqueued = next(&mut socket).await;
    assert_eq!(enqueued["type"], "enqueued", "{enqueued}");
    let ticket = enqueued["data"]["ticketId"].as_str().unwrap();
    assert_eq!(h.status(ticket).await["status"], "queued");
    // The socket still reads what follows.
    send(&mut socket, json!({"action": "heartbeat"})).await;
    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("heartbeat") {
        kinds.push(next(&mut socket).await["type"].as_str().unwrap().to_owned());
        assert!(kinds.len() <= 2, "{kinds:?}");
    }
}

#[tokio::test]
async fn cancel_and_expiry_are_pushed() {
    let h = Harness::start().await;
    let cancelled = h
        .enqueue(json!({"queueKey": "hero-defense:5v5", "members": ["a"]}))
        .await;
    let expiring = h
        .enqueue(json!({"queueKey": "hero-defense:5v5", "members": ["b"]}))
        .await;
    let mut socket = connect(&h, &format!("?ticketId={cancelled}")).await;
    assert_eq!(next(&mut socket).await["type"], "subscribed");
    send(
        &mut socket,
        json!({"action": "subscribe", "ticketId": expiring}),
    )
    .await;
    assert_eq!(next(&mut socket).await["type"], "subscribed");

    h.post("/v1/matchmaking/cancel", json!({"ticketId": cancelled}))
        .await;
    assert_eq!(
        next(&mut socket).await,
        json!({"type": "ticket.cancelled", "v": 1, "data": {"ticketId": cancelled}})
    );
    h.clock.advance(Duration::from_secs(601));
    assert_eq!(
        next(&mut socket).await,
        json!({"type": "ticket.expired", "v": 1, "data": {"ticketId": expiring}})
    );
}

#[tokio::test]
async fn invalid_messages_get_error_envelopes_then_a_close() {
    let h = Harness::start().await;
    let mut socket = connect(&h, "?ticketId=missing").await;
    let error = next(&mut socket).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["data"]["code"], "TICKET_NOT_FOUND");
    assert_eq!(error["data"]["ticketId"], "missing");

    socket.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(next(&mut socket).await["data"]["code"], "INVALID_JSON");
    send(&mut socket, json!({"action": "dance"})).await;
    assert_eq!(next(&mut socket).await["data"]["code"], "INVALID_REQUEST");
    send(&mut socket, json!({"action": "subscribe"})).await;
    assert_eq!(
        next(&mut socket).await["data"]["code"],
        "TICKET_ID_REQUIRED"
    );
    send(&mut socket, json!({"action": "enqueue", "members": ["a"]})).await;
    assert_eq!(
        next(&mut socket).await["data"]["code"],
        "QUEUE_KEY_REQUIRED"
    );

    // Flooding garbage ends in a close, and the server stays healthy.
    for _ in 0..10 {
        if socket.send(Message::Text("{".into())).await.is_err() {
            break;
        }
    }
    let mut closed = false;
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await
    {
        match message {
            Ok(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1008));
                closed = true;
                break;
            }
            Ok(_) => continue,
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "socket should be closed after repeated garbage");
    assert_eq!(h.get("/health").await.0, 200);
}

/// A control plane on the durable store (redb in `dir`): its writes wait for an
/// fsync, so requests are still in flight when their callers leave.
async fn durable_harness(dir: &tempfile::TempDir) -> Harness {
    let mut config = matchplane_control_plane::config::Config::ephemeral_for_tests();
    config.storage = matchplane_control_plane::config::StorageConfig::Durable {
        data_dir: dir.path().join("data"),
    };
    Harness::start_with(config).await
}

/// Sends a whole `POST path` with `body` and closes the connection without
/// waiting for the answer.
async fn post_and_hang_up(h: &Harness, path: &str, body: &Value) {
    let body = body.to_string();
    let mut stream = tokio::net::TcpStream::connect(h.cp.local_addr())
        .await
        .unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
}

/// Many enqueues sent at once on one socket (a lobby server queueing its players)
/// share the durable store's commits instead of waiting one fsync each, and every
/// answer still comes in the order of the messages: other actions sent behind an
/// enqueue in flight wait for it.
#[tokio::test]
async fn answers_keep_message_order_while_enqueues_are_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let h = durable_harness(&dir).await;
    let mut socket = connect(&h, "").await;
    let enqueue = |member: &str| json!({"action": "enqueue", "queueKey": "hero-defense:5v5", "members": [member]});
    let mut burst = Vec::new();
    for i in 0..12 {
        burst.push(enqueue(&format!("p{i}")));
    }
    burst.push(json!({"action": "heartbeat"}));
    burst.push(json!({"action": "subscribe", "ticketId": "no-such-ticket"}));
    burst.push(json!({"action": "enqueue", "members": ["no-queue"]}));
    burst.push(json!("not an action"));
    burst.push(enqueue("p12"));
    burst.push(json!({"action": "heartbeat"}));
    // One write: every message is already there when the socket reads the first.
    for message in &burst {
        socket
            .feed(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }
    socket.flush().await.unwrap();

    let mut answers = Vec::new();
    for _ in 0..(13 * 2 + 5) {
        answers.push(next(&mut socket).await);
    }
    let kinds: Vec<&str> = answers
        .iter()
        .map(|answer| answer["type"].as_str().unwrap())
        .collect();
    let mut expected = vec![];
    for _ in 0..12 {
        expected.extend(["enqueued", "subscribed"]);
    }
    expected.extend([
        "heartbeat",
        "error",
        "error",
        "error",
        "enqueued",
        "subscribed",
        "heartbeat",
    ]);
    assert_eq!(kinds, expected);
    // Each answer is its own message's: the i-th ticket is p{i}'s (queueing p{i}
    // again is refused naming the ticket that holds it).
    let enqueued: Vec<&Value> = answers
        .iter()
        .filter(|answer| answer["type"] == "enqueued")
        .collect();
    for (i, answer) in enqueued.iter().enumerate() {
        let ticket = answer["data"]["ticketId"].as_str().unwrap();
        let (status, refused) = h
            .post(
                "/v1/matchmaking/enqueue",
                json!({"queueKey": "hero-defense:5v5", "members": [format!("p{i}")]}),
            )
            .await;
        assert_eq!(status, 409, "{refused}");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(ticket), "p{i}: {message} names {ticket}");
    }
    assert_eq!(answers[25]["data"]["code"], "TICKET_NOT_FOUND");
    assert_eq!(answers[25]["data"]["ticketId"], "no-such-ticket");
    assert_eq!(answers[26]["data"]["code"], "QUEUE_KEY_REQUIRED");
    assert_eq!(answers[27]["data"]["code"], "INVALID_REQUEST");
}

/// Tickets still queued in the store, per the admin summary.
async fn queued_in_store(h: &Harness) -> u64 {
    let (_, summary) = h.get("/v1/admin/queue/summary").await;
    summary["queues"]
        .as_array()
        .map(|queues| {
            queues
                .iter()
                .map(|queue| queue["queued"].as_u64().unwrap())
                .sum()
        })
        .unwrap_or(0)
}

/// A caller that goes away with its enqueue in flight (a socket closed behind a
/// burst of `enqueue` actions, a client hanging up right after its POST) must not
/// leave a ticket that is stored but unknown to the matcher: every ticket the
/// store took gets matched.
#[tokio::test]
async fn callers_gone_mid_enqueue_strand_no_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let h = durable_harness(&dir).await;
    h.register_server("game-1", "hero-defense").await;
    for round in 0..5 {
        let mut socket = connect(&h, "").await;
        for i in 0..40 {
            let action = json!({"action": "enqueue", "queueKey": "hero-defense:1v1",
                "members": [format!("s{round}-{i}")]});
            socket
                .feed(Message::Text(action.to_string().into()))
                .await
                .unwrap();
        }
        socket.flush().await.unwrap();
        // Gone without a close handshake, while the enqueues are being stored.
        drop(socket);
        for i in 0..20 {
            let body =
                json!({"queueKey": "hero-defense:1v1", "members": [format!("r{round}-{i}")]});
            post_and_hang_up(&h, "/v1/matchmaking/enqueue", &body).await;
        }
    }
    // Whatever the store took is either matched or waiting in the matcher: queue as
    // many partners as there are waiting tickets, and the queue must empty.
    let mut previous = u64::MAX;
    let mut waiting = queued_in_store(&h).await;
    while waiting != previous {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (previous, waiting) = (waiting, queued_in_store(&h).await);
    }
    for i in 0..waiting {
        h.enqueue(json!({"queueKey": "hero-defense:1v1", "members": [format!("partner-{i}")]}))
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = queued_in_store(&h).await;
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} tickets stay queued: stored, but the matcher never heard of them"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cancel whose caller hangs up before the answer still reaches the sockets
/// watching the ticket.
#[tokio::test]
async fn a_cancel_whose_caller_hangs_up_is_still_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let h = durable_harness(&dir).await;
    let mut watcher = connect(&h, "").await;
    let mut tickets = Vec::new();
    for i in 0..30 {
        let ticket = h
            .enqueue(json!({"queueKey": "hero-defense:5v5", "members": [format!("c{i}")]}))
            .await;
        send(
            &mut watcher,
            json!({"action": "subscribe", "ticketId": ticket}),
        )
        .await;
        assert_eq!(next(&mut watcher).await["type"], "subscribed");
        tickets.push(ticket);
    }
    for ticket in &tickets {
        post_and_hang_up(&h, "/v1/matchmaking/cancel", &json!({ "ticketId": ticket })).await;
    }
    // A request the server had not read yet when its caller left may not run at
    // all; every cancel that did run must have been pushed.
    let cancelled_in_store = || async {
        let mut cancelled = std::collections::BTreeSet::new();
        for ticket in &tickets {
            if h.status(ticket).await["status"] == "cancelled" {
                cancelled.insert(ticket.clone());
            }
        }
        cancelled
    };
    let mut previous = cancelled_in_store().await;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = cancelled_in_store().await;
        if now == previous {
            break;
        }
        previous = now;
    }
    assert!(!previous.is_empty(), "no cancel ran at all");
    let mut pushed = std::collections::BTreeSet::new();
    while pushed.len() < previous.len() {
        let message = next(&mut watcher).await;
        assert_eq!(message["type"], "ticket.cancelled", "{message}");
        pushed.insert(message["data"]["ticketId"].as_str().unwrap().to_owned());
    }
    assert_eq!(pushed, previous);
}
