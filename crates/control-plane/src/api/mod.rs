//! HTTP routes of the control plane.

mod admin;
pub mod cors;
mod dashboard;
pub mod error;
pub mod limits;
mod matchmaking;
pub mod openapi;
mod play;
mod provisioning;
mod realtime;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use matchplane_contracts::ErrorCode;

use crate::clock::{Clock, Millis};
use crate::config::Config;
use crate::events::EventBus;
use crate::matcher::MatcherHandle;
use crate::registry::Registry;
use crate::store::Store;
use crate::tokens::TokenIssuer;

pub use error::{ApiError, ApiJson, ApiPath, Plain, Provisioning};

/// Everything a request handler may touch. One `Arc`: axum clones the state
/// for every extractor of every request, and one reference count is cheaper
/// to bump from both cores than a dozen.
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl AppState {
    pub fn new(shared: SharedState) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

pub struct SharedState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub matcher: MatcherHandle,
    pub issuer: Arc<TokenIssuer>,
    pub events: EventBus,
    pub clock: Arc<dyn Clock>,
    pub started_at: Millis,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// An engine with the same profiles but no pools: checks a ticket can ever
    /// be matched in its queue before it is stored (the matcher owns the real one).
    pub ticket_rules: Arc<parking_lot::Mutex<matchplane_matchmaker::Engine>>,
    /// Credentials: admin, registration, player identity.
    pub auth: Arc<crate::auth::Auth>,
    /// Token buckets per client address and per player (`--rate-limit`).
    pub request_limits: Arc<limits::RequestLimits>,
    /// Flips to `true` when the server shuts down; long-lived sockets close on it.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// This replica among those sharing the store (`/v1/admin/cluster`).
    pub cluster: Arc<crate::cluster::Cluster>,
    /// Recent matches and per-queue samples for the dashboard.
    pub history: Arc<crate::history::History>,
}

pub fn router(state: AppState) -> Router {
    if !state.config.role.serves_api() {
        return matcher_role_router(state);
    }
    let body_limit = state.config.limits.max_body_bytes;
    let trusted = Arc::new(crate::client_ip::TrustedProxies::new(
        state.config.trusted_proxies.clone(),
    ));
    let request_limits = Arc::clone(&state.request_limits);
    let per_client_ip = move || {
        axum::middleware::from_fn_with_state(Arc::clone(&request_limits), limits::per_client_ip)
    };
    Router::new()
        .route("/health", get(admin::health))
        .route("/.well-known/jwks.json", get(admin::jwks))
        .merge(openapi::docs_router())
        .merge(public_metrics(&state))
        .route("/realtime", get(realtime::upgrade).layer(per_client_ip()))
        .route(
            "/v1/matchmaking/enqueue",
            post(matchmaking::enqueue).layer(per_client_ip()),
        )
        .route(
            "/v1/matchmaking/status/{ticket_id}",
            get(matchmaking::status).layer(per_client_ip()),
        )
        .route(
            "/v1/matchmaking/cancel",
            post(matchmaking::cancel).layer(per_client_ip()),
        )
        .route(
            "/v1/provisioning/servers/register",
            post(provisioning::register).layer(DefaultBodyLimit::max(
                state.config.limits.max_register_body_bytes,
            )),
        )
        .route(
            "/v1/provisioning/servers/{server_id}",
            delete(provisioning::deregister),
        )
        .route("/v1/admin/servers", get(admin::servers))
        .route("/v1/admin/cluster", get(admin::cluster))
        .route("/v1/admin/queue/summary", get(admin::queue_summary))
        .route("/v1/admin/queue/history", get(admin::queue_history))
        .route("/v1/admin/matches/recent", get(admin::recent_matches))
        .route("/dashboard", get(dashboard::page))
        .route("/play", get(play::page))
        .route("/play/sdk.js", get(play::sdk))
        .route("/v1/admin/keys/rotate", post(admin::rotate_key))
        .route("/v1/internal/backfill", post(admin::backfill))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        // Outside the routes, so a preflight is answered here and never rate limited.
        .layer(tower::util::option_layer(cors::layer(
            &state.config.cors_origins,
        )))
        .layer(axum::middleware::from_fn_with_state(
            trusted,
            crate::client_ip::access_log,
        ))
        .with_state(state)
}

/// A `--role matcher` process serves health and metrics, nothing else.
fn matcher_role_router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(admin::health))
        .merge(public_metrics(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// `/metrics` on the public listener, unless `--metrics-bind` moved it away.
fn public_metrics(state: &AppState) -> Router<AppState> {
    if state.config.metrics_bind.is_some() {
        Router::new()
    } else {
        Router::new().route("/metrics", get(admin::metrics))
    }
}

/// What the `--metrics-bind` listener serves: `/metrics` and nothing else.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(admin::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found(ErrorCode::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}
