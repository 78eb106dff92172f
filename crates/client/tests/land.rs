//! The land half of the SDK: mirror, actions, events, gaps, reconnects, closes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{CuttableProxy, Game, Planes, fast_hero_defense, init_tracing};
use futures_util::{SinkExt as _, StreamExt as _};
use matchplane_client::contracts::game::{ClientMessage, ServerMessage, close_code};
use matchplane_client::{
    ActionError, ConnectOptions, LandConnection, LandError, LandEvent, MatchmakingClient,
    StateSync, dev_land_url,
};
use matchplane_hero_defense::HeroDefenseConfig;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

async fn dev_connect(game: &Game, land_type: &str, land: &str, player: &str) -> LandConnection {
    dev_connect_sync(game, land_type, land, player, StateSync::Patch).await
}

async fn dev_connect_sync(
    game: &Game,
    land_type: &str,
    land: &str,
    player: &str,
    sync: StateSync,
) -> LandConnection {
    let url = dev_land_url(&game.http_url(), land_type, Some(land), player);
    let options = ConnectOptions {
        sync,
        ..ConnectOptions::default()
    };
    LandConnection::connect_url(&url, options).await.unwrap()
}

/// Carol joins counter land `land`: her `join.ok` is the server's current view,
/// which every mirror must reach (once it shows her) without a gap, having
/// applied at least `changes` patches. Returns Carol and that view.
async fn mirrors_equal_a_fresh_join(
    game: &Game,
    land: &str,
    mirrors: [&LandConnection; 2],
    changes: u64,
) -> (LandConnection, Value) {
    let carol = dev_connect(game, "counter", land, "carol").await;
    let server_view = carol.state();
    for mirror in mirrors {
        let mirrored = mirror
            .wait_for_state(|state| state["players"]["carol"].is_number(), WAIT)
            .await
            .unwrap();
        assert_eq!(mirrored, server_view);
        assert_eq!(mirror.stats().gaps, 0);
        assert!(mirror.stats().patches_applied >= changes);
    }
    (carol, server_view)
}

#[tokio::test]
async fn actions_resolve_by_request_id_and_failures_are_typed() {
    init_tracing();
    let game = Game::dev(fast_hero_defense()).await;
    let ann = dev_connect(&game, "counter", "room-a", "ann").await;
    // Many actions in flight at once: each caller gets its own result.
    let handles: Vec<_> = (1..=20)
        .map(|amount| {
            let land = ann.handle();
            tokio::spawn(async move { land.action("add", json!({ "amount": amount })).await })
        })
        .collect();
    let mut counts = Vec::new();
    for handle in handles {
        counts.push(handle.await.unwrap().unwrap()["count"].as_i64().unwrap());
    }
    counts.sort_unstable();
    counts.dedup();
    assert_eq!(counts.len(), 20, "every result is distinct: {counts:?}");
    // The result arrives after the patch carrying its effect.
    let result = ann.action("increment", Value::Null).await.unwrap();
    assert_eq!(ann.state()["count"], result["count"]);
    assert_eq!(result["count"], 211);

    let err = ann
        .action("add", json!({"amount": 5000}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("amount_out_of_range"));
    let err = ann.action("dance", Value::Null).await.unwrap_err();
    assert!(
        matches!(&err, ActionError::Failed { code, .. } if code == "unknown_action"),
        "{err:?}"
    );
    ann.leave().await;
    game.stop().await;
}

#[tokio::test]
async fn a_patch_watch_fires_on_the_patch_that_carries_the_value_even_without_a_mirror() {
    init_tracing();
    let game = Game::dev(fast_hero_defense()).await;
    let url = dev_land_url(&game.http_url(), "counter", Some("room-watch"), "ann");
    let ann = LandConnection::connect_url(&url, ConnectOptions::lightweight())
        .await
        .unwrap();
    let before = ann.stats().bytes_received;
    let not_yet = ann.watch_patch("/count", json!(7));
    let seen = ann.watch_patch("/count", json!(5));
    let sent_at = tokio::time::Instant::now();
    let result = ann.action("add", json!({"amount": 5})).await.unwrap();
    assert_eq!(result["count"], 5);
    // The patch comes before the result, so the watch has fired by now.
    let mut seen = seen;
    let at = seen
        .try_recv()
        .expect("the patch setting /count to 5 was seen");
    assert!(at >= sent_at);
    let mut not_yet = not_yet;
    assert!(not_yet.try_recv().is_err(), "/count never was 7");
    // Without a mirror the state stays at join.ok, and no resync was asked for.
    assert_eq!(ann.state()["count"], 0);
    assert_eq!(ann.stats().gaps, 0);
    assert!(ann.stats().bytes_received > before);
    ann.leave().await;
    // The connection ended: a watch still waiting is answered with an error.
    assert!(not_yet.await.is_err());
    game.stop().await;
}

#[tokio::test]
async fn the_mirror_matches_the_servers_view() {
    init_tracing();
    let game = Game::dev(fast_hero_defense()).await;
    let mut ann = dev_connect(&game, "counter", "room-m", "ann").await;
    let bob = dev_connect(&game, "counter", "room-m", "bob").await;
    let (a, b) = (ann.handle(), bob.handle());
    let ann_task = tokio::spawn(async move {
        for _ in 0..30 {
            a.action("increment", Value::Null).await.unwrap();
        }
    });
    let bob_task = tokio::spawn(async move {
        for i in 0..30 {
            b.action("add", json!({"amount": i})).await.unwrap();
        }
    });
    ann_task.await.unwrap();
    bob_task.await.unwrap();
    bob.send_event("shout", json!({"text": "hi"})).unwrap();
    let expected = 30 + (0..30).sum::<i64>();
    ann.wait_for_state(|state| state["count"] == expected, WAIT)
        .await
        .unwrap();

    let (carol, server_view) = mirrors_equal_a_fresh_join(&game, "room-m", [&ann, &bob], 30).await;
    assert_eq!(server_view["players"]["ann"], 30);
    assert_eq!(server_view["players"]["bob"], 30);
    // Events arrive on the stream.
    let mut shouted = None;
    for _ in 0..10 {
        match tokio::time::timeout(WAIT, ann.next_event()).await.unwrap() {
            Some(LandEvent::Event(event)) if event.name == "shouted" => {
                shouted = Some(event.payload);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(shouted, Some(json!({"from": "bob", "text": "hi"})));
    for land in [ann, bob, carol] {
        land.leave().await;
    }
    game.stop().await;
}

#[tokio::test]
async fn a_ticking_land_ends_with_a_mirror_matching_its_result() {
    init_tracing();
    let game = Game::dev(fast_hero_defense()).await;
    let mut ann = dev_connect(&game, "hero-defense", "hd-1", "ann").await;
    let moved = ann
        .action("move", json!({"x": 50.0, "y": 40.0}))
        .await
        .unwrap();
    assert_eq!(moved, json!({"x": 50.0, "y": 40.0}));
    let err = ann
        .action("upgrade", json!({"stat": "damage"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("not_enough_gold"));

    let closed = ann.wait_closed(Duration::from_secs(30)).await.unwrap();
    let result = closed.result.clone().unwrap();
    assert!(["victory", "defeat"].contains(&closed.reason.as_str()));
    // The final patch precedes land.closed, so the mirror shows the end of the game.
    let state = ann.state();
    assert_eq!(state["phase"], result["outcome"]);
    assert_eq!(state["kills"], result["kills"]);
    assert_eq!(state["base"]["hp"], result["baseHp"]);
    assert_eq!(state["me"]["gold"], result["players"]["ann"]["gold"]);
    assert_eq!(ann.stats().gaps, 0);
    assert!(ann.stats().patches_applied > 5);

    let mut saw_wave = false;
    let mut saw_closed = false;
    while let Some(event) = tokio::time::timeout(WAIT, ann.next_event()).await.unwrap() {
        match event {
            LandEvent::Event(event) if event.name == "wave_started" => saw_wave = true,
            LandEvent::Closed(event) => {
                assert_eq!(event, closed);
                saw_closed = true;
            }
            _ => {}
        }
    }
    assert!(saw_wave && saw_closed);
    assert!(ann.is_ended());
    assert_eq!(
        ann.action("move", json!({"x": 1, "y": 1}))
            .await
            .unwrap_err(),
        ActionError::LandClosed
    );
    // A finished land refuses late joiners with a typed rejection.
    let url = dev_land_url(&game.http_url(), "hero-defense", Some("hd-1"), "late");
    let err = LandConnection::connect_url(&url, ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LandError::Rejected {
                close_code: Some(close_code::LAND_FULL_OR_CLOSED),
                ..
            }
        ),
        "{err:?}"
    );
    game.stop().await;
}

/// Twenty rounds of ann adding (1, 2, … 20) and bob incrementing on counter; returns
/// the bytes each received meanwhile.
async fn twenty_rounds(ann: &LandConnection, bob: &LandConnection) -> (u64, u64) {
    let (before_ann, before_bob) = (ann.stats().bytes_received, bob.stats().bytes_received);
    for amount in 1..=20 {
        ann.action("add", json!({ "amount": amount }))
            .await
            .unwrap();
        bob.action("increment", Value::Null).await.unwrap();
    }
    (
        ann.stats().bytes_received - before_ann,
        bob.stats().bytes_received - before_bob,
    )
}

/// `?sync=merge`: the same state as `state.patch` gives, in fewer bytes; an
/// encoding the server does not know is refused with 4400 before anything else.
#[tokio::test]
async fn merge_sync_mirrors_the_same_state_in_fewer_bytes() {
    init_tracing();
    let game = Game::dev(fast_hero_defense()).await;
    let ann = dev_connect_sync(&game, "counter", "room-sync", "ann", StateSync::Merge).await;
    let bob = dev_connect(&game, "counter", "room-sync", "bob").await;
    let (merged_bytes, patched_bytes) = twenty_rounds(&ann, &bob).await;
    let (_carol, server_view) =
        mirrors_equal_a_fresh_join(&game, "room-sync", [&ann, &bob], 40).await;
    assert_eq!(server_view["count"], 210 + 20);
    assert!(
        merged_bytes < patched_bytes,
        "merge {merged_bytes} B, patch {patched_bytes} B"
    );

    let url = dev_land_url(&game.http_url(), "counter", Some("room-sync"), "ann");
    let unknown = format!("{url}&sync=zip");
    let err = LandConnection::connect_url(&unknown, ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LandError::Rejected { close_code: Some(close_code::MALFORMED), code, .. } if code == "unsupported_sync"),
        "{err:?}"
    );
    game.stop().await;
}

/// `?sync=binary`: the same state again, in binary frames that spell each member
/// name once per land; a player joining later gets the key table in its `join.ok`.
#[tokio::test]
async fn binary_sync_mirrors_the_same_state_in_the_fewest_bytes() {
    init_tracing();
    let game = Game::dev(fast_hero_defense()).await;
    let connect = |player, sync| dev_connect_sync(&game, "counter", "room-bin", player, sync);
    let ann = connect("ann", StateSync::Binary).await;
    let bob = connect("bob", StateSync::Merge).await;
    let (binary_bytes, merged_bytes) = twenty_rounds(&ann, &bob).await;
    // Dave joins late: the names ann's frames numbered come in his join.ok.
    let dave = connect("dave", StateSync::Binary).await;
    dave.action("increment", Value::Null).await.unwrap();
    let (_carol, server_view) =
        mirrors_equal_a_fresh_join(&game, "room-bin", [&ann, &bob], 40).await;
    assert_eq!(server_view["count"], 210 + 20 + 1);
    assert_eq!(
        dave.wait_for_state(|state| state == &server_view, WAIT)
            .await
            .unwrap(),
        server_view
    );
    assert_eq!(dave.stats().gaps, 0);
    assert!(
        binary_bytes < merged_bytes,
        "binary {binary_bytes} B, merge {merged_bytes} B"
    );
    game.stop().await;
}

/// A hero-defense game played to its end by a binary, a merge and a patch player
/// (with a binary one joining mid-game): floats, numbered enemies, private gold and
/// removed members all arrive, and every mirror ends on the same shared state.
#[tokio::test]
async fn binary_sync_plays_hero_defense_to_the_same_end() {
    init_tracing();
    let config = HeroDefenseConfig {
        waves: 2,
        enemies_first_wave: 4,
        ..fast_hero_defense()
    };
    let game = Game::dev(config).await;
    let connect = |player, sync| dev_connect_sync(&game, "hero-defense", "hd-bin", player, sync);
    let mut players = vec![
        connect("ann", StateSync::Binary).await,
        connect("bob", StateSync::Merge).await,
        connect("cid", StateSync::Patch).await,
    ];
    for (index, player) in players.iter().enumerate() {
        let spot = 40.0 + 10.0 * index as f64;
        player
            .action("move", json!({"x": spot, "y": 55.5}))
            .await
            .unwrap();
    }
    players[0]
        .wait_for_state(
            |state| state["enemies"].as_object().is_some_and(|e| !e.is_empty()),
            WAIT,
        )
        .await
        .unwrap();
    players.push(connect("dee", StateSync::Binary).await);
    players[3]
        .action("move", json!({"x": 50.25, "y": 45}))
        .await
        .unwrap();
    let mut ends = Vec::new();
    for player in &players {
        player.wait_closed(Duration::from_secs(30)).await.unwrap();
        let mut state = player.state();
        assert!(state["me"]["gold"].is_number(), "{state}");
        state.as_object_mut().unwrap().remove("me");
        assert_eq!(player.stats().gaps, 0);
        assert!(player.stats().patches_applied > 20, "{:?}", player.stats());
        ends.push(state);
    }
    assert!(ends[0]["heroes"]["dee"]["x"].is_number(), "{}", ends[0]);
    for end in &ends[1..] {
        assert_eq!(end, &ends[0]);
    }
    game.stop().await;
}

/// A scripted server: binary frames extend the key table, one that does not decode
/// is a gap, and the snapshot that repairs it brings a table of its own.
#[tokio::test]
async fn undecodable_binary_frames_are_repaired_with_snapshots() {
    init_tracing();
    let (addr, server) = scripted_server(|mut socket| async move {
        let s = &mut socket;
        send_frame(
            s,
            "join.ok",
            json!({"landId": "l", "playerId": "p", "seq": 0, "state": {"a": 1}, "keys": ["a"]}),
        )
        .await;
        // seq 1 defines entry 1 = "b": {"a": 2, "b": "a"} (a string from the table).
        let frame = [0x01, 1, 1, 1, 1, b'b', 0x00, 0x05, 4, 0x04, 0x09, 0, 0x03];
        s.send(Message::Binary(frame.to_vec().into()))
            .await
            .unwrap();
        // seq 2 names entry 7, which nobody defined.
        let frame = [0x01, 2, 0, 0x1c, 0x02, 0x03];
        s.send(Message::Binary(frame.to_vec().into()))
            .await
            .unwrap();
        expect_sync_request(s).await;
        send_frame(
            s,
            "state.snapshot",
            json!({"seq": 2, "state": {"z": 0}, "keys": ["z", "y"]}),
        )
        .await;
        // seq 3: {"y": true}, "y" being entry 1 of the snapshot's table.
        let frame = [0x01, 3, 0, 0x04, 0x02, 0x03];
        s.send(Message::Binary(frame.to_vec().into()))
            .await
            .unwrap();
        socket
    })
    .await;
    let options = ConnectOptions {
        reconnect: None,
        sync: StateSync::Binary,
        ..ConnectOptions::default()
    };
    let land = LandConnection::connect_url(&format!("ws://{addr}/game/x"), options)
        .await
        .unwrap();
    let state = land
        .wait_for_state(|state| state == &json!({"z": 0, "y": true}), WAIT)
        .await
        .unwrap();
    assert_eq!(state, json!({"z": 0, "y": true}));
    assert_eq!(land.stats().gaps, 1);
    assert_eq!(land.stats().resyncs, 1);
    assert_eq!(land.stats().patches_applied, 2);
    land.leave().await;
    server.await.unwrap();
}

#[tokio::test]
async fn refusals_are_typed() {
    init_tracing();
    let planes = Planes::start(fast_hero_defense()).await;
    let url = format!("ws://{}/game/counter?landId=x", planes.game.addr);
    let err = LandConnection::connect_url(&url, ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LandError::Rejected { close_code: Some(close_code::UNAUTHENTICATED), code, .. } if code == "unauthenticated"),
        "{err:?}"
    );
    let err =
        LandConnection::connect_url("ws://127.0.0.1:1/game/counter", ConnectOptions::default())
            .await
            .unwrap_err();
    assert!(matches!(err, LandError::Connect { .. }), "{err:?}");
    planes.stop().await;
}

#[tokio::test]
async fn a_dropped_connection_comes_back_with_the_same_token() {
    init_tracing();
    let planes = Planes::start(fast_hero_defense()).await;
    let proxy = CuttableProxy::start(planes.game.addr).await;
    let client = MatchmakingClient::new(planes.cp_url());
    let ann = client.enqueue_solo("counter:1v1", "ann").await.unwrap();
    let bob = client.enqueue_solo("counter:1v1", "bob").await.unwrap();
    let mut ann_assignment = client
        .wait_for_assignment(&ann.ticket_id, WAIT)
        .await
        .unwrap();
    let bob_assignment = client
        .wait_for_assignment(&bob.ticket_id, WAIT)
        .await
        .unwrap();
    // Ann reaches the game server through a link that will break.
    ann_assignment.connect_url = ann_assignment.connect_url.replace(
        &format!(":{}/", planes.game.addr.port()),
        &format!(":{}/", proxy.addr.port()),
    );
    let mut ann_land = LandConnection::connect(&ann_assignment, "ann")
        .await
        .unwrap();
    let bob_land = LandConnection::connect(&bob_assignment, "bob")
        .await
        .unwrap();
    ann_land.action("increment", Value::Null).await.unwrap();

    proxy.cut();
    let mut events = Vec::new();
    for _ in 0..10 {
        let event = tokio::time::timeout(WAIT, ann_land.next_event())
            .await
            .unwrap()
            .unwrap();
        let reconnected = matches!(event, LandEvent::Reconnected { .. });
        events.push(event);
        if reconnected {
            break;
        }
    }
    assert!(
        matches!(
            events.first(),
            Some(LandEvent::Disconnected {
                will_reconnect: true,
                ..
            })
        ),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(LandEvent::Reconnected { .. })),
        "{events:?}"
    );
    assert_eq!(ann_land.stats().reconnects, 1);

    // The seat was kept (ann's change count survives) and the land goes on.
    bob_land.action("add", json!({"amount": 10})).await.unwrap();
    let state = ann_land
        .wait_for_state(|state| state["count"] == 11, WAIT)
        .await
        .unwrap();
    assert_eq!(state["players"]["ann"], 1);
    assert_eq!(
        ann_land.action("increment", Value::Null).await.unwrap(),
        json!({"count": 12})
    );
    bob_land
        .wait_for_state(|state| state["count"] == 12, WAIT)
        .await
        .unwrap();
    ann_land.leave().await;
    bob_land.leave().await;
    planes.stop().await;
}

type ServerSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn send_frame(socket: &mut ServerSocket, kind: &str, data: Value) {
    let frame = json!({"type": kind, "v": 1, "data": data});
    assert!(ServerMessage::decode(&frame.to_string()).is_ok(), "{frame}");
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// A one-connection WebSocket server on 127.0.0.1 that plays `script` to its client,
/// then keeps the socket open until the client leaves.
async fn scripted_server<F, Script>(
    script: F,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    F: FnOnce(ServerSocket) -> Script + Send + 'static,
    Script: std::future::Future<Output = ServerSocket> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        let mut socket = script(socket).await;
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    });
    (addr, server)
}

async fn expect_sync_request(socket: &mut ServerSocket) {
    loop {
        if let Message::Text(text) = socket.next().await.unwrap().unwrap() {
            assert_eq!(
                ClientMessage::decode(text.as_str()).unwrap(),
                ClientMessage::SyncRequest
            );
            return;
        }
    }
}

/// A scripted server that skips a sequence number and sends a patch that does not apply.
#[tokio::test]
async fn sequence_gaps_and_bad_patches_are_repaired_with_snapshots() {
    init_tracing();
    let (addr, server) = scripted_server(|mut socket| async move {
        let s = &mut socket;
        send_frame(
            s,
            "join.ok",
            json!({"landId": "l", "playerId": "p", "seq": 0, "state": {"a": 1}}),
        )
        .await;
        send_frame(
            s,
            "state.patch",
            json!({"seq": 1, "ops": [{"op": "replace", "path": "/a", "value": 2}]}),
        )
        .await;
        send_frame(
            s,
            "state.patch",
            json!({"seq": 3, "ops": [{"op": "replace", "path": "/a", "value": 4}]}),
        )
        .await;
        expect_sync_request(s).await;
        // Ignored: it arrives before the snapshot that answers the sync.request.
        send_frame(
            s,
            "state.patch",
            json!({"seq": 4, "ops": [{"op": "add", "path": "/x", "value": 0}]}),
        )
        .await;
        send_frame(
            s,
            "state.snapshot",
            json!({"seq": 4, "state": {"a": 4, "b": true}}),
        )
        .await;
        send_frame(
            s,
            "state.patch",
            json!({"seq": 5, "ops": [{"op": "add", "path": "/c", "value": 1}]}),
        )
        .await;
        send_frame(
            s,
            "state.patch",
            json!({"seq": 6, "ops": [{"op": "remove", "path": "/missing"}]}),
        )
        .await;
        expect_sync_request(s).await;
        send_frame(s, "state.snapshot", json!({"seq": 6, "state": {"a": 6}})).await;
        socket
    })
    .await;

    let options = ConnectOptions {
        reconnect: None,
        ..ConnectOptions::default()
    };
    let mut land = LandConnection::connect_url(&format!("ws://{addr}/game/x"), options)
        .await
        .unwrap();
    let state = land
        .wait_for_state(|state| state == &json!({"a": 6}), WAIT)
        .await
        .unwrap();
    assert_eq!(state, json!({"a": 6}));
    assert_eq!(land.seq(), 6);
    let stats = land.stats();
    assert_eq!(stats.gaps, 2);
    assert_eq!(stats.resyncs, 2);
    assert_eq!(stats.patches_applied, 2, "seq 1 and seq 5");
    let mut resynced = Vec::new();
    while resynced.len() < 2 {
        match tokio::time::timeout(WAIT, land.next_event()).await.unwrap() {
            Some(LandEvent::Resynced { seq }) => resynced.push(seq),
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(resynced, vec![4, 6]);
    land.leave().await;
    server.await.unwrap();
}
