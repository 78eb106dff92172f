//! Ticket lifecycle events for push delivery (realtime WebSocket, future fan-out).

use matchplane_contracts::matchmaking::Assignment;
use tokio::sync::broadcast;

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
}

impl TicketEvent {
    pub fn ticket_id(&self) -> &str {
        match self {
            Self::Assigned { ticket_id, .. }
            | Self::Cancelled { ticket_id }
            | Self::Expired { ticket_id } => ticket_id,
        }
    }
}

/// Fan-out of ticket events to whoever listens. Lagging listeners lose old
/// events and must re-read ticket status (which is the source of truth).
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<TicketEvent>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity);
        Self { sender }
    }

    pub fn publish(&self, event: TicketEvent) {
        // No subscribers is normal (nobody watching); not an error.
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<TicketEvent> {
        self.sender.subscribe()
    }
}
