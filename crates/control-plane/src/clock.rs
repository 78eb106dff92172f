//! Time source. Everything time-dependent (TTLs, expiry, waits) reads this, so
//! tests can move time forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the UNIX epoch.
pub type Millis = u64;

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; starts at the real current time so
/// timestamps in tokens stay plausible.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::starting_at(SystemClock.now_ms())
    }

    pub fn starting_at(now: Millis) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(now)),
        }
    }

    pub fn advance(&self, by: Duration) {
        let by_ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.now.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z).
const LAST_RFC3339_MS: Millis = 253_402_300_799_999;

/// RFC 3339 / ISO 8601 UTC with milliseconds, e.g. `2026-11-24T10:00:00.000Z`.
/// Times past year 9999 (a TTL of "forever") are written as its last millisecond.
pub fn format_rfc3339(at: Millis) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(at.min(LAST_RFC3339_MS));
    humantime::format_rfc3339_millis(time).to_string()
}

pub fn duration_ms(duration: Duration) -> Millis {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_time_formats_even_past_year_9999() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(LAST_RFC3339_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
