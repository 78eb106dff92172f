//! Drive a land without sockets or tasks: unit tests for game logic, and benches of the
//! sync path. It uses the same core as the keeper, so what passes here behaves the same
//! behind a WebSocket.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use matchplane_contracts::binary_state;
use matchplane_contracts::game::{
    ActionRequest, ActionResult, EventBody, ServerMessage, StateMerge,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::auth::{Admission, Rejection};
use crate::core::{ConnHandle, Disconnect, LandCore, Outbound, SyncEncoding};
use crate::land::{CreateInfo, Land, LandSettings};

/// Frames a harness player can hold before it counts as a slow client.
const HARNESS_QUEUE: usize = 1 << 16;

struct HarnessPlayer {
    conn: ConnHandle,
    frames: mpsc::Receiver<Outbound>,
    _kill: watch::Receiver<Option<(u16, String)>>,
    inbox: Vec<ServerMessage>,
    /// What a binary client holds: the land's key table and the state its frames'
    /// float steps are relative to.
    keys: Vec<String>,
    mirror: Value,
}

/// A land under test, with a manual clock.
pub struct LandHarness<L: Land> {
    core: LandCore<L>,
    players: BTreeMap<String, HarnessPlayer>,
    now: Instant,
    next_conn_id: u64,
    next_request_id: u64,
}

impl HarnessPlayer {
    /// Keeps the key table and the state a binary client would hold.
    fn follow(&mut self, message: &ServerMessage) {
        if self.conn.sync != SyncEncoding::Binary {
            return;
        }
        match message {
            ServerMessage::JoinOk(join) => {
                self.mirror = join.state.clone();
                self.keys = join.keys.clone().unwrap_or_default();
            }
            ServerMessage::StateSnapshot(snapshot) => {
                self.mirror = snapshot.state.clone();
                if let Some(keys) = &snapshot.keys {
                    self.keys.clone_from(keys);
                }
            }
            // A binary connection gets no `state.patch`: what a merge patch cannot say
            // comes as a snapshot.
            ServerMessage::StateMerge(merge) => json_patch::merge(&mut self.mirror, &merge.merge),
            _ => {}
        }
    }
}

impl<L: Land> std::fmt::Debug for LandHarness<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LandHarness")
            .field("land_id", &self.core.land_id())
            .field("players", &self.players.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<L: Land> LandHarness<L> {
    /// A land with the settings `L` declares for `config`.
    pub fn new(config: L::Config, land_id: &str) -> Self {
        let settings = L::settings(&config);
        let info = CreateInfo {
            land_id: land_id.to_owned(),
            land_type: "harness".to_owned(),
            match_id: None,
            roster: None,
        };
        Self::with_settings(config, settings, info)
    }

    pub fn with_settings(config: L::Config, settings: LandSettings, info: CreateInfo) -> Self {
        let now = Instant::now();
        let mut harness = Self {
            core: LandCore::create(&config, settings, &info, now),
            players: BTreeMap::new(),
            now,
            next_conn_id: 1,
            next_request_id: 1,
        };
        harness.core.flush();
        harness
    }

    pub fn land(&self) -> &L {
        self.core.land()
    }

    #[cfg(test)]
    pub(crate) fn land_mut(&mut self) -> &mut L {
        self.core.land_mut()
    }

    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Connects `player` (a new seat, a reconnect, or a takeover) and syncs.
    pub fn join(&mut self, player: &str) -> Result<(), Rejection> {
        self.join_with(player, SyncEncoding::default())
    }

    /// [`Self::join`] for a connection that asked for `sync`; binary state frames come
    /// out of [`Self::messages`] as the `state.merge` they stand for.
    pub fn join_with(&mut self, player: &str, sync: SyncEncoding) -> Result<(), Rejection> {
        let (tx, frames) = mpsc::channel(HARNESS_QUEUE);
        let (kill, kill_rx) = watch::channel(None);
        let conn = ConnHandle {
            id: self.next_conn_id,
            tx,
            kill: Arc::new(kill),
            sync,
        };
        self.next_conn_id += 1;
        let admission = Admission {
            player_id: player.to_owned(),
            land_id: self.core.land_id().to_owned(),
            match_id: None,
            roster: None,
            session_key: None,
        };
        self.core.admit(&admission, conn.clone(), true, self.now)?;
        self.players.insert(
            player.to_owned(),
            HarnessPlayer {
                conn,
                frames,
                _kill: kill_rx,
                inbox: Vec::new(),
                keys: Vec::new(),
                mirror: Value::Null,
            },
        );
        self.core.flush();
        Ok(())
    }

    fn conn_id(&self, player: &str) -> u64 {
        self.players.get(player).map_or(0, |p| p.conn.id)
    }

    /// The player's connection drops; its seat is held for the reconnect grace.
    pub fn disconnect(&mut self, player: &str) {
        let conn_id = self.conn_id(player);
        self.core
            .disconnect(&player.to_owned(), conn_id, Disconnect::Dropped, self.now);
        self.core.flush();
    }

    /// The player leaves on purpose; its seat is released.
    pub fn leave(&mut self, player: &str) {
        let conn_id = self.conn_id(player);
        self.core
            .disconnect(&player.to_owned(), conn_id, Disconnect::Left, self.now);
        self.core.flush();
    }

    /// Runs an action and returns its `action.result` (also left in the player's messages).
    pub fn action(&mut self, player: &str, name: &str, payload: Value) -> Option<ActionResult> {
        let request_id = self.next_request_id.to_string();
        self.next_request_id += 1;
        let conn_id = self.conn_id(player);
        let request = ActionRequest {
            request_id: request_id.clone(),
            name: name.to_owned(),
            payload,
        };
        self.core
            .action(&player.to_owned(), conn_id, request, self.now);
        self.core.flush();
        self.collect(player);
        self.players
            .get(player)?
            .inbox
            .iter()
            .rev()
            .find_map(|message| match message {
                ServerMessage::ActionResult(result) if result.request_id == request_id => {
                    Some(result.clone())
                }
                _ => None,
            })
    }

    pub fn event(&mut self, player: &str, name: &str, payload: Value) {
        let conn_id = self.conn_id(player);
        let event = EventBody {
            name: name.to_owned(),
            payload,
        };
        self.core
            .event(&player.to_owned(), conn_id, event, self.now);
        self.core.flush();
    }

    /// Asks for a `state.snapshot`, as a client does after a gap.
    pub fn request_sync(&mut self, player: &str) {
        let conn_id = self.conn_id(player);
        self.core.request_snapshot(&player.to_owned(), conn_id);
        self.core.flush();
    }

    /// Advances the clock by `dt` and runs one tick with its sync.
    pub fn tick(&mut self, dt: Duration) {
        self.now += dt;
        self.core.expire(self.now);
        self.core.tick(dt, self.now);
        self.core.flush();
    }

    /// Advances the clock without ticking (reconnect graces expire).
    pub fn advance(&mut self, dt: Duration) {
        self.now += dt;
        self.core.expire(self.now);
        self.core.flush();
    }

    fn collect(&mut self, player: &str) {
        if let Some(state) = self.players.get_mut(player) {
            while let Ok(outbound) = state.frames.try_recv() {
                let message = match outbound {
                    Outbound::Text(text) => ServerMessage::decode(text.as_str()).ok(),
                    Outbound::Binary(frame) => {
                        let decoded = binary_state::decode_state_merge(
                            &frame,
                            &mut state.keys,
                            Some(&state.mirror),
                        );
                        match decoded {
                            Ok((seq, merge)) => {
                                Some(ServerMessage::StateMerge(StateMerge { seq, merge }))
                            }
                            // A bug in the runtime's own frames: left out, so the
                            // next frame's seq shows the test a gap.
                            Err(err) => {
                                tracing::error!(player, error = %err, "binary frame does not decode");
                                None
                            }
                        }
                    }
                    Outbound::Close { .. } => None,
                };
                if let Some(message) = message {
                    state.follow(&message);
                    state.inbox.push(message);
                }
            }
        }
    }

    /// Everything sent to `player` since the last call, decoded.
    pub fn messages(&mut self, player: &str) -> Vec<ServerMessage> {
        self.collect(player);
        self.players
            .get_mut(player)
            .map(|state| std::mem::take(&mut state.inbox))
            .unwrap_or_default()
    }

    /// The frames sent to `player` since the last call, as they go on the wire (text
    /// frames as their UTF-8 bytes); closes are left out. For benches of what the
    /// transport does with them (compression).
    pub fn wire_frames(&mut self, player: &str) -> Vec<Vec<u8>> {
        let Some(state) = self.players.get_mut(player) else {
            return Vec::new();
        };
        let mut frames = Vec::new();
        while let Ok(outbound) = state.frames.try_recv() {
            match outbound {
                Outbound::Text(text) => frames.push(text.as_str().as_bytes().to_vec()),
                Outbound::Binary(frame) => frames.push(frame.to_vec()),
                Outbound::Close { .. } => {}
            }
        }
        frames
    }

    /// Drops every queued frame, returning how many bytes they held (for benches).
    pub fn drain_frames(&mut self) -> usize {
        let mut bytes = 0;
        for state in self.players.values_mut() {
            while let Ok(outbound) = state.frames.try_recv() {
                match outbound {
                    Outbound::Text(text) => bytes += text.len(),
                    Outbound::Binary(frame) => bytes += frame.len(),
                    Outbound::Close { .. } => {}
                }
            }
        }
        bytes
    }
}
