//! Realtime sockets shared by waiting tickets: each watches up to
//! [`MAX_TICKETS_PER_SOCKET`], so ten thousand waiting players need a few hundred
//! connections instead of ten thousand. With `--enqueue realtime` the tickets are
//! also enqueued on them (the `enqueue` action) instead of by `POST /v1/tickets`.

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// Tickets nobody here waits for that the control plane still counts against
    /// this socket's watches: assigned, then queued again after their server was
    /// lost. Until they are assigned again they take room like a waiting ticket
    /// (left out, the socket ran into `TOO_MANY_SUBSCRIPTIONS` once a game server
    /// was lost with all its matches).
    requeued: HashSet<String>,
}

impl Waiting {
    fn len(&self) -> usize {
        self.pushes.len() + self.enqueues.len() + self.requeued.len()
    }

    /// Updates what the socket waits for; says what to hand on, outside the lock.
    fn on_event(&mut self, event: RealtimeEvent) -> Outcome {
        let (ticket_id, pushed) = match event {
            RealtimeEvent::MatchAssigned(assigned) => (
                assigned.ticket_id,
                Pushed::Assigned(Box::new(assigned.assignment), Instant::now()),
            ),
            RealtimeEvent::TicketCancelled(ticket) => (ticket.ticket_id, Pushed::Cancelled),
            RealtimeEvent::TicketExpired(ticket) => (ticket.ticket_id, Pushed::Expired),
            RealtimeEvent::TicketFailed(failed) => (failed.ticket_id, Pushed::Failed),
            // Queued again after its server was lost: a waiter stays for the next
            // `match.assigned`; a ticket whose player already moved on still
            // takes room on this socket.
            RealtimeEvent::TicketRequeued(requeued) => {
                if !self.pushes.contains_key(&requeued.ticket_id) {
                    self.requeued.insert(requeued.ticket_id);
                }
                return Outcome::Requeued;
            }
            RealtimeEvent::Enqueued(enqueued) => {
                let Some(pending) = self.enqueues.pop_front() else {
                    return Outcome::Nothing;
                };
                // Registered before the answer is passed on, so a push that
                // follows at once finds its waiter.
                self.pushes.insert(enqueued.ticket_id.clone(), pending.push);
                return Outcome::Answer(pending.answer, Ok(enqueued.ticket_id));
            }
            // An error without a ticket id answers the oldest enqueue, if any; one
            // about a ticket (a refused watch) sends its waiter to polling.
            RealtimeEvent::Error(error) => {
                let code = error.code.to_string();
                return match error.ticket_id {
                    None => match self.enqueues.pop_front() {
                        Some(pending) => Outcome::Answer(pending.answer, Err(code)),
                        None => Outcome::Error(code),
                    },
                    Some(ticket_id) => {
                        self.pushes.remove(&ticket_id);
                        Outcome::Error(code)
                    }
                };
            }
            _ => return Outcome::Nothing,
        };
        // Assigned again or finished: the control plane may drop its watch for room.
        self.requeued.remove(&ticket_id);
        match self.pushes.remove(&ticket_id) {
            Some(waiter) => Outcome::Deliver(waiter, pushed),
            None => Outcome::Nothing,
        }
    }
}

/// What a socket's task does with an event once the waiters are unlocked.
enum Outcome {
    Deliver(oneshot::Sender<Pushed>, Pushed),
    Answer(
        oneshot::Sender<Result<String, String>>,
        Result<String, String>,
    ),
    Requeued,
    /// Counted as `realtime_<code>`.
    Error(String),
    Nothing,
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
                let outcome = locked(&waiters).on_event(event);
                match outcome {
                    Outcome::Deliver(waiter, pushed) => {
                        let _ = waiter.send(pushed);
                    }
                    Outcome::Answer(answer, result) => {
                        let _ = answer.send(result);
                    }
                    Outcome::Requeued => {
                        recorder.requeued.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Error(code) => recorder.error(&format!("realtime_{code}")),
                    Outcome::Nothing => {}
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(kind: &str, data: serde_json::Value) -> RealtimeEvent {
        serde_json::from_value(json!({"type": kind, "data": data})).unwrap()
    }

    fn assigned(ticket_id: &str) -> RealtimeEvent {
        event(
            "match.assigned",
            json!({"ticketId": ticket_id, "assignment": {
                "assignmentId": "a", "matchToken": "t", "connectUrl": "ws://127.0.0.1:1/game/x",
                "landId": "x:1", "serverId": "s", "expiresAt": "2026-11-28T00:00:00Z"}}),
        )
    }

    fn requeued(ticket_id: &str) -> RealtimeEvent {
        event(
            "ticket.requeued",
            json!({"ticketId": ticket_id, "reason": "server_lost"}),
        )
    }

    fn waiting_for(waiting: &mut Waiting, ticket_id: &str) -> oneshot::Receiver<Pushed> {
        let (sender, receiver) = oneshot::channel();
        waiting.pushes.insert(ticket_id.to_owned(), sender);
        receiver
    }

    #[test]
    fn requeued_tickets_nobody_waits_for_take_room_until_assigned_again() {
        let mut waiting = Waiting::default();
        let mut push = waiting_for(&mut waiting, "t1");
        assert!(matches!(
            waiting.on_event(assigned("t1")),
            Outcome::Deliver(..)
        ));
        assert_eq!(waiting.len(), 0);
        assert!(
            push.try_recv().is_err(),
            "delivered by the caller, not here"
        );

        // Its server is lost after the player moved on: the control plane watches
        // it again, so it counts against the socket's room ...
        assert!(matches!(
            waiting.on_event(requeued("t1")),
            Outcome::Requeued
        ));
        assert_eq!(waiting.len(), 1);
        // ... until it is assigned again (or ends).
        assert!(matches!(waiting.on_event(assigned("t1")), Outcome::Nothing));
        assert_eq!(waiting.len(), 0);
        waiting.on_event(requeued("t1"));
        waiting.on_event(event("ticket.cancelled", json!({"ticketId": "t1"})));
        assert_eq!(waiting.len(), 0);

        // A requeued ticket someone still waits for keeps its waiter and no more.
        let _push = waiting_for(&mut waiting, "t2");
        waiting.on_event(requeued("t2"));
        assert_eq!(waiting.len(), 1);
        assert!(matches!(
            waiting.on_event(assigned("t2")),
            Outcome::Deliver(..)
        ));
        assert_eq!(waiting.len(), 0);
    }

    #[test]
    fn a_refused_watch_sends_its_waiter_to_polling() {
        let mut waiting = Waiting::default();
        let mut push = waiting_for(&mut waiting, "t1");
        let refused = event(
            "error",
            json!({"code": "TOO_MANY_SUBSCRIPTIONS", "message": "full", "ticketId": "t1"}),
        );
        match waiting.on_event(refused) {
            Outcome::Error(code) => assert_eq!(code, "TOO_MANY_SUBSCRIPTIONS"),
            _ => panic!("not counted as an error"),
        }
        assert_eq!(waiting.len(), 0);
        // The sender is gone: the caller falls back to polling the ticket.
        assert!(matches!(
            push.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
