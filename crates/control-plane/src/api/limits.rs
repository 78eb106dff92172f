//! Request rate limits: token buckets per client address (behind trusted
//! proxies: the forwarded client) and per player, both sized by `--rate-limit`.
//!
//! The per-address limit is a route layer on the matchmaking endpoints and on
//! `/realtime` (checked before the upgrade, so it limits new sockets, not the
//! messages of an open one). Health, JWKS, admin and provisioning are not
//! limited here: the last two are authenticated.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use matchplane_edge::ratelimit::{KeyedLimiter, RateLimit};

use super::error::{ApiError, Envelope, Plain};
use crate::client_ip::ClientIp;

/// The buckets of one control plane.
#[derive(Debug)]
pub struct RequestLimits {
    per_client_ip: KeyedLimiter<IpAddr>,
    per_player: KeyedLimiter<String>,
}

impl RequestLimits {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            per_client_ip: KeyedLimiter::new(limit),
            per_player: KeyedLimiter::new(limit),
        }
    }

    /// Takes a token from the client address's bucket.
    pub fn check_client_ip<E: Envelope>(&self, client_ip: IpAddr) -> Result<(), ApiError<E>> {
        self.per_client_ip
            .check(&client_ip)
            .map_err(ApiError::rate_limited)
    }

    /// Takes a token from the player's bucket (the authenticated player, so one
    /// player cannot spread a flood over many addresses).
    pub fn check_player<E: Envelope>(&self, player_id: &str) -> Result<(), ApiError<E>> {
        // Allocating the key only for a real check keeps `--rate-limit off` free.
        if !self.per_player.is_enabled() {
            return Ok(());
        }
        self.per_player
            .check(&player_id.to_owned())
            .map_err(ApiError::rate_limited)
    }
}

/// Route layer: refuses with 429 `RATE_LIMITED` and `Retry-After` once the
/// client address has spent its bucket. Needs `client_ip::access_log` outside it.
pub async fn per_client_ip(
    State(limits): State<Arc<RequestLimits>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(ClientIp(client_ip)) = request.extensions().get::<ClientIp>().copied()
        && let Err(refused) = limits.check_client_ip::<Plain>(client_ip)
    {
        tracing::debug!(%client_ip, path = request.uri().path(), "rate limited");
        return refused.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn over_the_limit_is_429_with_retry_after() {
        let limits = RequestLimits::new(RateLimit::PerSecond(NonZeroU32::MIN));
        let ip: IpAddr = [192, 0, 2, 1].into();
        assert!(limits.check_client_ip::<Plain>(ip).is_ok());
        assert!(limits.check_client_ip::<Plain>(ip).is_ok());
        let refused = limits.check_client_ip::<Plain>(ip).unwrap_err();
        let response = refused.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after = response.headers()[axum::http::header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        assert!(retry_after >= 1);
        assert!(limits.check_player::<Plain>("p1").is_ok());
        assert!(limits.check_player::<Plain>("p1").is_ok());
        assert!(limits.check_player::<Plain>("p1").is_err());
        assert!(limits.check_player::<Plain>("p2").is_ok());
    }

    #[test]
    fn off_never_refuses() {
        let limits = RequestLimits::new(RateLimit::Off);
        for _ in 0..1000 {
            assert!(
                limits
                    .check_client_ip::<Plain>([192, 0, 2, 1].into())
                    .is_ok()
            );
            assert!(limits.check_player::<Plain>("p1").is_ok());
        }
    }
}
