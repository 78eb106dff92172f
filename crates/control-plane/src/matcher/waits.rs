//! Queue waits for the admin summary: the current waits of queued tickets and
//! the enqueue-to-assignment waits of recent assignments.

use std::collections::{HashMap, VecDeque};

use crate::clock::Millis;

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

/// Queues whose recent waits are remembered. Queue keys are client input
/// (any key without profiles, or with `--open-queues`), so the map is capped
/// as well as aged out with the retention.
pub(super) const QUEUES_WITH_RECENT_WAITS: usize = 4096;

/// Assignment waits of one queue, and when it last had one.
#[derive(Debug, Default)]
pub(super) struct RecentWaits {
    pub waits: VecDeque<u64>,
    pub last_at: Millis,
}

impl RecentWaits {
    /// Remembers one assignment's wait, forgetting the oldest beyond the cap.
    pub fn record(&mut self, wait: u64) {
        if self.waits.len() == RECENT_WAITS_PER_QUEUE {
            self.waits.pop_front();
        }
        self.waits.push_back(wait);
    }
}

/// Drops the waits of queues without an assignment since `cutoff`, then the
/// least recently assigned queues beyond `cap`.
pub(super) fn prune_recent_waits(
    recent: &mut HashMap<String, RecentWaits>,
    cutoff: Millis,
    cap: usize,
) {
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

    #[test]
    fn recent_waits_keep_only_the_newest_per_queue() {
        let mut queue = RecentWaits::default();
        for wait in 0..(RECENT_WAITS_PER_QUEUE as u64 + 10) {
            queue.record(wait);
        }
        assert_eq!(queue.waits.len(), RECENT_WAITS_PER_QUEUE);
        assert_eq!(queue.waits.front(), Some(&10));
    }
}
