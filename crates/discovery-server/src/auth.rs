//! Optional tokens for writes (docs/protocol.md#authentication), off by default so that unmodified
//! Go SDKs keep working.
//!
//! * `write_token`: register, renew, cancel from clients;
//! * `admin_token`: `set` (falls back to the write rule when unset);
//! * `peer_token`: the cluster secret. Writes marked `replication`/
//!   `from_zone`, and `fetch/all`, must carry its [signature](sign); the
//!   secret itself never travels (both fall back to the write rule when it
//!   is unset, so that setting only `write_token` does not leave
//!   `replication=true` as a way around it);
//! * `trusted_cidrs`: clients from these networks need no `write_token`.
//!
//! A token is accepted as `Authorization: Bearer <token>`, as the password of
//! `Authorization: Basic`, or (for clients that cannot set headers) as a
//! `token` form or query parameter. Tokens are compared as SHA-256 digests
//! in constant time, so neither their content nor their length shows; they
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
use hmac::{Hmac, Mac as _};
use http::HeaderMap;
use ipnet::IpNet;
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
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

    /// Compares digests of equal length, so that neither the token's
    /// content nor its length shows in the time a comparison takes.
    fn matches(&self, presented: &str) -> bool {
        let ours = Sha256::digest(self.0.as_bytes());
        let theirs = Sha256::digest(presented.as_bytes());
        ours.ct_eq(&theirs).into()
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
    /// A peer-marked `set`: without the cluster secret, `replication=true`
    /// must not turn an admin act into a mere write.
    PeerAdmin,
    PeerRead,
}

/// Which credential let a request in, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// No rule applies.
    Open,
    /// The caller's address is in `trusted_cidrs`.
    TrustedNet,
    Write,
    Admin,
    /// A valid peer signature.
    Peer,
}

impl Grant {
    /// The credential's name, as logged.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Grant::Open => "none",
            Grant::TrustedNet => "trusted_cidrs",
            Grant::Write => "write_token",
            Grant::Admin => "admin_token",
            Grant::Peer => "peer_token",
        }
    }
}

impl Auth {
    /// Whether no token is configured.
    pub fn is_open(&self) -> bool {
        self.write_token.is_none() && self.admin_token.is_none() && self.peer_token.is_none()
    }

    fn client_write(&self, token: Option<&str>, ip: Option<IpAddr>) -> Result<Grant, &'static str> {
        let Some(write) = &self.write_token else {
            return Ok(Grant::Open);
        };
        if ip.is_some_and(|ip| self.trusted_cidrs.iter().any(|n| n.contains(&ip))) {
            return Ok(Grant::TrustedNet);
        }
        match token {
            Some(t) if write.matches(t) => Ok(Grant::Write),
            Some(t) if self.admin_token.as_ref().is_some_and(|a| a.matches(t)) => Ok(Grant::Admin),
            _ => Err("write token required"),
        }
    }

    /// Checks a request (`signed`: it carried a valid peer signature); the
    /// error names the missing credential, never a value.
    pub(crate) fn check(
        &self,
        need: Need,
        token: Option<&str>,
        ip: Option<IpAddr>,
        signed: bool,
    ) -> Result<Grant, &'static str> {
        let admin = |t: Option<&str>| {
            self.admin_token
                .as_ref()
                .is_some_and(|a| t.is_some_and(|t| a.matches(t)))
        };
        match need {
            Need::ClientWrite if signed => Ok(Grant::Peer),
            Need::ClientWrite => self.client_write(token, ip),
            Need::Admin => match &self.admin_token {
                Some(_) if admin(token) => Ok(Grant::Admin),
                Some(_) => Err("admin token required"),
                None => self.client_write(token, ip),
            },
            // The secret itself never travels: only its signature counts.
            Need::PeerWrite => match &self.peer_token {
                Some(_) if signed => Ok(Grant::Peer),
                Some(_) => Err("peer signature required ([auth] peer_token)"),
                None => self.client_write(token, ip),
            },
            Need::PeerAdmin => match (&self.peer_token, &self.admin_token) {
                (Some(_), _) if signed => Ok(Grant::Peer),
                (Some(_), _) => Err("peer signature required ([auth] peer_token)"),
                (None, Some(_)) if admin(token) => Ok(Grant::Admin),
                (None, Some(_))
                    if ip.is_some_and(|ip| self.trusted_cidrs.iter().any(|n| n.contains(&ip))) =>
                {
                    Ok(Grant::TrustedNet)
                }
                (None, Some(_)) => Err("admin token required"),
                (None, None) => self.client_write(token, ip),
            },
            // `fetch/all` is every instance: peers' data. The console reads
            // it with the admin token.
            Need::PeerRead => match &self.peer_token {
                _ if self.is_open() => Ok(Grant::Open),
                Some(_) if signed => Ok(Grant::Peer),
                Some(_) if admin(token) => Ok(Grant::Admin),
                Some(_) => Err("peer signature or admin token required"),
                None => self.client_write(token, ip),
            },
        }
    }
}

/// The header that carries a peer request's signature:
/// `t=<unix ms>,n=<nonce, 32 hex>,s=<HMAC-SHA256, 64 hex>`.
pub const SIGNATURE_HEADER: &str = "x-discovery-signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(
    secret: &Secret,
    method: &str,
    path_and_query: &str,
    t: i64,
    nonce: u128,
    body: &[u8],
) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret.0.as_bytes()).expect("HMAC takes any key length");
    m.update(b"discovery-peer-v1\n");
    m.update(method.as_bytes());
    m.update(b"\n");
    m.update(path_and_query.as_bytes());
    m.update(format!("\n{t}\n{nonce:032x}\n").as_bytes());
    m.update(body);
    m
}

/// The [`SIGNATURE_HEADER`] value for a request: an HMAC-SHA256 keyed by
/// the cluster secret over the method, the path with its query, the time
/// (`now_ms`, Unix milliseconds), a random nonce and the body. A node
/// proves it holds `[auth] peer_token` without sending it.
///
/// ```
/// use discovery_server::auth::{Secret, sign};
///
/// let s = Secret::new("cluster secret");
/// let v = sign(&s, "POST", "/discovery/register", b"appid=a", 1_700_000_000_000, 7);
/// assert!(v.starts_with("t=1700000000000,n=00000000000000000000000000000007,s="));
/// assert_ne!(v, sign(&s, "POST", "/discovery/register", b"appid=b", 1_700_000_000_000, 7));
/// ```
pub fn sign(
    secret: &Secret,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now_ms: i64,
    nonce: u128,
) -> String {
    let tag = mac(secret, method, path_and_query, now_ms, nonce, body)
        .finalize()
        .into_bytes();
    let mut out = format!("t={now_ms},n={nonce:032x},s=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// How far a signature's time may be from the receiver's wall clock:
/// `cluster.max_clock_skew`, but at least 30 s, so that two hosts whose
/// clocks disagree a little still talk.
pub fn signature_window(max_clock_skew: std::time::Duration) -> std::time::Duration {
    max_clock_skew.max(std::time::Duration::from_secs(30))
}

/// Why a signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// This node has no `[auth] peer_token` to check it with.
    #[error("signed peer request, but this node has no [auth] peer_token")]
    NoSecret,
    /// Not of the form `t=…,n=…,s=…`.
    #[error("malformed x-discovery-signature")]
    Malformed,
    /// Its time is further from ours than the [`signature_window`].
    #[error("signature time outside the window (cluster.max_clock_skew, at least 30 s)")]
    Skew,
    /// The HMAC does not match: another secret, or a changed request.
    #[error("bad peer signature")]
    Mismatch,
    /// Its nonce was seen within the window: a replay.
    #[error("replayed peer signature")]
    Replayed,
    /// More signed requests within the window than nonces are kept.
    #[error("too many signed requests within cluster.max_clock_skew: limits.max_peer_nonces")]
    Full,
}

impl SignatureError {
    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            SignatureError::NoSecret => "no_secret",
            SignatureError::Malformed => "malformed",
            SignatureError::Skew => "skew",
            SignatureError::Mismatch => "mismatch",
            SignatureError::Replayed => "replayed",
            SignatureError::Full => "full",
        }
    }
}

fn parse_signature(v: &str) -> Option<(i64, u128, [u8; 32])> {
    let mut t = None;
    let mut n = None;
    let mut s = None;
    for part in v.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "t" => t = Some(v.parse::<i64>().ok()?),
            "n" if v.len() == 32 => n = Some(u128::from_str_radix(v, 16).ok()?),
            "s" if v.len() == 64 => {
                let mut tag = [0u8; 32];
                for (i, byte) in tag.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(v.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                s = Some(tag);
            }
            _ => return None,
        }
    }
    Some((t?, n?, s?))
}

/// Checks signatures and remembers their nonces for the skew window, so
/// that a captured request cannot be replayed. The remembered nonces are
/// bounded; past the bound, signed requests are refused until old ones
/// expire (only a holder of the secret can sign, so only a peer can fill
/// it).
#[derive(Debug)]
pub(crate) struct Verifier {
    seen: Mutex<std::collections::HashMap<u128, i64>>,
    cap: usize,
}

impl Verifier {
    pub(crate) fn new(cap: usize) -> Self {
        Verifier {
            seen: Mutex::new(std::collections::HashMap::new()),
            cap,
        }
    }

    /// Nonces remembered now.
    pub(crate) fn held(&self) -> usize {
        self.seen.lock().len()
    }

    /// Verifies `header` for a request; `now_ms` is this node's wall time.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn verify(
        &self,
        secret: Option<&Secret>,
        header: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now_ms: i64,
        window: std::time::Duration,
    ) -> Result<(), SignatureError> {
        let secret = secret.ok_or(SignatureError::NoSecret)?;
        let (t, nonce, tag) = parse_signature(header).ok_or(SignatureError::Malformed)?;
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        if t.abs_diff(now_ms) > window.unsigned_abs() {
            return Err(SignatureError::Skew);
        }
        mac(secret, method, path_and_query, t, nonce, body)
            .verify_slice(&tag)
            .map_err(|_| SignatureError::Mismatch)?;
        let mut seen = self.seen.lock();
        if seen.get(&nonce).is_some_and(|until| *until >= now_ms) {
            return Err(SignatureError::Replayed);
        }
        if seen.len() >= self.cap {
            seen.retain(|_, until| *until >= now_ms);
            if seen.len() >= self.cap {
                return Err(SignatureError::Full);
            }
        }
        // A nonce must be remembered for as long as its time is accepted.
        seen.insert(nonce, t.saturating_add(window));
        Ok(())
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
        assert_eq!(
            a.check(Need::ClientWrite, Some("w"), Some(wan), false),
            Ok(Grant::Write)
        );
        assert_eq!(
            a.check(Need::ClientWrite, Some("a"), Some(wan), false),
            Ok(Grant::Admin)
        );
        assert_eq!(
            a.check(Need::ClientWrite, None, Some(lan), false),
            Ok(Grant::TrustedNet)
        );
        assert_eq!(
            a.check(Need::ClientWrite, Some("x"), Some(wan), false),
            Err("write token required")
        );
        assert_eq!(
            a.check(Need::Admin, Some("w"), Some(lan), false),
            Err("admin token required")
        );
        assert!(a.check(Need::Admin, Some("a"), None, false).is_ok());
        // No peer token: replication=true cannot get around the write token.
        assert!(a.check(Need::PeerWrite, None, Some(wan), false).is_err());
        // Nor can a set: peer-marked, it still needs the admin token (or a
        // trusted network, where the nodes are).
        assert_eq!(
            a.check(Need::PeerAdmin, Some("w"), Some(wan), false),
            Err("admin token required")
        );
        assert_eq!(
            a.check(Need::PeerAdmin, None, Some(lan), false),
            Ok(Grant::TrustedNet)
        );
        assert_eq!(
            a.check(Need::PeerAdmin, Some("a"), Some(wan), false),
            Ok(Grant::Admin)
        );
        // Nor can fetch/all: it falls back to the write rule.
        assert!(a.check(Need::PeerRead, None, Some(wan), false).is_err());
        assert!(a.check(Need::PeerRead, Some("w"), Some(wan), false).is_ok());
        let p = Auth {
            peer_token: Some(Secret::new("p")),
            ..Auth::default()
        };
        assert!(
            p.check(Need::PeerWrite, Some("p"), None, false).is_err(),
            "the secret in clear is not a proof"
        );
        assert_eq!(p.check(Need::PeerWrite, None, None, true), Ok(Grant::Peer));
        assert!(p.check(Need::PeerRead, Some("w"), None, false).is_err());
        assert!(p.check(Need::PeerRead, None, None, true).is_ok());
        assert!(
            p.check(Need::ClientWrite, None, None, false).is_ok(),
            "writes stay open"
        );
    }

    #[test]
    fn signatures_verify_once_within_the_window() {
        let key = Secret::new("k");
        let v = Verifier::new(2);
        let w = std::time::Duration::from_secs(5);
        let sig = sign(&key, "POST", "/p?q", b"body", 10_000, 1);
        let check = |sig: &str, body: &[u8], now: i64| {
            v.verify(Some(&key), sig, "POST", "/p?q", body, now, w)
        };
        assert_eq!(check(&sig, b"body", 12_000), Ok(()));
        assert_eq!(check(&sig, b"body", 12_000), Err(SignatureError::Replayed));
        let other = sign(&key, "POST", "/p?q", b"body", 10_000, 2);
        assert_eq!(
            check(&other, b"b0dy", 10_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(check(&other, b"body", 15_001), Err(SignatureError::Skew));
        assert_eq!(check(&other, b"body", 4_999), Err(SignatureError::Skew));
        let wrong = sign(&Secret::new("x"), "POST", "/p?q", b"body", 10_000, 3);
        assert_eq!(
            check(&wrong, b"body", 10_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check("t=1,n=2,s=3", b"body", 10_000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            v.verify(None, &other, "POST", "/p?q", b"body", 10_000, w),
            Err(SignatureError::NoSecret)
        );
        // Bounded: a second nonce fits, a third waits for the first to expire.
        assert_eq!(check(&other, b"body", 10_000), Ok(()));
        let third = sign(&key, "POST", "/p?q", b"body", 10_000, 4);
        assert_eq!(check(&third, b"body", 10_000), Err(SignatureError::Full));
        let later = sign(&key, "POST", "/p?q", b"body", 16_000, 5);
        assert_eq!(check(&later, b"body", 16_000), Ok(()));
        assert_eq!(v.held(), 1);
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
