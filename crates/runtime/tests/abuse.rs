//! Abusive clients against a real game server on 127.0.0.1:0: every close the server
//! initiates reaches the client as a close frame with its code, even while the client
//! keeps sending; lands cannot be created beyond `max_lands`; a draining server lets
//! empty lands go at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Client, Socket, TestServer, closed, flood, leave, open_already_sending, test_limits};
use futures_util::{SinkExt as _, StreamExt as _};
use matchplane_contracts::game::{ClientMessage, Ping, ServerMessage, close_code, error_code};
use matchplane_runtime::counter::Counter;
use matchplane_runtime::{
    ConnectionLimits, DevAuthenticator, GameServerConfig, LandRegistry, LandSettings,
};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::{Bytes, Message};

fn counter_registry(dispose_after_empty: Duration) -> LandRegistry {
    let settings = LandSettings {
        tick_rate_hz: 0.0,
        sync_rate_hz: None,
        max_players: 4,
        dispose_after_empty,
        reconnect_grace: Duration::from_secs(10),
    };
    LandRegistry::new().register_with_settings::<Counter>("counter", (), settings)
}

async fn assert_healthy(server: &TestServer) {
    assert_eq!(server.get_json("/health").await["status"], "ok");
    let mut bob = server.connect("counter", "healthy", "bob").await;
    assert!(bob.action("increment", json!({})).await.ok);
    leave(bob).await;
}

async fn seated(server: &TestServer, player: &str) -> Socket {
    server.connect("counter", "room", player).await.socket
}

#[tokio::test]
async fn a_garbage_flood_receives_4400() {
    let server = TestServer::start(counter_registry(Duration::from_secs(5))).await;
    for attempt in 0..3 {
        let socket = seated(&server, &format!("ann{attempt}")).await;
        let outcome = flood(socket, || Message::text("\u{1}garbage{{{")).await;
        assert_eq!(outcome.code, Some(close_code::MALFORMED), "{outcome:?}");
        assert!(outcome.sent > 4, "{outcome:?}");
        assert!(
            outcome
                .errors
                .iter()
                .all(|code| code == error_code::MALFORMED_MESSAGE),
            "{outcome:?}"
        );
    }
    assert_healthy(&server).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_receives_4400() {
    let server = TestServer::start(counter_registry(Duration::from_secs(5))).await;
    let socket = seated(&server, "ann").await;
    let outcome = flood(socket, || {
        Message::Frame(Frame::from_payload(
            FrameHeader {
                opcode: OpCode::Data(Data::Text),
                ..FrameHeader::default()
            },
            Bytes::from_static(b"\xff\xfe not utf-8"),
        ))
    })
    .await;
    assert_eq!(outcome.code, Some(close_code::MALFORMED), "{outcome:?}");
    assert_eq!(outcome.errors, vec![error_code::MALFORMED_MESSAGE]);
    assert_healthy(&server).await;
    server.shutdown().await.unwrap();
}

fn small_messages() -> ConnectionLimits {
    ConnectionLimits {
        max_message_bytes: 1024,
        ..test_limits()
    }
}

#[tokio::test]
async fn oversize_messages_sent_in_a_stream_receive_1009() {
    let server =
        TestServer::start_with(counter_registry(Duration::from_secs(5)), small_messages()).await;
    let socket = seated(&server, "ann").await;
    // Above the 1 KiB limit but read whole: answered with `error` then 1009.
    let outcome = flood(socket, || Message::text("x".repeat(4000))).await;
    assert_eq!(
        outcome.code,
        Some(close_code::MESSAGE_TOO_BIG),
        "{outcome:?}"
    );
    assert_eq!(outcome.errors, vec![error_code::MESSAGE_TOO_BIG]);
    assert_healthy(&server).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_frame_beyond_the_hard_limit_receives_1009() {
    let server =
        TestServer::start_with(counter_registry(Duration::from_secs(5)), small_messages()).await;
    let socket = seated(&server, "ann").await;
    // 200 KiB: refused from its header (the hard limit is 64 KiB), never buffered.
    let (mut sink, mut stream) = socket.split();
    let sender = tokio::spawn(async move {
        let _ = sink.send(Message::text("y".repeat(200 * 1024))).await;
    });
    let seen = closed_split(&mut stream).await;
    assert_eq!(seen.0, Some(close_code::MESSAGE_TOO_BIG), "{seen:?}");
    assert_eq!(seen.1, vec![error_code::MESSAGE_TOO_BIG]);
    let _ = tokio::time::timeout(Duration::from_secs(10), sender).await;
    assert_healthy(&server).await;
    server.shutdown().await.unwrap();
}

async fn closed_split(
    stream: &mut futures_util::stream::SplitStream<Socket>,
) -> (Option<u16>, Vec<String>) {
    let mut errors = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => {
                if let Ok(ServerMessage::Error(error)) = ServerMessage::decode(text.as_str()) {
                    errors.push(error.code);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return (frame.map(|frame| u16::from(frame.code)), errors);
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (None, errors),
        }
    }
}

#[tokio::test]
async fn a_client_that_keeps_sending_past_its_rate_limit_receives_4429() {
    let limits = ConnectionLimits {
        messages_per_second: 10.0,
        burst: 20.0,
        ..test_limits()
    };
    let server = TestServer::start_with(counter_registry(Duration::from_secs(5)), limits).await;
    let socket = seated(&server, "ann").await;
    let ping = serde_json::to_string(&ClientMessage::Ping(Ping { t: json!(0) })).unwrap();
    let outcome = flood(socket, move || Message::text(ping.clone())).await;
    assert_eq!(outcome.code, Some(close_code::RATE_LIMITED), "{outcome:?}");
    assert_eq!(outcome.errors, vec![error_code::RATE_LIMITED]);
    assert!(outcome.sent > 20, "{outcome:?}");
    assert_healthy(&server).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refused_connection_that_keeps_sending_still_receives_its_close_code() {
    let server = TestServer::start(counter_registry(Duration::from_secs(5))).await;
    // No playerId under --auth none: 4401, while the client floods.
    let socket = Client::open(&server.url("counter", "landId=room")).await;
    let outcome = flood(socket, || Message::text("hello?")).await;
    assert_eq!(
        outcome.code,
        Some(close_code::UNAUTHENTICATED),
        "{outcome:?}"
    );
    let socket = Client::open(&server.url("chess", "playerId=ann")).await;
    let outcome = flood(socket, || Message::text("hello?")).await;
    assert_eq!(
        outcome.code,
        Some(close_code::UNKNOWN_LAND_TYPE),
        "{outcome:?}"
    );
    // The same with the client's frames already sent behind its upgrade request.
    for (path, code) in [
        ("/game/counter?landId=room", close_code::UNAUTHENTICATED),
        ("/game/chess?playerId=ann", close_code::UNKNOWN_LAND_TYPE),
    ] {
        let socket = open_already_sending(server.addr, path, 1000).await;
        let outcome = flood(socket, || Message::text("hello?")).await;
        assert_eq!(outcome.code, Some(code), "{path}: {outcome:?}");
    }
    assert_healthy(&server).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn ids_chosen_by_clients_are_bounded_in_length_and_charset() {
    let server = TestServer::start(counter_registry(Duration::from_secs(5))).await;
    let long = "a".repeat(129);
    for (query, code) in [
        (
            format!("landId=room&playerId={long}"),
            close_code::UNAUTHENTICATED,
        ),
        (
            "landId=room&playerId=a%20b".to_owned(),
            close_code::UNAUTHENTICATED,
        ),
        (
            "landId=room&playerId=%C3%A9".to_owned(),
            close_code::UNAUTHENTICATED,
        ),
        (format!("landId={long}&playerId=ann"), close_code::FORBIDDEN),
        (
            "landId=a%2Fb&playerId=ann".to_owned(),
            close_code::FORBIDDEN,
        ),
        (
            "landId=a%0Ab&playerId=ann".to_owned(),
            close_code::FORBIDDEN,
        ),
    ] {
        let mut socket = Client::open(&server.url("counter", &query)).await;
        assert_eq!(closed(&mut socket).await.code, Some(code), "{query}");
    }
    assert_eq!(server.server.manager().load().lands, 0);
    let ok = Client::connect(&server.url(
        "counter",
        &format!("landId=room&playerId={}", "b".repeat(128)),
    ))
    .await;
    assert_eq!(ok.land_id, "room");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn lands_beyond_max_lands_are_refused_with_4409_however_they_are_created() {
    let config = GameServerConfig {
        server_id: "small".into(),
        limits: test_limits(),
        max_lands: Some(2),
        ..GameServerConfig::default()
    };
    let server = TestServer::start_with_config(
        counter_registry(Duration::from_secs(60)),
        Arc::new(DevAuthenticator),
        config,
    )
    .await;
    let _first = server.connect("counter", "one", "ann").await;
    // Without landId, --auth none names a fresh land: it counts too.
    let _second = Client::connect(&server.url("counter", "playerId=ann")).await;
    for query in ["landId=three&playerId=bob", "playerId=bob"] {
        let mut socket = Client::open(&server.url("counter", query)).await;
        let refused = closed(&mut socket).await;
        assert_eq!(
            refused.code,
            Some(close_code::LAND_FULL_OR_CLOSED),
            "{query}"
        );
        assert_eq!(refused.errors, vec![error_code::SERVER_FULL], "{query}");
    }
    assert_eq!(server.server.manager().load().lands, 2);
    // Existing lands still take players, and the server stays healthy.
    let mut bob = server.connect("counter", "one", "bob").await;
    assert!(bob.action("increment", json!({})).await.ok);
    assert_eq!(server.get_json("/health").await["status"], "ok");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_draining_server_disposes_empty_lands_at_once() {
    // Empty lands would otherwise live for an hour.
    let server = TestServer::start(counter_registry(Duration::from_secs(3600))).await;
    let manager = server.server.manager().clone();
    let ann = server.connect("counter", "busy", "ann").await;
    let bob = server.connect("counter", "idle", "bob").await;
    leave(bob).await;
    let mut quiet = manager.lands();
    quiet.retain(|land| land.players == 0);
    assert_eq!(quiet.len(), 1, "idle is empty but alive");

    manager.start_draining();
    // The empty land goes now; the busy one keeps running for its player.
    tokio::time::timeout(Duration::from_secs(10), async {
        while manager.load().lands != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the empty land is disposed when draining starts");
    assert_eq!(manager.lands()[0].land_id, "busy");

    // When its last player leaves, the land goes at once too: the server is empty.
    leave(ann).await;
    assert!(manager.wait_until_empty(Duration::from_secs(10)).await);
    server.shutdown().await.unwrap();
}

/// A counter socket whose client has sent frames before the server could answer.
async fn already_sending(server: &TestServer, query: &str) -> Socket {
    open_already_sending(server.addr, &format!("/game/counter?{query}"), 1000).await
}

/// Unsolicited pongs: read and discarded by the server without a reply and without
/// counting against the rate limit, so the only close a seated flooder can get is
/// the one the test causes.
fn pong() -> Message {
    Message::Pong(Bytes::from_static(b"still here"))
}

#[tokio::test]
async fn refusals_of_a_full_land_or_server_reach_a_client_that_keeps_sending_with_4409() {
    let config = GameServerConfig {
        server_id: "small".into(),
        limits: test_limits(),
        max_lands: Some(1),
        ..GameServerConfig::default()
    };
    let server = TestServer::start_with_config(
        counter_registry(Duration::from_secs(60)),
        Arc::new(DevAuthenticator),
        config,
    )
    .await;
    let mut seated = Vec::new();
    for player in ["p1", "p2", "p3", "p4"] {
        seated.push(server.connect("counter", "room", player).await);
    }
    for (query, error) in [
        ("landId=room&playerId=p5", error_code::LAND_FULL),
        ("landId=other&playerId=p5", error_code::SERVER_FULL),
    ] {
        let socket = already_sending(&server, query).await;
        let outcome = flood(socket, || Message::text("let me in")).await;
        assert_eq!(
            outcome.code,
            Some(close_code::LAND_FULL_OR_CLOSED),
            "{query}: {outcome:?}"
        );
        assert_eq!(outcome.errors, vec![error], "{query}: {outcome:?}");
    }
    assert_eq!(server.server.manager().load().lands, 1);
    assert!(seated[0].action("increment", json!({})).await.ok);
    assert_eq!(server.get_json("/health").await["status"], "ok");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_connection_whose_seat_is_taken_over_while_it_keeps_sending_receives_4410() {
    let server = TestServer::start(counter_registry(Duration::from_secs(5))).await;
    for attempt in 0..3 {
        let old = seated(&server, "ann").await;
        let flooding = tokio::spawn(flood(old, pong));
        // Let the flood get going before the takeover.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut newer = server.connect("counter", "room", "ann").await;
        let outcome = flooding.await.unwrap();
        assert_eq!(
            outcome.code,
            Some(close_code::SESSION_REPLACED),
            "attempt {attempt}: {outcome:?}"
        );
        assert!(outcome.sent > 0, "{outcome:?}");
        // The seat went to the newer connection, which plays on.
        assert!(newer.action("increment", json!({})).await.ok);
        newer.barrier().await;
    }
    assert_healthy(&server).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_draining_server_refuses_clients_that_keep_sending_with_1001() {
    let server = TestServer::start(counter_registry(Duration::from_secs(60))).await;
    let mut ann = server.connect("counter", "room", "ann").await;
    server.server.manager().start_draining();
    // Neither a new land nor a new seat in a running one.
    for query in ["landId=elsewhere&playerId=bob", "landId=room&playerId=bob"] {
        let socket = already_sending(&server, query).await;
        let outcome = flood(socket, || Message::text("let me in")).await;
        assert_eq!(
            outcome.code,
            Some(close_code::GOING_AWAY),
            "{query}: {outcome:?}"
        );
        assert_eq!(
            outcome.errors,
            vec![error_code::DRAINING],
            "{query}: {outcome:?}"
        );
    }
    // The seated player plays on while the server drains.
    assert!(ann.action("increment", json!({})).await.ok);
    leave(ann).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_shutdown_reaches_players_that_keep_sending_with_land_closed_and_1001() {
    let server = TestServer::start(counter_registry(Duration::from_secs(60))).await;
    let mut floods = Vec::new();
    for (land, player) in [("one", "ann"), ("one", "bob"), ("two", "cid")] {
        let socket = server.connect("counter", land, player).await.socket;
        floods.push(tokio::spawn(flood(socket, pong)));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopped = tokio::spawn(server.shutdown());
    for flooding in floods {
        let outcome = flooding.await.unwrap();
        assert_eq!(outcome.code, Some(close_code::GOING_AWAY), "{outcome:?}");
        assert!(
            outcome.land_closed.is_some(),
            "land.closed first: {outcome:?}"
        );
        assert!(outcome.sent > 0, "{outcome:?}");
    }
    tokio::time::timeout(Duration::from_secs(20), stopped)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_let_go_while_its_land_plays_on() {
    let limits = ConnectionLimits {
        max_message_bytes: 64 * 1024,
        messages_per_second: 100_000.0,
        burst: 100_000.0,
        outbound_queue: 8,
        ..test_limits()
    };
    let settings = LandSettings {
        tick_rate_hz: 0.0,
        sync_rate_hz: None,
        max_players: 4,
        dispose_after_empty: Duration::from_secs(60),
        // A dropped seat is given up at once, so its leaving shows in the state.
        reconnect_grace: Duration::ZERO,
    };
    let registry = LandRegistry::new().register_with_settings::<Counter>("counter", (), settings);
    let server = TestServer::start_with(registry, limits).await;
    let mut stalled = server.connect("counter", "room", "stalled").await;
    let mut shouter = server.connect("counter", "room", "shouter").await;
    assert!(shouter.state["players"].get("stalled").is_some());

    // Every shout goes to both players; the stalled one reads nothing, so the
    // socket buffers fill, its writer blocks mid-write and its queue runs full.
    // The kill must get past the blocked write for the seat to be let go.
    let text = "x".repeat(48 * 1024);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut shouts = 0;
    while shouter.state["players"].get("stalled").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client still holds its seat after {shouts} shouts"
        );
        shouter.event("shout", json!({ "text": text })).await;
        shouts += 1;
        // The shouter reads everything, its own shout included.
        shouter.barrier().await;
        shouter.events.clear();
    }
    assert!(shouts > 8, "let go after only {shouts} shouts");
    assert!(shouter.action("increment", json!({})).await.ok);

    // The stalled client finds its connection ended once it reads again: the
    // shouts that fit in the buffers, then the end (the close frame, if it got in).
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        let mut shouted = 0;
        loop {
            match stalled.socket.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return (shouted, frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(Message::Text(text))) if text.contains("\"shouted\"") => shouted += 1,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (shouted, None),
            }
        }
    })
    .await
    .expect("the stalled client's connection stayed open");
    assert!(ended.0 < shouts, "{ended:?} of {shouts} shouts");
    assert!(
        matches!(ended.1, None | Some(close_code::SLOW_CONSUMER)),
        "{ended:?}"
    );
    assert_healthy(&server).await;
    server.shutdown().await.unwrap();
}
