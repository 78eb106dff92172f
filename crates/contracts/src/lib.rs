//! Wire types of matchplane: the REST bodies, envelopes, error codes, WebSocket
//! messages of both planes and the match-token claims. Serde only: no I/O, no clocks.
//!
//! Field names are the seed's wire contract (camelCase); extend additively only.
#![forbid(unsafe_code)]

pub mod admin;
pub mod binary_state;
pub mod error;
pub mod forwarded;
pub mod game;
pub mod internal;
pub mod jwks;
pub mod matchmaking;
pub mod provisioning;
pub mod realtime;
pub mod token;

pub use error::{ErrorBody, ErrorCode, ErrorDetail, ProvisioningError, ProvisioningResponse};
