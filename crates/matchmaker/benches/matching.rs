//! Throughput benches: `cargo bench -p matchplane-matchmaker --bench matching`.
//!
//! (a) 1v1 FIFO: 1M tickets inserted and matched.
//! (b) 5v5 ranked with skill windows, parties of 1-5 and 4 regions: a
//!     standing pool of 100k tickets matched by one tick, and the same
//!     tickets arriving in ticks of 1,000.

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{NOW, Rng, fifo_ticket, ranked_engine, ranked_pool, ranked_ticket};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use matchplane_matchmaker::{Engine, EngineConfig};

fn engine() -> Engine {
    Engine::new(EngineConfig::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn fifo_1v1(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let mut group = c.benchmark_group("a_fifo_1v1");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(N));
    group.bench_function("insert_1m_then_match", |b| {
        b.iter_batched(
            || (engine(), (0..N).map(fifo_ticket).collect::<Vec<_>>()),
            |(mut engine, tickets)| {
                for t in tickets {
                    let _ = engine.insert("duel:1v1", t);
                }
                let matches = engine.find_matches("duel:1v1", NOW + N);
                assert_eq!(matches.len() as u64, N / 2);
                (engine, matches)
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("match_on_every_arrival_1m", |b| {
        b.iter_batched(
            || (engine(), (0..N).map(fifo_ticket).collect::<Vec<_>>()),
            |(mut engine, tickets)| {
                let mut matched = 0usize;
                for t in tickets {
                    let now = t.enqueued_at;
                    let _ = engine.insert("duel:1v1", t);
                    matched += engine.find_matches("duel:1v1", now).len();
                }
                assert_eq!(matched as u64, N / 2);
                engine
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn ranked_5v5(c: &mut Criterion) {
    const POOL: u64 = 100_000;
    // Count what one tick matches, so throughput is in tickets matched.
    let mut probe = ranked_pool(POOL, 7);
    let drained: usize = probe
        .find_matches("moba:5v5-ranked", NOW)
        .iter()
        .map(|m| m.teams.iter().map(Vec::len).sum::<usize>())
        .sum();
    println!(
        "b: one tick over a {POOL}-ticket pool matches {drained} tickets, leaves {}",
        probe.len()
    );

    let mut group = c.benchmark_group("b_ranked_5v5");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(drained as u64));
    group.bench_function("tick_over_standing_pool_100k", |b| {
        b.iter_batched(
            || ranked_pool(POOL, 7),
            |mut engine| {
                let matches = engine.find_matches("moba:5v5-ranked", NOW);
                black_box(matches.len());
                engine
            },
            BatchSize::PerIteration,
        );
    });

    let arrivals = {
        let mut rng = Rng::new(11);
        (0..POOL)
            .map(|i| ranked_ticket(&mut rng, i))
            .collect::<Vec<_>>()
    };
    let mut probe = ranked_engine();
    let mut matched = 0usize;
    for chunk in arrivals.chunks(1000) {
        for t in chunk {
            let _ = probe.insert("moba:5v5-ranked", t.clone());
        }
        matched += probe
            .find_matches("moba:5v5-ranked", NOW)
            .iter()
            .map(|m| m.teams.iter().map(Vec::len).sum::<usize>())
            .sum::<usize>();
    }
    println!(
        "b: {POOL} arrivals in ticks of 1000 match {matched} tickets, leave {}",
        probe.len()
    );
    group.throughput(Throughput::Elements(matched as u64));
    group.bench_function("arrivals_100k_ticks_of_1000", |b| {
        b.iter_batched(
            || (ranked_engine(), arrivals.clone()),
            |(mut engine, tickets)| {
                let mut n = 0usize;
                let mut it = tickets.into_iter().peekable();
                while it.peek().is_some() {
                    for t in it.by_ref().take(1000) {
                        let _ = engine.insert("moba:5v5-ranked", t);
                    }
                    n += engine.find_matches("moba:5v5-ranked", NOW).len();
                }
                black_box(n);
                engine
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// `find_matches` on every arrival into a standing pool of ~100k tickets
/// that mostly cannot match yet (skills spread thinly): measures the cost of
/// one arrival-triggered call, dominated by skipping unchanged anchors.
fn standing_pool_arrivals(c: &mut Criterion) {
    const POOL: u64 = 100_000;
    let sparse = |rng: &mut Rng, i: u64| {
        let mut t = ranked_ticket(rng, i);
        t.attributes
            .insert("skill".to_owned(), rng.below(20_000_000) as f64);
        t.enqueued_at = NOW;
        t
    };
    let mut rng = Rng::new(5);
    let mut engine = ranked_engine();
    for i in 0..POOL {
        let _ = engine.insert("moba:5v5-ranked", sparse(&mut rng, i));
    }
    let first = engine.find_matches("moba:5v5-ranked", NOW).len();
    println!(
        "b: sparse standing pool: first tick formed {first} matches, {} tickets stand",
        engine.len()
    );
    let mut next_id = POOL;
    let mut group = c.benchmark_group("b_ranked_5v5");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    group.bench_function("arrival_into_standing_pool_100k", |b| {
        b.iter(|| {
            next_id += 1;
            let _ = engine.insert("moba:5v5-ranked", sparse(&mut rng, next_id));
            black_box(engine.find_matches("moba:5v5-ranked", NOW).len())
        });
    });
    group.finish();
    println!("b: standing pool after the bench: {} tickets", engine.len());
}

criterion_group!(benches, fifo_1v1, ranked_5v5, standing_pool_arrivals);
criterion_main!(benches);
