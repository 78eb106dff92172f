//! `matchplane game-server`: hosts the built-in lands (`counter`, `hero-defense`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use matchplane_contracts::provisioning::Capacity;
use matchplane_edge::secret::{Secret, SecretError};
use matchplane_hero_defense::{HeroDefense, HeroDefenseConfig};
use matchplane_runtime::counter::Counter;
use matchplane_runtime::{
    Authenticator, ConnectionLimits, DevAuthenticator, GameServer, GameServerConfig,
    JwksAuthenticator, JwksSettings, LandRegistry, ProvisioningAgent, ProvisioningSettings,
};

/// Land types this binary can host, in `--lands` spelling.
const BUILT_IN_LANDS: [&str; 2] = ["hero-defense", "counter"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Development only: trust `?playerId=` (and `?landId=`) from the query string.
    None,
    /// Admit only match tokens signed by a key the control plane publishes (its JWKS).
    Jwks,
}

#[derive(Debug, Args)]
pub struct GameServerArgs {
    /// Port to listen on (0 picks a free port; the bound address is logged).
    #[arg(long, env = "MATCHPLANE_GAME_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to bind.
    #[arg(long, env = "MATCHPLANE_GAME_BIND", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// Id of this server in logs and `/health` (default: generated).
    #[arg(long, env = "MATCHPLANE_SERVER_ID")]
    pub server_id: Option<String>,

    /// Land types to host, comma-separated (default: all built-in).
    #[arg(long, env = "MATCHPLANE_LANDS", value_delimiter = ',', default_values_t = BUILT_IN_LANDS.map(str::to_owned))]
    pub lands: Vec<String>,

    /// How players are admitted: `jwks` (default with --control-plane-url) or `none` (development).
    #[arg(long, env = "MATCHPLANE_GAME_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// Control plane to register with and to fetch the JWKS from, e.g. http://127.0.0.1:3000.
    #[arg(long, env = "MATCHPLANE_CONTROL_PLANE_URL")]
    pub control_plane_url: Option<String>,

    /// The control plane's registration token, sent as `Authorization: Bearer` when
    /// registering, heartbeating and deregistering (its <data-dir>/registration-token).
    #[arg(long, env = "MATCHPLANE_REGISTRATION_TOKEN", hide_env_values = true,
        value_parser = parse_registration_token)]
    pub registration_token: Option<Secret>,

    /// File whose first line is the registration token (e.g. a mounted secret); wins
    /// over --registration-token, also when that comes from the environment.
    #[arg(long, env = "MATCHPLANE_REGISTRATION_TOKEN_FILE")]
    pub registration_token_file: Option<PathBuf>,

    /// Bearer token for this server's `/admin/*` (several comma-separated are all accepted).
    /// Without it or --admin-token-file, admin answers only to clients on this host (loopback).
    #[arg(long, env = "MATCHPLANE_ADMIN_TOKEN", hide_env_values = true,
        value_parser = parse_admin_tokens)]
    pub admin_token: Option<AdminTokens>,

    /// File holding the admin token(s), one per line; wins over --admin-token.
    #[arg(long, env = "MATCHPLANE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Client-facing host clients should connect to (e.g. the load balancer); default: the bind address.
    #[arg(long, env = "MATCHPLANE_CONNECT_HOST")]
    pub connect_host: Option<String>,

    /// Client-facing port (e.g. the load balancer's); default: the bound port.
    #[arg(long, env = "MATCHPLANE_CONNECT_PORT")]
    pub connect_port: Option<u16>,

    /// Client-facing scheme, `ws` or `wss`; default: `wss` on port 443, else `ws`.
    #[arg(long, env = "MATCHPLANE_CONNECT_SCHEME")]
    pub connect_scheme: Option<String>,

    /// Path prefix the load balancer maps to this server (e.g. `/gs/1`), for several servers behind one entry.
    #[arg(long, env = "MATCHPLANE_CONNECT_PATH_PREFIX")]
    pub connect_path_prefix: Option<String>,

    /// Region reported to the control plane.
    #[arg(long, env = "MATCHPLANE_REGION")]
    pub region: Option<String>,

    /// Most lands this server runs at once: reported as capacity (the control plane allocates
    /// no more) and enforced however a land would be created (4409 `server_full` beyond it).
    #[arg(long, env = "MATCHPLANE_MAX_LANDS", default_value_t = 1000)]
    pub max_lands: u32,

    /// Under overload (ticks running ≥ 5 ms late on average), lands sync state on every Nth tick, N
    /// doubling up to this while the ticks stay late, so joins and actions are not
    /// queued behind every land's frames; 1 syncs every tick whatever the load.
    #[arg(long, env = "MATCHPLANE_MAX_SYNC_STRETCH", default_value_t = matchplane_runtime::DEFAULT_MAX_SYNC_STRETCH,
        value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_sync_stretch: u32,

    /// Most players this server should hold at once (reported as capacity).
    #[arg(long, env = "MATCHPLANE_MAX_PLAYERS", default_value_t = 10_000)]
    pub max_players: u32,

    /// How often to heartbeat the control plane with fresh load, until the control
    /// plane's register answer names its own interval (then that one is used).
    #[arg(long, env = "MATCHPLANE_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = crate::duration::parse_duration)]
    pub heartbeat_interval: Duration,

    /// On SIGTERM with a control plane: how long running lands may finish before the server deregisters and exits.
    #[arg(long, env = "MATCHPLANE_DRAIN_TIMEOUT", default_value = "30s", value_parser = crate::duration::parse_duration)]
    pub drain_timeout: Duration,

    /// Expected match-token issuer (`iss`).
    #[arg(long, env = "MATCHPLANE_ISSUER", default_value = "matchplane")]
    pub issuer: String,

    /// Expected match-token audience (`aud`).
    #[arg(long, env = "MATCHPLANE_AUDIENCE", default_value = "matchplane-game")]
    pub audience: String,

    /// Least time between JWKS refetches caused by tokens with an unknown key id.
    #[arg(long, env = "MATCHPLANE_JWKS_REFETCH_COOLDOWN", default_value = "5s", value_parser = crate::duration::parse_duration)]
    pub jwks_refetch_cooldown: Duration,

    /// A load balancer (IP or CIDR) whose X-Forwarded-For names the real client; repeatable or comma-separated.
    #[arg(long = "trusted-proxy", env = "MATCHPLANE_TRUSTED_PROXY", value_delimiter = ',',
        value_parser = matchplane_contracts::forwarded::TrustedProxies::parse_entry)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// How often the JWKS is refreshed so rotated-out keys stop being trusted.
    #[arg(long, env = "MATCHPLANE_JWKS_REFRESH", default_value = "5m", value_parser = crate::duration::parse_duration)]
    pub jwks_refresh: Duration,

    /// Per land type configuration: `hero-defense=quick`, or a JSON object of overrides
    /// such as `hero-defense={"waves":3,"baseHp":5}`. Repeatable.
    #[arg(long = "land-config", value_name = "LAND=CONFIG")]
    pub land_configs: Vec<String>,

    /// Largest client message in bytes.
    #[arg(long, env = "MATCHPLANE_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub max_message_bytes: usize,

    /// Sustained client messages per second per connection.
    #[arg(
        long,
        env = "MATCHPLANE_MAX_MESSAGES_PER_SECOND",
        default_value_t = 50.0
    )]
    pub max_messages_per_second: f64,

    /// Close connections silent for this long: WebSockets with no client message and
    /// keep-alive HTTP connections with no request (e.g. `60s`; `0` disables).
    #[arg(long, env = "MATCHPLANE_IDLE_TIMEOUT", default_value = "60s", value_parser = crate::duration::parse_duration)]
    pub idle_timeout: Duration,

    // The public listener's limits (rate of new game sockets, header timeout, connection caps).
    #[command(flatten)]
    pub listener: crate::listener::ListenerArgs,

    /// On SIGTERM, how long to wait for lands to say goodbye before exiting.
    #[arg(long, env = "MATCHPLANE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = crate::duration::parse_duration)]
    pub shutdown_timeout: Duration,
}

const REGISTRATION_TOKEN: &str = "registration token";

pub(crate) fn parse_registration_token(value: &str) -> Result<Secret, SecretError> {
    Secret::new(value, REGISTRATION_TOKEN)
}

/// The token from the flag, or from the file (which must exist and hold one).
fn registration_token(args: &GameServerArgs) -> anyhow::Result<Option<Secret>> {
    registration_token_from(
        args.registration_token.as_ref(),
        args.registration_token_file.as_deref(),
    )
}

/// `--registration-token-file` (its first line) wins over `--registration-token`.
pub(crate) fn registration_token_from(
    flag: Option<&Secret>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<Secret>> {
    let Some(path) = file else {
        return Ok(flag.cloned());
    };
    Secret::from_file(path, REGISTRATION_TOKEN)
        .map(Some)
        .with_context(|| format!("--registration-token-file {}", path.display()))
}

const ADMIN_TOKEN: &str = "admin token";

/// Accepted admin tokens; `Debug` shows only their fingerprints.
#[derive(Debug, Clone)]
pub struct AdminTokens(Vec<Secret>);

fn parse_admin_tokens(value: &str) -> Result<AdminTokens, SecretError> {
    accepted_tokens(value.split(','))
}

/// Every non-blank entry must be a usable secret, and there must be one.
fn accepted_tokens<'a>(entries: impl Iterator<Item = &'a str>) -> Result<AdminTokens, SecretError> {
    let tokens = entries
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| Secret::new(entry, ADMIN_TOKEN))
        .collect::<Result<Vec<_>, _>>()?;
    if tokens.is_empty() {
        return Err(SecretError::Unusable {
            what: ADMIN_TOKEN.to_owned(),
        });
    }
    Ok(AdminTokens(tokens))
}

/// The tokens of the file (one per line) when one is named, else of the flag; none: loopback only.
fn admin_tokens(args: &GameServerArgs) -> anyhow::Result<Vec<Secret>> {
    if let Some(path) = &args.admin_token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --admin-token-file {}", path.display()))?;
        let AdminTokens(tokens) = accepted_tokens(text.lines())
            .with_context(|| format!("--admin-token-file {}", path.display()))?;
        return Ok(tokens);
    }
    Ok(args
        .admin_token
        .clone()
        .map(|AdminTokens(tokens)| tokens)
        .unwrap_or_default())
}

fn hero_defense_config(raw: Option<&str>) -> anyhow::Result<HeroDefenseConfig> {
    let Some(raw) = raw else {
        return Ok(HeroDefenseConfig::default());
    };
    if let Some(preset) = HeroDefenseConfig::preset(raw) {
        return Ok(preset);
    }
    serde_json::from_str(raw).with_context(|| {
        format!("hero-defense config must be `standard`, `quick` or a JSON object, got {raw:?}")
    })
}

fn registry(args: &GameServerArgs) -> anyhow::Result<LandRegistry> {
    let mut configs = std::collections::HashMap::new();
    for entry in &args.land_configs {
        let Some((land, config)) = entry.split_once('=') else {
            bail!("--land-config expects LAND=CONFIG, got {entry:?}");
        };
        configs.insert(land.trim().to_owned(), config.to_owned());
    }
    if let Some(unknown) = configs.keys().find(|land| !args.lands.contains(land)) {
        bail!("--land-config names {unknown:?}, which is not in --lands");
    }
    let mut registry = LandRegistry::new();
    for land in &args.lands {
        registry = match land.as_str() {
            "hero-defense" => registry.register::<HeroDefense>(
                "hero-defense",
                hero_defense_config(configs.get(land).map(String::as_str))?,
            ),
            "counter" => {
                if configs.contains_key(land) {
                    bail!("counter takes no configuration");
                }
                registry.register::<Counter>("counter", ())
            }
            other => bail!(
                "unknown land type {other:?}; built-in lands are {}",
                BUILT_IN_LANDS.join(", ")
            ),
        };
    }
    if args.lands.is_empty() {
        bail!("--lands must name at least one land type");
    }
    Ok(registry)
}

pub async fn run(args: GameServerArgs) -> anyhow::Result<()> {
    let shutdown_signal = crate::signals::Shutdown::listen();
    let registry = registry(&args)?;
    let registration_token = registration_token(&args)?;
    let admin_tokens = admin_tokens(&args)?;
    if admin_tokens.is_empty() {
        tracing::warn!(
            "no admin token: /admin/* answers only to clients on this host (loopback, not \
             through a proxy) until --admin-token or --admin-token-file is set"
        );
    }
    if !(args.max_messages_per_second.is_finite() && args.max_messages_per_second > 0.0) {
        bail!(
            "--max-messages-per-second must be a positive number, got {}",
            args.max_messages_per_second
        );
    }
    if args.control_plane_url.is_some() && registration_token.is_none() {
        tracing::warn!(
            "no registration token: the control plane will refuse to register this server; \
             pass --registration-token or --registration-token-file"
        );
    }
    let auth_mode = args.auth.unwrap_or(if args.control_plane_url.is_some() {
        AuthMode::Jwks
    } else {
        AuthMode::None
    });
    let auth: Arc<dyn Authenticator> = match auth_mode {
        AuthMode::None => {
            tracing::warn!("--auth none: anyone can join as any player; use for development only");
            Arc::new(DevAuthenticator)
        }
        AuthMode::Jwks => {
            let Some(url) = &args.control_plane_url else {
                bail!("--auth jwks needs --control-plane-url to fetch the keys from");
            };
            let mut settings = JwksSettings::new(url.clone());
            settings.issuer = args.issuer.clone();
            settings.audience = args.audience.clone();
            settings.refetch_cooldown = args.jwks_refetch_cooldown;
            settings.refresh_every = args.jwks_refresh;
            let verifier = Arc::new(JwksAuthenticator::new(settings));
            // Keys are fetched now when the control plane is up, else on the first token.
            verifier.spawn_refresher();
            verifier
        }
    };
    let mut config = GameServerConfig {
        max_lands: Some(usize::try_from(args.max_lands).unwrap_or(usize::MAX)),
        max_sync_stretch: args.max_sync_stretch,
        limits: ConnectionLimits {
            max_message_bytes: args.max_message_bytes,
            messages_per_second: args.max_messages_per_second,
            burst: args.max_messages_per_second * 2.0,
            idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
            ..ConnectionLimits::default()
        },
        shutdown_timeout: args.shutdown_timeout,
        trusted_proxies: matchplane_contracts::forwarded::TrustedProxies::new(
            args.trusted_proxies.clone(),
        ),
        serve_limits: args.listener.serve_limits(args.idle_timeout),
        rate_limit: args.listener.rate_limit,
        admin_tokens,
        ..GameServerConfig::default()
    };
    if let Some(server_id) = args.server_id.clone() {
        config.server_id = server_id;
    }
    let server = GameServer::new(registry, auth, config);
    let listener = matchplane_edge::serve::bind(SocketAddr::new(args.bind, args.port))
        .with_context(|| format!("cannot bind {}:{}", args.bind, args.port))?;
    let addr = listener.local_addr()?;
    let lands: Vec<&str> = server.manager().registry().names().collect();
    tracing::info!(%addr, server_id = server.server_id(), instance_id = server.instance_id(),
        lands = ?lands, "game server listening");

    let agent = args.control_plane_url.as_ref().map(|url| {
        Arc::new(ProvisioningAgent::new(
            ProvisioningSettings {
                control_plane_url: url.clone(),
                server_id: server.server_id().to_owned(),
                host: addr.ip().to_string(),
                port: addr.port(),
                connect_host: args.connect_host.clone(),
                connect_port: args.connect_port,
                connect_scheme: args.connect_scheme.clone(),
                connect_path_prefix: args.connect_path_prefix.clone(),
                region: args.region.clone(),
                capacity: Capacity {
                    max_lands: Some(args.max_lands),
                    max_players: Some(args.max_players),
                },
                heartbeat_interval: args.heartbeat_interval,
                instance_id: server.instance_id().to_owned(),
                registration_token: registration_token.clone(),
            },
            server.manager().clone(),
        ))
    });
    let heartbeats = agent.as_ref().map(ProvisioningAgent::spawn);
    let drain_timeout = args.drain_timeout;
    // With a control plane, SIGTERM first drains (no new lands, running ones
    // finish, then deregister); the server then closes whatever is left.
    let shutdown = async move {
        shutdown_signal.received().await;
        if let Some(heartbeats) = heartbeats {
            heartbeats.abort();
        }
        if let Some(agent) = agent {
            tracing::info!(?drain_timeout, "draining before shutdown");
            if !agent.drain(drain_timeout).await {
                tracing::warn!("drain timeout reached with lands still running");
            }
        }
    };
    server
        .serve(listener, shutdown)
        .await
        .context("game server failed")?;
    tracing::info!("game server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: GameServerArgs,
    }

    fn parse(argv: &[&str]) -> GameServerArgs {
        Wrapper::try_parse_from(std::iter::once("game-server").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn defaults_host_every_built_in_land() {
        let args = parse(&[]);
        assert_eq!(args.lands, vec!["hero-defense", "counter"]);
        assert_eq!(args.auth, None);
        assert_eq!(args.heartbeat_interval, Duration::from_secs(2));
        let registry = registry(&args).unwrap();
        assert_eq!(
            registry.names().collect::<Vec<_>>(),
            vec!["counter", "hero-defense"]
        );
    }

    #[test]
    fn registration_token_from_the_flag_or_the_first_line_of_a_file_and_never_shown() {
        let token = "0123456789abcdef-registration";
        let args = parse(&["--registration-token", token]);
        assert_eq!(registration_token(&args).unwrap().unwrap().expose(), token);
        assert!(!format!("{args:?}").contains(token), "Debug redacts it");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registration-token");
        std::fs::write(&path, format!("  {token}  \nsecond line\n")).unwrap();
        let args = parse(&["--registration-token-file", path.to_str().unwrap()]);
        assert_eq!(registration_token(&args).unwrap().unwrap().expose(), token);
        assert!(registration_token(&parse(&[])).unwrap().is_none());

        // A missing or empty file, or a too short token, refuses to start.
        let missing = dir.path().join("missing");
        let args = parse(&["--registration-token-file", missing.to_str().unwrap()]);
        let err = registration_token(&args).unwrap_err();
        assert!(format!("{err:#}").contains("missing"), "{err:#}");
        std::fs::write(&path, "\n").unwrap();
        let args = parse(&["--registration-token-file", path.to_str().unwrap()]);
        assert!(registration_token(&args).is_err());
        assert!(Wrapper::try_parse_from(["game-server", "--registration-token", "short"]).is_err());

        // Both given (e.g. the value from the environment): the file wins.
        let from_file = "fedcba9876543210-registration";
        std::fs::write(&path, format!("{from_file}\n")).unwrap();
        let args = parse(&[
            "--registration-token",
            token,
            "--registration-token-file",
            path.to_str().unwrap(),
        ]);
        assert_eq!(
            registration_token(&args).unwrap().unwrap().expose(),
            from_file
        );
    }

    #[test]
    fn admin_tokens_from_the_flag_or_every_line_of_a_file_which_wins_and_never_shown() {
        let (first, second) = ("0123456789abcdef-admin", "fedcba9876543210-admin");
        let exposed = |args: &GameServerArgs| -> Vec<String> {
            admin_tokens(args)
                .unwrap()
                .iter()
                .map(|token| token.expose().to_owned())
                .collect()
        };
        assert!(
            admin_tokens(&parse(&[])).unwrap().is_empty(),
            "none: loopback only"
        );
        let args = parse(&["--admin-token", &format!("{first}, {second}")]);
        assert_eq!(exposed(&args), [first, second]);
        assert!(!format!("{args:?}").contains(first), "Debug redacts it");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        std::fs::write(&path, format!("{second}\n\n  {first}  \n")).unwrap();
        let file = path.to_str().unwrap();
        assert_eq!(
            exposed(&parse(&["--admin-token-file", file])),
            [second, first]
        );
        let both = parse(&["--admin-token", first, "--admin-token-file", file]);
        assert_eq!(exposed(&both), [second, first], "the file wins");

        // Unusable entries refuse to start rather than leave admin open or locked.
        assert!(Wrapper::try_parse_from(["game-server", "--admin-token", "short"]).is_err());
        assert!(Wrapper::try_parse_from(["game-server", "--admin-token", " , "]).is_err());
        std::fs::write(&path, format!("{first}\nshort\n")).unwrap();
        assert!(admin_tokens(&parse(&["--admin-token-file", file])).is_err());
        std::fs::write(&path, "\n").unwrap();
        assert!(admin_tokens(&parse(&["--admin-token-file", file])).is_err());
        let missing = dir.path().join("missing");
        let args = parse(&["--admin-token-file", missing.to_str().unwrap()]);
        assert!(format!("{:#}", admin_tokens(&args).unwrap_err()).contains("missing"));
    }

    #[test]
    fn land_configs_accept_presets_and_json_and_reject_mistakes() {
        let args = parse(&[
            "--lands",
            "hero-defense",
            "--land-config",
            "hero-defense=quick",
        ]);
        assert!(registry(&args).is_ok());
        let args = parse(&["--land-config", r#"hero-defense={"waves":2}"#]);
        assert!(registry(&args).is_ok());
        let args = parse(&["--land-config", r#"hero-defense={"wavez":2}"#]);
        assert!(registry(&args).is_err());
        let args = parse(&["--lands", "chess"]);
        assert!(registry(&args).is_err());
    }
}
