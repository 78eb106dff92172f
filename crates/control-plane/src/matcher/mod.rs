//! The matching loop: the one writer of the matchmaking engine. It feeds the
//! pure engine with tickets, places the matches it proposes on servers, mints
//! the tokens and commits the assignments; the engine itself does no I/O.
//!
//! Split the way a control plane splits planning from acting:
//! - `plan`: pure — from a snapshot (the engine's proposal or backfill result,
//!   the ticket records, the land) to the commits to sign; unit-tested alone.
//! - `commit`: the one sign → commit → settle path for new matches and backfill.
//! - `pool`: the tickets the loop holds, kept in step with the engine's pools;
//!   `waits`: the per-queue waits of the admin summary.
//! - this module: the handle, and the loop doing the I/O (commands, ticks,
//!   expiry, housekeeping, releasing a lost server's tickets) against any
//!   [`Store`].
//!
//! A ticket can never land in two matches: the engine hands each ticket out
//! once, and the store only assigns tickets that are still queued (a cancel
//! that raced the match wins and the rest of the match goes back to the pool).

mod commit;
mod held;
pub mod leases;
mod plan;
mod pool;
#[cfg(test)]
mod test_support;
mod waits;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use matchplane_contracts::matchmaking::TicketStatus;
use matchplane_matchmaker::{Engine, Match};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;

use crate::clock::{Clock, Millis, duration_ms};
use crate::config::Placement;
use crate::events::{EventBus, TicketEvent};
use crate::metrics::{self, Metrics};
use crate::recovery::{self, RecoveryPolicy};
use crate::registry::{Allocation, LossKind, LostServer, Registry};
use crate::store::{ReleaseOutcome, Store, TicketRecord};
use crate::tokens::TokenIssuer;

use commit::{CommitError, Settled};
use held::HeldLeases;
use leases::LeaseWake;
use plan::TokenTerms;
use pool::Pool;
pub(crate) use pool::engine_ticket;
pub use waits::QueueWaits;
use waits::{QUEUES_WITH_RECENT_WAITS, RecentWaits, prune_recent_waits};

/// How the API tells the loop about tickets.
#[derive(Clone)]
pub struct MatcherHandle {
    commands: mpsc::UnboundedSender<Command>,
    queued: Arc<AtomicU64>,
}

enum Command {
    Enqueued(Box<TicketRecord>),
    Removed(String),
    Waits(oneshot::Sender<BTreeMap<String, QueueWaits>>),
    Backfill(
        Box<BackfillJob>,
        oneshot::Sender<Result<BackfillOutcome, BackfillError>>,
    ),
    /// A server instance died (restarted under its id) or deregistered.
    ServerGone(Box<LostServer>),
    /// Every queued ticket, read after events may have been missed.
    Resync(Vec<TicketRecord>),
    /// From now on match only the queues whose lease this replica (`holder`) holds.
    UseLeases(String, Arc<LeaseWake>),
    /// This replica now holds the queue's lease; its queued tickets are
    /// being read (sent before the read, so no feed event falls between).
    LeaseLoading(String),
    /// This replica now holds the queue's lease at `epoch`; `queued` is the
    /// queue's queued tickets, read after the grant.
    LeaseGranted {
        queue_key: String,
        epoch: u64,
        queued: Vec<TicketRecord>,
    },
    /// The queue's lease is gone: stop matching it at once.
    LeaseLost(String),
}

/// "Land L on server S has open slots": fill them from queue Q.
#[derive(Debug, Clone)]
pub struct BackfillJob {
    pub queue_key: String,
    pub land_id: String,
    pub server_id: String,
    pub match_id: Option<String>,
    /// Players already in the land, per team (the tokens' roster grows from it).
    pub roster: Vec<Vec<String>>,
    pub request: matchplane_matchmaker::BackfillRequest,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackfillOutcome {
    pub placed: Vec<BackfillPlacement>,
    pub quality: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackfillPlacement {
    pub ticket_id: String,
    pub members: Vec<String>,
    pub team: u32,
    pub assignment_id: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackfillError {
    #[error("backfill is not enabled for this queue (profile [queue.backfill] enabled = true)")]
    Disabled,
    #[error("no such game server is registered")]
    UnknownServer,
    #[error("the land is not of this queue's land type on that server")]
    WrongLand,
    #[error("the store is unavailable: {0}")]
    Store(String),
    #[error("{0}")]
    Internal(String),
    #[error("the matching loop has stopped")]
    Stopped,
}

impl MatcherHandle {
    /// A handle whose commands go nowhere, for a process that never matches
    /// (`--role api`): another replica's matcher learns the tickets from the
    /// shared store's event feed.
    pub fn detached() -> Self {
        let (commands, _) = mpsc::unbounded_channel();
        Self {
            commands,
            queued: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A ticket the store has accepted; matched at once when possible.
    pub fn enqueued(&self, ticket: TicketRecord) {
        // Only fails after shutdown, when nobody matches anymore anyway.
        let _ = self.commands.send(Command::Enqueued(Box::new(ticket)));
    }

    /// A ticket the store no longer holds as queued (cancelled, or expired or
    /// assigned by another replica).
    pub fn removed(&self, ticket_id: String) {
        let _ = self.commands.send(Command::Removed(ticket_id));
    }

    /// Events about tickets may have been missed (a gap in the cluster event
    /// feed): `queued` is every queued ticket, read from the store after the
    /// gap. Tickets it lacks are tracked; tracked tickets it lacks are
    /// checked against the store and dropped unless still queued (one enqueued
    /// here after the read stays).
    pub fn resync(&self, queued: Vec<TicketRecord>) {
        let _ = self.commands.send(Command::Resync(queued));
    }

    /// Switches the loop to leased matching: it forgets every ticket and
    /// matches only queues granted through [`MatcherHandle::lease_granted`].
    pub fn use_leases(&self, holder: String, wake: Arc<LeaseWake>) {
        let _ = self.commands.send(Command::UseLeases(holder, wake));
    }

    /// The queue's lease is this replica's; its queued tickets are read next
    /// and handed over with [`MatcherHandle::lease_granted`].
    pub fn lease_loading(&self, queue_key: String) {
        let _ = self.commands.send(Command::LeaseLoading(queue_key));
    }

    /// The queue's lease is this replica's at `epoch`; `queued` are its
    /// queued tickets read after the grant.
    pub fn lease_granted(&self, queue_key: String, epoch: u64, queued: Vec<TicketRecord>) {
        let _ = self.commands.send(Command::LeaseGranted {
            queue_key,
            epoch,
            queued,
        });
    }

    /// The queue's lease was lost or given up.
    pub fn lease_lost(&self, queue_key: String) {
        let _ = self.commands.send(Command::LeaseLost(queue_key));
    }

    /// Per-queue waits, computed by the loop (`None` if it has stopped).
    pub async fn waits(&self) -> Option<BTreeMap<String, QueueWaits>> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Waits(reply)).ok()?;
        answer.await.ok()
    }

    /// Fills open slots of a running land with queued tickets that fit the
    /// queue's profile; their assignments point at the existing land.
    pub async fn backfill(&self, job: BackfillJob) -> Result<BackfillOutcome, BackfillError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Backfill(Box::new(job), reply))
            .map_err(|_| BackfillError::Stopped)?;
        answer.await.map_err(|_| BackfillError::Stopped)?
    }

    /// A server instance is gone (restarted, or deregistered): release what it held.
    pub fn server_gone(&self, lost: LostServer) {
        let _ = self.commands.send(Command::ServerGone(Box::new(lost)));
    }

    /// Resolves once the matching loop has stopped (at once for a detached
    /// handle): after that it commits nothing more.
    pub async fn stopped(&self) {
        self.commands.closed().await;
    }

    /// Tickets the loop currently holds in its pools.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }
}

pub struct MatcherSettings {
    pub tick: Duration,
    pub assignment_ttl: Duration,
    pub retention: Duration,
    /// Finished tickets the store keeps at most (see `Limits::max_finished_tickets`).
    pub max_finished_tickets: u64,
    pub placement: Placement,
    /// What happens to the tickets of a lost game server.
    pub recovery: RecoveryPolicy,
    /// Where formed matches are remembered for the dashboard.
    pub history: Arc<crate::history::History>,
}

pub struct MatchLoop {
    pool: Pool,
    commands: mpsc::UnboundedReceiver<Command>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    issuer: Arc<TokenIssuer>,
    events: EventBus,
    clock: Arc<dyn Clock>,
    settings: MatcherSettings,
    metrics: Arc<Metrics>,
    recent_waits: HashMap<String, RecentWaits>,
    no_server_warned_at: HashMap<String, Millis>,
    last_housekeeping: Millis,
    /// The store sweep of the last housekeeping pass, while it runs.
    sweep: Option<tokio::task::JoinHandle<()>>,
    /// The queues this replica may match and their lease epochs; `None`
    /// without leases (one process, or a store without them): every queue.
    leases: Option<HeldLeases>,
    /// Asks the lease task for a round when a ticket's queue has no holder.
    lease_wake: Option<Arc<LeaseWake>>,
}

/// How long a "no game server" warning silences the next one for a land type.
const NO_SERVER_WARNING_EVERY_MS: Millis = 10_000;

type PendingBackfill = (
    Box<BackfillJob>,
    oneshot::Sender<Result<BackfillOutcome, BackfillError>>,
);

/// What the commands of one round collect for the I/O after them.
struct Round<'a> {
    touched: &'a mut BTreeSet<String>,
    backfills: &'a mut Vec<PendingBackfill>,
    gone: &'a mut Vec<LostServer>,
    /// Tracked tickets a resync did not list: still queued?
    unsure: &'a mut Vec<String>,
}

/// Commands folded into one matching round, to batch store commits under load.
const MAX_COMMANDS_PER_ROUND: usize = 4096;
const HOUSEKEEPING_EVERY_MS: Millis = 30_000;
/// Servers silent this long past their TTL are dropped from the registry.
const FORGET_SERVERS_AFTER_MS: Millis = 3_600_000;

#[allow(clippy::too_many_arguments)]
pub fn spawn(
    engine: Engine,
    initial: Vec<TicketRecord>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    issuer: Arc<TokenIssuer>,
    events: EventBus,
    clock: Arc<dyn Clock>,
    settings: MatcherSettings,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> (MatcherHandle, tokio::task::JoinHandle<()>) {
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicU64::new(0));
    let mut pool = Pool::new(engine, Arc::clone(&queued));
    let now = clock.now_ms();
    for ticket in initial {
        pool.track(ticket, now);
    }
    let matcher = MatchLoop {
        pool,
        commands,
        store,
        registry,
        issuer,
        events,
        last_housekeeping: now,
        sweep: None,
        clock,
        settings,
        metrics,
        recent_waits: HashMap::new(),
        no_server_warned_at: HashMap::new(),
        leases: None,
        lease_wake: None,
    };
    let task = tokio::spawn(async move { matcher.run(shutdown).await });
    (
        MatcherHandle {
            commands: commands_tx,
            queued,
        },
        task,
    )
}

impl MatchLoop {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // The first tick comes one period after the start, not at once: an
        // immediate tick ran whenever the runtime first got to it, sometimes
        // after the first requests, and expired or matched with a later clock
        // than the one they saw. Resumed tickets wait one tick at most.
        let first_tick = tokio::time::Instant::now() + self.settings.tick;
        let mut ticker = tokio::time::interval_at(first_tick, self.settings.tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                command = self.commands.recv() => {
                    let Some(command) = command else { break };
                    self.handle_commands(command).await;
                }
                _ = ticker.tick() => self.tick().await,
            }
        }
        // A sweep stops between two of its batches (each batch is whole).
        if let Some(sweep) = self.sweep.take() {
            sweep.abort();
            let _ = sweep.await;
        }
        tracing::debug!("matching loop stopped");
    }

    async fn handle_commands(&mut self, first: Command) {
        let mut touched = BTreeSet::new();
        let mut backfills = Vec::new();
        let mut gone = Vec::new();
        let mut unsure = Vec::new();
        let mut round = Round {
            touched: &mut touched,
            backfills: &mut backfills,
            gone: &mut gone,
            unsure: &mut unsure,
        };
        self.apply(first, &mut round);
        for _ in 1..MAX_COMMANDS_PER_ROUND {
            match self.commands.try_recv() {
                Ok(command) => self.apply(command, &mut round),
                Err(_) => break,
            }
        }
        self.drop_unqueued(unsure).await;
        for lost in gone {
            touched.extend(self.release_stranded(&lost).await);
        }
        // Running lands first: filling an open slot beats waiting for a new match.
        for (job, reply) in backfills {
            let outcome = self.backfill(*job).await;
            let _ = reply.send(outcome);
        }
        let now = self.clock.now_ms();
        let mut matches = Vec::new();
        for queue_key in touched {
            matches.extend(self.pool.engine.find_matches(&queue_key, now));
        }
        self.place(matches, now).await;
    }

    fn apply(&mut self, command: Command, round: &mut Round<'_>) {
        match command {
            Command::Enqueued(ticket) => {
                let Some(ticket) = self.hold_back(*ticket) else {
                    return;
                };
                let queue_key = ticket.queue_key.clone();
                if !self.owns(&queue_key) {
                    if let Some(wake) = &self.lease_wake {
                        wake.unheld_ticket(&queue_key);
                    }
                } else if self.pool.track(ticket, self.clock.now_ms()) {
                    round.touched.insert(queue_key);
                }
            }
            Command::Removed(ticket_id) => {
                if let Some(leases) = &mut self.leases {
                    leases.removed(&ticket_id);
                }
                self.pool.withdraw(&ticket_id);
            }
            Command::Waits(reply) => {
                let _ = reply.send(self.waits());
            }
            Command::Backfill(job, reply) => round.backfills.push((job, reply)),
            Command::ServerGone(lost) => round.gone.push(*lost),
            Command::Resync(queued) => {
                let listed: BTreeSet<&str> = queued
                    .iter()
                    .map(|ticket| ticket.ticket_id.as_str())
                    .collect();
                round.unsure.extend(
                    self.pool
                        .records()
                        .values()
                        .filter(|record| !listed.contains(record.ticket_id.as_str()))
                        .map(|record| record.ticket_id.clone()),
                );
                let now = self.clock.now_ms();
                for ticket in queued {
                    let Some(ticket) = self.hold_back(ticket) else {
                        continue;
                    };
                    let queue_key = ticket.queue_key.clone();
                    if self.owns(&queue_key) && self.pool.track(ticket, now) {
                        round.touched.insert(queue_key);
                    }
                }
            }
            Command::UseLeases(holder, wake) => {
                self.pool.withdraw_queue(None);
                self.leases = Some(HeldLeases::new(holder));
                self.lease_wake = Some(wake);
            }
            Command::LeaseLoading(queue_key) => {
                if let Some(leases) = &mut self.leases {
                    leases.start_loading(queue_key);
                }
            }
            Command::LeaseGranted {
                queue_key,
                epoch,
                queued,
            } => {
                let Some(leases) = &mut self.leases else {
                    return;
                };
                let now = self.clock.now_ms();
                for ticket in leases.granted(&queue_key, epoch, queued) {
                    self.pool.track(ticket, now);
                }
                tracing::info!(queue_key = %queue_key, epoch, "matching this queue under its lease");
                round.touched.insert(queue_key);
            }
            Command::LeaseLost(queue_key) => self.stop_matching(&queue_key),
        }
    }

    /// A ticket of a queue whose tickets are being read after its grant is
    /// kept for the grant; any other comes back.
    fn hold_back(&mut self, ticket: TicketRecord) -> Option<TicketRecord> {
        match &mut self.leases {
            Some(leases) => leases.hold_back(ticket),
            None => Some(ticket),
        }
    }

    /// Whether this replica matches the queue now.
    fn owns(&self, queue_key: &str) -> bool {
        self.leases
            .as_ref()
            .is_none_or(|leases| leases.holds(queue_key))
    }

    /// Forgets the queue and its tickets: another replica matches it now.
    fn stop_matching(&mut self, queue_key: &str) {
        if let Some(leases) = &mut self.leases
            && leases.lost(queue_key)
        {
            self.pool.withdraw_queue(Some(queue_key));
            tracing::info!(queue_key = %queue_key, "stopped matching this queue: its lease is gone");
        }
    }

    /// Drops the tickets the store no longer holds as queued, of those a
    /// resync could not vouch for. A ticket that cannot be read stays: the
    /// store's commit and expiry checks still refuse it if it left the queue.
    async fn drop_unqueued(&mut self, unsure: Vec<String>) {
        for ticket_id in unsure {
            match self.store.ticket(&ticket_id).await {
                Ok(Some(ticket)) if ticket.status == TicketStatus::Queued => {}
                Ok(_) => self.pool.withdraw(&ticket_id),
                Err(err) => {
                    metrics::inc(&self.metrics.store_errors);
                    tracing::warn!(ticket_id = %ticket_id, error = %err, "cannot check a ticket after a resync; it stays");
                }
            }
        }
    }

    fn waits(&self) -> BTreeMap<String, QueueWaits> {
        let now = self.clock.now_ms();
        let mut waits: BTreeMap<String, QueueWaits> = BTreeMap::new();
        for record in self.pool.records().values() {
            waits
                .entry(record.queue_key.clone())
                .or_default()
                .queued
                .push(now.saturating_sub(record.enqueued_at));
        }
        for (queue_key, recent) in &self.recent_waits {
            waits.entry(queue_key.clone()).or_default().recent_matched =
                recent.waits.iter().copied().collect();
        }
        waits
    }

    async fn tick(&mut self) {
        let now = self.clock.now_ms();
        self.expire_due(now).await;
        // Before matching: requeued tickets join this very round.
        for lost in self.registry.newly_lost(now) {
            self.release_stranded(&lost).await;
        }
        let matches = self.pool.engine.find_all_matches(now);
        self.place(matches, now).await;
        if now.saturating_sub(self.last_housekeeping) >= HOUSEKEEPING_EVERY_MS {
            self.last_housekeeping = now;
            self.housekeeping(now).await;
        }
    }

    /// Releases what a lost server instance held: stranded tickets go back to
    /// their queues (keeping their enqueue time) or fail, per the policy; watchers
    /// hear `ticket.requeued`, `match.lost`, `ticket.failed`. Returns the queues
    /// that got tickets back. On a store failure the loss is retried next tick.
    async fn release_stranded(&mut self, lost: &LostServer) -> BTreeSet<String> {
        let now = self.clock.now_ms();
        let server_id = &lost.record.server_id;
        let mut touched = BTreeSet::new();
        let assigned = match self.store.assigned_on_server(server_id).await {
            Ok(assigned) => assigned,
            Err(err) => {
                metrics::inc(&self.metrics.store_errors);
                tracing::warn!(server_id = %server_id, error = %err, "cannot read a lost server's tickets; will retry");
                return touched;
            }
        };
        let plan = recovery::plan(lost, &assigned, self.settings.recovery, now);
        let joined: HashMap<String, String> = plan
            .iter()
            .filter_map(|stranded| {
                let land = stranded.joined_land.clone()?;
                Some((stranded.request.ticket_id.clone(), land))
            })
            .collect();
        let requests = plan.into_iter().map(|stranded| stranded.request).collect();
        let outcomes = match self.store.release_assignments(requests, now).await {
            Ok(outcomes) => outcomes,
            Err(err) => {
                metrics::inc(&self.metrics.store_errors);
                tracing::warn!(server_id = %server_id, error = %err, "cannot release a lost server's tickets; will retry");
                return touched;
            }
        };
        if lost.why == LossKind::Silent {
            self.registry.loss_handled(&lost.record);
        }
        // A server that drained and left holding nothing was not lost.
        let stranded_any = !outcomes.is_empty();
        if lost.why != LossKind::Deregistered || stranded_any {
            metrics::inc(&self.metrics.servers_lost);
        }
        let (mut requeued, mut failed) = (0u64, 0u64);
        let lost_lands: BTreeSet<&String> = joined.values().collect();
        self.metrics
            .matches_lost
            .fetch_add(lost_lands.len() as u64, Ordering::Relaxed);
        let reason = matchplane_contracts::realtime::reason::SERVER_LOST;
        for outcome in outcomes {
            let record = match outcome {
                ReleaseOutcome::Unchanged(_) => continue,
                ReleaseOutcome::Requeued(record) | ReleaseOutcome::Failed(record) => record,
            };
            let ticket_id = record.ticket_id.clone();
            match joined.get(&ticket_id) {
                Some(land_id) => self.events.publish(TicketEvent::MatchLost {
                    ticket_id: ticket_id.clone(),
                    land_id: land_id.clone(),
                    reason: reason.to_owned(),
                }),
                None if record.status == TicketStatus::Queued => {
                    self.events.publish(TicketEvent::Requeued {
                        ticket_id: ticket_id.clone(),
                        reason: reason.to_owned(),
                    })
                }
                None => {}
            }
            if record.status == TicketStatus::Queued {
                requeued += 1;
                touched.insert(record.queue_key.clone());
                if self.owns(&record.queue_key) {
                    self.pool.track(record, now);
                }
            } else {
                failed += 1;
                self.events.publish(TicketEvent::Failed {
                    ticket_id,
                    reason: record.failure_reason.unwrap_or_default(),
                });
            }
        }
        self.metrics
            .tickets_requeued
            .fetch_add(requeued, Ordering::Relaxed);
        tracing::warn!(server_id = %server_id, instance_id = ?lost.record.instance_id, why = ?lost.why,
            requeued, failed, matches_lost = lost_lands.len(), "game server lost; its stranded tickets were released");
        touched
    }

    async fn expire_due(&mut self, now: Millis) {
        let due = self.pool.due(now);
        if due.is_empty() {
            return;
        }
        let ticket_ids = self.pool.ticket_ids(&due);
        match self.store.expire_tickets(ticket_ids, now).await {
            Ok(expired) => {
                for id in due {
                    self.pool.discard(id);
                }
                self.metrics
                    .tickets_expired
                    .fetch_add(expired.len() as u64, Ordering::Relaxed);
                for ticket in expired {
                    tracing::info!(ticket_id = %ticket.ticket_id, queue_key = %ticket.queue_key, "ticket expired");
                    self.events.publish(TicketEvent::Expired {
                        ticket_id: ticket.ticket_id,
                    });
                }
            }
            Err(err) => {
                metrics::inc(&self.metrics.store_errors);
                tracing::warn!(error = %err, "cannot expire tickets now; will retry");
            }
        }
    }

    async fn housekeeping(&mut self, now: Millis) {
        let retention = duration_ms(self.settings.retention);
        let cutoff = now.saturating_sub(retention);
        // A pass deletes every ticket finished since the last one: 300,000 at
        // 10,000 tickets/s, most of a second of work. On the loop, that
        // second held up every match; off it, matching goes on and the
        // store's commits wait for one of the sweep's batches at most. One
        // sweep at a time: a pass still running skips this turn.
        if self.sweep.as_ref().is_none_or(|sweep| sweep.is_finished()) {
            let store = Arc::clone(&self.store);
            let keep_at_most = self.settings.max_finished_tickets;
            let spent_before = now.saturating_sub(crate::store::SPENT_TOKEN_GRACE_MS);
            self.sweep = Some(tokio::spawn(sweep_store(
                store,
                cutoff,
                keep_at_most,
                spent_before,
            )));
        }
        prune_recent_waits(&mut self.recent_waits, cutoff, QUEUES_WITH_RECENT_WAITS);
        self.no_server_warned_at
            .retain(|_, at| now.saturating_sub(*at) < NO_SERVER_WARNING_EVERY_MS);
        for server_id in self.registry.prune(now, FORGET_SERVERS_AFTER_MS) {
            tracing::info!(server_id = %server_id, "forgetting long-silent game server");
            if let Err(err) = self.store.remove_server(&server_id).await {
                tracing::warn!(server_id = %server_id, error = %err, "cannot remove silent server from the store");
            }
        }
    }

    /// Allocates a land for each proposed match and writes them; a match
    /// without a server goes back to its queue.
    async fn place(&mut self, matches: Vec<Match>, now: Millis) {
        if matches.is_empty() {
            return;
        }
        let issuer = Arc::clone(&self.issuer);
        let terms = token_terms(&issuer, self.settings.assignment_ttl, now);
        let mut batch = Vec::with_capacity(matches.len());
        for proposed in matches {
            let land_type = self.pool.engine.land_type(&proposed.queue_key);
            // The land is held for the new players until their assignments expire.
            let Some(allocation) =
                self.registry
                    .allocate(&land_type, now, terms.expires_at, self.settings.placement)
            else {
                metrics::inc(&self.metrics.matches_without_server);
                self.warn_no_server(&land_type, now);
                for id in proposed.teams.iter().flatten() {
                    self.pool.requeue(*id);
                }
                continue;
            };
            batch.push(plan::plan_match(
                proposed,
                allocation,
                &land_type,
                self.pool.records(),
                &terms,
                &mut new_id,
            ));
        }
        if batch.is_empty() {
            return;
        }
        // A failed round was logged, and its lands and tickets put back, by `commit`.
        let _ = self.commit(batch, now).await;
    }

    fn warn_no_server(&mut self, land_type: &str, now: Millis) {
        let last = self.no_server_warned_at.get(land_type).copied();
        if last.is_none_or(|at| now.saturating_sub(at) >= NO_SERVER_WARNING_EVERY_MS) {
            tracing::warn!(
                land_type,
                "no game server can take a new land; tickets stay queued"
            );
            self.no_server_warned_at.insert(land_type.to_owned(), now);
        }
    }

    /// Fills open slots of a running land from the queue (see [`MatcherHandle::backfill`]).
    async fn backfill(&mut self, job: BackfillJob) -> Result<BackfillOutcome, BackfillError> {
        let now = self.clock.now_ms();
        let enabled = self
            .pool
            .engine
            .profile(&job.queue_key)
            .is_some_and(|profile| profile.backfill.enabled);
        if !enabled {
            return Err(BackfillError::Disabled);
        }
        let server = self
            .registry
            .get(&job.server_id)
            .ok_or(BackfillError::UnknownServer)?;
        let land_type = self.pool.engine.land_type(&job.queue_key);
        if !job.land_id.starts_with(&format!("{land_type}:"))
            || !server.land_types.contains(&land_type)
        {
            return Err(BackfillError::WrongLand);
        }
        let Some(found) = self.pool.engine.backfill(&job.queue_key, &job.request, now) else {
            return Ok(BackfillOutcome::default());
        };
        let land = Allocation {
            connect_url: crate::registry::connect_url(&server, &land_type, &job.land_id),
            server_id: job.server_id.clone(),
            server_instance_id: server.instance_id.clone(),
            land_id: job.land_id.clone(),
        };
        let (planned, placed) = plan::plan_backfill(
            &job,
            &found,
            &land,
            &land_type,
            self.pool.records(),
            &token_terms(&self.issuer, self.settings.assignment_ttl, now),
            &mut new_id,
        );
        match self.commit(vec![planned], now).await {
            Ok(settled) if settled.first() == Some(&Settled::Applied) => Ok(BackfillOutcome {
                placed,
                quality: found.quality,
            }),
            Ok(_) => Ok(BackfillOutcome::default()),
            Err(CommitError::Sign(err)) => Err(BackfillError::Internal(err.to_string())),
            Err(CommitError::Store(err)) => Err(BackfillError::Store(err.to_string())),
        }
    }
}

/// What every token and assignment minted at `now` shares.
fn token_terms(issuer: &TokenIssuer, assignment_ttl: Duration, now: Millis) -> TokenTerms<'_> {
    TokenTerms {
        issuer: &issuer.issuer,
        audience: &issuer.audience,
        issued_at: now,
        expires_at: now.saturating_add(duration_ms(assignment_ttl)),
    }
}

/// Match and assignment ids: random, so no two replicas or restarts collide.
fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Purges finished tickets past `before` or over the count cap, and drops match
/// tokens spent before `spent_before`: the store work of a housekeeping pass.
async fn sweep_store(
    store: Arc<dyn Store>,
    before: Millis,
    keep_at_most: u64,
    spent_before: Millis,
) {
    match store.purge_finished(before, keep_at_most).await {
        Ok(0) => {}
        Ok(purged) => {
            tracing::info!(
                purged,
                "purged finished tickets past retention or the count cap"
            )
        }
        Err(err) => tracing::warn!(error = %err, "cannot purge finished tickets"),
    }
    match store.drop_spent_tokens(spent_before).await {
        Ok(0) => {}
        Ok(dropped) => tracing::debug!(dropped, "dropped spent match tokens"),
        Err(err) => tracing::warn!(error = %err, "cannot drop spent match tokens"),
    }
}
