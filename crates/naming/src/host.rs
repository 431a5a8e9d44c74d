//! What this host is called and where it is reached: the only lookups of
//! the OS in this crate, each with one documented fallback.
//!
//! ```
//! let name = naming::host::hostname();
//! assert!(!name.is_empty());
//!
//! // A specific listen address is advertised as it is; a wildcard one as
//! // the host's primary address.
//! let bound: std::net::IpAddr = "10.1.2.3".parse().unwrap();
//! assert_eq!(naming::host::advertise_ip(bound), bound);
//! let any: std::net::IpAddr = "0.0.0.0".parse().unwrap();
//! assert!(!naming::host::advertise_ip(any).is_unspecified());
//! ```

use std::net::{IpAddr, Ipv4Addr};

/// The kernel's hostname (`/proc/sys/kernel/hostname`, else
/// `/etc/hostname`), trimmed.
///
/// Fallback, when neither file holds a name: a generated unique
/// `host-<nanoseconds since the epoch>`, because equal hostnames overwrite
/// each other's registrations. The `HOSTNAME` variable
/// ([`crate::env::HOSTNAME`]) is the caller's business: it ranks above this.
pub fn hostname() -> String {
    os_hostname().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("host-{nanos}")
    })
}

fn os_hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .find(|h| !h.is_empty())
}

/// The host's primary address: the source address the kernel picks towards
/// a public address (a UDP socket is connected to `192.0.2.1`, TEST-NET-1;
/// no packet is sent).
///
/// Fallback, without a default route (a private container network): the
/// first non-loopback IPv4 address the kernel holds (`/proc/net/fib_trie`);
/// with none of those either, `127.0.0.1`.
pub fn primary_ip() -> IpAddr {
    routed_ipv4()
        .or_else(|| first_local_ipv4().map(IpAddr::V4))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The address to register for a listener bound to `bound`: `bound` itself
/// when specific, [`primary_ip`] for a wildcard (`0.0.0.0`, `::`).
pub fn advertise_ip(bound: IpAddr) -> IpAddr {
    if bound.is_unspecified() {
        primary_ip()
    } else {
        bound
    }
}

fn routed_ipv4() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// The first non-loopback IPv4 of the host, read from the kernel's routing
/// trie, where every local address is a `/32 host LOCAL` leaf.
fn first_local_ipv4() -> Option<Ipv4Addr> {
    parse_fib_trie(&std::fs::read_to_string("/proc/net/fib_trie").ok()?)
}

fn parse_fib_trie(text: &str) -> Option<Ipv4Addr> {
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(ip) = t.strip_prefix("|-- ") {
            last = ip.trim().parse().ok();
        } else if t.contains("/32 host LOCAL") {
            if let Some(ip) = last.filter(|ip| !ip.is_loopback() && !ip.is_unspecified()) {
                return Some(ip);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fib_trie_skips_loopback_and_non_local_leaves() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     \
                    +-- 127.0.0.0/8 2 0 2\n        |-- 127.0.0.1\n           /32 host LOCAL\n     \
                    |-- 172.18.0.0\n        /16 link UNICAST\n     |-- 172.18.0.5\n        /32 host LOCAL\n";
        assert_eq!(parse_fib_trie(trie), Some(Ipv4Addr::new(172, 18, 0, 5)));
        assert_eq!(parse_fib_trie("Main:\n"), None);
    }

    #[test]
    fn primary_ip_is_usable() {
        let ip = primary_ip();
        assert!(!ip.is_unspecified());
        assert_eq!(
            advertise_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Ipv4Addr::LOCALHOST
        );
    }

    #[test]
    fn hostname_matches_the_kernel() {
        if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert_eq!(hostname(), k.trim());
        }
    }
}
