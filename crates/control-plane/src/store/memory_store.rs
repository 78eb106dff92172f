//! The store of `--ephemeral`: the records in plain maps behind one lock.
//! Nothing outlives the process, so nothing is encoded, paged or handed to
//! another thread: each call takes the lock once, applies the same ticket
//! rules as redb (`ticket_rules`) and returns, which makes the whole call
//! one atomic step as a redb write transaction is (a purge alone goes in
//! batches, each atomic, as the Redis store's does). No call awaits while it
//! holds the lock, so the lock is only ever held for the work itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use matchplane_contracts::matchmaking::TicketStatus;
use parking_lot::Mutex;

use super::ticket_rules::{self, TicketTables};
use super::{
    CancelOutcome, CommitOutcome, CreateOutcome, MatchCommit, QueueCounts, ReleaseOutcome,
    ReleaseRequest, ServerRecord, Store, StoreError, TicketRecord, drop_tokens, has_tokens,
};
use crate::clock::Millis;
use crate::sharded::ShardedMap;

/// Finished tickets deleted per lock hold of a purge.
const PURGE_BATCH: u64 = 512;

/// Finished tickets stay until `purge_finished` removes them (the matcher's
/// housekeeping does, past `--retention` and beyond `--max-finished-tickets`).
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_tables<T>(&self, work: impl FnOnce(&mut Tables) -> T) -> T {
        work(&mut self.tables.lock())
    }
}

#[derive(Default)]
struct Tables {
    /// Boxed: a record is large, and the map's spare capacity holds only pointers.
    tickets: ShardedMap<String, Box<TicketRecord>>,
    owner_groups: ShardedMap<(String, String), String>,
    queued_players: ShardedMap<String, String>,
    finished: BTreeSet<String>,
    /// (assignment expiry, ticket id) of each ticket stored with match
    /// tokens, so spent tokens are found without walking every ticket.
    tokens_by_expiry: BTreeSet<(Millis, String)>,
    /// server id → ids of the tickets assigned to a land on it.
    // Hashed, not ordered: tens of thousands of ids per server made the
    // ordered set's string comparisons ~7 % of the control plane's CPU.
    // Sharded like the ticket maps: one server's set grows with every ticket
    // assigned to it, and a single set's rehash held the lock for all of them.
    server_tickets: HashMap<String, ShardedMap<String, ()>>,
    servers: BTreeMap<String, ServerRecord>,
    /// Kept with every ticket write, so counting and listing the queued never
    /// walk the finished tickets while the lock is held.
    queues: QueueTallies,
}

#[derive(Default)]
struct QueueTallies(BTreeMap<String, QueueTally>);

#[derive(Default)]
struct QueueTally {
    /// (enqueued_at, ticket id) of each queued ticket: oldest first.
    queued: BTreeSet<(Millis, String)>,
    queued_players: u64,
    assigned: u64,
    cancelled: u64,
    expired: u64,
    failed: u64,
}

impl QueueTally {
    fn is_empty(&self) -> bool {
        self.queued.is_empty()
            && self.assigned == 0
            && self.cancelled == 0
            && self.expired == 0
            && self.failed == 0
    }

    fn counts(&self, queue_key: &str) -> QueueCounts {
        QueueCounts {
            queue_key: queue_key.to_owned(),
            queued: self.queued.len() as u64,
            queued_players: self.queued_players,
            oldest_queued_at: self.queued.first().map(|(at, _)| *at),
            assigned: self.assigned,
            cancelled: self.cancelled,
            expired: self.expired,
            failed: self.failed,
        }
    }
}

impl QueueTallies {
    fn add(&mut self, ticket: &TicketRecord) {
        // Looked up by reference first: the key is cloned only for a new queue.
        let tally = match self.0.get_mut(&ticket.queue_key) {
            Some(tally) => tally,
            None => self.0.entry(ticket.queue_key.clone()).or_default(),
        };
        match ticket.status {
            TicketStatus::Queued => {
                tally
                    .queued
                    .insert((ticket.enqueued_at, ticket.ticket_id.clone()));
                tally.queued_players += ticket.members.len() as u64;
            }
            TicketStatus::Assigned => tally.assigned += 1,
            TicketStatus::Cancelled => tally.cancelled += 1,
            TicketStatus::Expired => tally.expired += 1,
            TicketStatus::Failed => tally.failed += 1,
        }
    }

    fn subtract(&mut self, ticket: &TicketRecord) {
        let Some(tally) = self.0.get_mut(&ticket.queue_key) else {
            return;
        };
        let count = match ticket.status {
            TicketStatus::Queued => {
                tally
                    .queued
                    .remove(&(ticket.enqueued_at, ticket.ticket_id.clone()));
                tally.queued_players = tally
                    .queued_players
                    .saturating_sub(ticket.members.len() as u64);
                None
            }
            TicketStatus::Assigned => Some(&mut tally.assigned),
            TicketStatus::Cancelled => Some(&mut tally.cancelled),
            TicketStatus::Expired => Some(&mut tally.expired),
            TicketStatus::Failed => Some(&mut tally.failed),
        };
        if let Some(count) = count {
            *count = count.saturating_sub(1);
        }
        if tally.is_empty() {
            self.0.remove(&ticket.queue_key);
        }
    }

    fn queued_in(&self, queue_key: &str) -> impl Iterator<Item = &(Millis, String)> {
        self.0
            .get(queue_key)
            .into_iter()
            .flat_map(|tally| &tally.queued)
    }
}

impl Tables {
    fn queued_tickets(&self, oldest_first: impl Iterator<Item = String>) -> Vec<TicketRecord> {
        oldest_first
            .filter_map(|ticket_id| {
                self.tickets
                    .get(&ticket_id)
                    .map(|ticket| ticket.as_ref().clone())
            })
            .collect()
    }

    /// Clears the tokens of assignments that expired before `before`, taking
    /// up to `limit` index entries; returns (entries taken, tickets cleared).
    fn drop_spent_tokens(&mut self, before: Millis, limit: u64) -> (u64, u64) {
        let (mut taken, mut cleared) = (0, 0);
        while taken < limit {
            let Some(first) = self.tokens_by_expiry.first() else {
                break;
            };
            if first.0 >= before {
                break;
            }
            let Some((expires_at, ticket_id)) = self.tokens_by_expiry.pop_first() else {
                break;
            };
            taken += 1;
            // An entry outlives a purged ticket or a released assignment;
            // only the assignment it was made for loses its tokens.
            if let Some(ticket) = self.tickets.get_mut(&ticket_id)
                && ticket.assignment_expires_at == Some(expires_at)
                && let Some(assignment) = &mut ticket.assignment
            {
                drop_tokens(assignment);
                cleared += 1;
            }
        }
        (taken, cleared)
    }
}

impl TicketTables for Tables {
    fn ticket(&self, ticket_id: &str) -> Result<Option<TicketRecord>, StoreError> {
        Ok(self
            .tickets
            .get(ticket_id)
            .map(|ticket| ticket.as_ref().clone()))
    }

    fn insert_ticket(&mut self, ticket: &TicketRecord) -> Result<(), StoreError> {
        match self.tickets.get_mut(&ticket.ticket_id) {
            Some(stored) => {
                let previous = std::mem::replace(stored.as_mut(), ticket.clone());
                self.queues.subtract(&previous);
            }
            None => {
                self.tickets
                    .insert(ticket.ticket_id.clone(), Box::new(ticket.clone()));
            }
        }
        self.queues.add(ticket);
        if let (Some(expires_at), Some(assignment)) =
            (ticket.assignment_expires_at, &ticket.assignment)
            && has_tokens(assignment)
        {
            self.tokens_by_expiry
                .insert((expires_at, ticket.ticket_id.clone()));
        }
        Ok(())
    }

    fn remove_unqueued_ticket(
        &mut self,
        ticket_id: &str,
    ) -> Result<Option<TicketRecord>, StoreError> {
        let unqueued = self
            .tickets
            .get(ticket_id)
            .is_some_and(|ticket| ticket.status != TicketStatus::Queued);
        if !unqueued {
            return Ok(None);
        }
        let removed = self.tickets.remove(ticket_id);
        if let Some(removed) = &removed {
            self.queues.subtract(removed);
        }
        Ok(removed.map(|removed| *removed))
    }

    fn owner_group(&self, owner: &str, group_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .owner_groups
            .get(&(owner.to_owned(), group_id.to_owned()))
            .cloned())
    }

    fn insert_owner_group(
        &mut self,
        owner: &str,
        group_id: &str,
        ticket_id: &str,
    ) -> Result<(), StoreError> {
        self.owner_groups.insert(
            (owner.to_owned(), group_id.to_owned()),
            ticket_id.to_owned(),
        );
        Ok(())
    }

    fn remove_owner_group(&mut self, owner: &str, group_id: &str) -> Result<(), StoreError> {
        self.owner_groups
            .remove(&(owner.to_owned(), group_id.to_owned()));
        Ok(())
    }

    fn queued_player(&self, player_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.queued_players.get(player_id).cloned())
    }

    fn insert_queued_player(&mut self, player_id: &str, ticket_id: &str) -> Result<(), StoreError> {
        self.queued_players
            .insert(player_id.to_owned(), ticket_id.to_owned());
        Ok(())
    }

    fn remove_queued_player(&mut self, player_id: &str) -> Result<(), StoreError> {
        self.queued_players.remove(player_id);
        Ok(())
    }

    fn insert_finished(&mut self, key: String) -> Result<(), StoreError> {
        self.finished.insert(key);
        Ok(())
    }

    fn remove_finished(&mut self, key: &str) -> Result<(), StoreError> {
        self.finished.remove(key);
        Ok(())
    }

    fn finished_len(&self) -> Result<u64, StoreError> {
        Ok(self.finished.len() as u64)
    }

    fn oldest_finished(
        &self,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .finished
            .iter()
            .take_while(|key| wanted(key))
            .cloned()
            .collect())
    }

    fn insert_server_ticket(&mut self, server_id: &str, ticket_id: &str) -> Result<(), StoreError> {
        match self.server_tickets.get_mut(server_id) {
            Some(tickets) => {
                tickets.insert(ticket_id.to_owned(), ());
            }
            None => {
                let mut tickets = ShardedMap::default();
                tickets.insert(ticket_id.to_owned(), ());
                self.server_tickets.insert(server_id.to_owned(), tickets);
            }
        }
        Ok(())
    }

    fn remove_server_ticket(&mut self, server_id: &str, ticket_id: &str) -> Result<(), StoreError> {
        if let Some(tickets) = self.server_tickets.get_mut(server_id) {
            tickets.remove(ticket_id);
            if tickets.is_empty() {
                self.server_tickets.remove(server_id);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn create_ticket(
        &self,
        ticket: TicketRecord,
        now: Millis,
    ) -> Result<CreateOutcome, StoreError> {
        self.with_tables(|tables| ticket_rules::create(tables, ticket, now))
    }

    async fn ticket(&self, ticket_id: &str) -> Result<Option<TicketRecord>, StoreError> {
        self.with_tables(|tables| tables.ticket(ticket_id))
    }

    async fn cancel_ticket(
        &self,
        ticket_id: &str,
        now: Millis,
    ) -> Result<CancelOutcome, StoreError> {
        self.with_tables(|tables| ticket_rules::cancel(tables, ticket_id, now))
    }

    async fn commit_matches(
        &self,
        matches: Vec<MatchCommit>,
        now: Millis,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        self.with_tables(|tables| ticket_rules::commit_all(tables, matches, now))
    }

    async fn queued_tickets_in(&self, queue_key: &str) -> Result<Vec<TicketRecord>, StoreError> {
        self.with_tables(|tables| {
            let oldest_first = tables
                .queues
                .queued_in(queue_key)
                .map(|(_, ticket_id)| ticket_id.clone())
                .collect::<Vec<_>>();
            Ok(tables.queued_tickets(oldest_first.into_iter()))
        })
    }

    async fn expire_tickets(
        &self,
        ticket_ids: Vec<String>,
        now: Millis,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        self.with_tables(|tables| ticket_rules::expire(tables, &ticket_ids, now))
    }

    async fn queued_tickets(&self) -> Result<Vec<TicketRecord>, StoreError> {
        self.with_tables(|tables| {
            let mut oldest_first = tables
                .queues
                .0
                .values()
                .flat_map(|tally| tally.queued.iter().cloned())
                .collect::<Vec<_>>();
            oldest_first.sort_unstable();
            Ok(tables.queued_tickets(oldest_first.into_iter().map(|(_, ticket_id)| ticket_id)))
        })
    }

    async fn assigned_on_server(&self, server_id: &str) -> Result<Vec<TicketRecord>, StoreError> {
        self.with_tables(|tables| {
            let Some(ticket_ids) = tables.server_tickets.get(server_id) else {
                return Ok(Vec::new());
            };
            let mut assigned: Vec<TicketRecord> = ticket_ids
                .keys()
                .filter_map(|ticket_id| tables.tickets.get(ticket_id))
                .filter(|ticket| ticket.status == TicketStatus::Assigned)
                .map(|ticket| ticket.as_ref().clone())
                .collect();
            // In ticket id order, as the other stores answer.
            assigned.sort_unstable_by(|a, b| a.ticket_id.cmp(&b.ticket_id));
            Ok(assigned)
        })
    }

    async fn release_assignments(
        &self,
        releases: Vec<ReleaseRequest>,
        now: Millis,
    ) -> Result<Vec<ReleaseOutcome>, StoreError> {
        self.with_tables(|tables| ticket_rules::release_all(tables, releases, now))
    }

    async fn purge_finished(&self, before: Millis, keep_at_most: u64) -> Result<u64, StoreError> {
        // Once the cap is reached, a housekeeping pass deletes everything
        // finished since the last one: in batches, so enqueues and commits
        // wait for one batch at most, never for the whole pass.
        let mut purged = 0;
        loop {
            let count = self.with_tables(|tables| {
                ticket_rules::purge(tables, before, keep_at_most, PURGE_BATCH)
            })?;
            purged += count;
            if count < PURGE_BATCH {
                return Ok(purged);
            }
            tokio::task::yield_now().await;
        }
    }

    async fn drop_spent_tokens(&self, before: Millis) -> Result<u64, StoreError> {
        let mut dropped = 0;
        loop {
            let (taken, cleared) =
                self.with_tables(|tables| tables.drop_spent_tokens(before, PURGE_BATCH));
            dropped += cleared;
            if taken < PURGE_BATCH {
                return Ok(dropped);
            }
            tokio::task::yield_now().await;
        }
    }

    async fn put_server(&self, server: ServerRecord) -> Result<(), StoreError> {
        self.with_tables(|tables| {
            tables.servers.insert(server.server_id.clone(), server);
        });
        Ok(())
    }

    async fn remove_server(&self, server_id: &str) -> Result<bool, StoreError> {
        Ok(self.with_tables(|tables| tables.servers.remove(server_id).is_some()))
    }

    async fn servers(&self) -> Result<Vec<ServerRecord>, StoreError> {
        Ok(self.with_tables(|tables| tables.servers.values().cloned().collect()))
    }

    async fn queue_counts(&self) -> Result<Vec<QueueCounts>, StoreError> {
        Ok(self.with_tables(|tables| {
            tables
                .queues
                .0
                .iter()
                .map(|(queue_key, tally)| tally.counts(queue_key))
                .collect()
        }))
    }

    async fn queued_per_queue(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Ok(self.with_tables(|tables| {
            tables
                .queues
                .0
                .iter()
                .filter(|(_, tally)| !tally.queued.is_empty())
                .map(|(queue_key, tally)| (queue_key.clone(), tally.queued.len() as u64))
                .collect()
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use matchplane_contracts::matchmaking::Assignment;

    use super::*;
    use crate::store::Release;
    use crate::store::test_fixtures::{assignment_on, party};

    /// A ticket of the first member in `queue`.
    fn ticket(id: &str, queue: &str, members: &[&str], now: Millis) -> TicketRecord {
        TicketRecord {
            queue_key: queue.to_owned(),
            ..party(id, members[0], id, members, now)
        }
    }

    fn assignment(id: &str) -> Assignment {
        assignment_on("gs", id)
    }

    /// What `queue_counts` must say: counted the slow way, over every ticket.
    fn counted_by_scan(store: &MemoryStore) -> Vec<QueueCounts> {
        store.with_tables(|tables| {
            let mut counts: BTreeMap<String, QueueCounts> = BTreeMap::new();
            for ticket in tables.tickets.values() {
                crate::store::count_ticket(&mut counts, ticket);
            }
            counts.into_values().collect()
        })
    }

    async fn assert_tallies_match(store: &MemoryStore, step: &str) {
        assert_eq!(
            store.queue_counts().await.unwrap(),
            counted_by_scan(store),
            "after {step}"
        );
    }

    #[tokio::test]
    async fn kept_tallies_always_equal_a_full_count() {
        let store = MemoryStore::new();
        for (i, (queue, members)) in [
            ("a", vec!["p1"]),
            ("a", vec!["p2", "p3"]),
            ("b", vec!["p4"]),
            ("b", vec!["p5"]),
            ("a", vec!["p6"]),
        ]
        .into_iter()
        .enumerate()
        {
            let now = 1_000 + i as Millis;
            store
                .create_ticket(ticket(&format!("t{i}"), queue, &members, now), now)
                .await
                .unwrap();
        }
        assert_tallies_match(&store, "creates").await;
        let commit = MatchCommit {
            assignments: vec![
                ("t0".to_owned(), assignment("as-0")),
                ("t1".to_owned(), assignment("as-1")),
            ],
            assignment_expires_at: 60_000,
            server_instance_id: None,
        };
        store.commit_matches(vec![commit], 2_000).await.unwrap();
        assert_tallies_match(&store, "a commit").await;
        store.cancel_ticket("t2", 2_001).await.unwrap();
        store
            .expire_tickets(vec!["t3".to_owned()], 2_002)
            .await
            .unwrap();
        assert_tallies_match(&store, "cancel and expiry").await;
        let requeue = ReleaseRequest {
            ticket_id: "t0".to_owned(),
            assignment_id: "as-0".to_owned(),
            release: Release::Requeue {
                expires_at: 700_000,
            },
            joined_land: None,
        };
        let fail = ReleaseRequest {
            ticket_id: "t1".to_owned(),
            assignment_id: "as-1".to_owned(),
            release: Release::Fail {
                reason: "lost".to_owned(),
            },
            joined_land: None,
        };
        store
            .release_assignments(vec![requeue, fail], 3_000)
            .await
            .unwrap();
        assert_tallies_match(&store, "releases").await;
        let queued = store.queued_tickets().await.unwrap();
        let ids: Vec<_> = queued.iter().map(|t| t.ticket_id.as_str()).collect();
        assert_eq!(ids, ["t0", "t4"], "requeued t0 keeps its place");
        store.purge_finished(2_001, u64::MAX).await.unwrap();
        assert_tallies_match(&store, "a purge by age").await;
        store.purge_finished(0, 0).await.unwrap();
        assert_tallies_match(&store, "a purge by count").await;
        assert_eq!(
            store.queue_counts().await.unwrap().len(),
            1,
            "a queue with no tickets left is not listed"
        );
    }

    #[tokio::test]
    async fn purging_every_finished_ticket_leaves_no_index_entry_behind() {
        let store = MemoryStore::new();
        for i in 0..4u64 {
            let id = format!("t{i}");
            let player = format!("p{i}");
            store
                .create_ticket(ticket(&id, "q", &[player.as_str()], 1_000), 1_000)
                .await
                .unwrap();
        }
        let commit = MatchCommit {
            assignments: vec![
                ("t0".to_owned(), assignment("as-0")),
                ("t1".to_owned(), assignment("as-1")),
            ],
            assignment_expires_at: 60_000,
            server_instance_id: Some("i1".to_owned()),
        };
        store.commit_matches(vec![commit], 2_000).await.unwrap();
        store.cancel_ticket("t2", 2_000).await.unwrap();
        store
            .expire_tickets(vec!["t3".to_owned()], 2_000)
            .await
            .unwrap();

        assert_eq!(store.purge_finished(0, 0).await.unwrap(), 4);
        store.with_tables(|tables| {
            assert!(tables.tickets.is_empty());
            assert!(tables.owner_groups.is_empty());
            assert!(tables.queued_players.is_empty());
            assert!(tables.finished.is_empty());
            assert!(tables.server_tickets.is_empty());
            assert!(tables.queues.0.is_empty());
        });
    }
}
