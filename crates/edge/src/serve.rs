//! The accept loop both planes serve HTTP (and WebSocket upgrades) with.
//!
//! `axum::serve` has no header-read or idle timeout and no connection cap, so a
//! client holding half-sent requests can exhaust the process's file
//! descriptors. This loop drives hyper itself and adds, per connection:
//!
//! - a header timeout: from the first byte of a request head (or from accept)
//!   the whole head must arrive within `header_timeout`;
//! - an idle timeout: a keep-alive connection with no request in flight and no
//!   bytes moving is closed after `idle_timeout`;
//! - caps on open connections, total and per peer address. A connection's slot
//!   lives in its IO object, which hyper hands to an upgraded WebSocket, so a
//!   WebSocket holds its slot for as long as it lives. Over a cap the client
//!   gets a short `503` with `TOO_MANY_CONNECTIONS` instead of a reset.
//!
//! hyper's own `header_read_timeout` is not used: it restarts as soon as a
//! response is written, so it would close idle keep-alive connections after
//! the (short) header timeout instead of the (longer) idle timeout, and a
//! proxy reusing such a connection would race the close.
//!
//! Once a connection is upgraded it leaves this loop: neither timeout applies
//! to a WebSocket (the application runs its own pings and idle rules), and
//! shutdown does not wait for it (the application closes its sockets).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use matchplane_contracts::ErrorCode;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Limits on connections a listener accepts. Defaults suit a public listener.
///
/// A zero `header_timeout` or `idle_timeout` disables that timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// A client must finish sending a request's headers within this.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Open connections (WebSockets included) over all clients.
    pub max_connections: usize,
    /// Open connections (WebSockets included) from one client address.
    pub max_connections_per_ip: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 20_000,
            max_connections_per_ip: 512,
        }
    }
}

/// Connections the kernel queues for `accept` (it caps this at `net.core.somaxconn`).
/// tokio's default of 128 overflows as soon as a connection flood outpaces the
/// accept loop, and an overflowing queue drops handshakes: every client, not
/// only the flood, then waits out a SYN retransmission of a second or more.
const LISTEN_BACKLOG: u32 = 4096;

/// How long shutdown waits for in-flight requests before dropping their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a refused client has to read the 503 and close before its socket is dropped.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a refused connection waits for its request to start before it
/// gets the 503 anyway.
const REFUSAL_REQUEST_WAIT: Duration = Duration::from_secs(1);
/// Bytes discarded from a refused client; one that keeps sending past this
/// gets its socket closed, even if that costs it the 503.
const REFUSAL_DRAIN_LIMIT: usize = 64 * 1024;
/// Refused sockets lingering at once (503 written, reads discarded until the
/// client closes). Past this the oldest is closed early, so a connection flood
/// cannot turn the refusals themselves into the file-descriptor leak.
const MAX_REFUSALS_LINGERING: usize = 256;
/// Pause after an accept error such as EMFILE, which would otherwise repeat at once.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(250);
/// Least time between two log lines about refusals (or accept errors).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Binds a public listener for [`serve`], with a deeper accept queue than
/// `TcpListener::bind` (see `LISTEN_BACKLOG`). Must run inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind`: a restarted process can take its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` until `shutdown` resolves, with the timeouts and
/// connection caps of `limits`. Handlers can extract `ConnectInfo<SocketAddr>`
/// (the TCP peer) and upgrade to WebSockets.
///
/// On shutdown the listener is closed at once, in-flight requests get up to
/// `SHUTDOWN_GRACE` to finish (idle keep-alive connections close immediately),
/// and whatever is left is dropped. Upgraded WebSockets are not waited for.
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let caps = Arc::new(ConnectionCaps::new(&limits));
    let limits = Arc::new(limits);
    let mut http = hyper::server::conn::http1::Builder::new();
    // Our watchdog owns the header timeout (see the module docs). hyper still
    // gets a timer: without one an explicit timeout would panic.
    http.timer(TokioTimer::new()).header_read_timeout(None);
    let refusals = Arc::new(Refusals::default());
    let refusal_log = Arc::new(LogThrottle::default());
    let accept_error_log = LogThrottle::default();
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = finished
                    && err.is_panic()
                {
                    tracing::error!(error = %err, "a connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match caps.try_acquire(peer.ip()) {
                    Ok(slot) => {
                        connections.spawn(serve_connection(
                            stream,
                            peer,
                            slot,
                            app.clone(),
                            http.clone(),
                            Arc::clone(&limits),
                            closing_rx.clone(),
                        ));
                    }
                    Err(cap) => {
                        if let Some(suppressed) = refusal_log.should_log() {
                            tracing::warn!(peer = %peer.ip(), cap = cap.as_str(), suppressed,
                                lingering_cut_short = refusals.cut_short.load(Ordering::Relaxed),
                                unanswered = refusals.unanswered.load(Ordering::Relaxed),
                                "connection refused: too many open connections");
                        }
                        let cut_short = refusals.admit();
                        connections.spawn(refuse(stream, cap, cut_short, Arc::clone(&refusals)));
                    }
                },
                Err(err) if is_per_connection_error(&err) => {}
                Err(err) => {
                    if let Some(suppressed) = accept_error_log.should_log() {
                        tracing::error!(error = %err, suppressed, "accept failed; backing off");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }

    // Closing the listener first makes new clients fail fast instead of queueing.
    drop(listener);
    let _ = closing_tx.send(true);
    let grace = tokio::time::sleep(SHUTDOWN_GRACE);
    let mut grace = pin!(grace);
    loop {
        tokio::select! {
            () = &mut grace => {
                tracing::warn!(open = connections.len(), "connections still open after the shutdown grace; dropping them");
                break;
            }
            next = connections.join_next() => if next.is_none() { break },
        }
    }
    connections.shutdown().await;
    Ok(())
}

/// Errors that concern one would-be connection, not the listener.
fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    limits: Arc<ServeLimits>,
    mut closing: watch::Receiver<bool>,
) {
    // Answers, pushes and game frames are small writes. With Nagle's algorithm a
    // write waits for the ACK of the previous one, which the peer may delay by up
    // to 40 ms: measured as a p99 time-to-match stuck near 48 ms at any rate.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(peer = %peer, error = %err, "cannot disable Nagle's algorithm");
    }
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(TrackedStream {
        stream,
        activity: Arc::clone(&activity),
        _slot: slot,
    });
    let service = ConnectionService {
        app,
        peer,
        activity: Arc::clone(&activity),
    };
    let connection = http.serve_connection(io, service).with_upgrades();
    let mut connection = pin!(connection);
    let watchdog = watchdog(&activity, &limits);
    let mut watchdog = pin!(watchdog);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            expired = &mut watchdog => {
                // Dropping the connection closes the socket: nothing is in flight.
                tracing::debug!(%peer, timeout = expired.as_str(), "closing connection");
                return;
            }
            _ = closing.changed(), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Gives each request the peer address and tracks it as in flight until its
/// response is ready.
#[derive(Clone)]
struct ConnectionService {
    app: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let in_flight = RequestInFlight::start(Arc::clone(&self.activity));
        let response = tower::ServiceExt::oneshot(self.app.clone(), request);
        Box::pin(async move {
            let response = response.await;
            drop(in_flight);
            response
        })
    }
}

/// Which timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Header,
    Idle,
}

impl Expired {
    fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Idle => "idle",
        }
    }
}

/// What the watchdog needs to know about a connection, updated by its IO and
/// its requests. Times are milliseconds since `epoch`.
struct Activity {
    epoch: Instant,
    last_io_ms: AtomicU64,
    /// When the first byte of the request head being read arrived; `NO_HEAD` between requests.
    head_started_ms: AtomicU64,
    in_flight: AtomicUsize,
    changed: Notify,
}

const NO_HEAD: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            // A fresh connection owes its first request head from the moment it is accepted.
            head_started_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NO_HEAD - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0
            && self
                .head_started_ms
                .compare_exchange(NO_HEAD, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            // The header deadline is usually sooner than the idle one being slept on.
            self.changed.notify_one();
        }
    }

    fn on_write(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// When the connection should be closed if nothing changes, and why; `None`
    /// while a request is in flight.
    fn deadline(&self, limits: &ServeLimits) -> Option<(Instant, Expired)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head_started = self.head_started_ms.load(Ordering::Acquire);
        if head_started != NO_HEAD && !limits.header_timeout.is_zero() {
            return Some((
                self.at(head_started) + limits.header_timeout,
                Expired::Header,
            ));
        }
        if limits.idle_timeout.is_zero() {
            return None;
        }
        let last_io = self.last_io_ms.load(Ordering::Relaxed);
        Some((self.at(last_io) + limits.idle_timeout, Expired::Idle))
    }
}

/// Resolves when the connection has waited too long for a request head or sat idle.
async fn watchdog(activity: &Activity, limits: &ServeLimits) -> Expired {
    loop {
        match activity.deadline(limits) {
            None => activity.changed.notified().await,
            Some((deadline, expired)) => {
                if Instant::now() >= deadline {
                    return expired;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = activity.changed.notified() => {}
                }
            }
        }
    }
}

/// Marks a request in flight from its head being parsed until its response is ready.
struct RequestInFlight(Arc<Activity>);

impl RequestInFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_started_ms.store(NO_HEAD, Ordering::Release);
        Self(activity)
    }
}

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .last_io_ms
            .store(activity.now_ms(), Ordering::Relaxed);
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.changed.notify_one();
        }
    }
}

/// The accepted socket, reporting activity and owning the connection's slot
/// (so an upgraded WebSocket, which takes over this object, keeps the slot).
struct TrackedStream {
    stream: TcpStream,
    activity: Arc<Activity>,
    _slot: ConnectionSlot,
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        result
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.on_write();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.on_write();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Which connection cap refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    PerIp,
    Total,
}

impl Cap {
    fn as_str(self) -> &'static str {
        match self {
            Self::PerIp => "per_ip",
            Self::Total => "total",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::PerIp => "too many open connections from this address; retry later",
            Self::Total => "the server has too many open connections; retry later",
        }
    }
}

/// Open connections, in total and per peer address.
struct ConnectionCaps {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Default)]
struct OpenConnections {
    total: usize,
    /// Only addresses with open connections, so the map is bounded by `max_total`.
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnectionCaps {
    fn new(limits: &ServeLimits) -> Self {
        Self {
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            open: Mutex::new(OpenConnections::default()),
        }
    }

    fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Cap> {
        let mut open = self.open.lock();
        if open.total >= self.max_total {
            return Err(Cap::Total);
        }
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_ip {
            return Err(Cap::PerIp);
        }
        open.total += 1;
        open.per_ip.insert(ip, from_ip + 1);
        Ok(ConnectionSlot {
            caps: Arc::clone(self),
            ip,
        })
    }
}

/// One open connection counted against the caps until dropped.
struct ConnectionSlot {
    caps: Arc<ConnectionCaps>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

/// The refused sockets still lingering, and what the bound on them cost.
#[derive(Default)]
struct Refusals {
    /// One sender per lingering refusal, oldest first; a sender whose refusal
    /// has ended is closed and skipped.
    lingering: Mutex<VecDeque<oneshot::Sender<()>>>,
    /// Refusals closed early to make room for newer ones (since start).
    cut_short: AtomicU64,
    /// Refusals whose 503 could not be written (since start).
    unanswered: AtomicU64,
}

impl Refusals {
    /// Makes room for one more lingering refusal, closing the oldest early if
    /// the bound is reached; the receiver fires when this one is to close early.
    fn admit(&self) -> oneshot::Receiver<()> {
        let (close_early, closing_early) = oneshot::channel();
        let mut lingering = self.lingering.lock();
        if lingering.len() >= MAX_REFUSALS_LINGERING {
            lingering.retain(|refusal| !refusal.is_closed());
        }
        while lingering.len() >= MAX_REFUSALS_LINGERING {
            if let Some(oldest) = lingering.pop_front()
                && oldest.send(()).is_ok()
            {
                self.cut_short.fetch_add(1, Ordering::Relaxed);
            }
        }
        lingering.push_back(close_early);
        closing_early
    }
}

/// The 503 a client over a connection cap reads instead of a reset.
fn refusal_response(cap: Cap) -> String {
    let body = format!(
        r#"{{"error":{{"code":"{}","message":"{}"}}}}"#,
        ErrorCode::TooManyConnections.as_str(),
        cap.message()
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Waits for the request to start, writes the 503, then lingers until the
/// client closes: closing a socket with
/// unread request bytes makes the kernel send a reset, which can destroy the
/// 503 before the client reads it. So the write half is shut (the client reads
/// the response and an end of stream) and what the client still sends is
/// discarded, within `REFUSAL_TIMEOUT` and `REFUSAL_DRAIN_LIMIT`, or until
/// `close_early` fires.
async fn refuse(
    mut stream: TcpStream,
    cap: Cap,
    mut close_early: oneshot::Receiver<()>,
    refusals: Arc<Refusals>,
) {
    let response = refusal_response(cap);
    let response = response.as_bytes();
    let deadline = Instant::now() + REFUSAL_TIMEOUT;
    let mut written = 0;
    let mut drained = 0;
    let answer_then_drain = async {
        // An HTTP client that reads a response before it has sent its request
        // takes it for a broken connection, not a 503: let the request start first.
        let mut first = [0_u8; 4096];
        if let Ok(read) = tokio::time::timeout(REFUSAL_REQUEST_WAIT, stream.read(&mut first)).await
        {
            drained += read?;
        }
        while written < response.len() {
            match stream.write(&response[written..]).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                sent => written += sent,
            }
        }
        stream.shutdown().await?;
        discard_reads(&mut stream, &mut drained).await
    };
    let result = tokio::select! {
        result = answer_then_drain => result,
        _ = &mut close_early => Ok(()),
        () = tokio::time::sleep_until(deadline) => Ok(()),
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "a refused connection failed");
    }
    if written < response.len() {
        // Closed early by a burst of refusals, possibly before this task first
        // ran: a fresh socket's send buffer takes the whole answer at once.
        while written < response.len() {
            match stream.try_write(&response[written..]) {
                Ok(sent) if sent > 0 => written += sent,
                _ => break,
            }
        }
        if written < response.len() {
            refusals.unanswered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _ = stream.shutdown().await;
    }
    // What arrived since the last read would still reset the connection.
    discard_ready_reads(&stream, &mut drained);
}

/// Reads and discards until the peer closes or `REFUSAL_DRAIN_LIMIT` is reached.
async fn discard_reads(stream: &mut TcpStream, drained: &mut usize) -> io::Result<()> {
    let mut scratch = [0_u8; 4096];
    while *drained < REFUSAL_DRAIN_LIMIT {
        let read = stream.read(&mut scratch).await?;
        if read == 0 {
            break;
        }
        *drained += read;
    }
    Ok(())
}

/// Discards what has already arrived, without waiting, up to `REFUSAL_DRAIN_LIMIT`.
fn discard_ready_reads(stream: &TcpStream, drained: &mut usize) {
    let mut scratch = [0_u8; 4096];
    while *drained < REFUSAL_DRAIN_LIMIT {
        match stream.try_read(&mut scratch) {
            Ok(read) if read > 0 => *drained += read,
            _ => break,
        }
    }
}

/// Lets one log line through per `LOG_EVERY` and counts the ones held back.
#[derive(Default)]
struct LogThrottle {
    next_at: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// `Some(lines held back since the last one)` when this line may be logged.
    fn should_log(&self) -> Option<u64> {
        let now = Instant::now();
        let mut next_at = self.next_at.lock();
        if next_at.is_some_and(|at| now < at) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *next_at = Some(now + LOG_EVERY);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_address_and_in_total_and_release_on_drop() {
        let caps = Arc::new(ConnectionCaps::new(&ServeLimits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..ServeLimits::default()
        }));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = caps.try_acquire(a).unwrap();
        let _second = caps.try_acquire(a).unwrap();
        assert_eq!(caps.try_acquire(a).err(), Some(Cap::PerIp));
        let _third = caps.try_acquire(b).unwrap();
        assert_eq!(caps.try_acquire(b).err(), Some(Cap::Total));
        drop(first);
        assert!(caps.try_acquire(a).is_ok());
        assert!(caps.open.lock().per_ip.len() <= 2);
    }

    #[test]
    fn released_addresses_leave_the_map() {
        let caps = Arc::new(ConnectionCaps::new(&ServeLimits::default()));
        for i in 0..100_u8 {
            drop(caps.try_acquire([10, 0, 0, i].into()).unwrap());
        }
        let open = caps.open.lock();
        assert_eq!(open.total, 0);
        assert!(open.per_ip.is_empty());
    }

    #[test]
    fn refusal_is_a_complete_http_response_with_the_code() {
        let response = refusal_response(Cap::PerIp);
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("\r\nRetry-After: 1"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(parsed["error"]["code"], "TOO_MANY_CONNECTIONS");
    }

    #[test]
    fn lingering_refusals_are_bounded_by_closing_the_oldest_early() {
        let refusals = Refusals::default();
        let mut admitted: Vec<_> = (0..MAX_REFUSALS_LINGERING)
            .map(|_| refusals.admit())
            .collect();
        assert!(admitted.iter_mut().all(|r| r.try_recv().is_err()));
        let newest = refusals.admit();
        assert_eq!(admitted[0].try_recv(), Ok(()), "the oldest closes early");
        assert!(admitted[1..].iter_mut().all(|r| r.try_recv().is_err()));
        assert_eq!(refusals.cut_short.load(Ordering::Relaxed), 1);

        // Refusals that ended on their own make room without cutting anyone short.
        admitted.truncate(1);
        let _room: Vec<_> = (0..MAX_REFUSALS_LINGERING - 1)
            .map(|_| refusals.admit())
            .collect();
        assert_eq!(refusals.cut_short.load(Ordering::Relaxed), 1);
        assert!(refusals.lingering.lock().len() <= MAX_REFUSALS_LINGERING);
        drop(newest);
    }

    #[tokio::test(start_paused = true)]
    async fn log_throttle_lets_one_line_through_per_period() {
        let throttle = LogThrottle::default();
        assert_eq!(throttle.should_log(), Some(0));
        assert_eq!(throttle.should_log(), None);
        assert_eq!(throttle.should_log(), None);
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(throttle.should_log(), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_deadline_follows_activity_and_pauses_while_a_request_runs() {
        let limits = ServeLimits {
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
            ..ServeLimits::default()
        };
        let activity = Arc::new(Activity::new());
        let start = activity.epoch;
        // Fresh connection: the head is owed from accept.
        assert_eq!(
            activity.deadline(&limits),
            Some((start + Duration::from_secs(2), Expired::Header))
        );
        let request = RequestInFlight::start(Arc::clone(&activity));
        assert_eq!(activity.deadline(&limits), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(request);
        assert_eq!(
            activity.deadline(&limits),
            Some((start + Duration::from_secs(6), Expired::Idle))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        activity.on_read();
        assert_eq!(
            activity.deadline(&limits),
            Some((start + Duration::from_secs(4), Expired::Header))
        );
    }
}
