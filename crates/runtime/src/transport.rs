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
use crate::core::{ConnHandle, Disconnect, Outbound, SyncEncoding};
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
/// why it is closed; beyond it the WebSocket layer refuses the frame after its header and
/// the connection is closed with 1009 without reading the rest.
pub(crate) fn hard_frame_limit(limits: &ConnectionLimits) -> usize {
    limits.max_message_bytes.saturating_mul(4).max(64 * 1024)
}

/// How long a connection the server closes keeps reading (and discarding) what the client
/// still sends, waiting for its close frame. Dropping a socket with unread input makes TCP
/// send a reset, which can destroy the close frame before the client reads it (it would see
/// 1006 instead of the code it should act on).
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(2);

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

async fn refuse(mut sink: Sink, stream: &mut Stream, rejection: &Rejection) {
    tracing::info!(close_code = rejection.close_code, error_code = %rejection.error_code, message = %rejection.message, "connection refused");
    let sent = tokio::time::timeout(CLOSE_LINGER, async {
        if let Some(frame) = frame::error(&rejection.error_code, rejection.message.clone()) {
            sink.send(Message::Text(frame)).await?;
        }
        sink.send(close_message(rejection.close_code, &rejection.message))
            .await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        linger(stream).await;
    }
}

/// Reads and discards until the client answers the server's close frame, goes away, or
/// [`CLOSE_LINGER`] passes; see there for why.
async fn linger(stream: &mut Stream) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
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
        // The path is the client's: echo only a bounded prefix of it.
        let shown: String = land_type.chars().take(64).collect();
        let rejection = Rejection::new(
            close_code::UNKNOWN_LAND_TYPE,
            error_code::UNKNOWN_LAND_TYPE,
            format!("no land type {shown:?} on this server"),
        );
        return refuse(sink, &mut stream, &rejection).await;
    }
    let Some(sync) = SyncEncoding::from_query(query.get("sync").map(String::as_str)) else {
        let shown: String = query
            .get("sync")
            .map(|value| value.chars().take(32).collect())
            .unwrap_or_default();
        let rejection = Rejection::new(
            close_code::MALFORMED,
            error_code::UNSUPPORTED_SYNC,
            format!("sync must be \"patch\" or \"merge\", got {shown:?}"),
        );
        return refuse(sink, &mut stream, &rejection).await;
    };
    let request = AdmissionRequest {
        server_id: &shared.config.server_id,
        server_instance_id: &shared.config.instance_id,
        land_type: &land_type,
        land_id: query.get("landId").map(String::as_str),
        query: &query,
    };
    let admission = match shared.auth.authenticate(&request).await {
        Ok(admission) => admission,
        Err(rejection) => return refuse(sink, &mut stream, &rejection).await,
    };
    let limits = &shared.config.limits;
    let conn_id = manager.next_conn_id();
    let (outbound, outbound_rx) = mpsc::channel(limits.outbound_queue.max(8));
    let (kill, kill_rx) = watch::channel(None);
    let conn = ConnHandle {
        id: conn_id,
        tx: outbound.clone(),
        kill: Arc::new(kill),
        sync,
    };
    let seated = match manager.join(&land_type, &admission, conn.clone()).await {
        Ok(seated) => seated,
        Err(rejection) => return refuse(sink, &mut stream, &rejection).await,
    };
    let player = admission.player_id;
    tracing::info!(conn_id, player_id = %player, land_id = %admission.land_id, "connection seated");

    let mut writer = tokio::spawn(write_loop(
        sink,
        outbound_rx,
        kill_rx,
        limits.keepalive_interval,
    ));
    let end = {
        let reader = Reader {
            conn,
            keeper: &seated.commands,
            player: &player,
            limits,
        };
        tokio::select! {
            end = reader.run(&mut stream) => end,
            // The writer stops after sending a close (land closed, takeover, slow consumer).
            _ = &mut writer => ReadEnd { how: Disconnect::Dropped, stream_failed: false },
        }
        // The reader's handle on the outbound queue goes here, so the writer sees the
        // queue end once the keeper has let go too.
    };
    let how = end.how;
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
    if end.stream_failed {
        // A refused frame cannot be skipped, so the input cannot be drained: keep the
        // socket open a moment so the close frame is read before the reset.
        tokio::time::sleep(CLOSE_LINGER).await;
    } else {
        linger(&mut stream).await;
    }
    tracing::debug!(conn_id, player_id = %player, how = ?how, "connection ended");
}

/// Sends the close frame, giving up after [`CLOSE_LINGER`] on a client that reads nothing.
async fn send_close(sink: &mut Sink, code: u16, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_LINGER, sink.send(close_message(code, reason))).await;
}

/// A pending kill request, once the kill channel changed; `None` while there is none.
fn kill_request(
    changed: Result<(), watch::error::RecvError>,
    kill: &mut watch::Receiver<Option<(u16, String)>>,
    kill_open: &mut bool,
) -> Option<(u16, String)> {
    if changed.is_err() {
        *kill_open = false;
        return None;
    }
    kill.borrow_and_update().clone()
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
        let first = tokio::select! {
            biased;
            changed = kill.changed(), if kill_open => {
                match kill_request(changed, &mut kill, &mut kill_open) {
                    Some((code, reason)) => {
                        send_close(&mut sink, code, &reason).await;
                        break;
                    }
                    None => continue,
                }
            }
            frame = outbound.recv() => match frame {
                Some(Outbound::Text(text)) => Message::Text(text),
                Some(Outbound::Binary(bytes)) => Message::Binary(bytes),
                Some(Outbound::Close { code, reason }) => {
                    send_close(&mut sink, code, &reason).await;
                    break;
                }
                None => break,
            },
            _ = async {
                match pings.as_mut() {
                    Some(pings) => pings.tick().await,
                    None => std::future::pending().await,
                }
            } => Message::Ping(Default::default()),
        };
        let mut write = QueuedWrite {
            pending: Some(first),
            close_after: None,
        };
        // A client that stops reading blocks this write; a kill (slow consumer, takeover)
        // must still get through rather than wait behind it forever.
        let written = tokio::select! {
            biased;
            changed = kill.changed(), if kill_open => {
                if let Some((code, reason)) = kill_request(changed, &mut kill, &mut kill_open) {
                    send_close(&mut sink, code, &reason).await;
                    break;
                }
                write.run(&mut sink, &mut outbound).await
            }
            written = write.run(&mut sink, &mut outbound) => written,
        };
        if written.is_err() {
            break;
        }
        if let Some((code, reason)) = write.close_after {
            send_close(&mut sink, code, &reason).await;
            break;
        }
    }
}

/// Frames one write may carry: a connection with a backlog still flushes every
/// this many frames rather than buffering its whole queue first.
const MAX_FRAMES_PER_WRITE: usize = 32;

/// One write of what the connection's queue holds: what one flush of the land
/// queued for this player (its patch, the `action.result` behind it, events)
/// goes out with one flush instead of one each.
struct QueuedWrite {
    /// Taken from the queue, not yet in the sink. Held here rather than in the
    /// future, so a write cancelled by the kill switch can be carried on.
    pending: Option<Message>,
    /// The close queued behind the frames; the connection ends with it.
    close_after: Option<(u16, String)>,
}

impl QueuedWrite {
    async fn run(
        &mut self,
        sink: &mut Sink,
        outbound: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), axum::Error> {
        let mut fed = 0;
        while let Some(message) = &self.pending {
            sink.feed(message.clone()).await?;
            fed += 1;
            self.pending = None;
            if fed < MAX_FRAMES_PER_WRITE {
                self.pending = match outbound.try_recv() {
                    Ok(Outbound::Text(text)) => Some(Message::Text(text)),
                    Ok(Outbound::Binary(bytes)) => Some(Message::Binary(bytes)),
                    Ok(Outbound::Close { code, reason }) => {
                        self.close_after = Some((code, reason));
                        None
                    }
                    Err(_) => None,
                };
            }
        }
        sink.flush().await
    }
}

struct Reader<'a> {
    /// This connection's own handle: its outbound queue and its kill switch.
    conn: ConnHandle,
    keeper: &'a mpsc::Sender<KeeperCommand>,
    player: &'a str,
    limits: &'a crate::transport::ConnectionLimits,
}

/// How the reader stopped.
struct ReadEnd {
    how: Disconnect,
    /// The WebSocket layer refused a frame: the rest of the input cannot be read.
    stream_failed: bool,
}

impl From<Disconnect> for ReadEnd {
    fn from(how: Disconnect) -> Self {
        Self {
            how,
            stream_failed: false,
        }
    }
}

/// What a failed read means for the client: a frame beyond the hard limit (1009), a
/// WebSocket protocol violation such as invalid UTF-8 in a text frame (4400), or a
/// connection that is simply gone.
fn read_failure(err: axum::Error) -> Option<(u16, &'static str, String)> {
    use matchplane_edge::ws::{ReadFailure, classify_read_error};
    match classify_read_error(err) {
        // The connection dropped (a client vanishing, not misbehaving): its seat is held.
        ReadFailure::Gone => None,
        ReadFailure::TooBig(detail) => Some((
            close_code::MESSAGE_TOO_BIG,
            error_code::MESSAGE_TOO_BIG,
            detail,
        )),
        ReadFailure::Malformed(detail) => {
            Some((close_code::MALFORMED, error_code::MALFORMED_MESSAGE, detail))
        }
    }
}

impl Reader<'_> {
    /// Queues `error` then a close; the client is being removed. Never waits on a full
    /// queue (a client that does not read): the close then skips the queue.
    fn kick(&self, close: u16, code: &str, message: &str) -> Disconnect {
        tracing::warn!(
            conn_id = self.conn.id,
            player_id = self.player,
            close_code = close,
            error_code = code,
            "closing abusive connection"
        );
        if let Some(frame) = frame::error(code, message) {
            let _ = self.conn.tx.try_send(Outbound::Text(frame));
        }
        self.conn.close(close, message);
        Disconnect::Kicked
    }

    async fn forward(&self, command: KeeperCommand) -> bool {
        self.keeper.send(command).await.is_ok()
    }

    async fn run(&self, stream: &mut Stream) -> ReadEnd {
        let mut bucket = TokenBucket::new(self.limits);
        let mut malformed = 0u32;
        loop {
            let next = match self.limits.idle_timeout {
                Some(idle) => match tokio::time::timeout(idle, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.conn.close(close_code::GOING_AWAY, "idle timeout");
                        return Disconnect::Dropped.into();
                    }
                },
                None => stream.next().await,
            };
            let next = match next {
                Some(Err(err)) => {
                    return match read_failure(err) {
                        Some((close, code, message)) => ReadEnd {
                            how: self.kick(close, code, &message),
                            stream_failed: true,
                        },
                        None => Disconnect::Dropped.into(),
                    };
                }
                other => other,
            };
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Binary(_))) => Utf8Bytes::from_static("binary frame"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    // The WebSocket layer only queues its answering close frame; it goes out
                    // on the next write. Make that write happen now, ahead of whatever the
                    // writer holds (the client reads nothing more), or the client would see
                    // the socket drop without the handshake completing.
                    self.conn.force_close(close_code::NORMAL, "");
                    return match frame {
                        Some(frame) if frame.code == close_code::NORMAL => Disconnect::Left,
                        _ => Disconnect::Dropped,
                    }
                    .into();
                }
                Some(Err(_)) | None => return Disconnect::Dropped.into(),
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
                    .into();
            }
            if !bucket.take() {
                let message = format!(
                    "more than {} messages per second",
                    self.limits.messages_per_second
                );
                return self
                    .kick(close_code::RATE_LIMITED, error_code::RATE_LIMITED, &message)
                    .into();
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
                            .into();
                    }
                    if let Some(frame) = frame::error(err.code, err.message) {
                        let _ = self.conn.tx.try_send(Outbound::Text(frame));
                    }
                    continue;
                }
            };
            let player = self.player.to_owned();
            let conn_id = self.conn.id;
            let delivered = match message {
                ClientMessage::Ping(ping) => {
                    if let Some(frame) = frame::encode(&ServerMessage::Pong(ping)) {
                        let _ = self.conn.tx.try_send(Outbound::Text(frame));
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
                return Disconnect::Dropped.into();
            }
        }
    }
}
