//! A minimal protocol client for tests: mirrors state by applying patches, sends
//! actions and awaits their results. Shared with hero-defense's tests via `#[path]`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use matchplane_contracts::binary_state;
use matchplane_contracts::game::{
    ActionRequest, ActionResult, ClientMessage, EventBody, LandClosed, Ping, ServerMessage,
    StateMerge,
};
use matchplane_runtime::{
    ConnectionLimits, DevAuthenticator, GameServer, GameServerConfig, LandRegistry,
};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestServer {
    pub addr: SocketAddr,
    pub server: GameServer,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start(registry: LandRegistry) -> Self {
        Self::start_with(registry, test_limits()).await
    }

    pub async fn start_with(registry: LandRegistry, limits: ConnectionLimits) -> Self {
        Self::start_with_auth(registry, limits, Arc::new(DevAuthenticator)).await
    }

    pub async fn start_with_auth(
        registry: LandRegistry,
        limits: ConnectionLimits,
        auth: Arc<dyn matchplane_runtime::Authenticator>,
    ) -> Self {
        let config = GameServerConfig {
            server_id: "test-server".into(),
            limits,
            shutdown_timeout: Duration::from_secs(5),
            ..GameServerConfig::default()
        };
        Self::start_with_config(registry, auth, config).await
    }

    pub async fn start_with_config(
        registry: LandRegistry,
        auth: Arc<dyn matchplane_runtime::Authenticator>,
        config: GameServerConfig,
    ) -> Self {
        let server = GameServer::new(registry, auth, config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(server.clone().serve(listener, async move {
            let _ = stop.await;
        }));
        Self {
            addr,
            server,
            shutdown: Some(shutdown),
            task,
        }
    }

    pub fn url(&self, land_type: &str, query: &str) -> String {
        format!("ws://{}/game/{land_type}?{query}", self.addr)
    }

    pub async fn connect(&self, land_type: &str, land_id: &str, player: &str) -> Client {
        Client::connect(&self.url(land_type, &format!("landId={land_id}&playerId={player}"))).await
    }

    /// Like [`Self::connect`], asking for state changes as `sync` (`patch`, `merge`,
    /// `binary`).
    pub async fn connect_sync(
        &self,
        land_type: &str,
        land_id: &str,
        player: &str,
        sync: &str,
    ) -> Client {
        let query = format!("landId={land_id}&playerId={player}&sync={sync}");
        Client::connect(&self.url(land_type, &query)).await
    }

    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.await.unwrap()
    }

    /// Plain HTTP GET of a JSON endpoint.
    pub async fn get_json(&self, path: &str) -> Value {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str(body).unwrap()
    }
}

/// Generous limits so tests only trip the ones they target.
pub fn test_limits() -> ConnectionLimits {
    ConnectionLimits {
        idle_timeout: None,
        keepalive_interval: None,
        ..ConnectionLimits::default()
    }
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
    pub errors: Vec<String>,
    pub land_closed: Option<LandClosed>,
}

pub struct Client {
    pub socket: Socket,
    pub land_id: String,
    pub player_id: String,
    /// This player's state, rebuilt from `join.ok`, patches and snapshots.
    pub state: Value,
    pub seq: u64,
    pub events: Vec<EventBody>,
    pub errors: Vec<String>,
    pub patches: usize,
    /// The land's key table, with `?sync=binary`.
    pub keys: Vec<String>,
    next_request: u64,
}

impl Client {
    pub async fn open(url: &str) -> Socket {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        socket
    }

    pub async fn connect(url: &str) -> Client {
        let mut socket = Self::open(url).await;
        let message = read_message(&mut socket)
            .await
            .expect("connection closed before join.ok");
        let ServerMessage::JoinOk(join) = message else {
            panic!("expected join.ok, got {message:?}");
        };
        Client {
            socket,
            land_id: join.land_id,
            player_id: join.player_id,
            state: join.state,
            seq: join.seq,
            events: Vec::new(),
            errors: Vec::new(),
            patches: 0,
            keys: join.keys.unwrap_or_default(),
            next_request: 1,
        }
    }

    /// Sends a message; a failure (the server already closed) shows up on the next read.
    pub async fn send(&mut self, message: &ClientMessage) {
        let text = serde_json::to_string(message).unwrap();
        let _ = self.socket.send(Message::text(text)).await;
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_owned()))
            .await
            .unwrap();
    }

    /// Reads one message and folds it into the mirror; `None` once the socket closed.
    pub async fn next(&mut self) -> Option<ServerMessage> {
        let message = self.read().await?;
        self.apply(&message);
        Some(message)
    }

    /// Reads one message, a binary state frame decoded as the `state.merge` it stands
    /// for (against the mirror, which its float steps are relative to).
    async fn read(&mut self) -> Option<ServerMessage> {
        loop {
            match self.socket.next().await? {
                Ok(Message::Text(text)) => {
                    return Some(ServerMessage::decode(text.as_str()).unwrap());
                }
                Ok(Message::Binary(frame)) => {
                    let (seq, merge) =
                        binary_state::decode_state_merge(&frame, &mut self.keys, Some(&self.state))
                            .unwrap_or_else(|err| {
                                panic!("{}: binary frame does not decode: {err}", self.player_id)
                            });
                    return Some(ServerMessage::StateMerge(StateMerge { seq, merge }));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub fn apply(&mut self, message: &ServerMessage) {
        match message {
            ServerMessage::JoinOk(join) => {
                self.state = join.state.clone();
                self.seq = join.seq;
                self.keys = join.keys.clone().unwrap_or_default();
            }
            ServerMessage::StateSnapshot(snapshot) => {
                self.state = snapshot.state.clone();
                self.seq = snapshot.seq;
                if let Some(keys) = &snapshot.keys {
                    self.keys.clone_from(keys);
                }
            }
            ServerMessage::StateMerge(merge) => {
                assert_eq!(merge.seq, self.seq + 1, "{}: merge seq gap", self.player_id);
                json_patch::merge(&mut self.state, &merge.merge);
                self.seq = merge.seq;
                self.patches += 1;
            }
            ServerMessage::StatePatch(patch) => {
                assert_eq!(patch.seq, self.seq + 1, "{}: patch seq gap", self.player_id);
                let ops: json_patch::Patch = serde_json::from_value(patch.ops.clone()).unwrap();
                json_patch::patch(&mut self.state, &ops).unwrap_or_else(|err| {
                    panic!(
                        "{}: patch {} does not apply to {}: {err}",
                        self.player_id, patch.ops, self.state
                    )
                });
                self.seq = patch.seq;
                self.patches += 1;
            }
            ServerMessage::Event(event) => self.events.push(event.clone()),
            ServerMessage::Error(error) => self.errors.push(error.code.clone()),
            _ => {}
        }
    }

    pub async fn action(&mut self, name: &str, payload: Value) -> ActionResult {
        let request_id = format!("r{}", self.next_request);
        self.next_request += 1;
        self.send(&ClientMessage::Action(ActionRequest {
            request_id: request_id.clone(),
            name: name.to_owned(),
            payload,
        }))
        .await;
        loop {
            match self.next().await {
                Some(ServerMessage::ActionResult(result)) if result.request_id == request_id => {
                    return result;
                }
                Some(_) => {}
                None => panic!("{}: closed while waiting for {request_id}", self.player_id),
            }
        }
    }

    pub async fn event(&mut self, name: &str, payload: Value) {
        self.send(&ClientMessage::Event(EventBody {
            name: name.to_owned(),
            payload,
        }))
        .await;
    }

    /// Round-trips a ping: everything the server queued before the pong has been applied.
    pub async fn barrier(&mut self) {
        let token = Value::from(format!("barrier-{}", self.next_request));
        self.next_request += 1;
        self.send(&ClientMessage::Ping(Ping { t: token.clone() }))
            .await;
        loop {
            match self.next().await {
                Some(ServerMessage::Pong(pong)) if pong.t == token => return,
                Some(_) => {}
                None => panic!("{}: closed during barrier", self.player_id),
            }
        }
    }

    /// Asks for a snapshot and returns it, checking it against the mirror.
    pub async fn snapshot(&mut self) -> Value {
        // Apply what is already queued first: with `?sync=binary` that may hold a
        // snapshot the server sent on its own (for a change a merge patch cannot say),
        // which is not the answer to this request.
        self.barrier().await;
        self.send(&ClientMessage::SyncRequest).await;
        loop {
            match self.read().await {
                Some(ServerMessage::StateSnapshot(snapshot)) => {
                    if let Some(keys) = &snapshot.keys {
                        self.keys.clone_from(keys);
                    }
                    assert_eq!(
                        snapshot.seq,
                        self.seq + 1,
                        "{}: snapshot seq",
                        self.player_id
                    );
                    self.seq = snapshot.seq;
                    return snapshot.state;
                }
                Some(other) => self.apply(&other),
                None => panic!("{}: closed while waiting for a snapshot", self.player_id),
            }
        }
    }

    /// Reads until the server closes; reports the close code and what came before it.
    pub async fn closed(&mut self) -> Closed {
        closed(&mut self.socket).await
    }

    pub async fn wait_event(&mut self, name: &str) -> EventBody {
        if let Some(index) = self.events.iter().position(|event| event.name == name) {
            return self.events.remove(index);
        }
        loop {
            match self.next().await {
                Some(ServerMessage::Event(event)) if event.name == name => {
                    self.events.pop();
                    return event;
                }
                Some(_) => {}
                None => panic!("{}: closed while waiting for event {name}", self.player_id),
            }
        }
    }
}

pub async fn read_message(socket: &mut Socket) -> Option<ServerMessage> {
    loop {
        match socket.next().await? {
            Ok(Message::Text(text)) => return Some(ServerMessage::decode(text.as_str()).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

pub async fn closed(socket: &mut Socket) -> Closed {
    let mut errors = Vec::new();
    let mut land_closed = None;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => match ServerMessage::decode(text.as_str()).unwrap() {
                ServerMessage::Error(error) => errors.push(error.code),
                ServerMessage::LandClosed(closed) => land_closed = Some(closed),
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => {
                return Closed {
                    code: frame.as_ref().map(|frame| u16::from(frame.code)),
                    reason: frame
                        .map(|frame| frame.reason.to_string())
                        .unwrap_or_default(),
                    errors,
                    land_closed,
                };
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                return Closed {
                    code: None,
                    reason: String::new(),
                    errors,
                    land_closed,
                };
            }
        }
    }
}

/// Opens a game socket whose client sends `prelude` small text frames right behind its
/// upgrade request, before reading any answer: a server that refuses the connection at
/// once still has them unread when it closes, the case where a careless close turns
/// into a reset that destroys the close frame.
pub async fn open_already_sending(
    addr: SocketAddr,
    path_and_query: &str,
    prelude: usize,
) -> Socket {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut bytes = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    let payload = b"let me in";
    for _ in 0..prelude {
        // FIN + text, masked (as a client must) with an all-zero key: payload as is.
        bytes.extend_from_slice(&[
            0x81,
            0x80 | u8::try_from(payload.len()).unwrap(),
            0,
            0,
            0,
            0,
        ]);
        bytes.extend_from_slice(payload);
    }
    stream.write_all(&bytes).await.unwrap();
    // Byte by byte up to the blank line, so the frames behind it stay for the socket.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    WebSocketStream::from_raw_socket(
        MaybeTlsStream::Plain(stream),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await
}

/// What a flooding client saw at the end: the close code (`None`: no close frame,
/// e.g. a reset), the `error` codes and `land.closed` before it, and how many frames
/// it managed to send.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<u16>,
    pub errors: Vec<String>,
    pub land_closed: Option<LandClosed>,
    pub sent: usize,
}

/// Sends `frame()` as fast as the connection takes it, without ever pausing to
/// read, while another task reads until the server closes.
pub async fn flood(socket: Socket, frame: impl Fn() -> Message + Send + 'static) -> Outcome {
    let (mut sink, mut stream) = socket.split();
    let sender = tokio::spawn(async move {
        let mut sent = 0usize;
        while sink.send(frame()).await.is_ok() {
            sent += 1;
            if sent.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
        }
        sent
    });
    let mut errors = Vec::new();
    let mut land_closed = None;
    let code = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => match ServerMessage::decode(text.as_str()) {
                Ok(ServerMessage::Error(error)) => errors.push(error.code),
                Ok(ServerMessage::LandClosed(closed)) => land_closed = Some(closed),
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => break frame.map(|frame| u16::from(frame.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    // The sender stops once the close handshake (or the socket) ends.
    let sent = tokio::time::timeout(Duration::from_secs(10), sender)
        .await
        .expect("the sender must stop once the server closed")
        .unwrap();
    Outcome {
        code,
        errors,
        land_closed,
        sent,
    }
}

/// Closes with 1000: a deliberate leave that releases the seat.
pub async fn leave(mut client: Client) {
    client
        .socket
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    while client.socket.next().await.is_some() {}
}
