//! The consumer side (docs/protocol.md#long-poll): one long-poll loop per client, multiplexing
//! every watched appid, and a [`Watch`] per appid delivering the registry's
//! raw snapshots through a coalescing `tokio::sync::watch`.
//!
//! * A new appid aborts the in-flight poll (which may be parked for 30 s) and
//!   restarts it with the new appid at timestamp 0, and concurrently asks
//!   `fetchs` for it, so the first resolve of a registered app takes one
//!   round trip and an unknown appid is reported as
//!   [`Resolution::NotFound`] (with the env, so a mismatch shows) at once.
//! * `-304` polls again at once; errors switch node and back off (1 s
//!   doubling to 10 s, ±20 %); an answer that changed nothing and came back
//!   within a second delays the next poll to one second after the previous
//!   start; the loop moves to the next node every 30 minutes; a node change
//!   resets every timestamp (they are per node).
//! * The registry's own `infra.discovery` app is always polled: the
//!   `http://` addresses of its own-zone instances become the node list.
//! * Dropping the last [`Watch`] of an appid removes it from the next poll.
//! * Polls carry [`Discovery::poll_identity`] as their `hostname`: the
//!   configured hostname plus a per-client suffix, so that clients sharing a
//!   hostname never share a Go server's long-poll waiter.
//!
//! A registry that is down never blocks a caller: [`Watch::resolved`] returns
//! [`Resolution::Pending`] after its bound while the loop keeps retrying.
//!
//! ```no_run
//! use std::time::Duration;
//! use discovery_client::{Config, Discovery};
//! use naming::Resolution;
//!
//! # async fn run() -> Result<(), naming::Error> {
//! let discovery = Discovery::new(Config::from_env())?;
//! let watch = discovery.watch("demo.service")?;
//! match watch.resolved(Duration::from_secs(1)).await {
//!     Ok(Resolution::Found(info)) => println!("{} instances", info.len()),
//!     Ok(Resolution::NotFound { appid, env }) => println!("{appid} not registered in env {env}"),
//!     Ok(Resolution::Pending) => unreachable!("resolved waits past Pending"),
//!     Err(e) => println!("registry unreachable ({e}); still trying"),
//! }
//! let mut rx = watch.subscribe();
//! while rx.changed().await.is_ok() {
//!     println!("now {:?}", rx.borrow_and_update().found().map(|i| i.len()));
//! }
//! # Ok(()) }
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use naming::{
    BuildOptions, Builder, DISCOVERY_APPID, Error, InstancesInfo, Resolution, Resolver, code::Code,
};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use crate::{
    Config, Core, Discovery,
    backoff::Backoff,
    transport::{Call, CallError},
};

/// What the first poll after a (re)start or node switch announces, so that
/// the server holds it 2 s at most (docs/protocol.md#deadline-header-and-hold).
const FIRST_POLL_HEADER_MS: u64 = 2000;

/// One watched app.
#[derive(Debug)]
struct App {
    tx: watch::Sender<Resolution>,
    /// Live [`Watch`]es.
    refs: usize,
    /// Polled even without watches (`infra.discovery`).
    pinned: bool,
    /// The `latest_timestamp` to send, valid on the node of `epoch`.
    ts: i64,
    /// Node epoch of the current `Found` snapshot, if any.
    snapshot_epoch: Option<u64>,
}

#[derive(Debug)]
struct AppsState {
    map: HashMap<String, App>,
    /// Node epoch the timestamps in `map` belong to.
    epoch: Option<u64>,
}

/// Watched apps, shared by the poll loop, fetches and watches.
#[derive(Debug)]
pub(crate) struct Apps {
    state: Mutex<AppsState>,
    /// Bumped when an appid is added: the poll loop restarts its poll.
    added: watch::Sender<u64>,
    /// Becomes true once the node list was learned (or found empty).
    nodes_ready: watch::Sender<bool>,
    env: String,
}

impl Apps {
    pub(crate) fn new(config: &Config) -> Self {
        let mut map = HashMap::new();
        map.insert(
            DISCOVERY_APPID.to_string(),
            App {
                tx: watch::Sender::new(Resolution::Pending),
                refs: 0,
                pinned: true,
                ts: 0,
                snapshot_epoch: None,
            },
        );
        Apps {
            state: Mutex::new(AppsState { map, epoch: None }),
            added: watch::Sender::new(0),
            nodes_ready: watch::Sender::new(false),
            env: config.env.clone(),
        }
    }

    pub(crate) fn nodes_ready(&self) -> watch::Receiver<bool> {
        self.nodes_ready.subscribe()
    }

    /// Ends every watch: receivers see the channel closed.
    pub(crate) fn close(&self) {
        self.state.lock().map.clear();
    }

    /// Adds a watch; returns its receiver and whether the appid is new.
    fn subscribe(&self, appid: &str) -> (watch::Receiver<Resolution>, bool) {
        let mut st = self.state.lock();
        if let Some(app) = st.map.get_mut(appid) {
            app.refs += 1;
            return (app.tx.subscribe(), false);
        }
        let tx = watch::Sender::new(Resolution::Pending);
        let rx = tx.subscribe();
        st.map.insert(
            appid.to_string(),
            App {
                tx,
                refs: 1,
                pinned: false,
                ts: 0,
                snapshot_epoch: None,
            },
        );
        drop(st);
        self.added.send_modify(|v| *v += 1);
        (rx, true)
    }

    /// Drops a watch; the last one of an unpinned app leaves the poll set.
    fn unsubscribe(&self, appid: &str) {
        let mut st = self.state.lock();
        if let Some(app) = st.map.get_mut(appid) {
            app.refs = app.refs.saturating_sub(1);
            if app.refs == 0 && !app.pinned {
                st.map.remove(appid);
                debug!(appid, "last watch gone; leaving the poll set");
            }
        }
    }

    /// The appids and timestamps of the next poll; resets the timestamps
    /// when the node changed. Sorted, so the request is stable.
    fn poll_set(&self, epoch: u64) -> (Vec<String>, Vec<i64>) {
        let mut st = self.state.lock();
        if st.epoch != Some(epoch) {
            for app in st.map.values_mut() {
                app.ts = 0;
            }
            st.epoch = Some(epoch);
        }
        let mut set: Vec<(String, i64)> = st.map.iter().map(|(k, a)| (k.clone(), a.ts)).collect();
        set.sort();
        set.into_iter().unzip()
    }

    /// Applies a `polls` answer from the node of `epoch`. Returns whether a
    /// watched state changed.
    fn apply_poll(
        &self,
        epoch: u64,
        data: BTreeMap<String, InstancesInfo>,
        missing: &[String],
    ) -> bool {
        let mut st = self.state.lock();
        if st.epoch != Some(epoch) {
            // The node changed while the poll was out (a renew failed over):
            // these timestamps are meaningless on the new node.
            return false;
        }
        let mut changed = false;
        for (appid, info) in data {
            let Some(app) = st.map.get_mut(&appid) else {
                continue;
            };
            app.ts = info.latest_timestamp;
            app.snapshot_epoch = Some(epoch);
            app.tx.send_replace(Resolution::Found(Arc::new(info)));
            changed = true;
        }
        for appid in missing {
            let Some(app) = st.map.get_mut(appid) else {
                continue;
            };
            app.ts = 0;
            app.snapshot_epoch = None;
            changed |= self.set_not_found(appid, &app.tx);
        }
        changed
    }

    fn set_not_found(&self, appid: &str, tx: &watch::Sender<Resolution>) -> bool {
        tx.send_if_modified(|r| {
            if matches!(r, Resolution::NotFound { .. }) {
                return false;
            }
            *r = Resolution::NotFound {
                appid: appid.to_string(),
                env: self.env.clone(),
            };
            true
        })
    }

    /// Applies a `fetchs` answer for a new watch: a poll that
    /// already delivered data wins unless the fetch is newer on the same
    /// node.
    fn apply_fetch(&self, appid: &str, epoch: u64, found: Option<InstancesInfo>) {
        let mut st = self.state.lock();
        let poll_epoch = st.epoch;
        let Some(app) = st.map.get_mut(appid) else {
            return;
        };
        match found {
            Some(info) => {
                let newer = match (&*app.tx.borrow(), app.snapshot_epoch) {
                    (Resolution::Found(cur), Some(e)) => {
                        e == epoch && info.latest_timestamp > cur.latest_timestamp
                    }
                    _ => true,
                };
                if !newer {
                    return;
                }
                if poll_epoch == Some(epoch) {
                    app.ts = app.ts.max(info.latest_timestamp);
                    app.snapshot_epoch = Some(epoch);
                }
                app.tx.send_replace(Resolution::Found(Arc::new(info)));
            }
            None => {
                if matches!(*app.tx.borrow(), Resolution::Pending) {
                    let tx = app.tx.clone();
                    self.set_not_found(appid, &tx);
                }
            }
        }
    }

    /// Every polled appid is unknown (`-404` for the whole request).
    fn all_missing(&self, epoch: u64, appids: &[String]) -> bool {
        self.apply_poll(epoch, BTreeMap::new(), appids)
    }

    /// The watched appids currently resolved as found.
    fn found(&self, appids: &[String]) -> Vec<String> {
        let st = self.state.lock();
        appids
            .iter()
            .filter(|a| {
                st.map
                    .get(a.as_str())
                    .is_some_and(|app| matches!(*app.tx.borrow(), Resolution::Found(_)))
            })
            .cloned()
            .collect()
    }
}

#[derive(Debug, Default, Deserialize)]
struct PollErrors {
    #[serde(rename = "-404", default)]
    missing: Option<Vec<String>>,
}

/// How one poll ended, for pacing the next.
enum Outcome {
    /// Something changed: poll again at once.
    Changed,
    /// Nothing changed: poll again, but not within `poll_spacing` of the
    /// previous start.
    Unchanged,
    /// Switch node (done) and back off.
    Failed,
}

/// The one poll loop of a client. Ends when aborted (close, last handle
/// dropped) or when the transport is closed.
pub(crate) async fn poll_loop(core: Arc<Core>) {
    let cfg = &core.config;
    let apps = &core.apps;
    let mut added = apps.added.subscribe();
    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_max);
    let mut rotate_at = Instant::now() + cfg.node_rotation;
    let mut last_epoch = None;
    let mut not_before: Option<Instant> = None;
    loop {
        if Instant::now() >= rotate_at {
            debug!("periodic node rotation");
            core.transport.rotate();
            rotate_at = Instant::now() + cfg.node_rotation;
        }
        if let Some(at) = not_before.take() {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                // A new watch is exempt from spacing and backoff.
                r = added.changed() => if r.is_err() { return },
            }
        }
        let (node, epoch) = core.transport.current();
        let fresh = last_epoch != Some(epoch);
        last_epoch = Some(epoch);
        added.borrow_and_update();
        let (appids, stamps) = apps.poll_set(epoch);
        let mut call = Call::get(
            "/discovery/polls",
            if fresh {
                cfg.first_poll_timeout
            } else {
                cfg.poll_timeout
            },
        )
        .param("env", &cfg.env)
        .param("hostname", &core.poll_identity);
        if fresh {
            call.header_ms = Some(FIRST_POLL_HEADER_MS);
        }
        for (a, t) in appids.iter().zip(&stamps) {
            call = call
                .param("appid", a)
                .param("latest_timestamp", t.to_string());
        }
        let started = Instant::now();
        let answer = tokio::select! {
            a = core.transport.call(&node, &call) => a,
            r = added.changed() => {
                if r.is_err() {
                    return;
                }
                // Abort the (possibly parked) poll and restart with the new
                // appid at once.
                debug!("new watch; restarting the poll");
                continue;
            }
        };
        let outcome = match answer {
            Err(CallError::Closed) => return,
            Err(CallError::Transport(e)) => {
                warn!(node, error = %e, "poll failed; switching node");
                Outcome::Failed
            }
            Ok(env) => match Code::from_i64(env.code) {
                Some(Code::Ok) => {
                    let data = env.data::<BTreeMap<String, InstancesInfo>>();
                    let errors = serde_json::from_value::<Option<PollErrors>>(env.error)
                        .map(Option::unwrap_or_default)
                        .map_err(|e| format!("undecodable error list: {e}"));
                    match (data, errors) {
                        (Ok(data), Ok(errors)) => {
                            if let Some((appid, _)) =
                                data.iter().find(|(_, i)| i.latest_timestamp == 0)
                            {
                                warn!(
                                    node,
                                    appid, "poll answer with latest_timestamp 0; switching node"
                                );
                                core.transport.failed(&node);
                                Outcome::Failed
                            } else {
                                let nodes = data.get(DISCOVERY_APPID).cloned();
                                let missing = errors.missing.unwrap_or_default();
                                let nodes_missing = missing.iter().any(|a| a == DISCOVERY_APPID);
                                let changed = apps.apply_poll(epoch, data, &missing);
                                if let Some(info) = nodes {
                                    self_discovery(&core, &info);
                                } else if nodes_missing {
                                    apps.nodes_ready.send_replace(true);
                                }
                                if changed {
                                    Outcome::Changed
                                } else {
                                    Outcome::Unchanged
                                }
                            }
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            warn!(node, error = %e, "undecodable poll answer; switching node");
                            core.transport.failed(&node);
                            Outcome::Failed
                        }
                    }
                }
                Some(Code::NotModified) => {
                    // The Go original wakes no poller for an app's last
                    // cancel: its polls hold and end in -304 while the app
                    // is gone. One `fetchs` after a hold that brought
                    // nothing tells (once per hold, so bounded). Our nodes
                    // wake pollers for it: no refetch.
                    if !env.ours && refetch_gone(&core, apps, &node, epoch, &appids).await {
                        Outcome::Changed
                    } else {
                        Outcome::Unchanged
                    }
                }
                Some(Code::NotFound) => {
                    if appids.iter().any(|a| a == DISCOVERY_APPID) {
                        apps.nodes_ready.send_replace(true);
                    }
                    if apps.all_missing(epoch, &appids) {
                        Outcome::Changed
                    } else {
                        Outcome::Unchanged
                    }
                }
                _ => {
                    warn!(node, code = env.code, message = %env.message, "poll refused; switching node");
                    core.transport.failed(&node);
                    Outcome::Failed
                }
            },
        };
        match outcome {
            Outcome::Changed => backoff.reset(),
            Outcome::Unchanged => {
                backoff.reset();
                let next = started + cfg.poll_spacing;
                if next > Instant::now() {
                    not_before = Some(next);
                }
            }
            Outcome::Failed => not_before = Some(Instant::now() + backoff.next_delay()),
        }
    }
}

/// After a poll that ended with nothing, asks for the found apps once
/// more and marks the ones the node no longer has as not found; `true`
/// when that changed a watch.
async fn refetch_gone(core: &Core, apps: &Apps, node: &str, epoch: u64, appids: &[String]) -> bool {
    let found: Vec<String> = apps
        .found(appids)
        .into_iter()
        .filter(|a| a != DISCOVERY_APPID)
        .collect();
    if found.is_empty() {
        return false;
    }
    let cfg = &core.config;
    let mut call = Call::get("/discovery/fetchs", cfg.request_timeout)
        .param("env", &cfg.env)
        .param("status", "3");
    for a in &found {
        call = call.param("appid", a);
    }
    let Ok(env) = core.transport.call(node, &call).await else {
        return false;
    };
    if env.code != 0 {
        return false;
    }
    let Ok(data) = env.data::<BTreeMap<String, serde_json::Value>>() else {
        return false;
    };
    let gone: Vec<String> = found
        .into_iter()
        .filter(|a| !data.get(a).is_some_and(has_instances))
        .collect();
    if gone.is_empty() {
        return false;
    }
    debug!(
        node,
        ?gone,
        "apps gone without a wake-up; marking them not found"
    );
    apps.apply_poll(epoch, BTreeMap::new(), &gone)
}

/// Whether a `fetchs` entry lists any instance.
fn has_instances(info: &serde_json::Value) -> bool {
    info["instances"].as_object().is_some_and(|zones| {
        zones
            .values()
            .any(|l| l.as_array().is_some_and(|l| !l.is_empty()))
    })
}

/// Takes the own-zone `infra.discovery` instances' `http://` addresses as
/// the node list.
fn self_discovery(core: &Core, info: &InstancesInfo) {
    let apps = &core.apps;
    if core.config.self_discovery {
        let found: Vec<String> = info
            .instances
            .get(&core.config.zone)
            .into_iter()
            .flatten()
            .flat_map(|i| &i.addrs)
            .filter_map(|a| naming::addr::PeerAddr::parse(a).ok())
            .filter(|a| !a.is_tls())
            .map(|a| a.to_string())
            .collect();
        if found.is_empty() {
            debug!(zone = %core.config.zone, "no own-zone discovery node listed; keeping the list");
        } else if core.transport.replace(found) {
            info!(nodes = ?core.transport.nodes(), "discovery node list updated");
        }
    }
    apps.nodes_ready.send_replace(true);
}

/// A watch on one appid: a [`naming::Resolver`] delivering the registry's
/// raw [`InstancesInfo`] snapshots (filtering, zone scheduling and subsets
/// are the balancer's business). Dropping the last `Watch` of an appid
/// removes it from the poll set.
#[derive(Debug)]
pub struct Watch {
    owner: Discovery,
    appid: String,
    rx: watch::Receiver<Resolution>,
    options: BuildOptions,
    closed: AtomicBool,
}

impl Discovery {
    /// Watches `appid`. A new appid restarts the poll at once and is fetched
    /// concurrently; an already watched one starts from the cached state.
    pub fn watch(&self, appid: &str) -> Result<Watch, Error> {
        self.watch_with(appid, BuildOptions::default())
    }

    /// [`Discovery::watch`], keeping `options` for the caller.
    pub fn watch_with(&self, appid: &str, options: BuildOptions) -> Result<Watch, Error> {
        let core = self.core();
        core.check_open()?;
        if appid.is_empty() {
            return Err(Error::InvalidTarget {
                target: appid.to_string(),
                reason: "empty appid".into(),
            });
        }
        let (rx, new) = core.apps.subscribe(appid);
        if new {
            let core = Arc::clone(core);
            let appid = appid.to_string();
            self.spawn_fetch(async move {
                let (_, epoch) = core.transport.current();
                match fetch_once(&core, &appid).await {
                    Ok((found, _)) => core.apps.apply_fetch(&appid, epoch, found),
                    Err(e) => debug!(appid, error = ?e, "first fetch failed; waiting for the poll"),
                }
            });
        }
        Ok(Watch {
            owner: self.clone(),
            appid: appid.to_string(),
            rx,
            options,
            closed: AtomicBool::new(false),
        })
    }

    /// Fetches `appid` now (`GET /discovery/fetchs`, UP instances, no hold),
    /// on the current node and, after a transport failure, the next one.
    /// `Ok(None)`: the registry does not know the app in this env.
    pub async fn fetch(&self, appid: &str) -> Result<Option<Arc<InstancesInfo>>, Error> {
        let core = self.core();
        core.check_open()?;
        match fetch_once(core, appid).await {
            Ok((found, _)) => Ok(found.map(Arc::new)),
            Err(CallError::Closed) => Err(Error::Closed),
            Err(CallError::Transport(_)) => Ok(fetch_once(core, appid).await?.0.map(Arc::new)),
        }
    }
}

async fn fetch_once(
    core: &Core,
    appid: &str,
) -> Result<(Option<InstancesInfo>, String), CallError> {
    let call = Call::get("/discovery/fetchs", core.config.request_timeout)
        .param("appid", appid)
        .param("env", &core.config.env)
        .param("status", "1");
    let (env, node) = core.transport.call_current(&call).await?;
    if env.code != Code::Ok {
        warn!(node, code = env.code, "fetchs refused");
        return Err(CallError::Transport(format!(
            "fetchs answered {}",
            env.code
        )));
    }
    let mut data = env.data::<BTreeMap<String, InstancesInfo>>().map_err(|e| {
        core.transport.failed(&node);
        CallError::Transport(e)
    })?;
    Ok((data.remove(appid), node))
}

impl Watch {
    /// The watched appid.
    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// The options this watch was built with (unused by the SDK itself).
    pub fn options(&self) -> &BuildOptions {
        &self.options
    }

    /// The current state.
    pub fn current(&self) -> Resolution {
        self.rx.borrow().clone()
    }

    /// A new receiver of the state.
    pub fn subscribe(&self) -> watch::Receiver<Resolution> {
        self.rx.clone()
    }

    /// Waits until the registry has answered (the state is no longer
    /// [`Resolution::Pending`]), at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the registry did not
    /// answer in time (the watch keeps trying), and
    /// [`Error::Closed`] when the client closed first.
    pub async fn resolved(&self, timeout: Duration) -> Result<Resolution, naming::Error> {
        let mut rx = self.rx.clone();
        let wait = rx.wait_for(|r| !matches!(r, Resolution::Pending));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(r)) => Ok(r.clone()),
            Ok(Err(_)) => Err(naming::Error::Closed),
            Err(_) => Err(naming::Error::Timeout(naming::Elapsed(timeout))),
        }
    }
}

impl Resolver for Watch {
    fn appid(&self) -> &str {
        &self.appid
    }

    fn watch(&self) -> watch::Receiver<Resolution> {
        self.rx.clone()
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.owner.core().apps.unsubscribe(&self.appid);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        Resolver::close(self);
    }
}

/// The `discovery` scheme: `discovery://default/<appid>` resolves through
/// this client. Hand it to `discovery-tonic`'s resolver map.
impl Builder for Discovery {
    fn scheme(&self) -> &str {
        "discovery"
    }

    fn build(&self, appid: &str, options: BuildOptions) -> Result<Box<dyn Resolver>, Error> {
        Ok(Box::new(self.watch_with(appid, options)?))
    }
}
