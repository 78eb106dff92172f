//! The runtime behind real WebSocket clients on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Client, TestServer, closed, leave, read_message, test_limits};
use futures_util::{SinkExt as _, StreamExt as _};
use matchplane_contracts::game::{ClientMessage, Ping, ServerMessage, close_code, error_code};
use matchplane_runtime::counter::Counter;
use matchplane_runtime::{
    ActionError, ConnectionLimits, CreateInfo, Ctx, DevAuthenticator, GameServerConfig, Land,
    LandRegistry, LandSettings, Secret,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

fn counter_registry(settings: LandSettings) -> LandRegistry {
    LandRegistry::new().register_with_settings::<Counter>("counter", (), settings)
}

fn counter_settings() -> LandSettings {
    LandSettings {
        tick_rate_hz: 0.0,
        sync_rate_hz: None,
        max_players: 4,
        dispose_after_empty: Duration::from_secs(5),
        reconnect_grace: Duration::from_secs(10),
    }
}

/// A land that only counts ticks, to observe the schedule.
struct Clock {
    state: ClockState,
    busy_tick: Duration,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClockState {
    ticks: u64,
    elapsed_ms: u64,
    max_dt_ms: u64,
}

#[derive(Deserialize)]
#[serde(tag = "name", content = "payload", rename_all = "snake_case")]
enum ClockAction {
    Reset,
}

#[derive(Clone, Default)]
struct ClockConfig {
    sync_rate_hz: Option<f64>,
    /// How long each tick blocks its thread: on a single-threaded test runtime
    /// such a clock starves every other land, the way too many players starve a
    /// real server.
    busy_tick: Duration,
}

impl Land for Clock {
    type Config = ClockConfig;
    type State = ClockState;
    type PrivateView = ();
    type Action = ClockAction;
    type ActionOutput = u64;
    type ClientEvent = ClockAction;
    type ServerEvent = ();

    fn settings(config: &ClockConfig) -> LandSettings {
        LandSettings {
            tick_rate_hz: 10.0,
            sync_rate_hz: config.sync_rate_hz,
            ..LandSettings::default()
        }
    }

    fn on_create(config: &ClockConfig, _: &mut Ctx<'_, Self>, _: &CreateInfo) -> Self {
        Clock {
            state: ClockState {
                ticks: 0,
                elapsed_ms: 0,
                max_dt_ms: 0,
            },
            busy_tick: config.busy_tick,
        }
    }

    fn state(&self) -> &ClockState {
        &self.state
    }

    fn on_action(
        &mut self,
        _: &mut Ctx<'_, Self>,
        _: &String,
        _: ClockAction,
    ) -> Result<u64, ActionError> {
        Ok(self.state.ticks)
    }

    fn on_tick(&mut self, _: &mut Ctx<'_, Self>, dt: Duration) {
        std::thread::sleep(self.busy_tick);
        let dt_ms = u64::try_from(dt.as_millis()).unwrap();
        self.state.ticks += 1;
        self.state.elapsed_ms += dt_ms;
        self.state.max_dt_ms = self.state.max_dt_ms.max(dt_ms);
    }
}

#[tokio::test]
async fn join_gets_the_full_state() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let ann = server.connect("counter", "room-1", "ann").await;
    assert_eq!(ann.land_id, "room-1");
    assert_eq!(ann.player_id, "ann");
    assert_eq!(ann.seq, 0);
    assert_eq!(ann.state, json!({"count": 0, "players": {"ann": 0}}));

    let bob = server.connect("counter", "room-1", "bob").await;
    assert_eq!(
        bob.state,
        json!({"count": 0, "players": {"ann": 0, "bob": 0}})
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn actions_return_results_and_every_player_gets_patches() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let mut ann = server.connect("counter", "room", "ann").await;
    let mut bob = server.connect("counter", "room", "bob").await;
    ann.barrier().await;

    let result = ann.action("increment", json!({})).await;
    assert!(result.ok);
    assert_eq!(result.result, Some(json!({"count": 1})));
    // The patch is sent before the result, so the mirror already shows the change.
    assert_eq!(ann.state["count"], 1);

    let result = ann.action("add", json!({"amount": 41})).await;
    assert_eq!(result.result, Some(json!({"count": 42})));

    let failed = ann.action("add", json!({"amount": 5000})).await;
    assert!(!failed.ok);
    assert_eq!(failed.error.unwrap().code, "amount_out_of_range");

    let unknown = ann.action("explode", json!({})).await;
    assert_eq!(unknown.error.unwrap().code, error_code::UNKNOWN_ACTION);
    let invalid = ann.action("add", json!({"amount": "lots"})).await;
    assert_eq!(invalid.error.unwrap().code, error_code::INVALID_PAYLOAD);

    bob.barrier().await;
    assert_eq!(
        bob.state,
        json!({"count": 42, "players": {"ann": 2, "bob": 0}})
    );
    for client in [&mut ann, &mut bob] {
        let mirror = client.state.clone();
        assert_eq!(mirror, client.snapshot().await);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_reach_one_player_or_all() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let mut ann = server.connect("counter", "room", "ann").await;
    let mut bob = server.connect("counter", "room", "bob").await;
    let mut cid = server.connect("counter", "room", "cid").await;

    ann.event("shout", json!({"text": "hello"})).await;
    for client in [&mut ann, &mut bob, &mut cid] {
        let event = client.wait_event("shouted").await;
        assert_eq!(event.payload, json!({"from": "ann", "text": "hello"}));
    }

    ann.event("whisper", json!({"to": "cid", "text": "psst"}))
        .await;
    let event = cid.wait_event("whispered").await;
    assert_eq!(event.payload, json!({"from": "ann", "text": "psst"}));
    // ann's whisper was handled before these barriers reach the server.
    ann.barrier().await;
    bob.barrier().await;
    assert!(ann.events.is_empty() && bob.events.is_empty());

    ann.event("dance", json!({})).await;
    ann.barrier().await;
    assert_eq!(ann.errors, vec![error_code::UNKNOWN_EVENT.to_owned()]);
    server.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn ticks_run_at_a_fixed_rate_without_drift() {
    let registry = LandRegistry::new().register::<Clock>("clock", ClockConfig::default());
    let server = TestServer::start(registry).await;
    let mut client = server.connect("clock", "c1", "ann").await;
    let started = tokio::time::Instant::now();
    let first_ticks = client.state["ticks"].as_u64().unwrap();
    while client.state["ticks"].as_u64().unwrap() < first_ticks + 100 {
        client.next().await.unwrap();
        let ticks = client.state["ticks"].as_u64().unwrap();
        // Every tick is exactly one period on the virtual clock: no drift accumulates.
        assert_eq!(client.state["elapsedMs"].as_u64().unwrap(), ticks * 100);
        assert_eq!(client.state["maxDtMs"], 100);
    }
    assert!(started.elapsed() >= Duration::from_secs(10));
    let lands = server.get_json("/admin/lands").await;
    assert_eq!(lands["lands"][0]["landType"], "clock");
    assert!(lands["lands"][0]["ticks"].as_u64().unwrap() >= 100);
    server.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_sync_rate_below_the_tick_rate_sends_every_nth_tick_but_actions_at_once() {
    // 10 Hz ticks, 2.5 Hz sync: every fourth tick.
    let registry = LandRegistry::new().register::<Clock>(
        "clock",
        ClockConfig {
            sync_rate_hz: Some(2.5),
            ..ClockConfig::default()
        },
    );
    let server = TestServer::start(registry).await;
    let mut client = server.connect("clock", "c1", "ann").await;
    let mut last = client.state["ticks"].as_u64().unwrap();
    for _ in 0..10 {
        client.next().await.unwrap();
        let ticks = client.state["ticks"].as_u64().unwrap();
        assert_eq!(ticks, last + 4, "one patch per four ticks");
        last = ticks;
    }
    // Three ticks after the last sync, an action is answered and synced at once: the
    // result (the tick count) comes after the patch that shows it ...
    tokio::time::sleep(Duration::from_millis(350)).await;
    let result = client.action("reset", json!(null)).await;
    assert_eq!(result.result, Some(json!(last + 3)));
    assert_eq!(client.state["ticks"], last + 3, "the patch came first");
    // ... and the periodic syncs count again from there.
    client.next().await.unwrap();
    assert_eq!(client.state["ticks"], last + 7);
    assert_eq!(
        client.patches, 12,
        "no patch in between: {:?}",
        client.state
    );
    server.shutdown().await.unwrap();
}

/// Reads patches until one advances the clock by `step` ticks (those sent before
/// the stretch changed are still queued); returns the tick count it shows.
async fn next_step_of(client: &mut Client, step: u64) -> u64 {
    let mut last = client.state["ticks"].as_u64().unwrap();
    for _ in 0..1_000 {
        client.next().await.unwrap();
        let ticks = client.state["ticks"].as_u64().unwrap();
        if ticks - std::mem::replace(&mut last, ticks) == step {
            return ticks;
        }
    }
    panic!("no patch advanced the clock by {step} ticks");
}

async fn sync_stretch(server: &TestServer) -> u64 {
    server.get_json("/admin/lands").await["syncStretch"]
        .as_u64()
        .unwrap()
}

/// Polls until the server reports `stretch`; generous, as the box may be slow.
async fn await_stretch(server: &TestServer, stretch: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while sync_stretch(server).await != stretch {
        assert!(
            std::time::Instant::now() < deadline,
            "the stretch never reached {stretch}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_overloaded_server_sheds_sync_work_and_takes_it_back_once_on_time() {
    let clock = LandSettings {
        tick_rate_hz: 40.0,
        ..LandSettings::default()
    };
    let hog = ClockConfig {
        busy_tick: Duration::from_millis(300),
        ..ClockConfig::default()
    };
    let hog_settings = LandSettings {
        tick_rate_hz: 10.0,
        dispose_after_empty: Duration::ZERO,
        ..LandSettings::default()
    };
    let registry = LandRegistry::new()
        .register_with_settings::<Clock>("clock", ClockConfig::default(), clock)
        .register_with_settings::<Clock>("hog", hog, hog_settings);
    let config = GameServerConfig {
        limits: test_limits(),
        max_sync_stretch: 4,
        ..GameServerConfig::default()
    };
    let server = TestServer::start_with_config(registry, Arc::new(DevAuthenticator), config).await;
    let mut client = server.connect("clock", "c1", "ann").await;
    assert_eq!(sync_stretch(&server).await, 1);
    let hog = server.connect("hog", "h1", "hoggy").await;

    // Ticks now run hundreds of ms late: the stretch doubles up to the max (4) ...
    await_stretch(&server, 4).await;
    // ... and the clock sends one patch per four ticks, once the patches sent before
    // (one per tick, then per two) have been read.
    let mut last = next_step_of(&mut client, 4).await;
    for _ in 0..2 {
        client.next().await.unwrap();
        assert_eq!(client.state["ticks"], last + 4);
        last += 4;
    }
    // An action waits for the next due sync too (no sync of its own: patches still
    // come every four ticks), and its result still comes after the patch showing it.
    for _ in 0..3 {
        let result = client.action("reset", json!(null)).await;
        let handled_at = result.result.unwrap().as_u64().unwrap();
        let shown = client.state["ticks"].as_u64().unwrap();
        assert!(
            handled_at <= shown,
            "result at {handled_at}, state at {shown}"
        );
        assert_eq!(
            (shown - last) % 4,
            0,
            "synced at {shown}, last due sync at {last}"
        );
        last = shown;
    }

    // Without the hog the ticks are on time again and the stretch walks back to 1.
    leave(hog).await;
    await_stretch(&server, 1).await;
    let last = next_step_of(&mut client, 1).await;
    client.next().await.unwrap();
    assert_eq!(client.state["ticks"], last + 1, "every tick again");
    server.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn empty_lands_are_disposed_after_the_configured_delay() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let mut ann = server.connect("counter", "room", "ann").await;
    ann.action("increment", json!(null)).await;
    leave(ann).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        server.server.manager().load().lands,
        1,
        "kept during dispose_after_empty"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(server.server.manager().load().lands, 0);

    let bob = server.connect("counter", "room", "bob").await;
    assert_eq!(
        bob.state,
        json!({"count": 0, "players": {"bob": 0}}),
        "a fresh land"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn reconnect_within_grace_resumes_and_after_grace_the_seat_is_gone() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let mut ann = server.connect("counter", "room", "ann").await;
    let mut bob = server.connect("counter", "room", "bob").await;
    ann.action("increment", json!({})).await;
    drop(ann); // no close frame: a dropped connection

    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut ann = server.connect("counter", "room", "ann").await;
    assert_eq!(
        ann.state,
        json!({"count": 1, "players": {"ann": 1, "bob": 0}}),
        "seat kept"
    );
    ann.action("increment", json!({})).await;

    drop(ann);
    tokio::time::sleep(Duration::from_secs(11)).await;
    bob.barrier().await;
    assert_eq!(
        bob.state,
        json!({"count": 2, "players": {"bob": 0}}),
        "seat released"
    );
    let ann = server.connect("counter", "room", "ann").await;
    assert_eq!(ann.state["players"]["ann"], 0, "a new seat");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_new_connection_takes_over_a_live_seat() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let mut first = server.connect("counter", "room", "ann").await;
    let mut second = server.connect("counter", "room", "ann").await;
    let closed = first.closed().await;
    assert_eq!(closed.code, Some(close_code::SESSION_REPLACED));
    assert!(second.action("increment", json!({})).await.ok);
    assert_eq!(second.state["players"], json!({"ann": 1}));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_land_refuses_with_4409() {
    let settings = LandSettings {
        max_players: 2,
        ..counter_settings()
    };
    let server = TestServer::start(counter_registry(settings)).await;
    let _ann = server.connect("counter", "room", "ann").await;
    let _bob = server.connect("counter", "room", "bob").await;
    let mut socket = Client::open(&server.url("counter", "landId=room&playerId=cid")).await;
    let closed = closed(&mut socket).await;
    assert_eq!(closed.code, Some(close_code::LAND_FULL_OR_CLOSED));
    assert_eq!(closed.errors, vec![error_code::LAND_FULL.to_owned()]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_land_types_and_missing_identity_are_refused() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let mut socket = Client::open(&server.url("chess", "landId=x&playerId=ann")).await;
    let refused = closed(&mut socket).await;
    assert_eq!(refused.code, Some(close_code::UNKNOWN_LAND_TYPE));
    assert_eq!(
        refused.errors,
        vec![error_code::UNKNOWN_LAND_TYPE.to_owned()]
    );

    let mut socket = Client::open(&server.url("counter", "landId=x")).await;
    assert_eq!(
        closed(&mut socket).await.code,
        Some(close_code::UNAUTHENTICATED)
    );

    // Without landId, --auth none creates a fresh land and names it in join.ok.
    let ann = Client::connect(&server.url("counter", "playerId=ann")).await;
    assert!(ann.land_id.starts_with("counter:"), "{}", ann.land_id);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_messages_get_errors_then_4400_and_others_are_unaffected() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let mut bob = server.connect("counter", "room", "bob").await;
    let mut ann = server.connect("counter", "room", "ann").await;
    ann.send_raw("not json").await;
    ann.send_raw(r#"{"type":"teleport","v":1,"data":{}}"#).await;
    ann.send_raw(r#"{"type":"ping","v":7,"data":{"t":1}}"#)
        .await;
    ann.send_raw(r#"{"type":"action","v":1,"data":{"name":"increment"}}"#)
        .await;
    let closed = ann.closed().await;
    assert_eq!(closed.code, Some(close_code::MALFORMED));
    assert_eq!(
        closed.errors,
        vec![
            error_code::MALFORMED_MESSAGE,
            error_code::UNKNOWN_MESSAGE,
            error_code::UNSUPPORTED_VERSION,
            error_code::MALFORMED_MESSAGE,
        ]
    );
    assert!(bob.action("increment", json!({})).await.ok);
    bob.barrier().await;
    assert_eq!(
        bob.state["players"],
        json!({"bob": 1}),
        "kicked players lose their seat"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_messages_get_an_error_and_1009() {
    let limits = ConnectionLimits {
        max_message_bytes: 1024,
        ..test_limits()
    };
    let server = TestServer::start_with(counter_registry(counter_settings()), limits).await;
    let mut ann = server.connect("counter", "room", "ann").await;
    let text = "x".repeat(2000);
    ann.event("shout", json!({ "text": text })).await;
    let closed = ann.closed().await;
    assert_eq!(closed.code, Some(close_code::MESSAGE_TOO_BIG));
    assert_eq!(closed.errors, vec![error_code::MESSAGE_TOO_BIG.to_owned()]);
    let mut bob = server.connect("counter", "room", "bob").await;
    assert!(bob.action("increment", json!({})).await.ok);
    server.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn flooding_gets_an_error_and_4429() {
    let limits = ConnectionLimits {
        messages_per_second: 10.0,
        burst: 20.0,
        ..test_limits()
    };
    let server = TestServer::start_with(counter_registry(counter_settings()), limits).await;
    let mut ann = server.connect("counter", "room", "ann").await;
    let ping = serde_json::to_string(&ClientMessage::Ping(Ping { t: json!(0) })).unwrap();
    for _ in 0..100 {
        ann.send_raw(&ping).await;
    }
    let closed = ann.closed().await;
    assert_eq!(closed.code, Some(close_code::RATE_LIMITED));
    assert_eq!(closed.errors, vec![error_code::RATE_LIMITED.to_owned()]);
    let mut bob = server.connect("counter", "room", "bob").await;
    assert!(bob.action("increment", json!({})).await.ok);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let mut ann = server.connect("counter", "room", "ann").await;
    ann.send(&ClientMessage::Ping(Ping { t: json!(1234) }))
        .await;
    assert!(matches!(ann.next().await, Some(ServerMessage::Pong(pong)) if pong.t == json!(1234)));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_and_admin_report_lands_and_players() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let _ann = server.connect("counter", "room-a", "ann").await;
    let _bob = server.connect("counter", "room-a", "bob").await;
    let _cid = server.connect("counter", "room-b", "cid").await;
    let health = server.get_json("/health").await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["serverId"], "test-server");
    assert_eq!(health["lands"], 2);
    assert_eq!(health["players"], 3);
    let admin = server.get_json("/admin/lands").await;
    let lands = admin["lands"].as_array().unwrap();
    assert_eq!(lands.len(), 2);
    assert_eq!(lands[0]["landId"], "room-a");
    assert_eq!(lands[0]["players"], 2);
    let load = server.server.manager().load();
    assert_eq!(load.land_ids_by_type["counter"], vec!["room-a", "room-b"]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_tells_players_land_closed_then_closes_with_1001() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let mut ann = server.connect("counter", "room", "ann").await;
    let manager = server.server.manager().clone();
    let url = server.url("counter", "landId=other&playerId=bob");
    let serve = tokio::spawn(server.shutdown());
    let closed = ann.closed().await;
    assert_eq!(closed.code, Some(close_code::GOING_AWAY));
    assert_eq!(closed.land_closed.unwrap().reason, "server_shutdown");
    serve.await.unwrap().unwrap();
    assert!(manager.is_draining());
    assert_eq!(manager.load().lands, 0);
    assert!(
        tokio_tungstenite::connect_async(url).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn draining_refuses_new_players_but_keeps_lands_running() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let mut ann = server.connect("counter", "room", "ann").await;
    server.server.manager().start_draining();
    let mut socket = Client::open(&server.url("counter", "landId=room&playerId=bob")).await;
    assert_eq!(closed(&mut socket).await.code, Some(close_code::GOING_AWAY));
    let mut socket = Client::open(&server.url("counter", "landId=new&playerId=bob")).await;
    assert_eq!(closed(&mut socket).await.code, Some(close_code::GOING_AWAY));
    assert!(ann.action("increment", json!({})).await.ok);
    assert!(
        !server
            .server
            .manager()
            .wait_until_empty(Duration::from_millis(10))
            .await
    );
    server.shutdown().await.unwrap();
}

/// Admits like `--auth none` but marks every land as a match's (as a match
/// token would), so its id must never be reused.
struct MatchAuth;

#[async_trait::async_trait]
impl matchplane_runtime::Authenticator for MatchAuth {
    async fn authenticate(
        &self,
        request: &matchplane_runtime::AdmissionRequest<'_>,
    ) -> Result<matchplane_runtime::Admission, matchplane_runtime::Rejection> {
        let mut admission = matchplane_runtime::DevAuthenticator
            .authenticate(request)
            .await?;
        admission.match_id = Some("match-1".into());
        Ok(admission)
    }
}

#[tokio::test(start_paused = true)]
async fn a_match_land_that_is_gone_cannot_be_reopened() {
    let server = TestServer::start_with_auth(
        counter_registry(counter_settings()),
        test_limits(),
        Arc::new(MatchAuth),
    )
    .await;
    let ann = server.connect("counter", "counter:m1", "ann").await;
    leave(ann).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        server.server.manager().load().lands,
        0,
        "disposed when empty"
    );
    // The same land id (e.g. a still-valid token) is refused, not reopened.
    let mut socket = Client::open(&server.url("counter", "landId=counter:m1&playerId=ann")).await;
    let refused = read_message(&mut socket).await;
    assert!(
        matches!(&refused, Some(ServerMessage::Error(error)) if error.code == "land_closed"),
        "{refused:?}"
    );
    assert_eq!(server.server.manager().load().lands, 0);
    server.shutdown().await.unwrap();
}

/// A raw HTTP/1.1 GET: status, lower-cased head, body. Headers are `name: value` lines.
async fn http_get(server: &TestServer, path: &str, headers: &[&str]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

const ADMIN_TOKEN: &str = "runtime-test-admin-token";
const NEXT_ADMIN_TOKEN: &str = "runtime-test-admin-token-2";

#[tokio::test]
async fn admin_routes_need_a_configured_admin_token_and_health_stays_open() {
    let config = GameServerConfig {
        server_id: "test-server".into(),
        limits: test_limits(),
        admin_tokens: vec![
            Secret::new(ADMIN_TOKEN, "admin token").unwrap(),
            Secret::new(NEXT_ADMIN_TOKEN, "admin token").unwrap(),
        ],
        ..GameServerConfig::default()
    };
    let server = TestServer::start_with_config(
        counter_registry(counter_settings()),
        Arc::new(DevAuthenticator),
        config,
    )
    .await;
    let _ann = server.connect("counter", "room-a", "ann").await;
    for refused in [
        vec![],
        vec!["Authorization: Bearer wrong-token-0123456789"],
        vec!["Authorization: Basic cnVudGltZS10ZXN0LWFkbWluLXRva2Vu"],
    ] {
        // Loopback is no excuse once a token is configured.
        let (status, head, body) = http_get(&server, "/admin/lands", &refused).await;
        assert_eq!(status, 401, "{refused:?}: {head}\n{body}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{body}");
        assert!(
            !body.to_string().contains("room-a"),
            "nothing leaks: {body}"
        );
    }
    for token in [ADMIN_TOKEN, NEXT_ADMIN_TOKEN] {
        let header = format!("Authorization: Bearer {token}");
        let (status, _, body) = http_get(&server, "/admin/lands", &[&header]).await;
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["lands"][0]["landId"], "room-a");
    }
    let (status, _, _) = http_get(&server, "/health", &[]).await;
    assert_eq!(status, 200, "/health needs no credential");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_an_admin_token_admin_answers_direct_loopback_clients_only() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let (status, _, body) = http_get(&server, "/admin/lands", &[]).await;
    assert_eq!(status, 200, "a loopback peer is the operator: {body}");
    // A proxy on this host (nginx in front of /admin/) connects from loopback for
    // remote clients; neither its forwarding headers nor a bearer make them local.
    for forwarded in [
        "X-Forwarded-For: 203.0.113.7",
        "X-Forwarded-For: 127.0.0.1",
        "Forwarded: for=203.0.113.7",
        "X-Real-IP: 203.0.113.7",
    ] {
        let (status, head, body) = http_get(&server, "/admin/lands", &[forwarded]).await;
        assert_eq!(status, 401, "{forwarded}: {body}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(body.contains("UNAUTHENTICATED"), "{body}");
    }
    let (status, _, _) = http_get(&server, "/health", &["X-Forwarded-For: 203.0.113.7"]).await;
    assert_eq!(status, 200);
    server.shutdown().await.unwrap();
}

/// A land whose `nap` action blocks its keeper for a while: a server busy elsewhere.
struct Sleepy {
    state: SleepyState,
}

#[derive(Serialize)]
struct SleepyState {
    naps: u32,
}

#[derive(Deserialize)]
#[serde(tag = "name", content = "payload", rename_all = "snake_case")]
enum SleepyAction {
    Nap,
}

/// Longer than a client waits for its close to be answered.
const NAP: Duration = Duration::from_secs(4);

impl Land for Sleepy {
    type Config = ();
    type State = SleepyState;
    type PrivateView = ();
    type Action = SleepyAction;
    type ActionOutput = u32;
    type ClientEvent = SleepyAction;
    type ServerEvent = ();

    fn settings(_: &()) -> LandSettings {
        LandSettings {
            tick_rate_hz: 0.0,
            ..LandSettings::default()
        }
    }

    fn on_create(_: &(), _: &mut Ctx<'_, Self>, _: &CreateInfo) -> Self {
        Sleepy {
            state: SleepyState { naps: 0 },
        }
    }

    fn state(&self) -> &SleepyState {
        &self.state
    }

    fn on_action(
        &mut self,
        _: &mut Ctx<'_, Self>,
        _: &String,
        _: SleepyAction,
    ) -> Result<u32, ActionError> {
        std::thread::sleep(NAP);
        self.state.naps += 1;
        Ok(self.state.naps)
    }
}

/// Sends Close(1000) and waits (2 s at most) for what comes back before the socket ends.
async fn close_and_await_answer(socket: &mut common::Socket) -> Option<u16> {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    socket
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return Ok(frame),
                Some(Ok(_)) => {}
                other => return Err(format!("{other:?}")),
            }
        }
    })
    .await
    .expect("the server answers the close within 2 s");
    let frame = answer.expect("a close frame back, not EOF or a reset");
    frame.map(|frame| u16::from(frame.code))
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame_and_releases_the_seat() {
    let server = TestServer::start(counter_registry(counter_settings())).await;
    let mut bob = server.connect("counter", "room", "bob").await;
    let mut ann = server.connect("counter", "room", "ann").await;
    // Patches for ann pile up unread while she closes: the server is busy writing to her.
    for _ in 0..20 {
        bob.action("increment", json!(null)).await;
    }
    assert_eq!(close_and_await_answer(&mut ann.socket).await, Some(1000));

    // A consented leave: the seat goes now, not after reconnect_grace (10 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        bob.barrier().await;
        if bob.state["players"] == json!({"bob": 20}) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ann's seat is still held: {}",
            bob.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_close_is_answered_while_its_land_is_busy() {
    let registry = LandRegistry::new().register::<Sleepy>("sleepy", ());
    let server = TestServer::start(registry).await;
    let mut ann = server.connect("sleepy", "room", "ann").await;
    // The keeper is stuck in ann's action when her close arrives.
    ann.send(
        &ClientMessage::decode(r#"{"type":"action","v":1,"data":{"requestId":"1","name":"nap"}}"#)
            .unwrap(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(close_and_await_answer(&mut ann.socket).await, Some(1000));
    server.shutdown().await.unwrap();
}
