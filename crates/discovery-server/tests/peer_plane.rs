//! The peer plane: who may be a peer, and where a node sends requests.
//!
//! `infra.discovery` records are both the cluster's membership and the
//! node list every SDK discovers. Each attack below is what a process on
//! the network can try with the default config; a stub listener stands for
//! the attacker's server, and the node must never send it a request.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use discovery_server::{
    auth::{Secret, sign},
    config::Config,
    server::{self, ServerHandle},
};
use serde_json::Value;
use testkit::{
    FAST,
    http::{get_json, get_metric, post_form as post},
    wait_until,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

async fn node(extra: &str, nodes: &[&str], listener: TcpListener) -> ServerHandle {
    let addr = listener.local_addr().unwrap();
    let list: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let text = format!(
        "nodes = [{}]\n[env]\nzone = \"sh001\"\nhost = \"node-{}\"\nDeployEnv = \"dev\"\n[httpServer]\naddr = \"{addr}\"\n{FAST}{extra}",
        list.join(", "),
        addr.port()
    );
    let cfg = Config::parse(&text).expect("valid config").0;
    let n = server::start_on(cfg, listener).await.expect("starts");
    n.wait_ready().await;
    n
}

async fn lone(extra: &str) -> ServerHandle {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    node(extra, &[&a], l).await
}

/// Addresses in the node's `infra.discovery` records, as SDKs see them.
async fn served_nodes(base: &str) -> Vec<String> {
    let v = get_json(
        base,
        "/discovery/fetch?env=dev&appid=infra.discovery&status=3",
    )
    .await;
    let mut out: Vec<String> = v["data"]["instances"]
        .as_object()
        .into_iter()
        .flat_map(|z| z.values())
        .filter_map(Value::as_array)
        .flatten()
        .flat_map(|i| i["addrs"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

async fn listed_nodes(base: &str) -> Vec<String> {
    get_json(base, "/discovery/nodes").await["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| n["addr"].as_str().unwrap().to_string())
        .collect()
}

fn record(host: &str, addrs: &[String], marker: &str) -> String {
    let mut form =
        format!("zone=sh001&env=dev&appid=infra.discovery&hostname={host}&status=1{marker}");
    for a in addrs {
        form.push_str(&format!("&addrs={a}"));
    }
    form
}

/// A listener that counts the connections it gets and the most bytes it
/// sent on one of them, answering each request with `answer(request head)` (or nothing).
struct Stub {
    addr: String,
    connections: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
}

impl Stub {
    async fn start<F>(answer: F) -> Stub
    where
        F: Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(AtomicUsize::new(0));
        let (c, s) = (Arc::clone(&connections), Arc::clone(&sent));
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = l.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (s, answer) = (Arc::clone(&s), Arc::clone(&answer));
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let Some(body) = answer(&head) else {
                        return;
                    };
                    // Written in pieces, so that an endless answer stops
                    // as soon as the reader goes away.
                    let mut written = 0;
                    for piece in body.chunks(64 * 1024) {
                        if sock.write_all(piece).await.is_err() {
                            return;
                        }
                        written += piece.len();
                        s.fetch_max(written, Ordering::SeqCst);
                    }
                });
            }
        });
        Stub {
            addr,
            connections,
            sent,
        }
    }

    /// A stub that answers nothing: any connection is a finding.
    async fn silent() -> Stub {
        Stub::start(|_| None).await
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_write_infra_discovery() {
    let n = lone("").await;
    let base = format!("http://{}", n.addr());
    let before = served_nodes(&base).await;
    let forged: Vec<String> = (1..=3).map(|p| format!("http://127.0.0.1:{p}")).collect();

    let r = post(&base, "/discovery/register", &record("evil", &forged, "")).await;
    assert_eq!(r["code"], -400, "{r}");
    assert!(r["message"].as_str().unwrap().contains("reserved"), "{r}");
    // Nor take a node out, or mark it down.
    let own = format!(
        "zone=sh001&env=dev&appid=infra.discovery&hostname=node-{}",
        n.addr().port()
    );
    assert_eq!(post(&base, "/discovery/cancel", &own).await["code"], -400);
    assert_eq!(
        post(&base, "/discovery/set", &format!("{own}&status=2")).await["code"],
        -400
    );

    assert_eq!(served_nodes(&base).await, before);
    assert_eq!(listed_nodes(&base).await, vec![n.addr().to_string()]);
    n.shutdown().await;
}

/// Each attack a client can try with the default config (no secret): none
/// makes the stub a peer, and the node never connects to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_write_makes_the_node_contact_the_attackers_address() {
    let stub = Stub::silent().await;
    let n = lone("").await;
    let own = n.addr().to_string();
    let base = format!("http://{own}");
    let s = &stub.addr;
    let refused = |r: &Value, what: &str| {
        assert_eq!(r["code"], -400, "{what}: {r}");
        r["message"].as_str().unwrap().to_string()
    };

    // 1. An upper-case scheme next to the node's own address.
    let r = post(
        &base,
        "/discovery/register",
        &record(
            "evil",
            &[format!("http://{own}"), format!("HTTP://{s}")],
            "&from_zone=true",
        ),
    )
    .await;
    let m = refused(&r, "upper-case scheme");
    assert!(
        m.contains("not a configured peer") && m.contains("peer_token"),
        "{m}"
    );
    // 2. An echo: a server that would answer like a node.
    let r = post(
        &base,
        "/discovery/register",
        &record("echo", &[format!("http://{s}")], "&replication=true"),
    )
    .await;
    refused(&r, "echo");
    // 3. Request forgery: a path behind the address.
    let r = post(
        &base,
        "/discovery/register",
        &record(
            "ssrf",
            &[format!("http://{s}/latest/meta-data/secret%23")],
            "&replication=true",
        ),
    )
    .await;
    let m = refused(&r, "path");
    assert!(m.contains("path"), "{m}");
    for a in [
        format!("http://user@{s}"),
        format!("http://{s}?x=1"),
        format!("hTTp://{s}"),
        format!("https://{s}"),
    ] {
        let r = post(
            &base,
            "/discovery/register",
            &record("v", std::slice::from_ref(&a), "&replication=true"),
        )
        .await;
        refused(&r, &a);
    }
    // 4. The same inside a batch of replicated writes.
    let form = record("batched", &[format!("http://{s}")], "&replication=true");
    let batch = serde_json::json!({"ops": [{"path": "/discovery/register", "form": form}]});
    let v = testkit::http::send_json(
        reqwest::Client::new()
            .post(format!("{base}/discovery/replicate"))
            .json(&batch),
    )
    .await;
    assert_eq!(v["data"][0]["code"], -400, "{v}");
    // 5. The stub's address in every field a client can write.
    let meta = format!("%7B%22addr%22%3A%22http%3A%2F%2F{s}%22%7D");
    for form in [
        format!(
            "zone=sh001&env=dev&appid=app&hostname={s}&status=1&addrs=http://{s}&addrs=grpc://{s}&region={s}&version={s}&metadata={meta}"
        ),
        format!("zone={s}&env=dev&appid=http://{s}&hostname=h&status=1&addrs=HTTP://{s}/x"),
    ] {
        assert_eq!(
            post(&base, "/discovery/register", &form).await["code"],
            0,
            "{form}"
        );
    }
    let set = format!("zone=sh001&env=dev&appid=app&hostname={s}&metadata={meta}");
    assert_eq!(post(&base, "/discovery/set", &set).await["code"], 0);
    let renew =
        format!("zone=sh001&env=dev&appid=app&hostname={s}&replication=true&dirty_timestamp=1");
    post(&base, "/discovery/renew", &renew).await;
    let http = reqwest::Client::new();
    for path in [
        format!("/discovery/fetch?env=dev&appid=app&status=3&zone={s}"),
        format!("/discovery/polls?env=dev&appid=app&latest_timestamp=0&hostname=http://{s}"),
        "/discovery/nodes".to_string(),
    ] {
        http.get(format!("{base}{path}"))
            .header("x-discovery-node", s.as_str())
            .header("x1-bmspy-timeout", "100")
            .send()
            .await
            .unwrap();
    }

    // Several probe and refresh rounds (FAST: 500 ms) pass.
    tokio::time::sleep(Duration::from_millis(1500)).await; // Fixed: nothing should happen in it.
    assert_eq!(
        stub.connections(),
        0,
        "the node contacted the attacker's address"
    );
    assert_eq!(served_nodes(&base).await, vec![format!("http://{own}")]);
    assert_eq!(listed_nodes(&base).await, vec![own]);
    assert!(get_metric(&base, "discovery_peer_records_refused_total").await >= 8.0);
    n.shutdown().await;
}

/// A configured peer that answers with a redirect or an endless body:
/// the node follows no redirect and stops reading at the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_answer_never_redirects_the_node_and_is_bounded() {
    let elsewhere = Stub::silent().await;
    let target = elsewhere.addr.clone();
    let redirecting = Stub::start(move |_| {
        Some(
            format!(
                "HTTP/1.1 302 Found\r\nlocation: http://{target}/discovery/fetch/all\r\ncontent-length: 0\r\n\r\n"
            )
            .into_bytes(),
        )
    })
    .await;
    let huge = Stub::start(|_| {
        // No length up front: the cap must hold while the body streams.
        let mut a = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{\"code\":0,\"data\":{\"x\":[".to_vec();
        a.resize(64 << 20, b' ');
        Some(a)
    })
    .await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own = l.local_addr().unwrap().to_string();
    let n = node(
        "[limits]\nmax_peer_answer_bytes = 1048576\n",
        &[&own, &redirecting.addr, &huge.addr],
        l,
    )
    .await;
    let base = format!("http://{own}");
    wait_until(Duration::from_secs(5), "both peers asked", async || {
        redirecting.connections() > 0 && huge.connections() > 0
    })
    .await;
    // Fixed: time for a redirect to be followed, were it followed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(elsewhere.connections(), 0, "a redirect was followed");
    // The node read at most the cap, plus what socket buffers took, on
    // each attempt.
    let sent = huge.sent.load(Ordering::SeqCst);
    assert!(
        sent < 16 << 20,
        "{sent} bytes of a 64 MiB answer were taken on one connection"
    );
    assert_eq!(get_json(&base, "/discovery/nodes").await["code"], 0);
    n.shutdown().await;
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

async fn signed_post(base: &str, path: &str, form: &str, key: &str, t: i64, nonce: u128) -> Value {
    let sig = sign(&Secret::new(key), "POST", path, form.as_bytes(), t, nonce);
    signed_post_with(base, path, form, &sig).await
}

async fn signed_post_with(base: &str, path: &str, form: &str, sig: &str) -> Value {
    testkit::http::send_json(
        reqwest::Client::new()
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-discovery-signature", sig)
            .body(form.to_string()),
    )
    .await
}

/// With `[auth] peer_token`, a peer proves the secret with an HMAC: the
/// secret sent in clear, a wrong key, a replay and an old time all fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_writes_need_a_fresh_signature_with_the_secret() {
    let stub = Stub::silent().await;
    let n = lone("[auth]\npeer_token = \"s3cret\"\n").await;
    let base = format!("http://{}", n.addr());
    let path = "/discovery/register";
    let form =
        "zone=sh001&env=dev&appid=p.svc&hostname=h&status=1&addrs=grpc://h:1&replication=true";

    let clear = testkit::http::send_json(
        reqwest::Client::new()
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .bearer_auth("s3cret")
            .body(form),
    )
    .await;
    assert_eq!(
        clear["code"], -401,
        "the secret in clear is no proof: {clear}"
    );
    let wrong = signed_post(&base, path, form, "guess", now_ms(), 1).await;
    assert_eq!(wrong["code"], -401, "{wrong}");
    assert!(
        wrong["message"]
            .as_str()
            .unwrap()
            .contains("bad peer signature")
    );
    let old = signed_post(&base, path, form, "s3cret", now_ms() - 60_000, 2).await;
    assert_eq!(old["code"], -401, "{old}");
    assert!(old["message"].as_str().unwrap().contains("max_clock_skew"));

    let sig = sign(
        &Secret::new("s3cret"),
        "POST",
        path,
        form.as_bytes(),
        now_ms(),
        3,
    );
    assert_eq!(signed_post_with(&base, path, form, &sig).await["code"], 0);
    let replay = signed_post_with(&base, path, form, &sig).await;
    assert_eq!(replay["code"], -401, "{replay}");
    assert!(replay["message"].as_str().unwrap().contains("replayed"));
    // The signature covers the body: the same header on another body fails.
    let other = form.replace("hostname=h", "hostname=x");
    assert_eq!(
        signed_post_with(&base, path, &other, &sig).await["code"],
        -401
    );

    // An unsigned peer record is refused even with a static-looking story;
    // `fetch/all` needs the proof too.
    let r = post(
        &base,
        path,
        &record(
            "evil",
            &[format!("http://{}", stub.addr)],
            "&replication=true",
        ),
    )
    .await;
    assert_eq!(r["code"], -401, "{r}");
    let all = get_json(&base, "/discovery/fetch/all").await;
    assert_eq!(all["code"], -401, "{all}");
    let sig = sign(
        &Secret::new("s3cret"),
        "GET",
        "/discovery/fetch/all",
        b"",
        now_ms(),
        4,
    );
    let all = testkit::http::send_json(
        reqwest::Client::new()
            .get(format!("{base}/discovery/fetch/all"))
            .header("x-discovery-signature", sig),
    )
    .await;
    assert_eq!(all["code"], 0, "{all}");
    for reason in ["mismatch", "skew", "replayed"] {
        let m = format!("discovery_peer_signatures_refused_total{{reason=\"{reason}\"}}");
        assert!(get_metric(&base, &m).await >= 1.0, "{m}");
    }
    assert_eq!(stub.connections(), 0);
    n.shutdown().await;
}

async fn two_nodes(extra: &str) -> (ServerHandle, ServerHandle, String, String) {
    // A knows only itself; B lists both, so B's self-registration reaches
    // A as a record of an address A was never told about.
    let la = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (aa, ab) = (
        la.local_addr().unwrap().to_string(),
        lb.local_addr().unwrap().to_string(),
    );
    let a = node(extra, &[&aa], la).await;
    let b = node(extra, &[&aa, &ab], lb).await;
    (a, b, aa, ab)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_secret_joins_without_being_listed() {
    let (a, b, aa, ab) = two_nodes("[auth]\npeer_token = \"s3cret\"\n").await;
    let base = format!("http://{aa}");
    wait_until(Duration::from_secs(3), "A learns B", async || {
        listed_nodes(&base).await.contains(&ab)
    })
    .await;
    assert!(served_nodes(&base).await.contains(&format!("http://{ab}")));
    // And A now replicates to B, signed.
    let w = "zone=sh001&env=dev&appid=p.svc&hostname=h&status=1&addrs=grpc://h:1";
    assert_eq!(post(&base, "/discovery/register", w).await["code"], 0);
    let b_url = format!("http://{ab}");
    let sig = |t| {
        sign(
            &Secret::new("s3cret"),
            "GET",
            "/discovery/fetch/all",
            b"",
            t,
            rand_nonce(),
        )
    };
    wait_until(Duration::from_secs(2), "A replicates to B", async || {
        let all = testkit::http::send_json(
            reqwest::Client::new()
                .get(format!("{b_url}/discovery/fetch/all"))
                .header("x-discovery-signature", sig(now_ms())),
        )
        .await;
        all["data"]["p.svc"].is_array()
    })
    .await;
    b.shutdown().await;
    a.shutdown().await;
}

fn rand_nonce() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(u128::from(std::process::id()));
    u128::from(h.finish()) << 64 | u128::from(h.finish().rotate_left(17))
}

/// Without a secret the cluster is exactly what `nodes` says: a node that
/// is not listed is not learned, and its record is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_an_unlisted_node_is_not_a_peer() {
    let (a, b, aa, ab) = two_nodes("").await;
    let base = format!("http://{aa}");
    // B keeps sending its record (self-registration, renews, probes).
    wait_until(
        Duration::from_secs(3),
        "B's record refused by A",
        async || get_metric(&base, "discovery_peer_records_refused_total").await >= 1.0,
    )
    .await;
    assert!(!listed_nodes(&base).await.contains(&ab));
    assert!(!served_nodes(&base).await.contains(&format!("http://{ab}")));
    b.shutdown().await;
    a.shutdown().await;
}

async fn raw_request(addr: &str, text: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(text.as_bytes()).await.unwrap();
    s
}

async fn read_answer(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// One address cannot take every connection slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_max_connections_per_ip() {
    let n = lone("[limits]\nmax_connections_per_ip = 3\n").await;
    let addr = n.addr().to_string();
    let base = format!("http://{addr}");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    // The accept loop takes connections in order: the fourth is refused.
    let mut fourth = TcpStream::connect(&addr).await.unwrap();
    let answer = read_answer(&mut fourth).await;
    assert!(answer.contains("limits.max_connections_per_ip"), "{answer}");
    drop(held.pop());
    wait_until(Duration::from_secs(3), "a slot is given back", async || {
        reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    drop(held);
    wait_until(
        Duration::from_secs(3),
        "every slot is given back",
        async || {
            testkit::http::try_get_json(&base, "/discovery/nodes")
                .await
                .is_some()
        },
    )
    .await;
    // The fourth, and any attempt made before a slot came back.
    assert!(get_metric(&base, "discovery_connections_refused_per_ip_total").await >= 1.0);
    n.shutdown().await;
}

/// A client that never reads a large answer is cut off by the write
/// deadline instead of pinning the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stalls_is_cut_off_by_the_write_deadline() {
    let text = format!(
        "[env]\nzone = \"sh001\"\nhost = \"stall\"\nDeployEnv = \"dev\"\n\
         [httpServer]\naddr = \"127.0.0.1:0\"\nwriteTimeout = \"300ms\"\n{FAST}"
    );
    let cfg = Config::parse(&text).expect("valid config").0;
    let n = server::start(cfg, None).await.expect("starts");
    n.wait_ready().await;
    let addr = n.addr().to_string();
    let base = format!("http://{addr}");
    let meta = format!("%7B%22pad%22%3A%22{}%22%7D", "x".repeat(3000));
    let http = reqwest::Client::new();
    for i in 0..3000 {
        let form = format!(
            "zone=sh001&env=dev&appid=big&hostname=h{i}&status=1&addrs=grpc://h:{i}&metadata={meta}"
        );
        let v = testkit::http::send_json(
            http.post(format!("{base}/discovery/register"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form),
        )
        .await;
        assert_eq!(v["code"], 0);
    }
    // About 9 MB of answer to a socket with a small receive buffer: more
    // than the socket buffers on both sides take.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stalled = sock.connect(addr.parse().unwrap()).await.unwrap();
    stalled
        .write_all(b"GET /discovery/fetch/all HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the stalled connection is closed",
        async || get_metric(&base, "discovery_connections_write_timed_out_total").await == 1.0,
    )
    .await;
    drop(stalled);
    n.shutdown().await;
}

/// A lingering close (a body over the limit) gives its slot back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_close_releases_its_slot_at_once() {
    let n = lone("[limits]\nmax_connections = 1\nmax_body_bytes = 1024\n").await;
    let addr = n.addr().to_string();
    let mut big = raw_request(
        &addr,
        "POST /discovery/register HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 1000000\r\n\r\n",
    )
    .await;
    big.write_all(&[b'a'; 4096]).await.unwrap();
    let answer = read_answer(&mut big).await;
    assert!(answer.contains("max_body_bytes"), "{answer}");
    // `big` stays open, so the node lingers on it (up to 5 s); the one
    // slot is free well before that, once the node has closed its side.
    let started = std::time::Instant::now();
    wait_until(
        Duration::from_secs(3),
        "the slot is free while lingering",
        async || {
            let mut next = raw_request(&addr, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
            read_answer(&mut next).await.starts_with("HTTP/1.1 200")
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(big);
    n.shutdown().await;
}

/// `set`, and a cancel from an address that is not the instance's own,
/// are counted by route (and logged with the caller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_other_processes_instances_are_counted() {
    let n = lone("").await;
    let base = format!("http://{}", n.addr());
    let reg = |h: &str, ip: &str| {
        format!("zone=sh001&env=dev&appid=a&hostname={h}&status=1&addrs=grpc://{ip}:9000")
    };
    assert_eq!(
        post(&base, "/discovery/register", &reg("mine", "127.0.0.1")).await["code"],
        0
    );
    assert_eq!(
        post(&base, "/discovery/register", &reg("theirs", "10.9.9.9")).await["code"],
        0
    );
    let key = |h: &str| format!("zone=sh001&env=dev&appid=a&hostname={h}");
    assert_eq!(
        post(
            &base,
            "/discovery/set",
            &format!("{}&status=2", key("theirs"))
        )
        .await["code"],
        0
    );
    assert_eq!(
        post(&base, "/discovery/cancel", &key("mine")).await["code"],
        0
    );
    assert_eq!(
        post(&base, "/discovery/cancel", &key("theirs")).await["code"],
        0
    );
    for route in ["set", "cancel"] {
        let m = format!("discovery_admin_writes_total{{route=\"/discovery/{route}\"}}");
        assert_eq!(get_metric(&base, &m).await, 1.0, "{m}");
    }
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_of_unknown_keys_cost_nothing_and_remembered_cancels_are_capped() {
    let n = lone("[limits]\nmax_tombstones = 500\n").await;
    let base = format!("http://{}", n.addr());
    let http = reqwest::Client::new();
    let target = base.clone();
    let send = move |path: &'static str, form: String| {
        let http = http.clone();
        let target = target.clone();
        async move {
            let v: Value = testkit::http::send_json(
                http.post(format!("{target}{path}"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form),
            )
            .await;
            v["code"].as_i64().unwrap()
        }
    };
    // Random keys that never existed: nothing to remember.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                let f = format!("zone=z&env=dev&appid=rand{t}x{i}&hostname=h{i}");
                assert_eq!(send("/discovery/cancel", f).await, -404);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(get_metric(&base, "discovery_tombstones").await, 0.0);
    // Instances that existed and were cancelled: remembered, up to the cap,
    // and so are the emptied apps.
    for i in 0..1500 {
        let k = format!("zone=z&env=dev&appid=gone{i}&hostname=h");
        assert_eq!(
            send(
                "/discovery/register",
                format!("{k}&status=1&addrs=grpc://h:1")
            )
            .await,
            0
        );
        assert_eq!(send("/discovery/cancel", k).await, 0);
    }
    assert_eq!(get_metric(&base, "discovery_tombstones").await, 500.0);
    assert_eq!(
        get_metric(&base, "discovery_tombstones_evicted_total").await,
        1000.0
    );
    assert!(get_metric(&base, "discovery_emptied_apps").await <= 500.0);
    // A peer's cancel of an unknown key is remembered (the instance may
    // still be on its way), within the same cap.
    for i in 0..600 {
        let f = format!("zone=z&env=dev&appid=peer{i}&hostname=h&replication=true");
        send("/discovery/cancel", f).await;
    }
    assert_eq!(get_metric(&base, "discovery_tombstones").await, 500.0);
    n.shutdown().await;
}
