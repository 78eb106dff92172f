//! Ticket lifecycle events and their delivery to whoever watches a ticket.
//!
//! Delivery is indexed by ticket id: publishing costs one map lookup no matter
//! how many sockets are open, and a socket only ever receives events for the
//! tickets it watches. Cancelled, expired and failed are terminal, so a ticket's
//! watchers are dropped once one of those is delivered; an assignment is not (its
//! game server may be lost, and the ticket requeued and assigned again).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use matchplane_contracts::matchmaking::Assignment;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone, PartialEq)]
pub enum TicketEvent {
    Assigned {
        ticket_id: String,
        assignment: Box<Assignment>,
    },
    Cancelled {
        ticket_id: String,
    },
    Expired {
        ticket_id: String,
    },
    /// The assignment died with its game server before anyone joined; queued again.
    Requeued {
        ticket_id: String,
        reason: String,
    },
    /// The players' land died with its game server.
    MatchLost {
        ticket_id: String,
        land_id: String,
        reason: String,
    },
    Failed {
        ticket_id: String,
        reason: String,
    },
}

impl TicketEvent {
    pub fn ticket_id(&self) -> &str {
        match self {
            Self::Assigned { ticket_id, .. }
            | Self::Cancelled { ticket_id }
            | Self::Expired { ticket_id }
            | Self::Requeued { ticket_id, .. }
            | Self::MatchLost { ticket_id, .. }
            | Self::Failed { ticket_id, .. } => ticket_id,
        }
    }

    /// Nothing can follow this event for its ticket.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Cancelled { .. } | Self::Expired { .. } | Self::Failed { .. }
        )
    }
}

type WatcherId = u64;
type Delivery = (WatcherId, mpsc::UnboundedSender<TicketEvent>);

#[derive(Clone, Default)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    watchers: Mutex<HashMap<String, Vec<Delivery>>>,
    next_watcher: AtomicU64,
    /// Bumped when events may have been missed (the cluster feed had a gap):
    /// every listener re-reads the state of what it watches.
    resyncs: watch::Sender<u64>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            watchers: Mutex::default(),
            next_watcher: AtomicU64::default(),
            resyncs: watch::Sender::new(0),
        }
    }
}

/// One listener (e.g. a realtime socket) that may watch several tickets.
/// Dropping it stops every watch it holds.
pub struct Watcher {
    id: WatcherId,
    bus: EventBus,
    sender: mpsc::UnboundedSender<TicketEvent>,
    watching: Vec<String>,
}

impl EventBus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn publish(&self, event: TicketEvent) {
        let watchers = if event.is_terminal() {
            self.inner.watchers.lock().remove(event.ticket_id())
        } else {
            self.inner.watchers.lock().get(event.ticket_id()).cloned()
        };
        let Some((last, others)) = watchers.as_deref().and_then(<[Delivery]>::split_last) else {
            return;
        };
        // A closed receiver is a socket that went away; nothing to do. The last
        // (usually the only) watcher takes the event itself: an assignment
        // carries its tokens, a copy is a few allocations.
        for (_, sender) in others {
            let _ = sender.send(event.clone());
        }
        let _ = last.1.send(event);
    }

    /// A new listener and the stream its events arrive on.
    pub fn watcher(&self) -> (Watcher, mpsc::UnboundedReceiver<TicketEvent>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let id = self.inner.next_watcher.fetch_add(1, Ordering::Relaxed);
        (
            Watcher {
                id,
                bus: self.clone(),
                sender,
                watching: Vec::new(),
            },
            receiver,
        )
    }

    /// Tells every listener that events may have been lost: each re-reads
    /// the state of the tickets it watches (see [`EventBus::resyncs`]).
    pub fn resync(&self) {
        self.inner
            .resyncs
            .send_modify(|generation| *generation += 1);
    }

    /// Changes whenever [`EventBus::resync`] is called.
    pub fn resyncs(&self) -> watch::Receiver<u64> {
        self.inner.resyncs.subscribe()
    }

    /// Tickets with at least one watcher (for metrics and tests).
    pub fn watched_tickets(&self) -> usize {
        self.inner.watchers.lock().len()
    }
}

impl Watcher {
    /// Starts delivering this ticket's next event. Call before reading the
    /// ticket's current status so no event can slip between the two.
    pub fn watch(&mut self, ticket_id: &str) {
        if self.watching.iter().any(|watched| watched == ticket_id) {
            return;
        }
        self.bus
            .inner
            .watchers
            .lock()
            .entry(ticket_id.to_owned())
            .or_default()
            .push((self.id, self.sender.clone()));
        self.watching.push(ticket_id.to_owned());
    }

    pub fn watching(&self) -> usize {
        self.watching.len()
    }

    /// The tickets this listener watches.
    pub fn watched(&self) -> &[String] {
        &self.watching
    }

    pub fn is_watching(&self, ticket_id: &str) -> bool {
        self.watching.iter().any(|watched| watched == ticket_id)
    }

    /// Stops watching a ticket whose final state this listener already has.
    pub fn forget(&mut self, ticket_id: &str) {
        self.watching.retain(|watched| watched != ticket_id);
        let mut watchers = self.bus.inner.watchers.lock();
        if let Some(list) = watchers.get_mut(ticket_id) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                watchers.remove(ticket_id);
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let mut watchers = self.bus.inner.watchers.lock();
        for ticket_id in &self.watching {
            if let Some(list) = watchers.get_mut(ticket_id) {
                list.retain(|(id, _)| *id != self.id);
                if list.is_empty() {
                    watchers.remove(ticket_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_reach_only_the_watchers_of_their_ticket_once() {
        let bus = EventBus::new();
        let (mut a, mut a_events) = bus.watcher();
        let (mut b, mut b_events) = bus.watcher();
        a.watch("t1");
        b.watch("t1");
        b.watch("t2");
        bus.publish(TicketEvent::Cancelled {
            ticket_id: "t1".into(),
        });
        assert_eq!(a_events.try_recv().unwrap().ticket_id(), "t1");
        assert_eq!(b_events.try_recv().unwrap().ticket_id(), "t1");
        // Terminal: a second event for t1 reaches nobody.
        bus.publish(TicketEvent::Expired {
            ticket_id: "t1".into(),
        });
        assert!(a_events.try_recv().is_err());
        assert_eq!(bus.watched_tickets(), 1);
        drop(b);
        assert_eq!(bus.watched_tickets(), 0);
        bus.publish(TicketEvent::Expired {
            ticket_id: "t2".into(),
        });
        assert!(b_events.try_recv().is_err());
        a.forget("t1");
    }
}
