//! What the benches share.

use matchplane_hero_defense::HeroDefenseConfig;

/// A game that never ends, with around 25–40 enemies on the field most of the time.
pub fn busy_config() -> HeroDefenseConfig {
    HeroDefenseConfig {
        waves: u32::MAX,
        first_wave_delay_secs: 0.0,
        wave_break_secs: 0.5,
        enemies_first_wave: 40,
        enemies_growth_per_wave: 0,
        spawn_interval_secs: 0.1,
        enemy_hp: 400.0,
        enemy_speed: 4.0,
        base_hp: u32::MAX,
        ..HeroDefenseConfig::default()
    }
}
