//! Hostile and careless clients against one `discovery` child process.
//!
//! Every attack is one test function of the same shape:
//!
//! ```text
//! let node = Hostile::start(EXTRA_TOML).await;   // node + a well-behaved witness
//! my_attack(&node).await;                        // floods, slow sockets, junk
//! node.finish().await;                           // nothing the witness did is lost,
//!                                                // the node's RSS stayed bounded
//! ```
//!
//! The witness registers its instances, keeps renewing them, changes them
//! one at a time (`set`, then re-`register`) and watches them through
//! `polls`: each change must reach its watch before the next is made, so
//! a change the node drops or a poll it never answers fails the test.
//!
//! Attacks: random-key floods of every write route and of polls, forged
//! peer records, cancel floods against the remembered-cancel cap, slow
//! connections and bodies, oversized and malformed bodies, the connection
//! cap.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;
use testkit::{
    Layout, ProcessTopology,
    http::{get_text, metric},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    task::JoinSet,
    time::Instant,
};

/// The read deadline of the node under attack. The text lands in
/// `[httpServer]`: testkit appends extra TOML right after that table.
const READ_TIMEOUT: &str = "readTimeout = \"3s\"\n";

/// Registry limits small enough that floods reach them within a test.
const LIMITS: &str = "[limits]\nmax_instances = 3000\nmax_pollers = 2000\n";

/// RSS the node may gain during one attack. Every bound above is reached,
/// so a leak past them shows as growth far beyond this.
const MAX_RSS_GROWTH_KB: u64 = 48 * 1024;

const APPID: &str = "witness.app";
const WITNESSES: usize = 8;

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// `VmRSS` of a process, in KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Latencies in ms: (p50, p99, max).
fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), v[v.len() - 1])
}

/// The node under attack and its well-behaved client.
struct Hostile {
    topo: ProcessTopology,
    base: String,
    addr: SocketAddr,
    pid: u32,
    rss_start_kb: u64,
    stop: watch::Sender<bool>,
    stop_changes: watch::Sender<bool>,
    changes: tokio::task::JoinHandle<()>,
    tasks: JoinSet<()>,
    stats: Arc<WitnessStats>,
    /// What the witness has been told: hostname → revision.
    model: Arc<parking_lot::Mutex<BTreeMap<String, u64>>>,
    /// What its watch last saw.
    seen: watch::Receiver<BTreeMap<String, u64>>,
}

#[derive(Default)]
struct WitnessStats {
    /// Writes or polls answered with anything but success.
    refused: AtomicUsize,
    /// Transport errors (retried).
    errors: AtomicUsize,
    /// Changes the watch did not see within 10 s.
    missed: AtomicUsize,
    changes: AtomicUsize,
    /// Change → seen by the watch, microseconds.
    lags: parking_lot::Mutex<Vec<f64>>,
    renews: AtomicU64,
}

impl Hostile {
    /// `extra_limits`: more `[limits]` keys (further tables may follow).
    async fn start(extra_limits: &str) -> Self {
        let toml = format!("{READ_TIMEOUT}{}{LIMITS}{extra_limits}", testkit::FAST);
        let topo = ProcessTopology::start(&Layout::zones(&[("sh001", 1)]).toml(&toml))
            .await
            .expect("node starts");
        topo.wait_ready().await;
        let pid = topo.nodes[0].as_ref().and_then(|p| p.id()).expect("pid");
        let base = topo.url(0);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let model = Arc::new(parking_lot::Mutex::new(BTreeMap::new()));
        for i in 0..WITNESSES {
            let host = format!("w{i}");
            let r = post(
                &http,
                &base,
                "/discovery/register",
                &register_form(&host, 0),
            )
            .await;
            assert_eq!(r["code"], 0, "{r}");
            model.lock().insert(host, 0);
        }
        let (seen_tx, seen) = watch::channel(BTreeMap::new());
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(WitnessStats::default());
        let mut tasks = JoinSet::new();
        tasks.spawn(watcher(
            http.clone(),
            base.clone(),
            seen_tx,
            stop_rx.clone(),
            Arc::clone(&stats),
        ));
        tasks.spawn(renewer(
            http.clone(),
            base.clone(),
            stop_rx.clone(),
            Arc::clone(&stats),
        ));
        let (stop_changes, changes_rx) = watch::channel(false);
        let changes = tokio::spawn(changer(
            http,
            base.clone(),
            Arc::clone(&model),
            seen.clone(),
            changes_rx,
            Arc::clone(&stats),
        ));
        // Baseline once the witness is running and its first watch answered.
        let mut s = seen.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            s.wait_for(|m| m.len() == WITNESSES),
        )
        .await
        .expect("the witness's first watch")
        .unwrap();
        let rss_start_kb = rss_kb(pid);
        Hostile {
            addr: topo.addr(0),
            topo,
            base,
            pid,
            rss_start_kb,
            stop,
            stop_changes,
            changes,
            tasks,
            stats,
            model,
            seen,
        }
    }

    /// Stops the witness and checks that nothing it did was lost and that
    /// the node's memory stayed bounded.
    async fn finish(self, name: &str) {
        self.finish_within(name, MAX_RSS_GROWTH_KB).await;
    }

    /// [`Hostile::finish`] with an attack-specific RSS bound.
    async fn finish_within(mut self, name: &str, max_growth_kb: u64) {
        let rss_end_kb = rss_kb(self.pid);
        // The last change first, then its watch, then the rest.
        let _ = self.stop_changes.send(true);
        (&mut self.changes).await.unwrap();
        let model = self.model.lock().clone();
        let mut seen = self.seen.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|m| *m == model)).await;
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let st = &self.stats;
        let (p50, p99, max) = percentiles(std::mem::take(&mut *st.lags.lock()));
        println!(
            "{name}: RSS {} → {} KiB (+{} KiB); witness: {} changes, watch lag p50 {p50:.1} ms \
             p99 {p99:.1} ms max {max:.1} ms, {} renews, {} transport errors",
            self.rss_start_kb,
            rss_end_kb,
            rss_end_kb.saturating_sub(self.rss_start_kb),
            st.changes.load(Ordering::Relaxed),
            st.renews.load(Ordering::Relaxed),
            st.errors.load(Ordering::Relaxed),
        );
        assert_eq!(
            st.refused.load(Ordering::Relaxed),
            0,
            "witness requests refused"
        );
        assert_eq!(
            st.missed.load(Ordering::Relaxed),
            0,
            "changes the watch missed"
        );
        assert!(
            st.changes.load(Ordering::Relaxed) > 0,
            "the witness made no change"
        );
        assert_eq!(*self.seen.borrow(), model, "the watch's last view");

        // The registry itself holds every witness instance, UP, as last set.
        let http = reqwest::Client::new();
        let r: Value = testkit::http::send_json(http.get(format!(
            "{}/discovery/fetch?env=dev&appid={APPID}&status=3",
            self.base
        )))
        .await;
        assert_eq!(r["code"], 0, "{r}");
        let (stored, statuses) = instances(&r["data"]);
        assert_eq!(stored, model, "stored instances");
        assert!(statuses.iter().all(|s| *s == 1), "{statuses:?}");

        let grown = rss_end_kb.saturating_sub(self.rss_start_kb);
        assert!(
            grown <= max_growth_kb,
            "{name}: RSS grew by {grown} KiB (start {} KiB)",
            self.rss_start_kb
        );
        drop(self.topo);
    }

    /// The node's `/metrics` text.
    async fn metrics(&self) -> String {
        get_text(&self.base, "/metrics").await
    }
}

fn register_form(host: &str, rev: u64) -> String {
    let metadata = format!(r#"{{"rev":"{rev}"}}"#);
    let addr = format!("grpc://10.0.0.1:{}", 9000 + rev % 1000);
    form(&[
        ("zone", "sh001"),
        ("env", "dev"),
        ("appid", APPID),
        ("hostname", host),
        ("status", "1"),
        ("addrs", &addr),
        ("metadata", &metadata),
    ])
}

/// hostname → `rev` metadata, and the statuses, of a fetch/poll answer's
/// `data` for the witness app.
fn instances(data: &Value) -> (BTreeMap<String, u64>, Vec<i64>) {
    let mut out = BTreeMap::new();
    let mut statuses = Vec::new();
    if let Some(zones) = data["instances"].as_object() {
        for list in zones.values() {
            for i in list.as_array().into_iter().flatten() {
                let rev = i["metadata"]["rev"]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(u64::MAX);
                out.insert(i["hostname"].as_str().unwrap_or("").to_string(), rev);
                statuses.push(i["status"].as_i64().unwrap_or(-1));
            }
        }
    }
    (out, statuses)
}

/// POSTs a form, retrying transport errors for up to 10 s; the decoded
/// answer.
async fn post(http: &reqwest::Client, base: &str, path: &str, body: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await;
        match r {
            Ok(r) => return r.json().await.unwrap_or(Value::Null),
            Err(e) => {
                assert!(Instant::now() < deadline, "{path} kept failing: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn watcher(
    http: reqwest::Client,
    base: String,
    seen: watch::Sender<BTreeMap<String, u64>>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<WitnessStats>,
) {
    let mut latest = 0i64;
    loop {
        let url = format!(
            "{base}/discovery/polls?env=dev&appid={APPID}&hostname=watcher&latest_timestamp={latest}"
        );
        let r = tokio::select! {
            r = http.get(&url).send() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let v: Value = match r {
            Ok(r) => match r.json().await {
                Ok(v) => v,
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                // Fixed: a pause before the watcher retries.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        match v["code"].as_i64() {
            Some(0) => {
                let data = &v["data"][APPID];
                latest = data["latest_timestamp"].as_i64().unwrap_or(latest);
                seen.send_replace(instances(data).0);
            }
            Some(-304) => {}
            _ => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                eprintln!("watch answered {v}");
                // Fixed: a pause before the watcher retries.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn renewer(
    http: reqwest::Client,
    base: String,
    mut stop: watch::Receiver<bool>,
    stats: Arc<WitnessStats>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for i in 0..WITNESSES {
            let host = format!("w{i}");
            let body = form(&[
                ("zone", "sh001"),
                ("env", "dev"),
                ("appid", APPID),
                ("hostname", &host),
            ]);
            let r = post(&http, &base, "/discovery/renew", &body).await;
            if r["code"] == 0 {
                stats.renews.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                eprintln!("renew of {host} answered {r}");
            }
        }
    }
}

/// One change at a time, alternately `set` and re-`register`, each waited
/// for in the watch.
async fn changer(
    http: reqwest::Client,
    base: String,
    model: Arc<parking_lot::Mutex<BTreeMap<String, u64>>>,
    mut seen: watch::Receiver<BTreeMap<String, u64>>,
    stop: watch::Receiver<bool>,
    stats: Arc<WitnessStats>,
) {
    for rev in 1u64.. {
        if *stop.borrow() {
            return;
        }
        let host = format!("w{}", rev as usize % WITNESSES);
        let r = if rev % 2 == 1 {
            let metadata = format!(r#"{{"rev":"{rev}"}}"#);
            let body = form(&[
                ("zone", "sh001"),
                ("env", "dev"),
                ("appid", APPID),
                ("hostname", &host),
                ("metadata", &metadata),
            ]);
            post(&http, &base, "/discovery/set", &body).await
        } else {
            post(
                &http,
                &base,
                "/discovery/register",
                &register_form(&host, rev),
            )
            .await
        };
        let at = Instant::now();
        if r["code"] != 0 {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            eprintln!("change {rev} of {host} answered {r}");
            continue;
        }
        model.lock().insert(host.clone(), rev);
        stats.changes.fetch_add(1, Ordering::Relaxed);
        let ok = matches!(
            tokio::time::timeout(
                Duration::from_secs(10),
                seen.wait_for(|m| m.get(&host) == Some(&rev)),
            )
            .await,
            Ok(Ok(_))
        );
        if ok {
            stats.lags.lock().push(at.elapsed().as_secs_f64() * 1000.0);
        } else {
            stats.missed.fetch_add(1, Ordering::Relaxed);
            eprintln!("the watch did not see change {rev} of {host}");
        }
        // Fixed: paces the changes.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `n` request tasks, `per` requests each, built by `make`.
async fn flood<F>(base: &str, tasks: usize, per: usize, seed: u64, make: F) -> BTreeMap<i64, usize>
where
    F: Fn(&mut StdRng, &reqwest::Client, &str) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut set = JoinSet::new();
    for t in 0..tasks {
        let (make, http, base) = (Arc::clone(&make), http.clone(), base.to_string());
        set.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed + t as u64);
            let mut codes = BTreeMap::new();
            for _ in 0..per {
                let code = match make(&mut rng, &http, &base).send().await {
                    Ok(r) => match r.json::<Value>().await {
                        Ok(v) => v["code"].as_i64().unwrap_or(i64::MIN),
                        Err(_) => i64::MIN,
                    },
                    Err(_) => i64::MAX,
                };
                *codes.entry(code).or_insert(0usize) += 1;
            }
            codes
        });
    }
    let mut all = BTreeMap::new();
    while let Some(codes) = set.join_next().await {
        for (c, n) in codes.unwrap() {
            *all.entry(c).or_insert(0) += n;
        }
    }
    all
}

fn random_word(rng: &mut StdRng) -> String {
    let n = rng.random_range(1..24);
    (0..n)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789.-_"[rng.random_range(0..39)]))
        .collect()
}

/// Register, renew, cancel, set and peer batches of random keys, and polls of random
/// appids and hostnames: every write route's map fills up to its limit and
/// no further, and the witness is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_key_floods() {
    let node = Hostile::start("").await;
    let writes = flood(&node.base, 8, 1_000, 1, |rng, http, base| {
        let appid = format!("x.{}", random_word(rng));
        let host = random_word(rng);
        let zone = random_word(rng);
        let key = [
            ("zone", zone.as_str()),
            ("env", "dev"),
            ("appid", appid.as_str()),
            ("hostname", host.as_str()),
        ];
        let mut pairs = key.to_vec();
        let path = match rng.random_range(0..5) {
            0 => {
                pairs.extend([("status", "1"), ("addrs", "grpc://10.9.9.9:1")]);
                "register"
            }
            1 => "renew",
            2 => "cancel",
            3 => {
                pairs.push(("status", "2"));
                "set"
            }
            _ => {
                // A batch of peer-marked writes of the same random key.
                pairs.extend([
                    ("replication", "true"),
                    ("status", "1"),
                    ("addrs", "grpc://10.9.9.9:1"),
                ]);
                let f = form(&pairs);
                let ops: Vec<Value> = ["register", "renew", "cancel"]
                    .iter()
                    .take(rng.random_range(1..=3))
                    .map(|op| serde_json::json!({"path": format!("/discovery/{op}"), "form": f}))
                    .collect();
                return http
                    .post(format!("{base}/discovery/replicate"))
                    .header("content-type", "application/json")
                    .body(serde_json::json!({ "ops": ops }).to_string());
            }
        };
        http.post(format!("{base}/discovery/{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&pairs))
    })
    .await;
    println!("random writes answered: {writes:?}");
    // Polls of random apps and of the witness app at a version it never
    // had, under random poller names; each is held 200 ms at most.
    let polls = flood(&node.base, 32, 25, 2, |rng, http, base| {
        let appids: Vec<String> = (0..rng.random_range(1..8))
            .map(|_| format!("x.{}", random_word(rng)))
            .collect();
        let mut q = format!(
            "{base}/discovery/polls?env=dev&hostname={}",
            random_word(rng)
        );
        for a in &appids {
            q.push_str(&format!("&appid={a}&latest_timestamp=0"));
        }
        if rng.random_bool(0.3) {
            q.push_str(&format!("&appid={APPID}&latest_timestamp=9007199254740993"));
        }
        http.get(q).header("x1-bmspy-timeout", "200")
    })
    .await;
    println!("random polls answered: {polls:?}");
    assert!(
        !writes.contains_key(&i64::MIN),
        "a write got a non-envelope answer"
    );
    assert!(
        !polls.contains_key(&i64::MIN),
        "a poll got a non-envelope answer"
    );
    let instances: Value = reqwest::get(format!("{}/discovery/nodes", node.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(instances["code"], 0);
    node.finish("random_key_floods").await;
}

/// Forged `infra.discovery` records, plain and peer-marked, with random
/// addresses: none is served, none becomes a replication target, the held
/// ones stay within `max_peers`, and the witness is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_peers() {
    // Every forged address points at a listener that counts connections:
    // the node must never contact any of them.
    let stub = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stub_addr = stub.local_addr().unwrap().to_string();
    let contacted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&contacted);
    let listener = tokio::spawn(async move {
        while let Ok((_s, _)) = stub.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let node = Hostile::start("max_peers = 16\n").await;
    let codes = flood(&node.base, 8, 200, 3, move |rng, http, base| {
        let host = random_word(rng);
        let scheme = ["http", "HTTP", "Http", "https"][rng.random_range(0..4)];
        let tail = ["", "/", "/latest/meta-data%23", "?x=1"][rng.random_range(0..4)];
        let addr = format!("{scheme}://{stub_addr}{tail}");
        let mut pairs = vec![
            ("zone", "sh001"),
            ("env", "dev"),
            ("appid", "infra.discovery"),
            ("hostname", host.as_str()),
            ("status", "1"),
            ("addrs", addr.as_str()),
        ];
        let path = match rng.random_range(0..4) {
            0 => "register",
            1 => {
                pairs.push(("replication", "true"));
                "register"
            }
            2 => {
                pairs.push(("from_zone", "true"));
                "register"
            }
            _ => "cancel",
        };
        http.post(format!("{base}/discovery/{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&pairs))
    })
    .await;
    println!("forged records answered: {codes:?}");
    assert!(
        codes.contains_key(&-400),
        "plain writes of infra.discovery are refused"
    );
    let own = format!("http://{}", node.addr);
    let served: Value = reqwest::get(format!(
        "{}/discovery/fetch?env=dev&appid=infra.discovery&status=3",
        node.base
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let addrs: Vec<&Value> = served["data"]["instances"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|z| z.as_array().unwrap())
        .flat_map(|i| i["addrs"].as_array().unwrap())
        .collect();
    assert_eq!(
        addrs,
        [&Value::from(own.clone())],
        "only the node itself is served"
    );
    let status: Value = reqwest::get(format!("{}/status", node.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["peers"],
        serde_json::json!([]),
        "no forged replication target"
    );
    let text = node.metrics().await;
    assert!(metric(&text, "discovery_peer_records_refused_total") >= 1.0);
    node.finish("forged_peers").await;
    assert_eq!(
        contacted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the node contacted a forged address"
    );
    listener.abort();
}

/// Cancels of random keys (nothing to remember), then register+cancel
/// pairs and peer cancels past `max_tombstones`: the remembered cancels and
/// the emptied apps stop at the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_floods() {
    let node = Hostile::start("max_tombstones = 1000\n").await;
    let random = flood(&node.base, 8, 1_000, 4, |rng, http, base| {
        let pairs = [
            ("zone", random_word(rng)),
            ("env", "dev".to_string()),
            ("appid", format!("c.{}", random_word(rng))),
            ("hostname", random_word(rng)),
        ];
        http.post(format!("{base}/discovery/cancel"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(
                &pairs
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect::<Vec<_>>(),
            ))
    })
    .await;
    println!("random cancels answered: {random:?}");
    assert_eq!(metric(&node.metrics().await, "discovery_tombstones"), 0.0);
    let peer = flood(&node.base, 8, 250, 5, |rng, http, base| {
        let appid = format!("p.{}", random_word(rng));
        let mut pairs = vec![
            ("zone", "z"),
            ("env", "dev"),
            ("appid", appid.as_str()),
            ("hostname", "h"),
        ];
        if rng.random_bool(0.5) {
            pairs.push(("replication", "true"));
        }
        http.post(format!("{base}/discovery/cancel"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&pairs))
    })
    .await;
    println!("peer and client cancels answered: {peer:?}");
    let http = reqwest::Client::new();
    for i in 0..1_500 {
        let key = form(&[
            ("zone", "z"),
            ("env", "dev"),
            ("appid", &format!("gone.{i}")),
            ("hostname", "h"),
        ]);
        post(
            &http,
            &node.base,
            "/discovery/register",
            &format!("{key}&status=1&addrs=grpc://h:1"),
        )
        .await;
        post(&http, &node.base, "/discovery/cancel", &key).await;
    }
    let text = node.metrics().await;
    assert_eq!(metric(&text, "discovery_tombstones"), 1000.0);
    // 1,500 cancels of existing instances, plus about 1,000 peer cancels,
    // into a set of 1,000.
    assert!(metric(&text, "discovery_tombstones_evicted_total") >= 1400.0);
    assert!(metric(&text, "discovery_emptied_apps") <= 1000.0);
    node.finish("cancel_floods").await;
}

/// Latencies of `n` sequential fetches of the witness app, in ms.
async fn fetch_latencies(http: &reqwest::Client, base: &str, n: usize) -> Vec<f64> {
    let url = format!("{base}/discovery/fetch?env=dev&appid={APPID}&status=1");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let v: Value = testkit::http::send_json(http.get(&url)).await;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(v["code"], 0, "{v}");
    }
    out
}

/// Sends a request head one byte per second; the time until the node
/// closed the connection, or `None` if it answered or never closed.
async fn trickle(mut s: TcpStream, give_up: Duration) -> Option<Duration> {
    let start = Instant::now();
    let head =
        format!("GET /discovery/fetch?env=dev&appid={APPID}&status=1 HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 512];
    let mut sent = 0;
    // Fixed: the longest the trickle goes on before it gives up.
    let end = tokio::time::sleep(give_up);
    tokio::pin!(end);
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(start.elapsed()),
                Ok(_) => {} // an error page before the close is fine
            },
            _ = tick.tick() => {
                if sent == head.len() {
                    return None;
                }
                if s.write_all(&head.as_bytes()[sent..=sent]).await.is_err() {
                    return Some(start.elapsed());
                }
                sent += 1;
            }
            () = &mut end => return None,
        }
    }
}

// More attacks go here, each a test of the same shape as those around it
// (`Hostile::start`, the attack, `finish`).

/// 2,000 connections trickling a request head one byte per second: fetches
/// of others go on, and every slow connection is closed at the read
/// deadline (3 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections() {
    const SLOW: usize = 2_000;
    // Ours plus the node's side would not fit a default limit of 1024.
    rlimit::increase_nofile_limit(4 * SLOW as u64).unwrap();
    let node = Hostile::start("").await;
    let http = reqwest::Client::new();
    let unloaded = percentiles(fetch_latencies(&http, &node.base, 300).await);

    let opened = Instant::now();
    let mut slow = JoinSet::new();
    for _ in 0..SLOW {
        let s = TcpStream::connect(node.addr).await.unwrap();
        slow.spawn(trickle(s, Duration::from_secs(15)));
    }
    let connect_time = opened.elapsed();
    let loaded = percentiles(fetch_latencies(&http, &node.base, 300).await);
    let loaded_at = opened.elapsed();
    let mut closed_after = Vec::with_capacity(SLOW);
    while let Some(r) = slow.join_next().await {
        closed_after.push(r.unwrap().expect("a slow connection was never closed"));
    }
    let latest_close = closed_after.iter().max().copied().unwrap_or_default();
    let (u50, u99, _) = unloaded;
    let (l50, l99, lmax) = loaded;
    println!(
        "slow_connections: {SLOW} trickling connections opened in {connect_time:?}; fetch p50/p99 \
         unloaded {u50:.2}/{u99:.2} ms, loaded {l50:.2}/{l99:.2} ms (max {lmax:.2}, measured within \
         {loaded_at:?}), p99 ratio {:.2}; slow connections closed after {:?}..{latest_close:?}",
        l99 / u99.max(0.001),
        closed_after.iter().min().copied().unwrap_or_default(),
    );
    // Closed by the read deadline, not by the test's give-up (15 s).
    assert!(latest_close < Duration::from_secs(10), "{latest_close:?}");
    let m = node.metrics().await;
    assert!(
        metric(&m, "discovery_connections_timed_out_total") >= SLOW as f64,
        "{m}"
    );
    // Each open connection costs tens of KiB until it is closed.
    node.finish_within("slow_connections", 16 * 1024 + SLOW as u64 * 24)
        .await;
}

/// Reads a whole HTTP/1 answer to a request that closes the connection.
async fn read_answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out))
        .await
        .expect("the answer within 15 s")
        .expect("an answer, not a reset");
    String::from_utf8_lossy(&out).into_owned()
}

/// Bodies over `limits.max_body_bytes` (1 MiB), declared or chunked, to
/// routes that read them and to routes that do not: every one gets its
/// answer, never a connection reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_answered_not_reset() {
    let node = Hostile::start("").await;
    let body = vec![b'a'; 4 << 20];
    let mut answers = BTreeMap::<String, usize>::new();
    for round in 0..12 {
        let (path, chunked) = match round % 4 {
            0 => ("/discovery/register", false),
            1 => ("/discovery/register", true),
            2 => ("/discovery/fetch", false),
            _ => ("/nope", false),
        };
        let method = if path == "/discovery/fetch" {
            "GET"
        } else {
            "POST"
        };
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        let framing = if chunked {
            "transfer-encoding: chunked".to_string()
        } else {
            format!("content-length: {}", body.len())
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n{framing}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let sent = if chunked {
            let mut r = Ok(());
            for c in body.chunks(64 << 10) {
                r = s.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await;
                r = r.and(s.write_all(c).await);
                r = r.and(s.write_all(b"\r\n").await);
                if r.is_err() {
                    break;
                }
            }
            r.and(s.write_all(b"0\r\n\r\n").await)
        } else {
            s.write_all(&body).await
        };
        // The node may stop reading once it has answered; the answer must
        // still be readable.
        let _ = sent;
        let answer = read_answer(&mut s).await;
        let status = answer.lines().next().unwrap_or("").to_string();
        match path {
            "/discovery/register" => {
                assert!(status.starts_with("HTTP/1.1 200"), "{answer}");
                assert!(
                    answer.contains(r#""code":-400"#) && answer.contains("max_body_bytes"),
                    "{answer}"
                );
            }
            "/discovery/fetch" => assert!(answer.contains(r#""code":"#), "{answer}"),
            _ => assert!(status.starts_with("HTTP/1.1 404"), "{answer}"),
        }
        *answers
            .entry(format!("{method} {path} chunked={chunked}: {status}"))
            .or_default() += 1;
    }
    println!("oversized bodies: {answers:?}");
    node.finish("oversized_bodies").await;
}

/// Request bodies sent too slowly: each is answered `-400` at the read
/// deadline (3 s after its head), and its connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies() {
    let node = Hostile::start("").await;
    let mut set = JoinSet::new();
    for _ in 0..50 {
        let addr = node.addr;
        set.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let t = Instant::now();
            s.write_all(
                b"POST /discovery/register HTTP/1.1\r\nhost: x\r\n\
                  content-type: application/x-www-form-urlencoded\r\n\
                  content-length: 1000\r\n\r\nzone=sh001",
            )
            .await
            .unwrap();
            let answer = read_answer(&mut s).await;
            (t.elapsed(), answer)
        });
    }
    let mut after = Vec::new();
    while let Some(r) = set.join_next().await {
        let (took, answer) = r.unwrap();
        assert!(
            answer.contains(r#""code":-400"#) && answer.contains("not received within"),
            "{answer}"
        );
        assert!(took >= Duration::from_millis(2900), "{took:?}");
        after.push(took);
    }
    let slowest = after.iter().max().unwrap();
    println!(
        "slow bodies answered after {:?}..{slowest:?}",
        after.iter().min().unwrap()
    );
    assert!(*slowest < Duration::from_secs(10), "{slowest:?}");
    node.finish("slow_bodies").await;
}

/// Malformed writes of every kind: each is refused with `-400` and a
/// message, and none disturbs the witness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies() {
    let node = Hostile::start("").await;
    let key = "zone=sh001&env=dev&appid=x.junk&hostname=h";
    let huge_meta = format!(r#"{{"k":"{}"}}"#, "v".repeat(64 << 10));
    let url_form = |path, body| ("application/x-www-form-urlencoded", path, body);
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        // (content type, path, body)
        url_form(
            "register",
            format!(
                "{key}&status=1&addrs=grpc://a:1&metadata={}",
                form_urlencoded::byte_serialize(huge_meta.as_bytes()).collect::<String>()
            )
            .into_bytes(),
        ),
        url_form(
            "register",
            format!("{key}&status=abc&addrs=grpc://a:1").into_bytes(),
        ),
        url_form(
            "register",
            format!("{key}&status=99999999999&addrs=grpc://a:1").into_bytes(),
        ),
        url_form(
            "register",
            format!("{key}&status=1&addrs=grpc://a:1&dirty_timestamp=1e9").into_bytes(),
        ),
        url_form(
            "register",
            format!("{key}&status=1&addrs=grpc://a:1&metadata=%7B%22a%22").into_bytes(),
        ),
        url_form(
            "register",
            format!("{key}&status=1&addrs=grpc%3A%2F%2Fa%3A1%0A").into_bytes(),
        ),
        url_form(
            "set",
            format!("{key}&set_timestamp=--1&status=1").into_bytes(),
        ),
        url_form("set", format!("{key}&status=7").into_bytes()),
        url_form("renew", b"zone=\xff\xfe&env=\xc3".to_vec()),
        url_form("cancel", b"\xff\xff\xff=\xfe".to_vec()),
        (
            "multipart/form-data; boundary=XYZ",
            "register",
            b"--XYZ\r\ncontent-disposition: form-data; name=\"zone\"\r\n\r\nsh0".to_vec(),
        ),
        (
            "multipart/form-data; boundary=XYZ",
            "register",
            (0..2048u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        ("multipart/form-data", "register", b"--\r\n\r\n".to_vec()),
        (
            "application/json",
            "register",
            br#"{"zone":"sh001"}"#.to_vec(),
        ),
        ("application/json", "replicate", b"not a batch".to_vec()),
        ("application/json", "replicate", br#"{"ops":"x"}"#.to_vec()),
    ];
    let http = reqwest::Client::new();
    let mut codes = BTreeMap::<i64, usize>::new();
    for round in 0..20 {
        let mut set = JoinSet::new();
        for (ctype, path, body) in cases.iter().cloned() {
            let (http, base) = (http.clone(), node.base.clone());
            set.spawn(async move {
                let r = http
                    .post(format!("{base}/discovery/{path}"))
                    .header("content-type", ctype)
                    .body(body.clone())
                    .send()
                    .await
                    .expect("an answer");
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.expect("an envelope");
                (ctype, path, body, v)
            });
        }
        while let Some(r) = set.join_next().await {
            let (ctype, path, body, v) = r.unwrap();
            let code = v["code"].as_i64().unwrap_or(i64::MIN);
            *codes.entry(code).or_default() += 1;
            let utf8_junk = std::str::from_utf8(&body).is_err() && !ctype.starts_with("multipart");
            if utf8_junk {
                // Decoded lossily, as Go does: whatever it binds to, the
                // answer is an envelope (a key without zone/env is -400).
                assert!(code == -400 || code == -404, "{path}: {v}");
            } else {
                assert_eq!(
                    code,
                    -400,
                    "{ctype} {path} {}: {v}",
                    String::from_utf8_lossy(&body[..body.len().min(80)])
                );
                assert!(
                    v["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty() && m != "-400")
                        || ctype == "application/x-www-form-urlencoded",
                    "{v}"
                );
            }
        }
        if round == 0 {
            println!("malformed bodies answered: {codes:?}");
        }
    }
    let r: Value = reqwest::get(format!(
        "{}/discovery/fetch?env=dev&appid=x.junk&status=3",
        node.base
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(r["code"], -404, "nothing malformed was stored: {r}");
    node.finish("malformed_bodies").await;
}

/// `limits.max_connections`: one more connection is answered 503 and
/// closed at once; slots free up when the idle ones hit the read deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap() {
    use discovery_server::config::Config;
    let (config, _) = Config::parse(
        "[httpServer]\naddr = \"127.0.0.1:0\"\ntimeout = \"40s\"\nreadTimeout = \"2s\"\n[limits]\nmax_connections = 32\n",
    )
    .unwrap();
    let node = discovery_server::server::start(config, Some("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    node.wait_ready().await;
    let addr = node.addr();
    let mut idle = Vec::new();
    for _ in 0..32 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let answer = read_answer(&mut extra).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("limits.max_connections"), "{answer}");
    // The idle ones are closed at the read deadline; then clients get in.
    for s in &mut idle {
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("closed at the read deadline");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    let text = get_text(&format!("http://{addr}"), "/metrics").await;
    assert!(
        metric(&text, "discovery_connections_refused_total") >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "discovery_connections_timed_out_total") >= 32.0,
        "{text}"
    );
    node.shutdown().await;
}
