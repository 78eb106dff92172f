//! The `Store` contract, run against every implementation: the embedded redb
//! store, the in-memory store of `--ephemeral`, and the Redis store on a real
//! `redis-server` (started per test on a free loopback port). A scenario is written once against `dyn Store`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::sync::Arc;

use matchplane_contracts::matchmaking::{Assignment, TicketStatus};
use matchplane_control_plane::clock::Millis;
use matchplane_control_plane::store::{
    CancelOutcome, CommitOutcome, CreateOutcome, MatchCommit, RedisStore, Release, ReleaseOutcome,
    ReleaseRequest, ServerRecord, Store, TicketRecord,
};
use redis_server::RedisServer;

type Shared = Arc<dyn Store>;

/// Runs each scenario once per store implementation.
macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod redb {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(std::sync::Arc::new(
                        matchplane_control_plane::store::RedbStore::in_memory().unwrap(),
                    ))
                    .await;
                }
            )*
        }
        mod memory {
            $(
                // Several workers, so the concurrent scenarios really race for the lock.
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(std::sync::Arc::new(
                        matchplane_control_plane::store::MemoryStore::new(),
                    ))
                    .await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let server = super::RedisServer::start();
                    let store = super::RedisStore::connect(&server.url(), "test").await.unwrap();
                    super::$scenario(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

conformance!(
    a_ticket_reads_back_exactly_as_stored,
    group_ids_are_scoped_to_their_owner,
    a_generated_group_deduplicates_nothing,
    spent_tokens_are_dropped_and_nothing_else,
    a_player_waits_in_one_queued_ticket_at_a_time,
    cancel_changes_only_queued_tickets,
    a_commit_is_all_or_nothing,
    expiry_changes_only_queued_tickets,
    released_assignments_requeue_once_and_keep_every_index_right,
    a_release_fails_the_ticket_when_its_player_queued_elsewhere,
    a_release_can_fail_the_ticket,
    queued_per_queue_follows_every_change,
    purge_removes_only_finished_tickets_past_retention,
    purge_also_keeps_finished_tickets_under_a_count_cap,
    purge_in_many_batches_matches_one_pass,
    players_are_free_to_queue_again_once_their_ticket_leaves_the_queue,
    servers_are_put_listed_and_removed,
    queue_counts_count_every_status,
    queued_tickets_come_oldest_first,
    concurrent_creates_for_one_player_admit_exactly_one,
    concurrent_commits_of_one_ticket_apply_exactly_one,
);

fn ticket(id: &str, group: &str, now: Millis) -> TicketRecord {
    TicketRecord {
        group_id: group.to_owned(),
        ..TicketRecord::queued(
            id.to_owned(),
            "q".to_owned(),
            vec![format!("{id}-player")],
            now,
            now + 600_000,
        )
    }
}

fn party(id: &str, owner: &str, group: &str, members: &[&str], now: Millis) -> TicketRecord {
    TicketRecord {
        owner: owner.to_owned(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        ..ticket(id, group, now)
    }
}

fn created(outcome: CreateOutcome) -> TicketRecord {
    match outcome {
        CreateOutcome::Created(ticket) => ticket,
        other => panic!("expected a new ticket, got {other:?}"),
    }
}

async fn create(store: &Shared, ticket: TicketRecord) -> TicketRecord {
    let now = ticket.enqueued_at;
    created(store.create_ticket(ticket, now).await.unwrap())
}

fn assignment_on(server: &str, id: &str) -> Assignment {
    Assignment {
        assignment_id: id.to_owned(),
        match_token: "token".to_owned(),
        connect_url: "ws://127.0.0.1:1/game/q".to_owned(),
        land_id: format!("q:{id}"),
        server_id: server.to_owned(),
        expires_at: "1970-01-01T00:01:00Z".to_owned(),
        member_tokens: BTreeMap::new(),
        match_id: Some("m".to_owned()),
        team: Some(0),
    }
}

fn one_match(tickets: &[(&str, &str)], server: &str, expires_at: Millis) -> MatchCommit {
    MatchCommit {
        assignments: tickets
            .iter()
            .map(|(ticket, id)| ((*ticket).to_owned(), assignment_on(server, id)))
            .collect(),
        assignment_expires_at: expires_at,
        server_instance_id: Some("i1".to_owned()),
    }
}

async fn assign(
    store: &Shared,
    ticket: &str,
    server: &str,
    id: &str,
    now: Millis,
) -> CommitOutcome {
    store
        .commit_matches(vec![one_match(&[(ticket, id)], server, now + 60_000)], now)
        .await
        .unwrap()
        .remove(0)
}

fn release(ticket: &str, assignment: &str, release: Release) -> ReleaseRequest {
    ReleaseRequest {
        ticket_id: ticket.to_owned(),
        assignment_id: assignment.to_owned(),
        release,
        joined_land: None,
    }
}

async fn status(store: &Shared, id: &str) -> Option<TicketStatus> {
    store.ticket(id).await.unwrap().map(|ticket| ticket.status)
}

async fn a_ticket_reads_back_exactly_as_stored(store: Shared) {
    // Empty lists and maps, floats that do not survive 14 significant digits,
    // nested JSON: what a Lua re-encoding would break.
    let full = TicketRecord {
        region: Some("eu".to_owned()),
        constraints: Some(serde_json::json!({"mode": ["ranked"], "empty": {}, "none": []})),
        attributes: BTreeMap::from([("skill".to_owned(), 0.1 + 0.2), ("mmr".to_owned(), 1e300)]),
        tags: Vec::new(),
        string_args: BTreeMap::from([("map".to_owned(), "dust \"2\" ü".to_owned())]),
        latencies: BTreeMap::from([("eu".to_owned(), 23)]),
        enqueued_at: 1_700_000_000_123,
        expires_at: 1_700_000_600_123,
        updated_at: 1_700_000_000_123,
        ..party("t", "alice", "g", &["alice", "bob"], 0)
    };
    let stored = create(&store, full.clone()).await;
    assert_eq!(stored, full);
    assert_eq!(store.ticket("t").await.unwrap(), Some(full.clone()));
    assert_eq!(store.ticket("nope").await.unwrap(), None);

    let now = 1_700_000_001_000;
    let CommitOutcome::Applied(applied) = store
        .commit_matches(vec![one_match(&[("t", "as-1")], "gs", now + 60_000)], now)
        .await
        .unwrap()
        .remove(0)
    else {
        panic!("not applied")
    };
    let expected = TicketRecord {
        status: TicketStatus::Assigned,
        updated_at: now,
        assignment: Some(assignment_on("gs", "as-1")),
        assignment_expires_at: Some(now + 60_000),
        assigned_instance: Some("i1".to_owned()),
        ..full
    };
    assert_eq!(applied, vec![expected.clone()]);
    assert_eq!(store.ticket("t").await.unwrap(), Some(expected));
    store.ping().await.unwrap();
}

async fn group_ids_are_scoped_to_their_owner(store: Shared) {
    let alice = create(&store, party("t-alice", "alice", "g", &["alice"], 1_000)).await;
    // Another owner reusing the groupId gets a ticket of its own.
    let mallory = create(
        &store,
        party("t-mallory", "mallory", "g", &["mallory"], 1_001),
    )
    .await;
    assert_ne!(mallory.ticket_id, alice.ticket_id);
    // The same owner retrying gets its own ticket back.
    let retry = store
        .create_ticket(party("t-retry", "alice", "g", &["alice"], 1_002), 1_002)
        .await
        .unwrap();
    assert_eq!(retry, CreateOutcome::Existing(alice.clone()));
    assert!(store.ticket("t-retry").await.unwrap().is_none());
    // An assigned ticket with a usable assignment still holds its group...
    assign(&store, "t-alice", "gs", "as", 2_000).await;
    let retry = store
        .create_ticket(party("t-retry", "alice", "g", &["alice"], 2_001), 2_001)
        .await
        .unwrap();
    assert!(matches!(retry, CreateOutcome::Existing(ref t) if t.ticket_id == "t-alice"));
    // ...until the assignment expires; then the group may enqueue again.
    let late = 2_000 + 60_000;
    create(&store, party("t-late", "alice", "g", &["alice"], late)).await;
    // An owner's empty owner field defaults to the first member.
    let ownerless = create(&store, party("t-x", "", "gx", &["xavier"], late)).await;
    assert_eq!(ownerless.owner, "xavier");
}

async fn a_generated_group_deduplicates_nothing(store: Shared) {
    // A ticket whose request named no group gets one no request can name.
    let first = ticket("t1", &TicketRecord::generated_group_id("t1"), 1_000);
    assert!(!first.has_named_group());
    create(&store, first).await;
    // Naming that group later is a group of its own, not a retry of t1.
    let naming_it = party("t2", "t1-player", "group-t1", &["t2-player"], 1_001);
    assert!(naming_it.has_named_group());
    assert_eq!(create(&store, naming_it).await.ticket_id, "t2");
    // Named groups still deduplicate.
    let retried = party("t3", "t1-player", "group-t1", &["t2-player"], 1_002);
    match store.create_ticket(retried, 1_002).await.unwrap() {
        CreateOutcome::Existing(existing) => assert_eq!(existing.ticket_id, "t2"),
        other => panic!("expected t2 back, got {other:?}"),
    }
    assert_eq!(store.purge_finished(u64::MAX, 0).await.unwrap(), 0);
}

async fn a_player_waits_in_one_queued_ticket_at_a_time(store: Shared) {
    create(&store, party("solo", "bob", "g1", &["bob"], 1_000)).await;
    // Alone under another group, or inside someone else's party: refused.
    for (id, owner, group, members) in [
        ("again", "bob", "g2", vec!["bob"]),
        ("party", "carol", "g3", vec!["carol", "bob"]),
    ] {
        let outcome = store
            .create_ticket(party(id, owner, group, &members, 1_001), 1_001)
            .await
            .unwrap();
        assert_eq!(
            outcome,
            CreateOutcome::PlayerAlreadyQueued {
                player_id: "bob".to_owned(),
                ticket_id: "solo".to_owned(),
            }
        );
        assert!(store.ticket(id).await.unwrap().is_none(), "nothing stored");
    }
    // The refused party did not claim carol either.
    create(
        &store,
        party("carol-solo", "carol", "g4", &["carol"], 1_002),
    )
    .await;
}

async fn cancel_changes_only_queued_tickets(store: Shared) {
    assert_eq!(
        store.cancel_ticket("missing", 1_000).await.unwrap(),
        CancelOutcome::NotFound
    );
    create(&store, party("t", "pa", "g", &["pa"], 1_000)).await;
    let CancelOutcome::Cancelled(cancelled) = store.cancel_ticket("t", 2_000).await.unwrap() else {
        panic!("not cancelled")
    };
    assert_eq!(
        (cancelled.status, cancelled.updated_at),
        (TicketStatus::Cancelled, 2_000)
    );
    assert_eq!(
        store.cancel_ticket("t", 3_000).await.unwrap(),
        CancelOutcome::NotQueued(cancelled)
    );
    // The player is free again, and the group too.
    create(&store, party("t2", "pa", "g", &["pa"], 3_000)).await;
    assign(&store, "t2", "gs", "as", 4_000).await;
    let CancelOutcome::NotQueued(assigned) = store.cancel_ticket("t2", 5_000).await.unwrap() else {
        panic!("an assigned ticket was cancelled")
    };
    assert_eq!(assigned.status, TicketStatus::Assigned);
    assert_eq!(status(&store, "t2").await, Some(TicketStatus::Assigned));
    assert!(store.queued_tickets().await.unwrap().is_empty());
}

async fn a_commit_is_all_or_nothing(store: Shared) {
    for (id, player) in [("a", "pa"), ("b", "pb"), ("c", "pc"), ("d", "pd")] {
        create(&store, party(id, player, id, &[player], 1_000)).await;
    }
    store.cancel_ticket("b", 1_500).await.unwrap();
    let outcomes = store
        .commit_matches(
            vec![
                // One ticket is no longer queued (or does not exist): nothing is written.
                one_match(
                    &[("a", "as-a"), ("b", "as-b"), ("zz", "as-z")],
                    "gs-1",
                    60_000,
                ),
                one_match(&[("c", "as-c"), ("d", "as-d")], "gs-2", 60_000),
                // A ticket taken by an earlier match of the same batch.
                one_match(&[("a", "as-a2"), ("c", "as-c2")], "gs-3", 60_000),
            ],
            2_000,
        )
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 3);
    assert_eq!(
        outcomes[0],
        CommitOutcome::Rejected {
            not_queued: vec!["b".to_owned(), "zz".to_owned()]
        }
    );
    let CommitOutcome::Applied(applied) = &outcomes[1] else {
        panic!("{:?}", outcomes[1])
    };
    let ids: Vec<_> = applied.iter().map(|t| t.ticket_id.as_str()).collect();
    assert_eq!(ids, ["c", "d"]);
    assert!(applied.iter().all(|t| t.status == TicketStatus::Assigned
        && t.assignment_expires_at == Some(60_000)
        && t.updated_at == 2_000));
    assert_eq!(
        outcomes[2],
        CommitOutcome::Rejected {
            not_queued: vec!["c".to_owned()]
        }
    );
    // The rejected match left its queued ticket queued and indexed nowhere.
    assert_eq!(status(&store, "a").await, Some(TicketStatus::Queued));
    assert!(store.assigned_on_server("gs-1").await.unwrap().is_empty());
    assert!(store.assigned_on_server("gs-3").await.unwrap().is_empty());
    let on_two: Vec<_> = store
        .assigned_on_server("gs-2")
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.ticket_id)
        .collect();
    assert_eq!(on_two.len(), 2);
    let queued: Vec<_> = store
        .queued_tickets()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.ticket_id)
        .collect();
    assert_eq!(queued, ["a"]);
    assert!(
        store
            .commit_matches(Vec::new(), 2_000)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn expiry_changes_only_queued_tickets(store: Shared) {
    for (id, player) in [("a", "pa"), ("b", "pb"), ("c", "pc")] {
        create(&store, party(id, player, id, &[player], 1_000)).await;
    }
    assign(&store, "b", "gs", "as", 1_500).await;
    let expired = store
        .expire_tickets(
            vec![
                "a".to_owned(),
                "b".to_owned(),
                "nope".to_owned(),
                "a".to_owned(),
            ],
            2_000,
        )
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (
            expired[0].ticket_id.as_str(),
            expired[0].status,
            expired[0].updated_at
        ),
        ("a", TicketStatus::Expired, 2_000)
    );
    assert_eq!(status(&store, "b").await, Some(TicketStatus::Assigned));
    assert_eq!(status(&store, "c").await, Some(TicketStatus::Queued));
    // The expired ticket's player may queue again.
    create(&store, party("a2", "pa", "a2", &["pa"], 2_001)).await;
    assert!(
        store
            .expire_tickets(Vec::new(), 2_002)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn released_assignments_requeue_once_and_keep_every_index_right(store: Shared) {
    create(&store, party("t", "pa", "g", &["pa"], 1_000)).await;
    assert!(matches!(
        assign(&store, "t", "gs-1", "as-1", 2_000).await,
        CommitOutcome::Applied(_)
    ));
    let on_server = store.assigned_on_server("gs-1").await.unwrap();
    assert_eq!(on_server.len(), 1);
    assert_eq!(on_server[0].assigned_instance.as_deref(), Some("i1"));
    assert!(store.assigned_on_server("gs-2").await.unwrap().is_empty());

    // Only the holder of that exact assignment is released.
    let requeue = Release::Requeue {
        expires_at: 700_000,
    };
    let outcomes = store
        .release_assignments(vec![release("t", "as-other", requeue.clone())], 3_000)
        .await
        .unwrap();
    assert_eq!(outcomes, vec![ReleaseOutcome::Unchanged("t".to_owned())]);
    let outcomes = store
        .release_assignments(
            vec![
                release("t", "as-1", requeue.clone()),
                release("missing", "as-1", requeue.clone()),
            ],
            3_000,
        )
        .await
        .unwrap();
    let ReleaseOutcome::Requeued(ticket) = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(outcomes[1], ReleaseOutcome::Unchanged("missing".to_owned()));
    assert_eq!(
        (
            ticket.status,
            ticket.enqueued_at,
            ticket.expires_at,
            ticket.updated_at
        ),
        (TicketStatus::Queued, 1_000, 700_000, 3_000)
    );
    assert!(ticket.assignment.is_none());
    assert!(ticket.assignment_expires_at.is_none());
    assert!(ticket.assigned_instance.is_none());
    assert_eq!(store.ticket("t").await.unwrap().as_ref(), Some(ticket));
    // A second release of the same assignment (a retry, a late duplicate) is a no-op.
    let outcomes = store
        .release_assignments(vec![release("t", "as-1", requeue)], 3_001)
        .await
        .unwrap();
    assert_eq!(outcomes, vec![ReleaseOutcome::Unchanged("t".to_owned())]);
    assert!(store.assigned_on_server("gs-1").await.unwrap().is_empty());
    // Queued again: holds its player, survives purges, can be assigned again.
    assert!(matches!(
        store
            .create_ticket(party("t2", "pa", "g2", &["pa"], 3_002), 3_002)
            .await
            .unwrap(),
        CreateOutcome::PlayerAlreadyQueued { .. }
    ));
    store.purge_finished(u64::MAX, 0).await.unwrap();
    assert_eq!(status(&store, "t").await, Some(TicketStatus::Queued));
    assert_eq!(store.queued_tickets().await.unwrap().len(), 1);
    assert!(matches!(
        assign(&store, "t", "gs-2", "as-2", 4_000).await,
        CommitOutcome::Applied(_)
    ));
    assert_eq!(store.assigned_on_server("gs-2").await.unwrap().len(), 1);
    assert!(
        store
            .release_assignments(Vec::new(), 4_001)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_release_fails_the_ticket_when_its_player_queued_elsewhere(store: Shared) {
    create(&store, party("t", "pa", "g", &["pa"], 1_000)).await;
    assign(&store, "t", "gs-1", "as-1", 2_000).await;
    // Assigned tickets free their players, who queue again meanwhile.
    create(&store, party("t2", "pa", "g2", &["pa"], 2_500)).await;
    let outcomes = store
        .release_assignments(
            vec![release(
                "t",
                "as-1",
                Release::Requeue {
                    expires_at: 700_000,
                },
            )],
            3_000,
        )
        .await
        .unwrap();
    let ReleaseOutcome::Failed(ticket) = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(
        ticket.failure_reason.as_deref(),
        Some("player_queued_elsewhere")
    );
    assert_eq!(status(&store, "t2").await, Some(TicketStatus::Queued));
    let counts = store.queue_counts().await.unwrap();
    assert_eq!(counts.iter().map(|queue| queue.failed).sum::<u64>(), 1);
}

async fn a_release_can_fail_the_ticket(store: Shared) {
    create(&store, party("t", "pa", "g", &["pa"], 1_000)).await;
    assign(&store, "t", "gs-1", "as-1", 2_000).await;
    let outcomes = store
        .release_assignments(
            vec![release(
                "t",
                "as-1",
                Release::Fail {
                    reason: "server_lost".to_owned(),
                },
            )],
            3_000,
        )
        .await
        .unwrap();
    let ReleaseOutcome::Failed(ticket) = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(
        (
            ticket.status,
            ticket.failure_reason.as_deref(),
            ticket.updated_at
        ),
        (TicketStatus::Failed, Some("server_lost"), 3_000)
    );
    assert!(ticket.assignment.is_none());
    assert_eq!(store.ticket("t").await.unwrap().as_ref(), Some(ticket));
    assert!(store.assigned_on_server("gs-1").await.unwrap().is_empty());
    // Purged by its new finish time, not the old assignment's.
    assert_eq!(store.purge_finished(2_500, u64::MAX).await.unwrap(), 0);
    assert_eq!(store.purge_finished(3_001, u64::MAX).await.unwrap(), 1);
    assert!(store.ticket("t").await.unwrap().is_none());
}

async fn purge_removes_only_finished_tickets_past_retention(store: Shared) {
    for (id, group) in [("old", "g1"), ("recent", "g2"), ("waiting", "g3")] {
        create(&store, ticket(id, group, 1_000)).await;
    }
    store.cancel_ticket("old", 2_000).await.unwrap();
    store.cancel_ticket("recent", 9_000).await.unwrap();

    assert_eq!(store.purge_finished(5_000, u64::MAX).await.unwrap(), 1);
    assert!(store.ticket("old").await.unwrap().is_none());
    assert!(store.ticket("recent").await.unwrap().is_some());
    assert!(
        store.ticket("waiting").await.unwrap().is_some(),
        "queued tickets are never purged"
    );
    // The purged ticket's group is free again; a purge with nothing due is a no-op.
    let again = store
        .create_ticket(ticket("new", "g1", 10_000), 10_000)
        .await
        .unwrap();
    assert!(matches!(again, CreateOutcome::Created(_)));
    assert_eq!(store.purge_finished(5_000, u64::MAX).await.unwrap(), 0);
}

async fn purge_also_keeps_finished_tickets_under_a_count_cap(store: Shared) {
    for i in 0..5u64 {
        let id = format!("t{i}");
        create(&store, ticket(&id, &id, 1_000)).await;
        store.cancel_ticket(&id, 2_000 + i).await.unwrap();
    }
    create(&store, ticket("waiting", "w", 1_000)).await;
    // Nothing is past the retention, but only the 2 newest may stay.
    assert_eq!(store.purge_finished(0, 2).await.unwrap(), 3);
    for (id, kept) in [
        ("t0", false),
        ("t2", false),
        ("t3", true),
        ("t4", true),
        ("waiting", true),
    ] {
        assert_eq!(store.ticket(id).await.unwrap().is_some(), kept, "{id}");
    }
    assert_eq!(store.purge_finished(0, 2).await.unwrap(), 0);
    // Even a cap of zero never purges a queued ticket.
    assert_eq!(store.purge_finished(u64::MAX, 0).await.unwrap(), 2);
    assert_eq!(status(&store, "waiting").await, Some(TicketStatus::Queued));
}

async fn purge_in_many_batches_matches_one_pass(store: Shared) {
    // More finished tickets than one purge batch holds (500 on Redis, 512 on redb and in memory).
    for i in 0..1_203u64 {
        let id = format!("t{i:05}");
        create(&store, ticket(&id, &id, 1_000)).await;
        store.cancel_ticket(&id, 2_000 + i).await.unwrap();
    }
    // Retention takes the first 700, the cap of 100 takes 403 more.
    assert_eq!(store.purge_finished(2_700, 100).await.unwrap(), 1_103);
    assert!(store.ticket("t01102").await.unwrap().is_none());
    assert!(store.ticket("t01103").await.unwrap().is_some());
    let counts = store.queue_counts().await.unwrap();
    assert_eq!(counts[0].cancelled, 100);
}

async fn players_are_free_to_queue_again_once_their_ticket_leaves_the_queue(store: Shared) {
    for (id, player) in [("a", "pa"), ("c", "pc"), ("e", "pe")] {
        create(&store, party(id, player, id, &[player], 1_000)).await;
    }
    assert!(matches!(
        assign(&store, "a", "s", "as", 2_000).await,
        CommitOutcome::Applied(_)
    ));
    store.cancel_ticket("c", 2_000).await.unwrap();
    store
        .expire_tickets(vec!["e".to_owned()], 2_000)
        .await
        .unwrap();
    for (id, player) in [("a2", "pa"), ("c2", "pc"), ("e2", "pe")] {
        create(&store, party(id, player, id, &[player], 2_001)).await;
    }
    // A queued ticket past its expiry no longer holds its player, even
    // before the matcher marks it expired.
    let late = 2_001 + 600_000;
    create(&store, party("a3", "pa", "a3", &["pa"], late)).await;
    // Purging the old ticket must not free the player of the newer one.
    store.purge_finished(u64::MAX, u64::MAX).await.unwrap();
    let refused = store
        .create_ticket(party("a4", "pa", "a4", &["pa"], late + 1), late + 1)
        .await
        .unwrap();
    assert!(matches!(
        refused,
        CreateOutcome::PlayerAlreadyQueued { ref ticket_id, .. } if ticket_id == "a3"
    ));
}

async fn spent_tokens_are_dropped_and_nothing_else(store: Shared) {
    let now = 1_000;
    for id in ["solo", "later", "again"] {
        create(&store, ticket(id, id, now)).await;
    }
    create(&store, party("pair", "ann", "pair", &["ann", "ben"], now)).await;
    let mut pair = one_match(&[("pair", "a-pair")], "s1", now + 60_000);
    pair.assignments[0].1.member_tokens = BTreeMap::from([
        ("ann".to_owned(), "token".to_owned()),
        ("ben".to_owned(), "ben-token".to_owned()),
    ]);
    let commits = vec![
        one_match(&[("solo", "a-solo")], "s1", now + 60_000),
        one_match(&[("later", "a-later")], "s1", now + 120_000),
        one_match(&[("again", "a-again")], "s1", now + 60_000),
        pair,
    ];
    for outcome in store.commit_matches(commits, now).await.unwrap() {
        assert!(matches!(outcome, CommitOutcome::Applied(_)), "{outcome:?}");
    }
    // `again` is released and assigned anew, expiring later: its old
    // assignment's expiry must not take the new tokens with it.
    let requeue = Release::Requeue {
        expires_at: now + 600_000,
    };
    store
        .release_assignments(vec![release("again", "a-again", requeue)], now + 1)
        .await
        .unwrap();
    assert!(matches!(
        assign(&store, "again", "s2", "a-again-2", now + 70_000).await,
        CommitOutcome::Applied(_)
    ));
    let before: BTreeMap<&str, TicketRecord> = read_all(&store).await;

    // Nothing is spent before its expiry has passed.
    assert_eq!(store.drop_spent_tokens(now + 60_000).await.unwrap(), 0);
    assert_eq!(read_all(&store).await, before);

    let dropped = store.drop_spent_tokens(now + 60_001).await.unwrap();
    assert!(dropped >= 2, "solo and pair at least, got {dropped}");
    let after = read_all(&store).await;
    for id in ["solo", "pair"] {
        let mut expected = before[id].clone();
        let assignment = expected.assignment.as_mut().unwrap();
        assignment.match_token.clear();
        assignment.member_tokens.clear();
        assert_eq!(
            after[id], expected,
            "{id} loses its tokens and nothing else"
        );
    }
    for id in ["later", "again"] {
        assert_eq!(after[id], before[id], "{id}'s tokens are not spent yet");
        assert_eq!(after[id].assignment.as_ref().unwrap().match_token, "token");
    }
    assert_eq!(store.drop_spent_tokens(now + 60_001).await.unwrap(), 0);
    // Purging a ticket whose tokens are still kept takes them too.
    assert_eq!(store.purge_finished(u64::MAX, 0).await.unwrap(), 4);
    assert_eq!(store.drop_spent_tokens(u64::MAX).await.unwrap(), 0);
}

/// Every ticket of the spent-tokens scenario, by id.
async fn read_all(store: &Shared) -> BTreeMap<&'static str, TicketRecord> {
    let mut tickets = BTreeMap::new();
    for id in ["solo", "later", "again", "pair"] {
        tickets.insert(id, store.ticket(id).await.unwrap().unwrap());
    }
    tickets
}

fn server_record(id: &str, port: u16) -> ServerRecord {
    ServerRecord {
        server_id: id.to_owned(),
        host: "127.0.0.1".to_owned(),
        port,
        land_types: vec!["hero-defense".to_owned()],
        connect_host: None,
        connect_port: None,
        connect_scheme: None,
        connect_path_prefix: None,
        region: Some("eu".to_owned()),
        capacity: None,
        load: None,
        draining: false,
        land_ids: Some(Vec::new()),
        registered_at: 1_000,
        last_seen: 2_000,
        registered_with: Some("abc".to_owned()),
        instance_id: Some("i1".to_owned()),
    }
}

async fn servers_are_put_listed_and_removed(store: Shared) {
    assert!(store.servers().await.unwrap().is_empty());
    store.put_server(server_record("gs-b", 9001)).await.unwrap();
    store.put_server(server_record("gs-a", 9000)).await.unwrap();
    // A second put replaces the record.
    let updated = ServerRecord {
        draining: true,
        last_seen: 5_000,
        ..server_record("gs-b", 9002)
    };
    store.put_server(updated.clone()).await.unwrap();
    assert_eq!(
        store.servers().await.unwrap(),
        vec![server_record("gs-a", 9000), updated]
    );
    assert!(store.remove_server("gs-a").await.unwrap());
    assert!(!store.remove_server("gs-a").await.unwrap());
    assert_eq!(store.servers().await.unwrap().len(), 1);
}

async fn queue_counts_count_every_status(store: Shared) {
    let in_queue = |id: &str, queue: &str, members: &[&str], now: Millis| TicketRecord {
        queue_key: queue.to_owned(),
        ..party(id, members[0], id, members, now)
    };
    create(&store, in_queue("q1", "one", &["a", "b"], 1_000)).await;
    create(&store, in_queue("q2", "one", &["c"], 900)).await;
    create(&store, in_queue("q3", "one", &["d"], 1_100)).await;
    create(&store, in_queue("q4", "one", &["e"], 1_100)).await;
    create(&store, in_queue("q5", "one", &["f"], 1_100)).await;
    create(&store, in_queue("r1", "two", &["g"], 1_200)).await;
    assign(&store, "q3", "gs", "as", 2_000).await;
    store.cancel_ticket("q4", 2_000).await.unwrap();
    store
        .expire_tickets(vec!["q5".to_owned()], 2_000)
        .await
        .unwrap();
    let counts = store.queue_counts().await.unwrap();
    assert_eq!(counts.len(), 2);
    let one = &counts[0];
    assert_eq!(one.queue_key, "one");
    assert_eq!(
        (one.queued, one.queued_players, one.oldest_queued_at),
        (2, 3, Some(900))
    );
    assert_eq!(
        (one.assigned, one.cancelled, one.expired, one.failed),
        (1, 1, 1, 0)
    );
    assert_eq!(
        (
            counts[1].queue_key.as_str(),
            counts[1].queued,
            counts[1].oldest_queued_at
        ),
        ("two", 1, Some(1_200))
    );
}

async fn queued_per_queue_follows_every_change(store: Shared) {
    let in_queue = |id: &str, queue: &str, member: &str| TicketRecord {
        queue_key: queue.to_owned(),
        ..ticket(id, member, 1_000)
    };
    let queued = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs
            .iter()
            .map(|(queue, count)| ((*queue).to_owned(), *count))
            .collect()
    };
    // Queues without queued tickets may be listed with 0 or left out.
    let now_queued = |store: Shared| async move {
        let mut counts = store.queued_per_queue().await.unwrap();
        counts.retain(|_, count| *count > 0);
        counts
    };
    assert_eq!(now_queued(store.clone()).await, queued(&[]));
    for (id, queue, member) in [
        ("a1", "a", "p1"),
        ("a2", "a", "p2"),
        ("a3", "a", "p3"),
        ("a4", "a", "p4"),
        ("b1", "b", "p5"),
    ] {
        create(&store, in_queue(id, queue, member)).await;
    }
    assert_eq!(
        now_queued(store.clone()).await,
        queued(&[("a", 4), ("b", 1)])
    );
    assign(&store, "a1", "gs", "as-1", 2_000).await;
    store.cancel_ticket("a2", 2_000).await.unwrap();
    store
        .expire_tickets(vec!["b1".to_owned()], 2_000)
        .await
        .unwrap();
    assert_eq!(now_queued(store.clone()).await, queued(&[("a", 2)]));
    store
        .release_assignments(
            vec![release(
                "a1",
                "as-1",
                Release::Requeue {
                    expires_at: 900_000,
                },
            )],
            3_000,
        )
        .await
        .unwrap();
    assert_eq!(now_queued(store.clone()).await, queued(&[("a", 3)]));
    // Refused changes change nothing.
    store.cancel_ticket("a2", 3_000).await.unwrap();
    assign(&store, "a2", "gs", "as-2", 3_000).await;
    assert_eq!(now_queued(store.clone()).await, queued(&[("a", 3)]));
    // And it agrees with the full count.
    let counted: BTreeMap<String, u64> = store
        .queue_counts()
        .await
        .unwrap()
        .into_iter()
        .filter(|counts| counts.queued > 0)
        .map(|counts| (counts.queue_key, counts.queued))
        .collect();
    assert_eq!(now_queued(store.clone()).await, counted);
}

async fn queued_tickets_come_oldest_first(store: Shared) {
    for (id, at) in [
        ("d", 3_000),
        ("b", 1_000),
        ("a", 1_000),
        ("c", 2_000),
        ("x", 500),
    ] {
        create(
            &store,
            party(id, &format!("p-{id}"), id, &[&format!("p-{id}")], at),
        )
        .await;
    }
    store.cancel_ticket("x", 3_500).await.unwrap();
    assign(&store, "a", "gs", "as-a", 3_600).await;
    let order = |tickets: Vec<TicketRecord>| -> Vec<String> {
        tickets.into_iter().map(|t| t.ticket_id).collect()
    };
    assert_eq!(
        order(store.queued_tickets().await.unwrap()),
        ["b", "c", "d"]
    );
    // A requeued ticket goes back to its place by its original enqueue time.
    store
        .release_assignments(
            vec![release(
                "a",
                "as-a",
                Release::Requeue {
                    expires_at: 900_000,
                },
            )],
            4_000,
        )
        .await
        .unwrap();
    assert_eq!(
        order(store.queued_tickets().await.unwrap()),
        ["a", "b", "c", "d"]
    );
}

async fn concurrent_creates_for_one_player_admit_exactly_one(store: Shared) {
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let id = format!("t{i}");
                // Every attempt under another owner and group: only the player check can refuse.
                store
                    .create_ticket(
                        party(
                            &id,
                            &format!("owner{i}"),
                            &id,
                            &[&format!("x{i}"), "zed"],
                            1_000,
                        ),
                        1_000,
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            CreateOutcome::Created(ticket) => winners.push(ticket.ticket_id),
            CreateOutcome::PlayerAlreadyQueued { player_id, .. } => assert_eq!(player_id, "zed"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let queued = store.queued_tickets().await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].ticket_id, winners[0]);
}

async fn concurrent_commits_of_one_ticket_apply_exactly_one(store: Shared) {
    create(&store, party("shared", "ps", "g", &["ps"], 1_000)).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let other = format!("o{i}");
                store
                    .create_ticket(party(&other, &other, &other, &[&other], 1_000), 1_000)
                    .await
                    .unwrap();
                let assignment = format!("as{i}");
                let commit = one_match(
                    &[("shared", &assignment), (&other, &format!("{assignment}b"))],
                    &format!("gs{i}"),
                    60_000,
                );
                store
                    .commit_matches(vec![commit], 2_000)
                    .await
                    .unwrap()
                    .remove(0)
            })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        match task.await.unwrap() {
            CommitOutcome::Applied(_) => applied += 1,
            CommitOutcome::Rejected { not_queued } => assert_eq!(not_queued, ["shared"]),
            CommitOutcome::Fenced => panic!("an unfenced commit was fenced"),
        }
    }
    assert_eq!(applied, 1);
    let counts = store.queue_counts().await.unwrap();
    assert_eq!((counts[0].assigned, counts[0].queued), (2, 15));
}

/// Acknowledged writes survive `kill -9` of a Redis with AOF and
/// `appendfsync always`, the configuration docs/scale-out.md requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_redis_crash_with_aof() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RedisServer::start_durable(dir.path());
    let store = RedisStore::connect(&server.url(), "crash").await.unwrap();
    for i in 0..50 {
        let id = format!("t{i}");
        created(
            store
                .create_ticket(ticket(&id, &id, 1_000), 1_000)
                .await
                .unwrap(),
        );
    }
    let shared: Shared = Arc::new(store);
    assign(&shared, "t0", "gs", "as-0", 2_000).await;
    shared.cancel_ticket("t1", 2_000).await.unwrap();
    shared.put_server(server_record("gs", 9000)).await.unwrap();

    server.restart();
    // A fresh connection sees everything that was acknowledged.
    let store: Shared = Arc::new(RedisStore::connect(&server.url(), "crash").await.unwrap());
    assert_eq!(status(&store, "t0").await, Some(TicketStatus::Assigned));
    assert_eq!(status(&store, "t1").await, Some(TicketStatus::Cancelled));
    assert_eq!(store.queued_tickets().await.unwrap().len(), 48);
    assert_eq!(store.assigned_on_server("gs").await.unwrap().len(), 1);
    assert_eq!(store.servers().await.unwrap().len(), 1);
    // The indexes survived too: the queued players still hold their places.
    assert!(matches!(
        store
            .create_ticket(
                party("dup", "t2-player", "other", &["t2-player"], 3_000),
                3_000
            )
            .await
            .unwrap(),
        CreateOutcome::PlayerAlreadyQueued { .. }
    ));
}

/// A store whose Redis goes away answers `Unavailable` (never hangs or
/// panics) and works again once Redis is back, without reconnecting by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_is_unavailable_then_reconnected() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RedisServer::start_durable(dir.path());
    let port = server.port;
    let store = RedisStore::connect(&server.url(), "reconnect")
        .await
        .unwrap();
    created(
        store
            .create_ticket(ticket("a", "a", 1_000), 1_000)
            .await
            .unwrap(),
    );
    server.kill_hard();
    let err = store.ticket("a").await.unwrap_err();
    assert!(
        matches!(
            err,
            matchplane_control_plane::store::StoreError::Unavailable(_)
        ),
        "{err:?}"
    );
    assert!(store.ping().await.is_err());
    server.restart();
    if server.port != port {
        // The port was taken meanwhile; the reconnect half cannot be checked.
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(Some(ticket)) = store.ticket("a").await {
            assert_eq!(ticket.status, TicketStatus::Queued);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    store.ping().await.unwrap();
}

#[tokio::test]
async fn a_bad_url_or_prefix_is_refused_without_a_panic() {
    for (url, prefix) in [
        ("not a url", "p"),
        ("redis://127.0.0.1:1", "p"),
        ("redis://127.0.0.1:6379", "a{b}"),
        ("redis://127.0.0.1:6379", ""),
    ] {
        assert!(
            RedisStore::connect(url, prefix).await.is_err(),
            "{url} {prefix}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_url_authenticates_and_never_leaks() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), "auth").await.unwrap();
    drop(store);
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret-pw")
        .query_async(&mut conn)
        .await
        .unwrap();

    let with_password = format!("redis://:s3cret-pw@127.0.0.1:{}", server.port);
    let store = RedisStore::connect(&with_password, "auth").await.unwrap();
    store.ping().await.unwrap();
    for url in [
        server.url(),
        format!("redis://:wrong-s3cret-pw@127.0.0.1:{}", server.port),
    ] {
        let Err(err) = RedisStore::connect(&url, "auth").await else {
            panic!("connected without the right password");
        };
        assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    }
}
