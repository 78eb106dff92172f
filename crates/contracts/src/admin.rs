//! Read-only admin views of the control plane.

use serde::{Deserialize, Serialize};

use crate::provisioning::{Capacity, Load};

/// `GET /v1/admin/servers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerList {
    pub servers: Vec<ServerView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerView {
    pub server_id: String,
    pub host: String,
    pub port: u16,
    pub land_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub connect_base_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    /// Lands allocated here that the server has not reported open yet (still within their assignment's lifetime).
    pub allocated_since_heartbeat: u32,
    /// Those allocations' land ids.
    #[serde(default)]
    pub pending_land_ids: Vec<String>,
    /// Allocated lands nobody joined before the assignment expired (learned from heartbeats).
    #[serde(default)]
    pub abandoned_lands: u64,
    /// Lands the server reported open in its last heartbeat, when it reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_lands: Option<u64>,
    pub draining: bool,
    /// `live`; `suspect` (heartbeat late by more than two intervals: no new lands);
    /// `draining`; `lost` (not heard from within the TTL: its tickets were requeued).
    pub state: String,
    pub registered_at: String,
    pub last_seen_at: String,
    pub last_seen_ago_ms: u64,
}

/// `GET /v1/admin/queue/summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueSummary {
    pub queues: Vec<QueueSummaryEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueSummaryEntry {
    pub queue_key: String,
    pub queued: u64,
    pub queued_players: u64,
    /// Wait of the oldest queued ticket, in milliseconds (0 when none queued).
    pub oldest_wait_ms: u64,
    pub assigned: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Additive: tickets that ended `failed` (e.g. their game server was lost).
    #[serde(default)]
    pub failed: u64,
    /// Current waits of queued tickets (ms): p50 / p90 / p99 / max.
    pub queued_wait: WaitPercentiles,
    /// Enqueue-to-assignment waits of the queue's last 1024 assigned tickets (ms).
    pub time_to_match: WaitPercentiles,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitPercentiles {
    pub samples: u64,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: String,
    pub version: String,
    pub store: String,
    pub uptime_ms: u64,
    pub live_servers: u64,
    pub queued_tickets: u64,
    pub current_kid: String,
    /// What this replica runs: `all`, `api` or `matcher` (`--role`).
    #[serde(default)]
    pub role: String,
    /// This replica's id among those sharing a Redis store; absent on one box.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
}

/// `GET /v1/admin/cluster`: the replicas sharing this control plane's store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// The replica that answered.
    pub replica_id: String,
    /// Replicas heard from recently (just this one on a single box).
    pub replicas: Vec<ReplicaView>,
    /// Matcher leases held now (empty on a single box).
    pub leases: Vec<LeaseView>,
    /// The shared Redis, or `null` for the embedded store.
    pub redis: Option<RedisView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    pub id: String,
    /// `all`, `api` or `matcher`.
    pub role: String,
    /// The address its listener is bound to.
    pub address: String,
    /// When it last said it was alive (Unix milliseconds, its own clock).
    pub last_seen_ms: u64,
    pub last_seen_ago_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseView {
    pub queue_key: String,
    /// The replica id holding the lease.
    pub holder: String,
    /// The fencing epoch of the grant.
    pub epoch: u64,
    pub expires_in_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisView {
    pub connected: bool,
    /// The Redis URL with any password replaced by `***`.
    pub url: String,
}

/// `GET /v1/admin/matches/recent`: the newest matches this replica's matcher
/// formed (a bounded ring; with several replicas each keeps its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecentMatches {
    /// The replica that answered, when replicas share a Redis store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// Newest first.
    pub matches: Vec<RecentMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecentMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_id: Option<String>,
    /// When the assignments were committed, RFC 3339 UTC.
    pub matched_at: String,
    /// The same instant in Unix milliseconds.
    pub matched_at_ms: u64,
    pub queue_key: String,
    pub land_id: String,
    pub server_id: String,
    /// Player ids per team, in team order.
    pub teams: Vec<Vec<String>>,
    /// Tickets (solo players or parties) in the match.
    pub tickets: u64,
    /// The matchmaker's quality score of the match.
    pub quality: f64,
    /// Enqueue-to-assignment wait of the ticket that waited longest (ms).
    pub longest_wait_ms: u64,
}

/// `GET /v1/admin/queue/history`: per-queue samples over the last minutes,
/// oldest first, for charts (a fresh dashboard shows the past at once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueHistory {
    /// The replica that answered, when replicas share a Redis store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// Time between two samples (ms).
    pub sample_every_ms: u64,
    /// How far back samples are kept (ms).
    pub window_ms: u64,
    /// Queues with activity within the window (queued tickets or matches).
    pub queues: Vec<QueueSeries>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueSeries {
    pub queue_key: String,
    /// Oldest first.
    pub samples: Vec<QueueSample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueSample {
    /// When the sample was taken (Unix milliseconds).
    pub at_ms: u64,
    /// Tickets queued at that moment (from the store: cluster-wide with Redis).
    pub queued: u64,
    /// Matches this replica formed in the queue since the previous sample.
    pub matches: u64,
    /// Those matches per second.
    pub matches_per_sec: f64,
    /// Enqueue-to-assignment wait of the tickets matched since the previous
    /// sample (ms); absent when none were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_match_p50_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_match_p99_ms: Option<u64>,
}
