//! Who the client is, and what the origin is told about it.
//!
//! Invariant: a client's own claims about its address (`X-Forwarded-For`) are believed
//! only when the peer that sent them is a trusted proxy; then the client is the nearest
//! address in the chain that is not one. The purge ACL, the per-client origin cap and
//! the logs all use this one answer.

use std::net::IpAddr;

use http::HeaderMap;

/// The client behind `peer`: `peer` itself unless it is trusted, else the rightmost
/// address of `X-Forwarded-For` that is not trusted (the leftmost, if all are).
pub fn real_client(peer: IpAddr, headers: &HeaderMap, trusted: impl Fn(IpAddr) -> bool) -> IpAddr {
    if !trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Lines are read right to left: the last one is the nearest proxy's addition.
    let values: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for value in values.iter().rev() {
        for part in value.rsplit(|b| *b == b',') {
            let Some(ip) = std::str::from_utf8(part)
                .ok()
                .and_then(|s| parse_ip(s.trim()))
            else {
                // Garbage in the chain: nothing left of it can be believed.
                return client;
            };
            client = ip;
            if !trusted(ip) {
                return ip;
            }
        }
    }
    client
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80`.
fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    None
}

/// The `X-Forwarded-For` the origin gets (before the peer is appended): the chain as
/// received from a trusted proxy, nothing from anyone else.
pub fn forwarded_chain(headers: &HeaderMap, peer_trusted: bool) -> Option<String> {
    if !peer_trusted {
        return None;
    }
    let values: Vec<String> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn trusted(ip: IpAddr) -> bool {
        ip.is_loopback() || ip == "10.0.0.1".parse::<IpAddr>().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        assert_eq!(
            real_client(ip("203.0.113.9"), &headers(&["127.0.0.1"]), trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_address() {
        // The client forged a first entry; the terminator appended the real one.
        let h = headers(&["6.6.6.6, 198.51.100.7", "10.0.0.1"]);
        assert_eq!(
            real_client(ip("127.0.0.1"), &h, trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            real_client(ip("127.0.0.1"), &headers(&[]), trusted),
            ip("127.0.0.1")
        );
        assert_eq!(
            real_client(ip("127.0.0.1"), &headers(&["[2001:db8::1]:4431"]), trusted),
            ip("2001:db8::1")
        );
        // Garbage stops the walk at the last address believed.
        assert_eq!(
            real_client(
                ip("127.0.0.1"),
                &headers(&["6.6.6.6, junk, 10.0.0.1"]),
                trusted
            ),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_chain_is_kept_only_from_trusted_peers() {
        let h = headers(&["1.1.1.1", "2.2.2.2"]);
        assert_eq!(
            forwarded_chain(&h, true).as_deref(),
            Some("1.1.1.1, 2.2.2.2")
        );
        assert_eq!(forwarded_chain(&h, false), None);
    }
}
