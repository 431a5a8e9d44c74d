//! TLS material of a node (`[tls]`, docs/tls.md): the server side of its
//! HTTPS listener and the client side it uses to call its peers, both
//! built from the same files and replaced together on reload.
//!
//! Files are checked when they are read: a missing or unreadable file, a
//! PEM file without the expected item, a key that does not match the
//! certificate, or a certificate outside its validity period is an error
//! naming the file and the problem. A node refuses to start on one; a
//! reload (SIGHUP) that hits one keeps the material in use.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use parking_lot::RwLock;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
    sign::CertifiedKey,
};

use crate::config::{self, ClientAuth};

/// A `[tls]` file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{key} {}: {problem}", path.display())]
pub struct TlsError {
    /// The config key naming the file (`tls.cert`, `tls.key`, `tls.ca`).
    pub key: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

/// Marks a request that came over a TLS connection whose client presented
/// a certificate verified against `[tls] ca`: a peer of the cluster (it
/// counts as a proof for the peer rule, see [`crate::membership::Proof`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct VerifiedClient;

/// The TLS material in use; [`Tls::reload`] swaps it for new connections.
#[derive(Debug)]
pub struct Tls {
    files: config::Tls,
    current: RwLock<Material>,
}

#[derive(Debug, Clone)]
struct Material {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl Tls {
    /// Reads and checks the files of `[tls]`; `None` when TLS is off.
    pub fn load(files: &config::Tls) -> Result<Option<Tls>, TlsError> {
        if !files.enabled() {
            return Ok(None);
        }
        let current = RwLock::new(Material::read(files)?);
        Ok(Some(Tls {
            files: files.clone(),
            current,
        }))
    }

    /// Reads the files again. On success new connections (accepted and
    /// dialled) use the new material; on failure the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Material::read(&self.files)?;
        *self.current.write() = fresh;
        Ok(())
    }

    /// The acceptor for the next connection.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.current.read().server))
    }

    /// The client side: verifies peers with `ca`, presents our certificate.
    pub(crate) fn client_config(&self) -> ClientConfig {
        ClientConfig::clone(&self.current.read().client)
    }
}

fn provider() -> Arc<CryptoProvider> {
    // Explicit, rather than a process-wide default: the embedding program
    // may have installed another provider, or none.
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Material {
    fn read(files: &config::Tls) -> Result<Material, TlsError> {
        let (Some(cert_path), Some(key_path)) = (&files.cert, &files.key) else {
            unreachable!("Tls::load is called only with cert and key set");
        };
        let chain = read_certs("tls.cert", cert_path)?;
        let key = read_key(key_path)?;
        let provider = provider();
        let certified =
            CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(|e| {
                TlsError {
                    key: "tls.key",
                    path: key_path.clone(),
                    problem: match e {
                        rustls::Error::InconsistentKeys(_) => {
                            format!("does not match the certificate in {}", cert_path.display())
                        }
                        other => format!("unusable private key: {other}"),
                    },
                }
            })?;
        let roots = match &files.ca {
            Some(ca) => Arc::new(read_roots(ca)?),
            None => Arc::new(RootCertStore::empty()),
        };
        let ca_err = |problem: String| TlsError {
            key: "tls.ca",
            path: files.ca.clone().unwrap_or_default(),
            problem,
        };
        let versions = |e: rustls::Error| ca_err(format!("no TLS version usable: {e}"));
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(versions)?;
        let server = match files.client_auth {
            ClientAuth::None => server.with_no_client_auth(),
            mode => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::clone(&roots),
                    Arc::clone(&provider),
                );
                let verifier = if mode == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                server.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| ca_err(format!("cannot verify clients: {e}")))?,
                )
            }
        };
        let mut server =
            server.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        // The node speaks HTTP/1.1 only.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(versions)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError {
                key: "tls.key",
                path: key_path.clone(),
                problem: format!("unusable as a client certificate: {e}"),
            })?;
        Ok(Material {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        key,
        path: path.to_path_buf(),
        problem: match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            _ => format!("cannot read: {e}"),
        },
    })
}

/// Every certificate of a PEM file, each within its validity period.
pub(crate) fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    let fail = |problem: String| TlsError {
        key,
        path: path.to_path_buf(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(fail("holds no PEM certificate".into()));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for (i, c) in certs.iter().enumerate() {
        let which = if i == 0 {
            "the certificate".to_string()
        } else {
            format!("certificate #{}", i + 1)
        };
        let Some((not_before, not_after)) = validity(c) else {
            return Err(fail(format!("{which} is not a valid X.509 certificate")));
        };
        if now > not_after {
            return Err(fail(format!("{which} expired on {}", utc(not_after))));
        }
        if now < not_before {
            return Err(fail(format!(
                "{which} is not valid before {}",
                utc(not_before)
            )));
        }
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read("tls.key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError {
        key: "tls.key",
        path: path.to_path_buf(),
        problem: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "holds no PEM private key".into(),
            other => format!("not a PEM private key: {other}"),
        },
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs("tls.ca", path)? {
        roots.add(c).map_err(|e| TlsError {
            key: "tls.ca",
            path: path.to_path_buf(),
            problem: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// `notBefore` and `notAfter` of a DER certificate, in Unix seconds.
///
/// rustls checks validity only during a handshake; reading the dates here
/// lets a node refuse an expired certificate when it starts rather than
/// fail every connection later. Only the path to `validity` is walked:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL, serialNumber, signature, issuer, validity, … }, … }`.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = tlv(rest)?.2;
    }
    for _ in 0..3 {
        // serialNumber, signature, issuer
        rest = tlv(rest)?.2;
    }
    let (tag, val, _) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, nb, after) = tlv(val)?;
    let (t2, na, _) = tlv(after)?;
    Some((time(t1, nb)?, time(t2, na)?))
}

/// One DER item: tag, contents, what follows.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s[..2].parse().ok()?;
            // RFC 5280: 50–99 are 19xx, 00–49 are 20xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day, h, m, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // The inverse of `days_from_civil`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2038, 1, 19), (2099, 12, 31)] {
            let t = days_from_civil(y, m, d) * 86_400 + 3661;
            assert_eq!(utc(t), format!("{y:04}-{m:02}-{d:02} 01:01:01 UTC"));
        }
        assert_eq!(time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time(0x18, b"19700101000010Z"), Some(10));
        assert_eq!(time(0x17, b"7001010000Z"), None);
    }

    #[test]
    fn validity_needs_a_certificate() {
        assert_eq!(validity(b""), None);
        assert_eq!(validity(&[0x30, 0x03, 0x02, 0x01, 0x00]), None);
        assert_eq!(tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
    }
}
