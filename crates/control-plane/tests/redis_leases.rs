//! One matcher per queue, fenced, on a real Redis: a commit under a lease
//! that moved on is refused, a retried commit is a no-op, two replicas
//! split two queues, a dead holder's queue is taken over and matched, and a
//! holder shutting down gracefully hands its queue over at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Harness;
use matchplane_contracts::matchmaking::{Assignment, TicketStatus};
use matchplane_control_plane::store::{
    CommitOutcome, Fence, LeaseReply, MatchCommit, RedisStore, Store, TicketRecord,
};
use matchplane_control_plane::{Config, CredentialSource, Role, StorageConfig};
use redis_server::RedisServer;
use serde_json::json;

const QUEUE: &str = "hero-defense:1v1";
const OTHER_QUEUE: &str = "arena:1v1";
const LEASE: Duration = Duration::from_millis(500);

fn record(id: &str, now: u64) -> TicketRecord {
    TicketRecord {
        group_id: id.to_owned(),
        ..TicketRecord::queued(
            id.to_owned(),
            "q".to_owned(),
            vec![format!("{id}-player")],
            now,
            now + 600_000,
        )
    }
}

fn assignment(id: &str, match_id: &str) -> Assignment {
    Assignment {
        assignment_id: id.to_owned(),
        match_token: "token".to_owned(),
        connect_url: "ws://127.0.0.1:1/game/q".to_owned(),
        land_id: format!("q:{match_id}"),
        server_id: "gs".to_owned(),
        expires_at: "1970-01-01T00:01:00Z".to_owned(),
        member_tokens: BTreeMap::new(),
        match_id: Some(match_id.to_owned()),
        team: Some(0),
    }
}

fn commit(ids: &[&str], match_id: &str, now: u64) -> MatchCommit {
    MatchCommit {
        assignments: ids
            .iter()
            .map(|id| {
                (
                    (*id).to_owned(),
                    assignment(&format!("{match_id}-{id}"), match_id),
                )
            })
            .collect(),
        assignment_expires_at: now + 60_000,
        server_instance_id: None,
    }
}

async fn assigned_events(redis: &RedisServer, prefix: &str) -> usize {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let raw: redis::Value = redis::cmd("XRANGE")
        .arg(format!("{{{prefix}}}:events"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Each entry has `kind` then its value; count the `assigned` ones.
    format!("{raw:?}").matches("\"assigned\"").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_under_a_stale_epoch_is_refused_and_a_retried_commit_is_a_no_op() {
    let redis = RedisServer::start();
    let a = RedisStore::connect(&redis.url(), "fence").await.unwrap();
    let b = RedisStore::connect(&redis.url(), "fence").await.unwrap();
    let now = 1_700_000_000_000;
    for id in ["t1", "t2"] {
        a.create_ticket(record(id, now), now).await.unwrap();
    }
    let a_leases = a.matcher_leases().unwrap();
    let b_leases = b.matcher_leases().unwrap();
    let short = Duration::from_millis(200);
    assert_eq!(
        a_leases.acquire("q", short).await.unwrap(),
        LeaseReply::Granted(1)
    );
    assert_eq!(
        b_leases.acquire("q", short).await.unwrap(),
        LeaseReply::Held {
            holder: a_leases.replica_id().to_owned(),
            epoch: 1
        }
    );
    assert_eq!(
        a_leases.acquire("q", short).await.unwrap(),
        LeaseReply::Renewed(1)
    );
    // A stalls past its lease; B takes the queue over at the next epoch.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        b_leases.acquire("q", LEASE * 20).await.unwrap(),
        LeaseReply::Granted(2)
    );

    let fence = |holder: &str, epoch: u64, match_id: &str| Fence {
        queue_key: "q".to_owned(),
        holder: holder.to_owned(),
        epoch,
        match_id: match_id.to_owned(),
    };
    // A's late commit carries epoch 1: refused, nothing written.
    let late = a
        .commit_matches_fenced(
            vec![(
                commit(&["t1", "t2"], "m-a", now),
                fence(a_leases.replica_id(), 1, "m-a"),
            )],
            now + 1,
        )
        .await
        .unwrap();
    assert_eq!(late, [CommitOutcome::Fenced]);
    for id in ["t1", "t2"] {
        let ticket = b.ticket(id).await.unwrap().unwrap();
        assert_eq!(ticket.status, TicketStatus::Queued);
        assert_eq!(ticket.assignment, None);
    }
    assert_eq!(assigned_events(&redis, "fence").await, 0);
    // Even B's own id with A's stale epoch, or A's id with B's epoch, is refused.
    let forged = b
        .commit_matches_fenced(
            vec![
                (
                    commit(&["t1", "t2"], "m-x", now),
                    fence(b_leases.replica_id(), 1, "m-x"),
                ),
                (
                    commit(&["t1", "t2"], "m-y", now),
                    fence(a_leases.replica_id(), 2, "m-y"),
                ),
            ],
            now + 1,
        )
        .await
        .unwrap();
    assert_eq!(forged, [CommitOutcome::Fenced, CommitOutcome::Fenced]);

    // B at epoch 2 commits.
    let first = b
        .commit_matches_fenced(
            vec![(
                commit(&["t1", "t2"], "m-b", now),
                fence(b_leases.replica_id(), 2, "m-b"),
            )],
            now + 2,
        )
        .await
        .unwrap();
    let [CommitOutcome::Applied(applied)] = first.as_slice() else {
        panic!("{first:?}");
    };
    assert_eq!(applied.len(), 2);
    let stored = b.ticket("t1").await.unwrap().unwrap().assignment.unwrap();
    assert_eq!(stored.assignment_id, "m-b-t1");
    assert_eq!(assigned_events(&redis, "fence").await, 2);

    // B retries the same match (say its reply was lost), with fresh
    // assignment ids even: the same answer, nothing written again.
    let mut retry = commit(&["t1", "t2"], "m-b", now);
    for (_, assignment) in &mut retry.assignments {
        assignment.assignment_id.push_str("-retry");
    }
    let again = b
        .commit_matches_fenced(
            vec![(retry, fence(b_leases.replica_id(), 2, "m-b"))],
            now + 3,
        )
        .await
        .unwrap();
    let [CommitOutcome::Applied(again)] = again.as_slice() else {
        panic!("{again:?}");
    };
    assert_eq!(again, applied);
    let stored = b.ticket("t1").await.unwrap().unwrap().assignment.unwrap();
    assert_eq!(stored.assignment_id, "m-b-t1");
    assert_eq!(assigned_events(&redis, "fence").await, 2);
    // A different match of the same (now assigned) tickets is a conflict.
    let other = b
        .commit_matches_fenced(
            vec![(
                commit(&["t1", "t2"], "m-c", now),
                fence(b_leases.replica_id(), 2, "m-c"),
            )],
            now + 4,
        )
        .await
        .unwrap();
    assert!(
        matches!(other.as_slice(), [CommitOutcome::Rejected { .. }]),
        "{other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_with_queued_tickets_are_listed_and_read_per_queue() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url(), "queues").await.unwrap();
    let leases = store.matcher_leases().unwrap();
    let now = 1_700_000_000_000;
    let mut other = record("o1", now);
    other.queue_key = "other".to_owned();
    store.create_ticket(record("t1", now), now).await.unwrap();
    store.create_ticket(other, now).await.unwrap();
    assert_eq!(leases.queues().await.unwrap(), ["other", "q"]);
    let in_q: Vec<String> = store
        .queued_tickets_in("q")
        .await
        .unwrap()
        .into_iter()
        .map(|ticket| ticket.ticket_id)
        .collect();
    assert_eq!(in_q, ["t1"]);
    store.cancel_ticket("o1", now + 1).await.unwrap();
    assert_eq!(leases.queues().await.unwrap(), ["q"]);
    assert!(store.queued_tickets_in("other").await.unwrap().is_empty());
}

async fn replica(redis: &RedisServer) -> (Harness, tempfile::TempDir) {
    replica_with_lease(redis, LEASE).await
}

async fn replica_with_lease(redis: &RedisServer, lease: Duration) -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::ephemeral_for_tests();
    config.storage = StorageConfig::Redis {
        url: redis.url(),
        data_dir: dir.path().to_owned(),
    };
    config.role = Role::All;
    config.matcher_lease = lease;
    config.admin_token = CredentialSource::Value("admin-token-for-the-lease-tests".into());
    config.registration_token =
        CredentialSource::Value("registration-token-for-the-lease-tests".into());
    let h = Harness::start_with(config).await;
    h.register_server("game-1", "hero-defense").await;
    h.register_server("game-2", "arena").await;
    (h, dir)
}

async fn lease_holder(redis: &RedisServer, queue: &str) -> Option<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let value: Option<String> = redis::cmd("GET")
        .arg(format!("{{matchplane}}:lease:{queue}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    value.and_then(|value| value.rsplit_once(':').map(|(holder, _)| holder.to_owned()))
}

async fn eventually_assigned(h: &Harness, ticket_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = h.status(ticket_id).await;
        if status["status"] == "assigned" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ticket_id} never assigned: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn acquisitions(h: &Harness) -> u64 {
    h.cp.state()
        .metrics
        .lease_acquisitions
        .load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_take_one_queue_each_and_both_queues_match() {
    let redis = RedisServer::start();
    let (a, _a_dir) = replica(&redis).await;
    let (b, _b_dir) = replica(&redis).await;
    // Both replicas announce themselves before there is anything to split.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let first = a
        .enqueue(json!({"queueKey": QUEUE, "members": ["alice"]}))
        .await;
    let other_first = b
        .enqueue(json!({"queueKey": OTHER_QUEUE, "members": ["carol"]}))
        .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let holders = loop {
        let holders = (
            lease_holder(&redis, QUEUE).await,
            lease_holder(&redis, OTHER_QUEUE).await,
        );
        if let (Some(one), Some(two)) = &holders
            && one != two
            && acquisitions(&a) >= 1
            && acquisitions(&b) >= 1
        {
            break holders;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leases never spread: {holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(holders.0, holders.1);

    let second = b
        .enqueue(json!({"queueKey": QUEUE, "members": ["bob"]}))
        .await;
    let other_second = a
        .enqueue(json!({"queueKey": OTHER_QUEUE, "members": ["dave"]}))
        .await;
    for ticket in [&first, &second, &other_first, &other_second] {
        eventually_assigned(&a, ticket).await;
    }
    // Each queue's pair went to one land.
    let land = |status: serde_json::Value| status["assignment"]["landId"].clone();
    assert_eq!(land(a.status(&first).await), land(a.status(&second).await));
    assert_eq!(
        land(a.status(&other_first).await),
        land(a.status(&other_second).await)
    );
    let fenced = a.cp.state().metrics.fenced_commits.load(Ordering::Relaxed)
        + b.cp.state().metrics.fenced_commits.load(Ordering::Relaxed);
    assert_eq!(fenced, 0);
}

/// Waits until one of two replicas holds [`QUEUE`]'s lease; returns the
/// holder's id, then the holding replica, then the other.
async fn first_holder(redis: &RedisServer, a: Harness, b: Harness) -> (String, Harness, Harness) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let holder = loop {
        // The counter moves just after the grant is written.
        if let Some(holder) = lease_holder(redis, QUEUE).await
            && acquisitions(&a) + acquisitions(&b) >= 1
        {
            break holder;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody took the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if acquisitions(&a) >= 1 {
        (holder, a, b)
    } else {
        (holder, b, a)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_queue_is_taken_over_and_its_tickets_matched() {
    let redis = RedisServer::start();
    let (a, _a_dir) = replica(&redis).await;
    let (b, _b_dir) = replica(&redis).await;
    let waiting = a
        .enqueue(json!({"queueKey": QUEUE, "members": ["erin"]}))
        .await;
    let (holder, dead, survivor) = first_holder(&redis, a, b).await;
    assert_eq!(acquisitions(&survivor), 0, "one holder only");
    let before = acquisitions(&survivor);

    // Killed, not shut down: its lease has to lapse before anyone takes over.
    dead.cp.crash().await;
    let stopped = tokio::time::Instant::now();
    let partner = survivor
        .enqueue(json!({"queueKey": QUEUE, "members": ["finn"]}))
        .await;
    eventually_assigned(&survivor, &waiting).await;
    eventually_assigned(&survivor, &partner).await;
    let took = stopped.elapsed();
    assert!(acquisitions(&survivor) > before);
    let new_holder = lease_holder(&redis, QUEUE).await;
    assert!(new_holder.is_some_and(|new_holder| new_holder != holder));
    // About two lease periods (expiry, then a round to notice); the bound is
    // loose because two cores are shared by everything the test runs.
    assert!(took < LEASE * 10, "takeover took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_shutting_down_releases_its_lease_and_the_queue_moves_on_at_once() {
    // Long enough that the queue can only move within the test's deadlines
    // through the release, never through the lease lapsing.
    let lease = Duration::from_secs(30);
    let redis = RedisServer::start();
    let (a, _a_dir) = replica_with_lease(&redis, lease).await;
    let (b, _b_dir) = replica_with_lease(&redis, lease).await;
    let waiting = a
        .enqueue(json!({"queueKey": QUEUE, "members": ["gina"]}))
        .await;
    let (holder, leaving, staying) = first_holder(&redis, a, b).await;
    assert_eq!(holder, leaving.cp.state().cluster.replica_id());
    let leaving_metrics = std::sync::Arc::clone(&leaving.cp.state().metrics);
    let before = acquisitions(&staying);

    leaving.cp.shutdown().await;
    // Gone as shutdown returns (or already the staying replica's, if its
    // round came in between): never still the leaving replica's.
    let after_shutdown = lease_holder(&redis, QUEUE).await;
    assert!(
        after_shutdown
            .as_deref()
            .is_none_or(|holder| holder == staying.cp.state().cluster.replica_id()),
        "lease still held after shutdown: {after_shutdown:?}"
    );
    assert_eq!(leaving_metrics.lease_releases.load(Ordering::Relaxed), 1);
    assert_eq!(leaving_metrics.lease_losses.load(Ordering::Relaxed), 0);

    // The staying replica takes the queue over and matches the waiting
    // ticket well inside one lease period.
    let partner = staying
        .enqueue(json!({"queueKey": QUEUE, "members": ["hugo"]}))
        .await;
    eventually_assigned(&staying, &waiting).await;
    eventually_assigned(&staying, &partner).await;
    assert!(acquisitions(&staying) > before);
    assert_eq!(
        lease_holder(&redis, QUEUE).await.as_deref(),
        Some(staying.cp.state().cluster.replica_id())
    );
    let land = |status: serde_json::Value| status["assignment"]["landId"].clone();
    assert_eq!(
        land(staying.status(&waiting).await),
        land(staying.status(&partner).await)
    );
    assert_eq!(
        staying
            .cp
            .state()
            .metrics
            .fenced_commits
            .load(Ordering::Relaxed),
        0
    );
}

/// A ticket of a queue nobody holds asks for a lease round at once instead of
/// waiting for the next scheduled one (every second here, with a 6 s lease).
/// Three new queues one after the other: a scheduled round could take one
/// before its ticket reaches the matching loop, but not all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_for_a_queue_nobody_holds_wakes_the_lease_round() {
    let redis = RedisServer::start();
    let (h, _dir) = replica_with_lease(&redis, Duration::from_secs(6)).await;
    let woken = || {
        h.cp.state()
            .metrics
            .lease_woken_rounds
            .load(Ordering::Relaxed)
    };
    assert_eq!(woken(), 0);
    for (queue, player) in [
        (QUEUE, "alice"),
        (OTHER_QUEUE, "bob"),
        ("arena:2v2", "carol"),
    ] {
        h.enqueue(json!({"queueKey": queue, "members": [player]}))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while lease_holder(&redis, queue).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} never leased"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(woken() >= 1, "no lease round was woken by a ticket");
}
