//! Shared harness for tests that run the real `matchplane` binary: spawn a
//! role, learn its bound address from its JSON log, talk HTTP and WebSocket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

pub mod nginx;

pub const BIN: &str = env!("CARGO_BIN_EXE_matchplane");

pub struct Proc {
    pub child: Child,
    /// `127.0.0.1:PORT` as logged by the process.
    pub addr: String,
    /// Every log line seen so far (JSON), for assertions on what was logged.
    pub logs: tokio::sync::watch::Receiver<Vec<Value>>,
    /// Every line written to stdout or stderr, JSON or not, for assertions on what
    /// must never be printed at all.
    pub output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("process exits in time")
            .unwrap()
    }

    /// Waits until some log line has this `message`.
    pub async fn wait_log(&mut self, message: &str, within: Duration) -> Value {
        let mut logs = self.logs.clone();
        let found = tokio::time::timeout(within, async {
            loop {
                if let Some(line) = logs
                    .borrow_and_update()
                    .iter()
                    .find(|l| l["message"] == message)
                {
                    return line.clone();
                }
                if logs.changed().await.is_err() {
                    panic!("process ended before logging {message:?}");
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no log line {message:?} within {within:?}"))
    }
}

/// Starts `matchplane <args>` and waits for the log line `listening_message`
/// carrying the bound `addr`.
pub async fn spawn(args: &[String], listening_message: &str) -> Proc {
    spawn_logging(args, listening_message, "info").await
}

/// Like [`spawn`] with a `RUST_LOG` filter of the caller's choice.
pub async fn spawn_logging(args: &[String], listening_message: &str, filter: &str) -> Proc {
    spawn_with_env(args, listening_message, filter, &[]).await
}

/// Like [`spawn_logging`] with extra environment variables for the process.
pub async fn spawn_with_env(
    args: &[String],
    listening_message: &str,
    filter: &str,
    env: &[(&str, &str)],
) -> Proc {
    spawn_configured(args, listening_message, filter, |command| {
        command.envs(env.iter().copied());
    })
    .await
}

/// Like [`spawn_logging`], with the command adjusted by `configure` before it starts
/// (working directory, environment).
pub async fn spawn_configured(
    args: &[String],
    listening_message: &str,
    filter: &str,
    configure: impl FnOnce(&mut Command),
) -> Proc {
    let mut command = Command::new(BIN);
    command
        .arg("--log-format")
        .arg("json")
        .args(args)
        .env("RUST_LOG", filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    configure(&mut command);
    let mut child = command.spawn().expect("spawn matchplane");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (logs_tx, logs) = tokio::sync::watch::channel(Vec::new());
    let stderr_output = std::sync::Arc::clone(&output);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        // Keep draining so the child never blocks on a full pipe.
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                logs_tx.send_modify(|logs| logs.push(event));
            }
            stderr_output.lock().unwrap().push(line);
        }
    });
    let stdout_output = std::sync::Arc::clone(&output);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            stdout_output.lock().unwrap().push(line);
        }
    });
    let mut proc = Proc {
        child,
        addr: String::new(),
        logs,
        output,
    };
    let line = proc
        .wait_log(listening_message, Duration::from_secs(30))
        .await;
    let addr = line["addr"].as_str().expect("addr field").to_owned();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "bound address {addr}"
    );
    proc.addr = addr;
    proc
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The admin credential of processes started by [`control_plane`].
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The registration credential shared by [`control_plane`] and [`game_server`].
pub const REGISTRATION_TOKEN: &str = "test-registration-token";

/// Passed through the environment rather than flags so that a test can still
/// override them with flags, and so that tests spawning through [`spawn`] see
/// the generated-credential behaviour.
pub const KNOWN_CREDENTIALS: [(&str, &str); 2] = [
    ("MATCHPLANE_ADMIN_TOKEN", ADMIN_TOKEN),
    ("MATCHPLANE_REGISTRATION_TOKEN", REGISTRATION_TOKEN),
];

pub async fn control_plane(extra: &[&str]) -> Proc {
    let mut all = args(&["control-plane", "--port", "0", "--ephemeral"]);
    all.extend(args(extra));
    spawn_with_env(&all, "control plane listening", "info", &KNOWN_CREDENTIALS).await
}

/// Like [`control_plane`], on a port chosen before it starts.
pub async fn control_plane_on(port: u16) -> Proc {
    let all = args(&["control-plane", "--port", &port.to_string(), "--ephemeral"]);
    spawn_with_env(&all, "control plane listening", "info", &KNOWN_CREDENTIALS).await
}

pub async fn game_server(control_plane_url: &str, extra: &[&str]) -> Proc {
    let mut all = vec!["--heartbeat-interval", "1s"];
    all.extend_from_slice(extra);
    game_server_at_default_heartbeat(control_plane_url, &all).await
}

/// Like [`game_server`] without its faster heartbeat: the server keeps the
/// interval the control plane asks for, as in production.
pub async fn game_server_at_default_heartbeat(control_plane_url: &str, extra: &[&str]) -> Proc {
    let mut all = args(&[
        "game-server",
        "--port",
        "0",
        "--control-plane-url",
        control_plane_url,
    ]);
    all.extend(args(extra));
    spawn_with_env(&all, "game server listening", "info", &KNOWN_CREDENTIALS).await
}

/// A game server that trusts `?playerId=` (no control plane): for tests of the
/// socket protocol itself.
pub async fn dev_game_server(extra: &[&str]) -> Proc {
    let mut all = args(&["game-server", "--port", "0", "--auth", "none"]);
    all.extend(args(extra));
    spawn(&all, "game server listening").await
}

/// A free loopback port (bound then released), for processes that must
/// know their port before they start.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An HTTP answer with the headers kept (for `Retry-After` and the like).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// `error.code` of either envelope (the seed's provisioning one included).
    pub fn error_code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }
}

/// One request with an optional `Authorization: Bearer` credential and JSON body.
pub async fn call(
    method: reqwest::Method,
    url: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn admin_get(url: &str) -> (u16, Value) {
    let reply = call(reqwest::Method::GET, url, Some(ADMIN_TOKEN), None).await;
    (reply.status, reply.body)
}

pub async fn admin_post(url: &str, body: &Value) -> (u16, Value) {
    let reply = call(reqwest::Method::POST, url, Some(ADMIN_TOKEN), Some(body)).await;
    (reply.status, reply.body)
}

/// The process is still running and its `/health` answers 200.
pub async fn assert_alive(proc: &mut Proc) {
    assert!(
        proc.child.try_wait().expect("try_wait").is_none(),
        "process {} exited",
        proc.addr
    );
    let (status, body) = get(&format!("{}/health", proc.http())).await;
    assert_eq!(status, 200, "health of {}: {body}", proc.addr);
}

/// Resident memory of a running process in KiB (`VmRSS` of /proc).
pub fn rss_kib(proc: &Proc) -> u64 {
    let pid = proc.child.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

pub async fn post(url: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn enqueue(base: &str, body: Value) -> String {
    let (status, reply) = post(&format!("{base}/v1/matchmaking/enqueue"), &body).await;
    assert_eq!(status, 201, "{reply}");
    reply["ticketId"].as_str().unwrap().to_owned()
}

/// Polls `status` until the ticket is assigned.
pub async fn poll_assignment(base: &str, ticket: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (_, status) = get(&format!("{base}/v1/matchmaking/status/{ticket}")).await;
        if status["status"] == "assigned" {
            return status["assignment"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ticket {ticket} not assigned: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `check` holds for the control plane's server list.
pub async fn wait_servers(
    base: &str,
    within: Duration,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (_, body) = admin_get(&format!("{base}/v1/admin/servers")).await;
        let servers = body["servers"].as_array().cloned().unwrap_or_default();
        if check(&servers) {
            return servers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server list never matched: {servers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn ws(url: &str) -> Socket {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connect")
        .0
}

/// What a socket said before it closed, or its next JSON message.
#[derive(Debug)]
pub enum Received {
    Json(Value),
    Closed(Option<u16>),
}

pub async fn recv(socket: &mut Socket) -> Received {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message in time");
        match next {
            Some(Ok(Message::Text(text))) => {
                return Received::Json(serde_json::from_str(&text).unwrap());
            }
            Some(Ok(Message::Close(frame))) => {
                return Received::Closed(frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Received::Closed(None),
        }
    }
}

pub async fn next_json(socket: &mut Socket) -> Value {
    match recv(socket).await {
        Received::Json(value) => value,
        Received::Closed(code) => panic!("socket closed ({code:?}) while a message was expected"),
    }
}

/// Skips messages until one of `kind` arrives.
pub async fn next_of(socket: &mut Socket, kind: &str) -> Value {
    loop {
        let message = next_json(socket).await;
        if message["type"] == kind {
            return message;
        }
    }
}

/// Expects an `error` message and then a close with `code`.
pub async fn expect_refused(socket: &mut Socket, code: u16) -> Value {
    let error = next_json(socket).await;
    assert_eq!(error["type"], "error", "{error}");
    match recv(socket).await {
        Received::Closed(got) => assert_eq!(got, Some(code), "close code after {error}"),
        Received::Json(other) => panic!("unexpected message after refusal: {other}"),
    }
    error
}

pub async fn send(socket: &mut Socket, value: Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// `connectUrl` + `&token=` for one player of an assignment.
pub fn join_url(assignment: &Value, player: &str) -> String {
    let token = assignment["memberTokens"]
        .get(player)
        .and_then(Value::as_str)
        .unwrap_or_else(|| assignment["matchToken"].as_str().unwrap());
    format!(
        "{}&token={}",
        assignment["connectUrl"].as_str().unwrap(),
        token
    )
}

/// Verifies a match token against a control plane's JWKS (default issuer and
/// audience) and returns its claims.
pub fn verify_match_token(
    token: &str,
    jwks: &jsonwebtoken::jwk::JwkSet,
) -> matchplane_contracts::token::MatchClaims {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.as_deref().expect("tokens name their key");
    let key = jwks.find(kid).expect("the token's key is published");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&["matchplane-game"]);
    validation.set_issuer(&["matchplane"]);
    jsonwebtoken::decode(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(key).unwrap(),
        &validation,
    )
    .unwrap()
    .claims
}

/// A control plane on the Redis at `redis_url` with its own scratch data dir.
/// Credentials come through the environment, the same for every replica
/// (generated ones would be adopted from Redis, see docs/scale-out.md).
pub async fn redis_replica(redis_url: &str, extra: &[&str]) -> (Proc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut all = args(&[
        "control-plane",
        "--port",
        "0",
        "--redis-url",
        redis_url,
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--rate-limit",
        "off",
    ]);
    all.extend(args(extra));
    let proc = spawn_with_env(&all, "control plane listening", "info", &KNOWN_CREDENTIALS).await;
    (proc, dir)
}
