//! Shared helpers: real discovery servers on loopback, SDK configs, and a
//! scripted fake registry that records what the SDK sends.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use discovery_client::{Config, Discovery};
use discovery_server::{
    config::Config as ServerConfig,
    registry::InstanceKey,
    server::{self, ServerHandle},
};
use naming::{Instance, Resolution};
use parking_lot::Mutex;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

pub const ZONE: &str = "zone01";
pub const ENV: &str = "dev";

/// Server TOML with our identity and the given `[registry]` lines.
pub fn server_toml(registry: &str) -> String {
    format!(
        "[env]\nregion = \"region01\"\nzone = \"{ZONE}\"\nDeployEnv = \"{ENV}\"\nhost = \"node-{}\"\n\
         [cluster]\ndrain_timeout = \"1s\"\n[registry]\n{registry}\n",
        rand::random::<u32>()
    )
}

/// A real server on 127.0.0.1:0.
pub async fn server(registry: &str) -> ServerHandle {
    server_at(registry, "127.0.0.1:0".parse().unwrap()).await
}

/// A real server on `addr` (used to restart one on the same port).
pub async fn server_at(registry: &str, addr: SocketAddr) -> ServerHandle {
    let cfg = ServerConfig::parse(&server_toml(registry)).unwrap().0;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match server::start(cfg.clone(), Some(addr)).await {
            Ok(s) => return s,
            // The old listener of a restarted node may take a moment to go.
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying start on {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// SDK config for `nodes`, isolated from the process environment, with a
/// unique hostname. Self-discovery is off: test servers are unrelated
/// single nodes, each listing only itself.
pub fn config(nodes: &[String]) -> Config {
    let mut c = Config::builder()
        .nodes(nodes)
        .zone(ZONE)
        .env(ENV)
        .region("region01")
        .hostname(format!("client-{}", rand::random::<u32>()))
        .build_with(|_| None);
    c.self_discovery = false;
    c
}

pub fn addr_of(s: &ServerHandle) -> String {
    s.addr().to_string()
}

pub fn client(nodes: &[String]) -> Discovery {
    Discovery::new(config(nodes)).unwrap()
}

pub fn instance(appid: &str, port: u16) -> Instance {
    Instance {
        appid: appid.into(),
        addrs: vec![format!("grpc://127.0.0.1:{port}")],
        version: "v1".into(),
        ..Default::default()
    }
}

/// Registers an instance straight into a server's registry (as a peer's
/// replication would), bypassing HTTP.
pub fn put(s: &ServerHandle, appid: &str, hostname: &str, port: u16) {
    let ins = Instance {
        region: "region01".into(),
        zone: ZONE.into(),
        env: ENV.into(),
        appid: appid.into(),
        hostname: hostname.into(),
        addrs: vec![format!("grpc://127.0.0.1:{port}")],
        ..Default::default()
    };
    s.registry().register(ins, Default::default(), now_ns());
}

/// Lists `addr` as a discovery node of `zone` in a server's registry.
pub fn put_node(s: &ServerHandle, zone: &str, hostname: &str, addr: &str) {
    let ins = Instance {
        region: "region01".into(),
        zone: zone.into(),
        env: ENV.into(),
        appid: naming::DISCOVERY_APPID.into(),
        hostname: hostname.into(),
        addrs: vec![format!("http://{addr}")],
        ..Default::default()
    };
    s.registry().register(ins, Default::default(), now_ns());
}

/// Removes the server's own `infra.discovery` record.
pub fn remove_self(s: &ServerHandle) {
    let own = format!("http://{}", s.addr());
    for ins in stored(s, naming::DISCOVERY_APPID) {
        if ins.addrs.contains(&own) {
            let key = InstanceKey::of(&ins);
            s.registry().cancel(&key, now_ns());
        }
    }
}

pub fn remove(s: &ServerHandle, appid: &str, hostname: &str) {
    let key = InstanceKey::of(&Instance {
        zone: ZONE.into(),
        env: ENV.into(),
        appid: appid.into(),
        hostname: hostname.into(),
        ..Default::default()
    });
    s.registry().cancel(&key, now_ns());
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// The instances of `appid` the server holds (any status).
pub fn stored(s: &ServerHandle, appid: &str) -> Vec<Instance> {
    s.registry().all().remove(appid).unwrap_or_default()
}

/// Polls `cond` every 5 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    testkit::wait_until(within, what, async || cond()).await
}

/// Waits until the watch state satisfies `pred`.
pub async fn wait_state(
    rx: &mut tokio::sync::watch::Receiver<Resolution>,
    within: Duration,
    what: &str,
    pred: impl FnMut(&Resolution) -> bool,
) -> Resolution {
    let got = match tokio::time::timeout(within, rx.wait_for(pred)).await {
        Ok(Ok(r)) => Some(r.clone()),
        Ok(Err(_)) => panic!("watch closed while waiting for {what}"),
        Err(_) => None,
    };
    got.unwrap_or_else(|| panic!("not within {within:?}: {what}; state {:?}", *rx.borrow()))
}

pub fn hostnames(r: &Resolution) -> Vec<String> {
    r.found()
        .map(|i| i.iter().map(|x| x.hostname.clone()).collect())
        .unwrap_or_default()
}

/// Times a future.
pub async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let v = f.await;
    (v, start.elapsed())
}

// ---------------------------------------------------------------------------
// A scripted fake registry.

/// One request as received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Query (GET) or form body (POST) pairs, in order.
    pub params: Vec<(String, String)>,
    pub headers: BTreeMap<String, String>,
    pub at: Instant,
}

impl Seen {
    pub fn all(&self, key: &str) -> Vec<String> {
        self.params
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn one(&self, key: &str) -> String {
        self.all(key).into_iter().next().unwrap_or_default()
    }
}

/// What the fake answers: a delay, then a JSON body.
pub type Script = Arc<dyn Fn(&Seen) -> (Duration, String) + Send + Sync>;

/// An HTTP/1.1 server that records requests and answers from a script.
pub struct Fake {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    pub max_in_flight_polls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    pub async fn start(script: Script) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let (s, f, m) = (seen.clone(), in_flight.clone(), max.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(serve_conn(
                    sock,
                    script.clone(),
                    s.clone(),
                    f.clone(),
                    m.clone(),
                ));
            }
        });
        Fake {
            addr,
            seen,
            in_flight,
            max_in_flight_polls: max,
            task,
        }
    }

    pub fn node(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

async fn serve_conn(
    mut sock: TcpStream,
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_string();
        let target = first.next().unwrap_or_default().to_string();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + 4 + len {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end + 4..head_end + 4 + len].to_vec();
        buf.drain(..head_end + 4 + len);
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let mut params = form(query.as_bytes());
        params.extend(form(&body));
        let req = Seen {
            method,
            path: path.to_string(),
            params,
            headers,
            at: Instant::now(),
        };
        seen.lock().push(req.clone());
        let is_poll = req.path == "/discovery/polls";
        if is_poll {
            let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(n, Ordering::SeqCst);
        }
        // Dropping the guard counts the poll out even when the client
        // aborts it mid-hold (this future is then dropped with the socket
        // read below… or ends on the failed write).
        struct Out(Arc<AtomicUsize>, bool);
        impl Drop for Out {
            fn drop(&mut self) {
                if self.1 {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        let guard = Out(in_flight.clone(), is_poll);
        let (delay, answer) = script(&req);
        // Detect a client that gives up during the delay.
        let mut probe = [0u8; 1];
        tokio::select! {
            // Fixed: the scripted delay before the answer.
            () = tokio::time::sleep(delay) => {}
            r = sock.peek(&mut probe) => if matches!(r, Ok(0) | Err(_)) { return },
        }
        drop(guard);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn form(bytes: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(bytes)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

/// A standard `{code,message,ttl}` answer.
pub fn code(c: i64) -> String {
    format!(r#"{{"code":{c},"message":"{c}","ttl":1}}"#)
}

/// A `polls` answer with `apps` (appid, latest_timestamp, hostnames).
pub fn polls_answer(apps: &[(&str, i64, &[&str])]) -> String {
    let mut data = serde_json::Map::new();
    for (appid, ts, hosts) in apps {
        let list: Vec<serde_json::Value> = hosts
            .iter()
            .map(|h| {
                serde_json::json!({"zone": ZONE, "env": ENV, "appid": appid, "hostname": h,
                    "addrs": ["grpc://127.0.0.1:1"], "status": 1, "latest_timestamp": ts})
            })
            .collect();
        data.insert(
            appid.to_string(),
            serde_json::json!({"instances": {ZONE: list}, "latest_timestamp": ts}),
        );
    }
    serde_json::json!({"code": 0, "data": data, "error": {"-404": null}, "message": "0"})
        .to_string()
}

/// A port nothing listens on.
pub fn dead_node() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}
