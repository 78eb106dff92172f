//! `matchplane control-plane`: flags, config file and key rotation.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use matchplane_control_plane::{
    Config, ControlPlane, CredentialSource, Placement, PlayerAuth, Role, SigningAlgorithm,
    StorageConfig, clock::Clock as _, clock::SystemClock, clock::duration_ms, keys,
};

use crate::duration::parse_duration;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ControlPlaneArgs {
    #[command(subcommand)]
    command: Option<ControlPlaneCommand>,

    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum ControlPlaneCommand {
    /// Make a new signing key current; the previous one stays in the JWKS until its tokens expire.
    RotateKey(RotateKeyArgs),
    /// Show what a stopped control plane's data dir holds: tickets, and the
    /// pages and bytes of each table (for sizing disks and retention).
    StoreStats(StoreStatsArgs),
}

#[derive(Debug, Args)]
struct StoreStatsArgs {
    #[arg(long, env = "MATCHPLANE_DATA_DIR", default_value = "./matchplane-data")]
    data_dir: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Port to listen on; 0 picks a free port (the bound address is logged).
    #[arg(long, env = "MATCHPLANE_PORT", default_value_t = 3000)]
    port: u16,
    /// Address to bind.
    #[arg(long, env = "MATCHPLANE_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Directory for the embedded store and the signing keys.
    #[arg(long, env = "MATCHPLANE_DATA_DIR", default_value = "./matchplane-data")]
    data_dir: PathBuf,
    /// Keep everything in memory (nothing survives a restart). For tests and demos.
    #[arg(long, env = "MATCHPLANE_EPHEMERAL", conflicts_with = "redis_url")]
    ephemeral: bool,
    /// Keep tickets, assignments and the server registry in Redis
    /// (`redis://[:PASSWORD@]HOST:PORT[/DB]`, or `rediss://` for TLS) so replicas share them.
    /// Signing keys stay in --data-dir for now: give every replica the same --signing-key.
    #[arg(long, env = "MATCHPLANE_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// What this replica does: `all` (API and matching), `api` (HTTP and WebSockets, never
    /// matches) or `matcher` (matches; serves only /health and /metrics). `api` and `matcher`
    /// need --redis-url: replicas learn each other's tickets and events from Redis.
    #[arg(long, env = "MATCHPLANE_ROLE", default_value = "all")]
    role: RoleArg,
    /// With --redis-url: how long a replica's per-queue matcher lease lasts unless renewed
    /// (renewed every third of it). One replica matches a queue at a time; a dead one's
    /// queues are taken over within about twice this.
    #[arg(long, env = "MATCHPLANE_MATCHER_LEASE", default_value = "5s", value_parser = parse_duration)]
    matcher_lease: Duration,
    /// TOML file with queue profiles (`[[queue]]` tables); see docs/matchmaking.md.
    #[arg(long, env = "MATCHPLANE_CONFIG")]
    config: Option<PathBuf>,
    /// PEM private key (P-256 or Ed25519) to sign with instead of generated keys; share it between replicas.
    #[arg(long, env = "MATCHPLANE_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// Algorithm for generated signing keys.
    #[arg(long, env = "MATCHPLANE_SIGNING_ALG", default_value = "es256")]
    signing_alg: SigningAlgorithm,
    /// Token issuer (`iss`).
    #[arg(long, env = "MATCHPLANE_ISSUER", default_value = "matchplane")]
    issuer: String,
    /// Token audience (`aud`).
    #[arg(long, env = "MATCHPLANE_AUDIENCE", default_value = "matchplane-game")]
    audience: String,
    /// Game servers not heard from within this are lost: no new lands, and the tickets
    /// they stranded are requeued (see --requeue-on-server-loss).
    #[arg(long, env = "MATCHPLANE_SERVER_TTL", default_value = "6s", value_parser = parse_duration)]
    server_ttl: Duration,
    /// Heartbeat interval game servers are told to keep (in the register answer); a server
    /// late by more than two intervals is suspect and gets no new lands.
    #[arg(long, env = "MATCHPLANE_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// `on`: tickets stranded by a lost game server go back to their queue (original enqueue
    /// time kept); `off`: they end as `failed` with reason `server_lost`.
    #[arg(long, env = "MATCHPLANE_REQUEUE_ON_SERVER_LOSS", default_value = "on")]
    requeue_on_server_loss: OnOff,
    /// `on`: tickets whose players had joined a land on the lost server are requeued too
    /// (after `match.lost`); `off`: they end as `failed`.
    #[arg(long, env = "MATCHPLANE_REQUEUE_JOINED", default_value = "on")]
    requeue_joined: OnOff,
    /// Queued tickets expire after this.
    #[arg(long, env = "MATCHPLANE_TICKET_TTL", default_value = "10m", value_parser = parse_duration)]
    ticket_ttl: Duration,
    /// Lifetime of an assignment and its match tokens.
    #[arg(long, env = "MATCHPLANE_ASSIGNMENT_TTL", default_value = "60s", value_parser = parse_duration)]
    assignment_ttl: Duration,
    /// How often queues are re-matched and expiries checked.
    #[arg(long, env = "MATCHPLANE_MATCH_TICK", default_value = "100ms", value_parser = parse_duration)]
    match_tick: Duration,
    /// How long finished tickets stay readable through `status`.
    #[arg(long, env = "MATCHPLANE_RETENTION", default_value = "1h", value_parser = parse_duration)]
    retention: Duration,
    /// Finished tickets kept at most (oldest purged first), on top of --retention.
    #[arg(
        long,
        env = "MATCHPLANE_MAX_FINISHED_TICKETS",
        default_value_t = 1_000_000
    )]
    max_finished_tickets: u64,
    /// MiB of memory the embedded store may use to cache its pages (redb's own
    /// default, 1 GiB, made a busy control plane's footprint about that).
    #[arg(long, env = "MATCHPLANE_STORE_CACHE_MIB", default_value_t = 64,
        value_parser = clap::value_parser!(u64).range(1..=65_536))]
    store_cache_mib: u64,
    /// Where new lands go: `spread` (least loaded) or `pack` (fullest with room).
    #[arg(long, env = "MATCHPLANE_PLACEMENT", default_value = "spread")]
    placement: PlacementArg,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "MATCHPLANE_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// Largest register/heartbeat body in bytes: it lists every land open on the
    /// game server (about 45 bytes each), so it has its own, larger limit.
    #[arg(long, env = "MATCHPLANE_MAX_REGISTER_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_register_body_bytes: usize,
    /// Most members one ticket may carry.
    #[arg(long, env = "MATCHPLANE_MAX_MEMBERS", default_value_t = 16)]
    max_members: usize,
    /// A proxy (IP or CIDR) whose X-Forwarded-For names the real client; repeatable or comma-separated.
    #[arg(long = "trusted-proxy", env = "MATCHPLANE_TRUSTED_PROXY", value_delimiter = ',',
        value_parser = matchplane_contracts::forwarded::TrustedProxies::parse_entry)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// An origin (`https://game.example`) whose pages may call the REST API cross-origin
    /// (CORS); repeatable or comma-separated. Default: none, same-origin pages only.
    #[arg(long = "cors-origin", env = "MATCHPLANE_CORS_ORIGIN", value_delimiter = ',',
        value_parser = matchplane_control_plane::api::cors::parse_origin)]
    cors_origins: Vec<String>,
    /// With queue profiles (--config), also accept queue keys that match no profile
    /// (they run the key's default semantics) instead of answering 404 QUEUE_NOT_FOUND.
    #[arg(long, env = "MATCHPLANE_OPEN_QUEUES")]
    open_queues: bool,
    /// How a queue key without a profile becomes teams: `teams` (`standard:2v2` is two teams
    /// of two) or `seed` (as the seed design's control plane: `standard:2v2` or `standard:2` is
    /// one group of two players per land); see docs/matchmaking.md.
    #[arg(long, env = "MATCHPLANE_QUEUE_KEY_RULE", default_value = "teams")]
    queue_key_rule: QueueKeyRuleArg,

    #[command(flatten)]
    credentials: CredentialArgs,

    // The public listener's limits.
    #[command(flatten)]
    listener: crate::listener::ListenerArgs,
    /// Close keep-alive connections with no request in flight after this long (`0` disables).
    #[arg(long, env = "MATCHPLANE_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Serve /metrics on this ADDR:PORT instead of the public listener (where it then answers 404).
    #[arg(long, env = "MATCHPLANE_METRICS_BIND", value_name = "ADDR:PORT")]
    metrics_bind: Option<SocketAddr>,
}

/// Who may call what (docs/security.md).
#[derive(Debug, Args)]
struct CredentialArgs {
    /// Bearer token for /v1/admin/* and the internal API (several comma-separated are all accepted).
    /// Without it or --admin-token-file, one is generated into <data-dir>/admin-token.
    #[arg(long, env = "MATCHPLANE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token(s), one per line.
    #[arg(long, env = "MATCHPLANE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Bearer token game servers register with (several comma-separated are all accepted).
    /// Without it or --registration-token-file, one is generated into <data-dir>/registration-token.
    #[arg(long, env = "MATCHPLANE_REGISTRATION_TOKEN", hide_env_values = true)]
    registration_token: Option<String>,
    /// File holding the registration token(s), one per line (e.g. one per game server).
    #[arg(long, env = "MATCHPLANE_REGISTRATION_TOKEN_FILE")]
    registration_token_file: Option<PathBuf>,
    /// `none`: anyone may queue for any player id (development); `jwt`: enqueue, status,
    /// cancel and /realtime need a player JWT from your identity provider.
    #[arg(long, env = "MATCHPLANE_PLAYER_AUTH", default_value = "none")]
    player_auth: PlayerAuthArg,
    /// JWKS URL of the identity provider that signs player tokens (with --player-auth jwt).
    #[arg(
        long,
        env = "MATCHPLANE_PLAYER_JWKS_URL",
        required_if_eq("player_auth", "jwt")
    )]
    player_jwks_url: Option<String>,
    /// Required `iss` of player tokens.
    #[arg(
        long,
        env = "MATCHPLANE_PLAYER_ISSUER",
        required_if_eq("player_auth", "jwt")
    )]
    player_issuer: Option<String>,
    /// Required `aud` of player tokens.
    #[arg(
        long,
        env = "MATCHPLANE_PLAYER_AUDIENCE",
        required_if_eq("player_auth", "jwt")
    )]
    player_audience: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PlayerAuthArg {
    None,
    Jwt,
}

impl CredentialArgs {
    fn apply(self, config: &mut Config) {
        config.admin_token = source(self.admin_token, self.admin_token_file);
        config.registration_token = source(self.registration_token, self.registration_token_file);
        config.player_auth = match self.player_auth {
            PlayerAuthArg::None => PlayerAuth::None,
            PlayerAuthArg::Jwt => PlayerAuth::Jwt {
                jwks_url: self.player_jwks_url.unwrap_or_default(),
                issuer: self.player_issuer.unwrap_or_default(),
                audience: self.player_audience.unwrap_or_default(),
            },
        };
    }
}

/// A file named on the command line wins over a value (which may come from
/// the environment): the more specific setting is the one the operator meant.
fn source(value: Option<String>, file: Option<PathBuf>) -> CredentialSource {
    match (value, file) {
        (_, Some(file)) => CredentialSource::File(file),
        (Some(value), None) => CredentialSource::Value(value),
        (None, None) => CredentialSource::Generate,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum QueueKeyRuleArg {
    Teams,
    Seed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoleArg {
    All,
    Api,
    Matcher,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PlacementArg {
    Spread,
    Pack,
}

#[derive(Debug, Args)]
struct RotateKeyArgs {
    /// A running control plane to rotate (e.g. http://127.0.0.1:3000); otherwise the data dir is edited
    /// directly, which is only safe while no control plane uses it.
    #[arg(long, env = "MATCHPLANE_URL")]
    url: Option<String>,
    #[arg(long, env = "MATCHPLANE_DATA_DIR", default_value = "./matchplane-data")]
    data_dir: PathBuf,
    #[arg(long, env = "MATCHPLANE_SIGNING_ALG", default_value = "es256")]
    signing_alg: SigningAlgorithm,
    /// Lifetime of tokens signed with the old key (keeps it published that long).
    #[arg(long, env = "MATCHPLANE_ASSIGNMENT_TTL", default_value = "60s", value_parser = parse_duration)]
    assignment_ttl: Duration,
    /// Admin token for --url (default: read <data-dir>/admin-token).
    #[arg(long, env = "MATCHPLANE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token for --url.
    #[arg(long, env = "MATCHPLANE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
}

impl RotateKeyArgs {
    fn admin_token(&self) -> anyhow::Result<String> {
        if let (Some(token), None) = (&self.admin_token, &self.admin_token_file) {
            return Ok(token.trim().to_owned());
        }
        let path = self.admin_token_file.clone().unwrap_or_else(|| {
            self.data_dir
                .join(matchplane_control_plane::auth::ADMIN_TOKEN_FILE)
        });
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading the admin token from {} (pass --admin-token or --admin-token-file)",
                path.display()
            )
        })?;
        Ok(text.lines().next().unwrap_or_default().trim().to_owned())
    }
}

pub async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    match args.command {
        Some(ControlPlaneCommand::RotateKey(rotate)) => rotate_key(rotate).await,
        Some(ControlPlaneCommand::StoreStats(stats)) => store_stats(&stats),
        None => serve(args.serve).await,
    }
}

fn store_stats(args: &StoreStatsArgs) -> anyhow::Result<()> {
    let usage = matchplane_control_plane::store::RedbStore::usage(&args.data_dir)?;
    if args.json {
        println!("{}", serde_json::to_string(&usage)?);
        return Ok(());
    }
    let in_use = usage.pages_in_use * usage.page_size;
    println!(
        "{}: {} tickets; file {} bytes, {} in use ({} pages), {} free",
        args.data_dir.display(),
        usage.tickets,
        usage.file_bytes,
        in_use,
        usage.pages_in_use,
        usage.file_bytes.saturating_sub(in_use)
    );
    if let Some(per_ticket) = in_use.checked_div(usage.tickets) {
        println!("in use per ticket: {per_ticket} bytes");
    }
    println!(
        "{:<16} {:>10} {:>10} {:>14} {:>14}",
        "table", "entries", "pages", "stored bytes", "fragmented"
    );
    for table in &usage.tables {
        println!(
            "{:<16} {:>10} {:>10} {:>14} {:>14}",
            table.name, table.entries, table.pages, table.stored_bytes, table.fragmented_bytes
        );
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let shutdown = crate::signals::Shutdown::listen();
    let storage = if let Some(url) = args.redis_url.clone() {
        StorageConfig::Redis {
            url,
            data_dir: args.data_dir.clone(),
        }
    } else if args.ephemeral {
        StorageConfig::Ephemeral
    } else {
        StorageConfig::Durable {
            data_dir: args.data_dir.clone(),
        }
    };
    let mut config = Config::new(SocketAddr::new(args.bind, args.port), storage);
    config.server_ttl = args.server_ttl;
    config.heartbeat_interval = args.heartbeat_interval;
    config.matcher_lease = args.matcher_lease;
    config.requeue_on_server_loss = args.requeue_on_server_loss == OnOff::On;
    config.requeue_joined = args.requeue_joined == OnOff::On;
    if args.server_ttl <= args.heartbeat_interval * 2 {
        anyhow::bail!(
            "--server-ttl ({}) must be longer than two --heartbeat-interval ({} each), or live servers would be lost between beats",
            humantime::format_duration(args.server_ttl),
            humantime::format_duration(args.heartbeat_interval)
        );
    }
    config.ticket_ttl = args.ticket_ttl;
    config.assignment_ttl = args.assignment_ttl;
    config.match_tick = args.match_tick;
    config.retention = args.retention;
    config.limits.max_finished_tickets = args.max_finished_tickets;
    config.store_cache_bytes = usize::try_from(args.store_cache_mib * 1024 * 1024)
        .context("--store-cache-mib does not fit in memory on this machine")?;
    config.issuer = args.issuer;
    config.audience = args.audience;
    config.signing.algorithm = args.signing_alg;
    config.placement = match args.placement {
        PlacementArg::Spread => Placement::Spread,
        PlacementArg::Pack => Placement::Pack,
    };
    config.limits.max_body_bytes = args.max_body_bytes;
    config.limits.max_register_body_bytes = args.max_register_body_bytes;
    config.limits.max_members = args.max_members;
    config.trusted_proxies = args.trusted_proxies;
    config.cors_origins = args.cors_origins;
    config.open_queues = args.open_queues;
    args.credentials.apply(&mut config);
    config.serve_limits = args.listener.serve_limits(args.idle_timeout);
    config.rate_limit = args.listener.rate_limit;
    config.metrics_bind = args.metrics_bind;
    config.role = match args.role {
        RoleArg::All => Role::All,
        RoleArg::Api => Role::Api,
        RoleArg::Matcher => Role::Matcher,
    };
    if args.role != RoleArg::All && args.redis_url.is_none() {
        anyhow::bail!(
            "--role api and --role matcher need --redis-url: a replica learns the others' tickets and events from Redis"
        );
    }
    if let Some(path) = &args.signing_key {
        config.signing.key_pem = Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading signing key {}", path.display()))?,
        );
    }
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        config.engine = matchplane_matchmaker::EngineConfig::from_toml_str(&text)
            .with_context(|| format!("invalid queue profiles in {}", path.display()))?;
    }
    // After the file: the rule is a flag only, and loading profiles replaces `engine`.
    config.engine.key_rule = match args.queue_key_rule {
        QueueKeyRuleArg::Teams => matchplane_matchmaker::QueueKeyRule::Teams,
        QueueKeyRuleArg::Seed => matchplane_matchmaker::QueueKeyRule::Seed,
    };
    let control_plane = ControlPlane::start(config).await?;
    control_plane.run_until(shutdown.received()).await;
    Ok(())
}

async fn rotate_key(args: RotateKeyArgs) -> anyhow::Result<()> {
    let kid = match &args.url {
        Some(url) => {
            let endpoint = format!("{}/v1/admin/keys/rotate", url.trim_end_matches('/'));
            let response = reqwest::Client::new()
                .post(&endpoint)
                .bearer_auth(args.admin_token()?)
                .send()
                .await
                .with_context(|| format!("calling {endpoint}"))?;
            let status = response.status();
            let body: serde_json::Value = response
                .json()
                .await
                .context("reading the rotate response")?;
            if !status.is_success() {
                anyhow::bail!("rotation failed with {status}: {body}");
            }
            body.get("kid")
                .and_then(|kid| kid.as_str())
                .unwrap_or_default()
                .to_owned()
        }
        None => keys::rotate_in_dir(
            &args.data_dir,
            args.signing_alg,
            SystemClock.now_ms(),
            duration_ms(args.assignment_ttl),
        )?,
    };
    println!("{kid}");
    Ok(())
}
