//! Black-box fuzzing of both planes as real processes: well over 100,000
//! generated and mutated HTTP requests and WebSocket frames (wrong types, huge
//! numbers, deep nesting, invalid UTF-8, binary, wrong methods, odd paths and
//! headers, broken framing). Every answer must be a documented status or close
//! code, no process may die, and memory must stay bounded.
//!
//! The RNG seed is printed; `MATCHPLANE_FUZZ_SEED=<n>` replays a run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

const DEFAULT_SEED: u64 = 0x00C0_FFEE_0010;
/// Requests plus frames of the main phase (rate limits off).
const MAIN_PHASE_OPERATIONS: u64 = 110_000;
/// Requests plus frames of the phase with rate limits on.
const LIMITED_PHASE_OPERATIONS: u64 = 6_000;
/// Measured growth over a run: about 20–27 MiB for the control plane, under 10 MiB for
/// the game servers; 64 MiB leaves room for allocator noise and still catches a leak
/// like the +215 MiB the issue reported.
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;
/// Anything slower than this to answer is a hang, not a slow machine.
const HANG: Duration = Duration::from_secs(60);

/// What the REST API may answer.
const HTTP_STATUSES: [u16; 12] = [200, 201, 400, 401, 403, 404, 405, 409, 413, 415, 429, 503];
/// Answers of the HTTP parser itself to bytes that are not HTTP at all
/// (no route ever saw them, so there is no JSON envelope to expect).
const PROTOCOL_STATUSES: [u16; 5] = [400, 408, 414, 431, 505];
const GAME_CLOSE_CODES: [u16; 11] = [
    1000, 1001, 1008, 1009, 4400, 4401, 4403, 4404, 4409, 4410, 4429,
];
const REALTIME_CLOSE_CODES: [u16; 6] = [1000, 1001, 1008, 1009, 4401, 4429];

fn seed() -> u64 {
    std::env::var("MATCHPLANE_FUZZ_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// Counts, findings and the progress line, shared by every worker of a phase.
struct Tally {
    phase: &'static str,
    budget: u64,
    rate_limited_phase: bool,
    operations: AtomicU64,
    http_requests: AtomicU64,
    frames: AtomicU64,
    sockets: AtomicU64,
    statuses: Counts,
    close_codes: Counts,
    violations: std::sync::Mutex<Vec<String>>,
    violation_count: AtomicU64,
    /// Violations grouped by the start of their description.
    violation_kinds: Counts,
}

/// How often each answer was seen.
#[derive(Default)]
struct Counts(std::sync::Mutex<BTreeMap<String, u64>>);

impl Counts {
    fn add(&self, key: impl Into<String>) {
        *self.0.lock().unwrap().entry(key.into()).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().clone()
    }
}

impl Tally {
    fn new(phase: &'static str, budget: u64, rate_limited_phase: bool) -> Arc<Self> {
        Arc::new(Self {
            phase,
            budget,
            rate_limited_phase,
            operations: AtomicU64::new(0),
            http_requests: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            sockets: AtomicU64::new(0),
            statuses: Default::default(),
            close_codes: Default::default(),
            violations: std::sync::Mutex::new(Vec::new()),
            violation_count: AtomicU64::new(0),
            violation_kinds: Counts::default(),
        })
    }

    fn done(&self) -> bool {
        self.operations.load(Ordering::Relaxed) >= self.budget
    }

    fn count(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
        let before = self.operations.fetch_add(n, Ordering::Relaxed);
        let step = 10_000.min(self.budget / 4).max(1);
        if (before + n) / step > before / step {
            println!(
                "[{}] {} operations: {} HTTP requests, {} frames over {} sockets, {} violations",
                self.phase,
                before + n,
                self.http_requests.load(Ordering::Relaxed),
                self.frames.load(Ordering::Relaxed),
                self.sockets.load(Ordering::Relaxed),
                self.violation_count.load(Ordering::Relaxed),
            );
        }
    }

    fn violation(&self, what: String) {
        self.violation_count.fetch_add(1, Ordering::Relaxed);
        self.violation_kinds
            .add(what.chars().take(90).collect::<String>());
        let mut kept = self.violations.lock().unwrap();
        if kept.len() < 40 {
            kept.push(what);
        }
    }
}

// ---------------------------------------------------------------- generation

fn pick<'a, T: ?Sized>(rng: &mut StdRng, items: &[&'a T]) -> &'a T {
    items.choose(rng).copied().unwrap()
}

/// JSON number texts at and beyond every edge a parser or an `as` cast has.
const WEIRD_NUMBERS: [&str; 16] = [
    "-9223372036854775808",
    "9223372036854775807",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "1e400",
    "-1e400",
    "1.7976931348623157e308",
    "4.9e-324",
    "-0",
    "0.1e-999",
    "4294967296",
    "-2147483649",
    "1E+2",
    "123456789012345678901234567890e-10",
];

fn weird_string(rng: &mut StdRng) -> String {
    match rng.gen_range(0..8) {
        0 => String::new(),
        1 => "x".repeat(rng.gen_range(100..5000)),
        2 => "\u{0}\u{1f}\u{7f}\u{202e}\u{feff}".to_owned(),
        3 => "😀🏳️‍🌈𝕏".repeat(rng.gen_range(1..50)),
        4 => "../../etc/passwd".to_owned(),
        5 => "counter:2".to_owned(),
        6 => format!("p{}", rng.gen_range(0..300)),
        _ => (0..rng.gen_range(1..40))
            .map(|_| char::from_u32(rng.gen_range(0x20..0x2FFF)).unwrap_or('?'))
            .collect(),
    }
}

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..if depth > 3 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.r#gen::<bool>()),
        2 => json!(rng.r#gen::<i64>()),
        3 => json!(rng.r#gen::<f64>() * 10f64.powi(rng.gen_range(-300..300))),
        4 => json!(weird_string(rng)),
        5 => json!(rng.gen_range(-2..100)),
        6 => Value::Array(
            (0..rng.gen_range(0..8))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        7 => Value::Object(
            (0..rng.gen_range(0..8))
                .map(|_| (weird_string(rng), random_value(rng, depth + 1)))
                .collect(),
        ),
        _ => Value::Array(
            (0..rng.gen_range(0..3000))
                .map(|i| json!(format!("item-{i}")))
                .collect(),
        ),
    }
}

/// Replaces, deletes or adds one node somewhere inside `value`.
fn mutate_value(rng: &mut StdRng, value: &mut Value) {
    match value {
        Value::Object(map) if !map.is_empty() && rng.gen_bool(0.7) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = keys.choose(rng).unwrap().clone();
            match rng.gen_range(0..4) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    map.insert(weird_string(rng), random_value(rng, 1));
                }
                _ => mutate_value(rng, map.get_mut(&key).unwrap()),
            }
        }
        Value::Array(items) if !items.is_empty() && rng.gen_bool(0.7) => {
            let index = rng.gen_range(0..items.len());
            mutate_value(rng, &mut items[index]);
        }
        other => *other = random_value(rng, 1),
    }
}

fn enqueue_body(rng: &mut StdRng) -> Value {
    let members: Vec<String> = (0..rng.gen_range(1..4))
        .map(|_| format!("p{}", rng.gen_range(0..5000)))
        .collect();
    json!({
        "queueKey": pick(rng, &["counter", "counter:2", "counter:4", "hero-defense:1v1", "hero-defense:2v2"]),
        "groupId": format!("g{}", rng.gen_range(0..500)),
        "members": members,
        "region": "eu",
        "attributes": {"skill": rng.gen_range(0.0..3000.0)},
        "tags": ["ranked"],
        "stringArgs": {"mode": "duel"},
        "latencies": {"eu": rng.gen_range(1..300)},
        "constraints": {"skill": {"min": 0, "max": 100}},
    })
}

fn request_template(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..6) {
        0..=2 => enqueue_body(rng),
        3 => json!({"ticketId": format!("t-{}", rng.gen_range(0..100))}),
        4 => json!({
            "serverId": format!("fuzz-{}", rng.gen_range(0..20)), "host": "127.0.0.1", "port": 9,
            "landType": "counter", "capacity": {"maxLands": 10, "maxPlayers": 10},
            "load": {"lands": 0, "players": 0}, "landIds": [],
        }),
        _ => json!({
            "queueKey": "counter", "landId": "counter:x", "serverId": "fuzz-1",
            "openSlots": [1, 2], "roster": [["a"]], "teamSkills": [[1.0]], "stringArgs": {}
        }),
    }
}

/// A JSON-ish body: a template, mutated as JSON and then perhaps as bytes.
fn body_bytes(rng: &mut StdRng, template: Value) -> Vec<u8> {
    let mut value = template;
    for _ in 0..rng.gen_range(0..4) {
        mutate_value(rng, &mut value);
    }
    let mut bytes = value.to_string().into_bytes();
    match rng.gen_range(0..12) {
        0 => {
            // Deep nesting, far past any recursion limit.
            let depth = rng.gen_range(100..20_000);
            let mut nested = "[".repeat(depth).into_bytes();
            nested.extend_from_slice(&bytes);
            nested.extend(std::iter::repeat_n(b']', depth));
            bytes = nested;
        }
        1 => {
            // Invalid UTF-8 inside a string or anywhere.
            let at = rng.gen_range(0..=bytes.len());
            let junk: &[u8] = pick(
                rng,
                &[
                    &b"\xff\xfe"[..],
                    &b"\xc0\x80"[..],
                    &b"\xed\xa0\x80"[..],
                    &b"\x80"[..],
                ],
            );
            bytes.splice(at..at, junk.iter().copied());
        }
        2 => bytes.truncate(rng.gen_range(0..=bytes.len())),
        3 => {
            for _ in 0..rng.gen_range(1..8) {
                if !bytes.is_empty() {
                    let at = rng.gen_range(0..bytes.len());
                    bytes[at] = rng.r#gen();
                }
            }
        }
        4 => {
            // A weird number where the first number was.
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if let Some(at) = text.find(|c: char| c.is_ascii_digit()) {
                let end = text[at..]
                    .find(|c: char| !c.is_ascii_digit() && c != '.')
                    .map_or(text.len(), |n| at + n);
                let weird = pick(rng, &WEIRD_NUMBERS);
                bytes = format!("{}{weird}{}", &text[..at], &text[end..]).into_bytes();
            }
        }
        5 => bytes = r#"{"a":1,"a":2,"members":["x"],"members":"y"}"#.as_bytes().to_vec(),
        6 => bytes = (0..rng.gen_range(0..2000)).map(|_| rng.r#gen()).collect(),
        7 if rng.gen_bool(0.1) => bytes = vec![b' '; 70 * 1024],
        _ => {}
    }
    bytes
}

const REST_PATHS: [&str; 14] = [
    "/v1/matchmaking/enqueue",
    "/v1/matchmaking/cancel",
    "/v1/matchmaking/status/",
    "/v1/provisioning/servers/register",
    "/v1/provisioning/servers/",
    "/v1/admin/servers",
    "/v1/admin/queue/summary",
    "/v1/admin/keys/rotate",
    "/v1/internal/backfill",
    "/health",
    "/metrics",
    "/.well-known/jwks.json",
    "/realtime",
    "/",
];

fn odd_path(rng: &mut StdRng, paths: &[&str]) -> String {
    let base = pick(rng, paths).to_owned();
    let suffix = match rng.gen_range(0..10) {
        0 => "%ff%fe%00".to_owned(),
        1 => "..%2f..%2fetc".to_owned(),
        2 => "x".repeat(rng.gen_range(1..6000)),
        3 => "?ticketId=%ff&landId=&playerId=a&playerId=b&access_token=x".to_owned(),
        4 => "/extra/segments".to_owned(),
        5 => format!("t-{}", rng.gen_range(0..100)),
        6 => "?&&==&%".to_owned(),
        _ => String::new(),
    };
    if base.ends_with('/') || suffix.starts_with(['?', '/']) {
        format!("{base}{suffix}")
    } else if rng.gen_bool(0.2) {
        format!("{base}/{suffix}")
    } else {
        base
    }
}

/// The request we sent, for judging its answer.
struct Sent {
    method: &'static str,
    path: String,
}

/// A syntactically valid HTTP/1.1 request with fuzzed method, path, headers and body.
fn framed_request(rng: &mut StdRng, paths: &[&str]) -> (Sent, Vec<u8>) {
    if paths.contains(&"/v1/matchmaking/enqueue") && rng.gen_bool(0.1) {
        // Mostly valid enqueues, to reach the store, the engine and PLAYER_ALREADY_QUEUED.
        let body = enqueue_body(rng).to_string();
        let head = format!(
            "POST /v1/matchmaking/enqueue HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let sent = Sent {
            method: "POST",
            path: "/v1/matchmaking/enqueue".to_owned(),
        };
        return (sent, [head.into_bytes(), body.into_bytes()].concat());
    }
    let method = pick(
        rng,
        &[
            "GET", "GET", "POST", "POST", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD",
            "TRACE", "FUZZ",
        ],
    );
    let path = odd_path(rng, paths);
    let body = if matches!(method, "GET" | "HEAD") && rng.gen_bool(0.8) {
        Vec::new()
    } else {
        let template = request_template(rng);
        body_bytes(rng, template)
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: fuzz\r\n");
    if rng.gen_bool(0.85) {
        let content_type = pick(
            rng,
            &[
                "application/json",
                "application/json; charset=utf-8",
                "text/plain",
                "application/x-www-form-urlencoded",
                "application/json, text/html",
                "",
            ],
        );
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    match rng.gen_range(0..10) {
        0 | 1 => head.push_str(&format!("Authorization: Bearer {ADMIN_TOKEN}\r\n")),
        2 => head.push_str(&format!("Authorization: Bearer {REGISTRATION_TOKEN}\r\n")),
        3 => head.push_str("Authorization: Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.\r\n"),
        4 => head.push_str(&format!("Authorization: Bearer {}\r\n", "A".repeat(4000))),
        5 => head.push_str("Authorization: Basic YWRtaW46YWRtaW4=\r\n"),
        _ => {}
    }
    if rng.gen_bool(0.3) {
        let forwarded = pick(
            rng,
            &[
                "203.0.113.9",
                "unknown, 10.0.0.1",
                "::1, 127.0.0.1",
                "999.999.999.999",
                "",
                ",,,",
                "198.51.100.1:443",
            ],
        );
        head.push_str(&format!("X-Forwarded-For: {forwarded}\r\n"));
    }
    for i in 0..rng.gen_range(0..4) {
        head.push_str(&format!(
            "X-Fuzz-{i}: {}\r\n",
            "v".repeat(rng.gen_range(0..300))
        ));
    }
    let chunked = !body.is_empty() && rng.gen_bool(0.1);
    let mut bytes = Vec::new();
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        bytes.extend_from_slice(head.as_bytes());
        for piece in body.chunks(rng.gen_range(1..4096)) {
            bytes.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            bytes.extend_from_slice(piece);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        bytes.extend_from_slice(head.as_bytes());
        bytes.extend_from_slice(&body);
    }
    (Sent { method, path }, bytes)
}

/// Bytes that are not (valid) HTTP at all; one connection each.
fn broken_request(rng: &mut StdRng) -> Vec<u8> {
    match rng.gen_range(0..12) {
        0 => (0..rng.gen_range(1..3000)).map(|_| rng.r#gen()).collect(),
        1 => b"G\xffT /\xfe\xff HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        2 => b"GET /health HTTP/1.1\r\nHost x\r\nNo-Colon\r\n\r\n".to_vec(),
        3 => {
            let mut bytes = b"GET /health HTTP/1.1\r\nX-Big: ".to_vec();
            bytes.extend(std::iter::repeat_n(b'a', rng.gen_range(10_000..200_000)));
            bytes.extend_from_slice(b"\r\n\r\n");
            bytes
        }
        4 => b"POST /v1/matchmaking/enqueue HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 9\r\n\r\nhello".to_vec(),
        5 => b"POST /v1/matchmaking/enqueue HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
        6 => b"POST /v1/matchmaking/enqueue HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n".to_vec(),
        7 => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        8 => b"GET /\r\n".to_vec(),
        9 => b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        10 => b"POST /v1/matchmaking/enqueue HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"queueKey\"".to_vec(),
        _ => format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "%".repeat(rng.gen_range(1..20_000))
        )
        .into_bytes(),
    }
}

// ---------------------------------------------------------------- HTTP client

struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    closes: bool,
}

/// Reads one response (skipping 1xx); `None` at a clean end of stream.
async fn read_answer<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    head_request: bool,
) -> std::io::Result<Option<Answer>> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = BTreeMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        if (100..200).contains(&status) {
            continue;
        }
        let closes = headers
            .get("connection")
            .is_some_and(|value| value.eq_ignore_ascii_case("close"));
        let mut body = Vec::new();
        if head_request || status == 204 || status == 304 {
        } else if headers
            .get("transfer-encoding")
            .is_some_and(|value| value.contains("chunked"))
        {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).await?;
                let size = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = headers.get("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| std::io::Error::other("bad content-length"))?;
            body.resize(length, 0);
            reader.read_exact(&mut body).await?;
        } else {
            reader.read_to_end(&mut body).await?;
        }
        return Ok(Some(Answer {
            status,
            headers,
            body,
            closes,
        }));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plane {
    Control,
    Game,
}

fn judge_http(tally: &Tally, plane: Plane, sent: &Sent, answer: &Answer) {
    tally.statuses.add(answer.status.to_string());
    let allowed = HTTP_STATUSES.contains(&answer.status)
        && (answer.status != 429 || tally.rate_limited_phase);
    if !allowed {
        tally.violation(format!(
            "{} {} answered {}: {}",
            sent.method,
            sent.path.chars().take(120).collect::<String>(),
            answer.status,
            String::from_utf8_lossy(&answer.body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
        return;
    }
    if answer.status == 429 && !answer.headers.contains_key("retry-after") {
        tally.violation(format!("429 without Retry-After on {}", sent.path));
    }
    // The game server has no REST error envelope; only its statuses are judged.
    if plane == Plane::Control && answer.status >= 400 && sent.method != "HEAD" {
        let code = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|body| body["error"]["code"].as_str().map(str::to_owned));
        if code.is_none() {
            tally.violation(format!(
                "{} {} answered {} without the error envelope: {:?}",
                sent.method,
                sent.path.chars().take(120).collect::<String>(),
                answer.status,
                String::from_utf8_lossy(&answer.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ));
        }
    }
}

/// Pipelines batches of framed requests over one keep-alive connection at a time.
async fn pipelined_worker(
    tally: Arc<Tally>,
    addr: String,
    plane: Plane,
    paths: &'static [&'static str],
    mut rng: StdRng,
) {
    while !tally.done() {
        let batch: Vec<(Sent, Vec<u8>)> = (0..rng.gen_range(1..24))
            .map(|_| framed_request(&mut rng, paths))
            .collect();
        let Ok(stream) = TcpStream::connect(&addr).await else {
            tally.violation(format!("cannot connect to {addr}"));
            return;
        };
        let (read, mut write) = stream.into_split();
        let bytes: Vec<u8> = batch.iter().flat_map(|(_, b)| b.clone()).collect();
        let writer = tokio::spawn(async move {
            // The server may stop reading once it decides to close; that is fine.
            let _ = write.write_all(&bytes).await;
            write
        });
        let mut reader = BufReader::new(read);
        let mut answered = 0;
        for (sent, _) in &batch {
            let answer =
                tokio::time::timeout(HANG, read_answer(&mut reader, sent.method == "HEAD")).await;
            match answer {
                Err(_) => {
                    tally.violation(format!(
                        "no answer within {HANG:?} to {} {}",
                        sent.method, sent.path
                    ));
                    break;
                }
                Ok(Ok(Some(answer))) => {
                    answered += 1;
                    judge_http(&tally, plane, sent, &answer);
                    if answer.closes {
                        break;
                    }
                }
                // The server closed (e.g. after an unread oversized body): the
                // rest of the batch is simply not counted as answered.
                Ok(Ok(None) | Err(_)) => break,
            }
        }
        drop(writer.await);
        tally.count(&tally.http_requests, answered.max(1));
    }
}

/// One connection per broken request; the answer, if any, must be sane and quick.
async fn broken_http_worker(tally: Arc<Tally>, addrs: Vec<String>, mut rng: StdRng) {
    while !tally.done() {
        let addr = addrs.choose(&mut rng).unwrap();
        let bytes = broken_request(&mut rng);
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tally.violation(format!("cannot connect to {addr}"));
            return;
        };
        let exchange = async {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
            let mut reply = Vec::new();
            let _ = stream.read_to_end(&mut reply).await;
            reply
        };
        match tokio::time::timeout(HANG, exchange).await {
            Err(_) => tally.violation(format!(
                "a broken request held {addr} open for {HANG:?}: {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
            )),
            Ok(reply) => {
                let text = String::from_utf8_lossy(&reply);
                if let Some(status) = text
                    .strip_prefix("HTTP/1.1 ")
                    .and_then(|rest| rest.get(..3))
                    .and_then(|code| code.parse::<u16>().ok())
                {
                    tally.statuses.add(format!("{status} (raw)"));
                    if !HTTP_STATUSES.contains(&status) && !PROTOCOL_STATUSES.contains(&status) {
                        tally.violation(format!("broken request answered {status}"));
                    }
                } else if !reply.is_empty() {
                    tally.violation(format!(
                        "broken request answered non-HTTP {:?}",
                        &text[..text.len().min(80)]
                    ));
                }
            }
        }
        tally.count(&tally.http_requests, 1);
    }
}

// ---------------------------------------------------------------- WebSocket

fn raw_text_frame(payload: Vec<u8>) -> Message {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    Message::Frame(Frame::from_payload(header, payload.into()))
}

fn game_frame(rng: &mut StdRng) -> Message {
    let valid = |data: Value, kind: &str| json!({"type": kind, "v": 1, "data": data});
    let value = match rng.gen_range(0..20) {
        0..=3 => valid(
            json!({"requestId": format!("r{}", rng.gen_range(0..1000)), "name": "increment"}),
            "action",
        ),
        4..=5 => {
            let amount: Value = serde_json::from_str(pick(rng, &WEIRD_NUMBERS)).unwrap_or(json!(0));
            valid(
                json!({"requestId": "add", "name": "add", "payload": {"amount": if rng.gen_bool(0.5) { amount } else { json!(rng.gen_range(-2000..2000)) }}}),
                "action",
            )
        }
        6 => valid(
            json!({"requestId": "mv", "name": pick(rng, &["move", "upgrade", "nope"]), "payload": random_value(rng, 1)}),
            "action",
        ),
        7 => valid(
            json!({"name": "shout", "payload": {"text": weird_string(rng)}}),
            "event",
        ),
        8 => valid(
            json!({"name": "whisper", "payload": {"to": "p1", "text": "psst"}}),
            "event",
        ),
        9 => valid(json!({}), "sync.request"),
        10 => valid(json!({"t": random_value(rng, 1)}), "ping"),
        // Everything below is malformed in some way.
        11 => return Message::Binary(rng.r#gen::<[u8; 16]>().to_vec().into()),
        12 => {
            return raw_text_frame(
                b"{\"type\":\"ping\",\"v\":1,\"data\":{\"t\":\"\xff\xfe\"}}".to_vec(),
            );
        }
        13 => {
            let depth = rng.gen_range(100..50_000);
            return Message::Text(format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into());
        }
        14 => json!({"type": "action", "v": 2, "data": {}}),
        15 => {
            json!({"type": random_value(rng, 2), "v": random_value(rng, 2), "data": random_value(rng, 1)})
        }
        16 if rng.gen_bool(0.2) => {
            return Message::Text("x".repeat(rng.gen_range(17_000..40_000)).into());
        }
        _ => {
            let mut value = valid(json!({"requestId": "m", "name": "increment"}), "action");
            mutate_value(rng, &mut value);
            value
        }
    };
    let bytes = body_bytes(rng, value);
    match String::from_utf8(bytes) {
        Ok(text) => Message::Text(text.into()),
        Err(err) => raw_text_frame(err.into_bytes()),
    }
}

fn realtime_frame(rng: &mut StdRng) -> Message {
    let value = match rng.gen_range(0..6) {
        0 => json!({"action": "heartbeat"}),
        1 => json!({"action": "subscribe", "ticketId": format!("t-{}", rng.gen_range(0..100))}),
        2 | 3 => {
            let mut body = enqueue_body(rng);
            body["action"] = json!("enqueue");
            body
        }
        4 => return Message::Binary(vec![0xff; rng.gen_range(0..100)].into()),
        _ => random_value(rng, 0),
    };
    let bytes = body_bytes(rng, value);
    match String::from_utf8(bytes) {
        Ok(text) => Message::Text(text.into()),
        Err(err) => raw_text_frame(err.into_bytes()),
    }
}

/// How a socket ended, as the client saw it.
enum Ending {
    /// The server sent a close frame with this code (or none).
    ServerClose(Option<u16>),
    /// We closed first and the server answered.
    ClientClose,
    /// The connection dropped without a close frame.
    Abrupt(String),
}

/// What a session sent, in words, for the report of a bad ending.
fn frame_kinds(frames: &[Message]) -> std::collections::BTreeSet<&'static str> {
    frames
        .iter()
        .map(|frame| match frame {
            Message::Frame(_) => "invalid UTF-8",
            Message::Binary(_) => "binary",
            Message::Text(text) if text.len() > 16 * 1024 => "oversize",
            Message::Text(text) if serde_json::from_str::<Value>(text).is_err() => "not JSON",
            Message::Text(_) => "JSON",
            _ => "control",
        })
        .collect()
}

/// Opens a socket, sends `frames` while reading, then closes with 1000 unless
/// the server closed first; judges how it ended.
async fn socket_session(
    tally: &Tally,
    url: &str,
    frames: Vec<Message>,
    close_codes: &[u16],
    label: &str,
) {
    tally.sockets.fetch_add(1, Ordering::Relaxed);
    let kinds = frame_kinds(&frames);
    let connect = tokio::time::timeout(HANG, tokio_tungstenite::connect_async(url)).await;
    let socket = match connect {
        Err(_) => return tally.violation(format!("{label}: upgrade hung")),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            tally.statuses.add(format!("{status} (upgrade)"));
            let allowed =
                HTTP_STATUSES.contains(&status) && (status != 429 || tally.rate_limited_phase);
            if !allowed {
                tally.violation(format!("{label}: upgrade refused with {status}"));
            }
            return tally.count(&tally.http_requests, 1);
        }
        Ok(Err(err)) => return tally.violation(format!("{label}: connect failed: {err}")),
        Ok(Ok((socket, _))) => socket,
    };
    tally.count(&tally.http_requests, 1);
    let (mut sink, mut stream) = socket.split();
    let sent = Arc::new(AtomicU64::new(0));
    let closing = std::sync::atomic::AtomicBool::new(false);
    let reader = async {
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Close(frame)) => {
                    return Ending::ServerClose(frame.map(|f| u16::from(f.code)));
                }
                Ok(_) => {}
                Err(err) => return Ending::Abrupt(err.to_string()),
            }
        }
        Ending::Abrupt("end of stream".to_owned())
    };
    let writer = async {
        let mut wrote = 0;
        for frame in frames {
            if sink.send(frame).await.is_err() {
                break;
            }
            wrote += 1;
        }
        sent.fetch_add(wrote, Ordering::Relaxed);
        // Our own close: the server's reply ends the reader.
        closing.store(true, Ordering::Relaxed);
        let _ = sink.close().await;
    };
    let (ending, ()) =
        match tokio::time::timeout(HANG, async { tokio::join!(reader, writer) }).await {
            Ok(both) => both,
            Err(_) => return tally.violation(format!("{label}: socket hung")),
        };
    tally.count(&tally.frames, sent.load(Ordering::Relaxed));
    let ending = match ending {
        // Our close crossed theirs: the echo of 1000 (or of our empty close) is ours.
        Ending::ServerClose(Some(1000)) => Ending::ClientClose,
        Ending::ServerClose(None) if closing.load(Ordering::Relaxed) => Ending::ClientClose,
        other => other,
    };
    match ending {
        Ending::ClientClose => tally.close_codes.add(format!("{label} 1000")),
        Ending::ServerClose(code) => {
            tally.close_codes.add(format!("{label} {code:?}"));
            let allowed = code.is_some_and(|code| {
                close_codes.contains(&code) && (code != 4429 || tally.rate_limited_phase)
            });
            if !allowed {
                tally.violation(format!("{label}: server closed with {code:?}"));
            }
        }
        // Not a close the server initiated: reported, not judged.
        Ending::Abrupt(_) if closing.load(Ordering::Relaxed) => {
            tally
                .close_codes
                .add(format!("{label} our close unanswered"));
        }
        Ending::Abrupt(how) => {
            tally.close_codes.add(format!("{label} abrupt"));
            tally.violation(format!(
                "{label}: connection dropped without a close frame ({how}) after sending {kinds:?}"
            ));
        }
    }
}

async fn game_socket_worker(tally: Arc<Tally>, addr: String, mut rng: StdRng) {
    while !tally.done() {
        let land_type = pick(
            &mut rng,
            &["counter", "counter", "counter", "hero-defense", "nope"],
        );
        let url = format!(
            "ws://{addr}/game/{land_type}?landId={land_type}:f{}&playerId=p{}",
            rng.gen_range(0..40),
            rng.gen_range(0..400)
        );
        let frames = (0..rng.gen_range(1..150))
            .map(|_| game_frame(&mut rng))
            .collect();
        socket_session(&tally, &url, frames, &GAME_CLOSE_CODES, "game").await;
    }
}

/// Everything but unreserved characters as `%XX`, so any string fits in a query.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Joins on a server that verifies match tokens, with every kind of bad token.
async fn token_socket_worker(tally: Arc<Tally>, addr: String, mut rng: StdRng) {
    while !tally.done() {
        let token = match rng.gen_range(0..6) {
            0 => String::new(),
            1 => "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.".to_owned(),
            2 => "a.b.c".to_owned(),
            3 => "%ff%00".to_owned(),
            4 => "A".repeat(rng.gen_range(1..8000)),
            _ => weird_string(&mut rng),
        };
        let url = format!(
            "ws://{addr}/game/{}?landId=counter:t{}&token={}&playerId=admin",
            pick(&mut rng, &["counter", "hero-defense", "x"]),
            rng.gen_range(0..10),
            percent_encode(&token)
        );
        let frames = (0..rng.gen_range(0..4))
            .map(|_| game_frame(&mut rng))
            .collect();
        socket_session(&tally, &url, frames, &GAME_CLOSE_CODES, "token").await;
    }
}

async fn realtime_worker(tally: Arc<Tally>, addr: String, mut rng: StdRng) {
    while !tally.done() {
        let url = format!(
            "ws://{addr}/realtime?ticketId={}",
            pick(&mut rng, &["", "t-1", "%ff", "x"])
        );
        let frames = (0..rng.gen_range(1..40))
            .map(|_| realtime_frame(&mut rng))
            .collect();
        socket_session(&tally, &url, frames, &REALTIME_CLOSE_CODES, "realtime").await;
    }
}

// ---------------------------------------------------------------- the run

struct Planes {
    control: Proc,
    token_game: Proc,
    dev_game: Proc,
}

impl Planes {
    async fn start(rate_limit: &str, messages_per_second: &str) -> Self {
        let control =
            control_plane(&["--rate-limit", rate_limit, "--trusted-proxy", "127.0.0.1"]).await;
        let token_game = game_server(
            &control.http(),
            &["--server-id", "fuzz-gs", "--rate-limit", rate_limit],
        )
        .await;
        let dev_game = dev_game_server(&[
            "--rate-limit",
            rate_limit,
            "--max-messages-per-second",
            messages_per_second,
        ])
        .await;
        Self {
            control,
            token_game,
            dev_game,
        }
    }

    fn all(&mut self) -> [&mut Proc; 3] {
        [&mut self.control, &mut self.token_game, &mut self.dev_game]
    }
}

const GAME_PATHS: [&str; 6] = [
    "/health",
    "/admin/lands",
    "/game/counter",
    "/game/hero-defense",
    "/game/",
    "/",
];

async fn run_phase(planes: &mut Planes, tally: &Arc<Tally>, rng: &mut StdRng) {
    let mut child_rng = || StdRng::seed_from_u64(rng.r#gen());
    let cp = planes.control.addr.clone();
    let token_gs = planes.token_game.addr.clone();
    let dev_gs = planes.dev_game.addr.clone();
    let workers = vec![
        tokio::spawn(pipelined_worker(
            Arc::clone(tally),
            cp.clone(),
            Plane::Control,
            &REST_PATHS,
            child_rng(),
        )),
        tokio::spawn(pipelined_worker(
            Arc::clone(tally),
            cp.clone(),
            Plane::Control,
            &REST_PATHS,
            child_rng(),
        )),
        tokio::spawn(pipelined_worker(
            Arc::clone(tally),
            dev_gs.clone(),
            Plane::Game,
            &GAME_PATHS,
            child_rng(),
        )),
        tokio::spawn(pipelined_worker(
            Arc::clone(tally),
            token_gs.clone(),
            Plane::Game,
            &GAME_PATHS,
            child_rng(),
        )),
        tokio::spawn(broken_http_worker(
            Arc::clone(tally),
            vec![cp.clone(), dev_gs.clone(), token_gs.clone()],
            child_rng(),
        )),
        tokio::spawn(game_socket_worker(
            Arc::clone(tally),
            dev_gs.clone(),
            child_rng(),
        )),
        tokio::spawn(game_socket_worker(
            Arc::clone(tally),
            dev_gs.clone(),
            child_rng(),
        )),
        tokio::spawn(token_socket_worker(
            Arc::clone(tally),
            token_gs.clone(),
            child_rng(),
        )),
        tokio::spawn(realtime_worker(Arc::clone(tally), cp.clone(), child_rng())),
    ];
    for worker in workers {
        worker.await.expect("fuzz worker panicked");
    }
}

fn report(tally: &Tally) {
    println!(
        "[{}] done: {} operations ({} HTTP requests, {} frames, {} sockets)",
        tally.phase,
        tally.operations.load(Ordering::Relaxed),
        tally.http_requests.load(Ordering::Relaxed),
        tally.frames.load(Ordering::Relaxed),
        tally.sockets.load(Ordering::Relaxed),
    );
    println!(
        "[{}] statuses: {:?}",
        tally.phase,
        tally.statuses.snapshot()
    );
    println!(
        "[{}] socket endings: {:?}",
        tally.phase,
        tally.close_codes.snapshot()
    );
}

fn assert_clean(tally: &Tally, seed: u64) {
    let violations = tally.violations.lock().unwrap();
    assert!(
        violations.is_empty(),
        "[{}] {} violations (seed {seed}); by kind: {:#?}\nfirst ones:\n{}",
        tally.phase,
        tally.violation_count.load(Ordering::Relaxed),
        tally.violation_kinds.snapshot(),
        violations.join("\n")
    );
}

/// Every process survived and still does its ordinary job.
async fn assert_planes_serve(planes: &mut Planes) {
    for proc in planes.all() {
        assert_alive(proc).await;
    }
    let player = format!("after-fuzz-{}", rand::random::<u32>());
    let url = format!("{}/v1/matchmaking/enqueue", planes.control.http());
    let body = json!({"queueKey": "counter:2", "members": [player]});
    // After the limited phase this address may still owe its bucket: a client
    // that honours Retry-After gets through.
    let mut reply = call(reqwest::Method::POST, &url, None, Some(&body)).await;
    for _ in 0..5 {
        if reply.status != 429 {
            break;
        }
        let wait: u64 = reply.headers[reqwest::header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(wait)).await;
        reply = call(reqwest::Method::POST, &url, None, Some(&body)).await;
    }
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let url = format!(
        "ws://{}/game/counter?landId=counter:after-fuzz&playerId={player}",
        planes.dev_game.addr
    );
    let mut attempt = 0;
    let mut socket = loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((socket, _)) => break socket,
            // New game sockets are rate limited too; the bucket refills within seconds.
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status().as_u16() == 429 && attempt < 5 =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => panic!("game socket after the fuzz: {err}"),
        }
    };
    next_of(&mut socket, "join.ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_planes_survive_a_flood_of_generated_and_mutated_input() {
    let seed = seed();
    println!("fuzz seed {seed} (replay with MATCHPLANE_FUZZ_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut planes = Planes::start("off", "1000000").await;
    let baseline: Vec<u64> = planes.all().iter().map(|proc| rss_kib(proc)).collect();
    let tally = Tally::new("main", MAIN_PHASE_OPERATIONS, false);
    run_phase(&mut planes, &tally, &mut rng).await;
    report(&tally);
    let names = ["control plane", "token game server", "dev game server"];
    for ((proc, before), name) in planes.all().iter().zip(&baseline).zip(names) {
        let after = rss_kib(proc);
        println!("{name}: RSS {before} KiB → {after} KiB");
        assert!(
            after.saturating_sub(*before) < RSS_GROWTH_LIMIT_KIB,
            "{name} grew from {before} KiB to {after} KiB (seed {seed})"
        );
    }
    assert!(tally.operations.load(Ordering::Relaxed) >= 100_000);
    assert_clean(&tally, seed);
    assert_planes_serve(&mut planes).await;
    drop(planes);

    // With limits on, 429 and 4429 become documented answers, and do happen.
    let mut planes = Planes::start("20", "50").await;
    let tally = Tally::new("limited", LIMITED_PHASE_OPERATIONS, true);
    run_phase(&mut planes, &tally, &mut rng).await;
    report(&tally);
    assert_clean(&tally, seed);
    assert!(
        tally
            .statuses
            .snapshot()
            .keys()
            .any(|status| status.starts_with("429")),
        "the limited phase was never rate limited"
    );
    assert_planes_serve(&mut planes).await;
}
