//! Keyed token buckets: per client IP and per player.

use std::num::NonZeroU32;
use std::str::FromStr;

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
