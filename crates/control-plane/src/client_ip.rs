//! The client's address as seen through trusted proxies, and an access log.
//!
//! Behind a load balancer every connection comes from the balancer, so the
//! real client is in `X-Forwarded-For`. That header is only believed when the
//! peer is a configured trusted proxy; then the address is the right-most entry
//! that is not itself a trusted proxy (entries further left are client-supplied
//! and could be forged).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

/// Networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    /// Parses `10.0.0.1`, `10.0.0.0/8` or `::1`.
    pub fn parse_entry(entry: &str) -> Result<IpNet, String> {
        let entry = entry.trim();
        if let Ok(net) = entry.parse::<IpNet>() {
            return Ok(net);
        }
        entry
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{entry:?} is neither an IP address nor a CIDR network"))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The address to attribute a request to.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        forwarded
            .iter()
            .rev()
            .copied()
            .find(|ip| !self.trusts(*ip))
            .or_else(|| forwarded.first().copied())
            .unwrap_or(peer)
    }
}

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
    let client_ip = trusted.client_ip(peer.ip(), request.headers());
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_only_believed_from_trusted_proxies() {
        let trusted = TrustedProxies::new(vec![
            TrustedProxies::parse_entry("127.0.0.1").unwrap(),
            TrustedProxies::parse_entry("10.0.0.0/8").unwrap(),
        ]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9, 10.1.2.3"),
        );
        // From the trusted LB: right-most untrusted entry.
        assert_eq!(
            trusted.client_ip(ip("127.0.0.1"), &headers),
            ip("203.0.113.9")
        );
        // From anyone else: the header is ignored.
        assert_eq!(
            trusted.client_ip(ip("198.51.100.1"), &headers),
            ip("198.51.100.1")
        );
        // Trusted peer without the header: the peer itself.
        assert_eq!(
            trusted.client_ip(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        assert!(TrustedProxies::parse_entry("nope").is_err());
    }
}
