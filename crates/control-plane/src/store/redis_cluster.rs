//! What replicas sharing one Redis tell each other besides tickets: who is
//! alive (`{P}:replicas`, one field per replica, refreshed every second) and
//! which matcher leases are held (`{P}:lease:<queueKey>` = `replicaId:epoch`,
//! written by the lease code; read here only for the admin view).
//! This is the only reader of `{P}:replicas`: the lease code asks it which
//! matchers are alive, so the entry format and the liveness rule live here.
//! The layout is in docs/scale-out.md ("Cluster view").

use std::collections::HashMap;

use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::redis_leases::parse_holder;
use crate::clock::Millis;

/// A `{P}:replicas` entry: field = replica id, value = this as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaEntry {
    pub id: String,
    pub role: String,
    pub address: String,
    pub last_seen_ms: Millis,
}

impl ReplicaEntry {
    /// Whether this replica takes matcher leases (`--role all|matcher`).
    pub fn matches(&self) -> bool {
        matches!(self.role.as_str(), "all" | "matcher")
    }

    /// Whether it said it was alive at most `window` ms before `now`.
    pub fn seen_within(&self, now: Millis, window: Millis) -> bool {
        now.saturating_sub(self.last_seen_ms) <= window
    }
}

/// A matcher lease as found in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEntry {
    pub queue_key: String,
    pub holder: String,
    pub epoch: u64,
    pub expires_in_ms: u64,
}

/// Lease keys read per SCAN round trip.
const SCAN_COUNT: usize = 200;

#[derive(Clone)]
pub struct RedisCluster {
    conn: ConnectionManager,
    replicas_key: String,
    lease_prefix: String,
    replica_id: String,
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

impl RedisCluster {
    pub(super) fn new(conn: ConnectionManager, prefix: &str, replica_id: String) -> Self {
        Self::under_base(conn, &format!("{{{prefix}}}:"), replica_id)
    }

    /// `base` is `{prefix}:`, what every key of the store starts with.
    pub(super) fn under_base(conn: ConnectionManager, base: &str, replica_id: String) -> Self {
        Self {
            conn,
            replicas_key: format!("{base}replicas"),
            lease_prefix: format!("{base}lease:"),
            replica_id,
        }
    }

    /// This process' id among the replicas (also the `origin` of its feed entries).
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Says this replica is alive as of `entry.last_seen_ms`, and drops entries
    /// of replicas silent since before `forget_before` (they died without
    /// saying goodbye), so the hash stays as small as the cluster.
    pub async fn announce(
        &self,
        entry: &ReplicaEntry,
        forget_before: Millis,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(entry).map_err(unavailable)?;
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .hset(&self.replicas_key, &entry.id, json)
            .await
            .map_err(unavailable)?;
        let stale: Vec<String> = self
            .replicas()
            .await?
            .into_iter()
            .filter(|replica| replica.last_seen_ms < forget_before)
            .map(|replica| replica.id)
            .collect();
        if !stale.is_empty() {
            let _: i64 = conn
                .hdel(&self.replicas_key, stale)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// Takes this replica out of the view at once (graceful shutdown).
    pub async fn withdraw(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .hdel(&self.replicas_key, &self.replica_id)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Every entry of `{P}:replicas`, by id; entries that do not decode are skipped.
    pub async fn replicas(&self) -> Result<Vec<ReplicaEntry>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: HashMap<String, String> = conn
            .hgetall(&self.replicas_key)
            .await
            .map_err(unavailable)?;
        let mut replicas: Vec<ReplicaEntry> = raw
            .values()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(replicas)
    }

    /// The replicas heard from at most `window` ms before `now`, by id.
    pub async fn live_replicas(
        &self,
        now: Millis,
        window: Millis,
    ) -> Result<Vec<ReplicaEntry>, StoreError> {
        let mut replicas = self.replicas().await?;
        replicas.retain(|entry| entry.seen_within(now, window));
        Ok(replicas)
    }

    /// The leases held now: every `{P}:lease:<queueKey>` whose value reads
    /// `replicaId:epoch` (other keys under that prefix, such as epoch
    /// counters, are not leases and are skipped).
    pub async fn leases(&self) -> Result<Vec<LeaseEntry>, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}*", escape_glob(&self.lease_prefix));
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut leases = Vec::new();
        for key in keys {
            // One key at a time: a lease key of another type (or one that
            // expired meanwhile) must not fail the whole view.
            let (value, ttl): (Option<String>, i64) = match redis::pipe()
                .get(&key)
                .pttl(&key)
                .query_async(&mut conn)
                .await
            {
                Ok(reply) => reply,
                Err(_) => continue,
            };
            let Some(value) = value else { continue };
            let Some((holder, epoch)) = parse_holder(&value) else {
                continue;
            };
            let queue_key = key
                .strip_prefix(&self.lease_prefix)
                .unwrap_or(&key)
                .to_owned();
            leases.push(LeaseEntry {
                queue_key,
                holder,
                epoch,
                expires_in_ms: u64::try_from(ttl).unwrap_or(0),
            });
        }
        Ok(leases)
    }
}

/// `{`, `}` are not glob characters, but a prefix may hold `*?[\`.
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
