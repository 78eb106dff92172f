//! The game server: routes, health, admin, graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Path, Query, Request, State, WebSocketUpgrade};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use matchplane_contracts::forwarded::TrustedProxies;
use matchplane_contracts::game::{AdminLands, GameServerHealth};
use matchplane_contracts::{ErrorBody, ErrorCode, ErrorDetail};
use matchplane_edge::ratelimit::{KeyedLimiter, RateLimit, RetryAfter};
use matchplane_edge::secret::{Secret, bearer};
use matchplane_edge::serve::ServeLimits;
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::auth::Authenticator;
use crate::manager::{LandManager, LandRegistry};
use crate::transport::{self, ConnectionLimits};

/// Server-wide settings.
#[derive(Debug, Clone)]
pub struct GameServerConfig {
    pub server_id: String,
    /// Fresh per process (uuid v4 by default): sent with every registration and carried
    /// by match tokens, so a restarted server under the same `server_id` refuses the
    /// tokens of lands that died with its previous instance.
    pub instance_id: String,
    pub limits: ConnectionLimits,
    /// Most lands this server runs at once (`--max-lands`); `None`: no limit.
    pub max_lands: Option<usize>,
    /// Most ticks one periodic sync may stand for while the server is overloaded
    /// (`--max-sync-stretch`; 1: sync every tick whatever the load).
    pub max_sync_stretch: u32,
    /// How long shutdown waits for lands to say goodbye before the process exits anyway.
    pub shutdown_timeout: Duration,
    /// Load balancers whose `X-Forwarded-For` names the real client (for logs and limits).
    pub trusted_proxies: TrustedProxies,
    /// Header/idle timeouts and connection caps of the HTTP listener.
    pub serve_limits: ServeLimits,
    /// New game sockets per second per client address (burst 2N).
    pub rate_limit: RateLimit,
    /// Bearer tokens accepted on the admin routes (`/admin/*`). Empty: the admin routes
    /// answer only to direct loopback peers, so an unconfigured server exposes nothing.
    pub admin_tokens: Vec<Secret>,
}

impl Default for GameServerConfig {
    fn default() -> Self {
        Self {
            server_id: format!("game-{}", uuid::Uuid::new_v4().simple()),
            instance_id: uuid::Uuid::new_v4().to_string(),
            limits: ConnectionLimits::default(),
            max_lands: None,
            max_sync_stretch: crate::shedding::DEFAULT_MAX_SYNC_STRETCH,
            shutdown_timeout: Duration::from_secs(10),
            trusted_proxies: TrustedProxies::default(),
            serve_limits: ServeLimits::default(),
            rate_limit: RateLimit::default(),
            admin_tokens: Vec::new(),
        }
    }
}

/// Read buffer of each WebSocket connection. tungstenite zero-fills it to its
/// capacity on every read, so all of it is resident for every connected
/// player; client messages are a few hundred bytes, and a larger one (up to
/// `--max-message-bytes`) is read in more than one go.
const WS_READ_BUFFER_BYTES: usize = 4 * 1024;
/// Frames written are flushed once this much is buffered (or on every send).
const WS_WRITE_BUFFER_BYTES: usize = 8 * 1024;

pub(crate) struct Shared {
    pub(crate) manager: LandManager,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) config: GameServerConfig,
    /// Buckets of new game sockets per client address.
    pub(crate) new_sockets: KeyedLimiter<IpAddr>,
    /// Game sockets still open (their tasks may linger to finish a close handshake).
    pub(crate) open_sockets: OpenSockets,
}

/// Counts upgraded game sockets, so shutdown can let their close handshakes
/// finish: exiting while a socket still has unread input resets the connection,
/// and the client would lose the `land.closed` and close frame already sent.
#[derive(Default)]
pub(crate) struct OpenSockets {
    count: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

struct OpenSocket<'a>(&'a OpenSockets);

impl OpenSockets {
    fn open(&self) -> OpenSocket<'_> {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenSocket(self)
    }

    /// Waits until every socket task ended, or `limit` passed.
    async fn wait_closed(&self, limit: Duration) {
        let all_closed = async {
            loop {
                let changed = self.changed.notified();
                if self.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    return;
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout(limit, all_closed).await;
    }
}

impl Drop for OpenSocket<'_> {
    fn drop(&mut self) {
        self.0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// Hosts the registered land types at `/game/{landType}`.
#[derive(Clone)]
pub struct GameServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GameServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GameServer")
            .field("server_id", &self.shared.config.server_id)
            .field("manager", &self.shared.manager)
            .finish_non_exhaustive()
    }
}

impl GameServer {
    pub fn new(
        registry: LandRegistry,
        auth: Arc<dyn Authenticator>,
        config: GameServerConfig,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                manager: LandManager::with_limits(
                    registry,
                    config.max_lands.unwrap_or(usize::MAX),
                    config.max_sync_stretch,
                ),
                auth,
                new_sockets: KeyedLimiter::new(config.rate_limit),
                open_sockets: OpenSockets::default(),
                config,
            }),
        }
    }

    pub fn manager(&self) -> &LandManager {
        &self.shared.manager
    }

    pub fn server_id(&self) -> &str {
        &self.shared.config.server_id
    }

    /// This process's instance id ([`GameServerConfig::instance_id`]).
    pub fn instance_id(&self) -> &str {
        &self.shared.config.instance_id
    }

    /// `GET /game/{landType}` (WebSocket), `GET /health`, `GET /admin/lands` (behind
    /// [`GameServerConfig::admin_tokens`]).
    pub fn router(&self) -> Router {
        let admin = Router::new()
            .route("/admin/lands", get(admin_lands))
            .route_layer(axum::middleware::from_fn_with_state(
                Arc::clone(&self.shared),
                require_admin,
            ));
        Router::new()
            .route("/game/{land_type}", get(game_socket))
            .route("/health", get(health))
            .merge(admin)
            .with_state(Arc::clone(&self.shared))
    }

    /// Serves until `shutdown` resolves, then drains: no new players, every land sends
    /// `land.closed` and closes its sockets with 1001, and the server stops once lands are
    /// gone or `shutdown_timeout` passed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let manager = self.shared.manager.clone();
        let timeout = self.shared.config.shutdown_timeout;
        let shared = Arc::clone(&self.shared);
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutdown requested");
            if !manager.shutdown("server_shutdown", timeout).await {
                tracing::warn!(?timeout, "lands did not all close in time");
            }
            // Let the sockets finish their close handshakes (bounded by their linger).
            shared
                .open_sockets
                .wait_closed(transport::CLOSE_LINGER + Duration::from_secs(1))
                .await;
            let _ = stopped_tx.send(());
        });
        let limits = self.shared.config.serve_limits.clone();
        matchplane_edge::serve::serve(listener, self.router(), limits, async move {
            let _ = stopped_rx.await;
        })
        .await
    }
}

async fn game_socket(
    State(shared): State<Arc<Shared>>,
    Path(land_type): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    extensions: Extensions,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let hard_limit = transport::hard_frame_limit(&shared.config.limits);
    // Every log line of the connection carries the client's address (through a
    // trusted load balancer: from X-Forwarded-For). Servers embedded without
    // connect info log the address as unknown.
    let client_ip = extensions.get::<ConnectInfo<SocketAddr>>().map(|info| {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok());
        shared
            .config
            .trusted_proxies
            .client_ip(info.0.ip(), forwarded)
    });
    if let Some(client_ip) = client_ip
        && let Err(retry_after) = shared.new_sockets.check(&client_ip)
    {
        tracing::debug!(%client_ip, %land_type, "new game socket rate limited");
        return rate_limited(retry_after);
    }
    let span = tracing::info_span!(
        "game_socket",
        client_ip = %client_ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
        land_type = %land_type,
    );
    // Small buffers: an idle connection costs little memory, and the frame limits let a
    // larger frame be refused (1009) from its header instead of being buffered.
    upgrade
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            async move {
                let _open = shared.open_sockets.open();
                transport::serve_connection(socket, Arc::clone(&shared), land_type, query).await;
            }
            .instrument(span)
        })
}

/// 429 `RATE_LIMITED` with `Retry-After`, answered before the upgrade.
fn rate_limited(retry_after: RetryAfter) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: ErrorCode::RateLimited,
            message: "too many new connections from this address; see Retry-After".to_owned(),
        },
    };
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, retry_after.header_seconds())],
        Json(body),
    )
        .into_response()
}

async fn health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let load = shared.manager.load();
    Json(GameServerHealth {
        status: if load.draining { "draining" } else { "ok" }.to_owned(),
        server_id: shared.config.server_id.clone(),
        land_types: shared
            .manager
            .registry()
            .names()
            .map(str::to_owned)
            .collect(),
        lands: load.lands,
        players: load.players,
    })
}

/// Lets an admin request through, or answers 401 `UNAUTHENTICATED` with
/// `WWW-Authenticate: Bearer`.
async fn require_admin(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    // The TCP peer, never X-Forwarded-For: a header cannot make a caller local.
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let caller = AdminCaller {
        presented: bearer(request.headers()),
        peer,
        proxied: is_proxied(request.headers()),
    };
    match admin_refusal(&shared.config.admin_tokens, &caller) {
        None => next.run(request).await,
        Some(message) => unauthenticated(message),
    }
}

/// What the admin check looks at in a request.
struct AdminCaller<'a> {
    presented: Option<&'a str>,
    peer: Option<IpAddr>,
    /// Forwarded by a proxy: its loopback address says nothing about who is behind it.
    proxied: bool,
}

/// Why an admin request is refused, or `None` when it may proceed.
fn admin_refusal(tokens: &[Secret], caller: &AdminCaller<'_>) -> Option<&'static str> {
    if tokens.is_empty() {
        let local = caller.peer.is_some_and(is_loopback) && !caller.proxied;
        return (!local).then_some(
            "the admin routes answer only to loopback clients until the server has an admin token",
        );
    }
    match caller.presented {
        // Check every entry so timing does not tell which one matched.
        Some(presented) => (!tokens
            .iter()
            .fold(false, |found, token| token.matches(presented) | found))
        .then_some("the admin token is not valid"),
        None => Some("this endpoint needs Authorization: Bearer <admin token>"),
    }
}

/// 127.0.0.0/8 and ::1, also written as IPv4-mapped IPv6 (a dual-stack listener).
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// A load balancer on the same host (nginx in front of `/admin/`) connects from
/// loopback on behalf of remote clients; it names them in these headers.
fn is_proxied(headers: &HeaderMap) -> bool {
    ["x-forwarded-for", "forwarded", "x-real-ip"]
        .iter()
        .any(|name| headers.contains_key(*name))
}

fn unauthenticated(message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: ErrorCode::Unauthenticated,
            message: message.to_owned(),
        },
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(body),
    )
        .into_response()
}

async fn admin_lands(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(AdminLands {
        server_id: shared.config.server_id.clone(),
        draining: shared.manager.is_draining(),
        sync_stretch: shared.manager.sync_stretch(),
        lands: shared.manager.lands(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-admin";

    fn caller<'a>(presented: Option<&'a str>, peer: &str, proxied: bool) -> AdminCaller<'a> {
        AdminCaller {
            presented,
            peer: Some(peer.parse().unwrap()),
            proxied,
        }
    }

    #[test]
    fn without_a_token_only_direct_loopback_peers_are_admitted() {
        for local in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                admin_refusal(&[], &caller(None, local, false)),
                None,
                "{local}"
            );
        }
        for remote in [
            "10.0.0.1",
            "192.168.1.10",
            "203.0.113.7",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "0.0.0.0",
            "::",
        ] {
            assert!(
                admin_refusal(&[], &caller(None, remote, false)).is_some(),
                "{remote}"
            );
        }
        // A token is no use when none is configured, and a proxy on loopback speaks for others.
        assert!(admin_refusal(&[], &caller(Some(TOKEN), "10.0.0.1", false)).is_some());
        assert!(admin_refusal(&[], &caller(None, "127.0.0.1", true)).is_some());
        let unknown = AdminCaller {
            presented: None,
            peer: None,
            proxied: false,
        };
        assert!(admin_refusal(&[], &unknown).is_some());
    }

    #[test]
    fn with_tokens_any_of_them_is_required_from_everywhere() {
        let tokens = [
            Secret::new(TOKEN, "admin token").unwrap(),
            Secret::new("fedcba9876543210-next", "admin token").unwrap(),
        ];
        assert!(admin_refusal(&tokens, &caller(None, "127.0.0.1", false)).is_some());
        assert!(
            admin_refusal(
                &tokens,
                &caller(Some("wrong-token-0123456"), "127.0.0.1", false)
            )
            .is_some()
        );
        assert_eq!(
            admin_refusal(&tokens, &caller(Some(TOKEN), "203.0.113.7", true)),
            None
        );
        assert_eq!(
            admin_refusal(
                &tokens,
                &caller(Some("fedcba9876543210-next"), "10.0.0.1", false)
            ),
            None
        );
    }

    #[test]
    fn proxy_headers_mark_a_request_as_forwarded() {
        let mut headers = HeaderMap::new();
        assert!(!is_proxied(&headers));
        headers.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
        assert!(is_proxied(&headers));
    }
}
