//! Which queues the matching loop matches under leases, at which fencing
//! epoch, and what it hears about a queue between its grant and the read of
//! its queued tickets. Pure bookkeeping: the loop does the I/O.
//!
//! The lease task announces a grant (`start_loading`) before it reads the
//! queue's tickets, on the same channel that carries the feed's events. So an
//! event about the queue that the loop sees before the read arrives was
//! appended after the announcement: a ticket enqueued after the read is kept
//! here (`hold_back`), and one that left the queue after the read is
//! remembered (`removed`) so the read cannot bring it back.

use std::collections::{HashMap, HashSet};

use crate::store::TicketRecord;

pub(super) struct HeldLeases {
    holder: String,
    epochs: HashMap<String, u64>,
    loading: HashMap<String, Loading>,
}

#[derive(Default)]
struct Loading {
    arrived: Vec<TicketRecord>,
    removed: HashSet<String>,
}

impl HeldLeases {
    /// Leases of replica `holder`: none held yet.
    pub(super) fn new(holder: String) -> Self {
        Self {
            holder,
            epochs: HashMap::new(),
            loading: HashMap::new(),
        }
    }

    pub(super) fn holder(&self) -> &str {
        &self.holder
    }

    /// The epoch the queue is matched under, if it is matched here.
    pub(super) fn epoch(&self, queue_key: &str) -> Option<u64> {
        self.epochs.get(queue_key).copied()
    }

    pub(super) fn holds(&self, queue_key: &str) -> bool {
        self.epochs.contains_key(queue_key)
    }

    /// The queue's lease was granted; its tickets are being read.
    pub(super) fn start_loading(&mut self, queue_key: String) {
        self.loading.insert(queue_key, Loading::default());
    }

    /// Keeps a ticket of a loading queue for [`HeldLeases::granted`]; any
    /// other ticket is handed back for the caller to handle now.
    pub(super) fn hold_back(&mut self, ticket: TicketRecord) -> Option<TicketRecord> {
        match self.loading.get_mut(&ticket.queue_key) {
            Some(loading) => {
                loading.arrived.push(ticket);
                None
            }
            None => Some(ticket),
        }
    }

    /// A ticket left its queue (assigned, cancelled, expired).
    pub(super) fn removed(&mut self, ticket_id: &str) {
        for loading in self.loading.values_mut() {
            loading
                .arrived
                .retain(|ticket| ticket.ticket_id != ticket_id);
            loading.removed.insert(ticket_id.to_owned());
        }
    }

    /// The queue is matched here from now on, at `epoch`. Returns the tickets
    /// to track: the read ones (older) first, then those that arrived during
    /// the read; a ticket in both comes twice (tracking it again is a no-op).
    pub(super) fn granted(
        &mut self,
        queue_key: &str,
        epoch: u64,
        read: Vec<TicketRecord>,
    ) -> Vec<TicketRecord> {
        self.epochs.insert(queue_key.to_owned(), epoch);
        let loading = self.loading.remove(queue_key).unwrap_or_default();
        read.into_iter()
            .filter(|ticket| {
                ticket.queue_key == queue_key && !loading.removed.contains(&ticket.ticket_id)
            })
            .chain(loading.arrived)
            .collect()
    }

    /// The queue's lease is gone (or its read failed). Whether it was matched here.
    pub(super) fn lost(&mut self, queue_key: &str) -> bool {
        self.loading.remove(queue_key);
        self.epochs.remove(queue_key).is_some()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::matcher::test_support::queued_record;

    const QUEUE: &str = "arena:2v2";

    fn ticket(id: &str) -> TicketRecord {
        queued_record(id, &[id], 10_000, 60_000)
    }

    fn ids(tickets: &[TicketRecord]) -> Vec<&str> {
        tickets.iter().map(|t| t.ticket_id.as_str()).collect()
    }

    #[test]
    fn a_ticket_enqueued_during_the_read_is_not_lost() {
        let mut leases = HeldLeases::new("me".into());
        leases.start_loading(QUEUE.into());
        // The feed delivers t2 (enqueued after the read) before the read arrives.
        assert!(leases.hold_back(ticket("t2")).is_none());
        assert!(!leases.holds(QUEUE), "not matched before the read arrives");
        let tracked = leases.granted(QUEUE, 7, vec![ticket("t1")]);
        assert_eq!(ids(&tracked), ["t1", "t2"]);
        assert_eq!(leases.epoch(QUEUE), Some(7));
        // Loading is over: later tickets are the caller's at once.
        assert!(leases.hold_back(ticket("t3")).is_some());
    }

    #[test]
    fn a_ticket_that_left_during_the_read_does_not_come_back() {
        let mut leases = HeldLeases::new("me".into());
        leases.start_loading(QUEUE.into());
        assert!(leases.hold_back(ticket("t2")).is_none());
        // t1 was read while queued, then cancelled; t2 arrived, then was assigned.
        leases.removed("t1");
        leases.removed("t2");
        let tracked = leases.granted(QUEUE, 1, vec![ticket("t1"), ticket("t3")]);
        assert_eq!(ids(&tracked), ["t3"]);
    }

    #[test]
    fn tickets_of_other_queues_pass_through() {
        let mut leases = HeldLeases::new("me".into());
        leases.start_loading("other:1v1".into());
        let back = leases.hold_back(ticket("t1")).unwrap();
        assert_eq!(back.ticket_id, "t1");
        // A read never brings tickets of another queue.
        let mut stray = ticket("t9");
        stray.queue_key = "other:1v1".into();
        assert!(leases.granted(QUEUE, 1, vec![stray]).is_empty());
    }

    #[test]
    fn a_lost_lease_drops_its_loading_news_and_its_epoch() {
        let mut leases = HeldLeases::new("me".into());
        leases.start_loading(QUEUE.into());
        assert!(leases.hold_back(ticket("t1")).is_none());
        assert!(!leases.lost(QUEUE), "never matched here");
        assert!(leases.hold_back(ticket("t2")).is_some());
        leases.granted(QUEUE, 3, Vec::new());
        assert!(leases.lost(QUEUE));
        assert_eq!(leases.epoch(QUEUE), None);
    }
}
