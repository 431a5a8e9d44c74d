//! A node's view of its cluster: who the peers are, replication of local
//! writes to them, and the start-up sync (docs/protocol.md#cluster).
//!
//! Membership starts from the static `nodes` and `[zones]` lists and then
//! follows the `infra.discovery` records in the local registry: every node
//! registers itself there, the record is replicated like any other, so a new
//! node announced to one member becomes known to all. A member whose record
//! has not been renewed for a lease is dropped. Only records that pass the
//! [`PeerRule`] reach the registry: all addresses configured, or, with the
//! cluster secret, a signed write.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use discovery_server::{config::Config, server};
//!
//! let cfg = Config::parse(r#"
//!     nodes = ["127.0.0.1:7171", "127.0.0.1:7172", "127.0.0.1:7173"]
//!     [env]
//!     zone = "sh001"
//!     host = "node1"
//!     [httpServer]
//!     addr = "127.0.0.1:7171"
//! "#)?.0;
//! let node = server::start(cfg, None).await?;
//! node.wait_ready().await; // start-up sync done
//! # Ok(()) }
//! ```

mod entropy;
mod peer;
mod vet;
mod wire;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
    time::Duration,
};

use naming::{BoxFuture, DISCOVERY_APPID, Instance};
use parking_lot::Mutex;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    clock::Clock,
    config::Config,
    membership::{Members, NodeStatus, PeerReport, PeerRule, Proof, Vetted, canonical},
    node::{NODE_ADDR_HEADER, NODE_ID_HEADER, NodeIdentity},
    registry::{AppKey, Registry},
    replication::{Op, Origin, Replicator},
};
use peer::Peer;
use wire::Flags;

struct Slot {
    peer: Arc<Peer>,
    task: JoinHandle<()>,
}

/// The peer HTTP client. Peers are addresses the operator configured or a
/// secret holder announced; even so, a peer's answer never sends this
/// node elsewhere (no redirects) and is bounded in time and size.
fn peer_client(config: &Config, tls: Option<rustls::ClientConfig>) -> reqwest::Client {
    let hc = &config.http_client;
    let builder = reqwest::Client::builder()
        .connect_timeout(hc.dial)
        .read_timeout(hc.timeout)
        .tcp_keepalive(hc.keep_alive)
        .timeout(hc.timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(hc.keep_alive)
        .redirect(reqwest::redirect::Policy::none());
    let builder = match tls {
        Some(tls) => builder.use_preconfigured_tls(tls).https_only(true),
        None => builder,
    };
    builder.build().expect("a peer client builds")
}

/// Membership and replication of one node.
pub struct Cluster {
    pub(crate) config: Arc<Config>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) clock: Clock,
    pub(crate) node: NodeIdentity,
    /// The peer client; replaced when the TLS material is reloaded.
    http: parking_lot::RwLock<reqwest::Client>,
    /// Same-zone replication targets, by address.
    same_zone: Mutex<BTreeMap<String, Slot>>,
    /// One replication target per other zone, by zone name.
    other_zones: Mutex<BTreeMap<String, Slot>>,
    /// Addresses that turned out to be this node.
    own_addrs: Mutex<HashSet<String>>,
    /// Same-zone addresses currently backed by a live `infra.discovery` record.
    same_zone_records: Mutex<BTreeSet<String>>,
    /// Addresses of live records beyond the static lists (admitted by
    /// signature), bounded by `limits.max_peers`.
    beyond_static: Mutex<HashSet<String>>,
    /// Who may be a peer.
    rule: PeerRule,
    /// Anti-entropy counters.
    entropy: EntropyStats,
    /// The anti-entropy task.
    entropy_task: Mutex<Option<JoinHandle<()>>>,
    membership: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A cluster view; call [`Cluster::start`] to begin replicating.
    pub fn new(
        config: Arc<Config>,
        registry: Arc<Registry>,
        clock: Clock,
        node: NodeIdentity,
    ) -> Arc<Self> {
        let http = parking_lot::RwLock::new(peer_client(&config, None));
        let rule = PeerRule::new(&node.advertise, &config);
        Arc::new(Cluster {
            config,
            registry,
            clock,
            node,
            http,
            same_zone: Mutex::new(BTreeMap::new()),
            other_zones: Mutex::new(BTreeMap::new()),
            own_addrs: Mutex::new(HashSet::new()),
            same_zone_records: Mutex::new(BTreeSet::new()),
            beyond_static: Mutex::new(HashSet::new()),
            rule,
            entropy: EntropyStats::default(),
            entropy_task: Mutex::new(None),
            membership: Mutex::new(None),
        })
    }

    /// The client for peer requests.
    pub(crate) fn http(&self) -> reqwest::Client {
        self.http.read().clone()
    }

    /// Reaches peers over HTTPS with `tls` (our certificate, and `ca` to
    /// verify theirs) from now on; exchanges in flight finish as they began.
    pub(crate) fn use_tls(&self, tls: rustls::ClientConfig) {
        *self.http.write() = peer_client(&self.config, Some(tls));
    }

    /// The URL of `path` on the peer at `target` (`host:port`): HTTPS when
    /// this node has `[tls]`, as every node of a TLS cluster serves HTTPS
    /// only.
    pub(crate) fn url(&self, target: &str, path: &str) -> String {
        let scheme = if self.config.tls.enabled() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{target}{path}")
    }

    /// Starts the peer workers of the static lists and the membership task.
    pub fn start(self: &Arc<Self>) {
        self.refresh();
        let me = Arc::clone(self);
        let task = tokio::spawn(async move {
            let key = AppKey::new(&me.config.env.deploy_env, DISCOVERY_APPID);
            let mut sub = me.registry.watchers().subscribe(key);
            loop {
                // Expired records leave even when nothing changes.
                let every = me
                    .config
                    .cluster
                    .probe_interval
                    .min(me.config.registry.params.renew_interval);
                let _ = tokio::time::timeout(every, sub.changed()).await;
                me.refresh();
            }
        });
        *self.membership.lock() = Some(task);
        *self.entropy_task.lock() = Some(tokio::spawn(entropy::run(Arc::clone(self))));
    }

    /// Stops every task.
    pub fn stop(&self) {
        if let Some(t) = self.membership.lock().take() {
            t.abort();
        }
        if let Some(t) = self.entropy_task.lock().take() {
            t.abort();
        }
        for (_, s) in std::mem::take(&mut *self.same_zone.lock()) {
            s.task.abort();
        }
        for (_, s) in std::mem::take(&mut *self.other_zones.lock()) {
            s.task.abort();
        }
    }

    /// Sends a request to a peer: stamped with our address and, with
    /// `[auth] peer_token`, signed (the secret itself never travels).
    pub(crate) async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut req = req.header(NODE_ADDR_HEADER, &self.node.advertise).build()?;
        if let Some(secret) = &self.config.auth.peer_token {
            let url = req.url();
            let pq = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            let body = req.body().and_then(reqwest::Body::as_bytes).unwrap_or(&[]);
            let sig = crate::auth::sign(
                secret,
                req.method().as_str(),
                &pq,
                body,
                self.clock.wall_ms(),
                rand::random(),
            );
            req.headers_mut().insert(
                crate::auth::SIGNATURE_HEADER,
                http::HeaderValue::from_str(&sig).expect("hex and digits"),
            );
        }
        self.http().execute(req).await
    }

    /// Whether an answer came from this very node (an address of ours in a
    /// peer list): it carries our own id.
    pub(crate) fn answered_by_self(&self, res: &reqwest::Response) -> bool {
        res.headers()
            .get(NODE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            == Some(self.node.id.as_str())
    }

    /// A peer's answer body, read up to `limits.max_peer_answer_bytes`.
    pub(crate) async fn read_answer(
        &self,
        mut res: reqwest::Response,
    ) -> Result<bytes::Bytes, String> {
        let max = self.config.limits.max_peer_answer_bytes;
        if res.content_length().is_some_and(|n| n > max as u64) {
            return Err(format!(
                "answer exceeds limits.max_peer_answer_bytes ({max})"
            ));
        }
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
            if out.len() + chunk.len() > max {
                return Err(format!(
                    "answer exceeds limits.max_peer_answer_bytes ({max})"
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    /// A sign of life from the node at `addr`: its queue is flushed now.
    pub(crate) fn heard_from_addr(&self, addr: &str) {
        if let Some(slot) = self.same_zone.lock().get(addr) {
            slot.peer.heard_from();
        }
        for slot in self.other_zones.lock().values() {
            if slot.peer.has_node(addr) {
                slot.peer.heard_from();
            }
        }
    }

    fn is_self(&self, addr: &str) -> bool {
        addr == self.node.advertise || self.own_addrs.lock().contains(addr)
    }

    pub(crate) fn found_self(&self, addr: &str) {
        info!(addr, "address is this node; not a peer");
        self.own_addrs.lock().insert(addr.to_string());
        if let Some(s) = self.same_zone.lock().remove(addr) {
            s.task.abort();
        }
    }

    /// Same-zone peers to sync from: the static list.
    fn static_peers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .config
            .nodes
            .iter()
            .filter(|a| !self.is_self(a))
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Recomputes the peer set from the static lists and the live
    /// `infra.discovery` records.
    pub fn refresh(self: &Arc<Self>) {
        let now = self.clock.now();
        let lease = crate::registry::nanos(self.registry.params().lease);
        let mut learned_same = BTreeSet::new();
        let mut learned_zones: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let records = self
            .registry
            .instances(&AppKey::new(&self.config.env.deploy_env, DISCOVERY_APPID));
        for ins in &records {
            if now - ins.renew_timestamp > lease {
                continue;
            }
            for addr in ins.addrs.iter().filter_map(|a| canonical(a)) {
                let addr = addr.as_str();
                if self.is_self(addr) {
                    continue;
                }
                if ins.zone == self.config.env.zone {
                    learned_same.insert(addr.to_string());
                } else {
                    learned_zones
                        .entry(ins.zone.clone())
                        .or_default()
                        .insert(addr.to_string());
                }
            }
        }

        let mut wanted: BTreeSet<String> = self.static_peers().into_iter().collect();
        wanted.extend(learned_same.iter().cloned());
        {
            let mut same = self.same_zone.lock();
            same.retain(|addr, slot| {
                let keep = wanted.contains(addr);
                if !keep {
                    info!(peer = %addr, "peer left the cluster");
                    slot.task.abort();
                }
                keep
            });
            for addr in wanted {
                if let std::collections::btree_map::Entry::Vacant(slot) = same.entry(addr) {
                    let addr = slot.key().clone();
                    info!(peer = %addr, "peer joined");
                    let peer = Arc::new(Peer::new(
                        addr.clone(),
                        vec![addr],
                        true,
                        self.config.cluster.queue_capacity,
                    ));
                    let task = tokio::spawn(peer::run(Arc::clone(self), Arc::clone(&peer)));
                    slot.insert(Slot { peer, task });
                }
            }
        }
        *self.beyond_static.lock() = learned_same
            .iter()
            .chain(learned_zones.values().flatten())
            .filter(|a| !self.rule.is_static(a))
            .cloned()
            .collect();
        *self.same_zone_records.lock() = learned_same;

        let mut zones_wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (zone, nodes) in &self.config.zones {
            if *zone != self.config.env.zone {
                zones_wanted
                    .entry(zone.clone())
                    .or_default()
                    .extend(nodes.iter().cloned());
            }
        }
        for (zone, nodes) in learned_zones {
            zones_wanted.entry(zone).or_default().extend(nodes);
        }
        let mut zones = self.other_zones.lock();
        zones.retain(|z, slot| {
            let keep = zones_wanted.contains_key(z);
            if !keep {
                slot.task.abort();
            }
            keep
        });
        for (zone, mut nodes) in zones_wanted {
            nodes.sort();
            nodes.dedup();
            if let Some(slot) = zones.get(&zone) {
                slot.peer.set_nodes(nodes);
            } else {
                info!(zone = %zone, nodes = ?nodes, "zone joined");
                let peer = Arc::new(Peer::new(
                    format!("zone:{zone}"),
                    nodes,
                    false,
                    self.config.cluster.queue_capacity,
                ));
                let task = tokio::spawn(peer::run(Arc::clone(self), Arc::clone(&peer)));
                zones.insert(zone, Slot { peer, task });
            }
        }
    }

    /// Adopts a newer copy a peer returned (`-409`) and passes it on to the
    /// other same-zone peers.
    pub(crate) fn adopt(&self, theirs: Instance, from: &str) {
        self.clock.observe(theirs.dirty_timestamp);
        if !self.admit_merge(&theirs) {
            return;
        }
        let out = self.registry.merge(theirs, self.clock.now());
        debug!(peer = from, hostname = %out.instance.hostname, applied = out.applied, "adopted a newer copy");
        if !out.applied {
            return;
        }
        let flags = Flags {
            replication: true,
            from_zone: false,
        };
        for (addr, slot) in self.same_zone.lock().iter() {
            if addr != from {
                slot.peer
                    .push(Op::Register(out.instance.clone().into()), flags, None);
            }
        }
    }

    /// Replication targets and their state.
    pub fn report(&self) -> Vec<PeerReport> {
        let one = |s: &Slot| PeerReport {
            name: s.peer.name.clone(),
            same_zone: s.peer.same_zone,
            status: s.peer.status(),
            queued: s.peer.queued(),
            sent: s.peer.sent.load(std::sync::atomic::Ordering::Relaxed),
            dropped: s.peer.dropped.load(std::sync::atomic::Ordering::Relaxed),
            rejected: s.peer.rejected.load(std::sync::atomic::Ordering::Relaxed),
            failures: s
                .peer
                .failures_total
                .load(std::sync::atomic::Ordering::Relaxed),
            last_success: s.peer.last_ok.load(std::sync::atomic::Ordering::Relaxed),
            dead: s.peer.is_dead(),
            catch_ups: s.peer.catch_ups.load(std::sync::atomic::Ordering::Relaxed),
            last_catch_up_ms: s
                .peer
                .last_catch_up_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        };
        let mut v: Vec<PeerReport> = self.same_zone.lock().values().map(one).collect();
        v.extend(self.other_zones.lock().values().map(one));
        v
    }

    /// Waits until every queue is empty, at most `limit`.
    pub async fn drain(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let pending: usize = self
                .report()
                .iter()
                .filter(|p| p.status == peer::UP)
                .map(|p| p.queued)
                .sum();
            if pending == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(pending, "replication queues not drained before shutdown");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Vets a copy of an `infra.discovery` record pulled from a peer before
    /// a merge; `true` when it may be stored.
    pub(crate) fn admit_merge(&self, ins: &Instance) -> bool {
        ins.appid != DISCOVERY_APPID || self.vet(ins, Proof::Pulled) == Vetted::Admit
    }

    /// The start-up sync: `fetch/all` from every static same-zone peer and
    /// one node per other zone, retried with backoff.
    ///
    /// Peers that refuse connections (or cannot be connected to at all) are
    /// not running: a node whose remaining peers all refuse stops waiting
    /// at once, so the first node of a cluster started one node at a time
    /// serves immediately. Peers that accept connections but answer slowly
    /// or with an error are waited for, up to `cluster.sync_timeout`.
    /// Returns whether any peer answered.
    pub async fn sync(&self) -> bool {
        let cfg = &self.config.cluster;
        let mut pending: Vec<Vec<String>> =
            self.static_peers().into_iter().map(|a| vec![a]).collect();
        for (zone, nodes) in &self.config.zones {
            if *zone != self.config.env.zone && !nodes.is_empty() {
                pending.push(nodes.clone());
            }
        }
        if pending.is_empty() {
            return false;
        }
        let started = tokio::time::Instant::now();
        let deadline = started + cfg.sync_timeout;
        let mut synced = 0usize;
        let mut attempt = 0u32;
        loop {
            let mut left = Vec::new();
            let mut absent = 0usize;
            for candidates in pending {
                match self.sync_one(&candidates).await {
                    SyncOutcome::Done(true) => synced += 1,
                    SyncOutcome::Done(false) => {}
                    SyncOutcome::Absent => {
                        absent += 1;
                        left.push(candidates);
                    }
                    SyncOutcome::Slow => left.push(candidates),
                }
            }
            pending = left;
            let missing: Vec<&String> = pending.iter().map(|c| &c[0]).collect();
            if pending.is_empty() {
                info!(synced, took = ?started.elapsed(), "start-up sync: every peer answered");
                return synced > 0;
            }
            if absent == pending.len() {
                if synced == 0 {
                    info!(
                        ?missing,
                        "start-up sync: no peer is running (connections refused); \
                         first node of the cluster, serving at once"
                    );
                } else {
                    info!(
                        synced, ?missing, took = ?started.elapsed(),
                        "start-up sync: done; the other peers are not running (connections refused)"
                    );
                }
                return synced > 0;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    ?missing,
                    "start-up sync: peers accept connections but did not answer within \
                     cluster.sync_timeout; serving what we have"
                );
                return synced > 0;
            }
            tokio::time::sleep(naming::backoff::delay(
                cfg.retry_initial,
                attempt,
                cfg.retry_max,
            ))
            .await;
            attempt += 1;
        }
    }

    /// Syncs from the first of `candidates` (one node, or the nodes of
    /// another zone) that answers.
    async fn sync_one(&self, candidates: &[String]) -> SyncOutcome {
        let mut all_absent = true;
        for target in candidates {
            match self.fetch_all(target).await {
                Ok(Some(n)) => {
                    info!(peer = %target, instances = n, "synced from peer");
                    return SyncOutcome::Done(true);
                }
                Ok(None) => return SyncOutcome::Done(false),
                Err(e) => {
                    debug!(peer = %target, "sync attempt failed: {e}");
                    all_absent &= e.absent;
                }
            }
        }
        if all_absent {
            SyncOutcome::Absent
        } else {
            SyncOutcome::Slow
        }
    }

    /// One `fetch/all`; `Ok(None)` when the address is this node.
    async fn fetch_all(&self, target: &str) -> Result<Option<usize>, SyncError> {
        let res = self
            .send(self.http().get(self.url(target, "/discovery/fetch/all")))
            .await
            .map_err(|e| SyncError {
                absent: e.is_connect(),
                why: e.to_string(),
            })?;
        let present = |why: String| SyncError { absent: false, why };
        if self.answered_by_self(&res) {
            self.own_addrs.lock().insert(target.to_string());
            return Ok(None);
        }
        if !res.status().is_success() {
            return Err(present(format!("HTTP {}", res.status())));
        }
        let body = self.read_answer(res).await.map_err(present)?;
        let all: wire::AllAnswer =
            serde_json::from_slice(&body).map_err(|e| present(e.to_string()))?;
        if all.code != 0 {
            return Err(present(format!("code {}", all.code)));
        }
        let mut n = 0;
        let now = self.clock.now();
        for ins in all.data.unwrap_or_default().into_values().flatten() {
            self.clock.observe(ins.dirty_timestamp);
            if self.admit_merge(&ins) {
                self.registry.merge(ins, now);
            }
            n += 1;
        }
        Ok(Some(n))
    }
}

/// Anti-entropy counters (see [`entropy`]).
#[derive(Debug, Default)]
struct EntropyStats {
    rounds: std::sync::atomic::AtomicU64,
    repairs: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

/// What one start-up sync attempt with a peer (or a zone) gave.
enum SyncOutcome {
    /// Synced (`true`), or the address was this node (`false`).
    Done(bool),
    /// Every candidate refused the connection: not running.
    Absent,
    /// Some candidate is running but did not answer well.
    Slow,
}

#[derive(Debug)]
struct SyncError {
    /// The connection itself failed (refused, unroutable, no such host).
    absent: bool,
    why: String,
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl Replicator for Cluster {
    fn replicate(&self, op: Op, origin: Origin) -> BoxFuture<'static, ()> {
        let waits = !matches!(op, Op::Renew(_));
        let (tx, mut rx) = watch::channel(0usize);
        let ack = waits.then(|| Arc::new(tx));
        let same_flags = Flags {
            replication: true,
            from_zone: origin == Origin::OtherZone,
        };
        let mut up = 0usize;
        for slot in self.same_zone.lock().values() {
            up += usize::from(slot.peer.is_up());
            slot.peer.push(op.clone(), same_flags, ack.clone());
        }
        if origin == Origin::Client {
            let zone_flags = Flags {
                replication: false,
                from_zone: true,
            };
            for slot in self.other_zones.lock().values() {
                slot.peer.push(op.clone(), zone_flags, None);
            }
        }
        if !(waits && up > 0) {
            return Box::pin(std::future::ready(()));
        }
        drop(ack);
        let limit = self.config.cluster.ack_timeout;
        Box::pin(async move {
            // Acknowledge once every same-zone peer that answers has the
            // write: it then survives the crash of this node, and a next
            // write through any node is stamped after it (each peer's clock
            // has followed its timestamp), so a client's sequential writes
            // keep their order even when clocks disagree. Never wait past
            // the bound: a peer that stopped answering is not waited for.
            let _ = tokio::time::timeout(limit, rx.wait_for(|acked| *acked >= up)).await;
        })
    }
}

impl Members for Cluster {
    fn nodes(&self) -> Vec<NodeStatus> {
        let zone = &self.config.env.zone;
        let learned = self.same_zone_records.lock().clone();
        let mut out: Vec<NodeStatus> = self
            .same_zone
            .lock()
            .iter()
            .filter(|(addr, slot)| learned.contains(*addr) || slot.peer.is_up())
            .map(|(addr, slot)| NodeStatus {
                addr: addr.clone(),
                status: slot.peer.status(),
                zone: zone.clone(),
            })
            .collect();
        out.push(NodeStatus {
            addr: self.node.advertise.clone(),
            status: 0,
            zone: zone.clone(),
        });
        out.sort_by(|a, b| a.addr.cmp(&b.addr));
        out
    }

    fn peers(&self) -> Vec<PeerReport> {
        self.report()
    }

    fn heard_from(&self, addr: &str) {
        self.heard_from_addr(addr);
    }

    fn vet(&self, ins: &Instance, proof: Proof) -> Vetted {
        Cluster::vet(self, ins, proof)
    }

    fn is_peer_ip(&self, ip: std::net::IpAddr) -> bool {
        self.rule.is_peer_ip(ip)
    }

    fn anti_entropy(&self) -> crate::membership::EntropyReport {
        use std::sync::atomic::Ordering::Relaxed;
        crate::membership::EntropyReport {
            rounds: self.entropy.rounds.load(Relaxed),
            repairs: self.entropy.repairs.load(Relaxed),
            bytes: self.entropy.bytes.load(Relaxed),
        }
    }
}
