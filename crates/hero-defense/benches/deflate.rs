//! permessage-deflate (RFC 7692) weighed on hero-defense's own state frames: the bytes
//! it would take off the wire, and what it would cost a game server per frame and per
//! connection, for each state-sync encoding. tungstenite (under axum) does not
//! implement the extension, so this applies the compression itself, per connection and
//! per message as the extension does: a sync flush after each message, its trailing
//! `00 00 ff ff` dropped, and either one compression context kept for the connection's
//! life ("context takeover", what browsers accept by default) or a fresh one per
//! message (`server_no_context_takeover`).
//!
//! Two recordings of six players' frames: `bots`, a default game in which every player
//! moves once a second (as `matchplane loadtest` does in the bandwidth run), and `busy`,
//! the always-full land of the sync bench. Sizes and the memory of the compression
//! contexts are printed; criterion times compressing and inflating one frame.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use matchplane_hero_defense::{HeroDefense, HeroDefenseConfig};
use matchplane_runtime::{LandHarness, SyncEncoding};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const TICK: Duration = Duration::from_millis(50);
const PLAYERS: usize = 6;
/// Twenty seconds of play at 20 Hz, as in the bandwidth run.
const TICKS: usize = 400;
/// What RFC 7692 leaves off the end of every compressed message.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Every frame each player received, in order, after the join.
type Recording = Vec<Vec<Vec<u8>>>;

fn record(config: HeroDefenseConfig, sync: SyncEncoding, moves_per_second: bool) -> Recording {
    let mut land = LandHarness::<HeroDefense>::new(config, "bench-land");
    let players: Vec<String> = (0..PLAYERS)
        .map(|index| format!("player-{index}"))
        .collect();
    for player in &players {
        land.join_with(player, sync).unwrap();
    }
    for player in &players {
        land.wire_frames(player);
    }
    let mut frames: Recording = vec![Vec::new(); PLAYERS];
    // A fixed walk instead of random targets, so every run records the same frames.
    let mut seed = 0x2545_f491_u32;
    let mut coordinate = move || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        30.0 + f64::from(seed >> 16) % 400.0 / 10.0
    };
    for tick in 0..TICKS {
        if moves_per_second {
            // Each player moves once a second, the six spread over the second.
            for (index, player) in players.iter().enumerate() {
                if tick % 20 == index * 3 {
                    land.action(
                        player,
                        "move",
                        json!({"x": coordinate(), "y": coordinate()}),
                    );
                }
            }
        }
        land.tick(TICK);
        for (index, player) in players.iter().enumerate() {
            frames[index].extend(land.wire_frames(player));
        }
    }
    frames
}

#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    level: u32,
    window_bits: u8,
    context_takeover: bool,
}

const MODES: [Mode; 4] = [
    Mode {
        name: "no context takeover, level 6",
        level: 6,
        window_bits: 15,
        context_takeover: false,
    },
    Mode {
        name: "context takeover, 32 KiB window, level 6",
        level: 6,
        window_bits: 15,
        context_takeover: true,
    },
    Mode {
        name: "context takeover, 32 KiB window, level 1",
        level: 1,
        window_bits: 15,
        context_takeover: true,
    },
    Mode {
        name: "context takeover, 1 KiB window, level 6",
        level: 6,
        window_bits: 10,
        context_takeover: true,
    },
];

fn compressor(mode: Mode) -> Compress {
    // Raw deflate (no zlib header), as the extension sends it.
    Compress::new_with_window_bits(Compression::new(mode.level), false, mode.window_bits)
}

/// One message compressed as permessage-deflate sends it.
fn deflate_message(compress: &mut Compress, mode: Mode, frame: &[u8], out: &mut Vec<u8>) {
    if !mode.context_takeover {
        compress.reset();
    }
    out.clear();
    out.reserve(frame.len() + 64);
    let start = compress.total_in();
    loop {
        let consumed = usize::try_from(compress.total_in() - start).unwrap();
        compress
            .compress_vec(&frame[consumed..], out, FlushCompress::Sync)
            .unwrap();
        if usize::try_from(compress.total_in() - start).unwrap() == frame.len()
            && out.ends_with(&SYNC_TAIL)
        {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    out.truncate(out.len() - SYNC_TAIL.len());
}

/// One message inflated as a client would (the tail put back first).
fn inflate_message(decompress: &mut Decompress, message: &[u8], out: &mut Vec<u8>) {
    let mut input = Vec::with_capacity(message.len() + SYNC_TAIL.len());
    input.extend_from_slice(message);
    input.extend_from_slice(&SYNC_TAIL);
    out.clear();
    let start = decompress.total_in();
    loop {
        out.reserve(out.capacity().max(256));
        let consumed = usize::try_from(decompress.total_in() - start).unwrap();
        decompress
            .decompress_vec(&input[consumed..], out, FlushDecompress::Sync)
            .unwrap();
        if usize::try_from(decompress.total_in() - start).unwrap() == input.len()
            && out.len() < out.capacity()
        {
            break;
        }
    }
}

fn rss_kib() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

fn report_sizes(name: &str, recording: &Recording) {
    let frames: usize = recording.iter().map(Vec::len).sum();
    let plain: usize = recording.iter().flatten().map(Vec::len).sum();
    let seconds = TICKS as f64 * TICK.as_secs_f64();
    let per_player = |bytes: usize| bytes as f64 / PLAYERS as f64 / seconds;
    eprintln!(
        "{name}: {frames} frames, {:.0} B/s per player uncompressed ({:.0} B per frame)",
        per_player(plain),
        plain as f64 / frames as f64
    );
    for mode in MODES {
        let mut compressed = 0usize;
        let mut out = Vec::new();
        for player in recording {
            let mut compress = compressor(mode);
            let mut decompress = Decompress::new_with_window_bits(false, mode.window_bits);
            let mut inflated = Vec::new();
            for frame in player {
                deflate_message(&mut compress, mode, frame, &mut out);
                // What the client inflates must be the frame, or the sizes mean nothing.
                if !mode.context_takeover {
                    decompress.reset(false);
                }
                inflate_message(&mut decompress, &out, &mut inflated);
                assert_eq!(&inflated, frame);
                compressed += out.len();
            }
        }
        eprintln!(
            "  {:<42} {:>7.0} B/s per player, {:.2}x smaller",
            mode.name,
            per_player(compressed),
            plain as f64 / compressed as f64
        );
    }
}

/// The memory one connection's compression context holds once it has sent frames,
/// and that of the inflate context the server also needs for what the client sends.
fn report_memory(recording: &Recording) {
    const CONNECTIONS: usize = 2_000;
    for mode in [MODES[1], MODES[3]] {
        let before = rss_kib();
        let mut out = Vec::new();
        let contexts: Vec<(Compress, Decompress)> = (0..CONNECTIONS)
            .map(|index| {
                let mut compress = compressor(mode);
                let mut decompress = Decompress::new_with_window_bits(false, mode.window_bits);
                let mut inflated = Vec::new();
                for frame in recording[index % PLAYERS].iter().take(40) {
                    deflate_message(&mut compress, mode, frame, &mut out);
                    inflate_message(&mut decompress, &out, &mut inflated);
                }
                (compress, decompress)
            })
            .collect();
        let after = rss_kib();
        eprintln!(
            "  {}: {:.1} KiB per connection (deflate + inflate contexts, RSS over {CONNECTIONS})",
            mode.name,
            (after.saturating_sub(before)) as f64 / CONNECTIONS as f64
        );
        drop(black_box(contexts));
    }
}

fn deflate(c: &mut Criterion) {
    let recordings = [
        (
            "bots",
            record(HeroDefenseConfig::default(), SyncEncoding::Patch, true),
        ),
        (
            "bots_merge",
            record(HeroDefenseConfig::default(), SyncEncoding::Merge, true),
        ),
        (
            "bots_binary",
            record(HeroDefenseConfig::default(), SyncEncoding::Binary, true),
        ),
        (
            "busy",
            record(common::busy_config(), SyncEncoding::Patch, false),
        ),
        (
            "busy_binary",
            record(common::busy_config(), SyncEncoding::Binary, false),
        ),
    ];
    for (name, recording) in &recordings {
        report_sizes(name, recording);
    }
    report_memory(&recordings[0].1);

    let mut group = c.benchmark_group("permessage_deflate");
    group.measurement_time(Duration::from_secs(4));
    for (name, recording) in [&recordings[0], &recordings[3]] {
        let frames: Vec<&Vec<u8>> = recording[0].iter().collect();
        for (suffix, mode) in [
            ("", MODES[1]),
            ("_level_1", MODES[2]),
            ("_no_context_takeover", MODES[0]),
        ] {
            let mut compress = compressor(mode);
            let mut out = Vec::new();
            let mut next = 0;
            group.bench_function(format!("deflate_{name}_frame{suffix}"), |b| {
                b.iter(|| {
                    deflate_message(&mut compress, mode, frames[next % frames.len()], &mut out);
                    next += 1;
                    black_box(out.len())
                });
            });
        }
        // The client's side: the frames compressed once, inflated in order.
        let mode = MODES[1];
        let mut compress = compressor(mode);
        let compressed: Vec<Vec<u8>> = frames
            .iter()
            .map(|frame| {
                let mut out = Vec::new();
                deflate_message(&mut compress, mode, frame, &mut out);
                out
            })
            .collect();
        let mut decompress = Decompress::new_with_window_bits(false, mode.window_bits);
        let mut inflated = Vec::new();
        let mut next = 0;
        group.bench_function(format!("inflate_{name}_frame"), |b| {
            b.iter(|| {
                if next % compressed.len() == 0 {
                    decompress.reset(false);
                }
                inflate_message(
                    &mut decompress,
                    &compressed[next % compressed.len()],
                    &mut inflated,
                );
                next += 1;
                black_box(inflated.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, deflate);
criterion_main!(benches);
