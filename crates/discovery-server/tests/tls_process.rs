//! TLS with the `discovery` binary: two processes with
//! `client_auth = "required"` replicate a register, `SIGHUP` swaps the
//! certificate for new connections (a broken reload keeps the old one),
//! and a bad file stops the binary with one line naming it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde_json::Value;
use testkit::{Process, discovery_bin, tls::TestCa, wait_until};
use tokio::process::Command;

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// An HTTPS client trusting `ca`, with a client certificate of it.
fn client(ca: &TestCa) -> reqwest::Client {
    let id = ca.issue("test-client", &["client.example"]);
    let mut pem = std::fs::read(&id.cert).unwrap();
    pem.extend(std::fs::read(&id.key).unwrap());
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(ca.ca_path()).unwrap()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn config(ca: &TestCa, name: &str, addr: SocketAddr, nodes: &[SocketAddr]) -> String {
    let id = ca.issue(name, &["127.0.0.1"]);
    let list: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "nodes = [{}]\n[env]\nzone = \"sh001\"\nhost = \"{name}\"\nDeployEnv = \"dev\"\n\
         [httpServer]\naddr = \"{addr}\"\n{}\n\
         [tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\nclient_auth = \"required\"\n",
        list.join(", "),
        testkit::FAST,
        id.cert,
        id.key,
        ca.ca_path()
    )
}

async fn start(ca: &TestCa, name: &str, addr: SocketAddr, nodes: &[SocketAddr]) -> Process {
    let conf = ca.dir().join(format!("{name}.toml"));
    std::fs::write(&conf, config(ca, name, addr, nodes)).unwrap();
    let mut cmd = Command::new(discovery_bin());
    cmd.arg("-conf").arg(&conf).env("RUST_LOG", "info");
    Process::spawn_url(
        cmd,
        name,
        addr,
        &format!("https://{addr}/readyz"),
        client(ca),
    )
    .await
    .expect("starts over HTTPS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_replicate_over_mutual_tls() {
    testkit::echo_to_stderr();
    let ca = TestCa::temp("tls-proc");
    let (a, b) = (free_addr(), free_addr());
    let nodes = [a, b];
    // Started together: each one's start-up sync needs the other.
    let (mut pa, mut pb) = tokio::join!(
        start(&ca, "node-a", a, &nodes),
        start(&ca, "node-b", b, &nodes)
    );
    let http = client(&ca);
    let v: Value = http
        .post(format!("https://{a}/discovery/register"))
        .form(&[
            ("env", "dev"),
            ("zone", "sh001"),
            ("appid", "demo.tls"),
            ("hostname", "h1"),
            ("addrs", "grpc://127.0.0.1:9000"),
            ("status", "1"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["code"], 0, "{v}");
    let url = format!("https://{b}/discovery/fetch?env=dev&appid=demo.tls&status=3");
    wait_until(Duration::from_secs(10), "B has the register", async || {
        let Ok(r) = http.get(&url).send().await else {
            return false;
        };
        r.json::<Value>().await.unwrap_or_default()["data"]
            .to_string()
            .contains("\"h1\"")
    })
    .await;
    // Plain HTTP to the TLS port gets no answer.
    assert!(
        reqwest::get(format!("http://{a}/discovery/nodes"))
            .await
            .is_err()
    );
    pa.terminate().await.unwrap();
    pb.terminate().await.unwrap();
}

/// The leaf certificate the node at `addr` presents to a new connection.
async fn served_leaf(ca: &TestCa, addr: SocketAddr) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca.ca_path()).ok()?;
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.ok()?).ok()?;
    }
    let id = ca.issue("probe", &["probe.example"]);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&id.cert)
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&id.key).ok()?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .ok()?;
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let io = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect("127.0.0.1".try_into().ok()?, tcp)
        .await
        .ok()?;
    Some(io.get_ref().1.peer_certificates()?.first()?.to_vec())
}

fn leaf_in(path: &std::path::Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_a_broken_reload_keeps_it() {
    testkit::echo_to_stderr();
    let ca = TestCa::temp("tls-hup");
    let a = free_addr();
    let mut p = start(&ca, "node-a", a, &[a]).await;
    let files = (ca.dir().join("node-a.pem"), ca.dir().join("node-a.key"));
    assert_eq!(served_leaf(&ca, a).await, Some(leaf_in(&files.0)));

    // A new certificate for the same node, written over the files.
    let next = ca.issue("node-a-next", &["127.0.0.1"]);
    std::fs::copy(&next.cert, &files.0).unwrap();
    std::fs::copy(&next.key, &files.1).unwrap();
    p.signal("HUP").await.unwrap();
    let want = leaf_in(&files.0);
    wait_until(
        Duration::from_secs(10),
        "the new certificate served",
        async || served_leaf(&ca, a).await.as_ref() == Some(&want),
    )
    .await;

    // A broken key: the reload fails, the node keeps serving what it had.
    let good_key = std::fs::read(&files.1).unwrap();
    std::fs::write(&files.1, b"not a key").unwrap();
    p.signal("HUP").await.unwrap();
    // Then a good third certificate: once it is served, the broken reload
    // (signalled before it) is over, and every handshake in between must
    // have succeeded with the second one.
    let third = ca.issue("node-a-third", &["127.0.0.1"]);
    let third_leaf = leaf_in(&third.cert);
    let mut checks = 0;
    while checks < 20 {
        assert_eq!(
            served_leaf(&ca, a).await.as_ref(),
            Some(&want),
            "a failed reload kept the certificate in use"
        );
        checks += 1;
    }
    std::fs::write(&files.1, good_key).unwrap();
    std::fs::copy(&third.cert, &files.0).unwrap();
    std::fs::copy(&third.key, &files.1).unwrap();
    p.signal("HUP").await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the third certificate served",
        async || served_leaf(&ca, a).await.as_ref() == Some(&third_leaf),
    )
    .await;
    assert!(p.terminate().await.unwrap().success());
}

#[test]
fn a_key_that_does_not_match_stops_the_binary_with_one_line() {
    let ca = TestCa::temp("tls-badkey");
    let a = free_addr();
    let other = ca.issue("other", &["127.0.0.1"]);
    let mut text = config(&ca, "node-a", a, &[a]);
    text = text.replace(
        &format!("key = {:?}", ca.dir().join("node-a.key")),
        &format!("key = {:?}", other.key),
    );
    let conf = ca.dir().join("bad.toml");
    std::fs::write(&conf, text).unwrap();
    let out = std::process::Command::new(discovery_bin())
        .arg("-conf")
        .arg(&conf)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("tls.key")
            && lines[0].contains("other.key")
            && lines[0].contains("does not match"),
        "{err}"
    );
    assert!(std::net::TcpListener::bind(a).is_ok(), "nothing was bound");
}
