//! This replica among the others sharing its store: the cluster view of
//! `GET /v1/admin/cluster`, and — with a shared (Redis) store — the task that
//! keeps this replica's entry in `{P}:replicas` fresh and its in-memory
//! server registry in step with the heartbeats other replicas received.
//! On one box (redb) there is nothing to share: the view is this replica alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use matchplane_contracts::admin::{ClusterView, LeaseView, RedisView, ReplicaView};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{Clock, Millis};
use crate::config::Role;
use crate::matcher::MatcherHandle;
use crate::metrics::{self, Metrics};
use crate::registry::{LossKind, LostServer, Registry};
use crate::store::{RedisCluster, ReplicaEntry, Store};

/// How often a replica says it is alive.
const ANNOUNCE_EVERY_MS: Millis = 1_000;
/// A replica silent this long is left out of the view (and its entry deleted).
pub const REPLICA_FORGET_AFTER_MS: Millis = 30_000;
/// Fastest and slowest registry refresh: half the heartbeat interval, within these.
const MIN_REFRESH: Duration = Duration::from_millis(100);
const MAX_REFRESH: Duration = Duration::from_secs(1);
/// A server missing from the shared registry is forgotten only if this
/// replica has not heard it for this long: a registration whose write
/// raced the read is not dropped.
const MISSING_GRACE_MS: Millis = 5_000;

pub struct Cluster {
    replica_id: String,
    role: Role,
    address: SocketAddr,
    /// The shared Redis; `None` on one box.
    redis: Option<RedisCluster>,
    /// The Redis URL with its password redacted.
    redis_url: Option<String>,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::All => "all",
        Role::Api => "api",
        Role::Matcher => "matcher",
    }
}

impl Cluster {
    pub fn new(
        role: Role,
        address: SocketAddr,
        redis: Option<RedisCluster>,
        redis_url: Option<String>,
    ) -> Self {
        let replica_id = redis.as_ref().map_or_else(
            || uuid::Uuid::new_v4().to_string(),
            |redis| redis.replica_id().to_owned(),
        );
        Self {
            replica_id,
            role,
            address,
            redis,
            redis_url: redis_url.map(|url| crate::config::redact_url_credentials(&url)),
        }
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// `all`, `api` or `matcher`, as in `/health` and the replica entries.
    pub fn role_name(&self) -> &'static str {
        role_name(self.role)
    }

    /// Whether the server registry is shared through the store.
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    fn entry(&self, now: Millis) -> ReplicaEntry {
        ReplicaEntry {
            id: self.replica_id.clone(),
            role: role_name(self.role).to_owned(),
            address: self.address.to_string(),
            last_seen_ms: now,
        }
    }

    /// The view as of `now`. With Redis unreachable it still answers, with
    /// `connected: false` and only what this replica knows of itself.
    pub async fn view(&self, now: Millis) -> ClusterView {
        let replica_view = |entry: ReplicaEntry| ReplicaView {
            last_seen_ago_ms: now.saturating_sub(entry.last_seen_ms),
            id: entry.id,
            role: entry.role,
            address: entry.address,
            last_seen_ms: entry.last_seen_ms,
        };
        let Some(redis) = &self.redis else {
            return ClusterView {
                replica_id: self.replica_id.clone(),
                replicas: vec![replica_view(self.entry(now))],
                leases: Vec::new(),
                redis: None,
            };
        };
        let replicas = redis.live_replicas(now, REPLICA_FORGET_AFTER_MS).await;
        let leases = redis.leases().await;
        let connected = replicas.is_ok() && leases.is_ok();
        let replicas = match replicas {
            Ok(replicas) => replicas.into_iter().map(replica_view).collect(),
            Err(_) => vec![replica_view(self.entry(now))],
        };
        ClusterView {
            replica_id: self.replica_id.clone(),
            replicas,
            leases: leases
                .unwrap_or_default()
                .into_iter()
                .map(|lease| LeaseView {
                    queue_key: lease.queue_key,
                    holder: lease.holder,
                    epoch: lease.epoch,
                    expires_in_ms: lease.expires_in_ms,
                })
                .collect(),
            redis: Some(RedisView {
                connected,
                url: self.redis_url.clone().unwrap_or_default(),
            }),
        }
    }
}

/// Where the shared-registry task reads and delivers.
pub struct SyncTargets {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    /// This replica's matcher; `None` when it does not match (`--role api`).
    pub matcher: Option<MatcherHandle>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

/// With a shared store: announces this replica every second and refreshes
/// the registry every half heartbeat interval (at most every second). A
/// server that another replica saw restart or deregister is released here
/// too; the store's exact-assignment check makes the second release a no-op.
/// `None` on one box.
pub fn spawn(
    cluster: Arc<Cluster>,
    targets: SyncTargets,
    mut shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let redis = cluster.redis.clone()?;
    let heartbeat = Duration::from_millis(targets.registry.heartbeat_ms());
    let every = (heartbeat / 2).clamp(MIN_REFRESH, MAX_REFRESH);
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut announced_at: Option<Millis> = None;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = ticker.tick() => {}
            }
            let now = targets.clock.now_ms();
            let mut outcome = Ok(());
            if announced_at.is_none_or(|at| now.saturating_sub(at) >= ANNOUNCE_EVERY_MS) {
                outcome = redis
                    .announce(
                        &cluster.entry(now),
                        now.saturating_sub(REPLICA_FORGET_AFTER_MS),
                    )
                    .await;
                if outcome.is_ok() {
                    announced_at = Some(now);
                }
            }
            if outcome.is_ok() {
                outcome = refresh_registry(&targets).await;
            }
            match outcome {
                Ok(()) if failing => {
                    tracing::info!("shared server registry reachable again");
                    failing = false;
                }
                Ok(()) => {}
                Err(err) => {
                    metrics::inc(&targets.metrics.store_errors);
                    if !failing {
                        tracing::warn!(error = %err, "cannot refresh the shared server registry; retrying");
                        failing = true;
                    }
                }
            }
        }
        // Leaves the view at once rather than after REPLICA_FORGET_AFTER_MS.
        let _ = redis.withdraw().await;
    }))
}

async fn refresh_registry(targets: &SyncTargets) -> Result<(), crate::store::StoreError> {
    let read_at = targets.clock.now_ms();
    let servers = targets.store.servers().await?;
    let merge = targets
        .registry
        .merge_shared(servers, read_at.saturating_sub(MISSING_GRACE_MS));
    let Some(matcher) = &targets.matcher else {
        return Ok(());
    };
    for lost in merge.restarted {
        matcher.server_gone(lost);
    }
    for record in merge.removed {
        // Another replica's allocations are not known here: only lands the server
        // reported open are released by this path.
        matcher.server_gone(LostServer {
            record,
            why: LossKind::Deregistered,
            pending_lands: Vec::new(),
        });
    }
    Ok(())
}
