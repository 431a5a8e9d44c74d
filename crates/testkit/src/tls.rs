//! A throwaway certificate authority for tests and demos: certificates
//! and keys are made when they are needed (`rcgen`) and written to a
//! directory the caller owns, so no private key is ever committed.
//!
//! ```no_run
//! let dir = std::env::temp_dir().join("ca-example");
//! let ca = testkit::tls::TestCa::new(&dir);
//! let node = ca.issue("node", &["127.0.0.1", "localhost"]);
//! println!("[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}", node.cert, node.key, ca.ca_path());
//! ```

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A certificate authority whose files live in one directory, removed
/// when the authority is dropped.
pub struct TestCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("dir", &self.dir).finish()
    }
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TestCa {
    /// A new authority in a fresh directory under the system's temporary
    /// directory, named after `label`.
    pub fn temp(label: &str) -> TestCa {
        let dir = std::env::temp_dir().join(format!(
            "discovery-{label}-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        TestCa::new(&dir)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new authority; writes `ca.pem` into `dir` (created if missing).
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).expect("create the CA directory");
        let key = KeyPair::generate().expect("generate the CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        // A name of its own: two authorities of one test must not look
        // like the same issuer.
        let name = dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        params
            .distinguished_name
            .push(DnType::CommonName, format!("discovery test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write ca.pem");
        TestCa {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate (PEM).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `name` valid for the `sans` (DNS names or IP
    /// addresses), usable by a server and by a client; written as
    /// `<name>.pem` and `<name>.key`.
    pub fn issue(&self, name: &str, sans: &[&str]) -> Issued {
        self.issue_with(name, sans, |_| {})
    }

    /// As [`TestCa::issue`], with `edit` changing the parameters first
    /// (validity dates, for an expired certificate).
    pub fn issue_with(
        &self,
        name: &str,
        sans: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        edit(&mut params);
        let key = KeyPair::generate().expect("generate a key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let issued = Issued {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write the key");
        issued
    }
}

impl TestCa {
    /// An HTTPS client trusting only this authority and presenting a
    /// certificate of it issued to `name`.
    pub fn client(&self, name: &str) -> reqwest::Client {
        let id = self.issue(name, &[&format!("{name}.client")]);
        let read = |p: &Path| std::fs::read(p).expect("read an issued file");
        let mut pem = read(&id.cert);
        pem.extend(read(&id.key));
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&read(&self.ca_path())).expect("the CA"),
            )
            .identity(reqwest::Identity::from_pem(&pem).expect("the identity"))
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .expect("an HTTPS client")
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Distinguishes the directories of authorities made in one process.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ NEXT.fetch_add(1, Ordering::Relaxed).rotate_left(48)
}

/// `rcgen`'s date helper, for [`TestCa::issue_with`].
pub use rcgen::date_time_ymd;
