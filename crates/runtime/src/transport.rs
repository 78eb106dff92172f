//! WebSocket transport: one connection = one reader loop + one writer task.
//!
//! The reader enforces size, rate and well-formedness limits and forwards player input
//! to the land's keeper; the writer drains the connection's bounded outbound queue,
//! which the keeper fills without ever awaiting a socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use matchplane_contracts::game::{ClientMessage, ServerMessage, close_code, error_code};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::auth::{AdmissionRequest, Rejection};
use crate::core::{ConnHandle, Disconnect, Outbound};
use crate::frame;
use crate::keeper::KeeperCommand;
use crate::server::Shared;

/// Per-connection limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionLimits {
    /// Largest text frame accepted; larger ones get `error` + close 1009.
    pub max_message_bytes: usize,
    /// Sustained client messages per second (token bucket refill rate).
    pub messages_per_second: f64,
    /// Messages a client may send in a burst above the sustained rate.
    pub burst: f64,
    /// Malformed or unknown messages tolerated; the next one closes with 4400.
    pub malformed_tolerance: u32,
    /// Frames queued for a client before it counts as too slow.
    pub outbound_queue: usize,
    /// Close connections silent for this long (any frame, including pongs, counts).
    pub idle_timeout: Option<Duration>,
    /// Interval of server WebSocket pings that keep quiet but healthy clients alive.
    pub keepalive_interval: Option<Duration>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024,
            messages_per_second: 50.0,
            burst: 100.0,
            malformed_tolerance: 3,
            outbound_queue: 512,
            idle_timeout: Some(Duration::from_secs(60)),
            keepalive_interval: Some(Duration::from_secs(20)),
        }
    }
}

/// Frames above the soft limit but below this are read whole, so the client can be told
/// why it is closed; beyond it the WebSocket layer drops the connection by itself.
pub(crate) fn hard_frame_limit(limits: &ConnectionLimits) -> usize {
    limits.max_message_bytes.saturating_mul(4).max(64 * 1024)
}

struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    updated: Instant,
}

impl TokenBucket {
    fn new(limits: &ConnectionLimits) -> Self {
        Self {
            tokens: limits.burst,
            rate: limits.messages_per_second,
            burst: limits.burst,
            updated: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

fn close_message(code: u16, reason: &str) -> Message {
    // The WebSocket protocol caps close reasons at 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}

async fn refuse(mut sink: Sink, rejection: &Rejection) {
    tracing::info!(close_code = rejection.close_code, error_code = %rejection.error_code, message = %rejection.message, "connection refused");
    if let Some(frame) = frame::error(&rejection.error_code, rejection.message.clone()) {
        let _ = sink.send(Message::Text(frame)).await;
    }
    let _ = sink
        .send(close_message(rejection.close_code, &rejection.message))
        .await;
}

pub(crate) async fn serve_connection(
    socket: WebSocket,
    shared: Arc<Shared>,
    land_type: String,
    query: HashMap<String, String>,
) {
    let (sink, mut stream) = socket.split();
    let manager = &shared.manager;
    if !manager.registry().contains(&land_type) {
        let rejection = Rejection::new(
            close_code::UNKNOWN_LAND_TYPE,
            error_code::UNKNOWN_LAND_TYPE,
            format!("no land type {land_type:?} on this server"),
        );
        return refuse(sink, &rejection).await;
    }
    let request = AdmissionRequest {
        land_type: &land_type,
        land_id: query.get("landId").map(String::as_str),
        query: &query,
    };
    let admission = match shared.auth.authenticate(&request).await {
        Ok(admission) => admission,
        Err(rejection) => return refuse(sink, &rejection).await,
    };
    let limits = &shared.config.limits;
    let conn_id = manager.next_conn_id();
    let (outbound, outbound_rx) = mpsc::channel(limits.outbound_queue.max(8));
    let (kill, kill_rx) = watch::channel(None);
    let conn = ConnHandle {
        id: conn_id,
        tx: outbound.clone(),
        kill: Arc::new(kill),
    };
    let seated = match manager.join(&land_type, &admission, conn).await {
        Ok(seated) => seated,
        Err(rejection) => return refuse(sink, &rejection).await,
    };
    let player = admission.player_id;
    tracing::info!(conn_id, player_id = %player, land_id = %admission.land_id, "connection seated");

    let mut writer = tokio::spawn(write_loop(
        sink,
        outbound_rx,
        kill_rx,
        limits.keepalive_interval,
    ));
    let reader = Reader {
        outbound: &outbound,
        keeper: &seated.commands,
        player: &player,
        conn_id,
        limits,
    };
    let how = tokio::select! {
        how = reader.run(&mut stream) => how,
        // The writer stops after sending a close (land closed, takeover, slow consumer).
        _ = &mut writer => Disconnect::Dropped,
    };
    let _ = seated
        .commands
        .send(KeeperCommand::Disconnect {
            player: player.clone(),
            conn_id,
            how,
        })
        .await;
    drop(outbound);
    // Let queued `error` and close frames go out; the keeper has dropped its handle.
    if !writer.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut writer).await;
        writer.abort();
    }
    tracing::debug!(conn_id, player_id = %player, how = ?how, "connection ended");
}

async fn write_loop(
    mut sink: Sink,
    mut outbound: mpsc::Receiver<Outbound>,
    mut kill: watch::Receiver<Option<(u16, String)>>,
    keepalive: Option<Duration>,
) {
    let mut kill_open = true;
    let mut pings = keepalive.map(|every| tokio::time::interval_at(Instant::now() + every, every));
    loop {
        tokio::select! {
            biased;
            changed = kill.changed(), if kill_open => {
                if changed.is_err() {
                    kill_open = false;
                    continue;
                }
                let request = kill.borrow_and_update().clone();
                if let Some((code, reason)) = request {
                    let _ = sink.send(close_message(code, &reason)).await;
                    break;
                }
            }
            message = outbound.recv() => match message {
                Some(Outbound::Text(text)) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                Some(Outbound::Close { code, reason }) => {
                    let _ = sink.send(close_message(code, &reason)).await;
                    break;
                }
                None => break,
            },
            _ = async {
                match pings.as_mut() {
                    Some(pings) => pings.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
}

struct Reader<'a> {
    outbound: &'a mpsc::Sender<Outbound>,
    keeper: &'a mpsc::Sender<KeeperCommand>,
    player: &'a str,
    conn_id: u64,
    limits: &'a crate::transport::ConnectionLimits,
}

impl Reader<'_> {
    /// Sends `error` then a close; the client is being removed.
    async fn kick(&self, close: u16, code: &str, message: &str) -> Disconnect {
        tracing::warn!(
            conn_id = self.conn_id,
            player_id = self.player,
            close_code = close,
            error_code = code,
            "closing abusive connection"
        );
        if let Some(frame) = frame::error(code, message) {
            let _ = self.outbound.send(Outbound::Text(frame)).await;
        }
        let _ = self
            .outbound
            .send(Outbound::Close {
                code: close,
                reason: message.to_owned(),
            })
            .await;
        Disconnect::Kicked
    }

    async fn forward(&self, command: KeeperCommand) -> bool {
        self.keeper.send(command).await.is_ok()
    }

    async fn run(&self, stream: &mut Stream) -> Disconnect {
        let mut bucket = TokenBucket::new(self.limits);
        let mut malformed = 0u32;
        loop {
            let next = match self.limits.idle_timeout {
                Some(idle) => match tokio::time::timeout(idle, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        let _ = self
                            .outbound
                            .send(Outbound::Close {
                                code: close_code::GOING_AWAY,
                                reason: "idle timeout".to_owned(),
                            })
                            .await;
                        return Disconnect::Dropped;
                    }
                },
                None => stream.next().await,
            };
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Binary(_))) => Utf8Bytes::from_static("binary frame"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    return match frame {
                        Some(frame) if frame.code == close_code::NORMAL => Disconnect::Left,
                        _ => Disconnect::Dropped,
                    };
                }
                Some(Err(_)) | None => return Disconnect::Dropped,
            };
            if text.len() > self.limits.max_message_bytes {
                let message = format!(
                    "messages are limited to {} bytes",
                    self.limits.max_message_bytes
                );
                return self
                    .kick(
                        close_code::MESSAGE_TOO_BIG,
                        error_code::MESSAGE_TOO_BIG,
                        &message,
                    )
                    .await;
            }
            if !bucket.take() {
                let message = format!(
                    "more than {} messages per second",
                    self.limits.messages_per_second
                );
                return self
                    .kick(close_code::RATE_LIMITED, error_code::RATE_LIMITED, &message)
                    .await;
            }
            let message = match ClientMessage::decode(text.as_str()) {
                Ok(message) => message,
                Err(err) => {
                    malformed += 1;
                    if malformed > self.limits.malformed_tolerance {
                        return self
                            .kick(
                                close_code::MALFORMED,
                                err.code,
                                "too many malformed messages",
                            )
                            .await;
                    }
                    if let Some(frame) = frame::error(err.code, err.message) {
                        let _ = self.outbound.try_send(Outbound::Text(frame));
                    }
                    continue;
                }
            };
            let player = self.player.to_owned();
            let conn_id = self.conn_id;
            let delivered = match message {
                ClientMessage::Ping(ping) => {
                    if let Some(frame) = frame::encode(&ServerMessage::Pong(ping)) {
                        let _ = self.outbound.try_send(Outbound::Text(frame));
                    }
                    true
                }
                ClientMessage::Action(request) => {
                    self.forward(KeeperCommand::Action {
                        player,
                        conn_id,
                        request,
                    })
                    .await
                }
                ClientMessage::Event(event) => {
                    self.forward(KeeperCommand::Event {
                        player,
                        conn_id,
                        event,
                    })
                    .await
                }
                ClientMessage::SyncRequest => {
                    self.forward(KeeperCommand::SyncRequest { player, conn_id })
                        .await
                }
            };
            if !delivered {
                // The land is gone; its keeper already told the client why.
                return Disconnect::Dropped;
            }
        }
    }
}
