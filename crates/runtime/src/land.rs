//! The programming model: a game implements [`Land`] and never sees sockets.

use std::fmt;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use matchplane_contracts::game::{EventBody, LandClosed, ServerMessage, close_code};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

/// A player's id as admitted by the [`crate::Authenticator`].
pub type PlayerId = String;

/// Per land type settings, fixed at server start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct LandSettings {
    /// Ticks per second; `0.0` means the land never ticks (it only reacts to messages).
    pub tick_rate_hz: f64,
    /// State syncs per second from the tick loop when below the tick rate (every
    /// `round(tick ÷ sync)`th tick, like Colyseus' patch rate); `None`: every tick.
    /// Actions, events that request it, joins and snapshots still sync at once.
    pub sync_rate_hz: Option<f64>,
    /// Seats, counting players inside their reconnect grace.
    pub max_players: usize,
    /// How long a land with no seats lives before it is disposed.
    pub dispose_after_empty: Duration,
    /// How long a disconnected player keeps its seat.
    pub reconnect_grace: Duration,
}

impl Default for LandSettings {
    fn default() -> Self {
        Self {
            tick_rate_hz: 20.0,
            sync_rate_hz: None,
            max_players: 16,
            dispose_after_empty: Duration::from_secs(30),
            reconnect_grace: Duration::from_secs(15),
        }
    }
}

impl LandSettings {
    /// How many ticks one periodic sync stands for (at least 1), before shedding.
    pub(crate) fn ticks_per_sync(&self) -> u32 {
        match self.sync_rate_hz {
            Some(sync) if sync.is_finite() && sync > 0.0 && self.tick_period().is_some() => {
                // Bounded to 1..=1000, so the cast cannot truncate.
                (self.tick_rate_hz / sync).round().clamp(1.0, 1000.0) as u32
            }
            _ => 1,
        }
    }

    pub(crate) fn tick_period(&self) -> Option<Duration> {
        // A rate so low that its period is beyond a year never ticks (and cannot
        // overflow the clock); above 1 kHz a land would only spin.
        const LONGEST_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);
        const SHORTEST_PERIOD: Duration = Duration::from_millis(1);
        (self.tick_rate_hz.is_finite() && self.tick_rate_hz > 0.0)
            .then(|| Duration::try_from_secs_f64(1.0 / self.tick_rate_hz).ok())
            .flatten()
            .filter(|period| *period <= LONGEST_PERIOD)
            .map(|period| period.max(SHORTEST_PERIOD))
    }
}

/// What a land knows when it is created (lazily, on the first admitted join).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateInfo {
    pub land_id: String,
    pub land_type: String,
    /// Match this land was assigned to, when the admission carried one (match tokens).
    pub match_id: Option<String>,
    /// Expected players grouped by team, when known from the admission.
    pub roster: Option<Vec<Vec<PlayerId>>>,
}

/// Why a seat was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The client closed the connection on purpose (close code 1000).
    Left,
    /// The connection dropped and the reconnect grace ran out.
    GraceExpired,
    /// The runtime removed the player for abusing the protocol (flooding, malformed messages).
    Kicked,
}

impl fmt::Display for LeaveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Left => "left",
            Self::GraceExpired => "grace_expired",
            Self::Kicked => "kicked",
        })
    }
}

/// A failed action: `code` is machine-readable (`not_enough_gold`), `message` is for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionError {
    pub code: String,
    pub message: String,
}

impl ActionError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A land refusing a join; the client's socket is closed with `close_code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRejection {
    pub close_code: u16,
    pub message: String,
}

impl JoinRejection {
    /// The player may not enter this land (not on the roster, banned…): 4403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            close_code: close_code::FORBIDDEN,
            message: message.into(),
        }
    }

    /// The land cannot take more players or no longer accepts joins: 4409.
    pub fn full(message: impl Into<String>) -> Self {
        Self {
            close_code: close_code::LAND_FULL_OR_CLOSED,
            message: message.into(),
        }
    }
}

/// An authoritative game room type.
///
/// The runtime creates one value per land id, owned by that land's keeper task, which
/// calls the hooks one at a time: a land never needs locks. After every tick, action,
/// join or leave that changed [`Land::state`] (or any [`Land::private_view`]), each
/// connected player receives the changes as a JSON Patch.
///
/// Actions and client events arrive as `{name, payload}`; the natural Rust shape is an
/// enum with `#[serde(tag = "name", content = "payload", rename_all = "snake_case")]`.
/// Server events must serialise to the same `{name, payload}` shape.
pub trait Land: Sized + Send + 'static {
    /// Shared by every land of this type; set when the server starts.
    type Config: Clone + Send + Sync + 'static;
    /// What every player sees; must serialise to a JSON object.
    type State: Serialize;
    /// What only one player sees, placed under the key `me` of that player's state.
    /// Use `()` when the land has none.
    type PrivateView: Serialize;
    type Action: DeserializeOwned;
    type ActionOutput: Serialize;
    type ClientEvent: DeserializeOwned;
    type ServerEvent: Serialize;

    fn settings(_config: &Self::Config) -> LandSettings {
        LandSettings::default()
    }

    fn on_create(config: &Self::Config, ctx: &mut Ctx<'_, Self>, info: &CreateInfo) -> Self;

    fn state(&self) -> &Self::State;

    /// `None` hides `me` from this player's state.
    fn private_view(&self, _player: &PlayerId) -> Option<Self::PrivateView> {
        None
    }

    /// Called for new seats only; a reconnect within the grace calls [`Land::on_reconnect`].
    fn on_join(
        &mut self,
        _ctx: &mut Ctx<'_, Self>,
        _player: &PlayerId,
    ) -> Result<(), JoinRejection> {
        Ok(())
    }

    /// The seat is gone for good.
    fn on_leave(&mut self, _ctx: &mut Ctx<'_, Self>, _player: &PlayerId, _reason: LeaveReason) {}

    /// The connection dropped; the seat is held for the reconnect grace.
    fn on_disconnect(&mut self, _ctx: &mut Ctx<'_, Self>, _player: &PlayerId) {}

    fn on_reconnect(&mut self, _ctx: &mut Ctx<'_, Self>, _player: &PlayerId) {}

    fn on_action(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        player: &PlayerId,
        action: Self::Action,
    ) -> Result<Self::ActionOutput, ActionError>;

    /// Events are fire-and-forget and do not trigger a sync by themselves: call
    /// [`Ctx::request_sync`] if the state changed and must not wait for the next tick.
    fn on_event(
        &mut self,
        _ctx: &mut Ctx<'_, Self>,
        _player: &PlayerId,
        _event: Self::ClientEvent,
    ) {
    }

    /// `dt` is the time since the previous tick; after a stall it is longer than the period.
    fn on_tick(&mut self, _ctx: &mut Ctx<'_, Self>, _dt: Duration) {}
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Player(PlayerId),
    All,
}

/// Frames and requests a land produced during one hook, applied by the keeper after it.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) frames: Vec<(Target, Utf8Bytes)>,
    pub(crate) sync_requested: bool,
    pub(crate) close: Option<LandClosed>,
}

/// A land's handle on the runtime inside a hook.
pub struct Ctx<'a, L: Land> {
    pub(crate) land_id: &'a str,
    pub(crate) now: Instant,
    pub(crate) players: &'a [PlayerId],
    pub(crate) outbox: &'a mut Outbox,
    pub(crate) _land: std::marker::PhantomData<fn(&L)>,
}

impl<L: Land> fmt::Debug for Ctx<'_, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("land_id", &self.land_id)
            .finish_non_exhaustive()
    }
}

impl<'a, L: Land> Ctx<'a, L> {
    pub fn land_id(&self) -> &str {
        self.land_id
    }

    /// The keeper's clock (tokio time, so paused-time tests see virtual time).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Players holding a seat, connected or within their reconnect grace.
    pub fn players(&self) -> &[PlayerId] {
        self.players
    }

    /// Sends an event to one player; dropped if that player is not connected.
    pub fn send_to(&mut self, player: &PlayerId, event: &L::ServerEvent) {
        if let Some(frame) = encode_event(event) {
            self.outbox
                .frames
                .push((Target::Player(player.clone()), frame));
        }
    }

    /// Sends an event to every connected player (encoded once).
    pub fn broadcast(&mut self, event: &L::ServerEvent) {
        if let Some(frame) = encode_event(event) {
            self.outbox.frames.push((Target::All, frame));
        }
    }

    /// Sync state to players at the end of this hook even if the runtime would not
    /// (after an event), so changes do not wait for the next tick.
    pub fn request_sync(&mut self) {
        self.outbox.sync_requested = true;
    }

    /// Closes the land once this hook returns: players get a final sync,
    /// `land.closed {reason}` and a normal close (1000).
    pub fn close(&mut self, reason: impl Into<String>) {
        self.outbox.close = Some(LandClosed {
            reason: reason.into(),
            result: None,
        });
    }

    /// Like [`Ctx::close`], with a land-defined outcome in `land.closed.result`.
    pub fn close_with_result<R: Serialize>(&mut self, reason: impl Into<String>, result: &R) {
        let result = match serde_json::to_value(result) {
            Ok(value) => Some(value),
            Err(err) => {
                tracing::error!(land_id = self.land_id, error = %err, "land close result does not serialise");
                None
            }
        };
        self.outbox.close = Some(LandClosed {
            reason: reason.into(),
            result,
        });
    }
}

fn encode_event<E: Serialize>(event: &E) -> Option<Utf8Bytes> {
    let body = match serde_json::to_value(event) {
        Ok(serde_json::Value::Object(mut fields)) => {
            let name = match fields.remove("name") {
                Some(serde_json::Value::String(name)) => name,
                _ => {
                    tracing::error!("server event must serialise to {{name, payload}}");
                    return None;
                }
            };
            let payload = fields.remove("payload").unwrap_or(serde_json::Value::Null);
            EventBody { name, payload }
        }
        Ok(_) => {
            tracing::error!("server event must serialise to a {{name, payload}} object");
            return None;
        }
        Err(err) => {
            tracing::error!(error = %err, "server event does not serialise");
            return None;
        }
    };
    crate::frame::encode(&ServerMessage::Event(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_rate_below_the_tick_rate_syncs_every_nth_tick() {
        let ticks_per_sync = |tick_rate_hz, sync_rate_hz| {
            LandSettings {
                tick_rate_hz,
                sync_rate_hz,
                ..LandSettings::default()
            }
            .ticks_per_sync()
        };
        assert_eq!(ticks_per_sync(20.0, None), 1);
        assert_eq!(ticks_per_sync(20.0, Some(10.0)), 2);
        assert_eq!(ticks_per_sync(60.0, Some(20.0)), 3);
        assert_eq!(ticks_per_sync(20.0, Some(7.0)), 3);
        // At or above the tick rate: every tick, never more often.
        assert_eq!(ticks_per_sync(20.0, Some(20.0)), 1);
        assert_eq!(ticks_per_sync(20.0, Some(100.0)), 1);
        // Nonsense rates fall back to every tick, or to the longest gap.
        for odd in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(ticks_per_sync(20.0, Some(odd)), 1, "{odd}");
        }
        assert_eq!(ticks_per_sync(20.0, Some(1e-9)), 1000);
        // A land that never ticks syncs on its messages alone.
        assert_eq!(ticks_per_sync(0.0, Some(5.0)), 1);
    }

    #[test]
    fn tick_periods_of_odd_rates_never_panic() {
        let period = |tick_rate_hz| {
            LandSettings {
                tick_rate_hz,
                ..LandSettings::default()
            }
            .tick_period()
        };
        assert_eq!(period(20.0), Some(Duration::from_millis(50)));
        for rate in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            1e-300,
            f64::MIN_POSITIVE,
        ] {
            assert_eq!(period(rate), None, "{rate}");
        }
        assert_eq!(period(f64::MAX), Some(Duration::from_millis(1)));
    }
}
