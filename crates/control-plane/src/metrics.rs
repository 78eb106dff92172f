//! Process-wide counters, exported in the Prometheus text format at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (ms) of the time-to-match histogram buckets.
const MATCH_WAIT_BUCKETS_MS: [u64; 13] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

#[derive(Default)]
pub struct Metrics {
    pub tickets_enqueued: AtomicU64,
    pub tickets_deduplicated: AtomicU64,
    pub tickets_cancelled: AtomicU64,
    pub tickets_expired: AtomicU64,
    pub matches_assigned: AtomicU64,
    pub tickets_assigned: AtomicU64,
    pub matches_without_server: AtomicU64,
    pub matches_dropped: AtomicU64,
    pub store_errors: AtomicU64,
    pub realtime_sockets: AtomicU64,
    /// Requests refused for a missing or invalid credential (any kind).
    pub auth_failures: AtomicU64,
    /// Requests and new sockets refused by a rate limit.
    pub rate_limited: AtomicU64,
    /// Game-server instances lost (silent past the TTL, restarted, or gone with allocations).
    pub servers_lost: AtomicU64,
    /// Tickets put back in their queue after their game server was lost.
    pub tickets_requeued: AtomicU64,
    /// Running lands (with joined players) lost with their game server.
    pub matches_lost: AtomicU64,
    /// Cluster feed entries from other replicas delivered to this one (Redis only).
    pub feed_entries: AtomicU64,
    /// Sum over delivered feed entries of ms from append to delivery.
    pub feed_lag_ms_sum: AtomicU64,
    /// Lag of the last delivered feed entry, ms.
    pub feed_lag_ms: AtomicU64,
    /// Feed gaps answered by reloading state.
    pub feed_resyncs: AtomicU64,
    /// Matcher leases this replica was granted (Redis only).
    pub lease_acquisitions: AtomicU64,
    /// Lease rounds run early because a ticket arrived for a queue nobody held.
    pub lease_woken_rounds: AtomicU64,
    /// Matcher leases this replica lost: not renewed in time, taken over, or fenced.
    pub lease_losses: AtomicU64,
    /// Matcher leases this replica gave back: idle queue, spreading, or shutdown.
    pub lease_releases: AtomicU64,
    /// Commits the store refused because the queue's lease had moved on.
    pub fenced_commits: AtomicU64,
    /// Commits the store refused because a ticket was no longer queued.
    pub commit_conflicts: AtomicU64,
    match_wait_buckets: [AtomicU64; MATCH_WAIT_BUCKETS_MS.len()],
    match_wait_count: AtomicU64,
    match_wait_sum_ms: AtomicU64,
}

/// Values that live elsewhere and are read at scrape time.
pub struct Gauges {
    pub queued_tickets: u64,
    pub live_servers: u64,
    pub abandoned_lands: u64,
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Records one assigned ticket's wait from enqueue to assignment.
    pub fn observe_match_wait(&self, wait_ms: u64) {
        for (bound, bucket) in MATCH_WAIT_BUCKETS_MS.iter().zip(&self.match_wait_buckets) {
            if wait_ms <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.match_wait_count.fetch_add(1, Ordering::Relaxed);
        self.match_wait_sum_ms.fetch_add(wait_ms, Ordering::Relaxed);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let counters = [
            (
                "matchplane_tickets_enqueued_total",
                "Tickets accepted by enqueue.",
                &self.tickets_enqueued,
            ),
            (
                "matchplane_tickets_deduplicated_total",
                "Enqueues answered with the group's existing live ticket.",
                &self.tickets_deduplicated,
            ),
            (
                "matchplane_tickets_cancelled_total",
                "Queued tickets cancelled.",
                &self.tickets_cancelled,
            ),
            (
                "matchplane_tickets_expired_total",
                "Queued tickets that expired.",
                &self.tickets_expired,
            ),
            (
                "matchplane_tickets_assigned_total",
                "Tickets assigned to a land.",
                &self.tickets_assigned,
            ),
            (
                "matchplane_matches_assigned_total",
                "Matches committed.",
                &self.matches_assigned,
            ),
            (
                "matchplane_matches_without_server_total",
                "Proposed matches put back because no server had room.",
                &self.matches_without_server,
            ),
            (
                "matchplane_matches_dropped_total",
                "Proposed matches dropped because a ticket changed meanwhile.",
                &self.matches_dropped,
            ),
            (
                "matchplane_store_errors_total",
                "Failed store operations.",
                &self.store_errors,
            ),
            (
                "matchplane_auth_failures_total",
                "Requests refused for a missing or invalid credential.",
                &self.auth_failures,
            ),
            (
                "matchplane_rate_limited_total",
                "Requests and new sockets refused by a rate limit (429).",
                &self.rate_limited,
            ),
            (
                "matchplane_servers_lost_total",
                "Game-server instances lost (silent past the TTL, restarted, or deregistered holding allocations).",
                &self.servers_lost,
            ),
            (
                "matchplane_tickets_requeued_total",
                "Tickets requeued because their game server was lost.",
                &self.tickets_requeued,
            ),
            (
                "matchplane_matches_lost_total",
                "Lands with joined players lost with their game server.",
                &self.matches_lost,
            ),
            (
                "matchplane_feed_entries_total",
                "Cluster feed entries from other replicas delivered here (Redis store).",
                &self.feed_entries,
            ),
            (
                "matchplane_feed_lag_milliseconds_total",
                "Sum of ms from a feed entry's append to its delivery (divide by matchplane_feed_entries_total).",
                &self.feed_lag_ms_sum,
            ),
            (
                "matchplane_feed_resyncs_total",
                "Cluster feed gaps answered by reloading queued tickets and socket states.",
                &self.feed_resyncs,
            ),
            (
                "matchplane_lease_acquisitions_total",
                "Per-queue matcher leases granted to this replica (Redis store).",
                &self.lease_acquisitions,
            ),
            (
                "matchplane_lease_woken_rounds_total",
                "Lease rounds run at once because a ticket arrived for a queue no replica held (Redis store).",
                &self.lease_woken_rounds,
            ),
            (
                "matchplane_lease_losses_total",
                "Per-queue matcher leases this replica lost (expired, taken over, or fenced).",
                &self.lease_losses,
            ),
            (
                "matchplane_lease_releases_total",
                "Per-queue matcher leases this replica gave back (idle queue, spreading over replicas, or shutdown).",
                &self.lease_releases,
            ),
            (
                "matchplane_fenced_commits_total",
                "Commits refused because the queue's lease was no longer this replica's at its epoch.",
                &self.fenced_commits,
            ),
            (
                "matchplane_commit_conflicts_total",
                "Commits refused because a ticket of the match was no longer queued.",
                &self.commit_conflicts,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let gauge_lines = [
            (
                "matchplane_queued_tickets",
                "Tickets waiting in the matcher.",
                gauges.queued_tickets,
            ),
            (
                "matchplane_live_servers",
                "Game servers that may receive lands.",
                gauges.live_servers,
            ),
            (
                "matchplane_realtime_sockets",
                "Open /realtime sockets.",
                self.realtime_sockets.load(Ordering::Relaxed),
            ),
            (
                "matchplane_feed_lag_milliseconds",
                "Ms from append to delivery of the last cluster feed entry delivered here.",
                self.feed_lag_ms.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauge_lines {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP matchplane_abandoned_lands_total Allocated lands nobody joined before the assignment expired.\n\
             # TYPE matchplane_abandoned_lands_total counter\nmatchplane_abandoned_lands_total {}",
            gauges.abandoned_lands
        );
        let name = "matchplane_time_to_match_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Wait from enqueue to assignment.\n# TYPE {name} histogram"
        );
        for (bound, bucket) in MATCH_WAIT_BUCKETS_MS.iter().zip(&self.match_wait_buckets) {
            let le = *bound as f64 / 1000.0;
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{le}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.match_wait_count.load(Ordering::Relaxed);
        let sum = self.match_wait_sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.observe_match_wait(7);
        metrics.observe_match_wait(70);
        inc(&metrics.tickets_enqueued);
        let text = metrics.render(&Gauges {
            queued_tickets: 3,
            live_servers: 1,
            abandoned_lands: 0,
        });
        assert!(text.contains("matchplane_time_to_match_seconds_bucket{le=\"0.005\"} 0"));
        assert!(text.contains("matchplane_time_to_match_seconds_bucket{le=\"0.01\"} 1"));
        assert!(text.contains("matchplane_time_to_match_seconds_bucket{le=\"0.1\"} 2"));
        assert!(text.contains("matchplane_time_to_match_seconds_count 2"));
        assert!(text.contains("matchplane_tickets_enqueued_total 1"));
        assert!(text.contains("matchplane_queued_tickets 3"));
    }
}
