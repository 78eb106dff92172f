//! The client's address as seen through trusted proxies, and an access log.
//!
//! Behind a load balancer every connection comes from the balancer, so the
//! real client is in `X-Forwarded-For` (see `matchplane_contracts::forwarded`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
pub use matchplane_contracts::forwarded::TrustedProxies;

/// The resolved client address, available to handlers as an extension.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// Resolves the client address and logs one line per request (debug level,
/// warn for server errors, so load tests do not drown the log).
pub async fn access_log(
    State(trusted): State<Arc<TrustedProxies>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let forwarded = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok());
    let client_ip = trusted.client_ip(peer.ip(), forwarded);
    request.extensions_mut().insert(ClientIp(client_ip));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if response.status().is_server_error() {
        tracing::warn!(%client_ip, %method, path, status, micros, "request failed");
    } else {
        tracing::debug!(%client_ip, %method, path, status, micros, "request");
    }
    response
}
