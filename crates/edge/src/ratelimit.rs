//! Keyed token buckets: per client IP and per player.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// `--rate-limit N|off`: N requests (or new connections) per second per key, burst 2N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    Off,
    PerSecond(NonZeroU32),
}

impl RateLimit {
    /// A modest default for one client address or one player.
    pub const DEFAULT_PER_SECOND: u32 = 50;
}

impl Default for RateLimit {
    fn default() -> Self {
        match NonZeroU32::new(Self::DEFAULT_PER_SECOND) {
            Some(n) => Self::PerSecond(n),
            None => Self::Off,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("expected a positive number of requests per second or `off`, got {0:?}")]
pub struct InvalidRateLimit(String);

impl FromStr for RateLimit {
    type Err = InvalidRateLimit;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        text.parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .map(Self::PerSecond)
            .ok_or_else(|| InvalidRateLimit(text.to_owned()))
    }
}

/// How long a refused client should wait before trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(Duration);

impl RetryAfter {
    pub fn new(wait: Duration) -> Self {
        Self(wait)
    }

    /// The exact wait until the bucket has room again.
    pub fn duration(self) -> Duration {
        self.0
    }

    /// Whole seconds for a `Retry-After` header: rounded up, and at least 1 so a
    /// client that honours it never retries at once into the same refusal.
    pub fn header_seconds(self) -> u64 {
        let whole = self.0.as_secs();
        let rounded = if self.0.subsec_nanos() > 0 {
            whole.saturating_add(1)
        } else {
            whole
        };
        rounded.max(1)
    }
}

impl std::fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.header_seconds())
    }
}

/// Token buckets keyed by client (an IP, a player id): `N` per second with a
/// burst of `2N` per key. With `RateLimit::Off` every check passes.
///
/// Buckets that have refilled are indistinguishable from new ones, so they are
/// dropped every `SWEEP_EVERY` checks: the map holds only clients active in
/// the last couple of seconds, whatever the number of distinct keys seen.
pub struct KeyedLimiter<K, C = DefaultClock>
where
    K: Clone + Hash + Eq,
    C: Clock,
{
    buckets: Option<Buckets<K, C>>,
    checks: AtomicU64,
}

type Buckets<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The burst a bucket holds, in seconds' worth of its rate (`--rate-limit N` → burst 2N).
const BURST_FACTOR: NonZeroU32 = NonZeroU32::MIN.saturating_add(1);

/// Checks between two sweeps of refilled buckets (amortises the O(keys) sweep).
const SWEEP_EVERY: u64 = 4096;

impl<K> KeyedLimiter<K>
where
    K: Clone + Hash + Eq,
{
    pub fn new(limit: RateLimit) -> Self {
        Self::with_clock(limit, DefaultClock::default())
    }
}

impl<K, C> KeyedLimiter<K, C>
where
    K: Clone + Hash + Eq,
    C: Clock,
{
    /// A limiter reading time from `clock` (tests pass a fake one).
    pub fn with_clock(limit: RateLimit, clock: C) -> Self {
        let buckets = match limit {
            RateLimit::Off => None,
            RateLimit::PerSecond(per_second) => {
                let burst = per_second.saturating_mul(BURST_FACTOR);
                let quota = Quota::per_second(per_second).allow_burst(burst);
                Some(RateLimiter::dashmap_with_clock(quota, clock))
            }
        };
        Self {
            buckets,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is there.
    pub fn check(&self, key: &K) -> Result<(), RetryAfter> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        let checks = self.checks.fetch_add(1, Ordering::Relaxed);
        if checks % SWEEP_EVERY == SWEEP_EVERY - 1 {
            buckets.retain_recent();
            buckets.shrink_to_fit();
        }
        buckets
            .check_key(key)
            .map_err(|not_until| RetryAfter::new(not_until.wait_time_from(buckets.clock().now())))
    }

    /// Whether checks can ever fail (false with `RateLimit::Off`).
    pub fn is_enabled(&self) -> bool {
        self.buckets.is_some()
    }

    /// Keys currently holding a bucket (approximate under concurrency).
    pub fn tracked_keys(&self) -> usize {
        self.buckets.as_ref().map_or(0, RateLimiter::len)
    }
}

impl<K, C> std::fmt::Debug for KeyedLimiter<K, C>
where
    K: Clone + Hash + Eq,
    C: Clock,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("enabled", &self.is_enabled())
            .field("tracked_keys", &self.tracked_keys())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter(
        per_second: u32,
    ) -> (
        KeyedLimiter<&'static str, FakeRelativeClock>,
        FakeRelativeClock,
    ) {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::PerSecond(NonZeroU32::new(per_second).unwrap());
        (KeyedLimiter::with_clock(limit, clock.clone()), clock)
    }

    #[test]
    fn parses_numbers_and_off() {
        assert_eq!("off".parse::<RateLimit>().unwrap(), RateLimit::Off);
        assert_eq!(
            " 20 ".parse::<RateLimit>().unwrap(),
            RateLimit::PerSecond(NonZeroU32::new(20).unwrap())
        );
        assert!("0".parse::<RateLimit>().is_err());
        assert!("-1".parse::<RateLimit>().is_err());
        assert!("fast".parse::<RateLimit>().is_err());
    }

    #[test]
    fn allows_a_burst_of_twice_the_rate_then_refuses_with_a_wait() {
        let (limiter, _clock) = limiter(5);
        for _ in 0..10 {
            assert!(limiter.check(&"a").is_ok());
        }
        let refused = limiter.check(&"a").unwrap_err();
        assert!(refused.duration() > Duration::ZERO);
        assert!(refused.duration() <= Duration::from_millis(200));
        assert_eq!(refused.header_seconds(), 1);
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let (limiter, _clock) = limiter(1);
        assert!(limiter.check(&"a").is_ok());
        assert!(limiter.check(&"a").is_ok());
        assert!(limiter.check(&"a").is_err());
        assert!(limiter.check(&"b").is_ok());
    }

    #[test]
    fn tokens_come_back_with_time() {
        let (limiter, clock) = limiter(2);
        for _ in 0..4 {
            assert!(limiter.check(&"a").is_ok());
        }
        assert!(limiter.check(&"a").is_err());
        clock.advance(Duration::from_millis(500));
        assert!(limiter.check(&"a").is_ok());
        assert!(limiter.check(&"a").is_err());
    }

    #[test]
    fn off_always_allows() {
        let limiter = KeyedLimiter::<u32>::new(RateLimit::Off);
        assert!(!limiter.is_enabled());
        for _ in 0..10_000 {
            assert!(limiter.check(&7).is_ok());
        }
        assert_eq!(limiter.tracked_keys(), 0);
    }

    #[test]
    fn retry_after_header_rounds_up_and_is_at_least_one() {
        assert_eq!(RetryAfter::new(Duration::ZERO).header_seconds(), 1);
        assert_eq!(
            RetryAfter::new(Duration::from_millis(1)).header_seconds(),
            1
        );
        assert_eq!(RetryAfter::new(Duration::from_secs(2)).header_seconds(), 2);
        assert_eq!(
            RetryAfter::new(Duration::from_millis(2001)).header_seconds(),
            3
        );
        assert_eq!(
            RetryAfter::new(Duration::from_millis(2001)).to_string(),
            "3"
        );
    }

    #[test]
    fn refilled_buckets_are_swept_so_keys_do_not_accumulate() {
        let (limiter, clock) = limiter(1);
        let keys: Vec<&'static str> = (0..1000)
            .map(|i| &*Box::leak(format!("client-{i}").into_boxed_str()))
            .collect();
        for key in &keys {
            assert!(limiter.check(key).is_ok());
        }
        assert!(limiter.tracked_keys() >= 1000);
        clock.advance(Duration::from_secs(10));
        for _ in 0..SWEEP_EVERY {
            assert!(limiter.check(&"steady").is_ok());
            clock.advance(Duration::from_secs(1));
        }
        assert!(
            limiter.tracked_keys() < 10,
            "refilled buckets stayed: {}",
            limiter.tracked_keys()
        );
    }
}
