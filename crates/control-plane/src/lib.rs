//! The matchplane control plane: ticket queue, matching loop, game-server
//! registry, allocation, match tokens and JWKS. It never runs game logic.
//!
//! Start one with [`ControlPlane::start`]; see ARCHITECTURE.md for the map.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod client_ip;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod events;
pub mod feed;
pub mod history;
pub mod keys;
pub mod matcher;
pub mod metrics;
pub mod recovery;
pub mod registry;
pub mod server;
mod sharded;
pub mod store;
pub mod tokens;
pub mod validate;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    Config, CredentialSource, Limits, Placement, PlayerAuth, Role, SigningConfig, StorageConfig,
};
pub use keys::SigningAlgorithm;
pub use server::{ControlPlane, StartError};
