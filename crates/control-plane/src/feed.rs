//! The cluster event feed's consumer: with a shared (Redis) store, every
//! replica reads what the others changed and delivers it here as if it had
//! happened locally — tickets enqueued or requeued elsewhere join this
//! replica's matcher, tickets cancelled, expired or assigned elsewhere leave
//! it, and every ticket event reaches this replica's `/realtime` sockets.
//!
//! At-least-once with catch-up: the position (last stream id read) survives
//! a lost connection, so a reconnect resumes after it. When the position is
//! gone from the stream (trimmed while this replica lagged, or lost with a
//! Redis restarted without its data), some entries may be lost: the replica
//! takes a new position first, then reloads the queued tickets into the
//! matcher and tells every socket to re-read what it watches. Delivery twice
//! is harmless: the matcher ignores tickets it holds, sockets deduplicate
//! assignments by id and final events by ticket.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::events::{EventBus, TicketEvent};
use crate::matcher::MatcherHandle;
use crate::metrics::{self, Metrics};
use crate::store::{FeedEntry, FeedEvent, FeedRead, RedisFeed, Store, StoreError};

/// How long one read waits for new entries before asking again.
const READ_BLOCK: Duration = Duration::from_secs(5);
/// Entries read per round trip.
const READ_COUNT: usize = 1000;
/// Under load, reads come at most this often: a read answers as soon as one
/// entry is there, so without a pause every entry costs a round trip (and a
/// wakeup of Redis and of this replica). Waiting a little lets entries pile
/// up into one read; a full batch reads on at once.
const READ_EVERY: Duration = Duration::from_millis(4);
/// Longest wait between attempts while Redis is unreachable.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Where the feed's entries go.
pub struct FeedTargets {
    /// This replica's matcher; `None` when it does not match (`--role api`).
    pub matcher: Option<MatcherHandle>,
    pub events: EventBus,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

struct FeedTask {
    feed: RedisFeed,
    /// The last stream id this replica has handled.
    position: String,
    targets: FeedTargets,
}

/// Starts reading after `position`, which the caller took with
/// [`RedisFeed::mark`] before loading the state the feed continues from.
/// `paused` (a test hook) stops reading and drops the connection while true.
pub fn spawn(
    feed: RedisFeed,
    position: String,
    targets: FeedTargets,
    paused: Arc<watch::Sender<bool>>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let task = FeedTask {
        feed,
        position,
        targets,
    };
    tokio::spawn(async move {
        // The task holds the sender too, so `paused` never reports it dropped.
        let receiver = paused.subscribe();
        task.run(receiver, shutdown).await;
        drop(paused);
    })
}

impl FeedTask {
    async fn run(mut self, mut paused: watch::Receiver<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut retry_delay = Duration::from_millis(100);
        let mut failing = false;
        loop {
            if *paused.borrow_and_update() {
                self.feed.disconnect();
                tokio::select! {
                    _ = shutdown.changed() => break,
                    changed = paused.changed() => if changed.is_err() { break },
                }
                continue;
            }
            let read_started = tokio::time::Instant::now();
            let outcome = tokio::select! {
                _ = shutdown.changed() => break,
                _ = paused.changed() => continue,
                read = self.feed.read_after(&self.position, READ_BLOCK, READ_COUNT) => match read {
                    Ok(FeedRead::Entries { entries, last_id }) => {
                        let batch_was_full = entries.len() >= READ_COUNT;
                        self.deliver(entries);
                        if !batch_was_full {
                            tokio::select! {
                                _ = shutdown.changed() => break,
                                () = tokio::time::sleep_until(read_started + READ_EVERY) => {}
                            }
                        }
                        if let Some(last_id) = last_id {
                            self.position = last_id;
                        }
                        if self.feed.take_unsure_writes() {
                            // Redis answers again: learn what the unanswered
                            // writes did (their entries are this replica's,
                            // skipped above).
                            let resynced = self.resync("a write of this replica got no answer").await;
                            if resynced.is_err() {
                                self.feed.keep_unsure_writes();
                            }
                            resynced
                        } else {
                            Ok(())
                        }
                    }
                    Ok(FeedRead::Gap) => self.resync("the cluster event feed had a gap").await,
                    Err(err) => Err(err),
                },
            };
            match outcome {
                Ok(()) => {
                    if failing {
                        tracing::info!(position = %self.position, "cluster event feed reconnected; caught up from the last position");
                        failing = false;
                    }
                    retry_delay = Duration::from_millis(100);
                }
                Err(err) => {
                    metrics::inc(&self.targets.metrics.store_errors);
                    if !failing {
                        tracing::warn!(error = %err, "cluster event feed unavailable; retrying from the last position");
                        failing = true;
                    }
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = tokio::time::sleep(retry_delay) => {}
                    }
                    retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
        tracing::debug!("cluster event feed stopped");
    }

    /// Some entries after the position may be lost: take a new position
    /// first, then reload what those entries would have told.
    async fn resync(&mut self, why: &str) -> Result<(), StoreError> {
        let position = self.feed.mark().await?;
        if let Some(matcher) = &self.targets.matcher {
            matcher.resync(self.targets.store.queued_tickets().await?);
        }
        self.targets.events.resync();
        self.position = position;
        metrics::inc(&self.targets.metrics.feed_resyncs);
        tracing::warn!(why, "reloaded queued tickets and socket states");
        Ok(())
    }

    fn deliver(&self, entries: Vec<FeedEntry>) {
        let targets = &self.targets;
        let now = targets.clock.now_ms();
        for entry in entries {
            let lag = now.saturating_sub(entry.appended_at);
            targets.metrics.feed_entries.fetch_add(1, Ordering::Relaxed);
            targets
                .metrics
                .feed_lag_ms_sum
                .fetch_add(lag, Ordering::Relaxed);
            targets.metrics.feed_lag_ms.store(lag, Ordering::Relaxed);
            let ticket_id = entry.ticket_id;
            if let Some(matcher) = &targets.matcher {
                match (&entry.event, entry.queued) {
                    (
                        FeedEvent::Enqueued
                        | FeedEvent::Requeued { .. }
                        | FeedEvent::MatchLost { .. },
                        Some(ticket),
                    ) => matcher.enqueued(ticket),
                    (
                        FeedEvent::Cancelled
                        | FeedEvent::Expired
                        | FeedEvent::Assigned(_)
                        | FeedEvent::Failed { .. },
                        _,
                    ) => matcher.removed(ticket_id.clone()),
                    _ => {}
                }
            }
            let event = match entry.event {
                FeedEvent::Enqueued => continue,
                FeedEvent::Cancelled => TicketEvent::Cancelled { ticket_id },
                FeedEvent::Expired => TicketEvent::Expired { ticket_id },
                FeedEvent::Assigned(assignment) => TicketEvent::Assigned {
                    ticket_id,
                    assignment,
                },
                FeedEvent::Requeued { reason } => TicketEvent::Requeued { ticket_id, reason },
                FeedEvent::MatchLost { land_id, reason } => TicketEvent::MatchLost {
                    ticket_id,
                    land_id,
                    reason,
                },
                FeedEvent::Failed { reason } => TicketEvent::Failed { ticket_id, reason },
            };
            targets.events.publish(event);
        }
    }
}
