//! The hardened accept loop against real sockets on loopback: slowloris,
//! idle keep-alive, connection caps with their 503, WebSockets, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt as _, StreamExt as _};
use matchplane_edge::serve::{ServeLimits, serve};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message;

/// Far longer than any timeout under test: a test that waits this long has failed.
const PATIENCE: Duration = Duration::from_secs(15);

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(limits: ServeLimits) -> Self {
        let listener = matchplane_edge::serve::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app(), limits, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        timeout(PATIENCE, self.task)
            .await
            .expect("serve did not return after shutdown")
            .unwrap()
            .unwrap();
    }
}

fn app() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                sleep(Duration::from_millis(500)).await;
                "slow"
            }),
        )
        .route("/ws", get(echo))
}

async fn echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if socket.send(message).await.is_err() {
                break;
            }
        }
    })
}

fn limits() -> ServeLimits {
    ServeLimits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_connections: 1000,
        max_connections_per_ip: 1000,
    }
}

async fn connect_from(local: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((local, 0)))
        .expect("binding a loopback alias");
    socket.connect(server).await.unwrap()
}

/// One response read off a keep-alive connection (needs `Content-Length`).
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

async fn read_response(stream: &mut TcpStream) -> Option<RawResponse> {
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buffer.len() < end + 4 + length {
                let read = stream.read(&mut chunk).await.ok()?;
                if read == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..read]);
            }
            let status = head.split(' ').nth(1)?.parse().ok()?;
            let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]).into_owned();
            return Some(RawResponse { status, head, body });
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

async fn get_on(stream: &mut TcpStream, path: &str) -> Option<RawResponse> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    timeout(PATIENCE, read_response(stream))
        .await
        .expect("no answer")
}

async fn get_from(local: [u8; 4], server: SocketAddr, path: &str) -> RawResponse {
    let mut stream = connect_from(local, server).await;
    get_on(&mut stream, path)
        .await
        .expect("connection closed without an answer")
}

/// Waits until the server closes `stream` (EOF or reset), reading and discarding.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut chunk = [0_u8; 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn assert_refused(response: &RawResponse) {
    assert_eq!(response.status, 503, "{response:?}");
    assert!(
        response
            .head
            .to_ascii_lowercase()
            .contains("retry-after: 1"),
        "{response:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body["error"]["code"], "TOO_MANY_CONNECTIONS");
    assert!(body["error"]["message"].is_string());
}

#[tokio::test]
async fn slowloris_is_cut_off_by_the_header_timeout_while_health_keeps_answering() {
    let server = Server::start(ServeLimits {
        header_timeout: Duration::from_millis(600),
        ..limits()
    })
    .await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        // A byte every 100 ms keeps any per-read timeout happy; only a deadline
        // on the whole head stops it.
        for i in 0.. {
            if slow
                .write_all(format!("X-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return i;
            }
            sleep(Duration::from_millis(100)).await;
        }
        unreachable!()
    });
    for _ in 0..3 {
        let response = get_from([127, 0, 0, 1], server.addr, "/health").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "ok");
    }
    let lines_sent = timeout(PATIENCE, trickle)
        .await
        .expect("the slow client was never cut off")
        .unwrap();
    assert!(lines_sent > 0);
    assert_eq!(
        get_from([127, 0, 0, 1], server.addr, "/health")
            .await
            .status,
        200
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_is_cut_off_by_the_header_timeout() {
    let server = Server::start(ServeLimits {
        header_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    timeout(PATIENCE, closed_by_server(&mut silent))
        .await
        .expect("a connection that never sent a byte stayed open");
    server.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let server = Server::start(ServeLimits {
        header_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(3),
        ..limits()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(get_on(&mut stream, "/health").await.unwrap().status, 200);
    // Idle for longer than the header timeout: a keep-alive connection must survive it.
    sleep(Duration::from_millis(800)).await;
    let again = get_on(&mut stream, "/health")
        .await
        .expect("idle keep-alive closed by the header timeout");
    assert_eq!(again.status, 200);
    timeout(PATIENCE, closed_by_server(&mut stream))
        .await
        .expect("idle keep-alive never closed");
    server.shutdown().await;
}

#[tokio::test]
async fn handlers_see_the_peer_address() {
    let server = Server::start(limits()).await;
    let response = get_from([127, 0, 0, 2], server.addr, "/peer").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "127.0.0.2");
    server.shutdown().await;
}

#[tokio::test]
async fn per_ip_cap_refuses_with_503_and_other_addresses_still_get_in() {
    let server = Server::start(ServeLimits {
        max_connections_per_ip: 2,
        ..limits()
    })
    .await;
    let first = connect_from([127, 0, 0, 1], server.addr).await;
    let mut second = connect_from([127, 0, 0, 1], server.addr).await;
    // The accept loop has counted both once the second has been answered.
    assert_eq!(get_on(&mut second, "/health").await.unwrap().status, 200);
    let refused = get_from([127, 0, 0, 1], server.addr, "/health").await;
    assert_refused(&refused);
    let other = get_from([127, 0, 0, 3], server.addr, "/health").await;
    assert_eq!(other.status, 200);
    drop(first);
    let admitted = timeout(PATIENCE, async {
        loop {
            let response = get_from([127, 0, 0, 1], server.addr, "/health").await;
            if response.status == 200 {
                return response;
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a closed connection never gave its slot back");
    assert_eq!(admitted.body, "ok");
    drop(second);
    server.shutdown().await;
}

// Several threads, so that the server can refuse while the client is still
// preparing its request, as it can across processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http_client_over_the_cap_reads_the_503_as_a_response() {
    let server = Server::start(ServeLimits {
        max_connections_per_ip: 1,
        ..limits()
    })
    .await;
    let mut held = connect_from([127, 0, 0, 1], server.addr).await;
    assert_eq!(get_on(&mut held, "/health").await.unwrap().status, 200);
    // A client that has not written its request when the refusal arrives must
    // still get it as the response, not as garbage on an idle connection.
    for _ in 0..200 {
        let response = reqwest::Client::new()
            .get(format!("http://{}/health", server.addr))
            .send()
            .await
            .expect("the refusal is an HTTP response");
        assert_eq!(response.status().as_u16(), 503);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "TOO_MANY_CONNECTIONS");
    }
    drop(held);
    server.shutdown().await;
}

#[tokio::test]
async fn total_cap_refuses_with_503() {
    let server = Server::start(ServeLimits {
        max_connections: 3,
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for local in [[127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]] {
        let mut stream = connect_from(local, server.addr).await;
        assert_eq!(get_on(&mut stream, "/health").await.unwrap().status, 200);
        held.push(stream);
    }
    assert_refused(&get_from([127, 0, 0, 4], server.addr, "/health").await);
    assert_refused(&get_from([127, 0, 0, 1], server.addr, "/health").await);
    drop(held);
    server.shutdown().await;
}

/// Sends a complete request and more bytes before (and after) the server
/// refuses, then reads everything up to the server's close: closing with those
/// bytes unread would reset the connection and could destroy the 503.
async fn refused_after_sending_more_than_a_request(local: [u8; 4], server: SocketAddr) {
    let mut stream = connect_from(local, server).await;
    let mut request =
        b"POST /health HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'x', 16 * 1024));
    stream.write_all(&request).await.unwrap();
    sleep(Duration::from_millis(100)).await;
    // The server has refused by now; a client still sending must not cost the answer.
    stream
        .write_all(&[b'y'; 8 * 1024])
        .await
        .expect("the server reset the connection while the client was sending");
    assert_refused_then_closed(stream).await;
}

/// Reads to the end of the stream: a complete 503 and a clean close, no reset.
async fn assert_refused_then_closed(mut stream: TcpStream) {
    let mut received = Vec::new();
    timeout(PATIENCE, stream.read_to_end(&mut received))
        .await
        .expect("the refused connection was never closed")
        .unwrap_or_else(|err| {
            panic!(
                "refusal ended in {err} after {:?}",
                String::from_utf8_lossy(&received)
            )
        });
    // A reset after the end of stream still leaves its error on the socket.
    assert!(
        stream.take_error().unwrap().is_none(),
        "the server reset the connection"
    );
    let text = String::from_utf8_lossy(&received);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert_refused(&RawResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    });
}

#[tokio::test]
async fn a_client_refused_after_sending_its_request_reads_the_whole_503_per_ip_and_total() {
    let server = Server::start(ServeLimits {
        max_connections: 3,
        max_connections_per_ip: 2,
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for local in [[127, 0, 0, 1], [127, 0, 0, 1]] {
        let mut stream = connect_from(local, server.addr).await;
        assert_eq!(get_on(&mut stream, "/health").await.unwrap().status, 200);
        held.push(stream);
    }
    // Per address: 127.0.0.1 has its two.
    refused_after_sending_more_than_a_request([127, 0, 0, 1], server.addr).await;
    let mut third = connect_from([127, 0, 0, 2], server.addr).await;
    assert_eq!(get_on(&mut third, "/health").await.unwrap().status, 200);
    held.push(third);
    // In total: three are open, so a fresh address is refused too.
    refused_after_sending_more_than_a_request([127, 0, 0, 3], server.addr).await;
    drop(held);
    server.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_half_sent_requests_past_the_caps_gets_only_503s_never_a_reset() {
    // More refused connections than the server lingers on at once (256): the
    // oldest refusals are closed early, still cleanly.
    const HELD: usize = 8;
    const REFUSED: usize = 600;
    let server = Server::start(ServeLimits {
        max_connections_per_ip: HELD,
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..HELD {
        let mut stream = connect_from([127, 0, 0, 1], server.addr).await;
        assert_eq!(get_on(&mut stream, "/health").await.unwrap().status, 200);
        held.push(stream);
    }
    let mut refused = Vec::new();
    for _ in 0..REFUSED {
        let mut stream = connect_from([127, 0, 0, 1], server.addr).await;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Half: ")
            .await
            .unwrap();
        refused.push(stream);
    }
    for stream in refused {
        assert_refused_then_closed(stream).await;
    }
    // Another address is unaffected, and the held ones still work.
    assert_eq!(
        get_from([127, 0, 0, 2], server.addr, "/health")
            .await
            .status,
        200
    );
    assert_eq!(get_on(&mut held[0], "/health").await.unwrap().status, 200);
    drop(held);
    server.shutdown().await;
}

#[tokio::test]
async fn the_accept_queue_holds_a_burst_of_a_thousand_handshakes() {
    // Nothing accepts: every handshake waits in the kernel's queue. With
    // tokio's default backlog of 128 the rest would be dropped and retried
    // for as long as the queue stays full.
    let listener = matchplane_edge::serve::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for i in 0..1000 {
        let stream = timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("handshake {i} was not queued"))
            .unwrap();
        queued.push(stream);
    }
    drop(listener);
}

#[tokio::test]
async fn a_websocket_works_through_serve_outlives_the_idle_timeout_and_holds_its_slot() {
    let server = Server::start(ServeLimits {
        header_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(200),
        max_connections_per_ip: 1,
        ..limits()
    })
    .await;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    socket.send(Message::text("hello")).await.unwrap();
    let echoed = timeout(PATIENCE, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("hello"));

    // While the socket is open it holds the one slot this address has.
    assert_refused(&get_from([127, 0, 0, 1], server.addr, "/health").await);

    // Silent for longer than both timeouts: an upgraded socket is not cut.
    sleep(Duration::from_millis(800)).await;
    socket.send(Message::text("still here")).await.unwrap();
    let echoed = timeout(PATIENCE, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("still here"));

    socket.close(None).await.unwrap();
    drop(socket);
    let admitted = timeout(PATIENCE, async {
        loop {
            let response = get_from([127, 0, 0, 1], server.addr, "/health").await;
            if response.status == 200 {
                return response;
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a closed WebSocket never gave its slot back");
    assert_eq!(admitted.body, "ok");
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_closes_idle_ones_and_stops_accepting() {
    let server = Server::start(limits()).await;
    let addr = server.addr;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_on(&mut idle, "/health").await.unwrap().status, 200);
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // Let the slow request reach its handler before shutdown starts.
    sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(server.shutdown());
    let answer = timeout(PATIENCE, read_response(&mut busy))
        .await
        .unwrap()
        .expect("the in-flight request was dropped by shutdown");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "slow");
    timeout(PATIENCE, closed_by_server(&mut idle))
        .await
        .expect("an idle keep-alive connection kept shutdown waiting");
    timeout(PATIENCE, stopping).await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}
