//! The game-server registry and the allocation of new lands on it.
//!
//! The store holds the durable copy of each registration; this in-memory index
//! answers allocation without a store round trip and counts the lands handed
//! out since each server's last heartbeat, so a burst cannot overfill a server
//! whose reported load is still stale.

use std::collections::{BTreeMap, HashSet, VecDeque};

use matchplane_contracts::admin::ServerView;
use parking_lot::Mutex;

use crate::clock::{Millis, format_rfc3339};
use crate::config::Placement;
use crate::sharded::ShardedMap;
use crate::store::ServerRecord;

pub struct Registry {
    ttl_ms: Millis,
    /// The heartbeat interval servers are told to keep; two missed ones make a server suspect.
    heartbeat_ms: Millis,
    servers: Mutex<BTreeMap<String, Entry>>,
    abandoned_total: std::sync::atomic::AtomicU64,
}

struct Entry {
    record: ServerRecord,
    /// Lands allocated here that the server has not yet reported as open.
    pending: PendingLands,
    /// Allocated lands nobody joined before their assignments expired.
    abandoned: u64,
    /// Whether this (lost) instance's stranded tickets were dealt with, so a
    /// loss is handled once; a heartbeat that brings the server back clears it.
    loss_handled: bool,
    /// When the store last got this server's record (see `needs_persisting`).
    persisted_at: Millis,
}

/// A heartbeat that changes nothing but load, open lands and the time is
/// written to the store at most this often: the store copy only rebuilds the
/// registry after a restart, and an fsync per heartbeat would compete with ticket writes.
const PERSIST_HEARTBEATS_EVERY_MS: Millis = 30_000;

/// A server instance whose tickets must be released: lost (silent past the
/// TTL), replaced by a new instance under the same id, or deregistered.
#[derive(Debug, Clone, PartialEq)]
pub struct LostServer {
    /// The record as last heard from (its `land_ids` say which lands were open).
    pub record: ServerRecord,
    pub why: LossKind,
    /// Lands allocated on it that it never reported open (nobody joined yet), as
    /// this replica knows them: the only lands whose tickets are requeued as
    /// not-yet-joined. A land reported open once and gone since is a match that ended.
    pub pending_lands: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// No heartbeat within the TTL.
    Silent,
    /// Registered again with another `instanceId`: the old process died.
    Restarted,
    /// Deregistered while it still held allocations.
    Deregistered,
}

/// What taking in the shared registry changed here.
#[derive(Debug, Default)]
pub struct SharedMerge {
    /// Instances replaced by a new one under the same id.
    pub restarted: Vec<LostServer>,
    /// Servers deregistered (or forgotten) through another replica.
    pub removed: Vec<ServerRecord>,
}

/// Where a new land goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub server_id: String,
    pub server_instance_id: Option<String>,
    pub land_id: String,
    pub connect_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Live,
    /// Heartbeat late by more than two intervals: no new lands until it is heard again.
    Suspect,
    Draining,
    /// Not heard from within the TTL.
    Lost,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Suspect => "suspect",
            Self::Draining => "draining",
            Self::Lost => "lost",
        }
    }
}

impl Registry {
    pub fn new(ttl_ms: Millis, heartbeat_ms: Millis) -> Self {
        Self {
            ttl_ms,
            heartbeat_ms,
            servers: Mutex::new(BTreeMap::new()),
            abandoned_total: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Registration and heartbeat: replaces what the server said last time.
    ///
    /// When the server reports its open `landIds`, pending allocations it
    /// reports are confirmed, and those whose assignments expired without the
    /// land ever opening are counted as abandoned (nobody joined). A server that
    /// reports no land ids only has its allocations-since-last-heartbeat reset.
    ///
    /// Returns the previous instance when this registration comes from a new
    /// process under the same server id: that instance's lands died with it.
    pub fn upsert(&self, record: ServerRecord) -> Option<LostServer> {
        self.upsert_in(&mut self.servers.lock(), record)
    }

    fn upsert_in(
        &self,
        servers: &mut BTreeMap<String, Entry>,
        record: ServerRecord,
    ) -> Option<LostServer> {
        let now = record.last_seen;
        let previous = servers.remove(&record.server_id);
        let restarted = previous.as_ref().and_then(|entry| {
            let old = entry.record.instance_id.as_ref()?;
            let new = record.instance_id.as_ref()?;
            // A loss already handled (silent past the TTL) is not handled twice.
            (old != new && !entry.loss_handled).then(|| LostServer {
                record: entry.record.clone(),
                why: LossKind::Restarted,
                pending_lands: entry.pending.land_ids(),
            })
        });
        let persisted_at = previous.as_ref().map_or(0, |entry| entry.persisted_at);
        let (mut pending, mut abandoned) = match previous {
            // A new instance starts with nothing pending: the old allocations died.
            Some(entry) if restarted.is_none() => (entry.pending, entry.abandoned),
            Some(entry) => (PendingLands::default(), entry.abandoned),
            None => Default::default(),
        };
        match &record.land_ids {
            Some(open) => {
                let open: HashSet<&str> = open.iter().map(String::as_str).collect();
                let gone = pending.reconcile(&open, now);
                if !gone.is_empty() {
                    // One line per heartbeat, not per land: players who never come
                    // (a load test without joins, a broken client release) can
                    // abandon thousands a second, and a line each flooded the log.
                    tracing::warn!(server_id = %record.server_id, lands = gone.len(),
                        first = %gone[0],
                        "allocated lands were never joined before their assignments expired");
                    for land_id in &gone {
                        tracing::debug!(server_id = %record.server_id, land_id = %land_id,
                            "allocated land was never joined before its assignment expired");
                    }
                    let count = gone.len() as u64;
                    abandoned += count;
                    self.abandoned_total
                        .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
                }
            }
            None => pending = PendingLands::default(),
        }
        servers.insert(
            record.server_id.clone(),
            Entry {
                record,
                pending,
                abandoned,
                loss_handled: false,
                persisted_at,
            },
        );
        restarted
    }

    /// Whether this report must be written to the store: the server is new, or
    /// something besides its load, open lands and liveness changed, or its last
    /// write is old.
    pub fn needs_persisting(&self, record: &ServerRecord) -> bool {
        let servers = self.servers.lock();
        let Some(entry) = servers.get(&record.server_id) else {
            return true;
        };
        let known = &entry.record;
        let same_registration = known.host == record.host
            && known.port == record.port
            && known.land_types == record.land_types
            && known.connect_host == record.connect_host
            && known.connect_port == record.connect_port
            && known.connect_scheme == record.connect_scheme
            && known.connect_path_prefix == record.connect_path_prefix
            && known.region == record.region
            && known.capacity == record.capacity
            && known.draining == record.draining
            && known.instance_id == record.instance_id
            && known.registered_with == record.registered_with;
        !same_registration
            || record.last_seen.saturating_sub(entry.persisted_at) >= PERSIST_HEARTBEATS_EVERY_MS
    }

    /// Takes in the registry a shared store holds (every replica writes each
    /// heartbeat it receives there): reports newer than this replica's copy
    /// replace it, as a heartbeat received here would. Servers missing from
    /// the store are forgotten if last heard before `missing_since`; a later
    /// one may be a registration that raced the read.
    pub fn merge_shared(&self, shared: Vec<ServerRecord>, missing_since: Millis) -> SharedMerge {
        let mut merge = SharedMerge::default();
        let listed: HashSet<String> = shared
            .iter()
            .map(|record| record.server_id.clone())
            .collect();
        // One lock over the whole merge: a heartbeat received here meanwhile
        // is never overwritten by an older report.
        let mut servers = self.servers.lock();
        for record in shared {
            // An older report, even of another instance, loses to what this
            // replica heard since (its own write may just not be read yet).
            let newer = servers
                .get(&record.server_id)
                .is_none_or(|known| record.last_seen > known.record.last_seen);
            if newer {
                let server_id = record.server_id.clone();
                let last_seen = record.last_seen;
                merge.restarted.extend(self.upsert_in(&mut servers, record));
                // Written by the replica that heard it: nothing to persist here.
                if let Some(entry) = servers.get_mut(&server_id) {
                    entry.persisted_at = last_seen;
                }
            }
        }
        let gone: Vec<String> = servers
            .values()
            .filter(|entry| {
                !listed.contains(&entry.record.server_id) && entry.record.last_seen < missing_since
            })
            .map(|entry| entry.record.server_id.clone())
            .collect();
        for server_id in gone {
            if let Some(entry) = servers.remove(&server_id) {
                merge.removed.push(entry.record);
            }
        }
        merge
    }

    /// Records that the store holds this server's report as of `at`.
    pub fn mark_persisted(&self, server_id: &str, at: Millis) {
        if let Some(entry) = self.servers.lock().get_mut(server_id) {
            entry.persisted_at = at;
        }
    }

    /// Servers that went silent past the TTL and whose loss was not handled yet.
    /// Cheap enough to call every matching tick: one pass, no allocation when none.
    pub fn newly_lost(&self, now: Millis) -> Vec<LostServer> {
        self.servers
            .lock()
            .values()
            .filter(|entry| {
                !entry.loss_handled && self.state(&entry.record, now) == ServerState::Lost
            })
            .map(|entry| LostServer {
                record: entry.record.clone(),
                why: LossKind::Silent,
                pending_lands: entry.pending.land_ids(),
            })
            .collect()
    }

    /// Lands allocated on this server that it has not reported open yet.
    pub fn pending_lands(&self, server_id: &str) -> Vec<String> {
        self.servers
            .lock()
            .get(server_id)
            .map(|entry| entry.pending.land_ids())
            .unwrap_or_default()
    }

    /// Marks a silent server's loss as handled, unless it was heard from since
    /// (then it is live again and a later silence is a new loss).
    pub fn loss_handled(&self, lost: &ServerRecord) {
        if let Some(entry) = self.servers.lock().get_mut(&lost.server_id)
            && entry.record.last_seen == lost.last_seen
        {
            entry.loss_handled = true;
            entry.pending = PendingLands::default();
        }
    }

    /// The heartbeat interval servers are asked to keep.
    pub fn heartbeat_ms(&self) -> Millis {
        self.heartbeat_ms
    }

    /// Allocated lands nobody joined, over all servers since start.
    pub fn abandoned_total(&self) -> u64 {
        self.abandoned_total
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn get(&self, server_id: &str) -> Option<ServerRecord> {
        self.servers
            .lock()
            .get(server_id)
            .map(|entry| entry.record.clone())
    }

    pub fn remove(&self, server_id: &str) -> bool {
        self.servers.lock().remove(server_id).is_some()
    }

    /// Whether the server has not been heard from within the TTL.
    pub fn is_expired(&self, record: &ServerRecord, now: Millis) -> bool {
        self.state(record, now) == ServerState::Lost
    }

    fn state(&self, record: &ServerRecord, now: Millis) -> ServerState {
        let silent_for = now.saturating_sub(record.last_seen);
        if silent_for >= self.ttl_ms {
            ServerState::Lost
        } else if record.draining {
            ServerState::Draining
        } else if silent_for > self.heartbeat_ms.saturating_mul(2) {
            ServerState::Suspect
        } else {
            ServerState::Live
        }
    }

    pub fn live_count(&self, now: Millis) -> u64 {
        let servers = self.servers.lock();
        servers
            .values()
            .filter(|entry| self.state(&entry.record, now) == ServerState::Live)
            .count() as u64
    }

    /// Picks a live server hosting `land_type` with room for one more land and
    /// mints the land id. `None` when no server can take it right now.
    ///
    /// The land counts against the server's capacity until the server reports
    /// it (or, for servers that report no land ids, until the next heartbeat).
    pub fn allocate(
        &self,
        land_type: &str,
        now: Millis,
        pending_until: Millis,
        placement: Placement,
    ) -> Option<Allocation> {
        let mut servers = self.servers.lock();
        for entry in servers.values_mut() {
            entry.pending.advance(now);
        }
        let chosen = servers
            .values()
            .filter(|entry| self.state(&entry.record, now) == ServerState::Live)
            .filter(|entry| {
                entry
                    .record
                    .land_types
                    .iter()
                    .any(|hosted| hosted == land_type)
            })
            .filter(|entry| entry.has_room())
            // A server shedding sync work goes last whatever the placement: another
            // land there would slow every player on it. Ties broken by server id so
            // allocation is deterministic.
            .min_by(|a, b| {
                let order = a.fill_ratio().total_cmp(&b.fill_ratio());
                let order = match placement {
                    Placement::Spread => order,
                    Placement::Pack => order.reverse(),
                };
                a.overloaded()
                    .cmp(&b.overloaded())
                    .then(order)
                    .then_with(|| a.record.server_id.cmp(&b.record.server_id))
            })?
            .record
            .server_id
            .clone();
        let entry = servers.get_mut(&chosen)?;
        let land_id = format!("{land_type}:{}", uuid::Uuid::new_v4());
        entry.pending.insert(land_id.clone(), pending_until);
        let connect_url = connect_url(&entry.record, land_type, &land_id);
        Some(Allocation {
            server_id: chosen,
            server_instance_id: entry.record.instance_id.clone(),
            land_id,
            connect_url,
        })
    }

    /// Gives back an allocation whose match was never committed.
    pub fn release(&self, allocation: &Allocation) {
        if let Some(entry) = self.servers.lock().get_mut(&allocation.server_id) {
            entry.pending.remove(&allocation.land_id);
        }
    }

    /// Forgets servers not heard from for `forget_after_ms` beyond the TTL.
    pub fn prune(&self, now: Millis, forget_after_ms: Millis) -> Vec<String> {
        let mut servers = self.servers.lock();
        let deadline = self.ttl_ms.saturating_add(forget_after_ms);
        let stale: Vec<String> = servers
            .values()
            .filter(|entry| now >= entry.record.last_seen.saturating_add(deadline))
            .map(|entry| entry.record.server_id.clone())
            .collect();
        for server_id in &stale {
            servers.remove(server_id);
        }
        stale
    }

    pub fn views(&self, now: Millis) -> Vec<ServerView> {
        let servers = self.servers.lock();
        servers
            .values()
            .map(|entry| {
                let record = &entry.record;
                ServerView {
                    server_id: record.server_id.clone(),
                    host: record.host.clone(),
                    port: record.port,
                    land_types: record.land_types.clone(),
                    region: record.region.clone(),
                    connect_base_url: connect_base(record),
                    capacity: record.capacity,
                    load: record.load,
                    allocated_since_heartbeat: u32::try_from(entry.pending.count_at(now))
                        .unwrap_or(u32::MAX),
                    pending_land_ids: entry.pending.land_ids(),
                    abandoned_lands: entry.abandoned,
                    open_lands: record.land_ids.as_ref().map(|ids| ids.len() as u64),
                    draining: record.draining,
                    state: self.state(record, now).as_str().to_owned(),
                    registered_at: format_rfc3339(record.registered_at),
                    last_seen_at: format_rfc3339(record.last_seen),
                    last_seen_ago_ms: now.saturating_sub(record.last_seen),
                }
            })
            .collect()
    }
}

impl Entry {
    fn lands_in_use(&self) -> u32 {
        let reported = self.record.load.map_or(0, |load| load.lands);
        reported.saturating_add(u32::try_from(self.pending.count()).unwrap_or(u32::MAX))
    }

    fn has_room(&self) -> bool {
        match self.record.capacity.and_then(|capacity| capacity.max_lands) {
            Some(max_lands) => self.lands_in_use() < max_lands,
            None => true,
        }
    }

    /// How full the server is: a fraction of capacity when known, else a raw land count.
    /// The server said it sheds sync work (its ticks run late).
    fn overloaded(&self) -> bool {
        self.record
            .load
            .and_then(|load| load.sync_stretch)
            .is_some_and(|stretch| stretch > 1)
    }

    fn fill_ratio(&self) -> f64 {
        let in_use = f64::from(self.lands_in_use());
        match self.record.capacity.and_then(|capacity| capacity.max_lands) {
            Some(max_lands) if max_lands > 0 => in_use / f64::from(max_lands),
            _ => in_use,
        }
    }
}

/// Allocations a server has not reported open yet. Counting them must be O(1)
/// because allocation consults every candidate server for every match.
#[derive(Debug, Default)]
struct PendingLands {
    /// Still within their assignment's lifetime: these count against capacity.
    /// Sharded: allocations nobody opens (abandoned matches, load tests without
    /// joins) stay for the assignment's lifetime, 60 s of matches, and growing
    /// one map rehashed all of them in the matching loop (≈ 60 ms at 229,376).
    live: ShardedMap<String, Millis>,
    /// Past it but not yet reconciled with a heartbeat.
    expired: HashSet<String>,
    /// `(expires_at, land_id)` in allocation order; expiry times never decrease
    /// (now + a fixed TTL), so the front is always the next to expire.
    by_expiry: VecDeque<(Millis, String)>,
}

impl PendingLands {
    fn insert(&mut self, land_id: String, expires_at: Millis) {
        self.by_expiry.push_back((expires_at, land_id.clone()));
        self.live.insert(land_id, expires_at);
    }

    fn remove(&mut self, land_id: &str) {
        self.live.remove(land_id);
        self.expired.remove(land_id);
    }

    /// Moves allocations whose assignments expired out of the live count.
    fn advance(&mut self, now: Millis) {
        while let Some((expires_at, _)) = self.by_expiry.front() {
            if *expires_at > now {
                break;
            }
            if let Some((_, land_id)) = self.by_expiry.pop_front()
                && self.live.remove(&land_id).is_some()
            {
                self.expired.insert(land_id);
            }
        }
    }

    fn count(&self) -> usize {
        self.live.len()
    }

    /// Live count as of `now`, for read-only views that cannot advance.
    fn count_at(&self, now: Millis) -> usize {
        self.live
            .values()
            .filter(|expires_at| now < **expires_at)
            .count()
    }

    fn land_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .live
            .keys()
            .chain(self.expired.iter())
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Applies a heartbeat's open land ids: reported lands are confirmed, and
    /// expired ones still missing are returned as abandoned.
    fn reconcile(&mut self, open: &HashSet<&str>, now: Millis) -> Vec<String> {
        self.advance(now);
        self.live
            .retain(|land_id, _| !open.contains(land_id.as_str()));
        let mut abandoned: Vec<String> = self
            .expired
            .drain()
            .filter(|land_id| !open.contains(land_id.as_str()))
            .collect();
        abandoned.sort();
        abandoned
    }
}

/// `{scheme}://{host}:{port}{prefix}` as clients must use it.
pub fn connect_base(record: &ServerRecord) -> String {
    let host = record.connect_host.as_deref().unwrap_or(&record.host);
    let port = record.connect_port.unwrap_or(record.port);
    let scheme = match record.connect_scheme.as_deref() {
        Some(scheme) => scheme.to_owned(),
        None if port == 443 => "wss".to_owned(),
        None => "ws".to_owned(),
    };
    let default_port = matches!(
        (scheme.as_str(), port),
        ("ws" | "http", 80) | ("wss" | "https", 443)
    );
    // A bare IPv6 literal needs brackets inside a URL.
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let prefix = record.connect_path_prefix.as_deref().unwrap_or("");
    if default_port {
        format!("{scheme}://{host}{prefix}")
    } else {
        format!("{scheme}://{host}:{port}{prefix}")
    }
}

pub fn connect_url(record: &ServerRecord, land_type: &str, land_id: &str) -> String {
    format!("{}/game/{land_type}?landId={land_id}", connect_base(record))
}

#[cfg(test)]
mod tests {
    use matchplane_contracts::provisioning::{Capacity, Load};

    use super::*;

    fn server(id: &str) -> ServerRecord {
        ServerRecord {
            server_id: id.to_owned(),
            host: "10.1.2.3".to_owned(),
            port: 8080,
            land_types: vec!["hero-defense".to_owned()],
            connect_host: None,
            connect_port: None,
            connect_scheme: None,
            connect_path_prefix: None,
            region: None,
            capacity: None,
            load: None,
            draining: false,
            land_ids: None,
            registered_at: 0,
            last_seen: 1_000,
            registered_with: None,
            instance_id: None,
        }
    }

    #[test]
    fn reported_land_ids_confirm_or_abandon_allocations() {
        let registry = Registry::new(90_000, 30_000);
        let mut server = server("a");
        server.capacity = Some(Capacity {
            max_lands: Some(2),
            max_players: None,
        });
        server.land_ids = Some(Vec::new());
        registry.upsert(server.clone());
        let joined = registry
            .allocate("hero-defense", 1_000, 61_000, Placement::Spread)
            .unwrap();
        let _ignored = registry
            .allocate("hero-defense", 1_000, 61_000, Placement::Spread)
            .unwrap();
        // Both pending: full, even though the reported load is still 0.
        assert!(
            registry
                .allocate("hero-defense", 1_000, 61_000, Placement::Spread)
                .is_none()
        );

        // A heartbeat before expiry reporting only the joined land confirms it;
        // the other stays pending.
        server.last_seen = 30_000;
        server.land_ids = Some(vec![joined.land_id.clone()]);
        server.load = Some(Load {
            lands: 1,
            players: 2,
            sync_stretch: None,
        });
        registry.upsert(server.clone());
        assert_eq!(registry.views(30_000)[0].pending_land_ids.len(), 1);
        assert!(
            registry
                .allocate("hero-defense", 30_000, 91_000, Placement::Spread)
                .is_none()
        );

        // After the assignment expired and the land never showed up: abandoned.
        server.last_seen = 62_000;
        registry.upsert(server);
        let view = &registry.views(62_000)[0];
        assert_eq!(view.abandoned_lands, 1);
        assert!(view.pending_land_ids.is_empty());
        assert_eq!(registry.abandoned_total(), 1);
        assert!(
            registry
                .allocate("hero-defense", 62_000, 122_000, Placement::Spread)
                .is_some()
        );
    }

    #[test]
    fn connect_url_rules() {
        let mut record = server("a");
        assert_eq!(
            connect_url(&record, "hd", "hd:1"),
            "ws://10.1.2.3:8080/game/hd?landId=hd:1"
        );
        record.connect_host = Some("game.example.com".to_owned());
        record.connect_port = Some(443);
        assert_eq!(
            connect_url(&record, "hd", "hd:1"),
            "wss://game.example.com/game/hd?landId=hd:1"
        );
        record.connect_scheme = Some("ws".to_owned());
        assert_eq!(
            connect_url(&record, "hd", "hd:1"),
            "ws://game.example.com:443/game/hd?landId=hd:1"
        );
        record.connect_port = Some(9090);
        record.connect_path_prefix = Some("/gs/2".to_owned());
        assert_eq!(
            connect_url(&record, "hd", "hd:1"),
            "ws://game.example.com:9090/gs/2/game/hd?landId=hd:1"
        );
        record.connect_host = Some("::1".to_owned());
        record.connect_path_prefix = None;
        assert_eq!(
            connect_url(&record, "hd", "hd:1"),
            "ws://[::1]:9090/game/hd?landId=hd:1"
        );
    }

    #[test]
    fn allocation_respects_ttl_draining_capacity_and_placement() {
        let registry = Registry::new(90_000, 30_000);
        let mut a = server("a");
        a.capacity = Some(Capacity {
            max_lands: Some(2),
            max_players: None,
        });
        let mut b = server("b");
        b.capacity = Some(Capacity {
            max_lands: Some(4),
            max_players: None,
        });
        b.load = Some(Load {
            lands: 1,
            players: 3,
            sync_stretch: None,
        });
        registry.upsert(a.clone());
        registry.upsert(b.clone());

        // Spread: a (0/2) before b (1/4); then b (1/4=.25) vs a (1/2): b.
        let first = registry
            .allocate("hero-defense", 2_000, 62_000, Placement::Spread)
            .unwrap();
        assert_eq!(first.server_id, "a");
        assert!(first.land_id.starts_with("hero-defense:"));
        let second = registry
            .allocate("hero-defense", 2_000, 62_000, Placement::Spread)
            .unwrap();
        assert_eq!(second.server_id, "b");
        assert!(
            registry
                .allocate("other-game", 2_000, 62_000, Placement::Spread)
                .is_none()
        );

        // Pack fills the fullest server with room: a is at 1/2, b at 2/4 → tie → "a".
        let third = registry
            .allocate("hero-defense", 2_000, 62_000, Placement::Pack)
            .unwrap();
        assert_eq!(third.server_id, "a");
        // a is now full (2/2): only b may take more.
        for _ in 0..2 {
            assert_eq!(
                registry
                    .allocate("hero-defense", 2_000, 62_000, Placement::Pack)
                    .unwrap()
                    .server_id,
                "b"
            );
        }
        assert!(
            registry
                .allocate("hero-defense", 2_000, 62_000, Placement::Pack)
                .is_none()
        );

        // A heartbeat resets the per-heartbeat count; draining servers get nothing.
        b.draining = true;
        registry.upsert(b);
        a.load = Some(Load {
            lands: 1,
            players: 2,
            sync_stretch: None,
        });
        registry.upsert(a);
        assert_eq!(
            registry
                .allocate("hero-defense", 2_000, 62_000, Placement::Spread)
                .unwrap()
                .server_id,
            "a"
        );
        assert!(
            registry
                .allocate("hero-defense", 2_000, 62_000, Placement::Spread)
                .is_none()
        );

        // Past the TTL the server is expired and gets nothing.
        let fresh = server("c");
        registry.upsert(fresh);
        assert!(
            registry
                .allocate("hero-defense", 1_000 + 90_000, 200_000, Placement::Spread)
                .is_none()
        );
        assert_eq!(
            registry.live_count(1_000 + 60_000),
            2,
            "a and c are live, b drains"
        );
        // Late by more than two heartbeat intervals: suspect, no new lands.
        assert_eq!(registry.live_count(1_000 + 60_001), 0);
        assert!(
            registry
                .allocate("hero-defense", 1_000 + 60_001, 200_000, Placement::Spread)
                .is_none()
        );
        let states: Vec<String> = registry
            .views(1_000 + 60_001)
            .into_iter()
            .map(|view| view.state)
            .collect();
        assert!(states.contains(&"suspect".to_owned()), "{states:?}");
    }

    #[test]
    fn a_server_shedding_sync_work_gets_new_lands_only_when_no_other_has_room() {
        let registry = Registry::new(90_000, 30_000);
        let with = |id: &str, lands: u32, sync_stretch: Option<u32>| {
            let mut record = server(id);
            record.capacity = Some(Capacity {
                max_lands: Some(4),
                max_players: None,
            });
            record.load = Some(Load {
                lands,
                players: 0,
                sync_stretch,
            });
            record
        };
        // "a" is the emptiest (spread's pick) but overloaded; "c" the fullest with
        // room (pack's pick) but overloaded too; "b" says stretch 1: on time.
        registry.upsert(with("a", 0, Some(8)));
        registry.upsert(with("b", 2, Some(1)));
        registry.upsert(with("c", 3, Some(2)));
        let pick = |placement| {
            registry
                .allocate("hero-defense", 2_000, 62_000, placement)
                .unwrap()
                .server_id
        };
        assert_eq!(pick(Placement::Spread), "b");
        assert_eq!(pick(Placement::Pack), "b");
        // "b" is full now (4/4): the overloaded servers still take what comes,
        // in placement order among themselves.
        assert_eq!(pick(Placement::Spread), "a");
        assert_eq!(pick(Placement::Pack), "c");
        // A server that reports no stretch (older game servers) counts as on time.
        registry.upsert(with("d", 3, None));
        assert_eq!(pick(Placement::Spread), "d");
    }

    #[test]
    fn heartbeats_reach_the_store_only_when_something_besides_load_changed() {
        let registry = Registry::new(6_000, 2_000);
        let mut report = server("a");
        assert!(registry.needs_persisting(&report), "a new server");
        registry.upsert(report.clone());
        registry.mark_persisted("a", report.last_seen);
        report.last_seen += 2_000;
        report.load = Some(Load {
            lands: 3,
            players: 6,
            sync_stretch: None,
        });
        report.land_ids = Some(vec!["hero-defense:x".to_owned()]);
        assert!(!registry.needs_persisting(&report), "load and lands only");
        report.draining = true;
        assert!(
            registry.needs_persisting(&report),
            "draining is registration state"
        );
        report.draining = false;
        report.last_seen += PERSIST_HEARTBEATS_EVERY_MS;
        assert!(registry.needs_persisting(&report), "old write");
    }

    #[test]
    fn the_shared_registry_brings_newer_reports_and_removals_only() {
        let registry = Registry::new(6_000, 2_000);
        let mut mine = server("a");
        mine.instance_id = Some("i1".to_owned());
        mine.last_seen = 5_000;
        registry.upsert(mine.clone());

        // An older report (even of a new instance) loses to what was heard here.
        let mut older = mine.clone();
        older.last_seen = 4_000;
        older.instance_id = Some("i0".to_owned());
        let merge = registry.merge_shared(vec![older], 0);
        assert!(merge.restarted.is_empty() && merge.removed.is_empty());
        assert_eq!(registry.get("a").unwrap().last_seen, 5_000);

        // A newer one, from another instance, replaces it and reports the restart.
        let mut newer = mine.clone();
        newer.last_seen = 6_000;
        newer.instance_id = Some("i2".to_owned());
        let other = server("b");
        let merge = registry.merge_shared(vec![newer, other], 0);
        assert_eq!(merge.restarted.len(), 1);
        assert_eq!(merge.restarted[0].why, LossKind::Restarted);
        assert_eq!(registry.get("a").unwrap().last_seen, 6_000);
        assert!(registry.get("b").is_some());
        assert!(!registry.needs_persisting(&registry.get("b").unwrap()));

        // Missing from the store: forgotten only if not heard since `missing_since`.
        let merge = registry.merge_shared(vec![server("b")], 6_000);
        assert!(merge.removed.is_empty(), "heard at 6 000, kept");
        let merge = registry.merge_shared(vec![server("b")], 6_001);
        assert_eq!(merge.removed.len(), 1);
        assert!(registry.get("a").is_none());
    }

    #[test]
    fn losses_are_reported_once_and_a_new_instance_replaces_the_old() {
        let registry = Registry::new(6_000, 2_000);
        let mut first = server("a");
        first.instance_id = Some("i1".to_owned());
        assert!(registry.upsert(first.clone()).is_none());
        assert!(registry.newly_lost(6_999).is_empty());
        let lost = registry.newly_lost(7_000);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].why, LossKind::Silent);
        registry.loss_handled(&lost[0].record);
        assert!(registry.newly_lost(8_000).is_empty(), "handled once");

        // The same instance heard again is live again; a later silence is a new loss.
        first.last_seen = 9_000;
        assert!(registry.upsert(first.clone()).is_none());
        assert_eq!(registry.newly_lost(15_000).len(), 1);

        // A new instance under the same id: the old one is reported at once.
        let mut second = first.clone();
        second.instance_id = Some("i2".to_owned());
        second.last_seen = 10_000;
        let replaced = registry.upsert(second).unwrap();
        assert_eq!(replaced.why, LossKind::Restarted);
        assert_eq!(replaced.record.instance_id.as_deref(), Some("i1"));
        let allocation = registry
            .allocate("hero-defense", 10_001, 70_000, Placement::Spread)
            .unwrap();
        assert_eq!(allocation.server_instance_id.as_deref(), Some("i2"));
    }
}
