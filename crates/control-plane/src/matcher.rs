//! The matching loop: the one writer of the matchmaking engine. It feeds the
//! pure engine with tickets, places the matches it proposes on servers, mints
//! the tokens and commits the assignments; the engine itself does no I/O.
//!
//! A ticket can never land in two matches: the engine hands each ticket out
//! once, and the store only assigns tickets that are still queued (a cancel
//! that raced the match wins and the rest of the match goes back to the pool).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use matchplane_contracts::matchmaking::{Assignment, TicketStatus};
use matchplane_contracts::token::MatchClaims;
use matchplane_matchmaker::{Engine, InsertError, Match, Ticket, TicketId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;

use crate::clock::{Clock, Millis, duration_ms, format_rfc3339};
use crate::config::Placement;
use crate::events::{EventBus, TicketEvent};
use crate::metrics::{self, Metrics};
use crate::recovery::{self, RecoveryPolicy};
use crate::registry::{Allocation, LossKind, LostServer, Registry};
use crate::store::{CommitOutcome, MatchCommit, ReleaseOutcome, Store, TicketRecord};
use crate::tokens::{Signer, TokenIssuer};

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

/// Where a set of assignments points.
struct LandTarget<'a> {
    land_id: &'a str,
    land_type: &'a str,
    server_id: &'a str,
    server_instance_id: Option<&'a str>,
    connect_url: &'a str,
    match_id: &'a str,
}

/// Waits per queue, in milliseconds, for the admin summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueWaits {
    /// Current waits of the tickets still queued.
    pub queued: Vec<u64>,
    /// Enqueue-to-assignment waits of the most recent assignments.
    pub recent_matched: Vec<u64>,
}

/// Assignments remembered per queue for the time-to-match percentiles.
const RECENT_WAITS_PER_QUEUE: usize = 1024;

impl MatcherHandle {
    /// A ticket the store has accepted; matched at once when possible.
    pub fn enqueued(&self, ticket: TicketRecord) {
        // Only fails after shutdown, when nobody matches anymore anyway.
        let _ = self.commands.send(Command::Enqueued(Box::new(ticket)));
    }

    /// A ticket the store no longer holds as queued (cancelled).
    pub fn removed(&self, ticket_id: String) {
        let _ = self.commands.send(Command::Removed(ticket_id));
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
}

pub struct MatchLoop {
    engine: Engine,
    tickets: HashMap<TicketId, TicketRecord>,
    ids: HashMap<String, TicketId>,
    expiries: BTreeSet<(Millis, TicketId)>,
    next_id: u64,
    commands: mpsc::UnboundedReceiver<Command>,
    queued: Arc<AtomicU64>,
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
}

/// Assignment waits of one queue, and when it last had one.
#[derive(Debug, Default)]
struct RecentWaits {
    waits: VecDeque<u64>,
    last_at: Millis,
}

/// Queues whose recent waits are remembered. Queue keys are client input
/// (any key without profiles, or with `--open-queues`), so the map is capped
/// as well as aged out with the retention.
const QUEUES_WITH_RECENT_WAITS: usize = 4096;
/// How long a "no game server" warning silences the next one for a land type.
const NO_SERVER_WARNING_EVERY_MS: Millis = 10_000;

/// Drops the waits of queues without an assignment since `cutoff`, then the
/// least recently assigned queues beyond `cap`.
fn prune_recent_waits(recent: &mut HashMap<String, RecentWaits>, cutoff: Millis, cap: usize) {
    recent.retain(|_, queue| queue.last_at >= cutoff);
    if recent.len() > cap {
        let mut by_age: Vec<(Millis, String)> = recent
            .iter()
            .map(|(key, queue)| (queue.last_at, key.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, key) in by_age.into_iter().take(recent.len() - cap) {
            recent.remove(&key);
        }
    }
}

type PendingBackfill = (
    Box<BackfillJob>,
    oneshot::Sender<Result<BackfillOutcome, BackfillError>>,
);

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
    let mut matcher = MatchLoop {
        engine,
        tickets: HashMap::new(),
        ids: HashMap::new(),
        expiries: BTreeSet::new(),
        next_id: 1,
        commands,
        queued: Arc::clone(&queued),
        store,
        registry,
        issuer,
        events,
        last_housekeeping: clock.now_ms(),
        clock,
        settings,
        metrics,
        recent_waits: HashMap::new(),
        no_server_warned_at: HashMap::new(),
    };
    for ticket in initial {
        matcher.track(ticket);
    }
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
        let mut ticker = tokio::time::interval(self.settings.tick);
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
        tracing::debug!("matching loop stopped");
    }

    async fn handle_commands(&mut self, first: Command) {
        let mut touched = BTreeSet::new();
        let mut backfills = Vec::new();
        let mut gone = Vec::new();
        self.apply(first, &mut touched, &mut backfills, &mut gone);
        for _ in 1..MAX_COMMANDS_PER_ROUND {
            match self.commands.try_recv() {
                Ok(command) => self.apply(command, &mut touched, &mut backfills, &mut gone),
                Err(_) => break,
            }
        }
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
            matches.extend(self.engine.find_matches(&queue_key, now));
        }
        self.place(matches, now).await;
    }

    fn apply(
        &mut self,
        command: Command,
        touched: &mut BTreeSet<String>,
        backfills: &mut Vec<PendingBackfill>,
        gone: &mut Vec<LostServer>,
    ) {
        match command {
            Command::Enqueued(ticket) => {
                let queue_key = ticket.queue_key.clone();
                if self.track(*ticket) {
                    touched.insert(queue_key);
                }
            }
            Command::Removed(ticket_id) => {
                if let Some(id) = self.ids.get(&ticket_id).copied() {
                    self.engine.remove(id);
                    self.untrack(id);
                }
            }
            Command::Waits(reply) => {
                let _ = reply.send(self.waits());
            }
            Command::Backfill(job, reply) => backfills.push((job, reply)),
            Command::ServerGone(lost) => gone.push(*lost),
        }
    }

    fn waits(&self) -> BTreeMap<String, QueueWaits> {
        let now = self.clock.now_ms();
        let mut waits: BTreeMap<String, QueueWaits> = BTreeMap::new();
        for record in self.tickets.values() {
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

    /// Adds a queued ticket to the pools; false if it was already known or refused.
    fn track(&mut self, record: TicketRecord) -> bool {
        if self.ids.contains_key(&record.ticket_id) {
            return false;
        }
        let id = TicketId(self.next_id);
        self.next_id += 1;
        let ticket = engine_ticket(id, &record);
        let mut inserted = self.engine.insert(&record.queue_key, ticket.clone());
        // The store lets a player queue again once the old ticket's expiry has
        // passed, which can be just before the tick that marks it expired. That
        // ticket leaves the pool now (the tick still marks it in the store),
        // so the new one is not stuck behind it. One round per member at most.
        for _ in 0..record.members.len() {
            let Err(InsertError::PlayerQueued { ticket: holder, .. }) = inserted else {
                break;
            };
            let holder_expired = self
                .tickets
                .get(&holder)
                .is_some_and(|held| held.expires_at <= self.clock.now_ms());
            if !holder_expired {
                break;
            }
            self.engine.remove(holder);
            inserted = self.engine.insert(&record.queue_key, ticket.clone());
        }
        if let Err(err) = inserted {
            tracing::error!(ticket_id = %record.ticket_id, queue_key = %record.queue_key, error = %err,
                "matchmaking engine refused a stored ticket; it will expire");
            return false;
        }
        self.ids.insert(record.ticket_id.clone(), id);
        self.expiries.insert((record.expires_at, id));
        self.tickets.insert(id, record);
        self.queued.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn untrack(&mut self, id: TicketId) -> Option<TicketRecord> {
        let record = self.tickets.remove(&id)?;
        self.ids.remove(&record.ticket_id);
        self.expiries.remove(&(record.expires_at, id));
        self.queued.fetch_sub(1, Ordering::Relaxed);
        Some(record)
    }

    /// Puts a proposed-but-unplaced ticket back, keeping its place in line.
    fn requeue(&mut self, id: TicketId) {
        let Some(record) = self.tickets.get(&id) else {
            return;
        };
        if let Err(err) = self
            .engine
            .insert(&record.queue_key, engine_ticket(id, record))
        {
            tracing::error!(ticket_id = %record.ticket_id, error = %err, "cannot return a ticket to its pool");
        }
    }

    async fn tick(&mut self) {
        let now = self.clock.now_ms();
        self.expire_due(now).await;
        // Before matching: requeued tickets join this very round.
        for lost in self.registry.newly_lost(now) {
            self.release_stranded(&lost).await;
        }
        let matches = self.engine.find_all_matches(now);
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
        metrics::inc(&self.metrics.servers_lost);
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
                self.track(record);
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
        let due: Vec<TicketId> = self
            .expiries
            .iter()
            .take_while(|(expires_at, _)| *expires_at <= now)
            .map(|(_, id)| *id)
            .collect();
        if due.is_empty() {
            return;
        }
        let ticket_ids = due
            .iter()
            .filter_map(|id| self.tickets.get(id).map(|t| t.ticket_id.clone()))
            .collect();
        match self.store.expire_tickets(ticket_ids, now).await {
            Ok(expired) => {
                for id in due {
                    self.engine.remove(id);
                    self.untrack(id);
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
        match self
            .store
            .purge_finished(cutoff, self.settings.max_finished_tickets)
            .await
        {
            Ok(0) => {}
            Ok(purged) => {
                tracing::info!(
                    purged,
                    "purged finished tickets past retention or the count cap"
                )
            }
            Err(err) => tracing::warn!(error = %err, "cannot purge finished tickets"),
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

    async fn place(&mut self, matches: Vec<Match>, now: Millis) {
        if matches.is_empty() {
            return;
        }
        let mut unsigned = Vec::with_capacity(matches.len());
        let mut placed: Vec<(Match, Allocation)> = Vec::with_capacity(matches.len());
        for proposed in matches {
            let land_type = self.engine.land_type(&proposed.queue_key);
            let pending_until = now.saturating_add(duration_ms(self.settings.assignment_ttl));
            let Some(allocation) =
                self.registry
                    .allocate(&land_type, now, pending_until, self.settings.placement)
            else {
                metrics::inc(&self.metrics.matches_without_server);
                self.warn_no_server(&land_type, now);
                self.requeue_match(&proposed);
                continue;
            };
            unsigned.push(self.build_commit(&proposed, &allocation, &land_type, now));
            placed.push((proposed, allocation));
        }
        if unsigned.is_empty() {
            return;
        }
        let commits = match sign_commits(Arc::new(self.issuer.signer()), unsigned).await {
            Ok(commits) => commits,
            Err(err) => {
                tracing::error!(error = %err, "cannot mint match tokens; tickets return to their queues");
                for (proposed, allocation) in placed {
                    self.registry.release(&allocation);
                    self.requeue_match(&proposed);
                }
                return;
            }
        };

        match self.store.commit_matches(commits, now).await {
            Ok(outcomes) => {
                for ((proposed, allocation), outcome) in placed.into_iter().zip(outcomes) {
                    self.finish(proposed, &allocation, outcome, now);
                }
            }
            Err(err) => {
                metrics::inc(&self.metrics.store_errors);
                tracing::error!(error = %err, "cannot commit matches; tickets return to their queues");
                for (proposed, allocation) in placed {
                    self.registry.release(&allocation);
                    self.requeue_match(&proposed);
                }
            }
        }
    }

    fn finish(
        &mut self,
        proposed: Match,
        allocation: &Allocation,
        outcome: CommitOutcome,
        now: Millis,
    ) {
        match outcome {
            CommitOutcome::Applied(records) => {
                metrics::inc(&self.metrics.matches_assigned);
                self.metrics
                    .tickets_assigned
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                let recent = self
                    .recent_waits
                    .entry(proposed.queue_key.clone())
                    .or_default();
                recent.last_at = now;
                for record in &records {
                    let wait = now.saturating_sub(record.enqueued_at);
                    self.metrics.observe_match_wait(wait);
                    if recent.waits.len() == RECENT_WAITS_PER_QUEUE {
                        recent.waits.pop_front();
                    }
                    recent.waits.push_back(wait);
                }
                tracing::info!(
                    queue_key = %proposed.queue_key,
                    land_id = %allocation.land_id,
                    server_id = %allocation.server_id,
                    tickets = records.len(),
                    quality = proposed.quality,
                    "match assigned"
                );
                for id in proposed.teams.iter().flatten() {
                    self.untrack(*id);
                }
                for record in records {
                    if let Some(assignment) = record.assignment {
                        self.events.publish(TicketEvent::Assigned {
                            ticket_id: record.ticket_id,
                            assignment: Box::new(assignment),
                        });
                    }
                }
            }
            CommitOutcome::Rejected { not_queued } => {
                metrics::inc(&self.metrics.matches_dropped);
                tracing::info!(land_id = %allocation.land_id, gone = not_queued.len(),
                    "match dropped: tickets changed meanwhile; the rest return to the queue");
                self.registry.release(allocation);
                let ids: Vec<TicketId> = proposed.teams.iter().flatten().copied().collect();
                self.settle_rejected(&ids, &not_queued);
            }
        }
    }

    /// After a commit was refused: tickets that changed meanwhile (cancelled,
    /// expired) leave the loop, the others go back to their queues.
    fn settle_rejected(&mut self, ids: &[TicketId], not_queued: &[String]) {
        for id in ids {
            let gone = self
                .tickets
                .get(id)
                .is_none_or(|record| not_queued.contains(&record.ticket_id));
            if gone {
                self.untrack(*id);
            } else {
                self.requeue(*id);
            }
        }
    }

    fn requeue_match(&mut self, proposed: &Match) {
        for id in proposed.teams.iter().flatten() {
            self.requeue(*id);
        }
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

    fn build_commit(
        &self,
        proposed: &Match,
        allocation: &Allocation,
        land_type: &str,
        now: Millis,
    ) -> UnsignedCommit {
        let roster: Vec<Vec<String>> = proposed
            .teams
            .iter()
            .map(|team| {
                team.iter()
                    .filter_map(|id| self.tickets.get(id))
                    .flat_map(|record| record.members.iter().cloned())
                    .collect()
            })
            .collect();
        let placements: Vec<(TicketId, usize)> = proposed
            .teams
            .iter()
            .enumerate()
            .flat_map(|(team, ids)| ids.iter().map(move |id| (*id, team)))
            .collect();
        let target = LandTarget {
            land_id: &allocation.land_id,
            land_type,
            server_id: &allocation.server_id,
            server_instance_id: allocation.server_instance_id.as_deref(),
            connect_url: &allocation.connect_url,
            match_id: &uuid::Uuid::new_v4().to_string(),
        };
        self.plan_assignments(&placements, &target, &roster, now)
    }

    /// One assignment per ticket into one land, with the claims of every
    /// member's token still to be signed (see [`sign_commits`]).
    fn plan_assignments(
        &self,
        placements: &[(TicketId, usize)],
        target: &LandTarget<'_>,
        roster: &[Vec<String>],
        now: Millis,
    ) -> UnsignedCommit {
        let expires_at = now.saturating_add(duration_ms(self.settings.assignment_ttl));
        let mut assignments = Vec::with_capacity(placements.len());
        let mut claims = Vec::with_capacity(placements.len());
        for (id, team) in placements {
            let Some(record) = self.tickets.get(id) else {
                continue;
            };
            let team_number = u32::try_from(*team).unwrap_or(u32::MAX);
            let assignment_id = uuid::Uuid::new_v4().to_string();
            for member in &record.members {
                claims.push((
                    assignments.len(),
                    MatchClaims {
                        iss: self.issuer.issuer.clone(),
                        aud: self.issuer.audience.clone(),
                        sub: member.clone(),
                        player_id: member.clone(),
                        members: record.members.clone(),
                        assignment_id: assignment_id.clone(),
                        land_id: target.land_id.to_owned(),
                        land_type: target.land_type.to_owned(),
                        server_id: target.server_id.to_owned(),
                        iat: now / 1000,
                        exp: expires_at / 1000,
                        jti: assignment_id.clone(),
                        match_id: Some(target.match_id.to_owned()),
                        team: Some(team_number),
                        roster: roster.to_vec(),
                        queue_key: Some(record.queue_key.clone()),
                        server_instance_id: target.server_instance_id.map(str::to_owned),
                    },
                ));
            }
            assignments.push((
                record.ticket_id.clone(),
                Assignment {
                    assignment_id,
                    match_token: String::new(),
                    connect_url: target.connect_url.to_owned(),
                    land_id: target.land_id.to_owned(),
                    server_id: target.server_id.to_owned(),
                    expires_at: format_rfc3339(expires_at),
                    member_tokens: BTreeMap::new(),
                    match_id: Some(target.match_id.to_owned()),
                    team: Some(team_number),
                },
            ));
        }
        UnsignedCommit {
            commit: MatchCommit {
                assignments,
                assignment_expires_at: expires_at,
                server_instance_id: target.server_instance_id.map(str::to_owned),
            },
            claims,
        }
    }

    /// Fills open slots of a running land from the queue (see [`MatcherHandle::backfill`]).
    async fn backfill(&mut self, job: BackfillJob) -> Result<BackfillOutcome, BackfillError> {
        let now = self.clock.now_ms();
        let enabled = self
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
        let land_type = self.engine.land_type(&job.queue_key);
        if !job.land_id.starts_with(&format!("{land_type}:"))
            || !server.land_types.contains(&land_type)
        {
            return Err(BackfillError::WrongLand);
        }
        let Some(found) = self.engine.backfill(&job.queue_key, &job.request, now) else {
            return Ok(BackfillOutcome::default());
        };
        let mut roster = job.roster.clone();
        for (id, team) in &found.tickets {
            if let Some(record) = self.tickets.get(id) {
                if roster.len() <= *team {
                    roster.resize(team + 1, Vec::new());
                }
                roster[*team].extend(record.members.iter().cloned());
            }
        }
        let connect_url = crate::registry::connect_url(&server, &land_type, &job.land_id);
        let match_id = job
            .match_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let target = LandTarget {
            land_id: &job.land_id,
            land_type: &land_type,
            server_id: &job.server_id,
            server_instance_id: server.instance_id.as_deref(),
            connect_url: &connect_url,
            match_id: &match_id,
        };
        let ids: Vec<TicketId> = found.tickets.iter().map(|(id, _)| *id).collect();
        let requeue_all = |this: &mut Self| {
            for id in &ids {
                this.requeue(*id);
            }
        };
        let unsigned = self.plan_assignments(&found.tickets, &target, &roster, now);
        let commit = match sign_commits(Arc::new(self.issuer.signer()), vec![unsigned]).await {
            Ok(mut commits) => commits.pop().unwrap_or(MatchCommit {
                assignments: Vec::new(),
                assignment_expires_at: now,
                server_instance_id: None,
            }),
            Err(err) => {
                requeue_all(self);
                return Err(BackfillError::Internal(err.to_string()));
            }
        };
        match self.store.commit_matches(vec![commit], now).await {
            Ok(mut outcomes) => match outcomes.pop() {
                Some(CommitOutcome::Applied(records)) => {
                    let mut placed = Vec::with_capacity(records.len());
                    for (id, _) in &found.tickets {
                        self.untrack(*id);
                    }
                    for record in records {
                        if let Some(assignment) = record.assignment {
                            placed.push(BackfillPlacement {
                                ticket_id: record.ticket_id.clone(),
                                members: record.members.clone(),
                                team: assignment.team.unwrap_or_default(),
                                assignment_id: assignment.assignment_id.clone(),
                            });
                            self.events.publish(TicketEvent::Assigned {
                                ticket_id: record.ticket_id,
                                assignment: Box::new(assignment),
                            });
                        }
                    }
                    tracing::info!(land_id = %job.land_id, tickets = placed.len(), "land backfilled");
                    Ok(BackfillOutcome {
                        placed,
                        quality: found.quality,
                    })
                }
                Some(CommitOutcome::Rejected { not_queued }) => {
                    self.settle_rejected(&ids, &not_queued);
                    Ok(BackfillOutcome::default())
                }
                None => {
                    requeue_all(self);
                    Ok(BackfillOutcome::default())
                }
            },
            Err(err) => {
                metrics::inc(&self.metrics.store_errors);
                requeue_all(self);
                Err(BackfillError::Store(err.to_string()))
            }
        }
    }
}

/// A commit whose tokens are still to be signed: `(assignment index, claims)`.
struct UnsignedCommit {
    commit: MatchCommit,
    claims: Vec<(usize, MatchClaims)>,
}

/// Below this many tokens the hand-off to a second thread costs more than it saves.
const PARALLEL_SIGNING_FROM: usize = 16;

/// Signs every token of a batch, on two threads when the batch is large
/// (signing dominates the matching loop's CPU), and puts the tokens in place:
/// each member's in `memberTokens` (parties), the first member's as `matchToken`.
async fn sign_commits(
    signer: Arc<Signer>,
    unsigned: Vec<UnsignedCommit>,
) -> Result<Vec<MatchCommit>, crate::tokens::TokenError> {
    let mut claims: Vec<(usize, usize, MatchClaims)> = Vec::new();
    let mut commits = Vec::with_capacity(unsigned.len());
    for (
        commit_index,
        UnsignedCommit {
            commit,
            claims: planned,
        },
    ) in unsigned.into_iter().enumerate()
    {
        claims.extend(
            planned
                .into_iter()
                .map(|(assignment, claim)| (commit_index, assignment, claim)),
        );
        commits.push(commit);
    }
    let tokens: Vec<String> = if claims.len() < PARALLEL_SIGNING_FROM {
        claims
            .iter()
            .map(|(_, _, claim)| signer.sign(claim))
            .collect::<Result<_, _>>()?
    } else {
        let second_half = claims.split_off(claims.len() / 2);
        let background_signer = Arc::clone(&signer);
        let background = tokio::task::spawn_blocking(move || {
            let tokens: Result<Vec<String>, _> = second_half
                .iter()
                .map(|(_, _, claim)| background_signer.sign(claim))
                .collect();
            (second_half, tokens)
        });
        let mut tokens: Vec<String> = claims
            .iter()
            .map(|(_, _, claim)| signer.sign(claim))
            .collect::<Result<_, _>>()?;
        match background.await {
            Ok((second_half, rest)) => {
                tokens.extend(rest?);
                claims.extend(second_half);
            }
            Err(join_error) => {
                // The blocking task panicked or was cancelled; the batch goes back to the queue.
                tracing::warn!(error = %join_error, "background signing failed; signing inline");
                return Err(crate::tokens::TokenError::Background(
                    join_error.to_string(),
                ));
            }
        }
        tokens
    };
    for ((commit_index, assignment_index, claim), token) in claims.into_iter().zip(tokens) {
        let Some((_, assignment)) = commits
            .get_mut(commit_index)
            .and_then(|commit| commit.assignments.get_mut(assignment_index))
        else {
            continue;
        };
        if claim.members.first() == Some(&claim.sub) {
            assignment.match_token.clone_from(&token);
        }
        // A solo ticket's only token is already `matchToken`.
        if claim.members.len() > 1 {
            assignment.member_tokens.insert(claim.sub, token);
        }
    }
    Ok(commits)
}

pub(crate) fn engine_ticket(id: TicketId, record: &TicketRecord) -> Ticket {
    Ticket {
        id,
        size: u32::try_from(record.members.len()).unwrap_or(u32::MAX),
        enqueued_at: record.enqueued_at,
        attributes: record.attributes.clone(),
        latencies: record.latencies.clone(),
        region: record.region.clone(),
        string_args: record.string_args.clone(),
        tags: record.tags.clone(),
        players: record.members.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_waits_age_out_and_stay_under_the_cap() {
        let mut recent: HashMap<String, RecentWaits> = (0..10u64)
            .map(|i| {
                let queue = RecentWaits {
                    waits: VecDeque::from([i]),
                    last_at: 1_000 + i,
                };
                (format!("q{i}"), queue)
            })
            .collect();
        // q0 and q1 had no assignment since the cutoff; then the cap keeps the 5 newest.
        prune_recent_waits(&mut recent, 1_002, 5);
        let mut kept: Vec<&str> = recent.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["q5", "q6", "q7", "q8", "q9"]);
        prune_recent_waits(&mut recent, 0, 5);
        assert_eq!(recent.len(), 5);
    }
}
