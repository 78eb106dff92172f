//! Assembling and running a control plane: store, keys, registry, matching loop
//! and the HTTP listener, with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use matchplane_matchmaker::Engine;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::clock::{Clock, SystemClock, duration_ms};
use crate::config::{Config, StorageConfig};
use crate::events::EventBus;
use crate::keys::{KeyError, Keyring};
use crate::matcher::{self, MatcherHandle, MatcherSettings};
use crate::registry::Registry;
use crate::store::{
    MemoryStore, REDIS_DEFAULT_KEY_PREFIX, RedbStore, RedisStore, Store, StoreError,
};
use crate::tokens::TokenIssuer;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot load signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error("cannot set up credentials: {0}")]
    Credentials(#[from] matchplane_edge::secret::SecretError),
    #[error("cannot share credentials through Redis: {0}")]
    SharedCredentials(#[from] crate::auth::SharedCredentialError),
    #[error("invalid matchmaking configuration: {0}")]
    Engine(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Optional overrides for embedding and tests.
pub struct Builder {
    config: Config,
    clock: Option<Arc<dyn Clock>>,
    store: Option<Arc<dyn Store>>,
}

impl Builder {
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    pub async fn start(self) -> Result<ControlPlane, StartError> {
        let Builder {
            config,
            clock,
            store,
        } = self;
        let clock = clock.unwrap_or_else(|| Arc::new(SystemClock));
        let now = clock.now_ms();
        let store: Arc<dyn Store> = match store {
            Some(store) => store,
            None => match &config.storage {
                StorageConfig::Durable { data_dir } => {
                    Arc::new(RedbStore::open(data_dir, config.store_cache_bytes)?)
                }
                StorageConfig::Ephemeral => Arc::new(MemoryStore::new()),
                StorageConfig::Redis { url, data_dir } => {
                    let redis = RedisStore::connect(url, REDIS_DEFAULT_KEY_PREFIX).await?;
                    crate::auth::adopt_shared_credentials(&config, data_dir, &redis).await?;
                    Arc::new(redis)
                }
            },
        };
        let auth = Arc::new(crate::auth::Auth::from_config(&config)?);
        auth.spawn_background();
        let keyring = match (&config.signing.key_pem, &config.storage) {
            (Some(pem), StorageConfig::Redis { .. }) => {
                tracing::warn!(
                    "--signing-key given: the signing key is not shared through Redis, so every replica must be given the same one, or tokens from one replica fail on the JWKS of another"
                );
                Keyring::from_pem(pem, now)?
            }
            (Some(pem), _) => Keyring::from_pem(pem, now)?,
            (None, StorageConfig::Durable { data_dir }) => {
                Keyring::open_dir(data_dir, config.signing.algorithm, now)?
            }
            (None, StorageConfig::Ephemeral) => Keyring::in_memory(config.signing.algorithm, now)?,
            (None, StorageConfig::Redis { url, data_dir }) => {
                Keyring::open_redis(
                    url,
                    REDIS_DEFAULT_KEY_PREFIX,
                    config.signing.algorithm,
                    data_dir,
                    now,
                )
                .await?
            }
        };
        let keyring = Arc::new(keyring);
        // Follows rotations made on other replicas (a no-op unless shared through Redis).
        keyring.spawn_refresh();
        let issuer = Arc::new(TokenIssuer::new(
            keyring,
            config.issuer.clone(),
            config.audience.clone(),
        ));
        let engine = Engine::new(config.engine.clone())
            .map_err(|err| StartError::Engine(err.to_string()))?;
        let ticket_rules = Engine::new(config.engine.clone())
            .map_err(|err| StartError::Engine(err.to_string()))?;

        let registry = Arc::new(Registry::new(
            duration_ms(config.server_ttl),
            duration_ms(config.heartbeat_interval),
        ));
        for mut server in store.servers().await? {
            // Servers kept heartbeating while this process was down, but those beats
            // went nowhere: give each one TTL from now to be heard again before it
            // counts as lost (and its tickets are released).
            server.last_seen = server.last_seen.max(now);
            // A fresh registry has no previous instance to lose.
            let _ = registry.upsert(server);
        }
        // The feed position comes before the load, so nothing another replica
        // changes falls between the two.
        let feed = match store.event_feed() {
            Some(mut feed) => {
                let position = feed.mark().await?;
                Some((feed, position))
            }
            None => None,
        };
        let role = config.role;
        // With leases, each queue's tickets are loaded when its lease is granted.
        let queued = if role.matches() && store.matcher_leases().is_none() {
            store.queued_tickets().await?
        } else {
            Vec::new()
        };
        if !queued.is_empty() {
            tracing::info!(
                tickets = queued.len(),
                "resuming queued tickets from the store"
            );
        }

        // The public listener's accept queue must outlast a connection flood.
        let listener =
            matchplane_edge::serve::bind(config.listen).map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let metrics_listener = match config.metrics_bind {
            Some(addr) => {
                let bind_error = |source| StartError::Bind { addr, source };
                let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
                let bound = listener.local_addr().map_err(bind_error)?;
                Some((listener, bound))
            }
            None => None,
        };

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let events = EventBus::new();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let history = Arc::new(crate::history::History::new(config.history_sample_every));
        // Only a replica that serves the admin API has anyone to show the samples to.
        let history_task = if config.role.serves_api() {
            crate::history::spawn_sampler(
                Arc::clone(&history),
                Arc::clone(&store),
                Arc::clone(&clock),
                shutdown_rx.clone(),
            )
        } else {
            tokio::spawn(async {})
        };
        let matcher_settings = MatcherSettings {
            tick: config.match_tick,
            assignment_ttl: config.assignment_ttl,
            retention: config.retention,
            max_finished_tickets: config.limits.max_finished_tickets,
            placement: config.placement,
            recovery: crate::recovery::RecoveryPolicy {
                requeue: config.requeue_on_server_loss,
                requeue_joined: config.requeue_joined,
                ticket_ttl_ms: duration_ms(config.ticket_ttl),
            },
            history: Arc::clone(&history),
        };
        let (matcher, matcher_task) = if !role.matches() {
            (MatcherHandle::detached(), tokio::spawn(async {}))
        } else {
            matcher::spawn(
                engine,
                queued,
                Arc::clone(&store),
                Arc::clone(&registry),
                Arc::clone(&issuer),
                events.clone(),
                Arc::clone(&clock),
                matcher_settings,
                Arc::clone(&metrics),
                shutdown_rx.clone(),
            )
        };
        let feed_paused = Arc::new(watch::Sender::new(false));
        let feed_task = feed.map(|(feed, position)| {
            crate::feed::spawn(
                feed,
                position,
                crate::feed::FeedTargets {
                    matcher: role.matches().then(|| matcher.clone()),
                    events: events.clone(),
                    store: Arc::clone(&store),
                    clock: Arc::clone(&clock),
                    metrics: Arc::clone(&metrics),
                },
                Arc::clone(&feed_paused),
                shutdown_rx.clone(),
            )
        });
        // With a shared store each queue is matched by one replica at a time.
        let lease_task = match store.matcher_leases() {
            Some(leases) if role.matches() => Some(matcher::leases::spawn(
                leases,
                Arc::clone(&store),
                matcher.clone(),
                config.matcher_lease,
                Arc::clone(&clock),
                Arc::clone(&metrics),
                shutdown_rx.clone(),
            )),
            _ => None,
        };
        let redis_url = match &config.storage {
            StorageConfig::Redis { url, .. } => Some(url.clone()),
            _ => None,
        };
        let cluster = Arc::new(crate::cluster::Cluster::new(
            role,
            local_addr,
            store.cluster(),
            redis_url,
        ));
        let cluster_task = crate::cluster::spawn(
            Arc::clone(&cluster),
            crate::cluster::SyncTargets {
                store: Arc::clone(&store),
                registry: Arc::clone(&registry),
                matcher: role.matches().then(|| matcher.clone()),
                clock: Arc::clone(&clock),
                metrics: Arc::clone(&metrics),
            },
            shutdown_rx.clone(),
        );
        let request_limits = Arc::new(api::limits::RequestLimits::new(config.rate_limit));
        let serve_limits = config.serve_limits.clone();
        let state = AppState::new(api::SharedState {
            config: Arc::new(config),
            store,
            registry,
            matcher: matcher.clone(),
            issuer,
            events,
            clock,
            started_at: now,
            metrics,
            ticket_rules: Arc::new(parking_lot::Mutex::new(ticket_rules)),
            auth,
            request_limits,
            shutdown: shutdown_rx.clone(),
            cluster,
            history,
        });
        let server_task = spawn_serve(
            listener,
            api::router(state.clone()),
            serve_limits.clone(),
            shutdown_rx.clone(),
        );
        let (metrics_addr, metrics_task) = match metrics_listener {
            Some((listener, bound)) => {
                tracing::info!(addr = %bound, "metrics listening");
                let task = spawn_serve(
                    listener,
                    api::metrics_router(state.clone()),
                    serve_limits,
                    shutdown_rx,
                );
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        tracing::info!(addr = %local_addr, store = state.store.kind(), kid = %state.issuer.keyring().current_kid(),
            "control plane listening");
        Ok(ControlPlane {
            local_addr,
            shutdown: shutdown_tx,
            server_task,
            metrics_addr,
            metrics_task,
            matcher_task,
            feed_task,
            cluster_task,
            lease_task,
            history_task,
            feed_paused,
            state,
            _matcher: matcher,
        })
    }
}

fn spawn_serve(
    listener: TcpListener,
    app: axum::Router,
    limits: matchplane_edge::serve::ServeLimits,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stopped = async move {
            // Either a shutdown request or the handle being dropped ends serving.
            let _ = shutdown.changed().await;
        };
        if let Err(err) = matchplane_edge::serve::serve(listener, app, limits, stopped).await {
            tracing::error!(error = %err, "HTTP server failed");
        }
    })
}

/// A running control plane. Dropping it does not stop it; call `shutdown`.
pub struct ControlPlane {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server_task: JoinHandle<()>,
    metrics_addr: Option<SocketAddr>,
    metrics_task: Option<JoinHandle<()>>,
    matcher_task: JoinHandle<()>,
    /// Reads what other replicas change (only with a shared store).
    feed_task: Option<JoinHandle<()>>,
    /// Announces this replica and refreshes the shared registry (only with a shared store).
    cluster_task: Option<JoinHandle<()>>,
    /// Keeps this replica's matcher leases (only with a shared store).
    lease_task: Option<JoinHandle<()>>,
    /// Samples the queues for the dashboard's history.
    history_task: JoinHandle<()>,
    feed_paused: Arc<watch::Sender<bool>>,
    state: AppState,
    _matcher: MatcherHandle,
}

impl ControlPlane {
    pub fn builder(config: Config) -> Builder {
        Builder {
            config,
            clock: None,
            store: None,
        }
    }

    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::builder(config).start().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://127.0.0.1:PORT` style base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Where `/metrics` is served when `metrics_bind` moved it off the public listener.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The bearer token for `/v1/admin/*` (generated in memory unless configured).
    pub fn admin_token(&self) -> String {
        self.state
            .auth
            .admin_token()
            .map(|secret| secret.expose().to_owned())
            .unwrap_or_default()
    }

    /// The bearer token game servers register with.
    pub fn registration_token(&self) -> String {
        self.state
            .auth
            .registration_token()
            .map(|secret| secret.expose().to_owned())
            .unwrap_or_default()
    }

    /// Test hook: while paused, this replica reads nothing from the cluster
    /// event feed and holds no connection for it; on resume it catches up
    /// from where it stopped (or resyncs if that position is gone).
    #[doc(hidden)]
    pub fn pause_event_feed(&self, paused: bool) {
        self.feed_paused.send_replace(paused);
    }

    /// Stops accepting, finishes in-flight requests and stops the matching loop.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server_task.await;
        if let Some(metrics_task) = self.metrics_task {
            let _ = metrics_task.await;
        }
        let _ = self.matcher_task.await;
        if let Some(feed_task) = self.feed_task {
            let _ = feed_task.await;
        }
        if let Some(cluster_task) = self.cluster_task {
            let _ = cluster_task.await;
        }
        if let Some(lease_task) = self.lease_task {
            let _ = lease_task.await;
        }
        let _ = self.history_task.await;
        if let Err(err) = self.state.store.close().await {
            tracing::warn!(error = %err, "could not close the store cleanly");
        }
        tracing::info!("control plane stopped");
    }

    /// Test hook: stops as a killed process would. Every task ends where it
    /// is and nothing says goodbye: matcher leases lapse instead of being
    /// released, the replica entry goes stale instead of being withdrawn.
    #[doc(hidden)]
    pub async fn crash(self) {
        let tasks = [
            Some(self.server_task),
            self.metrics_task,
            Some(self.matcher_task),
            self.feed_task,
            self.cluster_task,
            self.lease_task,
            Some(self.history_task),
        ];
        let tasks: Vec<JoinHandle<()>> = tasks.into_iter().flatten().collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Runs until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        tracing::info!("shutdown requested");
        self.shutdown().await;
    }
}
