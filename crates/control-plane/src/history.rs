//! What the admin dashboard shows of the recent past: the last matches this
//! replica formed, and per-queue samples (queued tickets, matches per second,
//! time to match) over the last minutes, so a freshly opened page can draw its
//! charts at once. Memory is bounded however many queues clients invent.
//!
//! Each replica keeps its own: the matcher that forms a match records it, so
//! with `--role api` replicas the matches and rates are only on the matching ones
//! (queued counts come from the store and are cluster-wide).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use matchplane_contracts::admin::{QueueSample, QueueSeries, RecentMatch};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::clock::{Clock, Millis, format_rfc3339};
use crate::store::Store;

/// Matches remembered for `/v1/admin/matches/recent`.
pub const RECENT_MATCHES_KEPT: usize = 50;
/// How far back queue samples go.
pub const HISTORY_WINDOW: Duration = Duration::from_secs(600);
/// Queues with a series at once. Queue keys are client input (any key without
/// profiles, or with `--open-queues`), so the busiest are kept, not all.
const MAX_QUEUES_IN_HISTORY: usize = 64;
/// Samples per series even when the interval is short (tests).
const MAX_SAMPLES_PER_QUEUE: usize = 600;
/// Waits kept per queue between two samples for the percentiles; a burst
/// beyond this still counts its matches.
const MAX_WAITS_PER_INTERVAL: usize = 4096;

/// One match as the matcher committed it.
#[derive(Debug, Clone, PartialEq)]
pub struct FormedMatch {
    pub match_id: Option<String>,
    pub queue_key: String,
    pub land_id: String,
    pub server_id: String,
    pub teams: Vec<Vec<String>>,
    pub tickets: usize,
    pub quality: f64,
    /// Enqueue-to-assignment wait of each ticket (ms).
    pub waits: Vec<u64>,
    pub at: Millis,
}

/// Matches of one queue since the last sample.
#[derive(Debug, Default)]
struct Pending {
    matches: u64,
    waits: Vec<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    recent: VecDeque<RecentMatch>,
    pending: HashMap<String, Pending>,
    series: BTreeMap<String, VecDeque<QueueSample>>,
}

/// Recent matches and queue samples of this replica.
#[derive(Debug)]
pub struct History {
    sample_every: Duration,
    inner: Mutex<Inner>,
}

impl History {
    pub fn new(sample_every: Duration) -> Self {
        Self {
            // A zero interval would make the sampler spin.
            sample_every: sample_every.max(Duration::from_millis(10)),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn sample_every(&self) -> Duration {
        self.sample_every
    }

    /// Samples a series keeps to span the window.
    fn samples_kept(&self) -> usize {
        let per_window = HISTORY_WINDOW.as_millis() / self.sample_every.as_millis().max(1);
        usize::try_from(per_window)
            .unwrap_or(MAX_SAMPLES_PER_QUEUE)
            .clamp(1, MAX_SAMPLES_PER_QUEUE)
    }

    /// Remembers a match the matcher committed.
    pub fn record_match(&self, formed: FormedMatch) {
        let mut inner = self.inner.lock();
        let room_for_queue = inner.pending.len() < MAX_QUEUES_IN_HISTORY * 4;
        // Found by reference first: the key is copied only for a new queue.
        let pending = match inner.pending.get_mut(&formed.queue_key) {
            Some(pending) => Some(pending),
            // Bounded like the series: an unknown queue beyond the cap is not counted.
            None if room_for_queue => {
                Some(inner.pending.entry(formed.queue_key.clone()).or_default())
            }
            None => None,
        };
        if let Some(pending) = pending {
            pending.matches += 1;
            let room = MAX_WAITS_PER_INTERVAL.saturating_sub(pending.waits.len());
            pending
                .waits
                .extend(formed.waits.iter().copied().take(room));
        }
        if inner.recent.len() == RECENT_MATCHES_KEPT {
            inner.recent.pop_back();
        }
        inner.recent.push_front(RecentMatch {
            match_id: formed.match_id,
            // Written when read (see `recent_matches`): most are never read.
            matched_at: String::new(),
            matched_at_ms: formed.at,
            queue_key: formed.queue_key,
            land_id: formed.land_id,
            server_id: formed.server_id,
            teams: formed.teams,
            tickets: formed.tickets as u64,
            quality: formed.quality,
            longest_wait_ms: formed.waits.iter().copied().max().unwrap_or(0),
        });
    }

    /// Newest first, at most `limit`.
    pub fn recent_matches(&self, limit: usize) -> Vec<RecentMatch> {
        self.inner
            .lock()
            .recent
            .iter()
            .take(limit)
            .map(|remembered| RecentMatch {
                matched_at: format_rfc3339(remembered.matched_at_ms),
                ..remembered.clone()
            })
            .collect()
    }

    /// Every series, oldest sample first.
    pub fn series(&self) -> Vec<QueueSeries> {
        self.inner
            .lock()
            .series
            .iter()
            .map(|(queue_key, samples)| QueueSeries {
                queue_key: queue_key.clone(),
                samples: samples.iter().cloned().collect(),
            })
            .collect()
    }

    /// Closes an interval: one sample per queue with a series or with
    /// activity now (`queued` per queue from the store), taken at `at`,
    /// `elapsed` after the previous one.
    pub fn sample(&self, at: Millis, queued: &HashMap<String, u64>, elapsed: Duration) {
        let kept = self.samples_kept();
        let seconds = elapsed.as_secs_f64().max(0.001);
        let mut inner = self.inner.lock();
        let mut pending = std::mem::take(&mut inner.pending);
        // Queues without a series that have tickets queued or matched now.
        let mut newcomers: Vec<(&String, u64)> = queued
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(queue_key, _)| queue_key)
            .chain(pending.keys())
            .filter(|queue_key| !inner.series.contains_key(*queue_key))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|queue_key| (queue_key, queued.get(queue_key).copied().unwrap_or(0)))
            .collect();
        // The busiest new queues get the free places.
        newcomers.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let free = MAX_QUEUES_IN_HISTORY.saturating_sub(inner.series.len());
        let admitted: Vec<String> = newcomers
            .into_iter()
            .take(free)
            .map(|(queue_key, _)| queue_key.clone())
            .collect();
        for queue_key in admitted {
            inner.series.entry(queue_key).or_default();
        }
        for (queue_key, samples) in &mut inner.series {
            let interval = pending.remove(queue_key).unwrap_or_default();
            let (p50, p99) = percentiles(interval.waits);
            if samples.len() == kept {
                samples.pop_front();
            }
            samples.push_back(QueueSample {
                at_ms: at,
                queued: queued.get(queue_key).copied().unwrap_or(0),
                matches: interval.matches,
                matches_per_sec: interval.matches as f64 / seconds,
                time_to_match_p50_ms: p50,
                time_to_match_p99_ms: p99,
            });
        }
        // A queue idle for the whole window leaves, making room for others.
        inner
            .series
            .retain(|_, samples| samples.iter().any(|s| s.queued > 0 || s.matches > 0));
    }
}

/// Nearest-rank p50 and p99, `None` without samples.
fn percentiles(mut waits: Vec<u64>) -> (Option<u64>, Option<u64>) {
    if waits.is_empty() {
        return (None, None);
    }
    waits.sort_unstable();
    let rank = |p: f64| {
        let index = ((p * waits.len() as f64).ceil() as usize).saturating_sub(1);
        waits.get(index.min(waits.len() - 1)).copied()
    };
    (rank(0.50), rank(0.99))
}

/// Takes a sample every `history.sample_every()` until shutdown.
pub fn spawn_sampler(
    history: Arc<History>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = history.sample_every();
        let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut previous = Instant::now();
        let mut store_failing = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = ticker.tick() => {}
            }
            let queued = match store.queued_per_queue().await {
                Ok(counts) => {
                    store_failing = false;
                    counts.into_iter().collect::<HashMap<_, _>>()
                }
                Err(err) => {
                    // The matches stay pending and land in the next sample.
                    if !store_failing {
                        tracing::warn!(error = %err, "cannot read queue counts for the dashboard history");
                    }
                    store_failing = true;
                    continue;
                }
            };
            let now = Instant::now();
            history.sample(clock.now_ms(), &queued, now.duration_since(previous));
            previous = now;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formed(queue_key: &str, land: &str, waits: &[u64]) -> FormedMatch {
        FormedMatch {
            match_id: Some(format!("m-{land}")),
            queue_key: queue_key.to_owned(),
            land_id: land.to_owned(),
            server_id: "s1".to_owned(),
            teams: vec![vec!["a".to_owned()], vec!["b".to_owned()]],
            tickets: waits.len(),
            quality: 1.0,
            waits: waits.to_vec(),
            at: 1_000,
        }
    }

    #[test]
    fn recent_matches_are_newest_first_and_bounded() {
        let history = History::new(Duration::from_secs(2));
        for i in 0..(RECENT_MATCHES_KEPT + 5) {
            history.record_match(formed("q", &format!("land-{i}"), &[10, 30]));
        }
        let recent = history.recent_matches(usize::MAX);
        assert_eq!(recent.len(), RECENT_MATCHES_KEPT);
        assert_eq!(
            recent[0].land_id,
            format!("land-{}", RECENT_MATCHES_KEPT + 4)
        );
        assert_eq!(recent[0].longest_wait_ms, 30);
        assert_eq!(recent[0].matched_at, "1970-01-01T00:00:01.000Z");
        assert_eq!(history.recent_matches(3).len(), 3);
    }

    #[test]
    fn a_sample_counts_the_interval_matches_and_waits() {
        let history = History::new(Duration::from_secs(2));
        history.record_match(formed("q", "l1", &[100, 300]));
        history.record_match(formed("q", "l2", &[200, 400]));
        let queued = HashMap::from([("q".to_owned(), 3), ("idle".to_owned(), 0)]);
        history.sample(5_000, &queued, Duration::from_secs(2));
        let series = history.series();
        assert_eq!(series.len(), 1, "an idle queue gets no series: {series:?}");
        let sample = &series[0].samples[0];
        assert_eq!(sample.at_ms, 5_000);
        assert_eq!(sample.queued, 3);
        assert_eq!(sample.matches, 2);
        assert!((sample.matches_per_sec - 1.0).abs() < 1e-9);
        assert_eq!(sample.time_to_match_p50_ms, Some(200));
        assert_eq!(sample.time_to_match_p99_ms, Some(400));

        // A queue whose every ticket was matched gets a series too.
        history.record_match(formed("drained", "l3", &[50]));
        let drained = HashMap::from([("drained".to_owned(), 0)]);
        history.sample(6_000, &drained, Duration::from_secs(2));
        let series = history.series();
        let drained = series.iter().find(|s| s.queue_key == "drained");
        assert_eq!(drained.map(|s| s.samples[0].matches), Some(1), "{series:?}");

        // The next interval starts empty.
        history.sample(7_000, &queued, Duration::from_secs(2));
        let series = history.series();
        let samples = &series.iter().find(|s| s.queue_key == "q").unwrap().samples;
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[2].queued, 3);
        assert_eq!(samples[2].matches, 0);
        assert_eq!(samples[2].time_to_match_p50_ms, None);
    }

    #[test]
    fn series_span_the_window_and_idle_queues_leave() {
        let history = History::new(Duration::from_secs(60));
        let kept = history.samples_kept();
        assert_eq!(kept, 10);
        let busy = HashMap::from([("q".to_owned(), 1)]);
        for i in 0..(kept as u64 + 3) {
            history.sample(i, &busy, Duration::from_secs(60));
        }
        assert_eq!(history.series()[0].samples.len(), kept);
        let idle = HashMap::new();
        for i in 0..(kept as u64 - 1) {
            history.sample(100 + i, &idle, Duration::from_secs(60));
        }
        assert_eq!(
            history.series().len(),
            1,
            "one busy sample is still within the window"
        );
        history.sample(200, &idle, Duration::from_secs(60));
        assert!(history.series().is_empty());
    }

    #[test]
    fn the_number_of_series_is_capped_keeping_the_busiest() {
        let history = History::new(Duration::from_secs(2));
        let queued: HashMap<String, u64> = (0..(MAX_QUEUES_IN_HISTORY as u64 + 10))
            .map(|i| (format!("q{i:03}"), i + 1))
            .collect();
        history.sample(1, &queued, Duration::from_secs(2));
        let series = history.series();
        assert_eq!(series.len(), MAX_QUEUES_IN_HISTORY);
        assert!(
            series.iter().all(|s| s.queue_key.as_str() >= "q010"),
            "the 10 least busy are out"
        );
    }
}
