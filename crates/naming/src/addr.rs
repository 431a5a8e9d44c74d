//! The one parser of `scheme://host[:port][/path]` addresses in the stack.
//!
//! Two kinds of address flow through a registry, and they deserve opposite
//! treatment:
//!
//! * **instance addresses** (`grpc://10.0.0.1:9000`, `unix:///tmp/s.sock`,
//!   anything a provider registers) are opaque to the registry: the Go
//!   original stores them as sent, and so do we. [`Addr`] reads one when a
//!   consumer needs to (which scheme, which `host:port`), liberally;
//! * **peer addresses** (the `infra.discovery` records and every
//!   `DISCOVERY_NODES` entry) are where a node or an SDK sends requests, so
//!   they must be exactly `http(s)://host:port`: no path, query, fragment or
//!   user info that could steer a request somewhere else. [`PeerAddr`]
//!   accepts nothing more, and its [`Display`](std::fmt::Display) is the
//!   canonical `host:port` every comparison uses.
//!
//! Schemes compare case-insensitively, as Go's `net/url` does (it lower-cases
//! them), so `HTTP://h:1` and `http://h:1` are the same peer everywhere.
//!
//! ```
//! use naming::addr::{Addr, PeerAddr};
//!
//! let a = Addr::parse("GRPC://10.0.0.1:9000/x?y").unwrap();
//! assert!(a.has_scheme("grpc"));
//! assert_eq!(a.authority(), "10.0.0.1:9000");
//! assert_eq!(a.port(), Some(9000));
//!
//! let p = PeerAddr::parse("HTTP://Node-1.example:7171").unwrap();
//! assert_eq!(p.to_string(), "node-1.example:7171");
//! assert!(PeerAddr::parse("http://127.0.0.1:7171/latest/meta-data#").is_err());
//! assert!(PeerAddr::parse("http://user@127.0.0.1:7171").is_err());
//! ```

use std::fmt;

/// Why a text is not an address of the kind asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not {expected}: {why}")]
pub struct AddrError {
    text: String,
    expected: &'static str,
    why: &'static str,
}

impl AddrError {
    fn new(text: &str, expected: &'static str, why: &'static str) -> Self {
        // Error messages echo at most a bounded prefix of hostile input.
        let text = text.chars().take(128).collect();
        AddrError {
            text,
            expected,
            why,
        }
    }

    /// What was wrong, in a few words.
    pub fn reason(&self) -> &'static str {
        self.why
    }
}

/// A parsed `scheme://authority[rest]`, borrowing the text it came from.
///
/// Parsing is liberal (any scheme, the port optional, whatever follows the
/// authority kept as [`Addr::rest`]); it is for reading an opaque instance
/// address, never for deciding where a node sends requests: that is
/// [`PeerAddr`]'s job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    host: &'a str,
    port: Option<u16>,
    authority: &'a str,
    rest: &'a str,
}

impl<'a> Addr<'a> {
    /// Splits `scheme://[userinfo@]host[:port][/path][?query][#fragment]`.
    ///
    /// `host` may be a bracketed IPv6 literal. The port, when present, must
    /// be a number that fits 16 bits.
    pub fn parse(text: &'a str) -> Result<Self, AddrError> {
        const WHAT: &str = "a scheme://host[:port] address";
        let (scheme, after) = text
            .split_once("://")
            .ok_or_else(|| AddrError::new(text, WHAT, "no scheme://"))?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err(AddrError::new(text, WHAT, "invalid scheme"));
        }
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (full_authority, rest) = after.split_at(end);
        let (userinfo, authority) = match full_authority.rsplit_once('@') {
            Some((u, a)) => (Some(u), a),
            None => (None, full_authority),
        };
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| AddrError::new(text, WHAT, "invalid host or port"))?;
        if authority
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(AddrError::new(
                text,
                WHAT,
                "whitespace or control characters",
            ));
        }
        Ok(Addr {
            scheme,
            userinfo,
            host,
            port,
            authority,
            rest,
        })
    }

    /// The scheme as written.
    pub fn scheme(&self) -> &'a str {
        self.scheme
    }

    /// Whether the scheme is `scheme`, ignoring ASCII case.
    pub fn has_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    /// `host[:port]`, as written, without user info.
    pub fn authority(&self) -> &'a str {
        self.authority
    }

    /// The host (an IPv6 literal keeps its brackets).
    pub fn host(&self) -> &'a str {
        self.host
    }

    /// The port, when one is written.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The host as an IP address, when it is one (an IPv6 literal without
    /// its brackets).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        host_ip(self.host)
    }

    /// `user[:password]` before an `@`, when present.
    pub fn userinfo(&self) -> Option<&'a str> {
        self.userinfo
    }

    /// Whatever follows the authority: path, query and fragment.
    pub fn rest(&self) -> &'a str {
        self.rest
    }
}

/// A host that is an IP literal, brackets of IPv6 removed.
fn host_ip(host: &str) -> Option<std::net::IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// `host[:port]` → host and port; `None` when the host is empty or the port
/// is not a number.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let close = v6.find(']')?;
        let host = &authority[..close + 2];
        match &v6[close + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(['[', ']']) && !host.starts_with('[') {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// The address of a discovery node: `http(s)://host:port` and nothing more.
///
/// Parsed from a peer record's address or a node list entry (where the
/// scheme may be left out: `host:port` means `http://host:port`). The host
/// is kept lower-cased, so that two spellings of one node compare equal;
/// [`Display`](fmt::Display) gives `host:port`, [`PeerAddr::url`] the base
/// URL requests go to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    tls: bool,
    host: String,
    port: u16,
}

impl PeerAddr {
    /// Parses `http://host:port`, `https://host:port` (scheme in any case, one
    /// trailing `/` allowed) or a bare `host:port`.
    pub fn parse(text: &str) -> Result<Self, AddrError> {
        const WHAT: &str = "a node address (http(s)://host:port)";
        let trimmed = text.strip_suffix('/').unwrap_or(text);
        let owned;
        let full = if trimmed.contains("://") {
            trimmed
        } else {
            owned = format!("http://{trimmed}");
            &owned
        };
        let a = Addr::parse(full).map_err(|e| AddrError::new(text, WHAT, e.why))?;
        let tls = if a.has_scheme("http") {
            false
        } else if a.has_scheme("https") {
            true
        } else {
            return Err(AddrError::new(text, WHAT, "scheme is not http or https"));
        };
        if a.userinfo().is_some() {
            return Err(AddrError::new(text, WHAT, "user info is not allowed"));
        }
        if !a.rest().is_empty() {
            return Err(AddrError::new(
                text,
                WHAT,
                "a path, query or fragment is not allowed",
            ));
        }
        let port = a
            .port()
            .filter(|p| *p != 0)
            .ok_or_else(|| AddrError::new(text, WHAT, "a non-zero port is required"))?;
        let host = a.host();
        let ok_host = if let Some(v6) = host.strip_prefix('[') {
            v6.strip_suffix(']')
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            host.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        if !ok_host {
            return Err(AddrError::new(text, WHAT, "invalid host"));
        }
        Ok(PeerAddr {
            tls,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether the node is reached over HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host, lower-cased.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        host_ip(&self.host)
    }

    /// `http://host:port` or `https://host:port`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeerAddr::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_addresses_are_read_liberally() {
        let a = Addr::parse("grpc://10.0.0.1:9000").unwrap();
        assert_eq!(
            (a.scheme(), a.host(), a.port()),
            ("grpc", "10.0.0.1", Some(9000))
        );
        let a = Addr::parse("unix:///tmp/s.sock").unwrap_err();
        assert_eq!(a.reason(), "invalid host or port");
        let a = Addr::parse("http://[::1]:80/p?q#f").unwrap();
        assert_eq!(
            (a.host(), a.port(), a.rest()),
            ("[::1]", Some(80), "/p?q#f")
        );
        let a = Addr::parse("zk://u:pw@h").unwrap();
        assert_eq!(
            (a.userinfo(), a.host(), a.port()),
            (Some("u:pw"), "h", None)
        );
        assert!(Addr::parse("h:1").is_err());
        assert!(Addr::parse("://h:1").is_err());
        assert!(Addr::parse("http://h:99999").is_err());
        assert!(Addr::parse("http://h:x").is_err());
        assert!(Addr::parse("http://:80").is_err());
        assert!(Addr::parse("http://h\n:80").is_err());
    }

    #[test]
    fn peer_addresses_are_strict_and_canonical() {
        for ok in [
            "http://127.0.0.1:7171",
            "HTTP://127.0.0.1:7171",
            "Http://127.0.0.1:7171/",
            "127.0.0.1:7171",
        ] {
            let p = PeerAddr::parse(ok).unwrap();
            assert_eq!(p.to_string(), "127.0.0.1:7171", "{ok}");
            assert!(!p.is_tls());
        }
        let p = PeerAddr::parse("HTTPS://Node.EXAMPLE:443").unwrap();
        assert_eq!(
            (p.is_tls(), p.url()),
            (true, "https://node.example:443".into())
        );
        assert_eq!(
            PeerAddr::parse("http://[::1]:7171").unwrap().to_string(),
            "[::1]:7171"
        );
        for bad in [
            "http://127.0.0.1:7171/latest/meta-data/secret#",
            "http://127.0.0.1:7171?x=1",
            "http://127.0.0.1:7171#x",
            "http://user:pw@127.0.0.1:7171",
            "http://127.0.0.1",
            "http://127.0.0.1:0",
            "grpc://127.0.0.1:7171",
            "ftp://127.0.0.1:7171",
            "http://127.0.0.1:7171//",
            "http://a b:1",
            "http://a%2f:1",
            "http://[zz]:1",
            "",
            "http://",
        ] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn errors_bound_what_they_echo() {
        let long = format!("http://{}", "a".repeat(10_000));
        let e = PeerAddr::parse(&long).unwrap_err().to_string();
        assert!(e.len() < 300, "{}", e.len());
    }
}
