//! The memory store's share of one 1v1 assignment, as the control plane pays
//! it: two tickets created, each read back once (the realtime subscription),
//! one match committed with a signed-size token per ticket, and finished
//! tickets purged past a cap as housekeeping does, so the maps hold a steady
//! ~100,000 tickets instead of growing through the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use matchplane_contracts::matchmaking::Assignment;
use matchplane_control_plane::store::{
    CommitOutcome, CreateOutcome, MatchCommit, MemoryStore, Store, TicketRecord,
};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Finished tickets kept, as `--max-finished-tickets` would.
const KEEP_FINISHED: u64 = 100_000;
/// Matches between two purges.
const PURGE_EVERY: u64 = 1_000;

fn ticket(id: u64, now: u64) -> TicketRecord {
    TicketRecord::queued(
        format!("01JZ{id:022}"),
        "hero-defense:1v1".into(),
        vec![format!("player-{id}")],
        now,
        now + 60_000,
    )
}

fn assignment(ticket: u64, land: u64) -> Assignment {
    Assignment {
        assignment_id: format!("0b7c6f0e-6a44-4c1b-9d9b-{ticket:012}"),
        // An ES256 match token is ≈ 560 characters.
        match_token: "t".repeat(560),
        connect_url: format!("ws://127.0.0.1:3901/game/hero-defense/hero-defense:{land:036}"),
        land_id: format!("hero-defense:{land:036}"),
        server_id: "game-1".into(),
        expires_at: "2026-12-07T23:00:00.000Z".into(),
        member_tokens: BTreeMap::new(),
        match_id: Some(format!("5d1f0c3e-2b7a-4e55-9f0e-{land:012}")),
        team: Some((ticket % 2) as u32),
    }
}

fn assignment_life(c: &mut Criterion) {
    let store = MemoryStore::new();
    // A purge yields between its batches; the rest never waits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut next: u64 = 0;
    let mut group = c.benchmark_group("memory_store");
    group.throughput(Throughput::Elements(2));
    group.bench_function("one_1v1_match", |b| {
        b.iter(|| {
            next += 1;
            let now = 1_800_000_000_000 + next / 10;
            let (first, second) = (2 * next, 2 * next + 1);
            let mut ids = Vec::with_capacity(2);
            for id in [first, second] {
                let created = store.create_ticket(ticket(id, now), now).now_or_never();
                let Some(Ok(CreateOutcome::Created(record))) = created else {
                    panic!("not created: {created:?}");
                };
                let read = store.ticket(&record.ticket_id).now_or_never();
                assert!(matches!(read, Some(Ok(Some(_)))));
                ids.push(record.ticket_id);
            }
            let commit = MatchCommit {
                assignments: ids
                    .into_iter()
                    .zip([first, second])
                    .map(|(ticket_id, id)| (ticket_id, assignment(id, next)))
                    .collect(),
                assignment_expires_at: now + 60_000,
                server_instance_id: Some("instance-1".into()),
            };
            let outcome = store.commit_matches(vec![commit], now).now_or_never();
            assert!(matches!(
                outcome
                    .as_ref()
                    .map(|result| result.as_ref().map(|all| &all[..])),
                Some(Ok([CommitOutcome::Applied(_)]))
            ));
            if next.is_multiple_of(PURGE_EVERY) {
                runtime
                    .block_on(store.purge_finished(0, KEEP_FINISHED))
                    .unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, assignment_life);
criterion_main!(benches);
