//! The real client address behind load balancers: forwarding headers are believed only from
//! trusted peers (`trusted_proxies`), read with Envoy's semantics (`xff_num_trusted_hops`, or
//! trusted CIDRs skipped from the right).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// Which forwarding header a trusted proxy in front writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// How the client address is found (`[http.client_address]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientAddressPolicy {
    /// Peers whose forwarding headers are believed; empty: none are.
    pub trusted_proxies: Vec<IpNet>,
    /// With `Some(n)`: the client is the n-th address from the right of the header (each of
    /// n trusted proxies appended one). With `None`: addresses in `trusted_proxies` are
    /// skipped from the right and the first other one is the client.
    pub trusted_hops: Option<u32>,
    /// The header the proxies in front write.
    pub header: ForwardedHeader,
}

impl Default for ClientAddressPolicy {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            trusted_hops: None,
            header: ForwardedHeader::XForwardedFor,
        }
    }
}

/// The resolved client of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddress {
    /// The client: the peer, or the address a trusted proxy reported.
    pub ip: IpAddr,
    /// Whether the peer is a trusted proxy (its forwarding headers are passed on).
    pub peer_trusted: bool,
}

impl ClientAddressPolicy {
    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client behind `peer` (the socket peer, or the PROXY protocol source).
    pub(crate) fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddress {
        let untrusted = ClientAddress {
            ip: peer,
            peer_trusted: false,
        };
        if self.trusted_proxies.is_empty() || !self.trusts(peer) {
            return untrusted;
        }
        let trusted = ClientAddress {
            ip: peer,
            peer_trusted: true,
        };
        let chain = self.chain(headers);
        let ip = match self.trusted_hops {
            Some(n) => {
                let n = n as usize;
                if n == 0 || chain.len() < n {
                    None
                } else {
                    chain.get(chain.len() - n).copied().flatten()
                }
            }
            None => {
                // From the right: skip trusted proxies; an unreadable entry ends the walk at
                // the last trusted hop, who wrote it.
                let mut found = None;
                for entry in chain.iter().rev() {
                    match entry {
                        Some(ip) if self.trusts(*ip) => found = Some(*ip),
                        Some(ip) => {
                            found = Some(*ip);
                            break;
                        }
                        None => break,
                    }
                }
                found
            }
        };
        ClientAddress {
            ip: ip.unwrap_or(peer),
            ..trusted
        }
    }

    /// The addresses of the forwarding header, left to right; `None` for unreadable entries.
    fn chain(&self, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        let mut out = Vec::new();
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else {
                out.push(None);
                continue;
            };
            for element in text.split(',') {
                let element = element.trim();
                out.push(match self.header {
                    ForwardedHeader::XForwardedFor => parse_node(element),
                    ForwardedHeader::Forwarded => forwarded_for(element).and_then(parse_node),
                });
            }
        }
        out
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The `for=` parameter of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5`, `2001:db8::1`, `[2001:db8::1]:5`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
        h
    }

    fn policy(trusted: &[&str], hops: Option<u32>) -> ClientAddressPolicy {
        ClientAddressPolicy {
            trusted_proxies: trusted.iter().map(|c| c.parse().expect("cidr")).collect(),
            trusted_hops: hops,
            header: ForwardedHeader::XForwardedFor,
        }
    }

    #[test]
    fn untrusted_peers_are_not_believed() {
        let p = policy(&["10.0.0.0/8"], None);
        let c = p.resolve(ip("203.0.113.5"), &xff("1.1.1.1"));
        assert_eq!(c.ip, ip("203.0.113.5"));
        assert!(!c.peer_trusted);
        let none = policy(&[], Some(1));
        assert_eq!(
            none.resolve(ip("10.0.0.1"), &xff("1.1.1.1")).ip,
            ip("10.0.0.1")
        );
    }

    #[test]
    fn trusted_cidrs_are_skipped_from_the_right() {
        let p = policy(&["10.0.0.0/8"], None);
        let c = p.resolve(ip("10.0.0.2"), &xff("6.6.6.6, 198.51.100.7, 10.1.1.1"));
        assert_eq!(c.ip, ip("198.51.100.7"), "a spoofed left entry is ignored");
        assert!(c.peer_trusted);
        assert_eq!(
            p.resolve(ip("10.0.0.2"), &xff("10.9.9.9")).ip,
            ip("10.9.9.9")
        );
        assert_eq!(
            p.resolve(ip("10.0.0.2"), &HeaderMap::new()).ip,
            ip("10.0.0.2")
        );
        assert_eq!(
            p.resolve(ip("10.0.0.2"), &xff("1.1.1.1, garbage, 10.1.1.1"))
                .ip,
            ip("10.1.1.1")
        );
    }

    #[test]
    fn trusted_hops_count_from_the_right() {
        let p = policy(&["10.0.0.0/8"], Some(2));
        let c = p.resolve(ip("10.0.0.2"), &xff("6.6.6.6, 198.51.100.7, 10.1.1.1"));
        assert_eq!(c.ip, ip("198.51.100.7"));
        assert_eq!(
            p.resolve(ip("10.0.0.2"), &xff("10.1.1.1")).ip,
            ip("10.0.0.2")
        );
        let one = policy(&["10.0.0.0/8"], Some(1));
        assert_eq!(
            one.resolve(ip("10.0.0.2"), &xff("6.6.6.6, 198.51.100.7"))
                .ip,
            ip("198.51.100.7")
        );
    }

    #[test]
    fn forwarded_header() {
        let mut p = policy(&["127.0.0.0/8"], None);
        p.header = ForwardedHeader::Forwarded;
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=\"[2001:db8::7]:443\";proto=https, for=127.0.0.9"),
        );
        assert_eq!(p.resolve(ip("127.0.0.1"), &h).ip, ip("2001:db8::7"));
        // With `Forwarded` chosen, X-Forwarded-For is not read.
        assert_eq!(
            p.resolve(ip("127.0.0.1"), &xff("1.1.1.1")).ip,
            ip("127.0.0.1")
        );
    }

    #[test]
    fn mapped_addresses() {
        let p = policy(&["127.0.0.0/8"], None);
        let c = p.resolve(ip("::ffff:127.0.0.1"), &xff("::ffff:192.0.2.1"));
        assert_eq!(c.ip, ip("192.0.2.1"));
    }
}
