//! `X-Forwarded-For` as a load balancer writes it, and which entry to believe.
//!
//! The header is only believed when the direct peer is a trusted proxy; then
//! the client is the right-most entry that is not itself a trusted proxy
//! (entries further left are client-supplied and could be forged).

use std::net::IpAddr;

use ipnet::IpNet;

/// Networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    /// Parses `10.0.0.1`, `10.0.0.0/8` or `::1`.
    pub fn parse_entry(entry: &str) -> Result<IpNet, String> {
        let entry = entry.trim();
        if let Ok(net) = entry.parse::<IpNet>() {
            return Ok(net);
        }
        entry
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{entry:?} is neither an IP address nor a CIDR network"))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The address to attribute a request to, given the direct peer and the
    /// values of every `X-Forwarded-For` header (in order).
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = forwarded_for
            .into_iter()
            .flat_map(|value| value.split(','))
            .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
            .collect();
        forwarded
            .iter()
            .rev()
            .copied()
            .find(|ip| !self.trusts(*ip))
            .or_else(|| forwarded.first().copied())
            .unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn forwarded_for_is_only_believed_from_trusted_proxies() {
        let trusted = TrustedProxies::new(
            ["127.0.0.1", "10.0.0.0/8"]
                .iter()
                .filter_map(|entry| TrustedProxies::parse_entry(entry).ok())
                .collect(),
        );
        let header = ["6.6.6.6, 203.0.113.9", "10.1.2.3"];
        // From the trusted LB: the right-most untrusted entry.
        assert_eq!(
            trusted.client_ip(ip("127.0.0.1"), header),
            ip("203.0.113.9")
        );
        // From anyone else: the header is ignored.
        assert_eq!(
            trusted.client_ip(ip("198.51.100.1"), header),
            ip("198.51.100.1")
        );
        // Trusted peer without the header: the peer itself.
        assert_eq!(trusted.client_ip(ip("127.0.0.1"), []), ip("127.0.0.1"));
        assert!(TrustedProxies::parse_entry("nope").is_err());
    }
}
