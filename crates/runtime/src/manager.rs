//! Land types registered at start-up ([`LandRegistry`]) and live lands ([`LandManager`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use matchplane_contracts::game::{LandClosed, LandSummary, close_code, error_code};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::auth::{Admission, Rejection};
use crate::core::{ConnHandle, LandCore};
use crate::keeper::{self, JoinReply, KeeperCommand, KeeperParams};
use crate::land::{CreateInfo, Land, LandSettings};
use crate::shedding::{DEFAULT_MAX_SYNC_STRETCH, SyncShedding};

/// Commands a keeper may have queued before connections feel backpressure.
const KEEPER_MAILBOX: usize = 1024;
/// How long the id of a land that is gone is refused, so late joiners of a finished
/// match get 4409 instead of silently starting a new game under the same id. Longer
/// than a match token lives (60 s by default).
const TOMBSTONE_TTL: Duration = Duration::from_secs(300);
/// A join bounced by disposing lands this many times in a row is refused.
const JOIN_ATTEMPTS: usize = 3;

/// A land type, type-erased so lands of different Rust types share one manager.
trait LandType: Send + Sync {
    fn settings(&self) -> &LandSettings;
    fn spawn(
        &self,
        info: CreateInfo,
        commands: mpsc::Receiver<KeeperCommand>,
        params: KeeperParams,
    );
}

struct TypedLandType<L: Land> {
    config: L::Config,
    settings: LandSettings,
}

impl<L: Land> LandType for TypedLandType<L> {
    fn settings(&self) -> &LandSettings {
        &self.settings
    }

    fn spawn(
        &self,
        info: CreateInfo,
        commands: mpsc::Receiver<KeeperCommand>,
        params: KeeperParams,
    ) {
        let config = self.config.clone();
        let settings = self.settings.clone();
        let span =
            tracing::info_span!("land", land_id = %info.land_id, land_type = %info.land_type);
        tokio::spawn(
            async move {
                let core = LandCore::<L>::create(&config, settings, &info, Instant::now());
                keeper::run(core, commands, params).await;
            }
            .instrument(span),
        );
    }
}

/// The land types a server hosts, by route name (`/game/{name}`).
#[derive(Default, Clone)]
pub struct LandRegistry {
    types: BTreeMap<String, Arc<dyn LandType>>,
}

impl std::fmt::Debug for LandRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LandRegistry")
            .field("types", &self.types.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LandRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `L` under `name` with the settings it declares for `config`.
    pub fn register<L: Land>(self, name: impl Into<String>, config: L::Config) -> Self {
        let settings = L::settings(&config);
        self.register_with_settings::<L>(name, config, settings)
    }

    /// Registers `L` under `name`, overriding its declared settings.
    pub fn register_with_settings<L: Land>(
        mut self,
        name: impl Into<String>,
        config: L::Config,
        settings: LandSettings,
    ) -> Self {
        self.types.insert(
            name.into(),
            Arc::new(TypedLandType::<L> { config, settings }),
        );
        self
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.types.contains_key(name)
    }

    pub fn settings(&self, name: &str) -> Option<&LandSettings> {
        self.types.get(name).map(|land_type| land_type.settings())
    }
}

/// Live counters of one land, written by its keeper and read by admin and heartbeats.
#[derive(Debug)]
pub(crate) struct LandStats {
    pub(crate) seats: AtomicUsize,
    pub(crate) connected: AtomicUsize,
    ticks: AtomicU64,
    last_tick_ns: AtomicU64,
    total_tick_ns: AtomicU64,
    max_tick_ns: AtomicU64,
    created: Instant,
}

impl LandStats {
    fn new() -> Self {
        Self {
            seats: AtomicUsize::new(0),
            connected: AtomicUsize::new(0),
            ticks: AtomicU64::new(0),
            last_tick_ns: AtomicU64::new(0),
            total_tick_ns: AtomicU64::new(0),
            max_tick_ns: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    pub(crate) fn record_tick(&self, cost: Duration) {
        let nanos = u64::try_from(cost.as_nanos()).unwrap_or(u64::MAX);
        self.ticks.fetch_add(1, Ordering::Relaxed);
        self.last_tick_ns.store(nanos, Ordering::Relaxed);
        self.total_tick_ns.fetch_add(nanos, Ordering::Relaxed);
        self.max_tick_ns.fetch_max(nanos, Ordering::Relaxed);
    }
}

struct LandEntry {
    land_type: String,
    /// Created for a match (from a match token): its id must never come back.
    for_match: bool,
    generation: u64,
    commands: mpsc::Sender<KeeperCommand>,
    stats: Arc<LandStats>,
}

#[derive(Default)]
struct Lands {
    live: HashMap<String, LandEntry>,
    closed: HashMap<String, Instant>,
}

pub(crate) struct ManagerInner {
    registry: LandRegistry,
    /// Most live lands at once, however they are created (match tokens, `--auth none`).
    max_lands: usize,
    lands: Mutex<Lands>,
    pub(crate) draining: AtomicBool,
    land_count: watch::Sender<usize>,
    next_generation: AtomicU64,
    next_conn_id: AtomicU64,
    /// How many ticks one periodic sync stands for while the process is overloaded.
    pub(crate) shedding: SyncShedding,
}

impl ManagerInner {
    /// Called by a keeper as it stops; a later land with the same id is a new generation
    /// and must not be removed by a stale keeper.
    pub(crate) fn remove_land(&self, land_id: &str, generation: u64, closed_by_land: bool) {
        let mut lands = self.lands.lock();
        let mut for_match = false;
        if lands
            .live
            .get(land_id)
            .is_some_and(|entry| entry.generation == generation)
        {
            for_match = lands
                .live
                .remove(land_id)
                .is_some_and(|entry| entry.for_match);
        }
        // A land that closed itself stays refused for a while, and so does any
        // land of a match however it ended (disposed when empty, shut down):
        // a match token names exactly one land and must not silently start a
        // fresh game under that id. Development rooms may be reopened once empty.
        if closed_by_land || for_match {
            let now = Instant::now();
            lands
                .closed
                .retain(|_, at| now.duration_since(*at) < TOMBSTONE_TTL);
            lands.closed.insert(land_id.to_owned(), now);
        }
        self.land_count.send_replace(lands.live.len());
    }
}

/// Creates lands lazily, routes joins to them, and reports and drains them.
#[derive(Clone)]
pub struct LandManager {
    inner: Arc<ManagerInner>,
}

impl std::fmt::Debug for LandManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LandManager")
            .field("registry", &self.inner.registry)
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

/// A cheap point-in-time view of the load, for heartbeats and health checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadSnapshot {
    pub lands: usize,
    /// Seats, including players within their reconnect grace.
    pub players: usize,
    pub land_ids_by_type: BTreeMap<String, Vec<String>>,
    pub draining: bool,
}

/// Where a connection's messages go once its player is seated.
#[derive(Debug, Clone)]
pub(crate) struct Seated {
    pub(crate) commands: mpsc::Sender<KeeperCommand>,
}

impl LandManager {
    /// A manager without a limit on the number of lands.
    pub fn new(registry: LandRegistry) -> Self {
        Self::with_max_lands(registry, usize::MAX)
    }

    /// A manager that refuses to create a land beyond `max_lands` live ones (close 4409,
    /// `server_full`); joins to existing lands are unaffected.
    pub fn with_max_lands(registry: LandRegistry, max_lands: usize) -> Self {
        Self::with_limits(registry, max_lands, DEFAULT_MAX_SYNC_STRETCH)
    }

    /// Also bounds sync shedding: under overload a land's periodic sync may stand for
    /// up to `max_sync_stretch` of its usual ticks (1: never shed, sync every tick).
    pub fn with_limits(registry: LandRegistry, max_lands: usize, max_sync_stretch: u32) -> Self {
        let (land_count, _) = watch::channel(0);
        Self {
            inner: Arc::new(ManagerInner {
                registry,
                max_lands,
                lands: Mutex::new(Lands::default()),
                draining: AtomicBool::new(false),
                land_count,
                next_generation: AtomicU64::new(1),
                next_conn_id: AtomicU64::new(1),
                shedding: SyncShedding::new(max_sync_stretch),
            }),
        }
    }

    pub fn registry(&self) -> &LandRegistry {
        &self.inner.registry
    }

    /// How many ticks one periodic sync stands for now (1 unless shedding).
    pub fn sync_stretch(&self) -> u32 {
        self.inner.shedding.stretch()
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.inner.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Stops admitting new players and creating lands; seated players may still reconnect.
    /// The mailboxes of every live land, taken under the lock and used after it.
    fn live_keepers(&self) -> Vec<mpsc::Sender<KeeperCommand>> {
        self.inner
            .lands
            .lock()
            .live
            .values()
            .map(|entry| entry.commands.clone())
            .collect()
    }

    /// Lands that are empty (now or later) are disposed at once.
    pub fn start_draining(&self) {
        if self.inner.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!("draining: no new players or lands");
        let keepers = self.live_keepers();
        for keeper in keepers {
            // A full mailbox wakes the keeper anyway, and it checks after every batch.
            let _ = keeper.try_send(KeeperCommand::Draining);
        }
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    pub fn load(&self) -> LoadSnapshot {
        let lands = self.inner.lands.lock();
        let mut snapshot = LoadSnapshot {
            lands: lands.live.len(),
            draining: self.is_draining(),
            ..LoadSnapshot::default()
        };
        for (land_id, entry) in &lands.live {
            snapshot.players += entry.stats.seats.load(Ordering::Relaxed);
            snapshot
                .land_ids_by_type
                .entry(entry.land_type.clone())
                .or_default()
                .push(land_id.clone());
        }
        for ids in snapshot.land_ids_by_type.values_mut() {
            ids.sort();
        }
        snapshot
    }

    /// Per-land details for the admin endpoint, sorted by land id.
    pub fn lands(&self) -> Vec<LandSummary> {
        let lands = self.inner.lands.lock();
        let now = Instant::now();
        let mut summaries: Vec<LandSummary> = lands
            .live
            .iter()
            .map(|(land_id, entry)| {
                let stats = &entry.stats;
                let ticks = stats.ticks.load(Ordering::Relaxed);
                let total = stats.total_tick_ns.load(Ordering::Relaxed);
                LandSummary {
                    land_id: land_id.clone(),
                    land_type: entry.land_type.clone(),
                    players: stats.seats.load(Ordering::Relaxed),
                    connected: stats.connected.load(Ordering::Relaxed),
                    age_ms: u64::try_from(now.duration_since(stats.created).as_millis())
                        .unwrap_or(u64::MAX),
                    tick_rate_hz: self
                        .inner
                        .registry
                        .settings(&entry.land_type)
                        .map_or(0.0, |settings| settings.tick_rate_hz),
                    ticks,
                    last_tick_us: stats.last_tick_ns.load(Ordering::Relaxed) / 1_000,
                    mean_tick_us: total.checked_div(ticks).unwrap_or(0) / 1_000,
                    max_tick_us: stats.max_tick_ns.load(Ordering::Relaxed) / 1_000,
                }
            })
            .collect();
        summaries.sort_by(|a, b| a.land_id.cmp(&b.land_id));
        summaries
    }

    /// Waits until no land is left; `false` if `timeout` ran out first.
    pub async fn wait_until_empty(&self, timeout: Duration) -> bool {
        let mut count = self.inner.land_count.subscribe();
        tokio::time::timeout(timeout, count.wait_for(|lands| *lands == 0))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// Drains, then closes every land (players get `land.closed` and close code 1001), and
    /// waits up to `timeout` for the keepers to finish.
    pub async fn shutdown(&self, reason: &str, timeout: Duration) -> bool {
        self.start_draining();
        let keepers = self.live_keepers();
        tracing::info!(lands = keepers.len(), reason, "closing all lands");
        for keeper in keepers {
            let command = KeeperCommand::Shutdown {
                reason: LandClosed {
                    reason: reason.to_owned(),
                    result: None,
                },
            };
            let _ = keeper.send(command).await;
        }
        self.wait_until_empty(timeout).await
    }

    /// Seats an admitted connection in its land, creating the land if needed.
    pub(crate) async fn join(
        &self,
        land_type: &str,
        admission: &Admission,
        conn: ConnHandle,
    ) -> Result<Seated, Rejection> {
        if !self.inner.registry.contains(land_type) {
            return Err(Rejection::new(
                close_code::UNKNOWN_LAND_TYPE,
                error_code::UNKNOWN_LAND_TYPE,
                format!("no land type {land_type:?} on this server"),
            ));
        }
        for _ in 0..JOIN_ATTEMPTS {
            let (commands, generation) = self.land_for(land_type, admission)?;
            let (reply, answer) = oneshot::channel();
            let command = KeeperCommand::Join {
                admission: admission.clone(),
                conn: conn.clone(),
                reply,
            };
            if commands.send(command).await.is_err() {
                self.inner
                    .remove_land(&admission.land_id, generation, false);
                continue;
            }
            match answer.await {
                Ok(JoinReply::Joined) => return Ok(Seated { commands }),
                Ok(JoinReply::Rejected(rejection)) => return Err(rejection),
                Ok(JoinReply::Retry) | Err(_) => continue,
            }
        }
        Err(Rejection::new(
            close_code::LAND_FULL_OR_CLOSED,
            error_code::LAND_CLOSED,
            "land is being disposed; retry",
        ))
    }

    fn land_for(
        &self,
        land_type: &str,
        admission: &Admission,
    ) -> Result<(mpsc::Sender<KeeperCommand>, u64), Rejection> {
        let mut lands = self.inner.lands.lock();
        if let Some(entry) = lands.live.get(&admission.land_id) {
            if entry.land_type != land_type {
                return Err(Rejection::forbidden(format!(
                    "land {:?} is a {:?} land",
                    admission.land_id, entry.land_type
                )));
            }
            return Ok((entry.commands.clone(), entry.generation));
        }
        if self.is_draining() {
            return Err(Rejection::new(
                close_code::GOING_AWAY,
                error_code::DRAINING,
                "server is draining and creates no new lands",
            ));
        }
        if lands
            .closed
            .get(&admission.land_id)
            .is_some_and(|at| at.elapsed() < TOMBSTONE_TTL)
        {
            return Err(Rejection::new(
                close_code::LAND_FULL_OR_CLOSED,
                error_code::LAND_CLOSED,
                "land is closed",
            ));
        }
        if lands.live.len() >= self.inner.max_lands {
            return Err(Rejection::new(
                close_code::LAND_FULL_OR_CLOSED,
                error_code::SERVER_FULL,
                format!(
                    "this server already runs its maximum of {} lands",
                    self.inner.max_lands
                ),
            ));
        }
        let Some(kind) = self.inner.registry.types.get(land_type) else {
            return Err(Rejection::new(
                close_code::UNKNOWN_LAND_TYPE,
                error_code::UNKNOWN_LAND_TYPE,
                format!("no land type {land_type:?} on this server"),
            ));
        };
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(LandStats::new());
        let (commands, mailbox) = mpsc::channel(KEEPER_MAILBOX);
        let info = CreateInfo {
            land_id: admission.land_id.clone(),
            land_type: land_type.to_owned(),
            match_id: admission.match_id.clone(),
            roster: admission.roster.clone(),
        };
        kind.spawn(
            info,
            mailbox,
            KeeperParams {
                land_id: admission.land_id.clone(),
                land_type: land_type.to_owned(),
                generation,
                stats: Arc::clone(&stats),
                manager: Arc::clone(&self.inner),
            },
        );
        lands.live.insert(
            admission.land_id.clone(),
            LandEntry {
                land_type: land_type.to_owned(),
                for_match: admission.match_id.is_some(),
                generation,
                commands: commands.clone(),
                stats,
            },
        );
        self.inner.land_count.send_replace(lands.live.len());
        Ok((commands, generation))
    }
}
