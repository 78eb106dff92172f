//! Control-plane settings. The CLI maps flags and `MATCHPLANE_*` variables onto this.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::keys::SigningAlgorithm;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub storage: StorageConfig,
    pub limits: Limits,
    /// Servers not heard from within this are not allocated to.
    pub server_ttl: Duration,
    /// Queued tickets older than this become `expired`.
    pub ticket_ttl: Duration,
    /// Lifetime of an assignment and its match tokens.
    pub assignment_ttl: Duration,
    /// How often queues are re-matched (relaxation, retries) and expiries checked.
    pub match_tick: Duration,
    /// How long finished (assigned/cancelled/expired) tickets stay readable.
    pub retention: Duration,
    pub issuer: String,
    pub audience: String,
    pub signing: SigningConfig,
    pub placement: Placement,
    /// Proxies whose `X-Forwarded-For` names the real client (for logs and limits).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Queue profiles for the matchmaking engine (the `[[queue]]` tables of `--config`).
    pub engine: matchplane_matchmaker::EngineConfig,
}

#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// redb file in this directory (created if missing); keys live beside it.
    Durable { data_dir: PathBuf },
    /// Everything in memory; lost on exit. For tests and demos.
    Ephemeral,
}

#[derive(Debug, Clone)]
pub struct SigningConfig {
    /// Algorithm for keys this process generates.
    pub algorithm: SigningAlgorithm,
    /// A PEM private key to use instead of generated ones (shared by replicas).
    pub key_pem: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Least-loaded server first.
    Spread,
    /// Most-loaded server that still has room first.
    Pack,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_members: usize,
    pub max_string_len: usize,
    pub max_map_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_members: 16,
            max_string_len: 128,
            max_map_entries: 32,
        }
    }
}

impl Config {
    /// Defaults for a listener on `listen` with the given storage.
    pub fn new(listen: SocketAddr, storage: StorageConfig) -> Self {
        Self {
            listen,
            storage,
            limits: Limits::default(),
            server_ttl: Duration::from_secs(90),
            ticket_ttl: Duration::from_secs(600),
            assignment_ttl: Duration::from_secs(60),
            match_tick: Duration::from_millis(100),
            retention: Duration::from_secs(3600),
            issuer: "matchplane".to_owned(),
            audience: "matchplane-game".to_owned(),
            signing: SigningConfig {
                algorithm: SigningAlgorithm::Es256,
                key_pem: None,
            },
            placement: Placement::Spread,
            trusted_proxies: Vec::new(),
            engine: matchplane_matchmaker::EngineConfig::default(),
        }
    }

    /// In-memory store on 127.0.0.1 with an OS-chosen port: what tests want.
    pub fn ephemeral_for_tests() -> Self {
        Self::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            StorageConfig::Ephemeral,
        )
    }
}
