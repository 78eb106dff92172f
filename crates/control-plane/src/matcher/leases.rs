//! Which queues this replica matches, with a shared (Redis) store: it takes
//! per-queue leases, renews them every third of a lease period, spreads them
//! over the live matcher replicas, and tells the matching loop at once when
//! one is granted (with the queue's queued tickets, read after the grant) or
//! lost. The loop's commits carry the lease epoch, and the store refuses a
//! commit whose lease moved on, so matching under a lost lease writes nothing
//! (see docs/scale-out.md, "Leases and fencing"). Which replicas are alive
//! comes from `{P}:replicas`, kept fresh by the cluster task (crate::cluster).
//! On shutdown it releases what it holds, so other replicas take those queues
//! over at their next round instead of after the lease lapses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::MatcherHandle;
use crate::clock::{Clock, duration_ms};
use crate::metrics::{self, Metrics};
use crate::store::{LeaseReply, RedisLeases, Store};

/// Longest pause between two lease rounds, whatever the lease.
const MAX_ROUND: Duration = Duration::from_secs(1);
/// A held queue without queued tickets this long is given up, so idle
/// queues do not pin leases (and their share of the spread) forever.
const IDLE_QUEUE_RELEASE: Duration = Duration::from_secs(30);
/// A replica whose `{P}:replicas` entry is older than this (or twice the
/// lease, if longer) no longer counts as a live matcher. Entries are
/// refreshed every second.
const REPLICA_LIVE_FOR: Duration = Duration::from_secs(3);
/// Least time between two lease rounds that tickets asked for (see
/// [`LeaseWake`]): a burst of tickets for a new queue costs one round, not one each.
const WOKEN_ROUND_GAP: Duration = Duration::from_millis(50);
/// How long shutdown waits on each step of giving leases back (the round in
/// progress, the matching loop stopping, the releases), so an unreachable
/// Redis delays the exit by seconds at most; leases not released then lapse.
const SHUTDOWN_STEP: Duration = Duration::from_secs(1);

/// Lets the matching loop ask for a lease round now. A ticket of a queue that
/// no replica holds (a new queue, or one whose lease was given up while idle)
/// would otherwise wait for the next scheduled round, up to a second, before
/// any replica matches it.
#[derive(Default)]
pub struct LeaseWake {
    notify: tokio::sync::Notify,
    /// Queues another replica held at the last round: their tickets need no round.
    held_elsewhere: parking_lot::Mutex<HashSet<String>>,
}

impl LeaseWake {
    /// A ticket of `queue_key` arrived and this replica does not match that queue.
    pub fn unheld_ticket(&self, queue_key: &str) {
        if !self.held_elsewhere.lock().contains(queue_key) {
            self.notify.notify_one();
        }
    }
}

struct Held {
    epoch: u64,
    /// Past this instant the lease may have expired in Redis: stop matching.
    valid_until: Instant,
    /// Since when the queue has had no queued tickets.
    idle_since: Option<Instant>,
    acquired_at: Instant,
}

struct LeaseTask {
    leases: RedisLeases,
    store: Arc<dyn Store>,
    matcher: MatcherHandle,
    /// How long a lease lasts unless renewed (`--matcher-lease`).
    lease: Duration,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    held: BTreeMap<String, Held>,
    /// Queues seen without a holder, and since when.
    unheld_since: HashMap<String, Instant>,
    failing: bool,
    wake: Arc<LeaseWake>,
}

/// Switches the matcher to leased matching and keeps its leases.
pub fn spawn(
    leases: RedisLeases,
    store: Arc<dyn Store>,
    matcher: MatcherHandle,
    lease: Duration,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let wake = Arc::new(LeaseWake::default());
    matcher.use_leases(leases.replica_id().to_owned(), Arc::clone(&wake));
    let mut task = LeaseTask {
        leases,
        store,
        matcher,
        lease,
        clock,
        metrics,
        held: BTreeMap::new(),
        unheld_since: HashMap::new(),
        failing: false,
        wake: Arc::clone(&wake),
    };
    tokio::spawn(async move {
        let round = (task.lease / 3).clamp(Duration::from_millis(10), MAX_ROUND);
        let mut ticker = tokio::time::interval(round);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_round = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = ticker.tick() => {}
                () = wake.notify.notified() => {
                    tokio::time::sleep_until(last_round + WOKEN_ROUND_GAP).await;
                    metrics::inc(&task.metrics.lease_woken_rounds);
                }
            }
            last_round = Instant::now();
            let round = task.round();
            tokio::pin!(round);
            tokio::select! {
                () = &mut round => {}
                _ = shutdown.changed() => {
                    // A healthy round finishes, so a lease it just took is
                    // released below too; one stuck on Redis is abandoned.
                    let _ = tokio::time::timeout(SHUTDOWN_STEP, round).await;
                    break;
                }
            }
        }
        task.release_all().await;
        tracing::debug!("matcher lease task stopped");
    })
}

impl LeaseTask {
    async fn round(&mut self) {
        let result = self.try_round().await;
        // Whatever failed, a lease past its validity is not matched under.
        self.drop_expired();
        match result {
            Ok(()) if self.failing => {
                tracing::info!("matcher leases: Redis reachable again");
                self.failing = false;
            }
            Ok(()) => {}
            Err(err) => {
                metrics::inc(&self.metrics.store_errors);
                if !self.failing {
                    tracing::warn!(error = %err, "matcher leases: cannot reach Redis; leases not renewed lapse");
                    self.failing = true;
                }
            }
        }
    }

    fn lost(&mut self, queue_key: &str, why: &str) {
        if self.held.remove(queue_key).is_some() {
            metrics::inc(&self.metrics.lease_losses);
            tracing::warn!(queue_key, why, "matcher lease lost");
            self.matcher.lease_lost(queue_key.to_owned());
        }
    }

    fn drop_expired(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .held
            .iter()
            .filter(|(_, held)| held.valid_until <= now)
            .map(|(queue, _)| queue.clone())
            .collect();
        for queue in expired {
            self.lost(&queue, "not renewed before it expired");
        }
    }

    async fn try_round(&mut self) -> Result<(), crate::store::StoreError> {
        let lease = self.lease;

        // Renew first: what this replica holds matters most.
        let queues: Vec<String> = self.held.keys().cloned().collect();
        for queue in queues {
            let sent = Instant::now();
            match self.leases.acquire(&queue, lease).await? {
                LeaseReply::Renewed(epoch)
                    if self
                        .held
                        .get(&queue)
                        .is_some_and(|held| held.epoch == epoch) =>
                {
                    if let Some(held) = self.held.get_mut(&queue) {
                        held.valid_until = sent + lease;
                    }
                }
                LeaseReply::Granted(epoch) | LeaseReply::Renewed(epoch) => {
                    // It lapsed and came back at a new epoch: what the loop
                    // held may have moved meanwhile, so it starts over.
                    self.lost(&queue, "expired before renewal");
                    self.granted(queue, epoch, sent).await?;
                }
                LeaseReply::Held { .. } => self.lost(&queue, "taken over by another replica"),
            }
        }

        let queues = self.leases.queues().await?;
        let live_matchers = self.live_matchers().await?;
        let now = Instant::now();
        for (queue, held) in &mut self.held {
            if queues.contains(queue) {
                held.idle_since = None;
            } else {
                held.idle_since.get_or_insert(now);
            }
        }
        let idle: Vec<(String, u64)> = self
            .held
            .iter()
            .filter(|(_, held)| {
                held.idle_since
                    .is_some_and(|since| now.duration_since(since) >= IDLE_QUEUE_RELEASE)
            })
            .map(|(queue, held)| (queue.clone(), held.epoch))
            .collect();
        for (queue, epoch) in idle {
            self.give_up(&queue, epoch, "no queued tickets for a while")
                .await?;
        }

        let mut all_queues = queues.clone();
        all_queues.extend(self.held.keys().filter(|q| !queues.contains(q)).cloned());
        let target = all_queues.len().div_ceil(live_matchers.len().max(1));
        let others: Vec<String> = queues
            .iter()
            .filter(|queue| !self.held.contains_key(*queue))
            .cloned()
            .collect();
        let holders = self.leases.holders(&others).await?;
        let mut held_by: HashMap<String, usize> = live_matchers
            .iter()
            .map(|replica| (replica.clone(), 0))
            .collect();
        let mut unheld = Vec::new();
        let mut held_elsewhere = HashSet::new();
        for (queue, holder) in others.into_iter().zip(holders) {
            match holder {
                Some((replica, _)) => {
                    self.unheld_since.remove(&queue);
                    held_elsewhere.insert(queue.clone());
                    *held_by.entry(replica).or_default() += 1;
                }
                None => {
                    self.unheld_since.entry(queue.clone()).or_insert(now);
                    unheld.push(queue);
                }
            }
        }
        self.unheld_since.retain(|queue, _| queues.contains(queue));

        // Take free queues up to this replica's share; past it, a queue
        // nobody took for a lease period is taken anyway, so no queue waits
        // on a replica that is gone but still counted as live.
        // Start at a replica-specific place, so replicas coming up together
        // do not all race for the same queue first.
        let offset = self
            .leases
            .replica_id()
            .bytes()
            .fold(0usize, |sum, byte| sum.wrapping_add(byte.into()));
        let count = unheld.len();
        for k in 0..count {
            let queue = &unheld[(offset + k) % count];
            let orphaned = self
                .unheld_since
                .get(queue)
                .is_some_and(|since| now.duration_since(*since) >= lease);
            if self.held.len() >= target && !orphaned {
                continue;
            }
            let sent = Instant::now();
            match self.leases.acquire(queue, lease).await? {
                LeaseReply::Granted(epoch) | LeaseReply::Renewed(epoch) => {
                    self.unheld_since.remove(queue);
                    self.granted(queue.clone(), epoch, sent).await?;
                }
                LeaseReply::Held { .. } => {
                    held_elsewhere.insert(queue.clone());
                }
            }
        }
        *self.wake.held_elsewhere.lock() = held_elsewhere;

        // Over its share while another live matcher is under it: hand one
        // queue over (it stops matching here first, then frees the lease).
        // Only a queue held a while: one just taken from a replica that died
        // but still counts as live is kept, not passed back and forth.
        let starving = held_by
            .iter()
            .any(|(replica, count)| replica != self.leases.replica_id() && *count < target);
        let settled = self.live_window();
        if self.held.len() > target
            && starving
            && let Some((queue, held)) = self
                .held
                .iter()
                .rev()
                .find(|(_, held)| now.duration_since(held.acquired_at) >= settled)
        {
            let (queue, epoch) = (queue.clone(), held.epoch);
            self.give_up(&queue, epoch, "spreading queues over replicas")
                .await?;
        }
        Ok(())
    }

    async fn granted(
        &mut self,
        queue_key: String,
        epoch: u64,
        sent: Instant,
    ) -> Result<(), crate::store::StoreError> {
        // Announced before the read: feed events about the queue from now on
        // are kept by the loop and merged with the read, so a ticket enqueued
        // just after the read is not dropped as another replica's.
        self.matcher.lease_loading(queue_key.clone());
        let queued = match self.store.queued_tickets_in(&queue_key).await {
            Ok(queued) => queued,
            Err(err) => {
                self.matcher.lease_lost(queue_key.clone());
                // Without its tickets the queue cannot be matched: free it for anyone.
                let _ = self.leases.release(&queue_key, epoch).await;
                return Err(err);
            }
        };
        metrics::inc(&self.metrics.lease_acquisitions);
        tracing::info!(queue_key = %queue_key, epoch, tickets = queued.len(), "matcher lease granted");
        self.held.insert(
            queue_key.clone(),
            Held {
                epoch,
                valid_until: sent + self.lease,
                idle_since: None,
                acquired_at: Instant::now(),
            },
        );
        self.matcher.lease_granted(queue_key, epoch, queued);
        Ok(())
    }

    async fn give_up(
        &mut self,
        queue_key: &str,
        epoch: u64,
        why: &str,
    ) -> Result<(), crate::store::StoreError> {
        if self.held.remove(queue_key).is_none() {
            return Ok(());
        }
        tracing::info!(queue_key, why, "matcher lease given up");
        // The loop stops matching before the lease is free for another replica.
        self.matcher.lease_lost(queue_key.to_owned());
        if self.leases.release(queue_key, epoch).await? {
            metrics::inc(&self.metrics.lease_releases);
        }
        Ok(())
    }

    /// Shutdown: stops matching every held queue, waits (bounded) for the
    /// matching loop to stop, then frees the leases. A commit still in
    /// flight after a release carries the released epoch, so the commit
    /// script refuses it: never two writers, only a refused commit.
    async fn release_all(&mut self) {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return;
        }
        for queue_key in held.keys() {
            self.matcher.lease_lost(queue_key.clone());
        }
        if tokio::time::timeout(SHUTDOWN_STEP, self.matcher.stopped())
            .await
            .is_err()
        {
            tracing::warn!("matching loop still busy at shutdown; releasing its leases anyway");
        }
        let mut released = 0usize;
        let releases = async {
            for (queue_key, lease) in &held {
                match self.leases.release(queue_key, lease.epoch).await {
                    Ok(true) => {
                        released += 1;
                        metrics::inc(&self.metrics.lease_releases);
                    }
                    // Lapsed or taken over already: nothing of ours to free.
                    Ok(false) => {}
                    Err(err) => return Err(err),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(SHUTDOWN_STEP, releases).await {
            Ok(Ok(())) => {
                tracing::info!(
                    released,
                    held = held.len(),
                    "matcher leases released at shutdown"
                );
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, released, "cannot release matcher leases at shutdown; the rest lapse");
            }
            Err(_) => {
                tracing::warn!(
                    released,
                    "Redis too slow to release matcher leases at shutdown; the rest lapse"
                );
            }
        }
    }

    fn live_window(&self) -> Duration {
        REPLICA_LIVE_FOR.max(self.lease * 2)
    }

    /// Matcher replicas (this one included) whose entry is fresh.
    async fn live_matchers(&self) -> Result<Vec<String>, crate::store::StoreError> {
        let window = duration_ms(self.live_window());
        let mut live = self
            .leases
            .live_matchers(self.clock.now_ms(), window)
            .await?;
        let me = self.leases.replica_id().to_owned();
        if !live.contains(&me) {
            live.push(me);
        }
        Ok(live)
    }
}
