//! The loop's tickets: the engine's pools and the records behind them, kept
//! in step (a ticket is tracked exactly while the loop may still match it).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use matchplane_matchmaker::{Engine, InsertError, Ticket, TicketId};

use crate::clock::Millis;
use crate::store::TicketRecord;

pub(super) struct Pool {
    /// The matchmaking engine; the pool adds and removes its tickets.
    pub engine: Engine,
    records: HashMap<TicketId, TicketRecord>,
    ids: HashMap<String, TicketId>,
    expiries: BTreeSet<(Millis, TicketId)>,
    next_id: u64,
    /// Tracked tickets, shared with the handle for the admin summary.
    queued: Arc<AtomicU64>,
}

impl Pool {
    pub fn new(engine: Engine, queued: Arc<AtomicU64>) -> Self {
        Self {
            engine,
            records: HashMap::new(),
            ids: HashMap::new(),
            expiries: BTreeSet::new(),
            next_id: 1,
            queued,
        }
    }

    /// The records of every tracked ticket: the snapshot planning reads.
    pub fn records(&self) -> &HashMap<TicketId, TicketRecord> {
        &self.records
    }

    /// Adds a queued ticket to the pools; false if it was already known or refused.
    pub fn track(&mut self, record: TicketRecord, now: Millis) -> bool {
        if self.ids.contains_key(&record.ticket_id) {
            return false;
        }
        let id = TicketId(self.next_id);
        self.next_id += 1;
        // Built again for a retry rather than cloned up front: a retry is rare.
        let mut inserted = self
            .engine
            .insert(&record.queue_key, engine_ticket(id, &record));
        // The store lets a player queue again once the old ticket's expiry has
        // passed, which can be just before the tick that marks it expired. That
        // ticket leaves the pool now (the tick still marks it in the store),
        // so the new one is not stuck behind it. One round per member at most.
        for _ in 0..record.members.len() {
            let Err(InsertError::PlayerQueued { ticket: holder, .. }) = inserted else {
                break;
            };
            let holder_expired = self
                .records
                .get(&holder)
                .is_some_and(|held| held.expires_at <= now);
            if !holder_expired {
                break;
            }
            self.engine.remove(holder);
            inserted = self
                .engine
                .insert(&record.queue_key, engine_ticket(id, &record));
        }
        if let Err(err) = inserted {
            tracing::error!(ticket_id = %record.ticket_id, queue_key = %record.queue_key, error = %err,
                "matchmaking engine refused a stored ticket; it will expire");
            return false;
        }
        self.ids.insert(record.ticket_id.clone(), id);
        self.expiries.insert((record.expires_at, id));
        self.records.insert(id, record);
        self.queued.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Forgets a ticket the engine no longer holds (handed out in a match).
    pub fn untrack(&mut self, id: TicketId) -> Option<TicketRecord> {
        let record = self.records.remove(&id)?;
        self.ids.remove(&record.ticket_id);
        self.expiries.remove(&(record.expires_at, id));
        self.queued.fetch_sub(1, Ordering::Relaxed);
        Some(record)
    }

    /// Takes a ticket out of the engine's pool and forgets it (expired).
    pub fn discard(&mut self, id: TicketId) {
        self.engine.remove(id);
        self.untrack(id);
    }

    /// Takes a ticket the store no longer holds as queued (cancelled) out of the pools.
    pub fn withdraw(&mut self, ticket_id: &str) {
        if let Some(id) = self.ids.get(ticket_id).copied() {
            self.discard(id);
        }
    }

    /// Forgets every tracked ticket of `queue_key` (every ticket if `None`):
    /// the loop no longer matches that queue.
    pub fn withdraw_queue(&mut self, queue_key: Option<&str>) {
        let ids: Vec<TicketId> = self
            .records
            .iter()
            .filter(|(_, record)| queue_key.is_none_or(|queue| record.queue_key == queue))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.discard(id);
        }
    }

    /// Puts a proposed-but-unplaced ticket back, keeping its place in line.
    pub fn requeue(&mut self, id: TicketId) {
        let Some(record) = self.records.get(&id) else {
            return;
        };
        if let Err(err) = self
            .engine
            .insert(&record.queue_key, engine_ticket(id, record))
        {
            tracing::error!(ticket_id = %record.ticket_id, error = %err, "cannot return a ticket to its pool");
        }
    }

    pub fn requeue_all(&mut self, ids: &[TicketId]) {
        for id in ids {
            self.requeue(*id);
        }
    }

    /// After a commit was refused: tickets that changed meanwhile (cancelled,
    /// expired) leave the loop, the others go back to their queues.
    pub fn settle_rejected(&mut self, ids: &[TicketId], not_queued: &[String]) {
        for id in ids {
            let gone = self
                .records
                .get(id)
                .is_none_or(|record| not_queued.contains(&record.ticket_id));
            if gone {
                self.untrack(*id);
            } else {
                self.requeue(*id);
            }
        }
    }

    /// Tickets whose queue time is up at `now`, soonest first.
    pub fn due(&self, now: Millis) -> Vec<TicketId> {
        self.expiries
            .iter()
            .take_while(|(expires_at, _)| *expires_at <= now)
            .map(|(_, id)| *id)
            .collect()
    }

    /// The store ids of these tracked tickets.
    pub fn ticket_ids(&self, ids: &[TicketId]) -> Vec<String> {
        ids.iter()
            .filter_map(|id| self.records.get(id).map(|t| t.ticket_id.clone()))
            .collect()
    }
}

pub(crate) fn engine_ticket(id: TicketId, record: &TicketRecord) -> Ticket {
    Ticket {
        id,
        size: u32::try_from(record.members.len()).unwrap_or(u32::MAX),
        enqueued_at: record.enqueued_at,
        attributes: record.attributes.clone(),
        latencies: record.latencies.clone(),
        region: record.region.clone(),
        string_args: record.string_args.clone(),
        tags: record.tags.clone(),
        players: record.members.clone(),
    }
}

#[cfg(test)]
mod tests {
    use matchplane_matchmaker::EngineConfig;

    use super::*;
    use crate::matcher::test_support::queued_record;

    const NOW: Millis = 1_700_000_000_000;

    fn pool() -> (Pool, Arc<AtomicU64>) {
        let queued = Arc::new(AtomicU64::new(0));
        let engine = Engine::new(EngineConfig::default()).unwrap();
        (Pool::new(engine, Arc::clone(&queued)), queued)
    }

    fn record(ticket_id: &str, members: &[&str], expires_at: Millis) -> TicketRecord {
        queued_record(ticket_id, members, NOW, expires_at)
    }

    fn id_of(pool: &Pool, ticket_id: &str) -> TicketId {
        *pool
            .records()
            .iter()
            .find(|(_, record)| record.ticket_id == ticket_id)
            .unwrap()
            .0
    }

    #[test]
    fn a_ticket_is_tracked_once_and_counted_while_tracked() {
        let (mut pool, queued) = pool();
        assert!(pool.track(record("t1", &["alice"], NOW + 60_000), NOW));
        assert!(!pool.track(record("t1", &["alice"], NOW + 60_000), NOW));
        assert_eq!((queued.load(Ordering::Relaxed), pool.engine.len()), (1, 1));
        pool.withdraw("t1");
        assert_eq!((queued.load(Ordering::Relaxed), pool.engine.len()), (0, 0));
        assert!(pool.records().is_empty());
    }

    #[test]
    fn a_players_expired_ticket_yields_to_the_new_one_but_a_live_one_does_not() {
        let (mut pool, _) = pool();
        assert!(pool.track(record("old", &["alice"], NOW), NOW - 1));
        assert!(!pool.track(record("early", &["alice"], NOW + 60_000), NOW - 1));
        assert!(pool.track(record("new", &["alice"], NOW + 60_000), NOW));
        // The old ticket left the engine; the next tick still expires it in the store.
        assert_eq!(pool.engine.len(), 1);
        assert_eq!(pool.due(NOW), [id_of(&pool, "old")]);
        assert_eq!(pool.ticket_ids(&pool.due(NOW)), ["old"]);
    }

    #[test]
    fn a_refused_commit_drops_what_changed_and_requeues_the_rest() {
        let (mut pool, queued) = pool();
        pool.track(record("t1", &["alice"], NOW + 60_000), NOW);
        pool.track(record("t2", &["bob"], NOW + 60_000), NOW);
        let ids = [id_of(&pool, "t1"), id_of(&pool, "t2")];
        // The engine handed both out in a match.
        for id in ids {
            pool.engine.remove(id);
        }
        pool.settle_rejected(&ids, &["t1".to_owned()]);
        assert_eq!(queued.load(Ordering::Relaxed), 1);
        assert_eq!(pool.ticket_ids(&ids), ["t2"]);
        assert_eq!(pool.engine.len(), 1);
        assert!(pool.due(NOW + 60_000).contains(&ids[1]));
        assert!(!pool.due(NOW + 60_000).contains(&ids[0]));
    }
}
