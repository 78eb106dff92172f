//! Flags of a public listener shared by `control-plane` and `game-server`:
//! rate limit, header timeout and connection caps. (`--idle-timeout` is
//! declared by each command: the game server's also governs WebSockets.)

use std::time::Duration;

use clap::Args;
use matchplane_edge::ratelimit::RateLimit;
use matchplane_edge::serve::ServeLimits;

use crate::duration::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct ListenerArgs {
    /// Requests (matchmaking) and new WebSockets per second per client address, burst twice that;
    /// `off` disables the limit (benchmarks from one address on loopback).
    #[arg(long, env = "MATCHPLANE_RATE_LIMIT", default_value = "50")]
    pub rate_limit: RateLimit,

    /// A client must send a request's complete headers within this (slowloris guard; `0` disables).
    #[arg(long, env = "MATCHPLANE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Most open connections (WebSockets included) over all clients; past it clients get 503.
    #[arg(long, env = "MATCHPLANE_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Most open connections (WebSockets included) from one client address; past it 503.
    #[arg(long, env = "MATCHPLANE_MAX_CONNECTIONS_PER_IP", default_value_t = 512)]
    pub max_connections_per_ip: usize,
}

impl ListenerArgs {
    /// The listener's limits; `idle_timeout` closes keep-alive connections with no request.
    pub fn serve_limits(&self, idle_timeout: Duration) -> ServeLimits {
        ServeLimits {
            header_timeout: self.header_timeout,
            idle_timeout,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        listener: ListenerArgs,
    }

    fn parse(argv: &[&str]) -> Result<ListenerArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("test").chain(argv.iter().copied()))
            .map(|wrapper| wrapper.listener)
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.rate_limit, RateLimit::default());
        let defaults = ServeLimits::default();
        assert_eq!(args.serve_limits(defaults.idle_timeout), defaults);
    }

    #[test]
    fn parses_off_numbers_and_durations() {
        let args = parse(&[
            "--rate-limit",
            "off",
            "--header-timeout",
            "500ms",
            "--max-connections",
            "10",
            "--max-connections-per-ip",
            "2",
        ])
        .unwrap();
        assert_eq!(args.rate_limit, RateLimit::Off);
        let limits = args.serve_limits(Duration::from_secs(3));
        assert_eq!(limits.header_timeout, Duration::from_millis(500));
        assert_eq!(limits.idle_timeout, Duration::from_secs(3));
        assert_eq!(limits.max_connections, 10);
        assert_eq!(limits.max_connections_per_ip, 2);
        assert!(parse(&["--rate-limit", "0"]).is_err());
        assert!(parse(&["--rate-limit", "lots"]).is_err());
    }
}
