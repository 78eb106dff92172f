//! The public edge of both planes: what every listener and every credential
//! check shares, so the control plane and the game server harden alike.
//!
//! - `serve` — the accept loop: header-read and idle timeouts, per-IP and total
//!   connection caps with a clean refusal, graceful shutdown.
//! - `ratelimit` — keyed token buckets (per client IP, per player) with `Retry-After`.
//! - `secret` — bearer credentials: loading, generating into 0600 files, constant-time checks.
//! - `jwks` — a JWKS key cache with refetch cooldown (match tokens, player tokens).
//! - `ws` — what a failed WebSocket read means (gone, too big, malformed).
#![forbid(unsafe_code)]

pub mod jwks;
pub mod ratelimit;
pub mod secret;
pub mod serve;
pub mod ws;
