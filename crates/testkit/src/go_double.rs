//! A stand-in for the Go original's server (bilibili/discovery) where its
//! long-poll rules matter to an SDK, so SDK behaviour against a Go cluster
//! is tested without a Go toolchain.
//!
//! What it reproduces, as the Go registry does it:
//! * **one waiter per (env, appid, consumer hostname)**: a second held poll
//!   from the same hostname joins the first one's waiter (a count, and the
//!   first poller's channel of capacity 5) instead of getting its own; a
//!   change sends `count` messages into that shared channel, and whichever
//!   held poll reads first takes one, even if it watches other apps;
//! * a poll joining several waiters uses the channel of its first appid's
//!   waiter for all of them;
//! * a change removes every waiter of the app; a poll that ends (answer,
//!   hold end, client gone) then decrements, or deletes, the waiter of its
//!   hostname under each of its appids, whoever created it;
//! * **the hold**: 30 s by default ([`GoDoubleConfig::hold`]), shortened by a
//!   smaller `x1-bmspy-timeout`; its end answers `-304`;
//! * the envelope quirks: `{"code","message","ttl"}` with `message` the code
//!   as text and no `data` on errors; a `polls` answer lists only the apps
//!   that changed, plus `"error":{"-404":[…]}` (or `null`) naming unknown
//!   apps; an unknown app alone is not an error but a hold; `appid` and
//!   `latest_timestamp` counts must match (`-400`); `fetchs` omits unknown
//!   apps; a register with status 0 or above 2 gets an empty body;
//! * **`latest_timestamp`**: per app, raised by register and cancel (never
//!   by renew); a poll at or above it holds; the cancel of an app's last
//!   instance deletes the app, so its waiters get nothing until their hold
//!   ends, and later polls of it hold again.
//!
//! Not reproduced: leases and eviction, replication, `set`, the scheduler,
//! tokens. The node registers itself as `infra.discovery` with its
//! `http://` address, as a Go node does.
//!
//! ```no_run
//! # async fn run() {
//! use std::time::Duration;
//! use testkit::go_double::{GoDouble, GoDoubleConfig};
//!
//! let go = GoDouble::start(GoDoubleConfig { hold: Duration::from_secs(2), ..Default::default() }).await;
//! println!("a Go-like node at {}", go.addr());
//! go.shutdown().await;
//! # }
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use naming::code::Code;
use serde_json::{Map, Value, json};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

/// The double's identity and hold.
#[derive(Debug, Clone)]
pub struct GoDoubleConfig {
    /// How long a poll that finds nothing new is held (Go: 30 s).
    pub hold: Duration,
    /// Region of the node's own `infra.discovery` record.
    pub region: String,
    /// Zone of the node's own record.
    pub zone: String,
    /// Env of the node's own record.
    pub env: String,
}

impl Default for GoDoubleConfig {
    fn default() -> Self {
        GoDoubleConfig {
            hold: Duration::from_secs(30),
            region: "region01".into(),
            zone: "zone01".into(),
            env: "dev".into(),
        }
    }
}

/// Go's `InstanceStatusUP`.
const STATUS_UP: u64 = 1;
/// Capacity of a waiter channel in the Go registry.
const WAITER_CAPACITY: usize = 5;
/// How long a change waits to hand a message to a full waiter channel.
const BROADCAST_SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// The channel of a waiter; held polls sharing it receive in turn.
#[derive(Debug, Clone)]
struct Chan {
    tx: mpsc::Sender<Value>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Value>>>,
}

impl Chan {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel(WAITER_CAPACITY);
        Chan {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }
}

/// Held polls of one hostname on one app.
#[derive(Debug)]
struct Waiter {
    ch: Chan,
    /// Zone of the poll that created it; changes are fetched for it.
    zone: String,
    count: usize,
}

/// One app in one env: zone → hostname → instance JSON.
#[derive(Debug, Default)]
struct App {
    zones: BTreeMap<String, BTreeMap<String, Value>>,
    latest: i64,
}

#[derive(Debug, Default)]
struct Registry {
    /// `env.appid` → app.
    apps: HashMap<String, App>,
    /// `env.appid` → hostname → waiter.
    waiters: HashMap<String, HashMap<String, Waiter>>,
}

#[derive(Debug)]
struct Shared {
    cfg: GoDoubleConfig,
    registry: Mutex<Registry>,
    /// Polls currently held.
    held: AtomicUsize,
    /// The `hostname` of every poll, in arrival order.
    poll_hostnames: Mutex<Vec<String>>,
}

/// A running double on 127.0.0.1.
#[derive(Debug)]
pub struct GoDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

fn key(env: &str, appid: &str) -> String {
    format!("{env}.{appid}")
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl GoDouble {
    /// Binds 127.0.0.1:0, registers itself as `infra.discovery` and serves.
    pub async fn start(cfg: GoDoubleConfig) -> GoDouble {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            registry: Mutex::new(Registry::default()),
            held: AtomicUsize::new(0),
            poll_hostnames: Mutex::new(Vec::new()),
        });
        let own = instance(&Params(vec![
            ("region".into(), cfg.region.clone()),
            ("zone".into(), cfg.zone.clone()),
            ("env".into(), cfg.env.clone()),
            ("appid".into(), naming::DISCOVERY_APPID.into()),
            ("hostname".into(), format!("go-double-{}", addr.port())),
            ("addrs".into(), format!("http://{addr}")),
            ("status".into(), "1".into()),
        ]));
        shared.put(own);
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        GoDouble {
            addr,
            shared,
            stop: Some(stop),
            task,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Polls held right now.
    pub fn held_polls(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// The waiters of `appid` (in the configured env): hostname → count.
    pub fn waiters(&self, appid: &str) -> BTreeMap<String, usize> {
        let reg = self.shared.registry.lock().expect("registry lock");
        reg.waiters
            .get(&key(&self.shared.cfg.env, appid))
            .map(|hosts| hosts.iter().map(|(h, w)| (h.clone(), w.count)).collect())
            .unwrap_or_default()
    }

    /// The `hostname` of every poll so far, in arrival order.
    pub fn poll_hostnames(&self) -> Vec<String> {
        self.shared
            .poll_hostnames
            .lock()
            .expect("hostnames lock")
            .clone()
    }

    /// Hostnames of the registered instances of `appid` (configured env,
    /// every zone).
    pub fn registered(&self, appid: &str) -> Vec<String> {
        let reg = self.shared.registry.lock().expect("registry lock");
        reg.apps
            .get(&key(&self.shared.cfg.env, appid))
            .map(|a| a.zones.values().flat_map(|z| z.keys().cloned()).collect())
            .unwrap_or_default()
    }

    /// Stops serving; held polls are dropped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for GoDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Form or query parameters, repeated keys kept in order.
#[derive(Debug)]
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(text: &[u8]) -> Self {
        Params(form_urlencoded::parse(text).into_owned().collect())
    }

    fn one(&self, k: &str) -> String {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn int(&self, k: &str) -> i64 {
        self.one(k).parse().unwrap_or(0)
    }

    /// Go's `validate:"required"` on every listed field.
    fn require(&self, keys: &[&str]) -> bool {
        keys.iter().all(|k| !self.one(k).is_empty())
    }
}

fn envelope(code: Code, data: Option<Value>) -> Response {
    let mut body = json!({ "code": code.as_i64(), "message": code.as_str(), "ttl": 1 });
    if let Some(d) = data {
        body["data"] = d;
    }
    json_response(&body)
}

fn json_response(body: &Value) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )],
        body.to_string(),
    )
        .into_response()
}

fn instance(p: &Params) -> Value {
    let now = now_ns();
    let metadata: Value = serde_json::from_str(&p.one("metadata")).unwrap_or_else(|_| json!({}));
    json!({
        "region": p.one("region"),
        "zone": p.one("zone"),
        "env": p.one("env"),
        "appid": p.one("appid"),
        "hostname": p.one("hostname"),
        "addrs": p.all("addrs"),
        "version": p.one("version"),
        "metadata": metadata,
        "status": p.int("status"),
        "reg_timestamp": now,
        "up_timestamp": now,
        "renew_timestamp": now,
        "dirty_timestamp": now,
        "latest_timestamp": now,
    })
}

impl Registry {
    /// Go's `Registry.Fetch`: `Err(code)` for an unknown app or zone
    /// (`-404`) and for nothing newer than `latest` (`-304`).
    fn fetch(
        &self,
        zone: &str,
        env: &str,
        appid: &str,
        latest: i64,
        status: u64,
    ) -> Result<Value, Code> {
        let app = self.apps.get(&key(env, appid)).ok_or(Code::NotFound)?;
        if latest >= app.latest {
            return Err(Code::NotModified);
        }
        let mut instances = Map::new();
        for (z, hosts) in &app.zones {
            if zone.is_empty() || z == zone {
                let list: Vec<Value> = hosts
                    .values()
                    .filter(|i| i["status"].as_u64().unwrap_or(0) & status > 0)
                    .cloned()
                    .collect();
                instances.insert(z.clone(), Value::Array(list));
            }
        }
        if instances.is_empty() {
            return Err(Code::NotFound);
        }
        Ok(json!({ "instances": instances, "latest_timestamp": app.latest }))
    }

    fn bump(app: &mut App) {
        app.latest = now_ns().max(app.latest + 1);
    }
}

impl Shared {
    fn put(&self, ins: Value) {
        let mut reg = self.registry.lock().expect("registry lock");
        let s = |k: &str| ins[k].as_str().unwrap_or_default().to_string();
        let app = reg.apps.entry(key(&s("env"), &s("appid"))).or_default();
        app.zones
            .entry(s("zone"))
            .or_default()
            .insert(s("hostname"), ins);
        Registry::bump(app);
    }

    /// Go's `broadcast`: takes every waiter of the app and sends each one
    /// `count` snapshots (fetched for the waiter's zone, from timestamp 0);
    /// a waiter whose fetch fails (the app is gone) gets nothing.
    async fn broadcast(&self, env: &str, appid: &str) {
        let sends: Vec<(Chan, Value, usize)> = {
            let mut reg = self.registry.lock().expect("registry lock");
            let Some(hosts) = reg.waiters.remove(&key(env, appid)) else {
                return;
            };
            hosts
                .values()
                .filter_map(|w| {
                    let info = reg.fetch(&w.zone, env, appid, 0, STATUS_UP).ok()?;
                    Some((w.ch.clone(), json!({ appid: info }), w.count))
                })
                .collect()
        };
        for (ch, msg, count) in sends {
            for _ in 0..count {
                let _ = ch
                    .tx
                    .send_timeout(msg.clone(), BROADCAST_SEND_TIMEOUT)
                    .await;
            }
        }
    }

    /// Go's `DelConns`: the end of a held poll.
    fn del_waiters(&self, env: &str, appids: &[String], hostname: &str) {
        let mut reg = self.registry.lock().expect("registry lock");
        for appid in appids {
            let Some(hosts) = reg.waiters.get_mut(&key(env, appid)) else {
                continue;
            };
            if let Some(w) = hosts.get_mut(hostname) {
                if w.count > 1 {
                    w.count -= 1;
                } else {
                    hosts.remove(hostname);
                }
            }
        }
    }
}

/// Ends a held poll however its future ends: answered, timed out, or
/// dropped because the client went away.
struct HeldPoll {
    shared: Arc<Shared>,
    env: String,
    appids: Vec<String>,
    hostname: String,
}

impl Drop for HeldPoll {
    fn drop(&mut self) {
        self.shared.held.fetch_sub(1, Ordering::SeqCst);
        self.shared
            .del_waiters(&self.env, &self.appids, &self.hostname);
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = if method == Method::POST {
        Params::parse(&body)
    } else {
        Params::parse(uri.query().unwrap_or_default().as_bytes())
    };
    match uri.path() {
        "/discovery/register" => register(&shared, &p).await,
        "/discovery/renew" => renew(&shared, &p),
        "/discovery/cancel" => cancel(&shared, &p).await,
        "/discovery/fetch" => {
            if !p.require(&["zone", "env", "appid"]) {
                return envelope(Code::BadRequest, None);
            }
            let status = u64::try_from(p.int("status")).unwrap_or(0);
            let reg = shared.registry.lock().expect("registry lock");
            match reg.fetch(&p.one("zone"), &p.one("env"), &p.one("appid"), 0, status) {
                Ok(info) => envelope(Code::Ok, Some(info)),
                Err(code) => envelope(code, None),
            }
        }
        "/discovery/fetchs" => {
            let status = u64::try_from(p.int("status")).unwrap_or(0);
            let reg = shared.registry.lock().expect("registry lock");
            let found: Map<String, Value> = p
                .all("appid")
                .into_iter()
                .filter_map(|a| {
                    let info = reg
                        .fetch(&p.one("zone"), &p.one("env"), &a, 0, status)
                        .ok()?;
                    Some((a, info))
                })
                .collect();
            envelope(Code::Ok, Some(Value::Object(found)))
        }
        "/discovery/polls" => polls(shared, p, &headers).await,
        "/discovery/nodes" => {
            let addr = shared
                .registry
                .lock()
                .expect("registry lock")
                .fetch("", &shared.cfg.env, naming::DISCOVERY_APPID, 0, STATUS_UP)
                .ok()
                .and_then(|i| {
                    i["instances"][&shared.cfg.zone][0]["addrs"][0]
                        .as_str()
                        .map(|a| a.trim_start_matches("http://").to_string())
                })
                .unwrap_or_default();
            envelope(
                Code::Ok,
                Some(json!([{ "addr": addr, "status": 0, "zone": shared.cfg.zone }])),
            )
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn register(shared: &Shared, p: &Params) -> Response {
    if !p.require(&["zone", "env", "appid", "hostname"]) || p.all("addrs").is_empty() {
        return envelope(Code::BadRequest, None);
    }
    // The Go handler logs and returns without writing anything.
    let status = p.int("status");
    if status == 0 || status > 2 {
        return StatusCode::OK.into_response();
    }
    let md = p.one("metadata");
    if !md.is_empty() && serde_json::from_str::<Value>(&md).is_err() {
        return envelope(Code::BadRequest, None);
    }
    shared.put(instance(p));
    shared.broadcast(&p.one("env"), &p.one("appid")).await;
    envelope(Code::Ok, None)
}

fn renew(shared: &Shared, p: &Params) -> Response {
    if !p.require(&["zone", "env", "appid", "hostname"]) {
        return envelope(Code::BadRequest, None);
    }
    let mut reg = shared.registry.lock().expect("registry lock");
    let found = reg
        .apps
        .get_mut(&key(&p.one("env"), &p.one("appid")))
        .and_then(|a| a.zones.get_mut(&p.one("zone")))
        .and_then(|z| z.get_mut(&p.one("hostname")));
    match found {
        // A renew touches the instance, never the app's latest_timestamp.
        Some(ins) => {
            ins["renew_timestamp"] = json!(now_ns());
            envelope(Code::Ok, Some(ins.clone()))
        }
        None => envelope(Code::NotFound, None),
    }
}

async fn cancel(shared: &Shared, p: &Params) -> Response {
    if !p.require(&["zone", "env", "appid", "hostname"]) {
        return envelope(Code::BadRequest, None);
    }
    let (env, appid, zone) = (p.one("env"), p.one("appid"), p.one("zone"));
    {
        let mut reg = shared.registry.lock().expect("registry lock");
        let k = key(&env, &appid);
        let Some(app) = reg.apps.get_mut(&k) else {
            return envelope(Code::NotFound, None);
        };
        let Some(hosts) = app.zones.get_mut(&zone) else {
            return envelope(Code::NotFound, None);
        };
        if hosts.remove(&p.one("hostname")).is_none() {
            return envelope(Code::NotFound, None);
        }
        if hosts.is_empty() {
            app.zones.remove(&zone);
        }
        Registry::bump(app);
        if app.zones.is_empty() {
            reg.apps.remove(&k);
        }
    }
    shared.broadcast(&env, &appid).await;
    envelope(Code::Ok, None)
}

async fn polls(shared: Arc<Shared>, p: Params, headers: &HeaderMap) -> Response {
    let appids = p.all("appid");
    let stamps: Vec<i64> = p
        .all("latest_timestamp")
        .iter()
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    if !p.require(&["env", "hostname"]) || appids.is_empty() || appids.len() != stamps.len() {
        return envelope(Code::BadRequest, None);
    }
    let (env, zone, hostname) = (p.one("env"), p.one("zone"), p.one("hostname"));
    shared
        .poll_hostnames
        .lock()
        .expect("hostnames lock")
        .push(hostname.clone());
    let mut miss = Vec::new();
    let ch = {
        let mut reg = shared.registry.lock().expect("registry lock");
        let mut changed = Map::new();
        for (appid, ts) in appids.iter().zip(&stamps) {
            match reg.fetch(&zone, &env, appid, *ts, STATUS_UP) {
                Ok(info) => {
                    changed.insert(appid.clone(), info);
                }
                Err(Code::NotFound) => miss.push(appid.clone()),
                Err(_) => {}
            }
        }
        if !changed.is_empty() {
            return polls_answer(Value::Object(changed), &miss);
        }
        // Nothing new: join or create the waiter of this hostname under
        // every appid, unknown ones included.
        let mut ch: Option<Chan> = None;
        for appid in &appids {
            let hosts = reg.waiters.entry(key(&env, appid)).or_default();
            match hosts.get_mut(&hostname) {
                Some(w) => {
                    w.count += 1;
                    if ch.is_none() {
                        ch = Some(w.ch.clone());
                    }
                }
                None => {
                    let c = ch.get_or_insert_with(Chan::new).clone();
                    hosts.insert(
                        hostname.clone(),
                        Waiter {
                            ch: c,
                            zone: zone.clone(),
                            count: 1,
                        },
                    );
                }
            }
        }
        ch.expect("at least one appid")
    };
    shared.held.fetch_add(1, Ordering::SeqCst);
    let _held = HeldPoll {
        shared: Arc::clone(&shared),
        env,
        appids,
        hostname,
    };
    let mut hold = shared.cfg.hold;
    if let Some(ms) = headers
        .get("x1-bmspy-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
    {
        hold = hold.min(Duration::from_millis(ms));
    }
    let got = tokio::time::timeout(hold, async {
        let mut rx = ch.rx.lock().await;
        rx.recv().await
    })
    .await;
    match got {
        Ok(Some(data)) => polls_answer(data, &miss),
        _ => envelope(Code::NotModified, None),
    }
}

/// Go's `JSONMap` answer: the changed apps, and the unknown ones under
/// `error."-404"` (`null` when none).
fn polls_answer(data: Value, miss: &[String]) -> Response {
    let miss = if miss.is_empty() {
        Value::Null
    } else {
        json!(miss)
    };
    json_response(&json!({
        "code": Code::Ok.as_i64(),
        "message": Code::Ok.as_str(),
        "ttl": 1,
        "data": data,
        "error": { "-404": miss },
    }))
}
