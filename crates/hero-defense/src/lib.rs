#![forbid(unsafe_code)]
//! hero-defense: a small real-time co-op game built on `matchplane-runtime`.
//!
//! Each player moves a hero (`move {x, y}`); enemies spawn in waves at the edge of the
//! map and walk to the base in the centre; heroes auto-attack the nearest enemy in
//! range. Kills earn gold that only its owner sees (`me.gold`) and spends on `upgrade
//! {stat}`. The land closes with `victory` when the last wave is cleared, or `defeat`
//! when the base falls; `land.closed.result` carries the scores.

use std::collections::BTreeMap;
use std::time::Duration;

use matchplane_runtime::{
    ActionError, CreateInfo, Ctx, JoinRejection, Land, LandSettings, LeaveReason, PlayerId,
};
use serde::{Deserialize, Serialize, Serializer};

/// Side of the square map; the base sits in its centre.
pub const MAP_SIZE: f32 = 100.0;
/// Highest level of each upgradable stat.
pub const MAX_LEVEL: u32 = 5;
/// Enemies closer than this to the base hit it.
const BASE_RADIUS: f32 = 3.0;

/// Tunables of a hero-defense land type; every field has a default, so a JSON override
/// only names what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HeroDefenseConfig {
    pub waves: u32,
    pub first_wave_delay_secs: f32,
    /// Pause after a cleared wave before the next one.
    pub wave_break_secs: f32,
    pub enemies_first_wave: u32,
    pub enemies_growth_per_wave: u32,
    pub spawn_interval_secs: f32,
    pub enemy_hp: f32,
    pub enemy_hp_growth_per_wave: f32,
    /// Map units per second.
    pub enemy_speed: f32,
    pub base_hp: u32,
    pub hero_speed: f32,
    pub hero_range: f32,
    pub hero_damage: f32,
    pub attack_cooldown_secs: f32,
    pub gold_per_kill: u32,
    /// An upgrade to level `n` costs `n × upgrade_base_cost`.
    pub upgrade_base_cost: u32,
    pub tick_rate_hz: f64,
    /// State syncs per second from the tick loop (`syncRateHz`, e.g. 10 at 20 Hz
    /// ticks halves the frames); absent: every tick.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_rate_hz: Option<f64>,
    pub max_players: usize,
    pub reconnect_grace_secs: f32,
    pub dispose_after_empty_secs: f32,
}

impl Default for HeroDefenseConfig {
    fn default() -> Self {
        Self {
            waves: 5,
            first_wave_delay_secs: 5.0,
            wave_break_secs: 6.0,
            enemies_first_wave: 4,
            enemies_growth_per_wave: 2,
            spawn_interval_secs: 0.8,
            enemy_hp: 30.0,
            enemy_hp_growth_per_wave: 10.0,
            enemy_speed: 5.0,
            base_hp: 10,
            hero_speed: 15.0,
            hero_range: 12.0,
            hero_damage: 10.0,
            attack_cooldown_secs: 0.5,
            gold_per_kill: 5,
            upgrade_base_cost: 10,
            tick_rate_hz: 20.0,
            sync_rate_hz: None,
            max_players: 8,
            reconnect_grace_secs: 20.0,
            dispose_after_empty_secs: 30.0,
        }
    }
}

impl HeroDefenseConfig {
    /// A game of a few seconds of game time, for tests and bot demos.
    pub fn quick() -> Self {
        Self {
            waves: 3,
            first_wave_delay_secs: 1.0,
            wave_break_secs: 1.0,
            enemies_first_wave: 3,
            enemies_growth_per_wave: 1,
            spawn_interval_secs: 0.3,
            enemy_hp: 20.0,
            enemy_hp_growth_per_wave: 5.0,
            enemy_speed: 8.0,
            ..Self::default()
        }
    }

    /// Named presets accepted on the command line: `standard` and `quick`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "standard" => Some(Self::default()),
            "quick" => Some(Self::quick()),
            _ => None,
        }
    }

    fn enemies_in_wave(&self, wave: u32) -> u32 {
        self.enemies_first_wave.saturating_add(
            self.enemies_growth_per_wave
                .saturating_mul(wave.saturating_sub(1)),
        )
    }
}

fn rounded<S: Serializer>(value: &f32, serializer: S) -> Result<S::Ok, S::Error> {
    // Two decimals keep patches short; clients never need more precision.
    serializer.serialize_f64((f64::from(*value) * 100.0).round() / 100.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Preparing,
    Wave,
    Break,
    Victory,
    Defeat,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Base {
    #[serde(serialize_with = "rounded")]
    pub x: f32,
    #[serde(serialize_with = "rounded")]
    pub y: f32,
    pub hp: u32,
    pub max_hp: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hero {
    #[serde(serialize_with = "rounded")]
    pub x: f32,
    #[serde(serialize_with = "rounded")]
    pub y: f32,
    pub damage_level: u32,
    pub range_level: u32,
    pub kills: u32,
    pub online: bool,
    /// Move orders accepted so far: the order's own effect (a new target) is not in the
    /// state, so this is what lets a client find the patch that reflects its order.
    pub moves: u32,
    #[serde(skip)]
    target: (f32, f32),
    #[serde(skip)]
    cooldown: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Enemy {
    #[serde(serialize_with = "rounded")]
    pub x: f32,
    #[serde(serialize_with = "rounded")]
    pub y: f32,
    #[serde(serialize_with = "rounded")]
    pub hp: f32,
    #[serde(serialize_with = "rounded")]
    pub max_hp: f32,
}

/// What every player sees.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeroDefenseState {
    pub phase: Phase,
    /// Current (or last) wave, from 1; 0 before the first.
    pub wave: u32,
    pub waves: u32,
    /// Game time (seconds since creation) when the next wave starts, if one is scheduled.
    /// Left out rather than `null` when none is: a merge patch (`?sync=merge|binary`)
    /// can say a member went away but not that it became null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_wave_at: Option<f32>,
    pub base: Base,
    pub heroes: BTreeMap<PlayerId, Hero>,
    pub enemies: BTreeMap<u32, Enemy>,
    pub kills: u32,
}

/// What only the hero's owner sees (under `me`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeroPrivate {
    pub gold: u32,
    /// Left out at the highest level (see `next_wave_at`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damage_upgrade_cost: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_upgrade_cost: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    Damage,
    Range,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "name", content = "payload", rename_all = "snake_case")]
pub enum HeroAction {
    Move { x: f32, y: f32 },
    Upgrade { stat: Stat },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum HeroOutput {
    Moved { x: f32, y: f32 },
    Upgraded { stat: Stat, level: u32, gold: u32 },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "name", content = "payload", rename_all = "snake_case")]
pub enum HeroClientEvent {
    Emote { kind: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "name", content = "payload", rename_all = "snake_case")]
pub enum HeroServerEvent {
    Welcome { waves: u32, map_size: f32 },
    WaveStarted { wave: u32, enemies: u32 },
    WaveCleared { wave: u32 },
    BaseHit { hp: u32 },
    GoldEarned { amount: u32, gold: u32 },
    Emote { from: PlayerId, kind: String },
}

/// `land.closed.result`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GameResult {
    pub outcome: Phase,
    pub wave: u32,
    pub waves: u32,
    pub kills: u32,
    pub base_hp: u32,
    pub players: BTreeMap<PlayerId, PlayerScore>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlayerScore {
    pub kills: u32,
    pub gold: u32,
}

/// Deterministic per land (seeded from its id), so a land replays identically in tests.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn seeded(text: &str) -> Self {
        // FNV-1a: a stable hash, unlike std's randomised one.
        let seed = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        Self(seed | 1)
    }

    fn next_unit(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[derive(Debug)]
pub struct HeroDefense {
    config: HeroDefenseConfig,
    state: HeroDefenseState,
    gold: BTreeMap<PlayerId, u32>,
    time: f32,
    to_spawn: u32,
    next_spawn_at: f32,
    next_enemy_id: u32,
    rng: XorShift,
}

fn upgrade_cost(base_cost: u32, level: u32) -> Option<u32> {
    // Saturating: a configured cost too large for u32 is simply unaffordable.
    (level < MAX_LEVEL).then(|| (level + 1).saturating_mul(base_cost))
}

/// A duration from configured seconds; negative or NaN is zero, too large is "never".
fn secs(value: f32) -> Duration {
    Duration::try_from_secs_f32(value.max(0.0)).unwrap_or(Duration::MAX)
}

fn step_towards(from: (f32, f32), to: (f32, f32), max_step: f32) -> (f32, f32) {
    let (dx, dy) = (to.0 - from.0, to.1 - from.1);
    let distance = dx.hypot(dy);
    if distance <= max_step || distance == 0.0 {
        to
    } else {
        let scale = max_step / distance;
        (from.0 + dx * scale, from.1 + dy * scale)
    }
}

impl HeroDefense {
    pub fn gold_of(&self, player: &str) -> u32 {
        self.gold.get(player).copied().unwrap_or(0)
    }

    pub fn public_state(&self) -> &HeroDefenseState {
        &self.state
    }

    fn upgrade_cost(&self, level: u32) -> Option<u32> {
        upgrade_cost(self.config.upgrade_base_cost, level)
    }

    fn center() -> (f32, f32) {
        (MAP_SIZE / 2.0, MAP_SIZE / 2.0)
    }

    fn start_wave(&mut self, ctx: &mut Ctx<'_, Self>) {
        self.state.wave += 1;
        self.state.phase = Phase::Wave;
        self.state.next_wave_at = None;
        self.to_spawn = self.config.enemies_in_wave(self.state.wave);
        self.next_spawn_at = self.time;
        ctx.broadcast(&HeroServerEvent::WaveStarted {
            wave: self.state.wave,
            enemies: self.to_spawn,
        });
    }

    fn spawn_enemies(&mut self) {
        while self.to_spawn > 0 && self.time >= self.next_spawn_at {
            let angle = self.rng.next_unit() * std::f32::consts::TAU;
            let (cx, cy) = Self::center();
            let radius = MAP_SIZE / 2.0 - 1.0;
            let hp = self.config.enemy_hp
                + self.config.enemy_hp_growth_per_wave * self.state.wave.saturating_sub(1) as f32;
            self.state.enemies.insert(
                self.next_enemy_id,
                Enemy {
                    x: cx + radius * angle.cos(),
                    y: cy + radius * angle.sin(),
                    hp,
                    max_hp: hp,
                },
            );
            // Ids restart after 2^32 spawns, when the first enemies are long gone.
            self.next_enemy_id = self.next_enemy_id.wrapping_add(1);
            self.to_spawn -= 1;
            self.next_spawn_at += self.config.spawn_interval_secs;
        }
    }

    fn move_heroes(&mut self, dt: f32) {
        let step = self.config.hero_speed * dt;
        for hero in self.state.heroes.values_mut() {
            (hero.x, hero.y) = step_towards((hero.x, hero.y), hero.target, step);
        }
    }

    fn move_enemies(&mut self, ctx: &mut Ctx<'_, Self>, dt: f32) {
        let step = self.config.enemy_speed * dt;
        let base = (self.state.base.x, self.state.base.y);
        let mut hits = 0;
        self.state.enemies.retain(|_, enemy| {
            (enemy.x, enemy.y) = step_towards((enemy.x, enemy.y), base, step);
            let arrived = (enemy.x - base.0).hypot(enemy.y - base.1) <= BASE_RADIUS;
            hits += u32::from(arrived);
            !arrived
        });
        if hits > 0 {
            self.state.base.hp = self.state.base.hp.saturating_sub(hits);
            ctx.broadcast(&HeroServerEvent::BaseHit {
                hp: self.state.base.hp,
            });
        }
    }

    fn heroes_attack(&mut self, ctx: &mut Ctx<'_, Self>, dt: f32) {
        let config = &self.config;
        for (player, hero) in &mut self.state.heroes {
            hero.cooldown = (hero.cooldown - dt).max(0.0);
            if hero.cooldown > 0.0 {
                continue;
            }
            let range = config.hero_range * (1.0 + 0.2 * hero.range_level as f32);
            let nearest = self
                .state
                .enemies
                .iter()
                .map(|(id, enemy)| (*id, (enemy.x - hero.x).hypot(enemy.y - hero.y)))
                .filter(|(_, distance)| *distance <= range)
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let Some((enemy_id, _)) = nearest else {
                continue;
            };
            hero.cooldown = config.attack_cooldown_secs;
            let damage = config.hero_damage * (1.0 + 0.5 * hero.damage_level as f32);
            let killed = match self.state.enemies.get_mut(&enemy_id) {
                Some(enemy) => {
                    enemy.hp -= damage;
                    enemy.hp <= 0.0
                }
                None => false,
            };
            if killed {
                self.state.enemies.remove(&enemy_id);
                hero.kills = hero.kills.saturating_add(1);
                self.state.kills = self.state.kills.saturating_add(1);
                let gold = self.gold.entry(player.clone()).or_default();
                *gold = gold.saturating_add(config.gold_per_kill);
                ctx.send_to(
                    player,
                    &HeroServerEvent::GoldEarned {
                        amount: config.gold_per_kill,
                        gold: *gold,
                    },
                );
            }
        }
    }

    fn finish(&mut self, ctx: &mut Ctx<'_, Self>, outcome: Phase) {
        self.state.phase = outcome;
        self.state.next_wave_at = None;
        let players = self
            .state
            .heroes
            .iter()
            .map(|(player, hero)| {
                let score = PlayerScore {
                    kills: hero.kills,
                    gold: self.gold_of(player),
                };
                (player.clone(), score)
            })
            .collect();
        let result = GameResult {
            outcome,
            wave: self.state.wave,
            waves: self.state.waves,
            kills: self.state.kills,
            base_hp: self.state.base.hp,
            players,
        };
        let reason = if outcome == Phase::Victory {
            "victory"
        } else {
            "defeat"
        };
        ctx.close_with_result(reason, &result);
    }
}

impl Land for HeroDefense {
    type Config = HeroDefenseConfig;
    type State = HeroDefenseState;
    type PrivateView = HeroPrivate;
    type Action = HeroAction;
    type ActionOutput = HeroOutput;
    type ClientEvent = HeroClientEvent;
    type ServerEvent = HeroServerEvent;

    fn settings(config: &HeroDefenseConfig) -> LandSettings {
        LandSettings {
            tick_rate_hz: config.tick_rate_hz,
            sync_rate_hz: config.sync_rate_hz,
            max_players: config.max_players,
            dispose_after_empty: secs(config.dispose_after_empty_secs),
            reconnect_grace: secs(config.reconnect_grace_secs),
        }
    }

    fn on_create(config: &HeroDefenseConfig, _ctx: &mut Ctx<'_, Self>, info: &CreateInfo) -> Self {
        let (x, y) = Self::center();
        Self {
            config: config.clone(),
            state: HeroDefenseState {
                phase: Phase::Preparing,
                wave: 0,
                waves: config.waves,
                next_wave_at: Some(config.first_wave_delay_secs),
                base: Base {
                    x,
                    y,
                    hp: config.base_hp,
                    max_hp: config.base_hp,
                },
                heroes: BTreeMap::new(),
                enemies: BTreeMap::new(),
                kills: 0,
            },
            gold: BTreeMap::new(),
            time: 0.0,
            to_spawn: 0,
            next_spawn_at: 0.0,
            next_enemy_id: 1,
            rng: XorShift::seeded(&info.land_id),
        }
    }

    fn state(&self) -> &HeroDefenseState {
        &self.state
    }

    fn private_view(&self, player: &PlayerId) -> Option<HeroPrivate> {
        let hero = self.state.heroes.get(player)?;
        Some(HeroPrivate {
            gold: self.gold_of(player),
            damage_upgrade_cost: self.upgrade_cost(hero.damage_level),
            range_upgrade_cost: self.upgrade_cost(hero.range_level),
        })
    }

    fn on_join(&mut self, ctx: &mut Ctx<'_, Self>, player: &PlayerId) -> Result<(), JoinRejection> {
        if matches!(self.state.phase, Phase::Victory | Phase::Defeat) {
            return Err(JoinRejection::full("the game is over"));
        }
        // Heroes start on a small ring around the base so they do not overlap.
        let slot = self.state.heroes.len() as f32;
        let angle = slot * std::f32::consts::TAU / self.config.max_players.max(1) as f32;
        let (cx, cy) = Self::center();
        let position = (cx + 6.0 * angle.cos(), cy + 6.0 * angle.sin());
        self.state.heroes.insert(
            player.clone(),
            Hero {
                x: position.0,
                y: position.1,
                damage_level: 0,
                range_level: 0,
                kills: 0,
                online: true,
                moves: 0,
                target: position,
                cooldown: 0.0,
            },
        );
        self.gold.entry(player.clone()).or_insert(0);
        ctx.send_to(
            player,
            &HeroServerEvent::Welcome {
                waves: self.config.waves,
                map_size: MAP_SIZE,
            },
        );
        Ok(())
    }

    fn on_leave(&mut self, _ctx: &mut Ctx<'_, Self>, player: &PlayerId, _reason: LeaveReason) {
        self.state.heroes.remove(player);
    }

    fn on_disconnect(&mut self, _ctx: &mut Ctx<'_, Self>, player: &PlayerId) {
        if let Some(hero) = self.state.heroes.get_mut(player) {
            hero.online = false;
        }
    }

    fn on_reconnect(&mut self, _ctx: &mut Ctx<'_, Self>, player: &PlayerId) {
        if let Some(hero) = self.state.heroes.get_mut(player) {
            hero.online = true;
        }
    }

    fn on_action(
        &mut self,
        _ctx: &mut Ctx<'_, Self>,
        player: &PlayerId,
        action: HeroAction,
    ) -> Result<HeroOutput, ActionError> {
        let gold = self.gold_of(player);
        let base_cost = self.config.upgrade_base_cost;
        let Some(hero) = self.state.heroes.get_mut(player) else {
            return Err(ActionError::new("no_hero", "you have no hero in this land"));
        };
        match action {
            HeroAction::Move { x, y } => {
                if !x.is_finite() || !y.is_finite() {
                    return Err(ActionError::new(
                        "invalid_position",
                        "x and y must be numbers",
                    ));
                }
                let target = (x.clamp(0.0, MAP_SIZE), y.clamp(0.0, MAP_SIZE));
                hero.target = target;
                hero.moves = hero.moves.wrapping_add(1);
                Ok(HeroOutput::Moved {
                    x: target.0,
                    y: target.1,
                })
            }
            HeroAction::Upgrade { stat } => {
                let level = match stat {
                    Stat::Damage => &mut hero.damage_level,
                    Stat::Range => &mut hero.range_level,
                };
                let Some(cost) = upgrade_cost(base_cost, *level) else {
                    return Err(ActionError::new(
                        "max_level",
                        format!("{stat:?} is already at level {MAX_LEVEL}").to_lowercase(),
                    ));
                };
                if gold < cost {
                    return Err(ActionError::new(
                        "not_enough_gold",
                        format!("this upgrade costs {cost} gold and you have {gold}"),
                    ));
                }
                *level += 1;
                let level = *level;
                let gold = gold - cost;
                self.gold.insert(player.clone(), gold);
                Ok(HeroOutput::Upgraded { stat, level, gold })
            }
        }
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_, Self>, player: &PlayerId, event: HeroClientEvent) {
        match event {
            HeroClientEvent::Emote { kind } if kind.len() <= 16 => {
                ctx.broadcast(&HeroServerEvent::Emote {
                    from: player.clone(),
                    kind,
                })
            }
            HeroClientEvent::Emote { .. } => {}
        }
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_, Self>, dt: Duration) {
        if matches!(self.state.phase, Phase::Victory | Phase::Defeat) {
            return;
        }
        let dt = dt.as_secs_f32();
        self.time += dt;
        if let Some(at) = self.state.next_wave_at
            && self.time >= at
        {
            self.start_wave(ctx);
        }
        self.spawn_enemies();
        self.move_heroes(dt);
        self.move_enemies(ctx, dt);
        if self.state.base.hp == 0 {
            return self.finish(ctx, Phase::Defeat);
        }
        self.heroes_attack(ctx, dt);
        if self.state.phase == Phase::Wave && self.to_spawn == 0 && self.state.enemies.is_empty() {
            ctx.broadcast(&HeroServerEvent::WaveCleared {
                wave: self.state.wave,
            });
            if self.state.wave >= self.config.waves {
                return self.finish(ctx, Phase::Victory);
            }
            self.state.phase = Phase::Break;
            self.state.next_wave_at = Some(self.time + self.config.wave_break_secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use matchplane_runtime::LandHarness;
    use serde_json::json;

    #[test]
    fn upgrade_without_gold_fails_with_a_clear_error() {
        let mut land = LandHarness::<HeroDefense>::new(HeroDefenseConfig::quick(), "hd-unit");
        land.join("ann").unwrap();
        let result = land
            .action("ann", "upgrade", json!({"stat": "damage"}))
            .unwrap();
        assert!(!result.ok);
        let error = result.error.unwrap();
        assert_eq!(error.code, "not_enough_gold");
        assert!(error.message.contains("costs 10 gold"), "{}", error.message);
    }

    #[test]
    fn a_move_order_shows_in_the_patch_sent_before_its_result() {
        use matchplane_contracts::game::ServerMessage;
        let mut land = LandHarness::<HeroDefense>::new(HeroDefenseConfig::quick(), "hd-unit");
        land.join("ann").unwrap();
        land.messages("ann");
        for expected in 1..=2u64 {
            let result = land
                .action("ann", "move", json!({"x": 10.0, "y": 20.0}))
                .unwrap();
            assert!(result.ok);
            let messages = land.messages("ann");
            let patch_at = messages.iter().position(|message| {
                let ServerMessage::StatePatch(patch) = message else {
                    return false;
                };
                patch.ops.as_array().unwrap().iter().any(|op| {
                    op["path"] == "/heroes/ann/moves" && op["value"].as_u64() == Some(expected)
                })
            });
            let result_at = messages
                .iter()
                .position(|message| matches!(message, ServerMessage::ActionResult(_)));
            assert!(
                patch_at.unwrap() < result_at.unwrap(),
                "move {expected}: {messages:?}"
            );
        }
        assert_eq!(land.land().public_state().heroes["ann"].moves, 2);
    }

    #[test]
    fn positions_beyond_f32_are_refused_and_huge_ones_clamped() {
        let mut land = LandHarness::<HeroDefense>::new(HeroDefenseConfig::quick(), "hd-unit");
        land.join("ann").unwrap();
        // 1e39 does not fit an f32: it decodes as infinity, which is refused.
        for payload in [json!({"x": 1e39, "y": 1.0}), json!({"x": 1.0, "y": -1e300})] {
            let result = land.action("ann", "move", payload).unwrap();
            assert_eq!(result.error.unwrap().code, "invalid_position");
        }
        let result = land
            .action("ann", "move", json!({"x": 3.0e38, "y": -3.0e38}))
            .unwrap();
        assert_eq!(result.result, Some(json!({"x": MAP_SIZE, "y": 0.0})));
        // Non-numbers and missing coordinates are payload errors, not crashes.
        for payload in [json!({"x": "1", "y": 1.0}), json!({"x": 1.0})] {
            let result = land.action("ann", "move", payload).unwrap();
            assert!(!result.ok);
        }
        assert!(!land.is_closed());
    }

    #[test]
    fn extreme_configured_numbers_saturate_instead_of_overflowing() {
        let config = HeroDefenseConfig {
            upgrade_base_cost: u32::MAX,
            enemies_first_wave: u32::MAX,
            enemies_growth_per_wave: u32::MAX,
            dispose_after_empty_secs: f32::MAX,
            reconnect_grace_secs: -1.0,
            ..HeroDefenseConfig::quick()
        };
        let settings = HeroDefense::settings(&config);
        assert_eq!(settings.dispose_after_empty, Duration::MAX);
        assert_eq!(settings.reconnect_grace, Duration::ZERO);
        assert_eq!(config.enemies_in_wave(3), u32::MAX);
        assert_eq!(upgrade_cost(u32::MAX, 1), Some(u32::MAX));
        let mut land = LandHarness::<HeroDefense>::new(config, "hd-unit");
        land.join("ann").unwrap();
        let result = land
            .action("ann", "upgrade", json!({"stat": "range"}))
            .unwrap();
        assert_eq!(result.error.unwrap().code, "not_enough_gold");
    }

    #[test]
    fn a_hero_standing_at_the_base_wins_the_quick_game() {
        let mut land = LandHarness::<HeroDefense>::new(HeroDefenseConfig::quick(), "hd-unit");
        land.join("ann").unwrap();
        land.join("bob").unwrap();
        for _ in 0..20 * 120 {
            if land.is_closed() {
                break;
            }
            land.tick(Duration::from_millis(50));
        }
        assert!(land.is_closed(), "the game should end within two minutes");
        assert!(land.land().public_state().kills > 0);
        assert!(land.land().gold_of("ann") + land.land().gold_of("bob") > 0);
    }
}
