//! Both planes in this process: a control plane on an embedded store and a game server
//! that verifies match tokens against it and registers with it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use matchplane_contracts::provisioning::Capacity;
use matchplane_control_plane::{Config, ControlPlane, StorageConfig};
use matchplane_hero_defense::{HeroDefense, HeroDefenseConfig};
use matchplane_runtime::counter::Counter;
use matchplane_runtime::{
    GameServer, GameServerConfig, JwksAuthenticator, JwksSettings, LandRegistry, ProvisioningAgent,
    ProvisioningSettings, Secret,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct PlaneOptions {
    pub control_plane_port: u16,
    pub game_port: u16,
    /// The control plane's store and credentials.
    pub data_dir: PathBuf,
    pub hero_defense: HeroDefenseConfig,
    pub server_id: String,
}

pub struct EmbeddedPlanes {
    pub control_plane: ControlPlane,
    pub game: GameServer,
    pub game_addr: SocketAddr,
    pub data_dir: PathBuf,
    agent: Arc<ProvisioningAgent>,
    heartbeat: JoinHandle<()>,
    jwks_refresh: JoinHandle<()>,
    game_stop: oneshot::Sender<()>,
    game_task: JoinHandle<std::io::Result<()>>,
}

impl EmbeddedPlanes {
    pub async fn start(options: PlaneOptions) -> anyhow::Result<Self> {
        let data_dir = options.data_dir;
        let mut config = Config::new(
            SocketAddr::from(([127, 0, 0, 1], options.control_plane_port)),
            StorageConfig::Durable {
                data_dir: data_dir.clone(),
            },
        );
        // Rounds are short; a snappier re-match tick keeps lone leftovers from waiting.
        config.match_tick = Duration::from_millis(50);
        // Every bot comes from 127.0.0.1: per-address limits would throttle the demo itself.
        config.rate_limit = matchplane_edge::ratelimit::RateLimit::Off;
        let control_plane = ControlPlane::start(config)
            .await
            .context("cannot start the control plane")?;
        let control_plane_url = control_plane.base_url();
        tracing::info!(url = %control_plane_url, data_dir = %data_dir.display(), "demo control plane up");

        let registry = LandRegistry::new()
            .register::<HeroDefense>("hero-defense", options.hero_defense)
            .register::<Counter>("counter", ());
        let auth = Arc::new(JwksAuthenticator::new(JwksSettings::new(
            control_plane_url.clone(),
        )));
        auth.refresh()
            .await
            .context("the game server cannot read the control plane's JWKS")?;
        let jwks_refresh = auth.spawn_refresher();
        let game = GameServer::new(
            registry,
            auth,
            GameServerConfig {
                server_id: options.server_id.clone(),
                shutdown_timeout: Duration::from_secs(5),
                rate_limit: matchplane_edge::ratelimit::RateLimit::Off,
                ..GameServerConfig::default()
            },
        );
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], options.game_port)))
                .await
                .with_context(|| {
                    format!("cannot bind the game server port {}", options.game_port)
                })?;
        let game_addr = listener.local_addr()?;
        let (game_stop, stopped) = oneshot::channel::<()>();
        let game_task = tokio::spawn(game.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        tracing::info!(addr = %game_addr, server_id = %options.server_id, "demo game server listening");

        let agent = Arc::new(ProvisioningAgent::new(
            ProvisioningSettings {
                control_plane_url,
                server_id: options.server_id,
                host: game_addr.ip().to_string(),
                port: game_addr.port(),
                connect_host: None,
                connect_port: None,
                connect_scheme: None,
                connect_path_prefix: None,
                region: None,
                capacity: Capacity {
                    max_lands: Some(5_000),
                    max_players: Some(40_000),
                },
                heartbeat_interval: Duration::from_secs(2),
                instance_id: game.instance_id().to_owned(),
                registration_token: Some(
                    Secret::new(control_plane.registration_token(), "registration token")
                        .context("the control plane has no usable registration token")?,
                ),
            },
            game.manager().clone(),
        ));
        // Registered before the first ticket, so matches are allocated at once.
        agent
            .heartbeat(false)
            .await
            .context("the game server cannot register with the control plane")?;
        let heartbeat = agent.spawn();
        Ok(Self {
            control_plane,
            game,
            game_addr,
            data_dir,
            agent,
            heartbeat,
            jwks_refresh,
            game_stop,
            game_task,
        })
    }

    pub fn control_plane_url(&self) -> String {
        self.control_plane.base_url()
    }

    pub fn game_url(&self) -> String {
        format!("http://{}", self.game_addr)
    }

    /// Drains and deregisters the game server, stops it, then the control plane.
    pub async fn shutdown(self) {
        if !self.agent.drain(Duration::from_secs(5)).await {
            tracing::warn!("some lands were still running when the demo stopped");
        }
        self.heartbeat.abort();
        self.jwks_refresh.abort();
        let _ = self.game_stop.send(());
        match tokio::time::timeout(Duration::from_secs(10), self.game_task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "game server stopped with an error"),
            Ok(Err(err)) => tracing::warn!(error = %err, "game server task failed"),
            Err(_) => tracing::warn!("game server did not stop in time"),
        }
        self.control_plane.shutdown().await;
    }
}
