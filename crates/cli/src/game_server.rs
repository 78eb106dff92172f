//! `matchplane game-server`: hosts the built-in lands (`counter`, `hero-defense`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use matchplane_hero_defense::{HeroDefense, HeroDefenseConfig};
use matchplane_runtime::counter::Counter;
use matchplane_runtime::{
    Authenticator, ConnectionLimits, DevAuthenticator, GameServer, GameServerConfig, LandRegistry,
};

/// Land types this binary can host, in `--lands` spelling.
const BUILT_IN_LANDS: [&str; 2] = ["hero-defense", "counter"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Development only: trust `?playerId=` (and `?landId=`) from the query string.
    None,
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
    #[arg(long, value_delimiter = ',', default_values_t = BUILT_IN_LANDS.map(str::to_owned))]
    pub lands: Vec<String>,

    /// How players are admitted.
    #[arg(long, value_enum, default_value_t = AuthMode::None)]
    pub auth: AuthMode,

    /// Per land type configuration: `hero-defense=quick`, or a JSON object of overrides
    /// such as `hero-defense={"waves":3,"baseHp":5}`. Repeatable.
    #[arg(long = "land-config", value_name = "LAND=CONFIG")]
    pub land_configs: Vec<String>,

    /// Largest client message in bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_message_bytes: usize,

    /// Sustained client messages per second per connection.
    #[arg(long, default_value_t = 50.0)]
    pub max_messages_per_second: f64,

    /// Close connections silent for this long (e.g. `60s`; `0` disables).
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse_duration)]
    pub idle_timeout: Duration,

    /// On SIGTERM, how long to wait for lands to say goodbye before exiting.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse_duration)]
    pub shutdown_timeout: Duration,
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
    let registry = registry(&args)?;
    let auth: Arc<dyn Authenticator> = match args.auth {
        AuthMode::None => {
            tracing::warn!("--auth none: anyone can join as any player; use for development only");
            Arc::new(DevAuthenticator)
        }
    };
    let mut config = GameServerConfig {
        limits: ConnectionLimits {
            max_message_bytes: args.max_message_bytes,
            messages_per_second: args.max_messages_per_second,
            burst: args.max_messages_per_second * 2.0,
            idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
            ..ConnectionLimits::default()
        },
        shutdown_timeout: args.shutdown_timeout,
        ..GameServerConfig::default()
    };
    if let Some(server_id) = args.server_id.clone() {
        config.server_id = server_id;
    }
    let server = GameServer::new(registry, auth, config);
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.bind, args.port))
        .await
        .with_context(|| format!("cannot bind {}:{}", args.bind, args.port))?;
    let addr = listener.local_addr()?;
    let lands: Vec<&str> = server.manager().registry().names().collect();
    tracing::info!(%addr, server_id = server.server_id(), lands = ?lands, "game server listening");
    server
        .serve(listener, crate::signals::shutdown_signal())
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
        assert_eq!(args.auth, AuthMode::None);
        let registry = registry(&args).unwrap();
        assert_eq!(
            registry.names().collect::<Vec<_>>(),
            vec!["counter", "hero-defense"]
        );
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
