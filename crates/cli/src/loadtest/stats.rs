//! Latency histograms (HDR, microsecond resolution) and their printable summaries.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Microseconds, 1 µs to 1 h, 3 significant digits: 0.1% error at any scale.
#[derive(Debug, Clone)]
pub struct Latency {
    /// `None` only if the (constant, valid) bounds were refused, which cannot happen;
    /// it keeps construction infallible without a panic path.
    histogram: Option<Histogram<u64>>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3).ok(),
        }
    }

    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(histogram) = &mut self.histogram {
            histogram.saturating_record(micros.max(1));
        }
    }

    fn ms(&self, micros: u64) -> f64 {
        micros as f64 / 1000.0
    }

    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        self.histogram.as_ref().map_or(0.0, |histogram| {
            self.ms(histogram.value_at_quantile(quantile))
        })
    }

    pub fn summary(&self) -> LatencySummary {
        let Some(histogram) = self.histogram.as_ref().filter(|h| !h.is_empty()) else {
            return LatencySummary::default();
        };
        LatencySummary {
            count: histogram.len(),
            p50: self.quantile_ms(0.50),
            p90: self.quantile_ms(0.90),
            p99: self.quantile_ms(0.99),
            max: self.ms(histogram.max()),
            mean: histogram.mean().round() / 1000.0,
        }
    }
}

/// Milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencySummary {
    /// One table row: name, count, p50, p90, p99, max.
    pub fn row(&self, name: &str) -> String {
        format!(
            "  {name:<20} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            self.count, self.p50, self.p90, self.p99, self.max
        )
    }

    pub fn header() -> String {
        format!(
            "  {:<20} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "count", "p50", "p90", "p99", "max"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_out_in_milliseconds() {
        let mut latency = Latency::new();
        for ms in 1..=100 {
            latency.record(Duration::from_millis(ms));
        }
        let summary = latency.summary();
        assert_eq!(summary.count, 100);
        assert!((summary.p50 - 50.0).abs() < 0.1, "{summary:?}");
        assert!((summary.p99 - 99.0).abs() < 0.1, "{summary:?}");
        assert!((summary.max - 100.0).abs() < 0.1, "{summary:?}");
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }
}
