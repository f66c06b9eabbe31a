//! Who may purge: a list of addresses and networks, loopback only by default.

use std::net::IpAddr;

use ipnet::IpNet;

/// An entry that is neither an address nor a network.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is neither an IP address nor a CIDR network")]
pub struct AclError(pub String);

pub struct PurgeAcl {
    allowed: Vec<IpNet>,
}

impl PurgeAcl {
    /// Entries are addresses (`10.0.0.5`, `::1`) or networks (`10.0.0.0/8`).
    pub fn new(entries: &[String]) -> Result<Self, AclError> {
        let allowed = entries
            .iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| AclError(entry.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    pub fn allows(&self, client: IpAddr) -> bool {
        let client = match client {
            // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        self.allowed.iter().any(|net| net.contains(&client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_networks() {
        let acl = PurgeAcl::new(&["127.0.0.1".into(), "::1".into(), "10.1.0.0/16".into()]).unwrap();
        assert!(acl.allows("127.0.0.1".parse().unwrap()));
        assert!(acl.allows("::1".parse().unwrap()));
        assert!(acl.allows("10.1.200.3".parse().unwrap()));
        assert!(acl.allows("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!acl.allows("10.2.0.1".parse().unwrap()));
        assert!(!acl.allows("192.0.2.1".parse().unwrap()));
        assert!(PurgeAcl::new(&["not-an-ip".into()]).is_err());
    }
}
