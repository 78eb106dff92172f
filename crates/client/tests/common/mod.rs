//! Real servers for the SDK tests: a control plane, game servers (JWKS or dev auth), a
//! TCP proxy that can cut connections, and an LB-style prefix proxy without WebSockets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use matchplane_contracts::provisioning::Capacity;
use matchplane_control_plane::{Config, ControlPlane};
use matchplane_hero_defense::{HeroDefense, HeroDefenseConfig};
use matchplane_runtime::counter::Counter;
use matchplane_runtime::{
    Authenticator, DevAuthenticator, GameServer, GameServerConfig, JwksAuthenticator, JwksSettings,
    LandRegistry, ProvisioningAgent, ProvisioningSettings,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A hero-defense game of a couple of seconds.
pub fn fast_hero_defense() -> HeroDefenseConfig {
    HeroDefenseConfig {
        waves: 1,
        first_wave_delay_secs: 0.2,
        enemies_first_wave: 2,
        spawn_interval_secs: 0.1,
        enemy_hp: 10.0,
        enemy_speed: 20.0,
        ..HeroDefenseConfig::quick()
    }
}

fn registry(hero: HeroDefenseConfig) -> LandRegistry {
    LandRegistry::new()
        .register::<HeroDefense>("hero-defense", hero)
        .register::<Counter>("counter", ())
}

pub struct Game {
    pub addr: SocketAddr,
    pub server: GameServer,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Game {
    async fn start(registry: LandRegistry, auth: Arc<dyn Authenticator>, id: &str) -> Self {
        let config = GameServerConfig {
            server_id: id.to_owned(),
            shutdown_timeout: Duration::from_secs(3),
            ..GameServerConfig::default()
        };
        let server = GameServer::new(registry, auth, config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            server,
            stop: Some(stop),
            task,
        }
    }

    /// `--auth none` server hosting counter and hero-defense.
    pub async fn dev(hero: HeroDefenseConfig) -> Self {
        Self::start(registry(hero), Arc::new(DevAuthenticator), "dev-game").await
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Control plane + a JWKS-verifying game server registered with it.
pub struct Planes {
    pub cp: ControlPlane,
    pub game: Game,
    agent: Arc<ProvisioningAgent>,
    heartbeat: JoinHandle<()>,
}

impl Planes {
    pub async fn start(hero: HeroDefenseConfig) -> Self {
        Self::start_with(hero, None).await
    }

    /// `connect_port`: what the control plane puts in `connectUrl` instead of the game
    /// server's own port (a proxy in front of it).
    pub async fn start_with(hero: HeroDefenseConfig, connect_port: Option<u16>) -> Self {
        Self::start_configured(hero, Config::ephemeral_for_tests(), connect_port).await
    }

    /// Like [`Self::start_with`], with the control plane's config chosen by the test
    /// (player auth, rate limits).
    pub async fn start_configured(
        hero: HeroDefenseConfig,
        config: Config,
        connect_port: Option<u16>,
    ) -> Self {
        let cp = ControlPlane::start(config).await.unwrap();
        let auth = Arc::new(JwksAuthenticator::new(JwksSettings::new(cp.base_url())));
        let game = Game::start(registry(hero), auth, "game-1").await;
        let agent = Arc::new(ProvisioningAgent::new(
            ProvisioningSettings {
                control_plane_url: cp.base_url(),
                server_id: "game-1".to_owned(),
                host: "127.0.0.1".to_owned(),
                port: game.addr.port(),
                connect_host: None,
                connect_port,
                connect_scheme: None,
                connect_path_prefix: None,
                region: None,
                capacity: Capacity {
                    max_lands: Some(1000),
                    max_players: Some(10_000),
                },
                heartbeat_interval: Duration::from_secs(5),
                instance_id: game.server.instance_id().to_owned(),
                registration_token: matchplane_runtime::Secret::new(
                    cp.registration_token(),
                    "registration token",
                )
                .ok(),
            },
            game.server.manager().clone(),
        ));
        // Registered before any ticket is enqueued, so matches allocate at once.
        agent.heartbeat(false).await.unwrap();
        let heartbeat = agent.spawn();
        Self {
            cp,
            game,
            agent,
            heartbeat,
        }
    }

    pub fn cp_url(&self) -> String {
        self.cp.base_url()
    }

    pub async fn stop(self) {
        self.heartbeat.abort();
        self.game.stop().await;
        self.cp.shutdown().await;
    }
}

/// A TCP proxy whose live connections can be cut, to simulate a network drop.
pub struct CuttableProxy {
    pub addr: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl CuttableProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept_links = Arc::clone(&links);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accept_links.lock().unwrap().push(link);
            }
        });
        Self {
            addr,
            links,
            accept,
        }
    }

    /// Drops every proxied connection at once; new ones are still accepted.
    pub fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// An LB in front of the control plane under `/match`, forwarding plain HTTP only:
/// `/match/realtime` is not routed (404), like an LB without WebSocket support.
pub struct PrefixProxy {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Upstream {
    base: String,
    http: reqwest::Client,
}

async fn forward(
    State(upstream): State<Upstream>,
    method: Method,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if rest == "realtime" {
        return (StatusCode::NOT_FOUND, "no websockets here").into_response();
    }
    let mut request = upstream
        .http
        .request(method, format!("{}/{rest}", upstream.base))
        .body(body);
    if let Some(content_type) = headers.get("content-type") {
        request = request.header("content-type", content_type);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let bytes = response.bytes().await.unwrap_or_default();
            (status, [("content-type", "application/json")], bytes).into_response()
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

impl PrefixProxy {
    pub async fn start(control_plane: &str) -> Self {
        let upstream = Upstream {
            base: control_plane.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        };
        let app = axum::Router::new()
            .route("/match/{*rest}", axum::routing::any(forward))
            .with_state(upstream);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/match", self.addr)
    }
}

impl Drop for PrefixProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
