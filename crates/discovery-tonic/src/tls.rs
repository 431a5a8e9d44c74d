//! gRPC over TLS (docs/tls.md#grpc): an instance registered with a
//! `grpcs://host:port` address serves TLS, and the balanced channel dials
//! it with the CA (and optional client certificate) of its
//! [`ClientConfig`]; a server builds its side with [`server_config`] and
//! serves through [`crate::interop::incoming_tls`].
//!
//! rustls with the `ring` provider, as everywhere in the stack; gRPC needs
//! HTTP/2, negotiated by ALPN (`h2`).

use std::{path::Path, sync::Arc};

use naming::Error;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::ClientConfig;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidConfig(format!("{what} {}: {e}", path.display()))
}

fn certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = std::fs::read(path).map_err(|e| invalid(what, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, path, e))?;
    if certs.is_empty() {
        return Err(invalid(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| invalid("key", path, e))
}

/// The client side for `grpcs://` endpoints, `None` without `config.ca`.
pub(crate) fn client_config(config: &ClientConfig) -> Result<Option<rustls::ClientConfig>, Error> {
    let Some(ca) = &config.ca else {
        if config.cert.is_some() || config.key.is_some() {
            return Err(Error::InvalidConfig(
                "a client certificate needs ClientConfig::ca".into(),
            ));
        }
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("ca", ca)? {
        roots.add(c).map_err(|e| invalid("ca", ca, e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let mut tls = match (&config.cert, &config.key) {
        (Some(cert), Some(k)) => builder
            .with_client_auth_cert(certs("cert", cert)?, key(k)?)
            .map_err(|e| invalid("cert", cert, e))?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::InvalidConfig(
                "ClientConfig cert and key go together".into(),
            ));
        }
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(tls))
}

/// The server side of a gRPC server with the certificate chain and key of
/// these PEM files (ALPN `h2`).
///
/// # Errors
/// A file that cannot be read or parsed, or a key that does not match the
/// certificate, named in the message.
pub fn server_config(cert: &Path, key_path: &Path) -> Result<rustls::ServerConfig, Error> {
    let chain = certs("cert", cert)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key(key_path)?)
        .map_err(|e| invalid("key", key_path, e))?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tls)
}
