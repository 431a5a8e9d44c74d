//! Optional tokens for writes (docs/protocol.md#authentication), off by default so that unmodified
//! Go SDKs keep working.
//!
//! * `write_token`: register, renew, cancel from clients;
//! * `admin_token`: `set` (falls back to the write rule when unset);
//! * `peer_token`: writes marked `replication`/`from_zone`, and `fetch/all`
//!   (falls back to the write rule when unset, so that setting only
//!   `write_token` does not leave `replication=true` as a way around it);
//! * `trusted_cidrs`: clients from these networks need no `write_token`.
//!
//! A token is accepted as `Authorization: Bearer <token>`, as the password of
//! `Authorization: Basic`, or (for clients that cannot set headers) as a
//! `token` form or query parameter. Comparisons are constant-time; tokens
//! never appear in logs or `Debug` output.
//!
//! ```
//! use discovery_server::config::Config;
//!
//! let (cfg, _) = Config::parse("[auth]\nwrite_token = \"s3cret\"\n").unwrap();
//! assert!(!cfg.auth.is_open());
//! assert!(!format!("{:?}", cfg.auth).contains("s3cret"));
//! ```

use std::{fmt, net::IpAddr};

use base64::Engine as _;
use http::HeaderMap;
use ipnet::IpNet;
use subtle::ConstantTimeEq;

/// A token that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a token.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The token itself, for sending it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// Token for client writes.
    pub write_token: Option<Secret>,
    /// Token for `set`.
    pub admin_token: Option<Secret>,
    /// Token peers present.
    pub peer_token: Option<Secret>,
    /// Networks exempt from `write_token`.
    pub trusted_cidrs: Vec<IpNet>,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    ClientWrite,
    Admin,
    PeerWrite,
    PeerRead,
}

impl Auth {
    /// Whether no token is configured.
    pub fn is_open(&self) -> bool {
        self.write_token.is_none() && self.admin_token.is_none() && self.peer_token.is_none()
    }

    fn client_write(&self, token: Option<&str>, ip: Option<IpAddr>) -> Result<(), &'static str> {
        let Some(write) = &self.write_token else {
            return Ok(());
        };
        if ip.is_some_and(|ip| self.trusted_cidrs.iter().any(|n| n.contains(&ip))) {
            return Ok(());
        }
        let ok = token.is_some_and(|t| {
            write.matches(t) || self.admin_token.as_ref().is_some_and(|a| a.matches(t))
        });
        if ok {
            Ok(())
        } else {
            Err("write token required")
        }
    }

    /// Checks a request; the error names the missing token, never a value.
    pub(crate) fn check(
        &self,
        need: Need,
        token: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(), &'static str> {
        match need {
            Need::ClientWrite => self.client_write(token, ip),
            Need::Admin => match &self.admin_token {
                Some(a) if token.is_some_and(|t| a.matches(t)) => Ok(()),
                Some(_) => Err("admin token required"),
                None => self.client_write(token, ip),
            },
            Need::PeerWrite => match &self.peer_token {
                Some(p) if token.is_some_and(|t| p.matches(t)) => Ok(()),
                Some(_) => Err("peer token required"),
                None => self.client_write(token, ip),
            },
            // The console reads `fetch/all` with the admin token.
            Need::PeerRead => match &self.peer_token {
                Some(p)
                    if !token.is_some_and(|t| {
                        p.matches(t) || self.admin_token.as_ref().is_some_and(|a| a.matches(t))
                    }) =>
                {
                    Err("peer token required")
                }
                _ => Ok(()),
            },
        }
    }
}

/// The token a request presents: `Authorization` header first.
pub(crate) fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text.split_once(':').map(|(_, pass)| pass.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth {
            write_token: Some(Secret::new("w")),
            admin_token: Some(Secret::new("a")),
            peer_token: None,
            trusted_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    #[test]
    fn rules() {
        let a = auth();
        let lan: IpAddr = "10.1.2.3".parse().unwrap();
        let wan: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(a.check(Need::ClientWrite, Some("w"), Some(wan)).is_ok());
        assert!(a.check(Need::ClientWrite, Some("a"), Some(wan)).is_ok());
        assert!(a.check(Need::ClientWrite, None, Some(lan)).is_ok());
        assert_eq!(
            a.check(Need::ClientWrite, Some("x"), Some(wan)),
            Err("write token required")
        );
        assert_eq!(
            a.check(Need::Admin, Some("w"), Some(lan)),
            Err("admin token required")
        );
        assert!(a.check(Need::Admin, Some("a"), None).is_ok());
        // No peer token: replication=true cannot get around the write token.
        assert!(a.check(Need::PeerWrite, None, Some(wan)).is_err());
        assert!(a.check(Need::PeerRead, None, None).is_ok());
        let p = Auth {
            peer_token: Some(Secret::new("p")),
            ..Auth::default()
        };
        assert!(p.check(Need::PeerWrite, Some("p"), None).is_ok());
        assert!(p.check(Need::PeerRead, Some("w"), None).is_err());
        assert!(
            p.check(Need::ClientWrite, None, None).is_ok(),
            "writes stay open"
        );
    }

    #[test]
    fn header_forms() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer tok".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("tok"));
        // user:pw
        h.insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("pw"));
        h.insert("authorization", "Digest x".parse().unwrap());
        assert_eq!(presented(&h), None);
    }
}
