//! Realtime sockets shared by waiting tickets: each watches up to
//! [`MAX_TICKETS_PER_SOCKET`], so ten thousand waiting players need a few hundred
//! connections instead of ten thousand. With `--enqueue realtime` the tickets are
//! also enqueued on them (the `enqueue` action) instead of by `POST /v1/tickets`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use matchplane_client::contracts::matchmaking::{Assignment, EnqueueRequest};
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

/// What one socket is waiting for: pushes by ticket id, and the `enqueue` actions
/// sent but not answered yet, oldest first (the control plane answers a socket's
/// actions in order, so the next `enqueued` or id-less `error` is the oldest's).
#[derive(Default)]
struct Waiting {
    pushes: HashMap<String, oneshot::Sender<Pushed>>,
    enqueues: VecDeque<PendingEnqueue>,
}

impl Waiting {
    fn len(&self) -> usize {
        self.pushes.len() + self.enqueues.len()
    }
}

struct PendingEnqueue {
    /// The new ticket's id, or the error code the control plane answered with.
    answer: oneshot::Sender<Result<String, String>>,
    push: oneshot::Sender<Pushed>,
}

/// A realtime enqueue in flight: the answer, then the ticket's final push.
pub struct RealtimeEnqueue {
    pub answer: oneshot::Receiver<Result<String, String>>,
    pub push: oneshot::Receiver<Pushed>,
}

type Waiters = Arc<Mutex<Waiting>>;

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
                    RealtimeEvent::Enqueued(enqueued) => {
                        let mut waiting = locked(&waiters);
                        if let Some(pending) = waiting.enqueues.pop_front() {
                            // Registered before the answer is passed on, so a push
                            // that follows at once finds its waiter.
                            waiting
                                .pushes
                                .insert(enqueued.ticket_id.clone(), pending.push);
                            let _ = pending.answer.send(Ok(enqueued.ticket_id));
                        }
                        continue;
                    }
                    // An error without a ticket id answers the oldest enqueue, if any.
                    RealtimeEvent::Error(error) => {
                        let pending = match error.ticket_id {
                            None => locked(&waiters).enqueues.pop_front(),
                            Some(_) => None,
                        };
                        match pending {
                            Some(pending) => {
                                let _ = pending.answer.send(Err(error.code.to_string()));
                            }
                            None => recorder.error(&format!("realtime_{}", error.code)),
                        }
                        continue;
                    }
                    _ => continue,
                };
                if let Some(waiter) = locked(&waiters).pushes.remove(&ticket_id) {
                    let _ = waiter.send(pushed);
                }
            }
            // The socket is gone: dropping the waiters sends their tickets to polling.
            let mut waiting = locked(&waiters);
            waiting.pushes.clear();
            waiting.enqueues.clear();
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
            let socket = self.socket_with_room(&mut sockets).await?;
            // Inserted under the pool lock so the room check and the insert are atomic.
            locked(&socket.waiters)
                .pushes
                .insert(ticket_id.to_owned(), reply);
            socket
        };
        if let Err(err) = socket.subscriber.subscribe(ticket_id) {
            locked(&socket.waiters).pushes.remove(ticket_id);
            return Err(err);
        }
        Ok(receiver)
    }

    /// Enqueues over a pooled socket (the `enqueue` action), which then watches the
    /// new ticket.
    pub async fn enqueue(
        &self,
        request: EnqueueRequest,
    ) -> Result<RealtimeEnqueue, MatchmakingError> {
        let (answer, answer_rx) = oneshot::channel();
        let (push, push_rx) = oneshot::channel();
        let mut sockets = self.sockets.lock().await;
        let socket = self.socket_with_room(&mut sockets).await?;
        let mut waiting = locked(&socket.waiters);
        // Queued and sent under one lock: the answers come back in sending order.
        waiting.enqueues.push_back(PendingEnqueue { answer, push });
        if let Err(err) = socket.subscriber.enqueue(request) {
            waiting.enqueues.pop_back();
            return Err(err);
        }
        Ok(RealtimeEnqueue {
            answer: answer_rx,
            push: push_rx,
        })
    }

    async fn socket_with_room(
        &self,
        sockets: &mut Vec<Arc<PoolSocket>>,
    ) -> Result<Arc<PoolSocket>, MatchmakingError> {
        sockets.retain(|socket| socket.subscriber.is_open());
        // The newest socket is the one most likely to have room.
        if let Some(socket) = sockets.iter().rev().find(|socket| socket.has_room()) {
            return Ok(Arc::clone(socket));
        }
        let socket = self.open().await?;
        sockets.push(Arc::clone(&socket));
        Ok(socket)
    }

    pub async fn forget(&self, ticket_id: &str) {
        for socket in self.sockets.lock().await.iter() {
            locked(&socket.waiters).pushes.remove(ticket_id);
        }
    }
}
