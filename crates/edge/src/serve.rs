//! The accept loop both planes serve HTTP (and WebSocket upgrades) with.

use std::time::Duration;

/// Limits on connections a listener accepts. Defaults suit a public listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// A client must finish sending a request's headers within this.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Open connections (WebSockets included) over all clients.
    pub max_connections: usize,
    /// Open connections (WebSockets included) from one client address.
    pub max_connections_per_ip: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 20_000,
            max_connections_per_ip: 512,
        }
    }
}
