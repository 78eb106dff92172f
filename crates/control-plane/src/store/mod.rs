//! Durable state behind a trait: tickets (with their assignments) and the
//! server registry. The embedded implementation is redb, `--ephemeral` keeps
//! the same records in plain maps ([`MemoryStore`]), and the two share one
//! ticket state machine (`ticket_rules`); the Redis one lets replicas share
//! one truth, with the same contract, because every operation is a single
//! atomic call with its own preconditions (e.g. "assign only if every ticket
//! is still queued").

mod memory_store;
mod record;
mod redb_store;
mod redis_cluster;
mod redis_feed;
mod redis_leases;
mod redis_store;
#[cfg(test)]
mod test_fixtures;
mod ticket_rules;

use std::collections::BTreeMap;

use async_trait::async_trait;
use matchplane_contracts::matchmaking::{Assignment, TicketStatus};
use matchplane_contracts::provisioning::{Capacity, Load};
use serde::{Deserialize, Serialize};

pub use memory_store::MemoryStore;
pub use redb_store::{RedbStore, StoreUsage, TableUsage};
pub use redis_cluster::{LeaseEntry, RedisCluster, ReplicaEntry};
pub use redis_feed::{FeedEntry, FeedEvent, FeedRead, RedisFeed};
pub use redis_leases::{LeaseReply, RedisLeases};
pub use redis_store::{DEFAULT_KEY_PREFIX as REDIS_DEFAULT_KEY_PREFIX, RedisStore};

use crate::clock::Millis;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing store cannot be used right now (I/O error, closed, full).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A record could not be decoded; data written by an incompatible version.
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// How long a ticket's match tokens are kept past its assignment's expiry:
/// well beyond any verifier's clock leeway (the game server allows 5 s), so
/// no token that could still admit its player is ever dropped.
pub const SPENT_TOKEN_GRACE_MS: Millis = 60_000;

const GENERATED_GROUP_PREFIX: &str = "group-";

/// Whether an assignment still carries match tokens.
pub(super) fn has_tokens(assignment: &Assignment) -> bool {
    !assignment.match_token.is_empty() || !assignment.member_tokens.is_empty()
}

/// Drops an assignment's match tokens, and the memory they held.
pub(super) fn drop_tokens(assignment: &mut Assignment) {
    assignment.match_token = String::new();
    assignment.member_tokens = BTreeMap::new();
}

/// A ticket as the store keeps it: the request plus its lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketRecord {
    pub ticket_id: String,
    pub queue_key: String,
    pub group_id: String,
    /// Who enqueued the ticket: the authenticated player, or the first member
    /// without player authentication. `groupId` dedup is scoped to it so one
    /// client can never be handed another's ticket. Records written before
    /// ownership existed decode with an empty owner, which the store replaces
    /// with the first member (see [`TicketRecord::with_default_owner`]).
    #[serde(default)]
    pub owner: String,
    pub members: Vec<String>,
    // Empty request fields are left out of the stored record (a tenth of a
    // 1v1 ticket's bytes without its token); they decode as empty again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_args: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latencies: BTreeMap<String, u32>,
    pub status: TicketStatus,
    pub enqueued_at: Millis,
    /// When a still-queued ticket expires.
    pub expires_at: Millis,
    pub updated_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Assignment>,
    /// `assignment.expiresAt` as a number, for liveness checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_expires_at: Option<Millis>,
    /// The game-server process (registration `instanceId`) the assignment is on,
    /// so a server's loss releases only what its lost instance held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_instance: Option<String>,
    /// Why a `failed` ticket failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

impl TicketRecord {
    /// A queued ticket of `members` with no request options: its owner the
    /// first member and its group generated, as a bare enqueue stores it.
    pub fn queued(
        ticket_id: String,
        queue_key: String,
        members: Vec<String>,
        now: Millis,
        expires_at: Millis,
    ) -> Self {
        Self {
            group_id: Self::generated_group_id(&ticket_id),
            owner: members.first().cloned().unwrap_or_default(),
            ticket_id,
            queue_key,
            members,
            region: None,
            constraints: None,
            attributes: BTreeMap::new(),
            tags: Vec::new(),
            string_args: BTreeMap::new(),
            latencies: BTreeMap::new(),
            status: TicketStatus::Queued,
            enqueued_at: now,
            expires_at,
            updated_at: now,
            assignment: None,
            assignment_expires_at: None,
            assigned_instance: None,
            failure_reason: None,
        }
    }

    /// Fills in the owner of a record written before tickets had one.
    pub fn with_default_owner(mut self) -> Self {
        if self.owner.is_empty()
            && let Some(first) = self.members.first()
        {
            self.owner.clone_from(first);
        }
        self
    }

    /// The group of a ticket whose request named none: no other request can
    /// name it, so it deduplicates nothing.
    pub fn generated_group_id(ticket_id: &str) -> String {
        format!("{GENERATED_GROUP_PREFIX}{ticket_id}")
    }

    /// Whether the request named this ticket's group (`groupId`); only such a
    /// group is indexed for dedup.
    pub fn has_named_group(&self) -> bool {
        self.group_id.strip_prefix(GENERATED_GROUP_PREFIX) != Some(self.ticket_id.as_str())
    }

    /// Whether this ticket still holds its members' places in the queue.
    pub fn is_queued_at(&self, now: Millis) -> bool {
        self.status == TicketStatus::Queued && now < self.expires_at
    }

    /// The ticket as anyone may be shown it at `now`: once its assignment is
    /// spent (expired more than [`SPENT_TOKEN_GRACE_MS`] ago) its match tokens
    /// are left out, whether or not the store has dropped them yet, so every
    /// store answers alike. A spent token admits no one anyway.
    pub fn without_spent_tokens(mut self, now: Millis) -> Self {
        let spent = self
            .assignment_expires_at
            .is_some_and(|at| at.saturating_add(SPENT_TOKEN_GRACE_MS) <= now);
        if spent && let Some(assignment) = &mut self.assignment {
            drop_tokens(assignment);
        }
        self
    }

    /// Whether this ticket still holds its group: queued, or assigned with a
    /// usable assignment. A group may enqueue again once its ticket is no longer live.
    pub fn is_live(&self, now: Millis) -> bool {
        match self.status {
            TicketStatus::Queued => now < self.expires_at,
            TicketStatus::Assigned => self.assignment_expires_at.is_some_and(|at| now < at),
            TicketStatus::Cancelled | TicketStatus::Expired | TicketStatus::Failed => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    Created(TicketRecord),
    /// The same owner's group already has a live ticket; that one is returned.
    Existing(TicketRecord),
    /// Nothing was stored: `player_id` already waits in queued ticket `ticket_id`.
    PlayerAlreadyQueued {
        player_id: String,
        ticket_id: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    NotFound,
    Cancelled(TicketRecord),
    /// Already assigned, cancelled or expired; unchanged.
    NotQueued(TicketRecord),
}

/// All assignments of one match; written all-or-nothing.
#[derive(Debug, Clone)]
pub struct MatchCommit {
    pub assignments: Vec<(String, Assignment)>,
    pub assignment_expires_at: Millis,
    /// The instance of the game server the land is on.
    pub server_instance_id: Option<String>,
}

/// What becomes of a ticket whose assignment died with its game server.
#[derive(Debug, Clone, PartialEq)]
pub enum Release {
    /// Back to `queued` (original `enqueued_at` kept), living until `expires_at`.
    Requeue { expires_at: Millis },
    /// Ends as `failed` with this reason.
    Fail { reason: String },
}

/// Release this ticket if it still holds this assignment.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseRequest {
    pub ticket_id: String,
    pub assignment_id: String,
    pub release: Release,
    /// The land its players had joined, if they had: a shared store tells
    /// other replicas `match.lost` for it rather than `ticket.requeued`.
    pub joined_land: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReleaseOutcome {
    Requeued(TicketRecord),
    /// Failed as asked, or because a member queued elsewhere meanwhile
    /// (`failure_reason` says which).
    Failed(TicketRecord),
    /// The ticket no longer holds that assignment (or is gone): nothing changed.
    Unchanged(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommitOutcome {
    Applied(Vec<TicketRecord>),
    /// Nothing was written: these tickets were no longer queued.
    Rejected {
        not_queued: Vec<String>,
    },
    /// Nothing was written: the queue's lease is no longer held by the
    /// commit's replica at its epoch (lost, expired, or taken over).
    Fenced,
}

/// What a fenced commit must still hold for its match to be written: the
/// queue's matcher lease as `holder:epoch`, and the match id that makes a
/// retried commit of the same match a no-op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub queue_key: String,
    pub holder: String,
    pub epoch: u64,
    pub match_id: String,
}

/// A registered game server as last heard from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRecord {
    pub server_id: String,
    pub host: String,
    pub port: u16,
    pub land_types: Vec<String>,
    #[serde(default)]
    pub connect_host: Option<String>,
    #[serde(default)]
    pub connect_port: Option<u16>,
    #[serde(default)]
    pub connect_scheme: Option<String>,
    #[serde(default)]
    pub connect_path_prefix: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub capacity: Option<Capacity>,
    #[serde(default)]
    pub load: Option<Load>,
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub land_ids: Option<Vec<String>>,
    pub registered_at: Millis,
    pub last_seen: Millis,
    /// Which registration credential registered this id (SHA-256 of it, hex):
    /// only the same credential may re-register or delete it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_with: Option<String>,
    /// The game-server process that sent this report (`instanceId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

/// Per-queue counts over the tickets the store still holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub queue_key: String,
    pub queued: u64,
    pub queued_players: u64,
    pub oldest_queued_at: Option<Millis>,
    pub assigned: u64,
    pub cancelled: u64,
    pub expired: u64,
    pub failed: u64,
}

/// Adds one ticket to per-queue counts, for a store that counts by scanning its tickets.
fn count_ticket(counts: &mut BTreeMap<String, QueueCounts>, ticket: &TicketRecord) {
    let queue = counts
        .entry(ticket.queue_key.clone())
        .or_insert_with(|| QueueCounts {
            queue_key: ticket.queue_key.clone(),
            ..QueueCounts::default()
        });
    match ticket.status {
        TicketStatus::Queued => {
            queue.queued += 1;
            queue.queued_players += ticket.members.len() as u64;
            queue.oldest_queued_at = Some(
                queue
                    .oldest_queued_at
                    .map_or(ticket.enqueued_at, |oldest| oldest.min(ticket.enqueued_at)),
            );
        }
        TicketStatus::Assigned => queue.assigned += 1,
        TicketStatus::Cancelled => queue.cancelled += 1,
        TicketStatus::Expired => queue.expired += 1,
        TicketStatus::Failed => queue.failed += 1,
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for health output, e.g. `redb` or `memory`.
    fn kind(&self) -> &'static str;

    /// Stores a new queued ticket unless the same owner's group already has a
    /// live one (returned as `Existing`) or a member already waits in another
    /// queued ticket (`PlayerAlreadyQueued`); both checks and the write are atomic.
    async fn create_ticket(
        &self,
        ticket: TicketRecord,
        now: Millis,
    ) -> Result<CreateOutcome, StoreError>;

    async fn ticket(&self, ticket_id: &str) -> Result<Option<TicketRecord>, StoreError>;

    async fn cancel_ticket(
        &self,
        ticket_id: &str,
        now: Millis,
    ) -> Result<CancelOutcome, StoreError>;

    /// Assigns each match's tickets atomically, only if all are still queued.
    async fn commit_matches(
        &self,
        matches: Vec<MatchCommit>,
        now: Millis,
    ) -> Result<Vec<CommitOutcome>, StoreError>;

    /// Like [`Store::commit_matches`], and each match is written only while
    /// its fence holds (see [`Fence`]); a match committed before under the
    /// same id is answered as `Applied` again without writing anything. A
    /// store only this process writes has no leases: it ignores the fences.
    async fn commit_matches_fenced(
        &self,
        matches: Vec<(MatchCommit, Fence)>,
        now: Millis,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let unfenced = matches.into_iter().map(|(commit, _)| commit).collect();
        self.commit_matches(unfenced, now).await
    }

    /// The queued tickets of one queue, oldest first: what a matcher that
    /// just took the queue's lease starts from.
    async fn queued_tickets_in(&self, queue_key: &str) -> Result<Vec<TicketRecord>, StoreError> {
        let mut queued = self.queued_tickets().await?;
        queued.retain(|ticket| ticket.queue_key == queue_key);
        Ok(queued)
    }

    /// Marks these tickets expired if they are still queued; returns those changed.
    async fn expire_tickets(
        &self,
        ticket_ids: Vec<String>,
        now: Millis,
    ) -> Result<Vec<TicketRecord>, StoreError>;

    /// Every queued ticket, oldest first (to rebuild the matcher after a restart).
    async fn queued_tickets(&self) -> Result<Vec<TicketRecord>, StoreError>;

    /// Tickets whose assignment points at this server (any instance), from an
    /// index kept with each commit: what a lost server may have stranded.
    async fn assigned_on_server(&self, server_id: &str) -> Result<Vec<TicketRecord>, StoreError>;

    /// Voids assignments, each only if its ticket still holds exactly that
    /// assignment (all checks and writes of one request in one transaction), so a
    /// release and a late commit or a second release can never both win.
    async fn release_assignments(
        &self,
        releases: Vec<ReleaseRequest>,
        now: Millis,
    ) -> Result<Vec<ReleaseOutcome>, StoreError>;

    /// Deletes finished tickets last updated before `before`, then the
    /// oldest finished ones beyond `keep_at_most`; returns how many.
    async fn purge_finished(&self, before: Millis, keep_at_most: u64) -> Result<u64, StoreError>;

    /// Drops the match tokens of assignments that expired before `before`
    /// and returns how many sets of tokens went. Tokens are most of a
    /// finished ticket's bytes and useless once expired; the tickets
    /// themselves stay until [`Store::purge_finished`]. Callers see no spent
    /// token even before it is dropped ([`TicketRecord::without_spent_tokens`]);
    /// a store that keeps none (a test double) need not implement it.
    async fn drop_spent_tokens(&self, before: Millis) -> Result<u64, StoreError> {
        let _ = before;
        Ok(0)
    }

    async fn put_server(&self, server: ServerRecord) -> Result<(), StoreError>;

    /// Returns whether the server was registered.
    async fn remove_server(&self, server_id: &str) -> Result<bool, StoreError>;

    async fn servers(&self) -> Result<Vec<ServerRecord>, StoreError>;

    /// Every status of every ticket the store still holds: a scan, for the
    /// admin API's on-demand view.
    async fn queue_counts(&self) -> Result<Vec<QueueCounts>, StoreError>;

    /// Queued tickets per queue (queues with none may be left out), for the
    /// dashboard's sampler that asks every few seconds: a store with an index
    /// of queued tickets answers from it instead of scanning every ticket.
    async fn queued_per_queue(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Ok(self
            .queue_counts()
            .await?
            .into_iter()
            .map(|counts| (counts.queue_key, counts.queued))
            .collect())
    }

    /// Cheap liveness probe for `/health`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// At graceful shutdown, once nothing else uses the store: commits what
    /// is pending and releases its files, so the next start opens cleanly.
    /// Calls after it fail as unavailable.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The cluster event feed of a store other processes share (Redis): what
    /// they changed, for this replica's matcher and sockets. `None` for a store
    /// only this process writes.
    fn event_feed(&self) -> Option<RedisFeed> {
        None
    }

    /// The per-queue matcher leases of a store replicas share (Redis), so one
    /// replica at a time matches each queue. `None`: this process matches all.
    fn matcher_leases(&self) -> Option<RedisLeases> {
        None
    }

    /// The replica directory and lease view of a store other processes share
    /// (Redis); `None` for a store only this process uses. Its presence also
    /// means the server registry is shared: every heartbeat is written and
    /// every replica refreshes its registry from the store.
    fn cluster(&self) -> Option<RedisCluster> {
        None
    }
}
