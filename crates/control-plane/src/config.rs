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
    /// Servers not heard from within this are lost: no allocations, and the
    /// tickets they stranded are requeued.
    pub server_ttl: Duration,
    /// The heartbeat interval game servers are told to keep (in the register
    /// answer); a server late by more than two intervals is suspect.
    pub heartbeat_interval: Duration,
    /// Requeue the tickets of a lost server (otherwise they end as `failed`).
    pub requeue_on_server_loss: bool,
    /// Also requeue tickets whose players had joined a land on the lost server
    /// (they get `match.lost` either way).
    pub requeue_joined: bool,
    /// Queued tickets older than this become `expired`.
    pub ticket_ttl: Duration,
    /// Lifetime of an assignment and its match tokens.
    pub assignment_ttl: Duration,
    /// How often queues are re-matched (relaxation, retries) and expiries checked.
    pub match_tick: Duration,
    /// How long finished (assigned/cancelled/expired) tickets stay readable.
    pub retention: Duration,
    /// Memory the embedded (redb) store may use to cache its pages. redb's own
    /// default is 1 GiB, which a busy store fills: the process' footprint then
    /// grows with the retained tickets, not with the load.
    pub store_cache_bytes: usize,
    pub issuer: String,
    pub audience: String,
    pub signing: SigningConfig,
    pub placement: Placement,
    /// Proxies whose `X-Forwarded-For` names the real client (for logs and limits).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins (`https://game.example`) whose pages may call the REST API
    /// cross-origin (`--cors-origin`); empty: same-origin only.
    pub cors_origins: Vec<String>,
    /// Queue profiles for the matchmaking engine (the `[[queue]]` tables of `--config`)
    /// and the rule for keys without one (`--queue-key-rule`); the matcher and the
    /// enqueue check both run engines built from it, so they always agree.
    pub engine: matchplane_matchmaker::EngineConfig,
    /// With queue profiles configured, accept queue keys that match no profile
    /// (otherwise they get 404 `QUEUE_NOT_FOUND`).
    pub open_queues: bool,
    /// Bearer token for `/v1/admin/*` and the internal API.
    pub admin_token: CredentialSource,
    /// Bearer token game servers present to register and deregister.
    pub registration_token: CredentialSource,
    /// Who players are: anyone (`none`, development) or the holder of a player JWT.
    pub player_auth: PlayerAuth,
    /// Timeouts and connection caps of the HTTP listener.
    pub serve_limits: matchplane_edge::serve::ServeLimits,
    /// Requests / new sockets per second per client IP and per player (burst 2N).
    pub rate_limit: matchplane_edge::ratelimit::RateLimit,
    /// Serve `/metrics` on this address instead of the public listener.
    pub metrics_bind: Option<SocketAddr>,
    /// What this process does among replicas sharing a Redis store (`--role`).
    pub role: Role,
    /// How long a per-queue matcher lease lasts unless renewed (`--matcher-lease`;
    /// Redis store only): a dead matcher's queues move within about twice this.
    pub matcher_lease: Duration,
    /// How often the dashboard's per-queue history takes a sample.
    pub history_sample_every: Duration,
}

/// `--role all|api|matcher`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Serves the API and matches.
    #[default]
    All,
    /// Serves HTTP and WebSockets, never matches: another replica's matcher
    /// learns its tickets from the shared store's event feed.
    Api,
    /// Only matches; its listener serves `/health` and `/metrics`, nothing else.
    Matcher,
}

impl Role {
    pub fn matches(self) -> bool {
        matches!(self, Self::All | Self::Matcher)
    }

    pub fn serves_api(self) -> bool {
        matches!(self, Self::All | Self::Api)
    }
}

/// Where a shared secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// Given on the command line or in the environment.
    Value(String),
    /// Read from this file (first line, trimmed).
    File(PathBuf),
    /// Generated on first start into `<data-dir>/<name>` (0600), or in memory with `--ephemeral`.
    Generate,
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret, not even in a debug dump of the config.
        match self {
            Self::Value(_) => f.write_str("Value(<redacted>)"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Generate => f.write_str("Generate"),
        }
    }
}

/// `--player-auth none|jwt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayerAuth {
    /// Anyone may enqueue for any player id (the seed's development mode).
    None,
    /// A player JWT from the identity provider is required; its `sub` is the player.
    Jwt {
        jwks_url: String,
        issuer: String,
        audience: String,
    },
}

/// The embedded store's page cache unless `--store-cache` says otherwise.
pub const DEFAULT_STORE_CACHE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub enum StorageConfig {
    /// redb file in this directory (created if missing); keys live beside it.
    Durable { data_dir: PathBuf },
    /// Everything in memory; lost on exit. For tests and demos.
    Ephemeral,
    /// Tickets, assignments and the server registry in Redis, shared by every
    /// replica on the same `url` (`redis://[:PASSWORD@]HOST:PORT[/DB]` or
    /// `rediss://`). So are the signing keys unless `--signing-key` is given;
    /// generated credentials stay in `data_dir`.
    Redis { url: String, data_dir: PathBuf },
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Durable { data_dir } => f
                .debug_struct("Durable")
                .field("data_dir", data_dir)
                .finish(),
            Self::Ephemeral => f.write_str("Ephemeral"),
            // A Redis URL may carry a password: show where, never the credentials.
            Self::Redis { url, data_dir } => f
                .debug_struct("Redis")
                .field("url", &redact_url_credentials(url))
                .field("data_dir", data_dir)
                .finish(),
        }
    }
}

/// `scheme://user:password@host/…` → `scheme://***@host/…`.
pub fn redact_url_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
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
    /// Register and heartbeat bodies list every land open on the server (about 45
    /// bytes each for hero-defense), so a busy server outgrows `max_body_bytes`
    /// (1,666 lands already did): they get their own limit. Only a caller holding
    /// the registration credential has its body read at all.
    pub max_register_body_bytes: usize,
    pub max_members: usize,
    pub max_string_len: usize,
    pub max_map_entries: usize,
    /// `constraints` serialized as compact JSON; a ticket is kept in memory
    /// while queued, so this bounds what one client can park there.
    pub max_constraints_bytes: usize,
    /// Nesting of arrays/objects in `constraints` (`{"a":[1]}` is 2).
    pub max_constraints_depth: usize,
    /// Bytes of names plus values within each of `attributes`, `stringArgs`,
    /// `tags` and `latencies`.
    pub max_fields_bytes: usize,
    /// Largest magnitude of an attribute value; keeps skill sums finite.
    pub max_attribute_magnitude: f64,
    /// Finished tickets kept for `status` at most, on top of the retention
    /// time: the oldest go first, so a burst cannot grow the store (all in
    /// memory with `--ephemeral`) without bound.
    pub max_finished_tickets: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_register_body_bytes: 8 * 1024 * 1024,
            max_members: 16,
            max_string_len: 128,
            max_map_entries: 32,
            max_constraints_bytes: 4 * 1024,
            max_constraints_depth: 8,
            max_fields_bytes: 4 * 1024,
            max_attribute_magnitude: matchplane_matchmaker::MAX_SKILL_MAGNITUDE,
            max_finished_tickets: 1_000_000,
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
            server_ttl: Duration::from_secs(6),
            heartbeat_interval: Duration::from_secs(2),
            requeue_on_server_loss: true,
            requeue_joined: true,
            ticket_ttl: Duration::from_secs(600),
            assignment_ttl: Duration::from_secs(60),
            match_tick: Duration::from_millis(100),
            retention: Duration::from_secs(3600),
            store_cache_bytes: DEFAULT_STORE_CACHE_BYTES,
            issuer: "matchplane".to_owned(),
            audience: "matchplane-game".to_owned(),
            signing: SigningConfig {
                algorithm: SigningAlgorithm::Es256,
                key_pem: None,
            },
            placement: Placement::Spread,
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            engine: matchplane_matchmaker::EngineConfig::default(),
            open_queues: false,
            admin_token: CredentialSource::Generate,
            registration_token: CredentialSource::Generate,
            player_auth: PlayerAuth::None,
            serve_limits: matchplane_edge::serve::ServeLimits::default(),
            rate_limit: matchplane_edge::ratelimit::RateLimit::default(),
            metrics_bind: None,
            role: Role::All,
            matcher_lease: Duration::from_secs(5),
            history_sample_every: Duration::from_secs(2),
        }
    }

    /// In-memory store on 127.0.0.1 with an OS-chosen port: what tests want.
    /// Credentials are generated in memory (`ControlPlane::admin_token` and
    /// `registration_token` tell them); rate limits are off so tests that are
    /// not about limits cannot trip them.
    pub fn ephemeral_for_tests() -> Self {
        let mut config = Self::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            StorageConfig::Ephemeral,
        );
        config.rate_limit = matchplane_edge::ratelimit::RateLimit::Off;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_passwords_never_reach_debug_output() {
        let storage = StorageConfig::Redis {
            url: "redis://:s3cret@127.0.0.1:6379/0".to_owned(),
            data_dir: PathBuf::from("d"),
        };
        let shown = format!("{storage:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("127.0.0.1:6379"), "{shown}");
        assert_eq!(redact_url_credentials("redis://h:1"), "redis://h:1");
    }
}
