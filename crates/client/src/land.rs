//! A player's connection to a land on a game server.
//!
//! One background task owns the WebSocket: it applies state frames to the mirror,
//! routes `action.result`s to their callers, forwards events, and reconnects within the
//! grace when the connection drops. Callers only touch the shared mirror and channels,
//! so a slow caller never stalls the socket.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt as _, Stream, StreamExt as _};
use matchplane_contracts::binary_state;
use matchplane_contracts::game::{
    ActionRequest, ActionResult, ClientMessage, ErrorBody, EventBody, JoinOk, LandClosed,
    ServerMessage, close_code,
};
use matchplane_contracts::matchmaking::Assignment;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{ActionError, LandError};
use crate::url::assignment_url;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How the game server starts every `state.patch` frame (fast path only: frames written
/// differently are decoded normally).
const PATCH_PREFIX: &str = r#"{"type":"state.patch""#;
const MERGE_PREFIX: &str = r#"{"type":"state.merge""#;

/// How a dropped connection is re-established.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectPolicy {
    /// How long to keep trying; match it to the land's reconnect grace (the server
    /// releases the seat after that).
    pub grace: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(15),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConnectOptions {
    /// Connect + handshake + `join.ok`.
    pub join_timeout: Duration,
    /// How long [`LandHandle::action`] waits for its `action.result`.
    pub action_timeout: Duration,
    /// `None` ends the connection on the first drop.
    pub reconnect: Option<ReconnectPolicy>,
    /// `false` ignores patches (the state and `seq` stay at the last `join.ok` or
    /// snapshot), for load generators that need actions and events but not the state.
    pub mirror: bool,
    /// Events buffered for the caller; beyond that they are counted and dropped.
    pub event_buffer: usize,
    /// Initial WebSocket read buffer. The library default (128 KiB) is zeroed on every
    /// read, which dominates the CPU of thousands of connections receiving small frames;
    /// larger frames still arrive whole (the buffer grows).
    pub read_buffer_bytes: usize,
    /// How the server sends state changes (`?sync=`).
    pub sync: StateSync,
}

/// How a connection asks to receive state changes between snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateSync {
    /// `state.patch`: RFC 6902 operations (the protocol's default).
    #[default]
    Patch,
    /// `state.merge` (RFC 7386 merge patches, fewer bytes), with a
    /// `state.patch` whenever a merge patch cannot say the change.
    Merge,
    /// The same merge patches in binary frames that number member names once per
    /// land (`?sync=binary`, the fewest bytes), with a `state.snapshot` whenever a
    /// merge patch cannot say the change.
    Binary,
}

impl StateSync {
    /// The `?sync=` value, `None` for the protocol's default.
    fn query_value(self) -> Option<&'static str> {
        match self {
            Self::Patch => None,
            Self::Merge => Some("merge"),
            Self::Binary => Some("binary"),
        }
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            join_timeout: Duration::from_secs(10),
            action_timeout: Duration::from_secs(10),
            reconnect: Some(ReconnectPolicy::default()),
            mirror: true,
            event_buffer: 256,
            read_buffer_bytes: 16 * 1024,
            sync: StateSync::Patch,
        }
    }
}

impl ConnectOptions {
    /// For many simulated players: no mirror, few buffered events, no reconnects.
    pub fn lightweight() -> Self {
        Self {
            reconnect: None,
            mirror: false,
            event_buffer: 8,
            read_buffer_bytes: 4 * 1024,
            ..Self::default()
        }
    }
}

/// Something the caller may want to react to.
#[derive(Debug, Clone, PartialEq)]
pub enum LandEvent {
    /// A land event (`wave_started`, `gold_earned`, …).
    Event(EventBody),
    /// The server refused one of this client's messages.
    Error(ErrorBody),
    /// A sequence gap or a patch that did not apply was repaired by a snapshot.
    Resynced { seq: u64 },
    /// The connection dropped; `will_reconnect` says whether the SDK is trying again.
    Disconnected {
        close_code: Option<u16>,
        will_reconnect: bool,
    },
    /// Reconnected within the grace; the mirror was replaced by the fresh `join.ok`.
    Reconnected { seq: u64 },
    /// Reconnecting failed for good; the connection has ended.
    ReconnectFailed(LandError),
    /// The land ended (`victory`, `defeat`, `server_shutdown`, …).
    Closed(LandClosed),
}

/// Counters of one connection, for diagnostics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub patches_applied: u64,
    pub gaps: u64,
    pub resyncs: u64,
    pub reconnects: u64,
    pub dropped_events: u64,
    /// Payload bytes of the frames received after `join.ok` (what state sync costs).
    pub bytes_received: u64,
}

#[derive(Debug)]
struct Mirror {
    state: Value,
    seq: u64,
    awaiting_snapshot: bool,
    land_id: String,
    player_id: String,
    connected: bool,
    closed: Option<LandClosed>,
    ended: bool,
}

#[derive(Debug, Default)]
struct Counters {
    patches_applied: AtomicU64,
    gaps: AtomicU64,
    resyncs: AtomicU64,
    reconnects: AtomicU64,
    dropped_events: AtomicU64,
    bytes_received: AtomicU64,
}

/// A caller waiting for the first patch that carries `value` at `pointer`.
#[derive(Debug)]
struct PatchWatch {
    pointer: String,
    value: Value,
    seen: oneshot::Sender<Instant>,
}

impl PatchWatch {
    /// Whether one of `ops` sets `pointer` to `value`, directly or inside a larger value
    /// it adds or replaces (a new hero arrives as one `add` of the whole object).
    fn is_met_by(&self, ops: &Value) -> bool {
        let Some(ops) = ops.as_array() else {
            return false;
        };
        ops.iter().any(|op| {
            let (Some(path), Some(value)) =
                (op.get("path").and_then(Value::as_str), op.get("value"))
            else {
                return false;
            };
            let Some(rest) = self.pointer.strip_prefix(path) else {
                return false;
            };
            if !(rest.is_empty() || rest.starts_with('/')) {
                return false;
            }
            value.pointer(rest) == Some(&self.value)
        })
    }

    /// Whether the merge patch sets `pointer` to `value`: a merge patch has the
    /// state's shape, so the value sits at the same pointer in it.
    fn is_met_by_merge(&self, merge: &Value) -> bool {
        merge.pointer(&self.pointer) == Some(&self.value)
    }
}

#[derive(Debug)]
struct Shared {
    mirror: Mutex<Mirror>,
    pending: Mutex<HashMap<String, oneshot::Sender<ActionResult>>>,
    /// Bumped on every change of the mirror or the connection's life, so waiters wake.
    version: watch::Sender<u64>,
    counters: Counters,
    patch_watches: Mutex<Vec<PatchWatch>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn mirror(&self) -> MutexGuard<'_, Mirror> {
        locked(&self.mirror)
    }

    fn bump(&self) {
        self.version
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    /// Pending actions will never be answered on this connection.
    fn fail_pending(&self) {
        locked(&self.pending).clear();
        locked(&self.patch_watches).clear();
    }

    fn watching_patches(&self) -> bool {
        !locked(&self.patch_watches).is_empty()
    }

    fn settle_patch_watches(&self, is_met: impl Fn(&PatchWatch) -> bool) {
        let mut watches = locked(&self.patch_watches);
        if watches.is_empty() {
            return;
        }
        let now = Instant::now();
        let (met, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut *watches)
            .into_iter()
            .filter(|watch| !watch.seen.is_closed())
            .partition(|watch| is_met(watch));
        *watches = waiting;
        drop(watches);
        for watch in met {
            let _ = watch.seen.send(now);
        }
    }
}

#[derive(Debug)]
enum Outgoing {
    Text(String),
    Leave,
}

/// The cloneable part of a connection: state, actions, events to the server.
#[derive(Debug, Clone)]
pub struct LandHandle {
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    next_request: Arc<AtomicU64>,
    action_timeout: Duration,
}

impl LandHandle {
    /// A copy of the mirrored state (the player's view: shared state plus `me`).
    pub fn state(&self) -> Value {
        self.shared.mirror().state.clone()
    }

    /// Reads the mirror without copying it.
    pub fn with_state<R>(&self, read: impl FnOnce(&Value) -> R) -> R {
        read(&self.shared.mirror().state)
    }

    /// Sequence number of the mirrored state.
    pub fn seq(&self) -> u64 {
        self.shared.mirror().seq
    }

    pub fn land_id(&self) -> String {
        self.shared.mirror().land_id.clone()
    }

    pub fn player_id(&self) -> String {
        self.shared.mirror().player_id.clone()
    }

    /// Whether the socket is up right now (false while reconnecting and after the end).
    pub fn is_connected(&self) -> bool {
        self.shared.mirror().connected
    }

    /// The `land.closed` the server sent, if the land ended.
    pub fn closed(&self) -> Option<LandClosed> {
        self.shared.mirror().closed.clone()
    }

    /// Whether the connection has ended for good (land closed, left, or lost).
    pub fn is_ended(&self) -> bool {
        self.shared.mirror().ended
    }

    pub fn stats(&self) -> ConnectionStats {
        let counters = &self.shared.counters;
        ConnectionStats {
            patches_applied: counters.patches_applied.load(Ordering::Relaxed),
            gaps: counters.gaps.load(Ordering::Relaxed),
            resyncs: counters.resyncs.load(Ordering::Relaxed),
            reconnects: counters.reconnects.load(Ordering::Relaxed),
            dropped_events: counters.dropped_events.load(Ordering::Relaxed),
            bytes_received: counters.bytes_received.load(Ordering::Relaxed),
        }
    }

    /// Resolves with the moment the first `state.patch` setting `pointer` (an RFC 6901
    /// JSON Pointer into the player's view) to `value` arrived, also on connections
    /// without a mirror; its error means the connection ended or the patch never came
    /// (e.g. it was replaced by a snapshot). Watch before sending what causes the change.
    pub fn watch_patch(&self, pointer: &str, value: Value) -> oneshot::Receiver<Instant> {
        let (seen, receiver) = oneshot::channel();
        locked(&self.shared.patch_watches).push(PatchWatch {
            pointer: pointer.to_owned(),
            value,
            seen,
        });
        receiver
    }

    fn send(&self, message: &ClientMessage) -> Result<(), LandError> {
        let text =
            serde_json::to_string(message).map_err(|err| LandError::Protocol(err.to_string()))?;
        self.outgoing
            .send(Outgoing::Text(text))
            .map_err(|_| self.ended_error())
    }

    fn ended_error(&self) -> LandError {
        match self.closed() {
            Some(closed) => LandError::Closed(closed),
            None => LandError::Disconnected,
        }
    }

    /// Sends an action and waits for its `action.result`. The patch carrying the
    /// action's effects is applied to the mirror before this returns.
    pub async fn action(&self, name: &str, payload: Value) -> Result<Value, ActionError> {
        let request_id = self
            .next_request
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let (reply, answer) = oneshot::channel();
        locked(&self.shared.pending).insert(request_id.clone(), reply);
        let message = ClientMessage::Action(ActionRequest {
            request_id: request_id.clone(),
            name: name.to_owned(),
            payload,
        });
        if let Err(err) = self.send(&message) {
            locked(&self.shared.pending).remove(&request_id);
            return Err(match err {
                LandError::Closed(_) => ActionError::LandClosed,
                _ => ActionError::Disconnected,
            });
        }
        match tokio::time::timeout(self.action_timeout, answer).await {
            Err(_) => {
                locked(&self.shared.pending).remove(&request_id);
                Err(ActionError::Timeout(self.action_timeout))
            }
            Ok(Err(_)) if self.closed().is_some() => Err(ActionError::LandClosed),
            Ok(Err(_)) => Err(ActionError::Disconnected),
            Ok(Ok(result)) if result.ok => Ok(result.result.unwrap_or(Value::Null)),
            Ok(Ok(result)) => {
                let error = result.error.unwrap_or_else(|| {
                    ErrorBody::new("unknown", "the server gave no reason".to_owned())
                });
                Err(ActionError::Failed {
                    code: error.code,
                    message: error.message,
                })
            }
        }
    }

    /// Fire-and-forget input (`emote`, `shout`, …).
    pub fn send_event(&self, name: &str, payload: Value) -> Result<(), LandError> {
        self.send(&ClientMessage::Event(EventBody {
            name: name.to_owned(),
            payload,
        }))
    }

    /// Asks for a full `state.snapshot` (the SDK does this by itself on a gap).
    pub fn request_sync(&self) -> Result<(), LandError> {
        self.send(&ClientMessage::SyncRequest)
    }

    /// Waits until `condition` holds on the mirror and returns that state.
    pub async fn wait_for_state(
        &self,
        mut condition: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, LandError> {
        let mut version = self.shared.version.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mirror = self.shared.mirror();
                if condition(&mirror.state) {
                    return Ok(mirror.state.clone());
                }
                if mirror.ended {
                    return Err(match &mirror.closed {
                        Some(closed) => LandError::Closed(closed.clone()),
                        None => LandError::Disconnected,
                    });
                }
            }
            match tokio::time::timeout_at(deadline, version.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(LandError::Disconnected),
                Err(_) => return Err(LandError::StateTimeout(timeout)),
            }
        }
    }

    /// Waits for the land to end and returns its `land.closed`.
    pub async fn wait_closed(&self, timeout: Duration) -> Result<LandClosed, LandError> {
        let mut version = self.shared.version.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mirror = self.shared.mirror();
                if let Some(closed) = &mirror.closed {
                    return Ok(closed.clone());
                }
                if mirror.ended {
                    return Err(LandError::Disconnected);
                }
            }
            match tokio::time::timeout_at(deadline, version.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(LandError::Disconnected),
                Err(_) => return Err(LandError::StateTimeout(timeout)),
            }
        }
    }
}

/// The events of a connection as a [`Stream`]; also usable with
/// [`LandEvents::next`] without importing stream traits.
#[derive(Debug)]
pub struct LandEvents {
    receiver: mpsc::Receiver<LandEvent>,
}

impl LandEvents {
    /// The next event; `None` after the connection ended and every event was read.
    pub async fn next(&mut self) -> Option<LandEvent> {
        self.receiver.recv().await
    }
}

impl Stream for LandEvents {
    type Item = LandEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LandEvent>> {
        self.receiver.poll_recv(cx)
    }
}

/// A live connection to a land. Dereferences to [`LandHandle`] for state and actions.
#[derive(Debug)]
pub struct LandConnection {
    handle: LandHandle,
    events: Option<LandEvents>,
    task: JoinHandle<()>,
}

impl std::ops::Deref for LandConnection {
    type Target = LandHandle;

    fn deref(&self) -> &LandHandle {
        &self.handle
    }
}

impl LandConnection {
    /// Joins the land of `assignment` as `player_id` with default options.
    pub async fn connect(assignment: &Assignment, player_id: &str) -> Result<Self, LandError> {
        Self::connect_with(assignment, player_id, ConnectOptions::default()).await
    }

    pub async fn connect_with(
        assignment: &Assignment,
        player_id: &str,
        options: ConnectOptions,
    ) -> Result<Self, LandError> {
        let url = assignment_url(assignment, player_id)?;
        Self::connect_url(&url, options).await
    }

    /// Joins through any game-server URL, e.g. [`crate::dev_land_url`] for a server
    /// started with `--auth none`.
    pub async fn connect_url(url: &str, options: ConnectOptions) -> Result<Self, LandError> {
        let url = &match options.sync.query_value() {
            None => url.to_owned(),
            Some(sync) => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}sync={sync}")
            }
        };
        let (socket, mut join) = open(url, &options).await?;
        let keys = join.keys.take().unwrap_or_default();
        let (version, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            mirror: Mutex::new(Mirror {
                state: join.state,
                seq: join.seq,
                awaiting_snapshot: false,
                land_id: join.land_id,
                player_id: join.player_id,
                connected: true,
                closed: None,
                ended: false,
            }),
            pending: Mutex::new(HashMap::new()),
            version,
            counters: Counters::default(),
            patch_watches: Mutex::new(Vec::new()),
        });
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let (event_tx, receiver) = mpsc::channel(options.event_buffer.max(1));
        let handle = LandHandle {
            shared: Arc::clone(&shared),
            outgoing,
            next_request: Arc::new(AtomicU64::new(1)),
            action_timeout: options.action_timeout,
        };
        let driver = Driver {
            url: url.to_owned(),
            options,
            shared,
            outgoing: outgoing_rx,
            held: VecDeque::new(),
            events: event_tx,
            keys,
        };
        let task = tokio::spawn(driver.run(socket));
        Ok(Self {
            handle,
            events: Some(LandEvents { receiver }),
            task,
        })
    }

    /// A cloneable handle for other tasks (actions, state reads).
    pub fn handle(&self) -> LandHandle {
        self.handle.clone()
    }

    /// The next event; `None` once the connection ended (or after [`Self::take_events`]).
    pub async fn next_event(&mut self) -> Option<LandEvent> {
        match &mut self.events {
            Some(events) => events.next().await,
            None => None,
        }
    }

    /// Moves the event stream out, e.g. into its own task.
    pub fn take_events(&mut self) -> Option<LandEvents> {
        self.events.take()
    }

    /// Leaves the land (close code 1000: the seat is released at once) and waits for the
    /// socket to close.
    pub async fn leave(mut self) {
        let _ = self.handle.outgoing.send(Outgoing::Leave);
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// Connects and waits for `join.ok`; an `error` + close before it is a rejection.
async fn open(url: &str, options: &ConnectOptions) -> Result<(Socket, JoinOk), LandError> {
    open_within(url, options, options.join_timeout).await
}

async fn open_within(
    url: &str,
    options: &ConnectOptions,
    join_timeout: Duration,
) -> Result<(Socket, JoinOk), LandError> {
    let config = WebSocketConfig::default().read_buffer_size(options.read_buffer_bytes.max(1024));
    let attempt = async {
        let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|err| LandError::Connect {
                url: url.to_owned(),
                message: err.to_string(),
            })?;
        let mut refusal: Option<ErrorBody> = None;
        let rejected = |close_code: Option<u16>, refusal: Option<ErrorBody>| {
            let refusal = refusal.unwrap_or_else(|| {
                ErrorBody::new("closed", "the server closed the connection before join.ok")
            });
            LandError::Rejected {
                close_code,
                code: refusal.code,
                message: refusal.message,
            }
        };
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => match ServerMessage::decode(text.as_str()) {
                    Ok(ServerMessage::JoinOk(join)) => return Ok((socket, join)),
                    Ok(ServerMessage::Error(error)) => refusal = Some(error),
                    Ok(_) => {}
                    Err(err) => return Err(LandError::Protocol(err.to_string())),
                },
                Some(Ok(Message::Close(frame))) => {
                    return Err(rejected(frame.map(|frame| u16::from(frame.code)), refusal));
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    if refusal.is_some() {
                        return Err(rejected(None, refusal));
                    }
                    return Err(LandError::Connect {
                        url: url.to_owned(),
                        message: err.to_string(),
                    });
                }
                None => return Err(rejected(None, refusal)),
            }
        }
    };
    tokio::time::timeout(join_timeout, attempt)
        .await
        .map_err(|_| LandError::JoinTimeout(join_timeout))?
}

/// Close codes after which a reconnect can succeed: abrupt drops and "you were slow".
/// Everything else is a decision by the server (left, closed, refused, replaced).
fn reconnectable(code: Option<u16>) -> bool {
    match code {
        None => true,
        Some(code) => {
            matches!(code, 1006 | 1011 | 1012 | 1013 | 1014) || code == close_code::SLOW_CONSUMER
        }
    }
}

enum End {
    /// The caller left (or dropped every handle).
    Left,
    /// The land sent `land.closed`.
    LandClosed,
    Dropped {
        close_code: Option<u16>,
    },
}

struct Driver {
    url: String,
    options: ConnectOptions,
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedReceiver<Outgoing>,
    /// Messages the caller sent while reconnecting, delivered after `join.ok`.
    held: VecDeque<String>,
    events: mpsc::Sender<LandEvent>,
    /// The land's key table for binary state frames, from the latest `join.ok` or
    /// `state.snapshot` plus the definitions since.
    keys: Vec<String>,
}

impl Driver {
    fn emit(&self, event: LandEvent) {
        if self.events.try_send(event).is_err() {
            self.shared
                .counters
                .dropped_events
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn set_connected(&self, connected: bool) {
        self.shared.mirror().connected = connected;
        self.shared.bump();
    }

    async fn run(mut self, mut socket: Socket) {
        loop {
            let end = self.pump(&mut socket).await;
            self.set_connected(false);
            self.shared.fail_pending();
            match end {
                End::Left | End::LandClosed => break,
                End::Dropped { close_code } => {
                    let policy = self.options.reconnect.filter(|_| reconnectable(close_code));
                    self.emit(LandEvent::Disconnected {
                        close_code,
                        will_reconnect: policy.is_some(),
                    });
                    let Some(policy) = policy else {
                        break;
                    };
                    match self.reconnect(policy).await {
                        Ok(Some(fresh)) => socket = fresh,
                        Ok(None) => break,
                        Err(err) => {
                            tracing::debug!(url = %self.url, error = %err, "reconnect failed");
                            self.emit(LandEvent::ReconnectFailed(err));
                            break;
                        }
                    }
                }
            }
        }
        self.shared.mirror().ended = true;
        self.shared.bump();
    }

    /// Serves one socket until it ends.
    async fn pump(&mut self, socket: &mut Socket) -> End {
        while let Some(text) = self.held.pop_front() {
            if socket.send(Message::Text(text.into())).await.is_err() {
                return End::Dropped { close_code: None };
            }
        }
        loop {
            tokio::select! {
                command = self.outgoing.recv() => match command {
                    Some(Outgoing::Text(text)) => {
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            return End::Dropped { close_code: None };
                        }
                    }
                    Some(Outgoing::Leave) | None => {
                        leave(socket).await;
                        return End::Left;
                    }
                },
                frame = socket.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(reply) = self.on_text(text.as_str())
                            && socket.send(Message::Text(reply.into())).await.is_err()
                        {
                            return End::Dropped { close_code: None };
                        }
                    }
                    Some(Ok(Message::Binary(frame))) => {
                        if let Some(reply) = self.on_binary(&frame)
                            && socket.send(Message::Text(reply.into())).await.is_err()
                        {
                            return End::Dropped { close_code: None };
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        if self.shared.mirror().closed.is_some() {
                            return End::LandClosed;
                        }
                        return End::Dropped { close_code: frame.map(|frame| u16::from(frame.code)) };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        if self.shared.mirror().closed.is_some() {
                            return End::LandClosed;
                        }
                        return End::Dropped { close_code: None };
                    }
                },
            }
        }
    }

    /// Handles one server frame; returns a frame to send back (`sync.request`).
    fn on_text(&mut self, text: &str) -> Option<String> {
        self.shared
            .counters
            .bytes_received
            .fetch_add(text.len() as u64, Ordering::Relaxed);
        let fast_patch = text.starts_with(PATCH_PREFIX) || text.starts_with(MERGE_PREFIX);
        if !self.options.mirror && fast_patch && !self.shared.watching_patches() {
            // Without a mirror a patch changes nothing; skipping its decode is what lets
            // one load generator hold thousands of 20 Hz players.
            return None;
        }
        let message = match ServerMessage::decode(text) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(url = %self.url, error = %err, "ignoring an undecodable server message");
                return None;
            }
        };
        match message {
            ServerMessage::JoinOk(join) => {
                self.install(join);
                None
            }
            ServerMessage::StatePatch(patch) => {
                self.shared
                    .settle_patch_watches(|watch| watch.is_met_by(&patch.ops));
                if !self.options.mirror && fast_patch {
                    // Decoded only for a watch: the mirror-less seq stays where it was.
                    return None;
                }
                self.apply_change(patch.seq, |state| {
                    serde_json::from_value::<json_patch::Patch>(patch.ops)
                        .ok()
                        .is_some_and(|patch| json_patch::patch(state, &patch.0).is_ok())
                })
            }
            ServerMessage::StateMerge(merge) => {
                self.shared
                    .settle_patch_watches(|watch| watch.is_met_by_merge(&merge.merge));
                if !self.options.mirror && fast_patch {
                    return None;
                }
                self.apply_change(merge.seq, |state| {
                    json_patch::merge(state, &merge.merge);
                    true
                })
            }
            ServerMessage::StateSnapshot(snapshot) => {
                if let Some(keys) = snapshot.keys {
                    self.keys = keys;
                }
                let resynced = {
                    let mut mirror = self.shared.mirror();
                    let resynced = mirror.awaiting_snapshot;
                    mirror.state = snapshot.state;
                    mirror.seq = snapshot.seq;
                    mirror.awaiting_snapshot = false;
                    resynced
                };
                self.shared.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                self.shared.bump();
                if resynced {
                    self.emit(LandEvent::Resynced { seq: snapshot.seq });
                }
                None
            }
            ServerMessage::ActionResult(result) => {
                let waiter = locked(&self.shared.pending).remove(&result.request_id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(result);
                }
                None
            }
            ServerMessage::Event(event) => {
                self.emit(LandEvent::Event(event));
                None
            }
            ServerMessage::Error(error) => {
                self.emit(LandEvent::Error(error));
                None
            }
            ServerMessage::LandClosed(closed) => {
                self.shared.mirror().closed = Some(closed.clone());
                self.shared.bump();
                self.emit(LandEvent::Closed(closed));
                None
            }
            ServerMessage::Pong(_) => None,
        }
    }

    /// Handles one binary state frame; returns `sync.request` when it does not decode
    /// or apply.
    fn on_binary(&mut self, frame: &[u8]) -> Option<String> {
        self.shared
            .counters
            .bytes_received
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        if !self.options.mirror && !self.shared.watching_patches() {
            // As for text patches, skip the members; the definitions still count, for
            // the frames decoded later.
            return match binary_state::decode_definitions(frame, &mut self.keys) {
                Ok(_) => None,
                Err(err) => self.undecodable_frame(&err),
            };
        }
        // Float steps are relative to the state before the frame; a client without a
        // mirror reads them as null (it only watches other members).
        let decoded = if self.options.mirror {
            let mirror = self.shared.mirror();
            binary_state::decode_state_merge(frame, &mut self.keys, Some(&mirror.state))
        } else {
            binary_state::decode_state_merge(frame, &mut self.keys, None)
        };
        let (seq, merge) = match decoded {
            Ok(decoded) => decoded,
            Err(err) => return self.undecodable_frame(&err),
        };
        self.shared
            .settle_patch_watches(|watch| watch.is_met_by_merge(&merge));
        if !self.options.mirror {
            return None;
        }
        self.apply_change(seq, |state| {
            json_patch::merge(state, &merge);
            true
        })
    }

    /// A frame that does not decode is a gap: only a snapshot repairs it.
    fn undecodable_frame(&self, err: &binary_state::DecodeError) -> Option<String> {
        tracing::warn!(url = %self.url, error = %err, "undecodable binary state frame; requesting a snapshot");
        let mut mirror = self.shared.mirror();
        if mirror.awaiting_snapshot {
            return None;
        }
        mirror.awaiting_snapshot = true;
        self.shared.counters.gaps.fetch_add(1, Ordering::Relaxed);
        serde_json::to_string(&ClientMessage::SyncRequest).ok()
    }

    fn install(&mut self, mut join: JoinOk) {
        self.keys = join.keys.take().unwrap_or_default();
        {
            let mut mirror = self.shared.mirror();
            mirror.state = join.state;
            mirror.seq = join.seq;
            mirror.awaiting_snapshot = false;
            mirror.land_id = join.land_id;
            mirror.player_id = join.player_id;
            mirror.connected = true;
        }
        self.shared.bump();
    }

    /// Applies the change to `seq` with `apply` (false: it did not apply).
    fn apply_change(&self, seq: u64, apply: impl FnOnce(&mut Value) -> bool) -> Option<String> {
        let mut mirror = self.shared.mirror();
        if mirror.awaiting_snapshot || seq <= mirror.seq {
            // Before the snapshot arrives patches are meaningless; older ones are stale.
            return None;
        }
        let counters = &self.shared.counters;
        let in_order = seq == mirror.seq + 1;
        let applied = in_order && (!self.options.mirror || apply(&mut mirror.state));
        if applied {
            mirror.seq = seq;
            drop(mirror);
            counters.patches_applied.fetch_add(1, Ordering::Relaxed);
            self.shared.bump();
            return None;
        }
        mirror.awaiting_snapshot = true;
        counters.gaps.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(url = %self.url, seq, in_order, "state out of sync; requesting a snapshot");
        serde_json::to_string(&ClientMessage::SyncRequest).ok()
    }

    /// Tries to get the seat back within the grace. `Ok(None)`: the caller left meanwhile.
    async fn reconnect(&mut self, policy: ReconnectPolicy) -> Result<Option<Socket>, LandError> {
        let deadline = Instant::now() + policy.grace;
        let mut backoff = policy.initial_backoff;
        let mut last_error = LandError::Disconnected;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(last_error);
            }
            match open_within(
                &self.url,
                &self.options,
                self.options.join_timeout.min(remaining),
            )
            .await
            {
                Ok((socket, join)) => {
                    let seq = join.seq;
                    self.install(join);
                    self.shared
                        .counters
                        .reconnects
                        .fetch_add(1, Ordering::Relaxed);
                    self.emit(LandEvent::Reconnected { seq });
                    return Ok(Some(socket));
                }
                // The server answered: this seat is not coming back (closed, expired token…).
                Err(err @ LandError::Rejected { .. }) => return Err(err),
                Err(err) => last_error = err,
            }
            let pause = tokio::time::sleep_until(Instant::now() + backoff.min(remaining));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    command = self.outgoing.recv() => match command {
                        Some(Outgoing::Text(text)) => self.held.push_back(text),
                        Some(Outgoing::Leave) | None => return Ok(None),
                    },
                }
            }
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }
}

/// Sends close 1000 ("I left") and waits briefly for the server's close.
async fn leave(socket: &mut Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "left".into(),
    };
    if socket.close(Some(frame)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}
