//! Who a client is, for per-IP limits: the peer address, or — only when the peer is one of
//! `trusted_proxies` — the address a proxy put in `Forwarded` (RFC 7239) or `X-Forwarded-For`.
//! IPv6 clients are counted per /64 (one subscriber line usually holds a whole /64).

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// The unit per-IP limits count: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpKey {
    /// An IPv4 address (IPv4-mapped IPv6 addresses too).
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl IpKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(u32::from(v4)),
                None => IpKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }

    /// A well-spread 64-bit hash (stripe selection).
    pub fn hash(self) -> u64 {
        let x = match self {
            IpKey::V4(a) => u64::from(a) | 1 << 63,
            IpKey::V6(p) => p,
        };
        x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
    }
}

/// The client's address: `peer`, unless `peer` is a trusted proxy, in which case the
/// right-most address of the forwarding headers that is not itself a trusted proxy (a client can
/// prepend anything it likes; only what the trusted proxies appended counts). `forwarded` is the
/// `Forwarded` header, `xff` `X-Forwarded-For`; `Forwarded` wins when both are present.
pub fn client_ip(
    peer: IpAddr,
    forwarded: Option<&str>,
    xff: Option<&str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = match (forwarded, xff) {
        (Some(f), _) => f
            .split(',')
            .filter_map(|el| {
                el.split(';')
                    .filter_map(|p| p.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_node(v))
            })
            .collect(),
        (None, Some(x)) => x.split(',').filter_map(parse_node).collect(),
        (None, None) => Vec::new(),
    };
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// IPv4-mapped IPv6 as IPv4 (so `127.0.0.1/8` covers `::ffff:127.0.0.1`).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One hop: `1.2.3.4`, `1.2.3.4:5678`, `"[2001:db8::1]:80"`, `2001:db8::1`. Obfuscated and
/// `unknown` nodes (RFC 7239 §6) are skipped.
fn parse_node(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest
            .split(']')
            .next()?
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6);
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    let (host, _port) = v.rsplit_once(':')?;
    host.parse::<IpAddr>().ok().map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        assert_eq!(
            IpKey::of(ip("2001:db8:1:2::1")),
            IpKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            IpKey::of(ip("2001:db8:1:2::1")),
            IpKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(IpKey::of(ip("::ffff:10.0.0.1")), IpKey::of(ip("10.0.0.1")));
        assert_ne!(IpKey::of(ip("10.0.0.1")), IpKey::of(ip("10.0.0.2")));
    }

    #[test]
    fn forwarding_headers_only_from_trusted_peers() {
        let t = nets(&["10.0.0.0/8", "::1/128"]);
        let peer = ip("203.0.113.5");
        assert_eq!(
            client_ip(peer, None, Some("1.1.1.1"), &t),
            peer,
            "untrusted peer"
        );
        let proxy = ip("10.1.2.3");
        assert_eq!(client_ip(proxy, None, Some("1.1.1.1"), &t), ip("1.1.1.1"));
        // The client forged the first hop; the proxy appended the real one.
        assert_eq!(
            client_ip(proxy, None, Some("9.9.9.9, 1.1.1.1, 10.0.0.7"), &t),
            ip("1.1.1.1")
        );
        assert_eq!(client_ip(proxy, None, None, &t), proxy, "no header");
        assert_eq!(client_ip(proxy, None, Some("garbage"), &t), proxy);
        assert_eq!(
            client_ip(
                proxy,
                Some(r#"for=9.9.9.9, for="[2001:db8::7]:4711";proto=https"#),
                Some("1.1.1.1"),
                &t
            ),
            ip("2001:db8::7"),
            "Forwarded wins"
        );
        assert_eq!(
            client_ip(proxy, Some("for=unknown, for=5.6.7.8:99"), None, &t),
            ip("5.6.7.8")
        );
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), None, Some("1.1.1.1"), &t),
            ip("1.1.1.1"),
            "mapped peer is trusted by its v4 net"
        );
    }
}
