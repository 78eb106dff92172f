//! hero-defense played end to end by scripted WebSocket clients on paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../runtime/tests/common/mod.rs"]
mod common;

use common::{Client, TestServer, closed};
use matchplane_contracts::game::{
    ActionRequest, ClientMessage, LandClosed, ServerMessage, close_code,
};
use matchplane_hero_defense::{HeroDefense, HeroDefenseConfig};
use matchplane_runtime::LandRegistry;
use serde_json::{Value, json};

#[derive(Debug, Default)]
struct BotReport {
    waves_started: Vec<u64>,
    max_gold: u64,
    upgrades: usize,
    failed_actions: Vec<String>,
    land_closed: Option<LandClosed>,
    close_code: Option<u16>,
    saw_foreign_gold: bool,
}

fn nearest_enemy(state: &Value, me: &str) -> Option<(f64, f64)> {
    let hero = &state["heroes"][me];
    let (hx, hy) = (hero["x"].as_f64()?, hero["y"].as_f64()?);
    state["enemies"]
        .as_object()?
        .values()
        .filter_map(|enemy| Some((enemy["x"].as_f64()?, enemy["y"].as_f64()?)))
        .min_by(|a, b| {
            let da = (a.0 - hx).hypot(a.1 - hy);
            let db = (b.0 - hx).hypot(b.1 - hy);
            da.total_cmp(&db)
        })
}

/// Chases the nearest enemy and buys damage upgrades whenever it can afford one.
async fn play(mut bot: Client) -> BotReport {
    let mut report = BotReport::default();
    let mut request = 0u64;
    let mut send = |name: &str, payload: Value| {
        request += 1;
        ClientMessage::Action(ActionRequest {
            request_id: format!("{name}-{request}"),
            name: name.to_owned(),
            payload,
        })
    };
    let mut patches = 0u64;
    let mut upgrade_pending = false;
    while let Some(message) = bot.next().await {
        match message {
            ServerMessage::StatePatch(_) => {
                patches += 1;
                let gold = bot.state["me"]["gold"].as_u64().unwrap_or(0);
                report.max_gold = report.max_gold.max(gold);
                let heroes = bot.state["heroes"].as_object().unwrap();
                report.saw_foreign_gold |= heroes.values().any(|hero| hero.get("gold").is_some());
                let cost = bot.state["me"]["damageUpgradeCost"].as_u64();
                if !upgrade_pending && cost.is_some_and(|cost| gold >= cost) {
                    upgrade_pending = true;
                    let message = send("upgrade", json!({"stat": "damage"}));
                    bot.send(&message).await;
                } else if patches.is_multiple_of(4)
                    && let Some((x, y)) = nearest_enemy(&bot.state, &bot.player_id)
                {
                    let message = send("move", json!({"x": x, "y": y}));
                    bot.send(&message).await;
                }
            }
            ServerMessage::ActionResult(result) => {
                if result.request_id.starts_with("upgrade") {
                    upgrade_pending = false;
                    if result.ok {
                        report.upgrades += 1;
                    }
                }
                if let Some(error) = result.error {
                    report.failed_actions.push(error.code);
                }
            }
            ServerMessage::Event(event) if event.name == "wave_started" => {
                report
                    .waves_started
                    .push(event.payload["wave"].as_u64().unwrap());
            }
            ServerMessage::LandClosed(land_closed) => {
                report.land_closed = Some(land_closed);
                report.close_code = bot.closed().await.code;
                break;
            }
            _ => {}
        }
    }
    report
}

#[tokio::test(start_paused = true)]
async fn scripted_players_play_a_whole_game() {
    let registry =
        LandRegistry::new().register::<HeroDefense>("hero-defense", HeroDefenseConfig::quick());
    let server = TestServer::start(registry).await;

    let mut ann = server.connect("hero-defense", "match-1", "ann").await;
    assert_eq!(ann.state["phase"], "preparing");
    assert_eq!(
        ann.state["me"],
        json!({"gold": 0, "damageUpgradeCost": 10, "rangeUpgradeCost": 10})
    );
    let broke = ann.action("upgrade", json!({"stat": "range"})).await;
    assert_eq!(broke.error.unwrap().code, "not_enough_gold");
    let welcome = ann.wait_event("welcome").await;
    assert_eq!(welcome.payload["waves"], 3);

    let mut bots = vec![tokio::spawn(play(ann))];
    for player in ["bob", "cid"] {
        let bot = server.connect("hero-defense", "match-1", player).await;
        bots.push(tokio::spawn(play(bot)));
    }
    let mut reports = Vec::new();
    for bot in bots {
        reports.push(bot.await.unwrap());
    }

    let closed_with = reports[0].land_closed.clone().expect("the land closes");
    assert!(["victory", "defeat"].contains(&closed_with.reason.as_str()));
    let result = closed_with.result.clone().unwrap();
    assert_eq!(result["outcome"], closed_with.reason);
    assert_eq!(result["players"].as_object().unwrap().len(), 3);
    assert!(result["kills"].as_u64().unwrap() > 0);
    for report in &reports {
        assert_eq!(report.land_closed.as_ref(), Some(&closed_with));
        assert_eq!(report.close_code, Some(close_code::NORMAL));
        assert!(!report.waves_started.is_empty(), "waves come");
        assert!(!report.saw_foreign_gold, "gold is private");
    }
    if closed_with.reason == "victory" {
        assert_eq!(reports[0].waves_started, vec![1, 2, 3]);
    }
    assert!(
        reports.iter().any(|report| report.max_gold > 0),
        "gold changes: {reports:?}"
    );

    // A finished match does not restart under the same id.
    let mut late = Client::open(&server.url("hero-defense", "landId=match-1&playerId=dan")).await;
    assert_eq!(
        closed(&mut late).await.code,
        Some(close_code::LAND_FULL_OR_CLOSED)
    );
    server.shutdown().await.unwrap();
}
