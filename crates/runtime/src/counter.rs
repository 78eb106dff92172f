//! `counter`: the smallest useful land, used by the docs and tests.
//!
//! Everyone shares one number. Actions: `increment` (no payload) and `add {amount}`,
//! which fails with `amount_out_of_range` beyond ±1000 (`invalid_payload` for
//! `i64::MIN`, which has no absolute value), and with `count_out_of_range` rather than
//! let the count overflow. Events: `shout {text}` is
//! broadcast to everyone as `shouted {from, text}`; `whisper {to, text}` reaches one
//! player as `whispered {from, text}`. The land never ticks.

use std::collections::BTreeMap;
use std::time::Duration;

use matchplane_contracts::game::error_code;
use serde::{Deserialize, Serialize};

use crate::land::{ActionError, CreateInfo, Ctx, Land, LandSettings, LeaveReason, PlayerId};

pub const MAX_ADD: i64 = 1000;

#[derive(Debug)]
pub struct Counter {
    state: CounterState,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CounterState {
    pub count: i64,
    /// Seated players and how many changes each made.
    pub players: BTreeMap<PlayerId, u64>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "name", content = "payload", rename_all = "snake_case")]
pub enum CounterAction {
    Increment,
    Add { amount: i64 },
}

#[derive(Debug, Serialize)]
pub struct CounterOutput {
    pub count: i64,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "name", content = "payload", rename_all = "snake_case")]
pub enum CounterClientEvent {
    Shout { text: String },
    Whisper { to: PlayerId, text: String },
}

#[derive(Debug, Serialize)]
#[serde(tag = "name", content = "payload", rename_all = "snake_case")]
pub enum CounterServerEvent {
    Shouted { from: PlayerId, text: String },
    Whispered { from: PlayerId, text: String },
}

impl Land for Counter {
    type Config = ();
    type State = CounterState;
    type PrivateView = ();
    type Action = CounterAction;
    type ActionOutput = CounterOutput;
    type ClientEvent = CounterClientEvent;
    type ServerEvent = CounterServerEvent;

    fn settings(_config: &()) -> LandSettings {
        LandSettings {
            tick_rate_hz: 0.0,
            sync_rate_hz: None,
            max_players: 8,
            dispose_after_empty: Duration::from_secs(30),
            reconnect_grace: Duration::from_secs(15),
        }
    }

    fn on_create(_config: &(), _ctx: &mut Ctx<'_, Self>, _info: &CreateInfo) -> Self {
        Self {
            state: CounterState::default(),
        }
    }

    fn state(&self) -> &CounterState {
        &self.state
    }

    fn on_join(
        &mut self,
        _ctx: &mut Ctx<'_, Self>,
        player: &PlayerId,
    ) -> Result<(), crate::JoinRejection> {
        self.state.players.insert(player.clone(), 0);
        Ok(())
    }

    fn on_leave(&mut self, _ctx: &mut Ctx<'_, Self>, player: &PlayerId, _reason: LeaveReason) {
        self.state.players.remove(player);
    }

    fn on_action(
        &mut self,
        _ctx: &mut Ctx<'_, Self>,
        player: &PlayerId,
        action: CounterAction,
    ) -> Result<CounterOutput, ActionError> {
        let amount = match action {
            CounterAction::Increment => 1,
            CounterAction::Add { amount } => match amount.checked_abs() {
                Some(magnitude) if magnitude <= MAX_ADD => amount,
                Some(_) => {
                    return Err(ActionError::new(
                        "amount_out_of_range",
                        format!("amount {amount} is outside ±{MAX_ADD}"),
                    ));
                }
                // i64::MIN has no absolute value: not a number this land can take.
                None => {
                    return Err(ActionError::new(
                        error_code::INVALID_PAYLOAD,
                        format!("amount {amount} is not a usable number"),
                    ));
                }
            },
        };
        let Some(count) = self.state.count.checked_add(amount) else {
            return Err(ActionError::new(
                "count_out_of_range",
                format!("adding {amount} would take the count beyond what it can hold"),
            ));
        };
        self.state.count = count;
        let changes = self.state.players.entry(player.clone()).or_default();
        *changes = changes.saturating_add(1);
        Ok(CounterOutput {
            count: self.state.count,
        })
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_, Self>, player: &PlayerId, event: CounterClientEvent) {
        match event {
            CounterClientEvent::Shout { text } => ctx.broadcast(&CounterServerEvent::Shouted {
                from: player.clone(),
                text,
            }),
            CounterClientEvent::Whisper { to, text } => ctx.send_to(
                &to,
                &CounterServerEvent::Whispered {
                    from: player.clone(),
                    text,
                },
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::LandHarness;
    use serde_json::json;

    fn error_of(land: &mut LandHarness<Counter>, amount: i64) -> Option<String> {
        let result = land
            .action("ann", "add", json!({ "amount": amount }))
            .unwrap();
        result.error.map(|error| error.code)
    }

    #[test]
    fn amounts_without_an_absolute_value_or_out_of_range_are_refused() {
        let mut land = LandHarness::<Counter>::new((), "counter:unit");
        land.join("ann").unwrap();
        assert_eq!(
            error_of(&mut land, i64::MIN).as_deref(),
            Some(error_code::INVALID_PAYLOAD)
        );
        assert_eq!(
            error_of(&mut land, i64::MAX).as_deref(),
            Some("amount_out_of_range")
        );
        assert_eq!(
            error_of(&mut land, -MAX_ADD - 1).as_deref(),
            Some("amount_out_of_range")
        );
        assert_eq!(error_of(&mut land, -MAX_ADD), None);
        assert_eq!(land.land().state.count, -MAX_ADD);
    }

    #[test]
    fn the_count_never_overflows() {
        let mut land = LandHarness::<Counter>::new((), "counter:unit");
        land.join("ann").unwrap();
        land.land_mut().state.count = i64::MAX - 1;
        assert_eq!(error_of(&mut land, 1), None);
        assert_eq!(
            error_of(&mut land, 1).as_deref(),
            Some("count_out_of_range")
        );
        assert_eq!(land.land().state.count, i64::MAX);
    }
}
