//! Realtime sockets shared by waiting tickets: each watches up to
//! [`MAX_TICKETS_PER_SOCKET`], so ten thousand waiting players need a few hundred
//! connections instead of ten thousand.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use matchplane_client::contracts::matchmaking::Assignment;
use matchplane_client::contracts::realtime::RealtimeEvent;
use matchplane_client::{
    MAX_TICKETS_PER_SOCKET, MatchmakingClient, MatchmakingError, RealtimeSubscriber,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Recorder;

/// The final word on a ticket, with the moment the push arrived.
#[derive(Debug)]
pub enum Pushed {
    Assigned(Box<Assignment>, Instant),
    Cancelled,
    Expired,
    /// `ticket.failed`: the ticket ended without a match.
    Failed,
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Pushed>>>>;

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct PoolSocket {
    subscriber: RealtimeSubscriber,
    waiters: Waiters,
}

impl PoolSocket {
    fn has_room(&self) -> bool {
        self.subscriber.is_open() && locked(&self.waiters).len() < MAX_TICKETS_PER_SOCKET
    }
}

pub struct PushPool {
    client: MatchmakingClient,
    sockets: tokio::sync::Mutex<Vec<Arc<PoolSocket>>>,
    recorder: Arc<Recorder>,
}

impl PushPool {
    pub fn new(client: MatchmakingClient, recorder: Arc<Recorder>) -> Self {
        Self {
            client,
            sockets: tokio::sync::Mutex::new(Vec::new()),
            recorder,
        }
    }

    /// Open sockets right now.
    pub async fn open_sockets(&self) -> usize {
        self.sockets.lock().await.len()
    }

    async fn open(&self) -> Result<Arc<PoolSocket>, MatchmakingError> {
        let mut watch = self.client.watch().await?;
        let waiters: Waiters = Arc::default();
        let socket = Arc::new(PoolSocket {
            subscriber: watch.subscriber(),
            waiters: Arc::clone(&waiters),
        });
        let recorder = Arc::clone(&self.recorder);
        tokio::spawn(async move {
            while let Some(event) = watch.next_event().await {
                let (ticket_id, pushed) = match event {
                    RealtimeEvent::MatchAssigned(assigned) => (
                        assigned.ticket_id,
                        Pushed::Assigned(Box::new(assigned.assignment), Instant::now()),
                    ),
                    RealtimeEvent::TicketCancelled(ticket) => (ticket.ticket_id, Pushed::Cancelled),
                    RealtimeEvent::TicketExpired(ticket) => (ticket.ticket_id, Pushed::Expired),
                    RealtimeEvent::TicketFailed(failed) => (failed.ticket_id, Pushed::Failed),
                    // Queued again after its server was lost: its waiter stays for the
                    // next `match.assigned`.
                    RealtimeEvent::TicketRequeued(_) => {
                        recorder.requeued.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    RealtimeEvent::Error(error) => {
                        recorder.error(&format!("realtime_{}", error.code));
                        continue;
                    }
                    _ => continue,
                };
                if let Some(waiter) = locked(&waiters).remove(&ticket_id) {
                    let _ = waiter.send(pushed);
                }
            }
            // The socket is gone: dropping the waiters sends their tickets to polling.
            locked(&waiters).clear();
        });
        Ok(socket)
    }

    /// Registers interest in a ticket; the receiver resolves with its push, or errors if
    /// the socket died first (the caller then polls).
    pub async fn watch(
        &self,
        ticket_id: &str,
    ) -> Result<oneshot::Receiver<Pushed>, MatchmakingError> {
        let (reply, receiver) = oneshot::channel();
        let socket = {
            let mut sockets = self.sockets.lock().await;
            sockets.retain(|socket| socket.subscriber.is_open());
            // The newest socket is the one most likely to have room.
            let found = sockets
                .iter()
                .rev()
                .find(|socket| socket.has_room())
                .cloned();
            let socket = match found {
                Some(socket) => socket,
                None => {
                    let socket = self.open().await?;
                    sockets.push(Arc::clone(&socket));
                    socket
                }
            };
            // Inserted under the pool lock so the room check and the insert are atomic.
            locked(&socket.waiters).insert(ticket_id.to_owned(), reply);
            socket
        };
        if let Err(err) = socket.subscriber.subscribe(ticket_id) {
            locked(&socket.waiters).remove(ticket_id);
            return Err(err);
        }
        Ok(receiver)
    }

    pub async fn forget(&self, ticket_id: &str) {
        for socket in self.sockets.lock().await.iter() {
            locked(&socket.waiters).remove(ticket_id);
        }
    }
}
