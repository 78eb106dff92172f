//! The sync path of a busy hero-defense land: one 20 Hz tick with 8 players, from game
//! logic through the shared change and per-player private changes to encoded frames, in
//! each state-sync encoding (JSON Patch, merge patches, binary frames); and the same
//! for the next of 200 six-player lands, as a server meets its lands: cold in the caches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use matchplane_hero_defense::HeroDefense;
use matchplane_runtime::{LandHarness, SyncEncoding};
use serde_json::json;

// The allocator of the `matchplane` binary, so that allocation costs what it costs
// in the server.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const TICK: Duration = Duration::from_millis(50);

/// A land that never ends, with around 25–40 enemies on the field most of the time.
fn busy_land(players: usize, sync: SyncEncoding) -> LandHarness<HeroDefense> {
    let config = common::busy_config();
    let mut land = LandHarness::<HeroDefense>::new(config, "bench-land");
    for index in 0..players {
        let player = format!("player-{index}");
        land.join_with(&player, sync).unwrap();
        let angle = index as f32;
        land.action(
            &player,
            "move",
            json!({"x": 50.0 + 20.0 * angle.cos(), "y": 50.0 + 20.0 * angle.sin()}),
        );
    }
    for _ in 0..200 {
        land.tick(TICK);
    }
    land.drain_frames();
    land
}

fn sync_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("hero_defense");
    group.measurement_time(Duration::from_secs(8));
    for (suffix, sync) in [
        ("", SyncEncoding::Patch),
        ("_merge", SyncEncoding::Merge),
        ("_binary", SyncEncoding::Binary),
    ] {
        let mut land = busy_land(8, sync);
        let mut bytes = 0usize;
        let mut ticks = 0usize;
        group.bench_function(format!("tick_and_sync_8_players{suffix}"), |b| {
            b.iter(|| {
                land.tick(TICK);
                bytes += land.drain_frames();
                ticks += 1;
            });
        });
        eprintln!(
            "hero_defense{suffix}: mean {} bytes of frames per tick for 8 players (over {ticks} ticks)",
            bytes / ticks.max(1)
        );
    }
    // A server holds hundreds of lands: each tick finds its land's state cold in the
    // caches, which one land ticked over and over never shows. One iteration ticks
    // the next of 200 six-player lands.
    let mut lands: Vec<_> = (0..200)
        .map(|_| busy_land(6, SyncEncoding::Patch))
        .collect();
    let mut next = 0;
    group.bench_function("tick_and_sync_6_players_of_200_lands", |b| {
        b.iter(|| {
            let land = &mut lands[next % 200];
            next += 1;
            land.tick(TICK);
            black_box(land.drain_frames());
        });
    });
    drop(lands);
    let mut land = busy_land(1, SyncEncoding::Patch);
    group.bench_function("tick_and_sync_1_player", |b| {
        b.iter(|| {
            land.tick(TICK);
            black_box(land.drain_frames());
        });
    });
    group.finish();
}

criterion_group!(benches, sync_path);
criterion_main!(benches);
