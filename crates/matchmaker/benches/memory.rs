//! (c) Memory per queued ticket: `cargo bench -p matchplane-matchmaker --bench memory`.
//!
//! Measured as the growth of the process's resident set while 1M tickets
//! are queued (and never matched), divided by the ticket count. Interned
//! strings are shared, so this is the engine's own cost per ticket. Not a
//! criterion bench: it prints one figure per workload.

mod common;

use common::{NOW, Rng, fifo_ticket, ranked_engine, ranked_ticket, rss_bytes};
use matchplane_matchmaker::{BackfillRequest, Engine, EngineConfig, Millis};

const N: u64 = 1_000_000;

fn measure(
    name: &str,
    mut engine: Engine,
    key: &str,
    mut make: impl FnMut(u64) -> matchplane_matchmaker::Ticket,
    relax_at: Option<Millis>,
) {
    // Build one ticket first so allocator arenas for the transient maps
    // exist before the baseline.
    drop(make(u64::MAX));
    let before = rss_bytes().unwrap_or(0);
    for i in 0..N {
        let _ = engine.insert(key, make(i));
    }
    if let Some(now) = relax_at {
        // A backfill request with no open slot applies region relaxation
        // (every ticket then sits in all four region pools) and matches nothing.
        let request = BackfillRequest {
            open_slots: vec![0, 0],
            ..BackfillRequest::default()
        };
        assert!(engine.backfill(key, &request, now).is_none());
    }
    let after = rss_bytes().unwrap_or(0);
    assert_eq!(engine.len() as u64, N);
    println!(
        "memory/{name}: {} tickets queued, RSS +{:.1} MiB, {:.0} bytes per ticket",
        engine.len(),
        (after.saturating_sub(before)) as f64 / (1024.0 * 1024.0),
        after.saturating_sub(before) as f64 / N as f64
    );
    drop(engine);
}

const WORKLOADS: [&str; 3] = ["fifo_1v1", "ranked_5v5", "ranked_5v5_all_region_relaxed"];

fn run(workload: &str) {
    let mut rng = Rng::new(3);
    match workload {
        "fifo_1v1" => measure(
            workload,
            Engine::new(EngineConfig::default()).unwrap_or_else(|e| panic!("{e}")),
            "duel:1v1",
            fifo_ticket,
            None,
        ),
        "ranked_5v5" => measure(
            workload,
            ranked_engine(),
            "moba:5v5-ranked",
            |i| ranked_ticket(&mut rng, i),
            None,
        ),
        _ => measure(
            workload,
            ranked_engine(),
            "moba:5v5-ranked",
            |i| ranked_ticket(&mut rng, i),
            Some(NOW + 60_000),
        ),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` lists targets; nothing to measure then.
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--workload") {
        if let Some(w) = args.get(i + 1) {
            run(w);
        }
        return;
    }
    // One process per workload: memory freed by an earlier workload stays
    // in the allocator and would hide part of the next one's growth.
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    for w in WORKLOADS {
        let status = std::process::Command::new(&exe)
            .args(["--workload", w])
            .status()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success(), "workload {w} failed");
    }
}
