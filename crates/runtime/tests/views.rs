//! Property: clients that apply every patch to their snapshot end with exactly the
//! server's view of them, after long random sessions with several players, private
//! views, reconnects and snapshot requests — one player on each state-sync encoding
//! (`patch`, `merge`, `binary`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestServer;
use matchplane_runtime::{
    ActionError, CreateInfo, Ctx, Land, LandHarness, LandRegistry, LandSettings, PlayerId,
    SyncEncoding,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A land whose state takes every JSON shape the random actions ask for.
struct Board {
    state: BoardState,
    secrets: BTreeMap<PlayerId, Vec<i64>>,
}

#[derive(Serialize)]
struct BoardState {
    cells: BTreeMap<String, Value>,
    list: Vec<i64>,
    seated: Vec<PlayerId>,
}

#[derive(Serialize)]
struct Secret {
    hand: Vec<i64>,
    total: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "name", content = "payload", rename_all = "snake_case")]
enum BoardAction {
    Set { key: String, value: Value },
    Remove { key: String },
    Push { value: i64 },
    Insert { index: usize, value: i64 },
    RemoveAt { index: usize },
    Give { to: String, value: i64 },
    Discard,
}

impl Land for Board {
    type Config = ();
    type State = BoardState;
    type PrivateView = Secret;
    type Action = BoardAction;
    type ActionOutput = ();
    type ClientEvent = BoardAction;
    type ServerEvent = ();

    fn settings(_: &()) -> LandSettings {
        LandSettings {
            tick_rate_hz: 0.0,
            sync_rate_hz: None,
            ..LandSettings::default()
        }
    }

    fn on_create(_: &(), _: &mut Ctx<'_, Self>, _: &CreateInfo) -> Self {
        Board {
            state: BoardState {
                cells: BTreeMap::new(),
                list: Vec::new(),
                seated: Vec::new(),
            },
            secrets: BTreeMap::new(),
        }
    }

    fn state(&self) -> &BoardState {
        &self.state
    }

    /// Players with an empty hand see no `me` at all, so `me` comes and goes.
    fn private_view(&self, player: &PlayerId) -> Option<Secret> {
        let hand = self.secrets.get(player).filter(|hand| !hand.is_empty())?;
        Some(Secret {
            hand: hand.clone(),
            total: hand.iter().sum(),
        })
    }

    fn on_join(
        &mut self,
        _: &mut Ctx<'_, Self>,
        player: &PlayerId,
    ) -> Result<(), matchplane_runtime::JoinRejection> {
        self.state.seated.push(player.clone());
        Ok(())
    }

    fn on_action(
        &mut self,
        _: &mut Ctx<'_, Self>,
        player: &PlayerId,
        action: BoardAction,
    ) -> Result<(), ActionError> {
        match action {
            BoardAction::Set { key, value } => {
                self.state.cells.insert(key, value);
            }
            BoardAction::Remove { key } => {
                self.state.cells.remove(&key);
            }
            BoardAction::Push { value } => self.state.list.push(value),
            BoardAction::Insert { index, value } => {
                let index = index.min(self.state.list.len());
                self.state.list.insert(index, value);
            }
            BoardAction::RemoveAt { index } => {
                if index < self.state.list.len() {
                    self.state.list.remove(index);
                }
            }
            BoardAction::Give { to, value } => self.secrets.entry(to).or_default().push(value),
            BoardAction::Discard => {
                self.secrets.remove(player);
            }
        }
        Ok(())
    }
}

const PLAYERS: [&str; 3] = ["ann", "bob", "cid"];
/// How each player receives changes: every encoding in one land.
const SYNCS: [&str; 3] = ["patch", "merge", "binary"];
const HARNESS_SYNCS: [SyncEncoding; 3] = [
    SyncEncoding::Patch,
    SyncEncoding::Merge,
    SyncEncoding::Binary,
];

#[derive(Debug, Clone)]
enum Step {
    Act(usize, BoardAction),
    Snapshot(usize),
    /// The player reconnects, asking for the encoding of `SYNCS` at the second index:
    /// the land's connections change encodings, and with them the forms it keeps
    /// the last-sent state in.
    Reconnect(usize, usize),
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
        // Decimals, so binary frames write some floats as steps from the last value.
        (-500i64..500).prop_map(|hundredths| Value::from(hundredths as f64 / 100.0)),
        "[a-c~/]{0,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-c~/]{0,2}", inner, 0..3)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn action() -> impl Strategy<Value = BoardAction> {
    // Keys with `/` and `~` exercise JSON Pointer escaping; "" is a legal key too.
    let key = "[ab~/]{0,2}";
    prop_oneof![
        3 => (key, json_value()).prop_map(|(key, value)| BoardAction::Set { key, value }),
        1 => key.prop_map(|key| BoardAction::Remove { key }),
        2 => (-9i64..9).prop_map(|value| BoardAction::Push { value }),
        1 => (0usize..6, -9i64..9).prop_map(|(index, value)| BoardAction::Insert { index, value }),
        2 => (0usize..6).prop_map(|index| BoardAction::RemoveAt { index }),
        2 => (0usize..3, -9i64..9).prop_map(|(to, value)| BoardAction::Give { to: PLAYERS[to].to_owned(), value }),
        1 => Just(BoardAction::Discard),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (0usize..3, action()).prop_map(|(player, action)| Step::Act(player, action)),
        1 => (0usize..3).prop_map(Step::Snapshot),
        1 => (0usize..3, 0usize..3).prop_map(|(player, sync)| Step::Reconnect(player, sync)),
    ]
}

fn registry() -> LandRegistry {
    LandRegistry::new().register_with_settings::<Board>(
        "board",
        (),
        LandSettings {
            tick_rate_hz: 0.0,
            sync_rate_hz: None,
            max_players: 8,
            dispose_after_empty: Duration::from_secs(60),
            reconnect_grace: Duration::from_secs(60),
        },
    )
}

async fn run_session(steps: Vec<Step>) {
    let server = TestServer::start(registry()).await;
    let mut clients = Vec::new();
    for (player, sync) in PLAYERS.into_iter().zip(SYNCS) {
        clients.push(server.connect_sync("board", "land", player, sync).await);
    }
    let mut hands: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for step in steps {
        match step {
            Step::Act(player, action) => {
                match &action {
                    BoardAction::Give { to, value } => {
                        let to = PLAYERS.iter().find(|p| *p == to).unwrap();
                        hands.entry(to).or_default().push(*value);
                    }
                    BoardAction::Discard => {
                        hands.remove(PLAYERS[player]);
                    }
                    _ => {}
                }
                let payload = serde_json::to_value(&action).unwrap();
                let result = clients[player]
                    .action(
                        payload["name"].as_str().unwrap(),
                        payload.get("payload").cloned().unwrap_or(Value::Null),
                    )
                    .await;
                assert!(result.ok, "{result:?}");
            }
            Step::Snapshot(player) => {
                let client = &mut clients[player];
                let snapshot = client.snapshot().await;
                assert_eq!(client.state, snapshot);
            }
            Step::Reconnect(player, sync) => {
                let fresh = server
                    .connect_sync("board", "land", PLAYERS[player], SYNCS[sync])
                    .await;
                let old = std::mem::replace(&mut clients[player], fresh);
                drop(old);
            }
        }
    }
    for (index, client) in clients.iter_mut().enumerate() {
        client.barrier().await;
        let mirror = client.state.clone();
        assert_eq!(
            mirror,
            client.snapshot().await,
            "{} drifted from the server",
            PLAYERS[index]
        );
        let hand = hands.get(PLAYERS[index]).filter(|hand| !hand.is_empty());
        match hand {
            Some(hand) => assert_eq!(mirror["me"]["hand"], json!(hand)),
            None => assert!(mirror.get("me").is_none(), "{mirror}"),
        }
    }
    server.shutdown().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn websocket_mirrors_match_the_server(steps in prop::collection::vec(step(), 20..120)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_session(steps));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The same property through the socket-free harness, which allows many more cases.
    #[test]
    fn harness_mirrors_match_the_server(steps in prop::collection::vec(step(), 1..80)) {
        let mut land = LandHarness::<Board>::new((), "land");
        let mut states: BTreeMap<&str, (Value, u64)> = BTreeMap::new();
        for (player, sync) in PLAYERS.into_iter().zip(HARNESS_SYNCS) {
            land.join_with(player, sync).unwrap();
        }
        let fold = |land: &mut LandHarness<Board>, states: &mut BTreeMap<&str, (Value, u64)>| {
            for player in PLAYERS {
                for message in land.messages(player) {
                    let entry = states.entry(player).or_insert((Value::Null, 0));
                    match message {
                        matchplane_contracts::game::ServerMessage::JoinOk(join) => *entry = (join.state, join.seq),
                        matchplane_contracts::game::ServerMessage::StateSnapshot(snapshot) => {
                            *entry = (snapshot.state, snapshot.seq);
                        }
                        matchplane_contracts::game::ServerMessage::StatePatch(patch) => {
                            prop_assert_eq!(patch.seq, entry.1 + 1);
                            let ops: json_patch::Patch = serde_json::from_value(patch.ops).unwrap();
                            json_patch::patch(&mut entry.0, &ops).unwrap();
                            entry.1 = patch.seq;
                        }
                        // `state.merge`, or a binary frame decoded as one.
                        matchplane_contracts::game::ServerMessage::StateMerge(merge) => {
                            prop_assert_eq!(merge.seq, entry.1 + 1);
                            json_patch::merge(&mut entry.0, &merge.merge);
                            entry.1 = merge.seq;
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        };
        fold(&mut land, &mut states)?;
        for step in steps {
            match step {
                Step::Act(player, action) => {
                    let payload = serde_json::to_value(&action).unwrap();
                    land.action(PLAYERS[player], payload["name"].as_str().unwrap(), payload.get("payload").cloned().unwrap_or(Value::Null));
                }
                Step::Snapshot(player) => land.request_sync(PLAYERS[player]),
                Step::Reconnect(player, sync) => {
                    land.disconnect(PLAYERS[player]);
                    land.join_with(PLAYERS[player], HARNESS_SYNCS[sync]).unwrap();
                }
            }
            fold(&mut land, &mut states)?;
        }
        for player in PLAYERS {
            let mirror = states[player].0.clone();
            land.request_sync(player);
            fold(&mut land, &mut states)?;
            prop_assert_eq!(&mirror, &states[player].0);
        }
    }
}

/// Applies what each player received to its mirror, checking the sequence numbers.
fn follow(land: &mut LandHarness<Board>, mirrors: &mut BTreeMap<String, (Value, u64)>) {
    use matchplane_contracts::game::ServerMessage;
    for player in PLAYERS {
        for message in land.messages(player) {
            let entry = mirrors.entry(player.to_owned()).or_insert((Value::Null, 0));
            match message {
                ServerMessage::JoinOk(join) => *entry = (join.state, join.seq),
                ServerMessage::StateSnapshot(snapshot) => *entry = (snapshot.state, snapshot.seq),
                ServerMessage::StatePatch(patch) => {
                    assert_eq!(patch.seq, entry.1 + 1, "{player}");
                    let ops: json_patch::Patch = serde_json::from_value(patch.ops).unwrap();
                    json_patch::patch(&mut entry.0, &ops).unwrap();
                    entry.1 = patch.seq;
                }
                ServerMessage::StateMerge(merge) => {
                    assert_eq!(merge.seq, entry.1 + 1, "{player}");
                    json_patch::merge(&mut entry.0, &merge.merge);
                    entry.1 = merge.seq;
                }
                _ => {}
            }
        }
    }
}

/// The land keeps what it last sent flat for JSON Patch connections and as a tree for
/// merge-patch ones, and drops the form nobody connected needs: each change of who is
/// connected, and how, must still leave every mirror right.
#[test]
fn mirrors_stay_right_as_the_land_s_connections_change_encodings() {
    let mut land = LandHarness::<Board>::new((), "land");
    let mut mirrors = BTreeMap::new();
    let set = |land: &mut LandHarness<Board>, player: &str, key: &str, value: Value| {
        let result = land.action(player, "set", json!({"key": key, "value": value}));
        assert!(result.is_some_and(|result| result.ok));
    };
    let check = |land: &mut LandHarness<Board>,
                 mirrors: &mut BTreeMap<String, (Value, u64)>,
                 players: &[&str]| {
        follow(land, mirrors);
        for player in players {
            let mirror = mirrors[*player].0.clone();
            land.request_sync(player);
            follow(land, mirrors);
            assert_eq!(mirror, mirrors[*player].0, "{player} drifted");
        }
    };
    // Merge patches only: the land keeps a tree, not the flat form.
    land.join_with("ann", SyncEncoding::Merge).unwrap();
    set(&mut land, "ann", "a", json!(1));
    set(&mut land, "ann", "b", json!({"x": [1, 2]}));
    // A member set to null, which a merge patch cannot say: a JSON Patch instead,
    // from the flat form made from the tree for it.
    set(&mut land, "ann", "n", json!(null));
    check(&mut land, &mut mirrors, &["ann"]);
    // A JSON Patch connection joins: its first diff starts from the tree.
    land.join_with("bob", SyncEncoding::Patch).unwrap();
    set(&mut land, "ann", "a", json!(2.5));
    set(&mut land, "bob", "b", json!({"x": [1]}));
    check(&mut land, &mut mirrors, &["ann", "bob"]);
    // JSON Patch only: the tree goes; a binary connection then starts from the flat form.
    land.disconnect("ann");
    set(&mut land, "bob", "c", json!("c"));
    land.join_with("cid", SyncEncoding::Binary).unwrap();
    set(&mut land, "bob", "a", json!(3.25));
    set(&mut land, "cid", "c", json!(null));
    check(&mut land, &mut mirrors, &["bob", "cid"]);
    // Binary only, then JSON Patch again, on a reconnect with another encoding.
    land.disconnect("bob");
    set(&mut land, "cid", "d", json!([true]));
    land.join_with("bob", SyncEncoding::Patch).unwrap();
    land.join_with("ann", SyncEncoding::Binary).unwrap();
    set(&mut land, "cid", "d", json!([false, 1]));
    set(&mut land, "bob", "a", json!(4));
    set(&mut land, "ann", "e", json!({"y": "z"}));
    check(&mut land, &mut mirrors, &["ann", "bob", "cid"]);
}
