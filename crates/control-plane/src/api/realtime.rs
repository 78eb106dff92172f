//! `GET /realtime?ticketId=…`: pushes `match.assigned` (and `ticket.cancelled` /
//! `ticket.expired`) to clients, and accepts `enqueue`, `subscribe` and
//! `heartbeat` actions. Status polling stays the source of truth; this is the
//! fast path.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use matchplane_contracts::ErrorCode;
use matchplane_contracts::matchmaking::TicketStatus;
use matchplane_contracts::realtime::{
    Enqueued, HeartbeatAck, MatchAssigned, RealtimeAction, RealtimeEnvelope, RealtimeError,
    RealtimeEvent, Subscribed, TicketRef,
};
use serde::Deserialize;

use super::AppState;
use super::matchmaking::enqueue_ticket;
use crate::events::{TicketEvent, Watcher};

/// Tickets one socket may watch at once (a client normally watches one).
const MAX_WATCHED_PER_SOCKET: usize = 32;
/// Keeps idle connections open through proxies and detects dead peers.
const PING_EVERY: Duration = Duration::from_secs(25);
/// Malformed messages tolerated before the socket is closed.
const MAX_BAD_MESSAGES: u32 = 10;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeQuery {
    #[serde(default)]
    ticket_id: Option<String>,
}

pub async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<RealtimeQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let max_message = state.config.limits.max_body_bytes;
    ws.max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| async move {
            Session::new(socket, state).run(query.ticket_id).await;
        })
}

struct Session {
    socket: WebSocket,
    events: tokio::sync::mpsc::UnboundedReceiver<TicketEvent>,
    state: AppState,
    watcher: Watcher,
    /// Tickets whose final state this socket was already sent (dedup between
    /// the status read and the event stream).
    finished: HashSet<String>,
    bad_messages: u32,
}

enum Flow {
    Continue,
    Close,
}

impl Session {
    fn new(socket: WebSocket, state: AppState) -> Self {
        let (watcher, events) = state.events.watcher();
        crate::metrics::inc(&state.metrics.realtime_sockets);
        Self {
            socket,
            events,
            state,
            watcher,
            finished: HashSet::new(),
            bad_messages: 0,
        }
    }

    async fn run(mut self, initial_ticket: Option<String>) {
        let mut shutdown = self.state.shutdown.clone();
        if let Some(ticket_id) = initial_ticket
            && let Flow::Close = self.subscribe(ticket_id).await
        {
            return;
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        loop {
            let flow = tokio::select! {
                incoming = self.socket.recv() => match incoming {
                    Some(Ok(message)) => self.on_message(message).await,
                    Some(Err(_)) | None => Flow::Close,
                },
                Some(event) = self.events.recv() => self.on_event(event).await,
                _ = ping.tick() => self.send_raw(Message::Ping(Default::default())).await,
                _ = shutdown.changed() => {
                    let _ = self.socket.send(Message::Close(Some(CloseFrame {
                        code: 1001,
                        reason: Utf8Bytes::from_static("server shutting down"),
                    }))).await;
                    Flow::Close
                }
            };
            if let Flow::Close = flow {
                break;
            }
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

    async fn send_raw(&mut self, message: Message) -> Flow {
        match self.socket.send(message).await {
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
            Message::Close(_) => return Flow::Close,
            Message::Ping(_) | Message::Pong(_) => return Flow::Continue,
            Message::Binary(_) => {
                return self
                    .bad(ErrorCode::InvalidRequest, "send JSON text frames")
                    .await;
            }
        };
        let action = match serde_json::from_str::<RealtimeAction>(text.as_str()) {
            Ok(action) => action,
            Err(err) => {
                let code = if serde_json::from_str::<serde_json::Value>(text.as_str()).is_ok() {
                    ErrorCode::InvalidRequest
                } else {
                    ErrorCode::InvalidJson
                };
                return self
                    .bad(code, format!("expected {{\"action\": \"enqueue\" | \"subscribe\" | \"heartbeat\", …}}: {err}"))
                    .await;
            }
        };
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
                if self.watcher.watching() >= MAX_WATCHED_PER_SOCKET {
                    return self.too_many().await;
                }
                match enqueue_ticket(&self.state, *request).await {
                    Ok(ticket) => {
                        let ticket_id = ticket.ticket_id.clone();
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
                }
            }
        }
    }

    async fn bad(&mut self, code: ErrorCode, message: impl Into<String>) -> Flow {
        self.bad_messages += 1;
        if let Flow::Close = self.error(code, message).await {
            return Flow::Close;
        }
        if self.bad_messages >= MAX_BAD_MESSAGES {
            let _ = self
                .socket
                .send(Message::Close(Some(CloseFrame {
                    code: 1008,
                    reason: Utf8Bytes::from_static("too many invalid messages"),
                })))
                .await;
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
        {
            return self.too_many().await;
        }
        self.watcher.watch(&ticket_id);
        let ticket = match self.state.store.ticket(&ticket_id).await {
            Ok(Some(ticket)) => ticket,
            Ok(None) => {
                self.watcher.forget(&ticket_id);
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
                self.watcher.forget(&ticket_id);
                return self
                    .error_about(
                        Some(&ticket_id),
                        ErrorCode::StoreUnavailable,
                        "the ticket store is unavailable; retry shortly",
                    )
                    .await;
            }
        };
        let event = match (ticket.status, ticket.assignment) {
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
            (TicketStatus::Queued | TicketStatus::Assigned, _) => None,
        };
        match event {
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

    async fn on_event(&mut self, event: TicketEvent) -> Flow {
        let ticket_id = event.ticket_id().to_owned();
        if !self.finished.insert(ticket_id.clone()) {
            return Flow::Continue;
        }
        self.watcher.forget(&ticket_id);
        let message = match event {
            TicketEvent::Assigned {
                ticket_id,
                assignment,
            } => RealtimeEvent::MatchAssigned(MatchAssigned {
                ticket_id,
                assignment: *assignment,
            }),
            TicketEvent::Cancelled { ticket_id } => {
                RealtimeEvent::TicketCancelled(TicketRef { ticket_id })
            }
            TicketEvent::Expired { ticket_id } => {
                RealtimeEvent::TicketExpired(TicketRef { ticket_id })
            }
        };
        self.send(message).await
    }
}
