//! HTTPS and mutual TLS (`[tls]`, docs/tls.md): nodes replicate over
//! HTTPS with `client_auth = "required"`, clients are served only with a
//! certificate signed by the CA, plain HTTP to the TLS port is closed, a
//! new node is admitted by its certificate, bad files stop a node with the
//! file named, and a reload swaps the material for new connections.
//!
//! Every certificate is made when the test runs (`testkit::tls`).

use std::{path::Path, time::Duration};

use discovery_server::{
    config::Config,
    server::{self, ServerHandle},
};
use serde_json::Value;
use testkit::{FAST, tls::TestCa, wait_until};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

fn tls_table(ca: &TestCa, name: &str, client_auth: &str) -> String {
    let id = ca.issue(name, &["127.0.0.1", "localhost"]);
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\nclient_auth = \"{client_auth}\"\n",
        id.cert,
        id.key,
        ca.ca_path()
    )
}

fn config(listener: &TcpListener, nodes: &[String], extra: &str) -> Config {
    let addr = listener.local_addr().unwrap();
    let list: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let text = format!(
        "nodes = [{}]\n[env]\nzone = \"sh001\"\nhost = \"node-{}\"\nDeployEnv = \"dev\"\n[httpServer]\naddr = \"{addr}\"\n{FAST}{extra}",
        list.join(", "),
        addr.port()
    );
    Config::parse(&text).expect("valid config").0
}

async fn node(listener: TcpListener, nodes: &[String], extra: &str) -> ServerHandle {
    let cfg = config(&listener, nodes, extra);
    let n = server::start_on(cfg, listener).await.expect("starts");
    n.wait_ready().await;
    n
}

async fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

/// A client trusting `ca`, presenting `identity` (a certificate issued to
/// `name`) when given one.
fn client(ca: &TestCa, name: Option<&str>) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(&std::fs::read(ca.ca_path()).unwrap()).unwrap();
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root);
    if let Some(name) = name {
        let id = ca.issue(name, &["client.example"]);
        let mut pem = std::fs::read(&id.cert).unwrap();
        pem.extend(std::fs::read(&id.key).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

async fn post(http: &reqwest::Client, base: &str, path: &str, form: &str) -> Value {
    http.post(format!("{base}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string())
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON")
}

async fn hosts(http: &reqwest::Client, base: &str, appid: &str) -> Vec<String> {
    let Ok(res) = http
        .get(format!(
            "{base}/discovery/fetch?env=dev&appid={appid}&status=3"
        ))
        .send()
        .await
    else {
        return Vec::new();
    };
    let v: Value = res.json().await.unwrap_or_default();
    let mut out: Vec<String> = v["data"]["instances"]
        .as_object()
        .into_iter()
        .flat_map(|z| z.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|i| i["hostname"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

const REGISTER: &str =
    "env=dev&zone=sh001&appid=demo.tls&hostname=h1&addrs=grpc://127.0.0.1:9000&status=1&region=sh";

#[tokio::test]
async fn mutual_tls_nodes_replicate_a_register() {
    let ca = TestCa::temp("tls-replicate");
    let (la, a) = bind().await;
    let (lb, b) = bind().await;
    let nodes = [a.clone(), b.clone()];
    let (ta, tb) = (
        tls_table(&ca, "node-a", "required"),
        tls_table(&ca, "node-b", "required"),
    );
    // Started together: each one's start-up sync needs the other.
    let (na, nb) = tokio::join!(node(la, &nodes, &ta), node(lb, &nodes, &tb));
    let http = client(&ca, Some("sdk"));
    let (ua, ub) = (format!("https://{a}"), format!("https://{b}"));
    let v = post(&http, &ua, "/discovery/register", REGISTER).await;
    assert_eq!(v["code"], 0, "{v}");
    wait_until(
        Duration::from_secs(10),
        "register replicated to B over HTTPS",
        async || hosts(&http, &ub, "demo.tls").await == ["h1"],
    )
    .await;
    // Each node's own record says that it serves HTTPS.
    let v: Value = http
        .get(format!(
            "{ub}/discovery/fetch?env=dev&appid=infra.discovery&status=3"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = v["data"].to_string();
    assert!(text.contains(&format!("https://{a}")), "{text}");
    assert!(text.contains(&format!("https://{b}")), "{text}");
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test]
async fn clients_need_the_ca_and_a_certificate() {
    let ca = TestCa::temp("tls-clients");
    let (l, a) = bind().await;
    let n = node(
        l,
        std::slice::from_ref(&a),
        &tls_table(&ca, "node", "required"),
    )
    .await;
    let base = format!("https://{a}");

    let with_cert = client(&ca, Some("sdk"));
    let v: Value = with_cert
        .get(format!("{base}/discovery/nodes"))
        .send()
        .await
        .expect("a client with a certificate is answered")
        .json()
        .await
        .unwrap();
    assert_eq!(v["code"], 0, "{v}");

    let without = client(&ca, None);
    let err = without
        .get(format!("{base}/discovery/nodes"))
        .send()
        .await
        .expect_err("a client without a certificate is refused");
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    // A certificate from another authority is refused as well.
    let other = TestCa::temp("tls-other");
    let stranger = client(&other, Some("stranger"));
    assert!(
        stranger
            .get(format!("{base}/discovery/nodes"))
            .send()
            .await
            .is_err(),
        "the node's certificate is not trusted by the stranger, nor the stranger's by the node"
    );

    // Plain HTTP to the TLS port: closed without an HTTP answer.
    let mut s = TcpStream::connect(&a).await.unwrap();
    s.write_all(b"GET /discovery/nodes HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("closed, not left open");
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&buf)
    );
    n.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_read_deadline() {
    let ca = TestCa::temp("tls-silent");
    let (l, a) = bind().await;
    let mut cfg = config(
        &l,
        std::slice::from_ref(&a),
        &tls_table(&ca, "node", "none"),
    );
    cfg.http_server.read_timeout = Some(Duration::from_millis(300));
    let n = server::start_on(cfg, l).await.unwrap();
    let mut s = TcpStream::connect(&a).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the handshake is bounded by the read deadline");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    n.shutdown().await;
}

#[tokio::test]
async fn plain_addr_serves_plain_http_beside_https() {
    let ca = TestCa::temp("tls-plain");
    let (l, a) = bind().await;
    let mut cfg = config(
        &l,
        std::slice::from_ref(&a),
        &tls_table(&ca, "node", "none"),
    );
    cfg.http_server.plain_addr = Some("127.0.0.1:0".into());
    let n = server::start_on(cfg, l).await.unwrap();
    n.wait_ready().await;
    let plain = n.plain_addr().expect("plainAddr bound");
    let v: Value = reqwest::get(format!("http://{plain}/discovery/nodes"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["code"], 0);
    let v: Value = client(&ca, None)
        .get(format!("https://{a}/discovery/nodes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["code"], 0);
    assert!(
        reqwest::get(format!("http://{a}/discovery/nodes"))
            .await
            .is_err(),
        "addr serves HTTPS only"
    );
    n.shutdown().await;
}

#[tokio::test]
async fn an_unlisted_node_is_admitted_by_its_certificate() {
    let ca = TestCa::temp("tls-admit");
    let (la, a) = bind().await;
    let (lb, b) = bind().await;
    // A knows only itself; B knows A. B's record reaches A over a
    // connection with B's certificate, which is A's proof that B is a node.
    let na = node(
        la,
        std::slice::from_ref(&a),
        &tls_table(&ca, "node-a", "required"),
    )
    .await;
    let nb = node(
        lb,
        &[a.clone(), b.clone()],
        &tls_table(&ca, "node-b", "required"),
    )
    .await;
    let http = client(&ca, Some("sdk"));
    let ua = format!("https://{a}");
    wait_until(Duration::from_secs(10), "A lists B", async || {
        let v: Value = match http.get(format!("{ua}/discovery/nodes")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => return false,
        };
        v["data"].to_string().contains(&b)
    })
    .await;
    nb.shutdown().await;
    na.shutdown().await;
}

#[tokio::test]
async fn without_a_client_certificate_a_peer_record_is_refused() {
    let ca = TestCa::temp("tls-refuse");
    let (l, a) = bind().await;
    let n = node(
        l,
        std::slice::from_ref(&a),
        &tls_table(&ca, "node", "optional"),
    )
    .await;
    let form = "env=dev&zone=sh001&appid=infra.discovery&hostname=evil&addrs=https://127.0.0.9:1&status=1&region=sh&replication=true";
    let v = post(
        &client(&ca, None),
        &format!("https://{a}"),
        "/discovery/register",
        form,
    )
    .await;
    assert_eq!(v["code"], -400, "{v}");
    let v = post(
        &client(&ca, Some("peer")),
        &format!("https://{a}"),
        "/discovery/register",
        form,
    )
    .await;
    assert_eq!(v["code"], 0, "a CA-signed client certificate vouches: {v}");
    n.kill();
}

fn start_error(cfg: Config) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match server::start(cfg, Some("127.0.0.1:0".parse().unwrap())).await {
            Ok(_) => panic!("started with bad files"),
            Err(e) => e.to_string(),
        }
    })
}

fn with_files(cert: &Path, key: &Path, ca: &Path) -> Config {
    Config::parse(&format!(
        "[tls]\ncert = {cert:?}\nkey = {key:?}\nca = {ca:?}\n"
    ))
    .unwrap()
    .0
}

#[test]
fn bad_files_stop_the_node_naming_the_file() {
    let ca = TestCa::temp("tls-bad");
    let good = ca.issue("good", &["127.0.0.1"]);
    let other = ca.issue("other", &["127.0.0.1"]);
    let expired = ca.issue_with("expired", &["127.0.0.1"], |p| {
        p.not_before = testkit::tls::date_time_ymd(2000, 1, 1);
        p.not_after = testkit::tls::date_time_ymd(2001, 1, 1);
    });
    let missing = ca.dir().join("missing.pem");

    let e = start_error(with_files(&missing, &good.key, &ca.ca_path()));
    assert!(
        e.contains("tls.cert") && e.contains("missing.pem") && e.contains("no such file"),
        "{e}"
    );

    let e = start_error(with_files(&good.cert, &other.key, &ca.ca_path()));
    assert!(
        e.contains("tls.key") && e.contains("other.key") && e.contains("does not match"),
        "{e}"
    );

    let e = start_error(with_files(&expired.cert, &expired.key, &ca.ca_path()));
    assert!(
        e.contains("expired.pem") && e.contains("expired on 2001-01-01"),
        "{e}"
    );

    let e = start_error(with_files(&good.cert, &good.key, &good.key));
    assert!(e.contains("tls.ca") && e.contains("good.key"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[tokio::test]
async fn reload_swaps_the_material_for_new_connections() {
    let ca = TestCa::temp("tls-reload");
    let (l, a) = bind().await;
    let id = ca.issue("node", &["127.0.0.1"]);
    let table = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
        id.cert,
        id.key,
        ca.ca_path()
    );
    let n = node(l, std::slice::from_ref(&a), &table).await;
    let url = format!("https://{a}/discovery/nodes");
    // A fresh client per request: a pooled connection would keep the
    // material of its handshake.
    let answers = |ca: &TestCa| {
        let http = client(ca, None);
        let url = url.clone();
        async move { http.get(url).send().await.is_ok() }
    };
    assert!(answers(&ca).await);

    // A broken key: the reload fails and the old material stays.
    let good_key = std::fs::read(&id.key).unwrap();
    std::fs::write(&id.key, b"not a key").unwrap();
    let e = n.reload_tls().expect_err("a bad key fails the reload");
    assert!(e.to_string().contains("node.key"), "{e}");
    assert!(answers(&ca).await, "old material still served");
    std::fs::write(&id.key, good_key).unwrap();

    // A certificate from a new authority, written over the same files.
    let next = TestCa::temp("tls-reload-next");
    let fresh = next.issue("node", &["127.0.0.1"]);
    std::fs::copy(&fresh.cert, &id.cert).unwrap();
    std::fs::copy(&fresh.key, &id.key).unwrap();
    std::fs::copy(next.ca_path(), ca.ca_path()).unwrap();
    assert!(n.reload_tls().expect("reloads"));
    assert!(answers(&next).await, "the new certificate is served");
    n.shutdown().await;
}
