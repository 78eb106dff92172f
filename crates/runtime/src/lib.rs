#![forbid(unsafe_code)]
//! matchplane's runtime plane: the framework for authoritative game servers.
//!
//! A game implements [`Land`] (typed state, actions, events and hooks); a
//! [`GameServer`] hosts land types from a [`LandRegistry`] at `/game/{landType}`, and
//! its [`LandManager`] creates one keeper task per land id on the first admitted join.
//! Players receive their view of the state as `join.ok`, then RFC 6902 patches. See
//! `docs/runtime.md` (programming model) and `docs/runtime-protocol.md` (wire protocol).

mod auth;
mod core;
pub mod counter;
mod diff;
mod flat;
mod frame;
mod harness;
mod jwks;
mod keeper;
mod land;
mod manager;
mod provisioning;
mod server;
mod shedding;
mod transport;

pub use auth::{Admission, AdmissionRequest, Authenticator, DevAuthenticator, Rejection};
pub use core::SyncEncoding;
pub use harness::LandHarness;
pub use jwks::{JwksAuthenticator, JwksError, JwksSettings};
pub use land::{
    ActionError, CreateInfo, Ctx, JoinRejection, Land, LandSettings, LeaveReason, PlayerId,
};
pub use manager::{LandManager, LandRegistry, LoadSnapshot};
/// The registration token type of [`ProvisioningSettings`], re-exported for embedders.
pub use matchplane_edge::secret::Secret;
pub use provisioning::{
    ADOPTED_HEARTBEAT_BOUNDS, ProvisioningAgent, ProvisioningError, ProvisioningSettings,
};
pub use server::{GameServer, GameServerConfig};
pub use shedding::DEFAULT_MAX_SYNC_STRETCH;
pub use transport::ConnectionLimits;
