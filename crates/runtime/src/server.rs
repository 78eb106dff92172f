//! The game server: routes, health, admin, graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Path, Query, State, WebSocketUpgrade};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use matchplane_contracts::forwarded::TrustedProxies;
use matchplane_contracts::game::{AdminLands, GameServerHealth};
use matchplane_contracts::{ErrorBody, ErrorCode, ErrorDetail};
use matchplane_edge::ratelimit::{KeyedLimiter, RateLimit, RetryAfter};
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
    pub limits: ConnectionLimits,
    /// Most lands this server runs at once (`--max-lands`); `None`: no limit.
    pub max_lands: Option<usize>,
    /// How long shutdown waits for lands to say goodbye before the process exits anyway.
    pub shutdown_timeout: Duration,
    /// Load balancers whose `X-Forwarded-For` names the real client (for logs and limits).
    pub trusted_proxies: TrustedProxies,
    /// Header/idle timeouts and connection caps of the HTTP listener.
    pub serve_limits: ServeLimits,
    /// New game sockets per second per client address (burst 2N).
    pub rate_limit: RateLimit,
}

impl Default for GameServerConfig {
    fn default() -> Self {
        Self {
            server_id: format!("game-{}", uuid::Uuid::new_v4().simple()),
            limits: ConnectionLimits::default(),
            max_lands: None,
            shutdown_timeout: Duration::from_secs(10),
            trusted_proxies: TrustedProxies::default(),
            serve_limits: ServeLimits::default(),
            rate_limit: RateLimit::default(),
        }
    }
}

/// Read and write buffer of each WebSocket connection.
const WS_BUFFER_BYTES: usize = 8 * 1024;

pub(crate) struct Shared {
    pub(crate) manager: LandManager,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) config: GameServerConfig,
    /// Buckets of new game sockets per client address.
    pub(crate) new_sockets: KeyedLimiter<IpAddr>,
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
                manager: LandManager::with_max_lands(
                    registry,
                    config.max_lands.unwrap_or(usize::MAX),
                ),
                auth,
                new_sockets: KeyedLimiter::new(config.rate_limit),
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

    /// `GET /game/{landType}` (WebSocket), `GET /health`, `GET /admin/lands`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/game/{land_type}", get(game_socket))
            .route("/health", get(health))
            .route("/admin/lands", get(admin_lands))
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
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutdown requested");
            if !manager.shutdown("server_shutdown", timeout).await {
                tracing::warn!(?timeout, "lands did not all close in time");
            }
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
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            transport::serve_connection(socket, shared, land_type, query).instrument(span)
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

async fn admin_lands(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(AdminLands {
        server_id: shared.config.server_id.clone(),
        draining: shared.manager.is_draining(),
        lands: shared.manager.lands(),
    })
}
