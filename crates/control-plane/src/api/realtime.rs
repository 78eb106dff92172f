//! `GET /realtime?ticketId=…`: pushes `match.assigned` (and `ticket.cancelled` /
//! `ticket.expired`) to clients, and accepts `enqueue`, `subscribe` and
//! `heartbeat` actions. Status polling stays the source of truth; this is the
//! fast path.

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use matchplane_contracts::matchmaking::TicketStatus;
use matchplane_contracts::realtime::{
    Enqueued, HeartbeatAck, MatchAssigned, MatchLost, RealtimeAction, RealtimeEnvelope,
    RealtimeError, RealtimeEvent, Subscribed, TicketFailed, TicketRef, TicketRequeued,
};
use matchplane_contracts::{ErrorBody, ErrorCode};
use matchplane_edge::secret::bearer;
use matchplane_edge::ws::ReadFailure;
use serde::Deserialize;

use super::matchmaking::{Completion, enqueue_ticket};
use super::{ApiError, AppState};
use crate::auth::{PlayerIdentity, authenticate_player, may_access};
use crate::events::{TicketEvent, Watcher};
use crate::store::TicketRecord;

/// Tickets one socket may watch at once (a client normally watches one).
const MAX_WATCHED_PER_SOCKET: usize = 32;
/// Keeps idle connections open through proxies and detects dead peers.
const PING_EVERY: Duration = Duration::from_secs(25);
/// How long a closing socket waits for the client's close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Malformed messages tolerated before the socket is closed.
const MAX_BAD_MESSAGES: u32 = 10;
/// Events and frames already waiting that one wake-up handles before its
/// single flush: enough to coalesce a matching round's pushes into one write,
/// few enough that one busy socket cannot hold its worker for long.
const COALESCE_BUDGET: usize = 64;
/// Messages held back behind enqueues in flight before the socket stops being
/// read (TCP then pushes back on the client).
const MAX_DEFERRED: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeQuery {
    #[serde(default)]
    ticket_id: Option<String>,
    /// Browsers cannot set headers on a WebSocket: the player token may come here.
    #[serde(default, rename = "access_token")]
    access_token: Option<String>,
}

#[utoipa::path(
    get,
    path = "/realtime",
    tag = "realtime",
    summary = "WebSocket: assignment push and enqueue over one socket",
    description = "A WebSocket endpoint (`GET` with `Upgrade: websocket`, answered `101 Switching \
Protocols`). Status polling stays the source of truth; this is the fast path.

**Server → client** text frames are `{\"type\", \"v\": 1, \"data\"}` (schema `RealtimeEnvelope`): \
`enqueued` (answer to the `enqueue` action; the socket then watches that ticket), `subscribed` (the \
ticket is still queued), `match.assigned` (with the `Assignment`), `ticket.cancelled`, `ticket.expired`, \
`ticket.requeued` (the assignment's server was lost before anyone joined; a new `match.assigned` \
follows), `match.lost`, `ticket.failed`, `heartbeat` (with `serverTime`), and `error` (`code`, `message`, \
optional `ticketId`). A ticket already settled when watched gets its final event at once.

**Client → server** text frames are `{\"action\": ...}` (schema `RealtimeAction`): `enqueue` (the \
enqueue body's fields beside `action`), `subscribe` (`ticketId`), `heartbeat`. `?ticketId=` on the URL \
subscribes at connect. A socket watches at most 32 tickets (`TOO_MANY_SUBSCRIPTIONS`). Answers come in \
the order of the messages; enqueues sent back to back are stored together (one durable commit).

**Closes**: 1009 for a message over `--max-body-bytes`, 1008 after 10 malformed messages, 1001 when the \
control plane shuts down. The server pings every 25 s.

**Credentials**: with `--player-auth jwt` a player JWT is required, as `Authorization: Bearer` or, for \
browsers (which cannot set WebSocket headers), `?access_token=`; it is checked before the upgrade, so a \
refused client gets a plain 401 and no socket. New sockets are rate-limited per client address.",
    params(
        ("ticketId" = Option<String>, Query, description = "Watch this ticket from the start."),
        ("access_token" = Option<String>, Query, description = "The player JWT, for clients that cannot set headers (`--player-auth jwt`)."),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the socket is open; messages as described above."),
        (status = 400, description = "`INVALID_REQUEST`: not a WebSocket upgrade, or an invalid query.", body = ErrorBody),
        (status = 401, description = "`UNAUTHENTICATED`: `--player-auth jwt` and no valid player token.", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`: too many new sockets from this address or player.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds to wait before retrying."))),
    ),
    security((), ("playerJwt" = [])),
)]
pub async fn upgrade(
    State(state): State<AppState>,
    query: Result<Query<RealtimeQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(
            ErrorCode::InvalidRequest,
            format!("invalid query: {}", rejection.body_text()),
        )
    })?;
    let ws = ws.map_err(upgrade_refused)?;
    // Authenticate before upgrading: a refused client gets a plain 401, not a socket.
    let token = bearer(&headers).or(query.access_token.as_deref());
    let player = PlayerIdentity(authenticate_player(&state, token).await?);
    let hard_limit = hard_message_limit(state.config.limits.max_body_bytes);
    Ok(ws
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| async move {
            Session::new(socket, state, player)
                .run(query.ticket_id)
                .await;
        }))
}

/// A plain HTTP request to the socket endpoint gets the error envelope, not axum's text.
fn upgrade_refused(rejection: WebSocketUpgradeRejection) -> ApiError {
    let (status, code) = match rejection.status() {
        StatusCode::METHOD_NOT_ALLOWED => {
            (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
        }
        _ => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest),
    };
    ApiError::new(
        status,
        code,
        format!(
            "/realtime is a WebSocket endpoint: {}",
            rejection.body_text()
        ),
    )
}

/// The event a ticket's stored state stands for at `now`, unless it is still queued.
fn settled_event(
    ticket: crate::store::TicketRecord,
    now: crate::clock::Millis,
) -> Option<TicketEvent> {
    let ticket = ticket.without_spent_tokens(now);
    match (ticket.status, ticket.assignment) {
        (TicketStatus::Assigned, Some(assignment)) => Some(TicketEvent::Assigned {
            ticket_id: ticket.ticket_id,
            assignment: Box::new(assignment),
        }),
        (TicketStatus::Cancelled, _) => Some(TicketEvent::Cancelled {
            ticket_id: ticket.ticket_id,
        }),
        (TicketStatus::Expired, _) => Some(TicketEvent::Expired {
            ticket_id: ticket.ticket_id,
        }),
        (TicketStatus::Failed, _) => Some(TicketEvent::Failed {
            ticket_id: ticket.ticket_id,
            reason: ticket.failure_reason.unwrap_or_default(),
        }),
        (TicketStatus::Queued | TicketStatus::Assigned, _) => None,
    }
}

/// Read buffer of each socket. tungstenite zero-fills the buffer to its capacity
/// before every read, so its default (128 KiB) cost a 128 KiB `memset` per read
/// and kept 128 KiB resident for every connected client. Client messages are
/// well under 1 KiB; a larger one is read in more than one go.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Messages above the body limit but below this are read whole and answered with
/// close 1009 after a clean handshake; beyond it the WebSocket layer refuses the
/// frame after its header, so the rest cannot be drained (see [`Session::abort`]).
fn hard_message_limit(max_body_bytes: usize) -> usize {
    max_body_bytes.saturating_mul(4).max(64 * 1024)
}

struct Session {
    socket: WebSocket,
    events: tokio::sync::mpsc::UnboundedReceiver<TicketEvent>,
    state: AppState,
    watcher: Watcher,
    /// Assignments sent for the tickets still watched (dedup between the status
    /// read and the event stream). A final state needs no such record: the
    /// ticket is unwatched as it is sent, and events for unwatched tickets are
    /// dropped.
    assignments_sent: SentAssignments,
    /// Watched tickets that are assigned, oldest first: still watched (their
    /// server may be lost and the ticket requeued) but the first to make room.
    settled: VecDeque<String>,
    bad_messages: u32,
    /// The verified player (jwt mode): it may only watch its own tickets.
    player: PlayerIdentity,
    /// Changes when events may have been missed (the cluster feed had a gap).
    resyncs: tokio::sync::watch::Receiver<u64>,
    /// `enqueue` actions whose (durable) create is in flight, answered in the order
    /// they came: a socket that enqueues for many players shares the store's group
    /// commit instead of waiting out one fsync per ticket.
    enqueues: FuturesOrdered<BoxFuture<'static, Result<TicketRecord, ApiError>>>,
    /// Other messages that came while enqueues were in flight, handled once those
    /// are answered: every answer keeps the order of the messages.
    deferred: VecDeque<Deferred>,
}

/// The assignments a socket sent, per ticket it still watches. An assignment
/// can reach a socket twice: as the status read when it subscribes and as the
/// event that raced that read. Kept only while the ticket is watched (at most
/// [`MAX_WATCHED_PER_SOCKET`] tickets, a few assignments each), since a socket
/// that enqueues for many players lives for hours and must not grow with them.
#[derive(Default)]
struct SentAssignments(Vec<(String, String)>);

impl SentAssignments {
    /// Records the assignment; false when it was already sent for this ticket.
    fn first_time(&mut self, ticket_id: &str, assignment_id: &str) -> bool {
        let seen = self
            .0
            .iter()
            .any(|(ticket, assignment)| ticket == ticket_id && assignment == assignment_id);
        if !seen {
            self.0
                .push((ticket_id.to_owned(), assignment_id.to_owned()));
        }
        !seen
    }

    fn forget(&mut self, ticket_id: &str) {
        self.0.retain(|(ticket, _)| ticket != ticket_id);
    }

    /// Whether every record belongs to a ticket in `watched` (the bound above).
    fn only_for(&self, watched: &[String]) -> bool {
        self.0
            .iter()
            .all(|(ticket, _)| watched.iter().any(|watched| watched == ticket))
    }
}

/// A message held back behind enqueues in flight.
enum Deferred {
    Action(RealtimeAction),
    Bad(ErrorCode, String),
}

enum Flow {
    Continue,
    Close,
}

impl Session {
    fn new(socket: WebSocket, state: AppState, player: PlayerIdentity) -> Self {
        let (watcher, events) = state.events.watcher();
        let resyncs = state.events.resyncs();
        crate::metrics::inc(&state.metrics.realtime_sockets);
        Self {
            resyncs,
            socket,
            events,
            state,
            watcher,
            assignments_sent: SentAssignments::default(),
            settled: VecDeque::new(),
            bad_messages: 0,
            player,
            enqueues: FuturesOrdered::new(),
            deferred: VecDeque::new(),
        }
    }

    /// Messages are queued on the socket (`feed`) and written once per wake-up
    /// (`flush`), after whatever else is already waiting has been answered: a
    /// matching round that assigns several of a socket's tickets, or a burst of
    /// subscribes, costs one write instead of one per message.
    async fn run(mut self, initial_ticket: Option<String>) {
        let mut shutdown = self.state.shutdown.clone();
        if let Some(ticket_id) = initial_ticket
            && let Flow::Close = self.subscribe(ticket_id).await
        {
            return;
        }
        if let Flow::Close = self.flush().await {
            return;
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        loop {
            let reading = self.deferred.len() < MAX_DEFERRED;
            let flow = tokio::select! {
                incoming = self.socket.recv(), if reading => self.on_incoming(incoming).await,
                Some(created) = self.enqueues.next(), if !self.enqueues.is_empty() => {
                    self.on_enqueued(created).await
                }
                Some(event) = self.events.recv() => self.on_event(event).await,
                Ok(()) = self.resyncs.changed() => self.resync().await,
                _ = ping.tick() => self.send_raw(Message::Ping(Default::default())).await,
                _ = shutdown.changed() => {
                    self.close(1001, "server shutting down").await;
                    Flow::Close
                }
            };
            if let Flow::Close = flow {
                break;
            }
            if let Flow::Close = self.handle_waiting().await {
                break;
            }
            if let Flow::Close = self.flush().await {
                break;
            }
        }
        self.finish_enqueues().await;
    }

    /// The socket is done, but enqueues it started are not: each is stored and
    /// handed to the matcher (a ticket stored but never handed over would wait
    /// unmatched); only the answers have nowhere to go.
    async fn finish_enqueues(&mut self) {
        while self.enqueues.next().await.is_some() {}
    }

    async fn on_incoming(&mut self, incoming: Option<Result<Message, axum::Error>>) -> Flow {
        match incoming {
            Some(Ok(message)) => self.on_message(message).await,
            Some(Err(err)) => {
                self.on_read_error(err).await;
                Flow::Close
            }
            None => Flow::Close,
        }
    }

    /// Handles events and frames that are ready now, without waiting, up to
    /// [`COALESCE_BUDGET`]; their answers join the wake-up's one write.
    async fn handle_waiting(&mut self) -> Flow {
        for _ in 0..COALESCE_BUDGET {
            let flow = if let Ok(event) = self.events.try_recv() {
                self.on_event(event).await
            } else if let Some(Some(created)) = (!self.enqueues.is_empty())
                .then(|| self.enqueues.next().now_or_never())
                .flatten()
            {
                self.on_enqueued(created).await
            } else if let Some(incoming) = (self.deferred.len() < MAX_DEFERRED)
                .then(|| self.socket.recv().now_or_never())
                .flatten()
            {
                self.on_incoming(incoming).await
            } else {
                return Flow::Continue;
            };
            if let Flow::Close = flow {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    async fn flush(&mut self) -> Flow {
        match self.socket.flush().await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.state
            .metrics
            .realtime_sockets
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Session {
    async fn send(&mut self, event: RealtimeEvent) -> Flow {
        match serde_json::to_string(&RealtimeEnvelope::new(event)) {
            Ok(text) => self.send_raw(Message::Text(text.into())).await,
            Err(err) => {
                tracing::error!(error = %err, "cannot encode a realtime message");
                Flow::Continue
            }
        }
    }

    /// Sends a close frame, then reads (and drops) what the client still sends
    /// until it answers the close, for a bounded time: closing with unread data
    /// would reset the connection and the client would see 1006, not our code.
    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        // A client that reads nothing must not hold the task forever.
        match tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, self.socket.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        let drain = async {
            while let Some(Ok(message)) = self.socket.recv().await {
                if let Message::Close(_) = message {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, drain).await;
    }

    /// The client closed: reading once more lets the WebSocket layer send its
    /// close reply, so the client sees a completed handshake, not a dropped socket.
    async fn answer_close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, self.socket.recv()).await;
    }

    /// A read failed: a frame beyond the hard limit (1009), a protocol violation
    /// such as invalid UTF-8 (1008) — or the client is simply gone.
    async fn on_read_error(&mut self, err: axum::Error) {
        match matchplane_edge::ws::classify_read_error(err) {
            ReadFailure::Gone => {}
            ReadFailure::TooBig(_) => self.abort(1009, "message too big").await,
            ReadFailure::Malformed(_) => self.abort(1008, "malformed frame").await,
        }
    }

    /// Closes after a read error: the unread input cannot be skipped, so instead of
    /// draining it the socket stays open a moment, letting the client read the close
    /// frame before the kernel resets the connection.
    async fn abort(&mut self, code: u16, reason: &'static str) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        if tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, self.socket.send(frame))
            .await
            .is_ok()
        {
            tokio::time::sleep(CLOSE_HANDSHAKE_TIMEOUT).await;
        }
    }

    /// Queues `message`; the wake-up's [`Session::flush`] writes it (close frames
    /// go out with `send`, which flushes what is queued before them).
    async fn send_raw(&mut self, message: Message) -> Flow {
        match self.socket.feed(message).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn error(&mut self, code: ErrorCode, message: impl Into<String>) -> Flow {
        self.error_about(None, code, message).await
    }

    async fn error_about(
        &mut self,
        ticket_id: Option<&str>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Flow {
        self.send(RealtimeEvent::Error(RealtimeError {
            code,
            message: message.into(),
            ticket_id: ticket_id.map(str::to_owned),
        }))
        .await
    }

    async fn on_message(&mut self, message: Message) -> Flow {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => {
                self.answer_close().await;
                return Flow::Close;
            }
            Message::Ping(_) | Message::Pong(_) => return Flow::Continue,
            Message::Binary(_) => {
                return self
                    .bad_in_turn(
                        ErrorCode::InvalidRequest,
                        "send JSON text frames".to_owned(),
                    )
                    .await;
            }
        };
        if text.len() > self.state.config.limits.max_body_bytes {
            self.close(1009, "message too big").await;
            return Flow::Close;
        }
        match serde_json::from_str::<RealtimeAction>(text.as_str()) {
            Ok(action) => self.on_action_in_turn(action).await,
            Err(err) => {
                let code = if serde_json::from_str::<serde_json::Value>(text.as_str()).is_ok() {
                    ErrorCode::InvalidRequest
                } else {
                    ErrorCode::InvalidJson
                };
                self.bad_in_turn(code, format!("expected {{\"action\": \"enqueue\" | \"subscribe\" | \"heartbeat\", …}}: {err}"))
                    .await
            }
        }
    }

    /// Handles `action` now, unless an answer to an earlier message is still due: an
    /// enqueue may join the enqueues in flight, anything else waits its turn.
    async fn on_action_in_turn(&mut self, action: RealtimeAction) -> Flow {
        let joins_in_flight =
            self.deferred.is_empty() && matches!(action, RealtimeAction::Enqueue(_));
        if self.enqueues.is_empty() && self.deferred.is_empty() || joins_in_flight {
            return self.on_action(action).await;
        }
        self.deferred.push_back(Deferred::Action(action));
        Flow::Continue
    }

    async fn bad_in_turn(&mut self, code: ErrorCode, message: String) -> Flow {
        if self.enqueues.is_empty() && self.deferred.is_empty() {
            return self.bad(code, message).await;
        }
        self.deferred.push_back(Deferred::Bad(code, message));
        Flow::Continue
    }

    async fn on_action(&mut self, action: RealtimeAction) -> Flow {
        match action {
            RealtimeAction::Heartbeat {} => {
                let server_time = self.state.clock.now_ms();
                self.send(RealtimeEvent::Heartbeat(HeartbeatAck { server_time }))
                    .await
            }
            RealtimeAction::Subscribe(subscribe) => match subscribe.ticket_id {
                Some(ticket_id) if !ticket_id.is_empty() => self.subscribe(ticket_id).await,
                _ => {
                    self.error(ErrorCode::TicketIdRequired, "subscribe needs a ticketId")
                        .await
                }
            },
            RealtimeAction::Enqueue(request) => {
                // Enqueues in flight will each watch a ticket too.
                if self.watcher.watching() + self.enqueues.len() >= MAX_WATCHED_PER_SOCKET
                    && !self.make_room()
                {
                    return self.too_many().await;
                }
                let state = self.state.clone();
                let player = PlayerIdentity(self.player.0.clone());
                // Driven to its end by `finish_enqueues` even if the socket closes.
                self.enqueues.push_back(Box::pin(async move {
                    enqueue_ticket(&state, &player, *request, Completion::DrivenByCaller).await
                }));
                Flow::Continue
            }
        }
    }

    /// The oldest enqueue in flight is done: answers it and watches its ticket, then
    /// handles the messages that were waiting for it.
    async fn on_enqueued(&mut self, created: Result<TicketRecord, ApiError>) -> Flow {
        let flow = match created {
            Ok(ticket) => {
                let ticket_id = ticket.ticket_id;
                let flow = self
                    .send(RealtimeEvent::Enqueued(Enqueued {
                        ticket_id: ticket_id.clone(),
                        status: ticket.status,
                    }))
                    .await;
                if let Flow::Close = flow {
                    return Flow::Close;
                }
                self.subscribe(ticket_id).await
            }
            Err(err) => self.error(err.code, err.message).await,
        };
        if let Flow::Close = flow {
            return Flow::Close;
        }
        while let Some(next) = self.deferred.front() {
            let joins_in_flight = matches!(next, Deferred::Action(RealtimeAction::Enqueue(_)));
            if !self.enqueues.is_empty() && !joins_in_flight {
                break;
            }
            let flow = match self.deferred.pop_front() {
                Some(Deferred::Action(action)) => self.on_action(action).await,
                Some(Deferred::Bad(code, message)) => self.bad(code, message).await,
                None => Flow::Continue,
            };
            if let Flow::Close = flow {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    async fn bad(&mut self, code: ErrorCode, message: impl Into<String>) -> Flow {
        self.bad_messages += 1;
        if let Flow::Close = self.error(code, message).await {
            return Flow::Close;
        }
        if self.bad_messages >= MAX_BAD_MESSAGES {
            self.close(1008, "too many invalid messages").await;
            return Flow::Close;
        }
        Flow::Continue
    }

    async fn too_many(&mut self) -> Flow {
        self.error(
            ErrorCode::TooManySubscriptions,
            format!("a socket may watch at most {MAX_WATCHED_PER_SOCKET} tickets"),
        )
        .await
    }

    /// Watches first, then reads the status: an assignment that lands in
    /// between arrives as an event and is deduplicated, never lost.
    async fn subscribe(&mut self, ticket_id: String) -> Flow {
        if !self.watcher.is_watching(&ticket_id)
            && self.watcher.watching() >= MAX_WATCHED_PER_SOCKET
            && !self.make_room()
        {
            return self.too_many().await;
        }
        self.watcher.watch(&ticket_id);
        let ticket = match self.state.store.ticket(&ticket_id).await {
            Ok(Some(ticket)) if may_access(&self.player, &ticket) => ticket,
            // Someone else's ticket reads as missing, so ids cannot be probed.
            Ok(_) => {
                self.unwatch(&ticket_id);
                return self
                    .error_about(
                        Some(&ticket_id),
                        ErrorCode::TicketNotFound,
                        format!("no ticket {ticket_id}"),
                    )
                    .await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "realtime status read failed");
                self.unwatch(&ticket_id);
                return self
                    .error_about(
                        Some(&ticket_id),
                        ErrorCode::StoreUnavailable,
                        "the ticket store is unavailable; retry shortly",
                    )
                    .await;
            }
        };
        match settled_event(ticket, self.state.clock.now_ms()) {
            Some(event) => self.on_event(event).await,
            None => {
                self.send(RealtimeEvent::Subscribed(Subscribed {
                    ticket_id,
                    status: TicketStatus::Queued,
                }))
                .await
            }
        }
    }

    /// Events may have been missed: re-reads each watched ticket and sends
    /// what it settled into meanwhile (deduplicated like any event). A ticket
    /// that cannot be read now keeps its watch; the next event still arrives.
    async fn resync(&mut self) -> Flow {
        let watched = self.watcher.watched().to_vec();
        for ticket_id in watched {
            let ticket = match self.state.store.ticket(&ticket_id).await {
                Ok(Some(ticket)) => ticket,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(error = %err, "realtime resync read failed");
                    continue;
                }
            };
            if let Some(event) = settled_event(ticket, self.state.clock.now_ms())
                && let Flow::Close = self.on_event(event).await
            {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    /// Stops watching the oldest assigned ticket to make room for a new watch.
    fn make_room(&mut self) -> bool {
        match self.settled.pop_front() {
            Some(ticket_id) => {
                self.unwatch(&ticket_id);
                true
            }
            None => false,
        }
    }

    /// Stops watching a ticket and drops what was kept to deduplicate its
    /// events, so a socket's memory follows what it watches now, not every
    /// ticket it ever watched.
    fn unwatch(&mut self, ticket_id: &str) {
        self.watcher.forget(ticket_id);
        self.assignments_sent.forget(ticket_id);
        self.settled.retain(|settled| settled != ticket_id);
    }

    async fn on_event(&mut self, event: TicketEvent) -> Flow {
        // Sent before the ticket was unwatched (a final state already sent, or
        // room made for another watch): the socket no longer follows it.
        if !self.watcher.is_watching(event.ticket_id()) {
            return Flow::Continue;
        }
        if event.is_terminal() {
            let ticket_id = event.ticket_id().to_owned();
            self.unwatch(&ticket_id);
        }
        let message = match event {
            TicketEvent::Assigned {
                ticket_id,
                assignment,
            } => {
                if !self
                    .assignments_sent
                    .first_time(&ticket_id, &assignment.assignment_id)
                {
                    return Flow::Continue;
                }
                if !self.settled.contains(&ticket_id) {
                    self.settled.push_back(ticket_id.clone());
                }
                RealtimeEvent::MatchAssigned(MatchAssigned {
                    ticket_id,
                    assignment: *assignment,
                })
            }
            TicketEvent::Requeued { ticket_id, reason } => {
                self.settled.retain(|settled| *settled != ticket_id);
                RealtimeEvent::TicketRequeued(TicketRequeued { ticket_id, reason })
            }
            TicketEvent::MatchLost {
                ticket_id,
                land_id,
                reason,
            } => RealtimeEvent::MatchLost(MatchLost {
                ticket_id,
                land_id,
                reason,
            }),
            TicketEvent::Failed { ticket_id, reason } => {
                RealtimeEvent::TicketFailed(TicketFailed { ticket_id, reason })
            }
            TicketEvent::Cancelled { ticket_id } => {
                RealtimeEvent::TicketCancelled(TicketRef { ticket_id })
            }
            TicketEvent::Expired { ticket_id } => {
                RealtimeEvent::TicketExpired(TicketRef { ticket_id })
            }
        };
        debug_assert!(
            self.assignments_sent.only_for(self.watcher.watched()),
            "dedup records outlived their watch"
        );
        self.send(message).await
    }
}
