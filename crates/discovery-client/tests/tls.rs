//! The SDK against HTTPS nodes (`https://` in `DISCOVERY_NODES`): verified
//! with the configured CA, a client certificate for `client_auth`, an
//! error naming the node and the reason when verification fails, and
//! never plain HTTP.

mod common;

use common::{ENV, ZONE, put, server};
use discovery_client::{Config, Discovery};
use discovery_server::server::ServerHandle;
use testkit::tls::TestCa;

/// A node serving HTTPS with a certificate of `ca`.
async fn tls_server(ca: &TestCa, client_auth: &str) -> ServerHandle {
    let id = ca.issue("node", &["127.0.0.1", "localhost"]);
    server(&format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\nclient_auth = \"{client_auth}\"\n",
        id.cert,
        id.key,
        ca.ca_path()
    ))
    .await
}

fn sdk(node: &str, vars: &[(&str, String)]) -> Result<Discovery, naming::Error> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let mut c = Config::builder()
        .nodes([node])
        .zone(ZONE)
        .env(ENV)
        .hostname("tls-client")
        .build_with(|var| vars.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone()));
    c.self_discovery = false;
    Discovery::new(c)
}

fn files(ca: &TestCa) -> Vec<(&'static str, String)> {
    let id = ca.issue("sdk", &["sdk.example"]);
    vec![
        ("DISCOVERY_CA", ca.ca_path().display().to_string()),
        ("DISCOVERY_CERT", id.cert.display().to_string()),
        ("DISCOVERY_KEY", id.key.display().to_string()),
    ]
}

#[tokio::test]
async fn fetches_over_mutual_tls() {
    let ca = TestCa::temp("sdk-mtls");
    let s = tls_server(&ca, "required").await;
    put(&s, "demo.svc", "p1", 9000);
    let d = sdk(&format!("https://{}", s.addr()), &files(&ca)).unwrap();
    assert!(d.config().https);
    let got = d.fetch("demo.svc").await.expect("answered over HTTPS");
    let got = got.expect("demo.svc is registered");
    assert_eq!(got.instances[ZONE][0].hostname, "p1");
    d.close().await.unwrap();
}

#[tokio::test]
async fn a_node_failing_verification_is_named_with_the_reason() {
    let ca = TestCa::temp("sdk-verify");
    let s = tls_server(&ca, "none").await;
    put(&s, "demo.svc", "p1", 9000);
    let node = format!("{}", s.addr());
    // Another authority: the node's certificate is unknown to it.
    let other = TestCa::temp("sdk-verify-other");
    let d = sdk(
        &format!("https://{node}"),
        &[("DISCOVERY_CA", other.ca_path().display().to_string())],
    )
    .unwrap();
    let err = d.fetch("demo.svc").await.expect_err("verification fails");
    let text = err.to_string();
    assert!(text.contains(&node), "names the node: {text}");
    assert!(
        text.to_ascii_lowercase().contains("certificate"),
        "gives the reason: {text}"
    );
    d.close().await.unwrap();
}

#[tokio::test]
async fn without_a_client_certificate_the_node_refuses() {
    let ca = TestCa::temp("sdk-nocert");
    let s = tls_server(&ca, "required").await;
    let d = sdk(
        &format!("https://{}", s.addr()),
        &[("DISCOVERY_CA", ca.ca_path().display().to_string())],
    )
    .unwrap();
    assert!(d.fetch("demo.svc").await.is_err());
    d.close().await.unwrap();
}

#[tokio::test]
async fn https_never_falls_back_to_plain_http() {
    // A plain node given as https://: the SDK speaks TLS to it and fails,
    // rather than retrying in clear.
    let s = server("").await;
    put(&s, "demo.svc", "p1", 9000);
    let d = sdk(&format!("https://{}", s.addr()), &[]).unwrap();
    assert!(d.fetch("demo.svc").await.is_err());
    d.close().await.unwrap();
}

#[test]
fn bad_tls_settings_are_config_errors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    let err = sdk(
        "https://127.0.0.1:1",
        &[("DISCOVERY_CA", "/nonexistent/ca.pem".to_string())],
    )
    .expect_err("a missing CA file is refused");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    let err = sdk(
        "https://127.0.0.1:1",
        &[("DISCOVERY_CERT", "/x/cert.pem".to_string())],
    )
    .expect_err("a certificate without a key is refused");
    assert!(err.to_string().contains("DISCOVERY_KEY"), "{err}");
}
